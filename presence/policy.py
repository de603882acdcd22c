"""Recovery: the pure restart policy that turns verdicts into restart attempts.

`step(rec, event, now, policy, ctx) -> (rec, effects)` is a pure function. The monitor keeps one
`Recovery` per service next to the detection record (`tracker.Service`) and feeds it what the
detector saw, timer expiries, action results and operator commands. Effects ask the shell to
start an action; everything else (the published state, `next_attempt_at`) is read off the
record. Jitter comes in as a number, so tests pin it.

The delay before attempt n of an episode: 0 for the first, then
`initial_delay * factor ** (n - 2)` capped at `max_delay`, each +/- `jitter`; defaults give
0, 5, 10, 20, 40, 60, 60 ... seconds. `reset_after` seconds continuously online resets the
count. `max_restarts` attempts within `window` seconds means restarting is pointless: `failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

from presence.tracker import Service, State

__all__ = [
    "ActionFinished",
    "Command",
    "Context",
    "Detected",
    "Phase",
    "Policy",
    "Recovery",
    "StartAction",
    "Tick",
    "cause_of",
    "delay_for",
    "published_state",
    "step",
]


class Phase(Enum):
    """Where a service's recovery stands."""

    #: Nothing to do (healthy, or failing with no action configured, or paused).
    IDLE = "idle"
    #: An attempt is due at `next_at` (back-off delay, or the settle hold after a reconnect).
    WAITING = "waiting"
    #: The restart action is running.
    RUNNING = "running"
    #: The action succeeded; a new session must come online by `next_at`.
    VERIFYING = "verifying"
    #: Gave up (`max_restarts` within `window`); `next_at` is the cool-down retry, if any.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Policy:
    """The restart policy of one service (from RestartSettings plus whether it has an action)."""

    on: frozenset[str] = frozenset({"lost", "missing", "hung", "unhealthy", "exited"})
    restart_clean_exit: bool = False
    initial_delay: float = 5.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    reset_after: float = 60.0
    max_restarts: int = 5
    window: float = 300.0
    verify_timeout: float = 30.0
    retry_failed_after: float = 0.0
    #: False for action `none`: watch and alert only.
    has_action: bool = True


@dataclass(frozen=True, slots=True)
class Recovery:
    """The recovery record of one service."""

    phase: Phase = Phase.IDLE
    #: Attempts in the current streak (reset after `reset_after` healthy seconds).
    attempt: int = 0
    #: Monotonic times of recent attempts (for the `window` budget).
    attempts_at: tuple[float, ...] = ()
    next_at: float | None = None
    #: Why we are restarting: lost, missing, hung, unhealthy, exited, shutdown.
    cause: str | None = None
    #: The (session, incarnation) that failed; a different one coming online verifies.
    baseline: tuple[str | None, int] = (None, 0)
    #: Monotonic time since which the service has been continuously healthy.
    healthy_since: float | None = None
    #: Set while an action runs if the new session already showed up.
    seen_new: bool = False
    paused: bool = False
    manual: bool = False
    #: Total restart actions started (the verdict's `restarts`).
    restarts: int = 0
    why_failed: str | None = field(default=None, compare=False)


# ----------------------------------------------------------------------------------------------
# events and effects


@dataclass(frozen=True, slots=True)
class Context:
    """What the shell knows that the record does not: the settle hold and a jitter sample."""

    #: Monotonic time before which no attempt may start (the settle period after a reconnect).
    hold_until: float = 0.0
    #: A uniform sample in [0, 1) for the jitter of a delay scheduled by this step.
    rand: float = 0.5


@dataclass(frozen=True, slots=True)
class Detected:
    """The detector changed the service's record (state or session)."""

    before: Service
    after: Service


@dataclass(frozen=True, slots=True)
class Tick:
    """`next_at` has passed."""


@dataclass(frozen=True, slots=True)
class ActionFinished:
    """The restart action returned."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command: reset, restart, pause or resume."""

    name: str
    svc: Service


Event = Detected | Tick | ActionFinished | Command


@dataclass(frozen=True, slots=True)
class StartAction:
    """Run the service's restart action now."""

    cause: str
    attempt: int
    manual: bool = False


Effect = StartAction
_NONE: Final[tuple[Effect, ...]] = ()


# ----------------------------------------------------------------------------------------------
# pure helpers


