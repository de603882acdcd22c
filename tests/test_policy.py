"""The restart policy, driven directly with made-up monotonic times and pinned jitter."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from presence.clock import Instant
from presence.policy import (
    ActionFinished,
    Command,
    Context,
    Detected,
    Phase,
    Policy,
    Recovery,
    StartAction,
    Tick,
    cause_of,
    delay_for,
    published_state,
    step,
)
from presence.protocol import Status
from presence.tracker import Answer, Limits, RoundClosed, Service, State, StatusSeen
from presence.tracker import step as detect

POLICY = Policy()  # the documented defaults
NO_JITTER = Context(rand=0.5)  # 2 * 0.5 - 1 == 0
LIMITS = Limits(missed_pongs=2)


class World:
    """One service, its detection record and its recovery, stepped through time by hand."""

    def __init__(self, policy: Policy = POLICY, ctx: Context = NO_JITTER) -> None:
        self.policy = policy
        self.ctx = ctx
        self.now = 0.0
        self.svc = Service(name="svc", declared=True)
        self.rec = Recovery()
        self.started: list[tuple[float, StartAction]] = []
        self.sessions = 0

    def at(self, t: float) -> World:
        self.now = t
        return self

    def _detect(self, status: Status) -> None:
        before = self.svc
        self.svc, _ = detect(before, StatusSeen(status), Instant(self.now, self.now), LIMITS)
        if self.svc is not before:
            self.feed(Detected(before, self.svc))

    def birth(self) -> World:
        self.sessions += 1
        self._detect(Status("online", f"s{self.sessions}", self.now + 0.001))
        return self

    def crash(self, session: str | None = None) -> World:
        self._detect(Status("offline", session or f"s{self.sessions}", self.now, reason="lost"))
        return self

    def hang(self) -> World:
        for _ in range(LIMITS.missed_pongs):
            before = self.svc
            event = RoundClosed(self.now - 0.5, None)
            self.svc, _ = detect(before, event, Instant(self.now, self.now), LIMITS)
            if self.svc is not before:
                self.feed(Detected(before, self.svc))
        return self

    def pong(self) -> World:
        before = self.svc
        event = RoundClosed(self.now - 0.5, Answer(ok=True))
        self.svc, _ = detect(before, event, Instant(self.now, self.now), LIMITS)
        if self.svc is not before:
            self.feed(Detected(before, self.svc))
        return self

    def feed(self, event: Detected | Tick | ActionFinished | Command) -> World:
        self.rec, effects = step(self.rec, event, self.svc, self.now, self.policy, self.ctx)
        self.started += [(self.now, e) for e in effects]
        return self

    def tick(self) -> World:
        """Advance to the next timer and fire it."""
        assert self.rec.next_at is not None
        self.now = self.rec.next_at
        return self.feed(Tick())

    def finish(self, ok: bool = True) -> World:
        return self.feed(ActionFinished(ok))

    @property
    def state(self) -> State:
        return published_state(self.svc, self.rec)


def test_default_delay_sequence() -> None:
    """0, 5, 10, 20, 40, 60, 60 seconds: the documented table."""
    delays = [delay_for(n, POLICY, 0.5) for n in range(1, 8)]
    assert delays == [0, 5, 10, 20, 40, 60, 60]


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.9), (0.999999, 1.1), (0.5, 1.0)])
def test_jitter_stays_within_its_fraction(rand: float, factor: float) -> None:
    """jitter 0.1 keeps every delay within +/- 10 %, the first (0) stays 0."""
    assert delay_for(1, POLICY, rand) == 0
    for attempt in range(2, 8):
        base = delay_for(attempt, POLICY, 0.5)
        assert delay_for(attempt, POLICY, rand) == pytest.approx(base * factor, rel=1e-5)


def test_crash_loop_walks_the_delay_table_then_gives_up() -> None:
    """A service that dies right after every restart: attempts at 0, +5, +10, +20, +40, failed."""
    w = World().birth().at(100).crash()
    assert len(w.started) == 1  # the first restart runs at once
    assert w.state == State.RESTARTING
    for _ in range(4):
        w.finish(ok=True).at(w.now + 0.5).birth().at(w.now + 0.5).crash()  # up 0.5 s, dies
        assert w.state == State.BACKOFF
        w.tick()
        assert w.state == State.RESTARTING
    times = [t for t, _ in w.started]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [6.0, 11.0, 21.0, 41.0]  # each delay plus the 1 s the service lived
    assert [e.attempt for _, e in w.started] == [1, 2, 3, 4, 5]
    # The fifth attempt fails too: five restarts within 300 s, so give up.
    w.finish(ok=True).at(w.now + 0.5).birth().at(w.now + 0.5).crash()
    assert w.rec.phase == Phase.FAILED
    assert w.state == State.FAILED
    assert w.rec.why_failed == "5 restarts within 300 s did not keep it up"
    assert w.rec.next_at is None  # retry_failed_after = 0: stays failed until reset
    assert len(w.started) == 5


def test_healthy_for_reset_after_starts_a_fresh_streak() -> None:
    """60 s continuously online resets the count: the next restart runs at once again."""
    w = World().birth().at(10).crash().finish().at(11).birth()
    w.at(12).crash()  # died within reset_after: the 2nd attempt waits 5 s
    assert w.state == State.BACKOFF
    w.tick().finish().at(w.now + 1).birth()
    w.at(w.now + 61).crash()  # this time it stayed up for 61 s
    assert w.state == State.RESTARTING
    assert w.started[-1][1].attempt == 1


def test_window_budget_counts_only_recent_attempts() -> None:
    """Attempts older than `window` no longer count towards giving up."""
    policy = replace(POLICY, max_restarts=2, window=100.0, reset_after=1000.0)
    w = World(policy).birth().at(0).crash().finish().at(1).birth()
    w.at(2).crash().tick().finish().at(w.now + 1).birth()  # attempt 2 at t=7
    w.at(300).crash()  # both earlier attempts are out of the window
    assert w.rec.phase == Phase.WAITING
    assert len(w.started) == 2


def test_failed_retries_after_the_cool_down() -> None:
    """retry_failed_after > 0: after the cool-down a fresh streak starts by itself."""
    policy = replace(POLICY, max_restarts=1, retry_failed_after=600.0)
    w = World(policy).birth().at(0).crash().finish().at(1).birth().at(2).crash()
    assert w.rec.phase == Phase.FAILED
    assert w.rec.next_at == 602.0
    w.tick()
    assert w.state == State.RESTARTING
    assert w.started[-1] == (602.0, StartAction("lost", 1))


def test_coming_back_on_its_own_cancels_the_pending_restart() -> None:
    """A new session online during back-off: no restart is started."""
    w = World().birth().at(0).crash().finish().at(1).birth().at(2).crash()
    assert w.state == State.BACKOFF
    w.at(3).birth()  # something else (systemd, a human) brought it back
    assert w.rec.phase == Phase.IDLE
    assert w.state == State.ONLINE
    assert len(w.started) == 1


def test_stale_will_never_triggers_a_restart() -> None:
    """The Will of an older session reaches the detector, which ignores it: no attempt."""
    w = World().birth().at(1).birth()  # session s2 took over from s1
    w.at(2).crash(session="s1")
    assert w.svc.state == State.ONLINE
    assert w.started == []


def test_hung_is_restarted_and_a_late_recovery_of_the_old_session_does_not_verify() -> None:
    """Only a new session proves the restart worked; the old session's pong does not."""
    w = World().birth().at(5).hang()
    assert w.svc.state == State.HUNG
    assert w.started[-1][1].cause == "hung"
    w.finish(ok=True)
    assert w.rec.phase == Phase.VERIFYING
    w.at(6).pong()  # the old session answers once more
    assert w.rec.phase == Phase.VERIFYING
    w.at(7).birth()
    assert w.rec.phase == Phase.IDLE
    assert w.state == State.ONLINE


