"""From records to the published verdict, and back (pure helpers of the monitor)."""

from __future__ import annotations

from typing import Any

from presence.clock import Instant
from presence.policy import Phase, Policy, Recovery, published_state
from presence.protocol import Verdict
from presence.settings import Action, NoAction, RestartSettings
from presence.tracker import Service, State

__all__ = ["build_verdict", "policy_from", "restored_recovery"]

_ACTING = frozenset({State.RESTARTING, State.BACKOFF, State.FAILED})


def policy_from(restart: RestartSettings, action: Action) -> Policy:
    """The pure policy for a service's settings."""
    return Policy(
        on=frozenset(restart.on),
        restart_clean_exit=restart.restart_clean_exit,
        initial_delay=restart.initial_delay,
        factor=restart.factor,
        max_delay=restart.max_delay,
        jitter=restart.jitter,
        reset_after=restart.reset_after,
        max_restarts=restart.max_restarts,
        window=restart.window,
        verify_timeout=restart.verify_timeout,
        retry_failed_after=restart.retry_failed_after,
        has_action=not isinstance(action, NoAction),
    )


def build_verdict(
    svc: Service, rec: Recovery, rtt_ms: float | None, old: Verdict | None, now: Instant
) -> Verdict:
    """The verdict for a service: its detection record seen through its recovery."""
    state = published_state(svc, rec)
    acting = state in _ACTING
    extra: dict[str, Any] = {}
    if svc.exit_code is not None:
        extra["exit_code"] = svc.exit_code
    if svc.signal is not None:
        extra["signal"] = svc.signal
    if svc.detail is not None:
        extra["detail"] = svc.detail
    if svc.group is not None:
        extra["group"] = svc.group
    if rec.paused:
        extra["paused"] = True
    if state == State.BACKOFF:
        extra["attempt"] = rec.attempt + 1
    elif state == State.RESTARTING:
        extra["attempt"] = rec.attempt
    if rec.next_at is not None and state in (State.BACKOFF, State.FAILED):
        extra["next_attempt_at"] = round(now.wall + (rec.next_at - now.mono), 3)
    if state == State.FAILED and rec.why_failed:
        extra["why"] = rec.why_failed
    # `since` is when the published state last changed (a predecessor's verdict included).
    since = old.since if old is not None and old.state == state.value else round(now.wall, 3)
    return Verdict(
        service=svc.name,
        state=state.value,
        since=since,
        session=svc.session,
        reason=rec.cause if acting else svc.reason,
        missed=svc.missed,
        rtt_ms=rtt_ms if svc.connected else None,
        restarts=rec.restarts,
        extra=extra or None,
    )


def restored_recovery(previous: Verdict, now: float, policy: Policy) -> Recovery:
    """The recovery record a predecessor's verdict implies (its mono times do not survive)."""
    extra = previous.extra or {}
    attempt = extra.get("attempt")
    attempt = attempt if isinstance(attempt, int) and attempt > 0 else 0
    if previous.state == State.FAILED.value:
        retry = now + policy.retry_failed_after if policy.retry_failed_after > 0 else None
        why = extra.get("why")
        return Recovery(
            phase=Phase.FAILED,
            restarts=previous.restarts,
            attempt=attempt,
            next_at=retry,
            why_failed=why if isinstance(why, str) else None,
        )
    if previous.state == State.BACKOFF.value:
        return Recovery(restarts=previous.restarts, attempt=max(0, attempt - 1))
    if previous.state == State.RESTARTING.value:
        return Recovery(restarts=previous.restarts, attempt=attempt)
    return Recovery(restarts=previous.restarts)
