"""Home Assistant MQTT discovery against a real broker: configs, re-discovery, button, forget."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.homeassistant import BINARY_SENSOR_KEYS, BUTTON_KEYS, button_topic, discovery
from presence.mqtt import Connection, Message, cli_client_id
from presence.protocol import Topics
from tests.helpers import TOPICS, Monitors, ServiceProcess, Watcher
from tests.test_cli import config, presence

SENSOR = "homeassistant/binary_sensor/presence_presence/alpha/config"
BUTTON = "homeassistant/button/presence_presence/alpha_restart/config"


def test_discovery_configs_use_only_documented_keys() -> None:
    """Every key is one Home Assistant documents; the required ones are there."""
    [(sensor_topic, sensor), (button_topic_, button)] = discovery(
        Topics(), "homeassistant", "alpha", "1.0"
    )
    assert (sensor_topic, button_topic_) == (SENSOR, BUTTON)
    sensor_cfg, button_cfg = json.loads(sensor), json.loads(button)
    assert set(sensor_cfg) <= BINARY_SENSOR_KEYS
    assert set(button_cfg) <= BUTTON_KEYS
    assert sensor_cfg["device_class"] == "connectivity"
    assert sensor_cfg["state_topic"] == "presence/_monitor/services/alpha"
    assert sensor_cfg["availability_topic"] == "presence/_monitor/status"
    assert button_cfg["device_class"] == "restart"
    assert button_cfg["command_topic"] == "presence/_monitor/ha/alpha/restart"
    # One device per service, shared by its two entities.
    assert sensor_cfg["device"] == button_cfg["device"]
    assert sensor_cfg["device"]["identifiers"] == ["presence_presence_alpha"]
    assert sensor_cfg["unique_id"] != button_cfg["unique_id"]
    # The state template maps online and suspect to ON, anything else to OFF.
    assert "['online', 'suspect']" in sensor_cfg["value_template"]


def test_monitor_publishes_discovery_republishes_on_ha_birth_and_presses_restart(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """Discovery per service; again when homeassistant/status says online; the button restarts."""
    canary = tmp_path / "restarted"
    action = {"type": "exec", "argv": [sys.executable, "-c", f"open({str(canary)!r}, 'w')"]}
    ha_watch = Watcher(broker, user="homeassistant", topic="homeassistant/#")
    try:
        monitors.start(
            homeassistant={"enabled": True},
            monitor={"settle": 0},
            services=[{"name": "alpha", "action": action}],
        )
        with Agent("alpha", broker.settings("alpha")):
            watcher.wait_verdict("alpha", "online")
            ha_watch.wait(lambda m: m.topic == SENSOR and bool(m.payload), 5)
            ha_watch.wait(lambda m: m.topic == BUTTON and bool(m.payload), 5)
            # Home Assistant restarts: it announces itself and expects discovery again.
            ha = Connection(broker.settings("homeassistant"), client_id=cli_client_id("ha"))
            ha.connect()
            try:
                mark = ha_watch.mark()
                ha.publish("homeassistant/status", b"online", qos=1).wait(3)
                ha_watch.wait(lambda m: m.topic == SENSOR and not m.retained, 5, mark)
                # Pressing the button: Home Assistant publishes payload_press to command_topic.
                ha.publish(button_topic(TOPICS, "alpha"), b"PRESS", qos=1).wait(3)
            finally:
                ha.close()
            watcher.wait_verdict("alpha", "restarting", timeout=5)
            watcher.wait(
                lambda m: m.topic == TOPICS.events and b'"reason":"action"' in m.payload, 10
            )
            assert canary.exists()
    finally:
        ha_watch.close()


def test_forget_removes_the_entities_verdict_and_status(
    tmp_path: Path, broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """`presence forget NAME`: empty retained discovery configs, verdict and status."""
    ha_watch = Watcher(broker, user="homeassistant", topic="homeassistant/#")
    try:
        monitors.start(homeassistant={"enabled": True})
        with Agent("beta", broker.settings("beta")):
            watcher.wait_verdict("beta", "online")
        watcher.wait_verdict("beta", "stopped")
        sensor = SENSOR.replace("alpha", "beta")
        ha_watch.wait(lambda m: m.topic == sensor and bool(m.payload), 5)
        mark, ha_mark = watcher.mark(), ha_watch.mark()
        result = presence("forget", "beta", "-c", str(config(tmp_path, broker, "admin")))
        assert result.returncode == 0, result.stderr

        def emptied(topic: str) -> Callable[[Message], bool]:
            return lambda m: m.topic == topic and m.payload == b""

        ha_watch.wait(emptied(sensor), 5, ha_mark)
        ha_watch.wait(emptied(BUTTON.replace("alpha", "beta")), 5, ha_mark)
        watcher.wait(emptied(TOPICS.verdict("beta")), 5, mark)
        watcher.wait(emptied(TOPICS.status("beta")), 5, mark)
    finally:
        ha_watch.close()
