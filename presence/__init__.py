"""presence: service liveness over MQTT.

Embed `Agent` (or `AsyncAgent`) in a service; run `presence monitor` to follow every service's
status, tell crashed (Last Will) from hung (missed pongs), and publish verdicts.
"""

from presence._version import __version__
from presence.agent import Agent, AsyncAgent, HealthResult, Phase
from presence.errors import (
    BrokerError,
    BrokerUnreachable,
    ConfigError,
    ConnectionRefused,
    DuplicateServiceError,
    InvalidName,
    PayloadError,
    PresenceError,
    TLSFailure,
)
from presence.settings import BrokerSettings, Settings, load_settings

__all__ = [
    "Agent",
    "AsyncAgent",
    "BrokerError",
    "BrokerSettings",
    "BrokerUnreachable",
    "ConfigError",
    "ConnectionRefused",
    "DuplicateServiceError",
    "HealthResult",
    "InvalidName",
    "PayloadError",
    "Phase",
    "PresenceError",
    "Settings",
    "TLSFailure",
    "__version__",
    "load_settings",
]