def test_no_new_session_within_verify_timeout_fails_the_attempt() -> None:
    """The action said yes but nothing came online: next attempt after its delay."""
    w = World().birth().at(0).crash().finish(ok=True)
    assert w.rec.next_at == 30.0
    w.tick()
    assert w.state == State.BACKOFF
    assert w.rec.next_at == 35.0


def test_failed_action_backs_off() -> None:
    """A non-zero exit (or a timeout) counts as a failed attempt."""
    w = World().birth().at(0).crash().finish(ok=False)
    assert w.state == State.BACKOFF
    assert w.rec.next_at == 5.0
    assert w.rec.attempt == 1


def test_new_session_seen_while_the_action_runs_verifies_at_once() -> None:
    """The service was back before the action returned: done, nothing to wait for."""
    w = World().birth().at(0).crash().at(0.2).birth().finish(ok=True)
    assert w.rec.phase == Phase.IDLE


def test_settle_hold_defers_attempts() -> None:
    """After a (re)connect no attempt starts before the settle period ends."""
    w = World(ctx=Context(hold_until=10.0, rand=0.5)).birth().at(2).crash()
    assert w.state == State.BACKOFF
    assert w.rec.next_at == 10.0
    w.at(4).birth()  # re-announced within the settle period
    assert w.started == []


