"""Faults of the broker: restarts (SIGTERM and kill -9), pauses, and a mass failure of 2,000
connections at once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.mqtt import cli_client_id, fetch_retained
from presence.protocol import parse_verdict
from tests.helpers import ROOT, TOPICS, Monitors, Watcher

NAMES = tuple(f"s{i}" for i in range(50))

#: Cases over a minute: run by .ci/run (pytest -m slow), not by default.
LONG = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private broker with fifty service users s0..s49."""
    instance = PrivateBroker(tmp_path / "broker", services=NAMES).start()
    try:
        yield instance
    finally:
        instance.resume()
        instance.kill()


@pytest.fixture
def fleet(broker: PrivateBroker) -> Iterator[list[Agent]]:
    """Fifty agents (in-process: real connections, real Wills), all online."""
    agents = [Agent(n, broker.settings(n)).start(wait=None) for n in NAMES]
    try:
        for agent in agents:
            assert agent.wait_online(10)
        yield agents
    finally:
        for agent in agents:
            agent.stop(timeout=0.5)


def _watch_fleet_online(
    broker: PrivateBroker, agents: list[Agent], before: dict[str, str | None], timeout: float
) -> float:
    """Wait until every agent is online again with a session other than `before`'s (the
    retained verdicts from before the fault do not count); returns the time taken."""
    started = time.monotonic()
    watcher = Watcher(broker)
    try:
        for agent in agents:
            watcher.wait_verdict(
                agent.name,
                "online",
                timeout=max(0.1, timeout - (time.monotonic() - started)),
                where=lambda v, a=agent: v.session == a.session != before[a.name],
            )
    finally:
        watcher.close()
    return time.monotonic() - started


def _watch_any_online(broker: PrivateBroker, agents: list[Agent], timeout: float) -> float:
    """Wait until every agent's current session is online in a fresh read of the verdicts."""
    started = time.monotonic()
    while True:
        retained = fetch_retained(
            broker.settings("dashboard"), [TOPICS.verdicts], client_id=cli_client_id("wait")
        )
        verdicts = {v.service: v for v in (parse_verdict(m.payload) for m in retained)}
        if all(
            (v := verdicts.get(a.name)) is not None
            and v.state == "online"
            and v.session == a.session
            for a in agents
        ):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, "not everyone came back online"
        time.sleep(0.2)


def _actions(broker: PrivateBroker) -> int:
    """Restart actions the monitor reported, read from the retained verdicts' counters."""
    retained = fetch_retained(
        broker.settings("dashboard"), [TOPICS.verdicts], client_id=cli_client_id("count")
    )
    return sum(parse_verdict(m.payload).restarts for m in retained if m.payload)


def _start_monitor(monitors: Monitors, canary: Path) -> None:
    touch = {"type": "exec", "argv": ["touch", str(canary)], "timeout": 5}
    monitors.start(monitor={"settle": 3.0}, services=[{"name": n, "action": touch} for n in NAMES])


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_broker_restart_with_fifty_services_causes_no_restart_actions(
    how: str,
    tmp_path: Path,
    broker: PrivateBroker,
    fleet: list[Agent],
    monitors: Monitors,
    watcher: Watcher,
    record: Callable[..., None],
) -> None:
    """Broker SIGTERM (every Will fires) or kill -9, then back: all 50 online within 3 s,
    zero restart actions (the settle period lets them re-announce)."""
    canary = tmp_path / "restarted"
    _start_monitor(monitors, canary)
    for name in NAMES:
        watcher.wait_verdict(name, "online")
    watcher.close()
    before = {a.name: a.session for a in fleet}
    if how == "sigterm":
        broker.stop()
    else:
        broker.kill()
    broker.start()
    took = _watch_fleet_online(broker, fleet, before, timeout=10)
    assert took < 3.0, took
    time.sleep(3.5)  # the settle period has passed: any restart would have started
    assert not canary.exists()
    assert _actions(broker) == 0
    record(f"broker {how} restart, 50 services", back_online_s=took, actions=0)


@pytest.mark.parametrize("pause", [8.0, pytest.param(30.0, marks=LONG)])
def test_paused_broker_causes_no_restart_actions(
    pause: float,
    tmp_path: Path,
    broker: PrivateBroker,
    fleet: list[Agent],
    monitors: Monitors,
    watcher: Watcher,
    record: Callable[..., None],
) -> None:
    """SIGSTOP the broker for 8 s / 30 s: clients may flap, nobody is restarted."""
    canary = tmp_path / "restarted"
    _start_monitor(monitors, canary)
    for name in NAMES:
        watcher.wait_verdict(name, "online")
    watcher.close()
    broker.pause()
    time.sleep(pause)
    broker.resume()
    # Some clients keep their sessions through a pause, others are dropped and reconnect.
    took = _watch_any_online(broker, fleet, timeout=30)
    time.sleep(3.5)
    assert not canary.exists()
    assert _actions(broker) == 0
    record(f"broker paused {pause:.0f} s, 50 services", back_online_s=took, actions=0)


def test_mass_failure_of_two_thousand_connections_loses_no_will(
    broker: PrivateBroker, monitors: Monitors, record: Callable[..., None]
) -> None:
    """One process holding 2,000 service connections is killed: 2,000 offline verdicts."""
    count = 2000
    # No ping round closes while the swarm is up (its clients answer no pings).
    monitor = monitors.start(monitor={"ping_interval": 60.0, "pong_timeout": 5.0})
    swarm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faults.swarm",
            "--port",
            str(broker.port),
            "--user",
            "monitor",
            f"--password={broker.users['monitor']}",
            "--count",
            str(count),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert swarm.stdout is not None
        assert swarm.stdout.readline().startswith(f"READY {count}")

        def states() -> dict[str, str]:
            retained = fetch_retained(
                broker.settings("dashboard"), [TOPICS.verdicts], client_id=cli_client_id("n")
            )
            return {
                v.service: v.state
                for v in (parse_verdict(m.payload) for m in retained if m.payload)
                if v.service.startswith("m")
            }

        deadline = time.monotonic() + 30
        while sum(1 for s in states().values() if s == "online") < count:
            assert time.monotonic() < deadline, "the swarm never came online"
            time.sleep(0.2)
        killed = time.monotonic()
        swarm.kill()
        swarm.wait()
        deadline = time.monotonic() + 30
        while True:
            now = states()
            offline = sum(1 for s in now.values() if s == "offline")
            if offline == count or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        took = time.monotonic() - killed
        assert offline == count, f"{offline} of {count} offline after {took:.1f} s"
        assert monitor.exit_error is None
        record(
            "mass failure: 2,000 connections killed at once",
            offline_verdicts=offline,
            all_seen_after_s=took,
        )
    finally:
        if swarm.poll() is None:
            swarm.kill()
            swarm.wait()
