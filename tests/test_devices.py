"""Devices that already use a Last Will, driven by plain mosquitto_pub/mosquitto_sub clients.

The Tasmota, ESPHome and Zigbee2MQTT presets, each against a real broker whose ACL carries the
lines mosquitto/acl documents for them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from presence.broker import PrivateBroker
from presence.devices import device_state
from presence.settings import ServiceSettings
from tests.helpers import Monitors, MosquittoSub, Watcher

DEVICES = ("plug1", "livingroom", "zigbee2mqtt")
#: Exactly the example lines in mosquitto/acl, plus patterns letting each device user publish.
MONITOR_TOPICS = [
    "topic read tele/+/LWT",
    "topic read tele/+/STATE",
    "topic write cmnd/+/Restart",
    "topic read livingroom/status",
    "topic read zigbee2mqtt/bridge/#",
    "topic write zigbee2mqtt/bridge/request/#",
]
PATTERNS = [
    "pattern write tele/%u/#",
    "pattern read cmnd/%u/#",
    "pattern write %u/status",
    "pattern readwrite %u/bridge/#",
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """The usual private broker, with device users and the documented device ACL lines."""
    instance = PrivateBroker(
        tmp_path / "broker",
        services=("alpha", *DEVICES),
        monitor_topics=MONITOR_TOPICS,
        patterns=PATTERNS,
    ).start()
    try:
        yield instance
    finally:
        instance.kill()


def pub(
    broker: PrivateBroker, user: str, topic: str, message: str, *, retain: bool = False
) -> None:
    """mosquitto_pub, QoS 1, as `user`."""
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", user]
    argv += ["-P", broker.users[user], "-t", topic, "-m", message, "-q", "1"]
    subprocess.run([*argv, *(["-r"] if retain else [])], check=True, timeout=10)


def device(
    broker: PrivateBroker, user: str, listen: str, will_topic: str, will: str
) -> MosquittoSub:
    """A device connection: subscribed to its command topic, holding its Last Will."""
    return MosquittoSub(
        broker,
        user,
        "-t",
        listen,
        "--will-topic",
        will_topic,
        "--will-payload",
        will,
        "--will-qos",
        "1",
        "--will-retain",
    )


def test_state_parsing_plain_and_json() -> None:
    """Plain payloads, JSON with a state key, and Zigbee2MQTT's older bare words."""
    tasmota = ServiceSettings(name="plug1", preset="tasmota")
    assert device_state(b"Online", tasmota) == "online"
    assert device_state(b"Offline", tasmota) == "offline"
    assert device_state(b"online", tasmota) is None  # Tasmota capitalises
    z2m = ServiceSettings(name="z", preset="zigbee2mqtt", device="zigbee2mqtt")
    assert device_state(b'{"state":"online"}', z2m) == "online"
    assert device_state(b'{"state":"offline"}', z2m) == "offline"
    assert device_state(b"offline", z2m) == "offline"
    assert device_state(b'{"state":"rebooting"}', z2m) is None


