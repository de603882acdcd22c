"""Faults of the services themselves: kill -9 storms, freezes, deadlocks, crash loops."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.broker import PrivateBroker
from tests.helpers import FAST, Monitors, ServiceProcess, Watcher, hang_bound
from tests.test_recovery import Hook, launch

NAMES = tuple(f"s{i}" for i in range(10))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private broker with ten service users s0..s9 (and the usual ones)."""
    instance = PrivateBroker(tmp_path / "broker", services=(*NAMES, "alpha", "beta")).start()
    try:
        yield instance
    finally:
        instance.resume()
        instance.kill()


def test_twenty_kill_9s_across_ten_services_one_restart_each(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pids: Callable[[str], Path],
    record: Callable[..., None],
) -> None:
    """Two waves of kill -9 on all ten: every kill detected, exactly one restart per kill, and
    no restart for a service that was not killed."""
    # The services first: a declared service not seen within startup_grace would be started.
    current = {n: spawn(n, "--pidfile", str(pids(n))).ready().session for n in NAMES}
    monitors.start(
        monitor={"settle": 0},
        services=[{"name": n, "action": launch(broker, n, pids(n))} for n in NAMES],
    )
    for name in NAMES:
        watcher.wait_verdict(name, "online")
    detections: list[float] = []
    for wave in (1, 2):
        mark = watcher.mark()
        killed_at: dict[str, float] = {}
        for name in NAMES:
            pid = int(pids(name).read_text().split()[-1])
            killed_at[name] = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        for name in NAMES:
            _, message = watcher.wait_verdict(name, "offline", timeout=5, start=mark)
            detections.append(message.received - killed_at[name])
        for name in NAMES:
            verdict, _ = watcher.wait_verdict(
                name,
                "online",
                timeout=20,
                start=mark,
                where=lambda v, n=name: v.session != current[n],
            )
            assert verdict.restarts == wave, (name, verdict.restarts)
            current[name] = verdict.session
    actions = [e for e in watcher.events() if e.reason == "action"]
    per_service = {n: sum(1 for e in actions if e.service == n) for n in NAMES}
    assert per_service == dict.fromkeys(NAMES, 2)
    assert all(e.extra and e.extra["action"]["ok"] for e in actions)
    record(
        "service kill -9, 20 times across 10 services",
        detected_median_s=sorted(detections)[len(detections) // 2],
        detected_max_s=max(detections),
        restarts=len(actions),
    )


@pytest.mark.parametrize("fault", ["sigstop", "deadlock"])
def test_frozen_or_deadlocked_service_is_hung_within_the_bound_and_restarted_once(
    fault: str,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pids: Callable[[str], Path],
    record: Callable[..., None],
) -> None:
    """SIGSTOP, or the app's main loop deadlocked while paho's thread lives: hung within
    ping_interval x missed_pongs + pong_timeout, one restart (which kills the stuck one)."""
    pidfile = pids("alpha")
    action = launch(broker, "alpha", pidfile, kill_old=True)
    monitors.start(monitor={"settle": 0}, services=[{"name": "alpha", "action": action}])
    svc = spawn("alpha", "--pidfile", str(pidfile), "--beat-timeout", "0.3").ready()
    watcher.wait_verdict("alpha", "online")
    watcher.wait(lambda m: m.topic.endswith("/alpha") and b'"rtt_ms":n' not in m.payload, 3)
    mark = watcher.mark()
    started = svc.signal(signal.SIGSTOP if fault == "sigstop" else signal.SIGUSR1)
    _, message = watcher.wait_verdict("alpha", "hung", timeout=5, start=mark)
    took = message.received - started
    # The bound, plus the app's beat timeout for a deadlock (its last beat was fresh).
    slack = 0.3 if fault == "deadlock" else 0.0
    assert took <= hang_bound() + FAST["ping_interval"] + slack + 0.3, took
    verdict, _ = watcher.wait_verdict(
        "alpha", "online", timeout=20, start=mark, where=lambda v: v.session != svc.session
    )
    assert verdict.restarts == 1
    assert len([e for e in watcher.events("alpha", mark) if e.reason == "action"]) == 1
    assert svc.wait(5) == -signal.SIGKILL  # the stuck instance did not linger
    record(
        f"service {fault} (paho alive)" if fault == "deadlock" else "service SIGSTOP",
        hung_after_s=took,
        bound_s=hang_bound(),
        restarts=verdict.restarts,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_loop_for_two_minutes_holds_the_delay_sequence_and_gives_up_once(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pids: Callable[[str], Path],
    record: Callable[..., None],
) -> None:
    """A program that exits 0.5 s after each start, under the default policy: starts at
    0, 5, 10, 20, 40 s (+/- 10 %), `failed` after five, one `failed` alert, and never more than
    five starts in any 10 s (systemd's own start limit)."""
    hook = Hook()
    pidfile = pids("beta")
    action = launch(broker, "beta", pidfile, "--crash-after", "0.5")
    try:
        monitors.start(
            monitor={"settle": 0},
            services=[{"name": "beta", "action": action}],
            alerts=[{"type": "webhook", "url": hook.url}],
        )
        spawn("beta", "--crash-after", "0.5", "--pidfile", str(pidfile)).ready()
        watcher.wait_verdict("beta", "failed", timeout=120)
        events = watcher.events("beta")
        starts = [
            e.ts for e in events if e.to_state == "restarting" and e.from_state != "restarting"
        ]
        assert len(starts) == 5
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # Each gap: the delay (+/- 10 % jitter) plus the ~1-2 s the program lived.
        for gap, delay in zip(gaps, (5, 10, 20, 40), strict=True):
            assert delay * 0.9 <= gap <= delay * 1.1 + 3.0, gaps
        for i, start in enumerate(starts):
            assert sum(1 for s in starts[i:] if s - start < 10.0) <= 5
        failed = hook.wait_kind("failed", timeout=10)
        time.sleep(2.0)  # a second `failed` alert, if one were coming, would be here by now
        kinds = [a["kind"] for a in hook.received]
        assert kinds.count("failed") == 1
        assert failed["service"] == "beta"
        record(
            "crash loop (exits 0.5 s after each start), 2 min, default policy",
            gaps_s=" / ".join(f"{g:.1f}" for g in gaps),
            starts=len(starts),
            failed_alerts=kinds.count("failed"),
        )
    finally:
        hook.close()
