"""Alerts: one per episode, not one per second.

The decisions are pure (`observe`, `due`): per sink and service, an *episode* opens when the
service goes down and closes once it has been healthy for `resolve_after`. Within it a sink
gets at most one `down` (after `alert_after`, and after `alert_after_attempts` failed restarts
when set), reminders every `repeat_every`, one `failed`, a `restart` per attempt if it asks for
them, and a `recovered` at the end if it was told anything. Delivery runs in one worker thread
per sink with retries and back-off, so a dead webhook never blocks the monitor loop.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx
from loguru import logger

from presence.settings import ExecSink, Sink, WebhookSink

__all__ = [
    "DOWN_STATES",
    "Alert",
    "Alerter",
    "Episode",
    "Observation",
    "due",
    "observe",
]

#: Published states that open (or keep open) an episode.
DOWN_STATES: Final = frozenset({"offline", "hung", "unhealthy", "restarting", "backoff", "failed"})
_HEALTHY: Final = frozenset({"online", "suspect"})


@dataclass(frozen=True, slots=True)
class Observation:
    """A verdict change as the alerter needs it."""

    service: str
    before: str
    after: str
    reason: str | None
    #: The service has a restart action (otherwise escalation cannot wait for attempts).
    restartable: bool
    attempt: int = 0
    restarts: int = 0
    paused: bool = False
    #: The program behind a runner exited with code 0: not an outage.
    clean_exit: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Episode:
    """One sink's view of one service's outage (mono times)."""

    down_since: float
    healthy_since: float | None = None
    down_sent_at: float | None = None
    failed_sent: bool = False
    failed_attempts: int = 0
    restartable: bool = True
    state: str = "offline"
    reason: str | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    """One message for one sink."""

    kind: str
    service: str
    state: str
    reason: str | None
    text: str
    down_for: float = 0.0
    restarts: int = 0
    reminder: bool = False

    def to_json(self, ts: float) -> dict[str, Any]:
        """The JSON body of a webhook / stdin of an exec sink."""
        return {
            "kind": self.kind,
            "service": self.service,
            "state": self.state,
            "reason": self.reason,
            "text": self.text,
            "down_for": round(self.down_for, 1),
            "restarts": self.restarts,
            "reminder": self.reminder,
            "ts": round(ts, 3),
        }


def _is_down(obs: Observation) -> bool:
    return obs.after in DOWN_STATES and not (obs.after == "offline" and obs.clean_exit)


def observe(
    episode: Episode | None, obs: Observation, now: float, sink: Sink
) -> tuple[Episode | None, list[Alert]]:
    """Fold one verdict change into a sink's episode; return the alerts to send now."""
    if obs.paused:
        return None, []  # maintenance: no alerts, and the episode is forgotten
    alerts: list[Alert] = []
    if episode is None:
        if not _is_down(obs):
            return None, []
        episode = Episode(down_since=now)
    episode = replace(
        episode,
        restartable=obs.restartable,
        state=obs.after,
        reason=obs.reason,
        restarts=obs.restarts,
    )
    if obs.after in _HEALTHY:
        if episode.healthy_since is None:
            episode = replace(episode, healthy_since=now)
    elif _is_down(obs):
        episode = replace(episode, healthy_since=None)
    if obs.before == "restarting" and obs.after in ("backoff", "failed"):
        episode = replace(episode, failed_attempts=episode.failed_attempts + 1)
    if obs.after == "restarting" and obs.before != "restarting" and "restart" in sink.on:
        text = f"{obs.service}: restarting (attempt {obs.attempt}, {obs.reason})"
        alerts.append(_alert("restart", episode, obs.service, text, now))
    if obs.after == "failed" and not episode.failed_sent:
        episode = replace(episode, failed_sent=True)
        if "failed" in sink.on:
            text = f"{obs.service} FAILED: gave up restarting ({obs.detail or obs.reason})"
            alerts.append(_alert("failed", episode, obs.service, text, now))
    more, episode = due(episode, obs.service, now, sink)
    return episode, alerts + more


def due(
    episode: Episode | None, service: str, now: float, sink: Sink
) -> tuple[list[Alert], Episode | None]:
    """The alerts whose time has come (first `down`, reminders, `recovered`)."""
    if episode is None:
        return [], None
    resolve_after = sink.resolve_after
    if episode.healthy_since is not None:
        if now - episode.healthy_since < resolve_after:
            return [], episode
        told = episode.down_sent_at is not None or episode.failed_sent
        if told and "recovered" in sink.on:
            text = (
                f"{service} recovered after {_human(now - episode.down_since)}"
                f" ({episode.restarts} restarts)"
            )
            return [_alert("recovered", episode, service, text, now, state="online")], None
        return [], None
    if "down" not in sink.on:
        return [], episode
    if episode.down_sent_at is None:
        waited = now - episode.down_since >= sink.alert_after
        escalate = (
            sink.alert_after_attempts == 0
            or not episode.restartable
            or episode.failed_sent
            or episode.failed_attempts >= sink.alert_after_attempts
        )
        if waited and escalate:
            text = f"{service} is DOWN: {episode.state} ({episode.reason})"
            return [_alert("down", episode, service, text, now)], replace(episode, down_sent_at=now)
        return [], episode
    if sink.repeat_every > 0 and now - episode.down_sent_at >= sink.repeat_every:
        text = f"{service} is still DOWN after {_human(now - episode.down_since)}: {episode.state}"
        alert = _alert("down", episode, service, text, now, reminder=True)
        return [alert], replace(episode, down_sent_at=now)
    return [], episode


