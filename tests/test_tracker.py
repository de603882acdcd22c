"""The detection state machine, driven directly with made-up instants (no broker, no sleeps)."""

from __future__ import annotations

import pytest

from presence.clock import Instant
from presence.protocol import Status, Verdict
from presence.tracker import (
    Answer,
    GraceExpired,
    Limits,
    RoundClosed,
    Service,
    State,
    StateChanged,
    StatusSeen,
    restore,
    step,
)

LIMITS = Limits(missed_pongs=2)
T0 = Instant(mono=1000.0, wall=1_700_000_000.0)


def at(seconds: float) -> Instant:
    """An instant `seconds` after T0 on both clocks."""
    return T0.after(seconds)


def birth(session: str = "s1", since: float = 1.0, incarnation: int = 0) -> StatusSeen:
    """A birth status event."""
    return StatusSeen(Status("online", session, since, host="h", pid=7, incarnation=incarnation))


def death(session: str = "s1", since: float = 1.0, reason: str = "lost", **kw: int) -> StatusSeen:
    """An offline status event (Will, shutdown or exit)."""
    return StatusSeen(Status("offline", session, since, reason=reason, **kw))  # type: ignore[arg-type]


def online(name: str = "svc") -> Service:
    """A service that came online at T0 with session s1."""
    svc, _ = step(Service(name=name), birth(), T0, LIMITS)
    return svc


def rnd(svc: Service, seconds: float, answer: Answer | None) -> tuple[Service, tuple[object, ...]]:
    """Close a round sent `seconds - 0.5` after T0, at `seconds`."""
    return step(svc, RoundClosed(T0.mono + seconds - 0.5, answer), at(seconds), LIMITS)


OK = Answer(ok=True)
BAD = Answer(ok=False, detail={"db": "down"})


def test_birth_takes_unknown_to_online() -> None:
    """A first birth: online, with session, host and pid, and one state-change effect."""
    svc, effects = step(Service(name="svc", declared=True), birth(), T0, LIMITS)
    assert svc.state == State.ONLINE
    assert (svc.session, svc.host, svc.pid, svc.reason) == ("s1", "h", 7, "birth")
    assert svc.since == round(T0.wall, 3)
    assert effects == (StateChanged("svc", State.UNKNOWN, State.ONLINE, "birth"),)


def test_grace_expiry_takes_unknown_to_offline_missing() -> None:
    """Declared but never seen within startup_grace: offline, reason missing."""
    svc, effects = step(Service(name="svc", declared=True), GraceExpired(), at(10), LIMITS)
    assert (svc.state, svc.reason) == (State.OFFLINE, "missing")
    assert effects == (StateChanged("svc", State.UNKNOWN, State.OFFLINE, "missing"),)


def test_grace_expiry_leaves_seen_services_alone() -> None:
    """The grace timer only concerns services still unknown."""
    svc = online()
    assert step(svc, GraceExpired(), at(10), LIMITS) == (svc, ())


def test_missed_rounds_go_suspect_then_hung_then_recover() -> None:
    """One missed round: suspect; missed_pongs in a row: hung; a pong: online again."""
    svc = online()
    svc, effects = rnd(svc, 1, None)
    assert (svc.state, svc.missed, svc.reason) == (State.SUSPECT, 1, "missed_pong")
    assert effects == (StateChanged("svc", State.ONLINE, State.SUSPECT, "missed_pong"),)
    svc, effects = rnd(svc, 2, None)
    assert (svc.state, svc.missed, svc.reason) == (State.HUNG, 2, "missed_pongs")
    assert effects == (StateChanged("svc", State.SUSPECT, State.HUNG, "missed_pongs"),)
    svc, effects = rnd(svc, 3, OK)
    assert (svc.state, svc.missed, svc.reason) == (State.ONLINE, 0, "pong")
    assert effects == (StateChanged("svc", State.HUNG, State.ONLINE, "pong"),)


def test_missed_count_saturates_while_hung() -> None:
    """A hung service's record (and so its verdict) does not change every further round."""
    svc = online()
    for second in (1, 2):
        svc, _ = rnd(svc, second, None)
    assert svc.state == State.HUNG
    again, effects = rnd(svc, 3, None)
    assert again is svc
    assert effects == ()