def cause_of(svc: Service, policy: Policy) -> str | None:
    """The restart trigger a detection record represents under `policy`, or None if healthy."""
    cause: str | None
    if svc.state == State.HUNG:
        cause = "hung"
    elif svc.state == State.UNHEALTHY:
        cause = "unhealthy"
    elif svc.state == State.STOPPED:
        cause = "shutdown"
    elif svc.state == State.OFFLINE:
        cause = svc.reason or "lost"
        clean = svc.exit_code == 0 and svc.signal is None
        if cause == "exited" and clean and not policy.restart_clean_exit:
            return None  # systemd's on-failure semantics: a clean exit is not a failure
    else:
        return None
    return cause if cause in policy.on else None


def delay_for(attempt: int, policy: Policy, rand: float) -> float:
    """Seconds to wait before attempt `attempt` (1-based) of a streak."""
    if attempt <= 1:
        return 0.0
    base = min(policy.max_delay, policy.initial_delay * policy.factor ** (attempt - 2))
    return max(0.0, base * (1.0 + policy.jitter * (2.0 * rand - 1.0)))


def published_state(svc: Service, rec: Recovery) -> State:
    """The verdict state: recovery's phase where it is acting, else what detection says."""
    if rec.phase == Phase.FAILED:
        return State.FAILED
    if rec.paused:
        return svc.state
    if rec.phase in (Phase.RUNNING, Phase.VERIFYING):
        return State.RESTARTING
    if rec.phase == Phase.WAITING:
        return State.BACKOFF
    return svc.state


def _is_new(svc: Service, baseline: tuple[str | None, int]) -> bool:
    """A session (or incarnation) other than the one that failed is online."""
    session, incarnation = baseline
    return svc.connected and (svc.session != session or svc.incarnation > incarnation)


def _healthy(svc: Service) -> bool:
    return svc.state in (State.ONLINE, State.SUSPECT)


