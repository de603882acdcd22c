"""The agent library against a real broker: duplicates, stale births, health checks, asyncio."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable

import pytest

from presence.agent import Agent, AsyncAgent, Phase
from presence.broker import PrivateBroker
from presence.errors import ConnectionRefused, DuplicateServiceError, InvalidName
from presence.protocol import Status, encode
from tests.helpers import TOPICS, Monitors, ServiceProcess, Watcher


def test_two_agents_one_name_second_fails_clearly_without_flapping(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """The second agent with a taken name exits with a clear error; the first stays online."""
    monitors.start()
    first = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    second = spawn("alpha")
    line = second.expect("DUPLICATE", timeout=10)
    assert "already running" in line
    assert second.wait() == 4
    # Let a few rounds pass: the first agent is still the one the monitor believes in.
    time.sleep(1.0)
    statuses = watcher.statuses("alpha", mark)
    assert statuses[-1].session == first.session
    assert statuses[-1].state == "online"
    # The challenge costs at most: second's birth, first's re-assertion. No flapping.
    assert len(statuses) <= 2
    assert all(s.state == "online" for s in statuses)
    assert not [e for e in watcher.events("alpha", mark) if e.to_state != "online"]
    assert first.proc.poll() is None


def test_live_duplicate_started_simultaneously_leaves_exactly_one(
    broker: PrivateBroker, watcher: Watcher
) -> None:
    """Two agents racing for one name: exactly one wins, the other reports the conflict."""
    errors: list[DuplicateServiceError] = []
    agents = [
        Agent("beta", broker.settings("beta"), confirm_timeout=0.5, on_conflict=errors.append)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=a.start, kwargs={"wait": None}) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            any(a.phase == Phase.CONFLICT for a in agents)
            and any(a.phase == Phase.ONLINE for a in agents)
        ):
            time.sleep(0.05)
        phases = sorted(a.phase.value for a in agents)
        assert phases == ["conflict", "online"]
        assert len(errors) == 1
        winner = next(a for a in agents if a.phase == Phase.ONLINE)
        # The retained status names the winner.
        mark = watcher.mark()
        assert watcher.conn.subscribe(TOPICS.status("beta"), 1)
        status = watcher.wait(lambda m: m.topic == TOPICS.status("beta"), 3, mark)
        assert winner.session is not None
        assert winner.session.encode() in status.payload
    finally:
        for a in agents:
            a.stop()


def test_stale_retained_birth_does_not_block_a_new_agent(
    broker: PrivateBroker, watcher: Watcher
) -> None:
    """A retained birth left by a broker crash is challenged and, with no answer, overruled."""
    ghost = Status("online", "gh05t", 1.0, host="elsewhere", pid=1)
    admin = Watcher(broker, user="monitor")  # the monitor user may write any status
    try:
        admin.conn.publish(TOPICS.status("gamma"), encode(ghost), qos=1, retain=True).wait(3)
    finally:
        admin.close()
    agent = Agent("gamma", broker.settings("gamma"), confirm_timeout=0.3)
    try:
        started = time.monotonic()
        agent.start(wait=5)
        assert agent.phase == Phase.ONLINE
        # It waited for the challenge to go unanswered before believing it.
        assert time.monotonic() - started >= 0.3
    finally:
        agent.stop()


def test_health_callback_decides_ok_and_detail(
    monitors: Monitors, watcher: Watcher, broker: PrivateBroker
) -> None:
    """ok:false pongs for missed_pongs rounds make the service unhealthy, with the detail."""
    healthy = threading.Event()
    healthy.set()

    def check() -> tuple[bool, dict[str, object]]:
        return healthy.is_set(), {"db": "up" if healthy.is_set() else "down"}

    monitors.start()
    with Agent("delta", broker.settings("delta"), health=check):
        watcher.wait_verdict("delta", "online")
        mark = watcher.mark()
        healthy.clear()
        verdict, _ = watcher.wait_verdict("delta", "unhealthy", timeout=5, start=mark)
        assert verdict.reason == "health_check"
        assert verdict.extra is not None
        assert verdict.extra["detail"] == {"db": "down"}
        mark = watcher.mark()
        healthy.set()
        watcher.wait_verdict("delta", "online", timeout=5, start=mark)


def test_slow_health_check_answers_not_ok_instead_of_blocking(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """A health check that overruns its timeout is reported as failing, not waited for."""
    monitors.start()
    spawn("web", "--health", "slow").ready()
    verdict, _ = watcher.wait_verdict("web", "unhealthy", timeout=8)
    assert verdict.extra is not None
    assert "health check" in str(verdict.extra["detail"]["error"])


def test_asyncio_agent_pongs_from_its_event_loop(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """An asyncio service answers from its loop; a blocked loop means hung."""
    monitors.start()
    svc = spawn("worker-1", "--mode", "asyncio").ready()
    watcher.wait_verdict("worker-1", "online")
    watcher.wait(
        lambda m: m.topic == TOPICS.verdict("worker-1") and b'"rtt_ms":n' not in m.payload, 3
    )
    mark = watcher.mark()
    svc.signal(signal.SIGUSR1)  # blocks the event loop with time.sleep
    watcher.wait_verdict("worker-1", "hung", timeout=5, start=mark)


def test_async_agent_in_process(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """AsyncAgent works as an async context manager with an async health check."""

    async def health() -> tuple[bool, dict[str, object]]:
        await asyncio.sleep(0)
        return True, {"load": 0.25}

    async def main() -> None:
        async with AsyncAgent("worker-2", broker.settings("worker-2"), health=health):
            await asyncio.to_thread(watcher.wait_verdict, "worker-2", "online")
            await asyncio.to_thread(
                watcher.wait,
                lambda m: m.topic == TOPICS.verdict("worker-2") and b'rtt_ms":n' not in m.payload,
                3,
            )

    monitors.start()
    asyncio.run(main())
    watcher.wait_verdict("worker-2", "stopped", timeout=3)


def test_bad_credentials_fail_fast_with_a_clear_error(broker: PrivateBroker) -> None:
    """A wrong password is a ConnectionRefused naming the problem, not a silent retry loop."""
    agent = Agent("alpha", broker.settings("alpha", password="wrong"))  # noqa: S106 (a wrong one)
    with pytest.raises(ConnectionRefused, match=r"(?i)not authori.*check username and password"):
        agent.start(wait=5)


def test_invalid_names_never_reach_a_topic(broker: PrivateBroker) -> None:
    """Service names are validated before anything is published."""
    for bad in ("", "-x", "_monitor", "a/b", "a+b", "a#", "naïve", "x" * 65, "ok\n"):
        with pytest.raises(InvalidName):
            Agent(bad, broker.settings("alpha"))
