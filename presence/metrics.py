"""Prometheus metrics (the optional `presence[metrics]` extra: prometheus-client).

`[metrics] port = 9108` serves the text format on `/metrics`. Updated by the monitor loop;
prometheus-client's own thread serves the scrapes.
"""

from __future__ import annotations

from typing import Any, Final

from presence.errors import ConfigError
from presence.settings import MetricsSettings

__all__ = ["STATES", "Metrics"]

STATES: Final = (
    "unknown",
    "online",
    "suspect",
    "hung",
    "unhealthy",
    "offline",
    "stopped",
    "restarting",
    "backoff",
    "failed",
)
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class Metrics:
    """The monitor's metrics; a no-op object when `[metrics] port` is not set."""

    def __init__(self, settings: MetricsSettings) -> None:
        port = settings.port
        self.enabled = port is not None
        if port is None:
            return
        try:
            import prometheus_client as prom  # noqa: PLC0415 (optional extra)
        except ImportError as exc:
            raise ConfigError(
                "[metrics] port is set but prometheus-client is not installed: "
                "pip install 'presence[metrics]'"
            ) from exc
        self._registry = registry = prom.CollectorRegistry()
        self.state = prom.Gauge(
            "presence_service_state",
            "1 for the service's current verdict state, 0 for the others",
            ["service", "state"],
            registry=registry,
        )
        self.restarts = prom.Counter(
            "presence_restarts", "Restart actions started", ["service"], registry=registry
        )
        self.rtt = prom.Gauge(
            "presence_rtt_seconds", "Last ping round trip", ["service"], registry=registry
        )
        self.misses = prom.Counter(
            "presence_pong_misses", "Ping rounds without a pong", ["service"], registry=registry
        )
        self.up = prom.Gauge(
            "presence_monitor_up", "1 while connected to the broker", registry=registry
        )
        self.rounds = prom.Counter(
            "presence_ping_rounds", "Ping rounds, counted or void", ["result"], registry=registry
        )
        self.actions = prom.Counter(
            "presence_actions", "Restart actions by outcome", ["outcome"], registry=registry
        )
        self.latency = prom.Histogram(
            "presence_detection_latency_seconds",
            "From the Will or the last pong to the verdict",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._server: Any = None
        try:
            self._server, _ = prom.start_http_server(port, addr=settings.host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"[metrics] cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from exc

    def metrics_port(self) -> int | None:
        """The port /metrics is served on (None when disabled)."""
        if not self.enabled or self._server is None:
            return None
        port: int = self._server.server_address[1]
        return port

    def set_state(self, service: str, state: str) -> None:
        """The service's verdict state (one-hot)."""
        if self.enabled:
            for name in STATES:
                self.state.labels(service, name).set(1.0 if name == state else 0.0)

    def forget(self, service: str) -> None:
        """Drop a forgotten service's series."""
        if self.enabled:
            for name in STATES:
                self.state.remove(service, name)

    def close(self) -> None:
        """Stop serving."""
        if self.enabled and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
