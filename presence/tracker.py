"""Detection: the pure state machine that turns statuses and ping rounds into verdicts.

`step(service, event, now, limits) -> (service, effects)` is a pure function: no I/O, no clock
reads, no globals. The monitor loop owns the records, feeds events in and carries effects out.
Timers are expressed as monotonic instants inside the events, so tests drive every transition
with made-up times and no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from presence.clock import Instant
from presence.protocol import Status, Verdict

__all__ = [
    "CONNECTED",
    "Answer",
    "Effect",
    "GraceExpired",
    "Limits",
    "RoundClosed",
    "Service",
    "Silent",
    "State",
    "StateChanged",
    "StatusSeen",
    "restore",
    "step",
]


class State(StrEnum):
    """A verdict state, as published on `P/_monitor/services/<name>`."""

    #: Declared in the config, nothing seen yet (within `startup_grace`).
    UNKNOWN = "unknown"
    #: Connected and answering pings with ok:true.
    ONLINE = "online"
    #: Connected, but the last round(s) had no pong or ok:false, fewer than `missed_pongs`.
    SUSPECT = "suspect"
    #: Connected (no Will), but `missed_pongs` rounds in a row without a pong: frozen or deadlocked.
    HUNG = "hung"
    #: Connected and answering, but ok:false for `missed_pongs` rounds: alive but not healthy.
    UNHEALTHY = "unhealthy"
    #: Not connected: Will fired (`lost`), never seen (`missing`) or the program exited (`exited`).
    OFFLINE = "offline"
    #: Shut down on purpose (graceful offline, reason `shutdown`).
    STOPPED = "stopped"
    #: Recovery: a restart action is running or we wait for the new session to come online.
    RESTARTING = "restarting"
    #: Recovery: waiting out the back-off delay before the next restart attempt.
    BACKOFF = "backoff"
    #: Recovery gave up (restart budget spent); needs `presence reset` or the cool-down.
    FAILED = "failed"


#: States in which the service holds a live MQTT connection and is pinged.
CONNECTED: Final = frozenset({State.ONLINE, State.SUSPECT, State.HUNG, State.UNHEALTHY})


@dataclass(frozen=True, slots=True)
class Limits:
    """The thresholds the state machine needs (from MonitorSettings)."""

    missed_pongs: int = 2


@dataclass(frozen=True, slots=True)
class Service:
    """Everything the monitor knows about one service. Immutable; `step` returns a new one."""

    name: str
    declared: bool = False
    state: State = State.UNKNOWN
    #: Wall time of the last state change (for people; timers use `mono` fields).
    since: float = 0.0
    reason: str | None = None
    #: The session we believe is current; statuses and pongs of other sessions are stale.
    session: str | None = None
    #: The current session's own start time (from its birth/Will), to order sessions.
    session_since: float = 0.0
    incarnation: int = 0
    #: Monotonic time the current session was first seen online: only rounds sent after it count.
    online_mono: float = 0.0
    missed: int = 0
    failed_checks: int = 0
    host: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    group: str | None = None
    detail: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def connected(self) -> bool:
        """True while the service holds a live connection (pings are expected)."""
        return self.state in CONNECTED


# ----------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """A status payload arrived on `P/<name>/status` (birth, Will, graceful offline, exit)."""

    status: Status


@dataclass(frozen=True, slots=True)
class Answer:
    """The pong a service gave in one round."""

    ok: bool
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """A ping round's deadline passed; `answer` is the service's pong in it, if any."""

    sent_mono: float
    answer: Answer | None


@dataclass(frozen=True, slots=True)
class GraceExpired:
    """`startup_grace` has passed since the monitor started."""


@dataclass(frozen=True, slots=True)
class Silent:
    """A device's heartbeat topic has been silent for its `stale_after`: the dead man's switch."""


Event = StatusSeen | RoundClosed | GraceExpired | Silent

# ----------------------------------------------------------------------------------------------
# effects


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The verdict state changed: publish an event (the shell also republishes the verdict)."""

    service: str
    from_state: State
    to_state: State
    reason: str | None


Effect = StateChanged
_NO_EFFECTS: Final[tuple[Effect, ...]] = ()


def _move(
    svc: Service, to: State, reason: str | None, now: Instant, **changes: Any
) -> tuple[Service, tuple[Effect, ...]]:
    """Return `svc` in state `to`, with a StateChanged effect when the state really changed."""
    if svc.state == to:
        return replace(svc, reason=reason, **changes), _NO_EFFECTS
    new = replace(svc, state=to, since=round(now.wall, 3), reason=reason, **changes)
    return new, (StateChanged(svc.name, svc.state, to, reason),)


def _connected_state(missed: int, failed: int, limits: Limits) -> tuple[State, str | None]:
    """The state of a connected service follows from its two consecutive-failure counters."""
    if missed >= limits.missed_pongs:
        return State.HUNG, "missed_pongs"
    if failed >= limits.missed_pongs:
        return State.UNHEALTHY, "health_check"
    if missed:
        return State.SUSPECT, "missed_pong"
    if failed:
        return State.SUSPECT, "health_check"
    return State.ONLINE, "pong"


