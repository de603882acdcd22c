"""Configuration: a TOML file overridden by `PRESENCE_<SECTION>__<KEY>` environment variables.

Read once, at the edge (the CLI), and passed down as typed, frozen objects; nothing below the
CLI reads the environment. Invalid configuration fails at start-up with the field and the reason.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from presence.errors import ConfigError
from presence.protocol import validate_name, validate_prefix

__all__ = [
    "Action",
    "AgentAction",
    "BrokerSettings",
    "DockerAction",
    "ExecAction",
    "ExecSink",
    "HomeAssistantSettings",
    "HttpAction",
    "LogSettings",
    "MetricsSettings",
    "MonitorSettings",
    "MqttAction",
    "NoAction",
    "Pm2Action",
    "RestartSettings",
    "ServiceSettings",
    "Settings",
    "Sink",
    "SystemdAction",
    "TLSSettings",
    "WebhookSink",
    "load_settings",
]


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2}


def parse_size(text: str) -> int:
    """'10 MB', '500 KB', '4096' -> bytes; ValueError naming the accepted forms."""
    match = _SIZE.fullmatch(text)
    unit = (match.group(2) or "b").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size such as '10 MB', '500 KB' or '4096'")
    return max(1, int(float(match.group(1)) * _UNITS[unit]))


class _Section(BaseModel):
    # Typos in a config file are bugs, not forward compatibility: name them at start-up.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Section):
    """TLS to the broker; hostname checking stays on unless `insecure` is set."""

    ca: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert: Path | None = Field(None, description="client certificate (PEM), for mutual TLS")
    key: Path | None = Field(None, description="client private key (PEM)")
    insecure: bool = Field(False, description="skip the hostname check (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TLSSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        for label, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{label} file {str(path)!r} does not exist")
        return self


class BrokerSettings(_Section):
    """How to reach the MQTT broker."""

    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    username: str | None = Field(None, description="MQTT user name")
    password: SecretStr | None = Field(None, description="MQTT password (never logged)")
    password_file: Path | None = Field(
        None, description="file holding the password (read once at start-up)"
    )
    client_id: str | None = Field(
        None,
        description="the monitor's fixed client id (default: '<prefix>-monitor-' + a hash of "
        "its credentials, so other users cannot guess it); agents and CLI commands use their own",
    )
    keepalive: int = Field(10, ge=2, le=3600, description="MQTT keepalive, seconds")
    tls: TLSSettings | None = Field(None, description="TLS settings; absent means plain TCP")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    connect_timeout: float = Field(
        5.0, gt=0, description="how long a CLI command waits for the broker"
    )
    reconnect_max: int = Field(
        5, ge=1, le=300, description="longest wait between reconnect attempts, seconds"
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_str(cls, value: Any) -> Any:
        # `protocol = 5` in TOML is an integer; accept it rather than confuse the user.
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _read_password_file(self) -> BrokerSettings:
        if self.password_file is None:
            return self
        if self.password is not None:
            raise ValueError("give password or password_file, not both")
        try:
            secret = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"cannot read password_file {str(self.password_file)!r}: {exc.strerror}"
            ) from exc
        object.__setattr__(self, "password", SecretStr(secret))
        return self


class MonitorSettings(_Section):
    """Ping rounds and the thresholds of the verdict state machine."""

    ping_interval: float = Field(1.0, gt=0, le=3600, description="seconds between ping rounds")
    pong_timeout: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="a pong later than this after its ping does not count (timed from when "
        "the monitor's own copy of the ping came back, so its own backlog is not held against "
        "services)",
    )
    missed_pongs: int = Field(
        2,
        ge=1,
        le=1000,
        description="rounds without a pong (or with ok:false) before hung/unhealthy",
    )
    startup_grace: float = Field(
        10.0, ge=0, description="a declared service not seen this long after start is 'missing'"
    )
    session_expiry: int = Field(
        3600,
        ge=0,
        description="seconds the broker keeps the monitor's session (and queues status "
        "changes) while the monitor is away",
    )
    settle: float = Field(
        5.0,
        ge=0,
        description="after (re)connecting, hold restarts this long so services can re-announce",
    )
    max_parallel_actions: int = Field(4, ge=1, description="restart actions running at once")
    self_check_rounds: int = Field(
        3,
        ge=0,
        description="exit (for the supervisor to restart us) after this many of our own ping "
        "rounds did not come back while other traffic did; 0 disables the self-check",
    )


Reason = Literal["lost", "missing", "hung", "unhealthy", "exited", "shutdown"]
_DEFAULT_ON: tuple[Reason, ...] = ("lost", "missing", "hung", "unhealthy", "exited")


class RestartSettings(_Section):
    """The restart policy: when to restart, how fast to back off, when to give up."""

    on: list[Reason] = Field(
        default_factory=lambda: list(_DEFAULT_ON),
        description="reasons that trigger a restart",
    )
    restart_clean_exit: bool = Field(
        False, description="restart after `exited` with code 0 too (default: failures only)"
    )
    initial_delay: float = Field(
        5.0, ge=0, description="delay before the 2nd consecutive attempt (the 1st runs at once)"
    )
    factor: float = Field(2.0, ge=1, description="each further attempt waits this much longer")
    max_delay: float = Field(60.0, ge=0, description="cap on the delay between attempts")
    jitter: float = Field(0.1, ge=0, le=1, description="+/- fraction applied to each delay")
    reset_after: float = Field(
        60.0, ge=0, description="this long continuously online resets the attempt count"
    )
    max_restarts: int = Field(
        5, ge=1, description="this many attempts within `window` seconds -> failed (give up)"
    )
    window: float = Field(300.0, gt=0, description="the give-up window, seconds")
    verify_timeout: float = Field(
        30.0, gt=0, description="a new session must come online this soon after an action"
    )
    retry_failed_after: float = Field(
        0.0, ge=0, description="0: stay failed until `presence reset`; >0: retry after this"
    )


class ExecAction(_Section):
    """Run a program (argv list, never a shell); {name} {host} {reason} are substituted."""

    type: Literal["exec"]
    argv: list[str] = Field(min_length=1, description="program and arguments")
    timeout: float = Field(30.0, gt=0, description="killed (whole process group) after this")
    env: dict[str, str] | None = Field(None, description="extra environment variables")
    cwd: Path | None = Field(None, description="working directory")


class SystemdAction(_Section):
    """`systemctl [--user] restart UNIT`."""

    type: Literal["systemd"]
    unit: str = Field(min_length=1, description="the unit to restart ({name} etc. allowed)")
    user: bool = Field(False, description="a user unit (systemctl --user)")
    timeout: float = Field(60.0, gt=0, description="killed after this many seconds")


class DockerAction(_Section):
    """`docker restart CONTAINER`."""

    type: Literal["docker"]
    container: str = Field(min_length=1, description="container name or id")
    timeout: float = Field(60.0, gt=0, description="killed after this many seconds")


class Pm2Action(_Section):
    """`pm2 restart APP`."""

    type: Literal["pm2"]
    app: str = Field(min_length=1, description="pm2 app name or id")
    timeout: float = Field(60.0, gt=0, description="killed after this many seconds")


class HttpAction(_Section):
    """An HTTP request; success is a 2xx within `timeout`."""

    type: Literal["http"]
    url: str = Field(pattern=r"^https?://", description="http:// or https:// URL")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "POST", description="HTTP method"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    body: Any = Field(None, description="JSON body")
    timeout: float = Field(10.0, gt=0, description="a 2xx must arrive within this")


class AgentAction(_Section):
    """Ask the service's `presence run` sidecar to restart its child (P/<name>/cmd)."""

    type: Literal["agent"]
    timeout: float = Field(10.0, gt=0, description="how long to wait for the runner's ack")


