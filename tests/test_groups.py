"""Healthy members for routing: group documents, `presence pick` and the Picker helper."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from presence.broker import PrivateBroker
from presence.groups import Picker, load_of, parse_group, pick
from presence.mqtt import Message
from tests.helpers import FAST, Monitors, ServiceProcess, Watcher
from tests.test_cli import config, presence

GROUP_TOPIC = "presence/_monitor/groups/api"


def test_load_is_read_from_the_pong_detail_or_the_probe_body() -> None:
    """`detail.load`, or `detail.body.load` behind presence run's HTTP probe; junk is ignored."""
    assert load_of({"load": 0.5}) == 0.5
    assert load_of({"body": {"load": 3}}) == 3.0
    for junk in (None, {}, {"load": "high"}, {"load": True}, {"load": float("nan")}):
        assert load_of(junk) is None


def test_pick_follows_the_least_loaded_live_member(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """Three members, loads 0.1/0.5/0.9: pick the first; kill it: the next pick moves on."""
    monitors.start()
    members = {
        name: spawn(name, "--group", "api", "--load", str(load)).ready()
        for name, load in (("alpha", 0.1), ("beta", 0.5), ("gamma", 0.9))
    }

    def order_is(expected: list[str]) -> Callable[[Message], bool]:
        return lambda m: m.topic == GROUP_TOPIC and parse_group(m.payload) == expected

    def loads(m: Message) -> list[object]:
        return [member["load"] for member in json.loads(m.payload)["members"]]

    # Members join as they are born; their loads arrive with their first pongs.
    watcher.wait(lambda m: m.topic == GROUP_TOPIC and loads(m) == [0.1, 0.5, 0.9], 10)
    cfg = str(config(tmp_path, broker, "dashboard"))
    result = presence("pick", "api", "-c", cfg)
    assert (result.returncode, result.stdout.strip()) == (0, "alpha")
    assert pick(broker.settings("dashboard"), "api") == "alpha"

    with Picker(broker.settings("dashboard"), "api") as picker:
        assert picker.pick() == "alpha"
        mark = watcher.mark()
        killed = members["alpha"].signal(signal.SIGKILL)
        message = watcher.wait(order_is(["beta", "gamma"]), 5, mark)
        # The Will moves the pick at once, well within one ping round.
        assert message.received - killed < FAST["ping_interval"] + 0.5
        deadline = time.monotonic() + 5
        while picker.pick() != "beta":
            assert time.monotonic() < deadline, picker.members()
            time.sleep(0.01)
        assert picker.members() == ["beta", "gamma"]
    everyone = presence("pick", "api", "-c", cfg, "--all")
    assert everyone.stdout.split() == ["beta", "gamma"]
    nobody = presence("pick", "db", "-c", cfg)
    assert nobody.returncode == 1
    assert "no live member in group 'db'" in nobody.stderr
