"""Command hygiene: every command is executed at most once, and never when late or retained."""

from __future__ import annotations

import secrets
from typing import Final

from presence.protocol import Command

__all__ = ["MAX_LIFETIME", "CommandGuard", "new_command"]

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
    )


class CommandGuard:
    """Decides whether a received command may run. Not thread-safe: one owner thread.

    `check()` returns None when the command is fresh (and remembers its id), else the reason to
    refuse it. Ids are remembered until their command expires, so a replay is always caught.
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def check(self, command: Command, *, retained: bool, now: float) -> str | None:
        """Vet `command`, received at unix time `now`."""
        if retained:
            return "refusing a retained command (it would run again on every reconnect)"
        if command.expires < now:
            return f"command expired {now - command.expires:.1f} s ago"
        if command.expires > now + MAX_LIFETIME:
            return f"command claims to stay valid for more than {MAX_LIFETIME:g} s"
        self._prune(now)
        if command.id in self._seen:
            return f"command {command.id} was already executed (replay)"
        self._seen[command.id] = command.expires
        return None

    def _prune(self, now: float) -> None:
        if len(self._seen) > 256:
            self._seen = {k: v for k, v in self._seen.items() if v >= now}