class MqttAction(_Section):
    """Publish `payload` to `topic` (restart a device the way it expects, e.g. Tasmota's
    `cmnd/<t>/Restart 1`). The monitor user needs write access to the topic (see mosquitto/acl)."""

    type: Literal["mqtt"]
    topic: str = Field(min_length=1, description="topic to publish to (no wildcards)")
    payload: str = Field("", description="the message")
    qos: Literal[0, 1] = Field(1, description="QoS of the publish (1: wait for the broker)")
    retain: bool = Field(False, description="publish retained")

    @field_validator("topic")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _plain_topic(value)


class NoAction(_Section):
    """Watch and alert only."""

    type: Literal["none"] = "none"


Action = Annotated[
    ExecAction
    | SystemdAction
    | DockerAction
    | Pm2Action
    | HttpAction
    | AgentAction
    | MqttAction
    | NoAction,
    Field(discriminator="type"),
]


def _plain_topic(value: str) -> str:
    if not value or any(c in value for c in "+#\x00"):
        raise ValueError(f"{value!r} must be a plain topic (no wildcards)")
    return value


Preset = Literal["tasmota", "esphome", "zigbee2mqtt"]


class ServiceSettings(_Section):
    """A declared service: the monitor expects it (others are discovered)."""

    name: str = Field(description="service name (also its MQTT user name)")
    action: Action = Field(default_factory=NoAction, description="how to restart it")
    restart: dict[str, Any] | None = Field(
        None, description="overrides of the [restart] defaults for this service"
    )
    # A device that already uses a Last Will in its own format (no agent, no pings):
    preset: Preset | None = Field(
        None, description="tasmota, esphome or zigbee2mqtt: fills in the topics below"
    )
    device: str | None = Field(
        None, description="the preset's device topic / node / base topic (default: name)"
    )
    status_topic: str | None = Field(None, description="where the device publishes its LWT")
    online_payload: str = Field("online", description="payload (or JSON value) meaning online")
    offline_payload: str = Field("offline", description="payload (or JSON value) meaning offline")
    state_json_key: str | None = Field(
        None, description="read the state from this key of a JSON payload"
    )
    heartbeat_topic: str | None = Field(
        None, description="any message here counts as alive (a dead man's switch)"
    )
    stale_after: float | None = Field(
        None, gt=0, description="silence on heartbeat_topic this long means hung"
    )
    request_topic: str | None = Field(None, description="health check: publish a request here")
    response_topic: str | None = Field(None, description="...and expect the answer here")
    correlation_key: str = Field(
        "transaction", description="the request field the device echoes back in its response"
    )
    check_interval: float = Field(30.0, gt=0, description="seconds between health checks")
    check_timeout: float = Field(5.0, gt=0, description="a response later than this is missed")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("status_topic", "heartbeat_topic", "request_topic", "response_topic")
    @classmethod
    def _topics(cls, value: str | None) -> str | None:
        return None if value is None else _plain_topic(value)

    @model_validator(mode="after")
    def _device(self) -> ServiceSettings:
        if self.preset is not None:
            for key, value in _preset_values(self.preset, self.device or self.name).items():
                if key == "action":
                    if "action" not in self.model_fields_set:
                        object.__setattr__(self, "action", value)
                elif key not in self.model_fields_set:
                    object.__setattr__(self, key, value)
        if (self.request_topic is None) != (self.response_topic is None):
            raise ValueError("request_topic and response_topic go together")
        if self.stale_after is not None and self.heartbeat_topic is None:
            raise ValueError("stale_after needs a heartbeat_topic")
        if self.heartbeat_topic is not None and self.stale_after is None:
            raise ValueError("heartbeat_topic needs stale_after")
        watched = (self.heartbeat_topic, self.request_topic)
        if self.status_topic is None and any(t is not None for t in watched):
            raise ValueError("heartbeat and health-check topics need a status_topic")
        if self.status_topic is not None and isinstance(self.action, AgentAction):
            raise ValueError("a device has no presence run sidecar: the agent action needs one")
        return self

    @property
    def is_device(self) -> bool:
        """True for a device watched through its own topics rather than an agent."""
        return self.status_topic is not None

    @field_validator("restart")
    @classmethod
    def _restart_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            unknown = set(value) - set(RestartSettings.model_fields)
            if unknown:
                raise ValueError(f"unknown restart keys: {', '.join(sorted(unknown))}")
        return value