def _schedule(
    rec: Recovery, svc: Service, cause: str, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    """Plan the next attempt of the streak: now, later, or give up."""
    attempt = rec.attempt + 1
    at = max(now + delay_for(attempt, policy, ctx.rand), ctx.hold_until)
    recent = tuple(t for t in rec.attempts_at if t > at - policy.window)
    rec = replace(rec, cause=cause, attempts_at=recent, baseline=(svc.session, svc.incarnation))
    if len(recent) >= policy.max_restarts:
        why = f"{len(recent)} restarts within {policy.window:g} s did not keep it up"
        retry = now + policy.retry_failed_after if policy.retry_failed_after > 0 else None
        return replace(rec, phase=Phase.FAILED, next_at=retry, why_failed=why), _NONE
    if at <= now:
        return _start(rec, cause, attempt, now)
    return replace(rec, phase=Phase.WAITING, next_at=at), _NONE


def _start(
    rec: Recovery, cause: str, attempt: int, now: float, *, manual: bool = False
) -> tuple[Recovery, tuple[Effect, ...]]:
    rec = replace(
        rec,
        phase=Phase.RUNNING,
        next_at=None,
        attempt=attempt if not manual else rec.attempt,
        attempts_at=rec.attempts_at if manual else (*rec.attempts_at, now),
        restarts=rec.restarts + 1,
        seen_new=False,
        manual=manual,
    )
    return rec, (StartAction(cause, attempt, manual),)


def _failure(
    rec: Recovery, svc: Service, cause: str, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    """A new failure while idle: begin (or continue) a streak."""
    if rec.paused or not policy.has_action:
        return replace(rec, cause=cause), _NONE
    return _schedule(rec, svc, cause, now, policy, ctx)


# ----------------------------------------------------------------------------------------------
# the transition function


def _on_detected(
    rec: Recovery, ev: Detected, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    svc = ev.after
    cause = cause_of(svc, policy)
    stayed_up = rec.healthy_since is not None and now - rec.healthy_since >= policy.reset_after
    if stayed_up and rec.attempt:
        rec = replace(rec, attempt=0)  # it stayed up long enough: a fresh streak
    if _healthy(svc):
        if rec.healthy_since is None:
            rec = replace(rec, healthy_since=now)
    elif rec.healthy_since is not None:
        rec = replace(rec, healthy_since=None)

    if rec.phase == Phase.RUNNING:
        return replace(rec, seen_new=rec.seen_new or _is_new(svc, rec.baseline)), _NONE
    if rec.phase == Phase.VERIFYING:
        if _is_new(svc, rec.baseline):
            return replace(rec, phase=Phase.IDLE, next_at=None, healthy_since=now), _NONE
        return rec, _NONE
    if rec.phase in (Phase.WAITING, Phase.FAILED):
        if _healthy(svc):
            # Came back on its own: the pending restart (or the give-up) no longer applies.
            # The `window` budget still remembers the attempts, so a crash loop that comes
            # up between crashes gives up again at once.
            return replace(rec, phase=Phase.IDLE, next_at=None, why_failed=None), _NONE
        return (replace(rec, cause=cause) if cause else rec), _NONE
    # IDLE: a transition into a failure that the policy restarts on starts an attempt.
    was = cause_of(ev.before, policy)
    new_death = cause is not None and (was is None or ev.before.session != svc.session)
    if new_death and cause is not None:
        return _failure(rec, svc, cause, now, policy, ctx)
    return rec, _NONE


def _on_tick(
    rec: Recovery, svc: Service, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    if rec.next_at is None or now < rec.next_at:
        return rec, _NONE
    if rec.phase == Phase.WAITING:
        if rec.paused:
            return replace(rec, phase=Phase.IDLE, next_at=None), _NONE
        if now < ctx.hold_until:
            return replace(rec, next_at=ctx.hold_until), _NONE
        cause = cause_of(svc, policy)
        if cause is None:
            return replace(rec, phase=Phase.IDLE, next_at=None), _NONE  # it recovered
        return _start(rec, cause, rec.attempt + 1, now)
    if rec.phase == Phase.VERIFYING:
        # The action said yes, but no new session came: that attempt failed.
        return _schedule(rec, svc, rec.cause or "lost", now, policy, ctx)
    if rec.phase == Phase.FAILED:
        # The cool-down is over: a fresh streak, as if a human had pressed reset.
        rec = replace(rec, phase=Phase.IDLE, next_at=None, attempt=0, attempts_at=())
        cause = cause_of(svc, policy)
        return _failure(rec, svc, cause, now, policy, ctx) if cause else (rec, _NONE)
    return rec, _NONE


def _on_finished(
    rec: Recovery, ev: ActionFinished, svc: Service, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    if rec.phase != Phase.RUNNING:
        return rec, _NONE
    if ev.ok:
        if rec.seen_new or _is_new(svc, rec.baseline):
            return replace(rec, phase=Phase.IDLE, next_at=None, healthy_since=now), _NONE
        return replace(rec, phase=Phase.VERIFYING, next_at=now + policy.verify_timeout), _NONE
    cause = cause_of(svc, policy)
    if cause is None or rec.paused:
        return replace(rec, phase=Phase.IDLE, next_at=None), _NONE
    return _schedule(rec, svc, cause, now, policy, ctx)


def _on_command(
    rec: Recovery, cmd: Command, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    svc = cmd.svc
    busy = rec.phase in (Phase.RUNNING, Phase.VERIFYING)
    if cmd.name == "pause":
        if rec.phase == Phase.WAITING:
            rec = replace(rec, phase=Phase.IDLE, next_at=None)
        return replace(rec, paused=True), _NONE
    if cmd.name == "resume":
        rec = replace(rec, paused=False)
        cause = cause_of(svc, policy)
        if rec.phase == Phase.IDLE and cause is not None:
            return _failure(rec, svc, cause, now, policy, ctx)
        return rec, _NONE
    if cmd.name == "reset":
        if busy:
            return rec, _NONE
        rec = replace(
            rec, phase=Phase.IDLE, next_at=None, attempt=0, attempts_at=(), why_failed=None
        )
        cause = cause_of(svc, policy)
        if cause is None or not policy.has_action or rec.paused:
            return rec, _NONE
        rec = replace(rec, cause=cause, baseline=(svc.session, svc.incarnation))
        return _start(rec, cause, 1, now)
    if cmd.name == "restart" and not busy and policy.has_action:
        rec = replace(rec, baseline=(svc.session, svc.incarnation), cause="manual")
        return _start(rec, "manual", rec.attempt, now, manual=True)
    return rec, _NONE


def step(
    rec: Recovery, event: Event, svc: Service, now: float, policy: Policy, ctx: Context
) -> tuple[Recovery, tuple[Effect, ...]]:
    """Apply one event to one service's recovery; `svc` is its current detection record and
    `now` the monotonic time."""
    if isinstance(event, Detected):
        return _on_detected(rec, event, now, policy, ctx)
    if isinstance(event, Tick):
        return _on_tick(rec, svc, now, policy, ctx)
    if isinstance(event, ActionFinished):
        return _on_finished(rec, event, svc, now, policy, ctx)
    return _on_command(rec, event, now, policy, ctx)