def next_due(episode: Episode, sink: Sink) -> float | None:
    """When `due()` may next have something to say about this episode (mono time)."""
    if episode.healthy_since is not None:
        return episode.healthy_since + sink.resolve_after
    if "down" not in sink.on:
        return None
    if episode.down_sent_at is None:
        return episode.down_since + sink.alert_after
    if sink.repeat_every > 0:
        return episode.down_sent_at + sink.repeat_every
    return None


def _alert(
    kind: str,
    episode: Episode,
    service: str,
    text: str,
    now: float,
    *,
    state: str | None = None,
    reminder: bool = False,
) -> Alert:
    return Alert(
        kind=kind,
        service=service,
        state=state or episode.state,
        reason=episode.reason,
        text=text,
        down_for=now - episode.down_since,
        restarts=episode.restarts,
        reminder=reminder,
    )


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# ----------------------------------------------------------------------------------------------
# delivery


def deliver(sink: Sink, alert: Alert, env: Mapping[str, str] | None) -> None:
    """Send one alert; raise on failure (the worker retries)."""
    body = alert.to_json(time.time())
    if isinstance(sink, WebhookSink):
        payload = {"text": alert.text} if sink.format == "slack" else body
        response = httpx.post(sink.url, json=payload, headers=sink.headers, timeout=sink.timeout)
        response.raise_for_status()
        return
    assert isinstance(sink, ExecSink)  # noqa: S101 (the Sink union has two members)
    variables = {f"PRESENCE_{k.upper()}": str(v) for k, v in body.items() if v is not None}
    run_env = {**(env if env is not None else os.environ), **variables}
    result = subprocess.run(  # noqa: S603 (argv list from config, never a shell)
        sink.argv,
        input=json.dumps(body).encode(),
        env=run_env,
        capture_output=True,
        timeout=sink.timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"exit {result.returncode}: {result.stderr[-300:].decode(errors='replace')}"
        )


class _Worker:
    """One sink's delivery thread: in order, with retries and back-off, never blocking callers."""

    def __init__(
        self, index: int, sink: Sink, env: Mapping[str, str] | None, retries: int, backoff: float
    ) -> None:
        self.sink = sink
        self.env = env
        self.retries = retries
        self.backoff = backoff
        self.queue: queue.Queue[Alert | None] = queue.Queue(maxsize=1000)
        self.label = f"alerts[{index}:{sink.type}]"
        self.thread = threading.Thread(target=self._run, name=f"presence-{self.label}", daemon=True)
        self.thread.start()

    def put(self, alert: Alert) -> None:
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            logger.error("{}: queue full; dropping alert {!r}", self.label, alert.text)

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            if alert is None:
                return
            delay = self.backoff
            for attempt in range(1, self.retries + 1):
                try:
                    deliver(self.sink, alert, self.env)
                    logger.info("{}: sent {} alert for {}", self.label, alert.kind, alert.service)
                    break
                except Exception as exc:  # noqa: BLE001 (any failure is retried, then logged)
                    if attempt == self.retries:
                        logger.error(
                            "{}: giving up on {!r} after {} tries: {}",
                            self.label,
                            alert.text,
                            attempt,
                            exc,
                        )
                        break
                    logger.warning(
                        "{}: delivery failed ({}); retrying in {} s", self.label, exc, delay
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 60.0)


class Alerter:
    """Keeps every (sink, service) episode and hands due alerts to the sinks' workers.

    Owned by the monitor loop thread; only the workers run elsewhere.
    """

    def __init__(
        self,
        sinks: list[Sink],
        *,
        env: Mapping[str, str] | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        send: Callable[[int, Alert], None] | None = None,
    ) -> None:
        self.sinks = sinks
        self._episodes: dict[tuple[int, str], Episode] = {}
        self._workers = (
            [] if send else [_Worker(i, s, env, retries, backoff) for i, s in enumerate(sinks)]
        )
        self._send = send or (lambda index, alert: self._workers[index].put(alert))

    def observe(self, obs: Observation, now: float) -> None:
        """A service's verdict changed."""
        for index, sink in enumerate(self.sinks):
            if sink.services is not None and obs.service not in sink.services:
                continue
            key = (index, obs.service)
            episode, alerts = observe(self._episodes.get(key), obs, now, sink)
            self._store(key, episode)
            for alert in alerts:
                self._send(index, alert)

    def tick(self, now: float) -> None:
        """Send whatever has come due."""
        for key, episode in list(self._episodes.items()):
            sink = self.sinks[key[0]]
            when = next_due(episode, sink)
            if when is None or when > now:
                continue
            alerts, after = due(episode, key[1], now, sink)
            self._store(key, after)
            for alert in alerts:
                self._send(key[0], alert)

    def next_deadline(self) -> float | None:
        """The earliest time `tick()` has work (mono), if any."""
        times = [
            t
            for key, ep in self._episodes.items()
            if (t := next_due(ep, self.sinks[key[0]])) is not None
        ]
        return min(times, default=None)

    def _store(self, key: tuple[int, str], episode: Episode | None) -> None:
        if episode is None:
            self._episodes.pop(key, None)
        else:
            self._episodes[key] = episode

    def close(self) -> None:
        """Let the workers finish what is queued (daemon threads: they never block exit)."""
        for worker in self._workers:
            worker.queue.put(None)