def test_clean_exit_restarts_only_when_asked() -> None:
    """exited with code 0 is not a failure unless restart_clean_exit is set."""
    clean = Service(name="svc", state=State.OFFLINE, reason="exited", exit_code=0)
    assert cause_of(clean, POLICY) is None
    assert cause_of(clean, replace(POLICY, restart_clean_exit=True)) == "exited"
    assert cause_of(replace(clean, exit_code=3), POLICY) == "exited"
    assert cause_of(replace(clean, exit_code=None, signal=9), POLICY) == "exited"


def test_on_list_decides_which_reasons_restart() -> None:
    """`shutdown` is not restarted by default; hung is, unless removed from `on`."""
    stopped = Service(name="svc", state=State.STOPPED, reason="shutdown")
    assert cause_of(stopped, POLICY) is None
    assert cause_of(stopped, replace(POLICY, on=frozenset({"shutdown"}))) == "shutdown"
    hung = Service(name="svc", state=State.HUNG)
    assert cause_of(hung, replace(POLICY, on=frozenset({"lost"}))) is None


def test_no_action_means_watch_and_alert_only() -> None:
    """Action `none`: failures are seen, nothing is started."""
    w = World(replace(POLICY, has_action=False)).birth().at(1).crash()
    assert w.started == []
    assert w.state == State.OFFLINE


def test_pause_suppresses_and_resume_restarts() -> None:
    """Paused: no restarts; resume while down starts one."""
    w = World().birth()
    w.feed(Command("pause", w.svc)).at(1).crash()
    assert w.started == []
    assert w.state == State.OFFLINE
    assert w.rec.paused
    w.at(2).feed(Command("resume", w.svc))
    assert w.state == State.RESTARTING
    assert len(w.started) == 1


def test_reset_clears_failed_and_restarts_now() -> None:
    """`presence reset`: the budget is forgotten and attempt 1 runs immediately."""
    policy = replace(POLICY, max_restarts=1)
    w = World(policy).birth().at(0).crash().finish().at(1).birth().at(2).crash()
    assert w.state == State.FAILED
    w.at(3).feed(Command("reset", w.svc))
    assert w.state == State.RESTARTING
    assert w.started[-1] == (3.0, StartAction("lost", 1))
    assert w.rec.attempts_at == (3.0,)


def test_manual_restart_runs_now_and_does_not_spend_the_budget() -> None:
    """`presence restart` on a healthy service: action now, verified by a new session."""
    w = World().birth()
    w.at(5).feed(Command("restart", w.svc))
    assert w.started == [(5.0, StartAction("manual", 0, manual=True))]
    assert w.rec.attempts_at == ()
    assert w.rec.restarts == 1
    w.finish().at(6).birth()
    assert w.state == State.ONLINE


def test_one_action_at_a_time() -> None:
    """While an action runs, further failures and commands start nothing new."""
    w = World().birth().at(0).hang()
    w.at(0.5).crash()  # the hung session's Will arrives while the action runs
    w.feed(Command("restart", w.svc))
    assert len(w.started) == 1


def test_late_action_results_change_nothing() -> None:
    """A result for a phase that is no longer running is ignored."""
    w = World().birth()
    before = w.rec
    w.finish(ok=False)
    assert w.rec == before
