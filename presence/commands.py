"""Command hygiene: every command is executed at most once, and never when late or retained."""

from __future__ import annotations

import json
import secrets
from typing import Final

from presence.errors import BrokerError
from presence.mqtt import cli_client_id, fetch_retained
from presence.protocol import Command
from presence.settings import BrokerSettings

__all__ = [
    "MAX_LIFETIME",
    "CommandGuard",
    "command_id_of",
    "new_command",
    "parse_executed",
    "sent_retained",
]

#: Commands may not claim to stay valid longer than this (bounds what the guard remembers).
MAX_LIFETIME: Final = 600.0


def new_command(
    cmd: str,
    now: float,
    *,
    lifetime: float = 30.0,
    service: str | None = None,
    reason: str | None = None,
) -> Command:
    """A fresh command with a random id, valid for `lifetime` seconds from `now` (unix time)."""
    return Command(
        id=secrets.token_hex(8),
        cmd=cmd,
        expires=round(now + lifetime, 3),
        service=service,
        reason=reason,
        issued=round(now, 3),
    )


#: Clock skew tolerated between a command's sender and its receiver.
SKEW: Final = 0.5


class CommandGuard:
    """Decides whether a received command may run. Not thread-safe: one owner thread.

    `check()` returns None when the command is fresh (and remembers its id), else the reason to
    refuse it. Ids are remembered until their command expires, so a replay is always caught
    within one process; across a restart, a command sent before this receiver started (a QoS 1
    redelivery, a queued or replayed copy) is refused by its `issued` time.
    """

    def __init__(self, started: float | None = None) -> None:
        self._seen: dict[str, float] = {}
        self._started = started

    def check(self, command: Command, *, retained: bool, now: float) -> str | None:
        """Vet `command`, received at unix time `now`."""
        if retained:
            return "refusing a retained command (it would run again on every reconnect)"
        if command.expires < now:
            return f"command expired {now - command.expires:.1f} s ago"
        if command.expires > now + MAX_LIFETIME:
            return f"command claims to stay valid for more than {MAX_LIFETIME:g} s"
        started = self._started
        if command.issued is not None and started is not None and command.issued < started - SKEW:
            return "command was sent before this receiver started (a redelivery or a replay)"
        self._prune(now)
        if command.id in self._seen:
            return f"command {command.id} was already executed (replay)"
        self._seen[command.id] = command.expires
        return None

    def _prune(self, now: float) -> None:
        if len(self._seen) > 256:
            self._seen = {k: v for k, v in self._seen.items() if v >= now}

    def executed(self, now: float) -> dict[str, float]:
        """The ids run so far that have not expired (id -> expiry), to persist."""
        return {k: v for k, v in self._seen.items() if v >= now}

    def remember(self, executed: dict[str, float]) -> None:
        """Ids a predecessor ran (from `executed()`): a replay of them is refused too."""
        self._seen.update(executed)


def parse_executed(payload: bytes) -> dict[str, float]:
    """The retained record of executed command ids; empty for anything malformed."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    ids = data.get("ids") if isinstance(data, dict) else None
    if not isinstance(ids, dict):
        return {}
    return {
        k: float(v)
        for k, v in list(ids.items())[:1024]
        if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
    }


def command_id_of(payload: bytes) -> str | None:
    """The id of a command that failed validation, so its sender still gets a refusal."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    command_id = data.get("id") if isinstance(data, dict) else None
    return command_id if isinstance(command_id, str) and 0 < len(command_id) <= 64 else None


def sent_retained(broker: BrokerSettings, topic: str, payload: bytes) -> bool:
    """Whether `payload` is the retained message on `topic` (MQTT 3.1.1 only needs to ask: it
    has no "retain as published", so a command sent retained arrives looking live)."""
    if broker.protocol == "5":
        return False
    try:
        retained = fetch_retained(broker, [topic], client_id=cli_client_id("cmd-check"))
    except BrokerError:
        return False
    return any(message.payload == payload for message in retained)
