"""Fixtures: a private authenticated mosquitto per test, a watcher, monitors, service processes."""

from __future__ import annotations

import resource
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.broker import PrivateBroker
from tests.helpers import Monitors, ServiceProcess, Watcher

#: Service users every test broker knows (each is also an MQTT user, as in production).
SERVICES = ("alpha", "beta", "gamma", "delta", "sensor-gw", "web", "worker-1", "worker-2")


@pytest.fixture(scope="session", autouse=True)
def _enough_file_descriptors() -> None:
    """Raise our soft descriptor limit to the hard one: brokers we start inherit it, and the
    mass-failure test holds thousands of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="session", autouse=True)
def _mosquitto_installed() -> None:
    """Fail loudly (never skip) when the broker binary is missing: .ci/run installs it."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed; run .ci/run or apt-get install mosquitto")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A fresh mosquitto on a free loopback port, with users, the shipped ACL and persistence."""
    instance = PrivateBroker(tmp_path / "broker", services=SERVICES).start()
    try:
        yield instance
    finally:
        instance.resume()
        instance.kill()


@pytest.fixture
def watcher(broker: PrivateBroker) -> Iterator[Watcher]:
    """A dashboard-user client recording everything under presence/#."""
    w = Watcher(broker)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def monitors(broker: PrivateBroker, watcher: Watcher) -> Iterator[Monitors]:
    """Start in-process monitors with fast timings; all are stopped at teardown."""
    m = Monitors(broker, watcher)
    try:
        yield m
    finally:
        m.stop_all()


@pytest.fixture
def spawn(broker: PrivateBroker) -> Iterator[Callable[..., ServiceProcess]]:
    """Start tests/programs/service.py processes; all are killed at teardown."""
    started: list[ServiceProcess] = []

    def _spawn(
        name: str, *args: str, user: str | None = None, port: int | None = None
    ) -> ServiceProcess:
        proc = ServiceProcess(broker, name, *args, user=user, port=port)
        started.append(proc)
        return proc

    try:
        yield _spawn
    finally:
        for proc in started:
            proc.cleanup()