def test_tasmota_lwt_heartbeat_and_mqtt_restart(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """Online/Offline LWT, STATE as heartbeat (silence -> hung), Restart via cmnd/<t>/Restart."""
    monitors.start(
        monitor={"settle": 0},
        # Restart on a lost connection only: a silent heartbeat is reported, not acted on.
        services=[
            {"name": "plug1", "preset": "tasmota", "stale_after": 1.0, "restart": {"on": ["lost"]}}
        ],
    )
    plug = device(broker, "plug1", "cmnd/plug1/Restart", "tele/plug1/LWT", "Offline")
    try:
        pub(broker, "plug1", "tele/plug1/LWT", "Online", retain=True)
        watcher.wait_verdict("plug1", "online")
        # Silence on tele/plug1/STATE for stale_after: the dead man's switch says hung.
        verdict, _ = watcher.wait_verdict("plug1", "hung", timeout=5)
        assert verdict.reason == "stale"
        pub(broker, "plug1", "tele/plug1/STATE", '{"Uptime":"0T00:01:00","Heap":25}')
        watcher.wait_verdict("plug1", "online", timeout=5, where=lambda v: v.reason == "pong")
        # Power cut: the broker publishes the LWT; the monitor sends Tasmota's restart command.
        mark = watcher.mark()
        plug.proc.kill()
        watcher.wait_verdict("plug1", "restarting", timeout=5, start=mark)
        watcher.wait(lambda m: b'"reason":"action"' in m.payload, 5, mark)
        [action] = [e for e in watcher.events("plug1", mark) if e.reason == "action"]
        assert action.extra is not None
        assert action.extra["action"] == {
            "type": "mqtt",
            "ok": True,
            "detail": "published to cmnd/plug1/Restart",
            "exit_code": None,
            "duration_ms": action.extra["action"]["duration_ms"],
            "output": "",
        }
        # The plug reboots and comes back: a new life, so the restart is verified.
        plug = device(broker, "plug1", "cmnd/plug1/Restart", "tele/plug1/LWT", "Offline")
        pub(broker, "plug1", "tele/plug1/LWT", "Online", retain=True)
        verdict, _ = watcher.wait_verdict("plug1", "online", timeout=5, start=mark)
        assert verdict.restarts == 1
    finally:
        plug.stop()


def test_tasmota_restart_command_reaches_the_device(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """The device, subscribed to cmnd/plug1/Restart, receives `1` when its LWT fires."""
    monitors.start(monitor={"settle": 0}, services=[{"name": "plug1", "preset": "tasmota"}])
    plug = device(broker, "plug1", "tele/plug1/STATE", "tele/plug1/LWT", "Offline")
    command = MosquittoSub(broker, "plug1", "-t", "cmnd/plug1/Restart", "-v")
    try:
        pub(broker, "plug1", "tele/plug1/LWT", "Online", retain=True)
        watcher.wait_verdict("plug1", "online")
        plug.proc.kill()
        assert command.expect("cmnd/plug1/Restart 1", timeout=5)
    finally:
        plug.stop()
        command.stop()


def test_esphome_status_online_offline(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """ESPHome's `<node>/status` birth and LWT: online, then offline/lost when it drops."""
    monitors.start(
        services=[{"name": "esp-livingroom", "preset": "esphome", "device": "livingroom"}]
    )
    node = device(broker, "livingroom", "livingroom/command", "livingroom/status", "offline")
    pub(broker, "livingroom", "livingroom/status", "online", retain=True)
    verdict, _ = watcher.wait_verdict("esp-livingroom", "online")
    assert verdict.session is not None
    node.proc.kill()
    node.stop()
    verdict, _ = watcher.wait_verdict("esp-livingroom", "offline", timeout=5)
    assert verdict.reason == "lost"


def test_zigbee2mqtt_state_json_and_health_check(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """JSON bridge state; health_check requests answered (healthy, unhealthy, silent)."""
    monitors.start(
        services=[
            {
                "name": "z2m",
                "preset": "zigbee2mqtt",
                "device": "zigbee2mqtt",
                "check_interval": 0.3,
                "check_timeout": 0.5,
                "action": {"type": "none"},  # watch only: see every detection state
            }
        ]
    )
    bridge = device(
        broker,
        "zigbee2mqtt",
        "zigbee2mqtt/bridge/request/health_check",
        "zigbee2mqtt/bridge/state",
        '{"state":"offline"}',
    )
    try:
        pub(broker, "zigbee2mqtt", "zigbee2mqtt/bridge/state", '{"state":"online"}', retain=True)
        watcher.wait_verdict("z2m", "online")

        def answer(healthy: bool, rounds: int) -> None:
            for _ in range(rounds):
                request = json.loads(bridge.expect('"transaction"', timeout=5).strip())
                response = {
                    "data": {"healthy": healthy},
                    "status": "ok",
                    "transaction": request["transaction"],
                }
                pub(
                    broker,
                    "zigbee2mqtt",
                    "zigbee2mqtt/bridge/response/health_check",
                    json.dumps(response),
                )

        answer(True, 3)
        assert [v.state for v in watcher.verdicts("z2m")][-1] == "online"
        mark = watcher.mark()
        answer(False, 3)
        verdict, _ = watcher.wait_verdict("z2m", "unhealthy", timeout=5, start=mark)
        assert verdict.extra is not None
        assert verdict.extra["detail"]["response"]["data"] == {"healthy": False}
        # The bridge stops answering: missed checks make it hung.
        verdict, _ = watcher.wait_verdict("z2m", "hung", timeout=5, start=mark)
        assert verdict.reason == "missed_pongs"
    finally:
        bridge.stop()