def _on_status(svc: Service, status: Status, now: Instant) -> tuple[Service, tuple[Effect, ...]]:
    if status.state == "online":
        same_session = status.session == svc.session
        if same_session and svc.connected and status.incarnation <= svc.incarnation:
            # A duplicate (QoS 1 redelivery, retained copy after a resubscribe, a re-birth that
            # heals a stale Will): nothing new. Refresh what a birth may carry.
            return replace(svc, host=status.host, pid=status.pid, group=status.group), _NO_EFFECTS
        return _move(
            svc,
            State.ONLINE,
            "birth",
            now,
            session=status.session,
            session_since=status.since,
            incarnation=status.incarnation,
            online_mono=now.mono,
            missed=0,
            failed_checks=0,
            host=status.host,
            pid=status.pid,
            group=status.group,
            exit_code=None,
            signal=None,
            detail=None,
        )

    # offline: a Will (`lost`), a graceful stop (`shutdown`) or a runner's `exited`.
    if status.session != svc.session and svc.session is not None:
        # Stale death: the Will (or late offline) of another connection. While the current
        # session is connected it is alive as far as we know, and a late Will must never mark
        # it offline. While it is not, only a newer session's offline (one whose birth we
        # missed) tells us something.
        if svc.connected or status.since <= svc.session_since:
            return svc, _NO_EFFECTS
    elif (
        svc.state in (State.OFFLINE, State.STOPPED)
        and status.reason == svc.reason
        and status.incarnation <= svc.incarnation
    ):
        return svc, _NO_EFFECTS  # duplicate delivery
    reason = status.reason or "lost"
    to = State.STOPPED if reason == "shutdown" else State.OFFLINE
    return _move(
        svc,
        to,
        reason,
        now,
        session=status.session,
        session_since=status.since,
        incarnation=max(svc.incarnation, status.incarnation),
        missed=0,
        failed_checks=0,
        exit_code=status.exit_code,
        signal=status.signal,
    )


def _on_round(
    svc: Service, event: RoundClosed, now: Instant, limits: Limits
) -> tuple[Service, tuple[Effect, ...]]:
    # Only connected services are pinged, and only rounds sent after their birth count: a ping
    # sent before the service subscribed could not have been answered.
    if not svc.connected or event.sent_mono < svc.online_mono:
        return svc, _NO_EFFECTS
    answer = event.answer
    if answer is None:
        # Saturates at the threshold: a hung service's verdict is not republished every round
        # (how long it has been hung is in `since`).
        missed = min(svc.missed + 1, limits.missed_pongs)
        failed, detail = svc.failed_checks, svc.detail
    elif answer.ok:
        missed, failed, detail = 0, 0, None
    else:
        missed, failed, detail = 0, svc.failed_checks + 1, answer.detail
    if missed == svc.missed and failed == svc.failed_checks:
        return svc, _NO_EFFECTS  # the healthy steady state allocates nothing
    to, reason = _connected_state(missed, failed, limits)
    return _move(svc, to, reason, now, missed=missed, failed_checks=failed, detail=detail)


def restore(svc: Service, previous: Verdict, limits: Limits) -> Service:
    """Carry a predecessor monitor's verdict over to a freshly seen service.

    `svc` is the record after its first status in this monitor's life. When that status is
    of the session the old verdict described, the old verdict still holds (a hung service is
    still hung until it answers), so the picture survives a monitor restart unchanged.
    """
    try:
        before = State(previous.state)
    except ValueError:
        return svc  # a state a newer version published: start from what we see
    if previous.session == svc.session and (
        (svc.state == State.ONLINE and before in CONNECTED) or svc.state == before
    ):
        missed = limits.missed_pongs if before == State.HUNG else int(before == State.SUSPECT)
        failed = limits.missed_pongs if before == State.UNHEALTHY else 0
        svc = replace(
            svc,
            state=before,
            since=previous.since,
            reason=previous.reason,
            missed=missed,
            failed_checks=failed,
        )
    return svc


def step(
    svc: Service, event: Event, now: Instant, limits: Limits
) -> tuple[Service, tuple[Effect, ...]]:
    """Apply one event to one service; return the new record and what the shell must do."""
    if isinstance(event, StatusSeen):
        return _on_status(svc, event.status, now)
    if isinstance(event, RoundClosed):
        return _on_round(svc, event, now, limits)
    if isinstance(event, Silent):
        if not svc.connected:
            return svc, _NO_EFFECTS
        return _move(svc, State.HUNG, "stale", now, missed=limits.missed_pongs)
    if svc.state == State.UNKNOWN:
        return _move(svc, State.OFFLINE, "missing", now)
    return svc, _NO_EFFECTS
