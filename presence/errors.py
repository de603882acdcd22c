"""The one error tree of presence: everything we raise on purpose derives from `PresenceError`."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnreachable",
    "ConfigError",
    "ConnectionRefused",
    "DuplicateServiceError",
    "InvalidName",
    "PayloadError",
    "PresenceError",
    "TLSFailure",
]


class PresenceError(Exception):
    """Base of every error presence raises on purpose."""


class ConfigError(PresenceError):
    """The configuration is invalid; the message names the field and the reason."""


class PayloadError(PresenceError):
    """A payload on the wire could not be parsed or validated (the only error the parser raises)."""


class InvalidName(PresenceError, ValueError):
    """A service name does not match the name rule, so it must never reach a topic."""


class BrokerError(PresenceError):
    """Talking to the MQTT broker failed."""


class BrokerUnreachable(BrokerError):
    """No TCP/TLS connection to the broker could be made in time."""


class TLSFailure(BrokerUnreachable):
    """The TLS handshake with the broker failed (CA, host name, client certificate): retrying
    with the same files cannot help."""


class ConnectionRefused(BrokerError):
    """The broker answered but refused the connection (bad credentials, not authorised...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DuplicateServiceError(PresenceError):
    """Another live agent already holds this service name."""

    def __init__(self, name: str, session: str, host: str | None, pid: int | None) -> None:
        where = f" on host {host!r} pid {pid}" if host is not None else ""
        super().__init__(
            f"service {name!r} is already running{where} (session {session}); "
            "refusing to start a second agent with the same name"
        )
        self.name = name
        self.session = session
        self.host = host
        self.pid = pid