def test_a_single_miss_then_pong_goes_back_online() -> None:
    """Suspect is not sticky: the next good pong clears it."""
    svc, _ = rnd(online(), 1, None)
    svc, effects = rnd(svc, 2, OK)
    assert svc.state == State.ONLINE
    assert effects == (StateChanged("svc", State.SUSPECT, State.ONLINE, "pong"),)


def test_not_ok_pongs_go_suspect_then_unhealthy_with_detail() -> None:
    """ok:false for missed_pongs rounds: unhealthy, carrying the health detail."""
    svc, _ = rnd(online(), 1, BAD)
    assert (svc.state, svc.reason, svc.failed_checks) == (State.SUSPECT, "health_check", 1)
    svc, effects = rnd(svc, 2, BAD)
    assert (svc.state, svc.reason, svc.detail) == (State.UNHEALTHY, "health_check", {"db": "down"})
    assert effects == (StateChanged("svc", State.SUSPECT, State.UNHEALTHY, "health_check"),)
    svc, _ = rnd(svc, 3, OK)
    assert (svc.state, svc.detail) == (State.ONLINE, None)


def test_unhealthy_that_stops_answering_becomes_hung() -> None:
    """Silence beats a bad answer: an unhealthy service that goes quiet is hung."""
    svc = online()
    for second in (1, 2):
        svc, _ = rnd(svc, second, BAD)
    assert svc.state == State.UNHEALTHY
    svc, _ = rnd(svc, 3, None)
    assert svc.state == State.UNHEALTHY  # one miss is below the threshold
    svc, _ = rnd(svc, 4, None)
    assert svc.state == State.HUNG


def test_steady_healthy_rounds_allocate_nothing() -> None:
    """The common case returns the very same record (the monitor's hot path)."""
    svc = online()
    again, effects = rnd(svc, 1, OK)
    assert again is svc
    assert effects == ()


def test_rounds_sent_before_the_birth_do_not_count() -> None:
    """A ping sent before the service subscribed could not have been answered."""
    svc = online()
    early = RoundClosed(T0.mono - 0.1, None)
    assert step(svc, early, at(1), LIMITS) == (svc, ())


def test_rounds_do_not_touch_services_that_are_not_connected() -> None:
    """Offline, stopped and unknown services are not pinged, so rounds cannot blame them."""
    svc, _ = step(online(), death(), at(1), LIMITS)
    assert svc.state == State.OFFLINE
    assert rnd(svc, 5, None) == (svc, ())
    unknown = Service(name="svc", declared=True)
    assert rnd(unknown, 5, None) == (unknown, ())


def test_will_of_current_session_is_offline_lost() -> None:
    """The Will of the session we believe in: crashed."""
    svc, effects = step(online(), death(), at(1), LIMITS)
    assert (svc.state, svc.reason) == (State.OFFLINE, "lost")
    assert effects == (StateChanged("svc", State.ONLINE, State.OFFLINE, "lost"),)


def test_stale_will_of_another_session_is_ignored_while_connected() -> None:
    """A late Will of an older connection must never mark a live service offline."""
    svc = online()
    assert step(svc, death(session="s0", since=0.5), at(1), LIMITS) == (svc, ())
    # Even a Will claiming a newer start time: the live session has not died.
    assert step(svc, death(session="s9", since=9.0), at(1), LIMITS) == (svc, ())


def test_while_offline_an_older_sessions_death_is_ignored_and_a_newer_one_accepted() -> None:
    """When not connected, session start times order the deaths."""
    svc, _ = step(online(), death(reason="shutdown"), at(1), LIMITS)
    assert svc.state == State.STOPPED
    assert step(svc, death(session="s0", since=0.5), at(2), LIMITS) == (svc, ())
    newer, effects = step(svc, death(session="s2", since=2.0), at(3), LIMITS)
    assert (newer.state, newer.session, newer.reason) == (State.OFFLINE, "s2", "lost")
    assert effects == (StateChanged("svc", State.STOPPED, State.OFFLINE, "lost"),)


def test_graceful_shutdown_is_stopped() -> None:
    """reason shutdown: stopped, not offline."""
    svc, effects = step(online(), death(reason="shutdown"), at(1), LIMITS)
    assert (svc.state, svc.reason) == (State.STOPPED, "shutdown")
    assert effects == (StateChanged("svc", State.ONLINE, State.STOPPED, "shutdown"),)


