"""Devices that already use a Last Will in their own format: Tasmota, ESPHome, Zigbee2MQTT...

No code change on the device: its status topic (plain `Online`/`Offline` payloads or a JSON
`{"state": ...}`) becomes presence statuses, a heartbeat topic is a dead man's switch, and a
request/response health check (a correlation field echoed back) plays the part of ping rounds.
Devices have no sessions, so every online after an offline is a new synthesized session: a
restart (say, Tasmota's `cmnd/<t>/Restart 1`) is verified by the device coming back online.

Owned by the monitor's loop thread; it only turns messages and timers into detection events.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from loguru import logger

from presence.clock import Instant
from presence.logs import BadPayloads
from presence.mqtt import Message
from presence.protocol import Status, encode
from presence.settings import ServiceSettings
from presence.tracker import Answer, RoundClosed, Silent, StatusSeen

__all__ = ["DeviceEvent", "Devices", "device_state"]

DeviceEvent = StatusSeen | RoundClosed | Silent
_STATUS: Final = "status"
_HEARTBEAT: Final = "heartbeat"
_RESPONSE: Final = "response"


@dataclass(slots=True)
class _Life:
    session: str
    since: float
    online: bool


def device_state(payload: bytes, cfg: ServiceSettings) -> str | None:
    """'online', 'offline', or None for a payload that says neither (logged by the caller)."""
    text = payload.decode("utf-8", errors="replace").strip()
    value: Any = text
    if cfg.state_json_key is not None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # Zigbee2MQTT before 1.28 sent the bare word: compare it as is
        if isinstance(data, dict):
            value = data.get(cfg.state_json_key)
    if value == cfg.online_payload:
        return "online"
    if value == cfg.offline_payload:
        return "offline"
    return None


def _healthy(data: dict[str, Any]) -> bool:
    """A response is healthy unless it says otherwise (`status` other than ok, or
    `data.healthy` false, as Zigbee2MQTT's health check does)."""
    status = data.get("status")
    if status is not None and status != "ok":
        return False
    inner = data.get("data")
    return not (isinstance(inner, dict) and inner.get("healthy") is False)


class Devices:
    """Every device service's topics, synthesized sessions, heartbeats and health checks."""

    def __init__(
        self, services: list[ServiceSettings], publish: Callable[[str, bytes, int, bool], object]
    ) -> None:
        self._cfg = {s.name: s for s in services if s.is_device}
        self._publish = publish
        self._routes: dict[str, list[tuple[str, str]]] = {}
        for name, cfg in self._cfg.items():
            for topic, kind in (
                (cfg.status_topic, _STATUS),
                (cfg.heartbeat_topic, _HEARTBEAT),
                (cfg.response_topic, _RESPONSE),
            ):
                if topic is not None:
                    self._routes.setdefault(topic, []).append((name, kind))
        self._lives: dict[str, _Life] = {}
        self._last_beat: dict[str, float] = {}
        self._silent: set[str] = set()
        self._pending: dict[str, tuple[str, Instant]] = {}
        self._next_check: dict[str, float] = {}
        self._bad = BadPayloads()

    @property
    def names(self) -> frozenset[str]:
        """The services watched as devices (never pinged)."""
        return frozenset(self._cfg)

    def subscriptions(self) -> list[tuple[str, int]]:
        """The device topics to subscribe to (QoS 1: an LWT must not be lost)."""
        return [(topic, 1) for topic in self._routes]

    def routes(self, topic: str) -> bool:
        """Whether `topic` belongs to a device."""
        return topic in self._routes

    # -- messages ----------------------------------------------------------------------------

    def on_message(self, message: Message, now: Instant) -> list[tuple[str, DeviceEvent]]:
        """Turn one message on a device topic into detection events."""
        events: list[tuple[str, DeviceEvent]] = []
        for name, kind in self._routes.get(message.topic, ()):
            cfg = self._cfg[name]
            event: DeviceEvent | None
            if kind == _STATUS:
                event = self._on_status(name, cfg, message, now)
            elif kind == _HEARTBEAT:
                self._last_beat[name] = now.mono
                self._silent.discard(name)
                event = RoundClosed(now.mono, Answer(ok=True))
            else:
                event = self._on_response(name, cfg, message)
            if event is not None:
                events.append((name, event))
        return events

    def _on_status(
        self, name: str, cfg: ServiceSettings, message: Message, now: Instant
    ) -> StatusSeen | None:
        if not message.payload:
            return None  # a cleared retained message says nothing
        state = device_state(message.payload, cfg)
        if state is None:
            self._bad.report(
                message.topic,
                ValueError(f"neither {cfg.online_payload!r} nor {cfg.offline_payload!r}"),
            )
            return None
        life = self._lives.get(name)
        if state == "online":
            if life is None or not life.online:
                # Devices have no sessions: every return is a new life (what verifies a restart).
                life = _Life(secrets.token_hex(8), round(now.wall, 3), True)
                self._lives[name] = life
                self._last_beat[name] = now.mono  # the first heartbeat gets a full period
                self._silent.discard(name)
                self._next_check[name] = now.mono  # check it straight away
            status = Status("online", life.session, life.since, host=cfg.device or name)
            return StatusSeen(status)
        if life is None:
            life = _Life(secrets.token_hex(8), round(now.wall, 3), False)
            self._lives[name] = life
        life.online = False
        return StatusSeen(Status("offline", life.session, life.since, reason="lost"))

    def _on_response(self, name: str, cfg: ServiceSettings, message: Message) -> RoundClosed | None:
        try:
            data = json.loads(message.payload)
        except ValueError as exc:
            self._bad.report(message.topic, exc)
            return None
        if not isinstance(data, dict):
            return None
        pending = self._pending.get(str(data.get(cfg.correlation_key)))
        if pending is None or pending[0] != name:
            return None  # someone else's request, or answered after its deadline
        del self._pending[str(data[cfg.correlation_key])]
        sent = pending[1]
        if message.received - sent.mono > cfg.check_timeout:
            return None
        ok = _healthy(data)
        return RoundClosed(sent.mono, Answer(ok, None if ok else {"response": data}))

    # -- timers --------------------------------------------------------------------------------

    def on_timers(
        self, now: Instant, online: Callable[[str], bool]
    ) -> list[tuple[str, DeviceEvent]]:
        """Staleness, health checks due, and checks whose answer never came."""
        events: list[tuple[str, DeviceEvent]] = []
        for name, cfg in self._cfg.items():
            if not online(name):
                continue
            beat = self._last_beat.get(name)
            stale = cfg.stale_after
            silent_for = now.mono - beat if beat is not None else 0.0
            if stale is not None and silent_for >= stale and name not in self._silent:
                self._silent.add(name)
                logger.warning(
                    "{}: no heartbeat on {} for {:g} s", name, cfg.heartbeat_topic, stale
                )
                events.append((name, Silent()))
            due = self._next_check.get(name)
            if cfg.request_topic is not None and due is not None and now.mono >= due:
                self._next_check[name] = now.mono + cfg.check_interval
                self._request(name, cfg, now)
        for key, (name, sent) in list(self._pending.items()):
            if now.mono - sent.mono > self._cfg[name].check_timeout:
                del self._pending[key]
                events.append((name, RoundClosed(sent.mono, None)))
        return events

    def _request(self, name: str, cfg: ServiceSettings, now: Instant) -> None:
        assert cfg.request_topic is not None  # noqa: S101 (checked by the caller)
        key = secrets.token_hex(6)
        self._pending[key] = (name, now)
        self._publish(cfg.request_topic, encode({cfg.correlation_key: key}), 1, False)

    def next_deadline(self) -> float | None:
        """The earliest time `on_timers` has work (mono), if any."""
        times: list[float] = []
        for name, cfg in self._cfg.items():
            beat = self._last_beat.get(name)
            if cfg.stale_after is not None and beat is not None and name not in self._silent:
                times.append(beat + cfg.stale_after)
            if cfg.request_topic is not None and name in self._next_check:
                times.append(self._next_check[name])
        for name, sent in self._pending.values():
            times.append(sent.mono + self._cfg[name].check_timeout)
        return min(times, default=None)
