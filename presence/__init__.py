"""presence: service liveness over MQTT.

Embed `Agent` (or `AsyncAgent`) in a service; run `presence monitor` to follow every service's
status, tell crashed (Last Will) from hung (missed pongs), and publish verdicts.
"""

from importlib.metadata import PackageNotFoundError, version

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
)
from presence.settings import BrokerSettings, Settings, load_settings

try:
    __version__ = version("presence")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

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
    "__version__",
    "load_settings",
]