def test_exited_carries_exit_code_and_signal() -> None:
    """A runner's `exited` report: offline/exited with the code."""
    svc, _ = step(online(), death(reason="exited", exit_code=3, incarnation=1), at(1), LIMITS)
    assert (svc.state, svc.reason, svc.exit_code) == (State.OFFLINE, "exited", 3)
    killed, _ = step(online(), death(reason="exited", signal=9), at(1), LIMITS)
    assert killed.signal == 9


def test_new_incarnation_on_the_same_session_comes_back_online() -> None:
    """A runner restarts its child: same connection, higher incarnation, online again."""
    svc, _ = step(online(), death(reason="exited", exit_code=1), at(1), LIMITS)
    svc, effects = step(svc, birth(incarnation=1), at(2), LIMITS)
    assert (svc.state, svc.incarnation, svc.exit_code) == (State.ONLINE, 1, None)
    assert effects == (StateChanged("svc", State.OFFLINE, State.ONLINE, "birth"),)


def test_duplicate_deliveries_change_nothing() -> None:
    """QoS 1 redelivery and retained copies of the current status are no-ops."""
    svc = online()
    again, effects = step(svc, birth(), at(1), LIMITS)
    assert (again.state, again.session, effects) == (svc.state, svc.session, ())
    gone, _ = step(svc, death(), at(1), LIMITS)
    assert step(gone, death(), at(2), LIMITS) == (gone, ())


def test_a_new_session_while_online_restarts_the_counters_without_a_state_event() -> None:
    """A reconnect (new session) of a live service: still online, counters reset."""
    svc, _ = rnd(online(), 1, None)
    assert svc.state == State.SUSPECT
    svc, effects = step(svc, birth(session="s2", since=2.0), at(2), LIMITS)
    assert (svc.state, svc.session, svc.missed) == (State.ONLINE, "s2", 0)
    assert effects == (StateChanged("svc", State.SUSPECT, State.ONLINE, "birth"),)
    again, effects = step(online(), birth(session="s2", since=2.0), at(2), LIMITS)
    assert (again.session, effects) == ("s2", ())


def test_an_offline_without_a_current_session_is_taken_as_is() -> None:
    """At start-up the retained status may already say offline."""
    svc, effects = step(Service(name="svc"), death(reason="shutdown"), T0, LIMITS)
    assert (svc.state, svc.session) == (State.STOPPED, "s1")
    assert effects == (StateChanged("svc", State.UNKNOWN, State.STOPPED, "shutdown"),)


def _verdict(state: str, session: str = "s1", **kw: object) -> Verdict:
    base: dict[str, object] = {
        "service": "svc",
        "state": state,
        "since": 123.0,
        "session": session,
        "reason": "r",
        "missed": 0,
        "rtt_ms": None,
        "restarts": 4,
    }
    base.update(kw)
    return Verdict(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("before", "missed", "failed"),
    [("online", 0, 0), ("suspect", 1, 0), ("hung", 2, 0), ("unhealthy", 0, 2)],
)
def test_restore_keeps_a_predecessors_verdict_for_the_same_session(
    before: str, missed: int, failed: int
) -> None:
    """A restarted monitor carries the verdict over, with its counters primed."""
    svc = restore(online(), _verdict(before), LIMITS)
    assert (svc.state.value, svc.since, svc.reason) == (before, 123.0, "r")
    assert (svc.missed, svc.failed_checks) == (missed, failed)


def test_restore_keeps_what_changed_while_the_monitor_was_away() -> None:
    """Predecessor said online; the service died meanwhile: the death stands."""
    gone, _ = step(Service(name="svc"), death(), T0, LIMITS)
    svc = restore(gone, _verdict("online"), LIMITS)
    assert (svc.state, svc.reason, svc.since) == (State.OFFLINE, "lost", round(T0.wall, 3))


def test_restore_of_another_session_starts_afresh() -> None:
    """A different session is a new life: the old verdict does not apply to it."""
    fresh = online()
    assert restore(fresh, _verdict("hung", session="old"), LIMITS) == fresh


def test_restore_tolerates_states_from_newer_versions() -> None:
    """An unknown state string from a future monitor is ignored."""
    fresh = online()
    assert restore(fresh, _verdict("quantum"), LIMITS) == fresh