def _preset_values(preset: Preset, device: str) -> dict[str, Any]:
    """The topics and payloads of the formats seen most in the field."""
    if preset == "tasmota":
        return {
            "status_topic": f"tele/{device}/LWT",
            "online_payload": "Online",
            "offline_payload": "Offline",
            "heartbeat_topic": f"tele/{device}/STATE",
            # TelePeriod defaults to 300 s: two missed reports mean hung.
            "stale_after": 630.0,
            "action": MqttAction(type="mqtt", topic=f"cmnd/{device}/Restart", payload="1"),
        }
    if preset == "esphome":
        return {"status_topic": f"{device}/status"}
    return {
        "status_topic": f"{device}/bridge/state",
        "state_json_key": "state",
        "request_topic": f"{device}/bridge/request/health_check",
        "response_topic": f"{device}/bridge/response/health_check",
        "correlation_key": "transaction",
        "action": MqttAction(type="mqtt", topic=f"{device}/bridge/request/restart", payload=""),
    }


AlertKind = Literal["down", "failed", "recovered", "restart"]
_DEFAULT_ALERTS: tuple[AlertKind, ...] = ("down", "failed", "recovered")


class _Sink(_Section):
    on: list[AlertKind] = Field(
        default_factory=lambda: list(_DEFAULT_ALERTS),
        description="which alerts this sink gets",
    )
    alert_after: float = Field(
        0.0, ge=0, description="an outage that recovers sooner sends nothing (group_wait)"
    )
    repeat_every: float = Field(0.0, ge=0, description="remind while still down (0: never)")
    resolve_after: float = Field(
        10.0, ge=0, description="healthy this long ends the episode (and sends `recovered`)"
    )
    alert_after_attempts: int = Field(
        0, ge=0, description="escalate: `down` waits for this many failed restarts (0: off)"
    )
    services: list[str] | None = Field(None, description="only these services (default: all)")
    timeout: float = Field(10.0, gt=0, description="per delivery")


