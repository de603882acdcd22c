"""Network partitions through a black-holing proxy: service<->broker and monitor<->broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.broker import PrivateBroker
from presence.monitor import Monitor
from tests.faults.proxy import Proxy
from tests.helpers import Monitors, ServiceProcess, Watcher, monitor_settings

#: Blip tolerance is ping_interval x missed_pongs: here a partition under 6 s is only `suspect`.
TOLERANT = {"ping_interval": 1.0, "pong_timeout": 1.0, "missed_pongs": 6, "settle": 2.0}

#: Cases over a minute: run by .ci/run (pytest -m slow), not by default.
LONG = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def proxy(broker: PrivateBroker) -> Iterator[Proxy]:
    """A black-holing TCP proxy in front of the broker."""
    p = Proxy(broker.port)
    try:
        yield p
    finally:
        p.close()


def _touch(canary: Path) -> dict[str, object]:
    return {"type": "exec", "argv": ["sh", "-c", f"echo restart >> {canary}"], "timeout": 5}


def _restarts(canary: Path) -> int:
    return len(canary.read_text().splitlines()) if canary.exists() else 0


@pytest.mark.parametrize("seconds", [5.0, pytest.param(30.0, marks=LONG)])
def test_service_partition(
    seconds: float,
    tmp_path: Path,
    proxy: Proxy,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    record: Callable[..., None],
) -> None:
    """Service<->broker black-holed: a short partition causes no action; a long one at most
    one restart, and the service is online again afterwards."""
    canary = tmp_path / "restarts"
    monitors.start(monitor=TOLERANT, services=[{"name": "alpha", "action": _touch(canary)}])
    svc = spawn("alpha", "--keepalive", "10", port=proxy.port).ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    proxy.block()
    time.sleep(seconds)
    proxy.unblock()
    tolerance = TOLERANT["ping_interval"] * TOLERANT["missed_pongs"]
    if seconds > tolerance:
        # Long enough to be hung (and for the broker to drop the connection): it comes back.
        watcher.wait_verdict("alpha", "online", timeout=30, start=mark)
    time.sleep(3.0)  # rounds after the heal: anything still coming would show now
    states = [v.state for v in watcher.verdicts("alpha", mark)]
    restarts = _restarts(canary)
    if seconds < tolerance:
        assert restarts == 0
        assert "hung" not in states, states
        assert "offline" not in states, states
        assert watcher.verdicts("alpha")[-1].session == svc.session
    else:
        assert restarts <= 1
    assert watcher.verdicts("alpha")[-1].state == "online"
    record(
        f"partition service<->broker {seconds:.0f} s",
        actions=restarts,
        states=" > ".join(dict.fromkeys(states)) or "online throughout",
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_monitor_partition_of_30_s_causes_no_action(
    tmp_path: Path,
    broker: PrivateBroker,
    proxy: Proxy,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    record: Callable[..., None],
) -> None:
    """Monitor<->broker black-holed for 30 s: zero actions while cut off and for the settle
    period after (the services were fine all along)."""
    canary = tmp_path / "restarts"
    settings = monitor_settings(
        broker,
        monitor=TOLERANT,
        services=[{"name": n, "action": _touch(canary)} for n in ("alpha", "beta")],
    )
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"port": proxy.port})}
    )
    svcs = [spawn(n).ready() for n in ("alpha", "beta")]
    monitor = Monitor(settings).start()
    try:
        for svc in svcs:
            watcher.wait_verdict(svc.name, "online")
        proxy.block()
        time.sleep(30.0)
        proxy.unblock()
        watcher.wait_monitor_online(timeout=30, start=watcher.mark())
        time.sleep(TOLERANT["settle"] + 2.0)
        assert _restarts(canary) == 0
        assert monitor.exit_error is None
        for svc in svcs:
            assert watcher.verdicts(svc.name)[-1].state == "online"
        record("partition monitor<->broker 30 s", actions=0)
    finally:
        monitor.stop()
