"""The monitor watches itself: its own broadcast ping must come back every round.

An exception in paho's network thread kills it silently while `is_connected()` stays true; a
subscription can be lost; a broker can black-hole us. Each leaves the monitor blind but
unaware. The monitor's own ping echo is its proof of sight: `SelfCheck` decides, round by
round, when to give up so the supervisor restarts a fresh process, and only a round that came
back feeds systemd's watchdog (`Notifier`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Final

from loguru import logger

__all__ = ["Notifier", "SelfCheck"]


@dataclass(slots=True)
class SelfCheck:
    """Counts void rounds and says when the monitor must exit.

    A dead network thread is fatal at once. A void round whose pongs came although our own
    ping did not is proof that our subscription is gone (the broker sends us our echo before
    any answer to it): `rounds` of those in a row are fatal. Other void rounds may be a backlog
    on the link, a black hole or a paused broker, which paho's keepalive notices by itself
    (it then reconnects and rounds pause): only `silent_limit` seconds of those are fatal.
    """

    rounds: int = 3
    silent_limit: float = 40.0
    _void: int = 0
    _silent_since: float | None = None

    def closed(
        self, *, echoed: bool, orphaned: bool, network_alive: bool, now: float
    ) -> str | None:
        """One round closed; returns why the monitor must exit, or None."""
        if not network_alive:
            return "the MQTT network thread died (an exception inside paho)"
        if echoed:
            self._void = 0
            self._silent_since = None
            return None
        if orphaned:
            self._silent_since = None
            self._void += 1
            if self.rounds and self._void >= self.rounds:
                return (
                    f"{self._void} ping rounds in a row did not come back although their "
                    "pongs did (lost subscription)"
                )
            return None
        if self._silent_since is None:
            self._silent_since = now
        silent = now - self._silent_since
        if self.rounds and silent >= self.silent_limit:
            return f"nothing at all came from the broker for {silent:.0f} s while connected"
        return None

    def reset(self) -> None:
        """A (re)connection starts afresh."""
        self._void = 0
        self._silent_since = None


_NOTIFY_MAX: Final = 4096


class Notifier:
    """systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) over $NOTIFY_SOCKET.

    The socket path is read by the CLI (the edge) and handed in; None means not under systemd.
    """

    def __init__(self, path: str | None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if not path:
            return
        # An abstract socket is written "@name" in the variable and "\0name" on the wire.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def notify(self, message: str) -> None:
        """Send one state line; failures are logged, never raised (systemd may be gone)."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode()[:_NOTIFY_MAX], self._address)
        except OSError as exc:
            logger.warning("sd_notify({}) failed: {}", message.split("\n", maxsplit=1)[0], exc)

    def ready(self) -> None:
        """The monitor sees: its first round came back."""
        self.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=watching")

    def watchdog(self) -> None:
        """Fed only after a round came back."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutting down."""
        self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
