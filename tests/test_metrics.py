"""Prometheus metrics, scraped over HTTP from a monitor watching real services."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from presence.broker import PrivateBroker, free_port
from presence.errors import ConfigError
from presence.metrics import Metrics
from presence.settings import MetricsSettings
from tests.helpers import Monitors, ServiceProcess, Watcher


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
            return float(match.group(2))
    return None


def test_metrics_are_served_and_follow_the_verdicts(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """State, restarts, rtt, misses, rounds, actions and detection latency on /metrics."""
    port = free_port()
    touch = {"type": "exec", "argv": [sys.executable, "-c", "pass"]}
    monitors.start(
        metrics={"port": port},
        monitor={"settle": 0},
        services=[{"name": "alpha", "action": touch, "restart": {"verify_timeout": 30}}],
    )
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape_until(check: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + 5
        while True:
            text = httpx.get(url, timeout=2).text
            if check(text) or time.monotonic() > deadline:
                return text

    text = scrape_until(lambda t: (sample(t, "presence_rtt_seconds", service="alpha") or 0) > 0)
    assert sample(text, "presence_monitor_up") == 1.0
    assert sample(text, "presence_service_state", service="alpha", state="online") == 1.0
    assert sample(text, "presence_service_state", service="alpha", state="offline") == 0.0
    assert (sample(text, "presence_ping_rounds_total", result="counted") or 0) >= 1
    svc.signal(signal.SIGKILL)
    watcher.wait_verdict("alpha", "restarting", timeout=5)
    text = scrape_until(lambda t: sample(t, "presence_actions_total", outcome="ok") == 1.0)
    assert sample(text, "presence_restarts_total", service="alpha") == 1.0
    assert sample(text, "presence_actions_total", outcome="ok") == 1.0
    assert sample(text, "presence_detection_latency_seconds_count", kind="will") == 1.0
    assert sample(text, "presence_service_state", service="alpha", state="restarting") == 1.0


def test_metrics_port_in_use_is_a_clear_config_error() -> None:
    """A taken port fails at start-up naming the address."""
    first = Metrics(MetricsSettings(port=free_port()))
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            Metrics(MetricsSettings(port=first.metrics_port()))
    finally:
        first.close()