class WebhookSink(_Sink):
    """POST the alert as JSON, or as Slack-compatible {"text": ...}."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="where to POST")
    format: Literal["json", "slack"] = Field(
        "json", description='"json": the whole alert; "slack": {"text": ...}'
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")


class ExecSink(_Sink):
    """Run a program with the alert as JSON on stdin and PRESENCE_* environment variables."""

    type: Literal["exec"]
    argv: list[str] = Field(min_length=1, description="program and arguments (no shell)")


Sink = Annotated[WebhookSink | ExecSink, Field(discriminator="type")]


class LogSettings(_Section):
    """Logging through loguru."""

    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="least severe level logged"
    )
    json_lines: bool = Field(False, alias="json", description="one JSON object per line")
    file: Path | None = Field(None, description="also log to this file")
    rotation: str = Field("10 MB", description="rotate the log file at this size")
    retention: int = Field(5, ge=1, description="rotated log files to keep")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rotation")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery: a connectivity sensor and a restart button per service."""

    enabled: bool = Field(False, description="publish discovery configs")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's prefix")

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return validate_prefix(value)


class MetricsSettings(_Section):
    """Prometheus metrics (needs the `presence[metrics]` extra)."""

    port: int | None = Field(None, ge=1, le=65535, description="serve /metrics on this port")
    host: str = Field("127.0.0.1", description="address to listen on")


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="PRESENCE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    topic_prefix: str = Field("presence", description="topic prefix P")
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    restart: RestartSettings = Field(default_factory=RestartSettings)
    services: list[ServiceSettings] = Field(default_factory=list)
    alerts: list[Sink] = Field(default_factory=list, description="alert sinks")
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("services")
    @classmethod
    def _unique(cls, value: list[ServiceSettings]) -> list[ServiceSettings]:
        seen: set[str] = set()
        for service in value:
            if service.name in seen:
                raise ValueError(f"service {service.name!r} is declared twice")
            seen.add(service.name)
        return value

    @model_validator(mode="after")
    def _overrides_valid(self) -> Settings:
        for index, service in enumerate(self.services):
            try:
                self.restart_for(service)
            except ValidationError as exc:
                raise ValueError(f"services.{index}.restart: {_describe(exc).strip()}") from exc
        return self

    def restart_for(self, service: ServiceSettings) -> RestartSettings:
        """The effective restart policy of a declared service (defaults + its overrides)."""
        if not service.restart:
            return self.restart
        return RestartSettings.model_validate({**self.restart.model_dump(), **service.restart})

    @property
    def monitor_client_id(self) -> str:
        """The monitor's fixed client id (persistent session).

        Derived from the monitor's credentials when not configured: stable across restarts (so
        the broker keeps its session), but not guessable by other users, who could otherwise
        knock the monitor off the broker by connecting with its id.
        """
        if self.broker.client_id:
            return self.broker.client_id
        base = f"{self.topic_prefix.replace('/', '-')}-monitor"
        if self.broker.password is None:
            return base
        secret = f"{self.broker.username}:{self.broker.password.get_secret_value()}"
        return f"{base}-{hashlib.sha256(secret.encode()).hexdigest()[:12]}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the file's values (which arrive as init kwargs)."""
        return (env_settings, init_settings)


def _describe(exc: ValidationError) -> str:
    # Built from loc and msg only: pydantic's own text echoes input values, which may be secrets.
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read `path` (TOML, optional), apply PRESENCE_* environment variables, validate.

    Raises `ConfigError` naming every bad field and why; never echoes a value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {str(path)!r} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    data.update(overrides)
    where = f" in {str(path)!r}" if path is not None else ""
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration{where}:\n{_describe(exc)}") from exc
