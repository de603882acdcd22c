"""Faults of the monitor itself: kill -9 while services fail, wall-clock jumps, a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.clock import Instant
from presence.monitor import Monitor
from tests.helpers import FAST, ROOT, TOPICS, ServiceProcess, Watcher, monitor_settings
from tests.test_recovery import launch

FIVE = ("alpha", "beta", "gamma", "delta", "web")


def _toml(value: object) -> str:
    """A value in TOML (JSON's strings, numbers, arrays and inline tables are close enough)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _monitor_config(
    tmp_path: Path, broker: PrivateBroker, services: list[dict[str, object]], **monitor: object
) -> Path:
    path = tmp_path / "monitor.toml"
    lines = [
        "[broker]",
        f"port = {broker.port}",
        'username = "monitor"',
        f'password = "{broker.users["monitor"]}"',
        "keepalive = 5",
        "reconnect_max = 1",
        "[monitor]",
        *(f"{k} = {_toml(v)}" for k, v in {**FAST, **monitor}.items()),
    ]
    for service in services:
        lines += ["[[services]]", *(f"{k} = {_toml(v)}" for k, v in service.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_monitor(cfg: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PRESENCE_CONFIG", None)
    stderr = log.open("wb") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "presence", "monitor", "-c", str(cfg), *args],
        env=env,
        stderr=stderr,
        cwd=ROOT,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Monitor processes started by a test; all killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_monitor_kill_9_while_five_services_fail(
    tmp_path: Path,
    broker: PrivateBroker,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    processes: list[subprocess.Popen[bytes]],
    pids: Callable[[str], Path],
    record: Callable[..., None],
) -> None:
    """The monitor is killed, then five services die: the next monitor gets the Wills from its
    persistent session, handles all five within 2 s, restarts each exactly once."""
    pidfiles = {n: pids(n) for n in FIVE}
    services = [{"name": n, "action": launch(broker, n, pidfiles[n])} for n in FIVE]
    cfg = _monitor_config(tmp_path, broker, services, settle=1.0, startup_grace=30.0)
    svcs = {n: spawn(n, "--pidfile", str(pidfiles[n])).ready() for n in FIVE}
    processes.append(_start_monitor(cfg))
    for name in FIVE:
        watcher.wait_verdict(name, "online")
    processes[0].kill()
    processes[0].wait()
    for svc in svcs.values():
        svc.signal(signal.SIGKILL)
    for name in FIVE:
        watcher.wait(lambda m, n=name: m.topic == TOPICS.status(n) and b'"lost"' in m.payload, 5)
    mark = watcher.mark()
    processes.append(_start_monitor(cfg))
    watcher.wait_monitor_online(timeout=10, start=mark)
    back = time.monotonic()
    handled = []
    for name in FIVE:
        _, message = watcher.wait_verdict(name, "restarting", timeout=10, start=mark)
        handled.append(message.received - back)
    assert max(handled) <= 2.0, handled
    for name in FIVE:
        watcher.wait_verdict(
            name,
            "online",
            timeout=15,
            start=mark,
            where=lambda v, n=name: v.session != svcs[n].session,
        )
    time.sleep(1.0)  # a second restart of anyone would have started by now
    launches = {n: len(pidfiles[n].read_text().split()) - 1 for n in FIVE}
    assert launches == dict.fromkeys(FIVE, 1), launches
    record(
        "monitor kill -9 while 5 services fail",
        all_handled_within_s=max(handled),
        restarts_each=1,
    )


class JumpingClock:
    """Real monotonic time; wall time that the test can throw hours forward or back."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> Instant:
        return Instant(time.monotonic(), time.time() + self.offset)


def test_wall_clock_jumps_cause_no_spurious_verdicts(
    broker: PrivateBroker, watcher: Watcher, record: Callable[..., None]
) -> None:
    """+2 h and -2 h on the monitor's wall clock: timers run on the monotonic clock, nothing
    changes state."""
    clock = JumpingClock()
    monitor = Monitor(monitor_settings(broker), clock=clock).start()
    agents = [Agent(n, broker.settings(n)).start() for n in ("alpha", "beta")]
    try:
        for agent in agents:
            watcher.wait_verdict(agent.name, "online")
        mark = watcher.mark()
        for jump in (7200.0, -7200.0, -7200.0):
            clock.offset += jump
            time.sleep(10 * FAST["ping_interval"])  # ten rounds with the clock moved
        events = watcher.events(start=mark)
        assert events == []
        assert monitor.exit_error is None
        record("wall clock +2 h / -2 h on the monitor", spurious_verdicts=len(events))
    finally:
        for agent in agents:
            agent.stop()
        monitor.stop()


def test_full_disk_under_the_log_file(
    tmp_path: Path,
    broker: PrivateBroker,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    processes: list[subprocess.Popen[bytes]],
    record: Callable[..., None],
) -> None:
    """The log file sits on a full disk (/dev/full): detection keeps working, and the write
    errors are reported once a minute, not once per log line."""
    cfg = _monitor_config(tmp_path, broker, [])
    cfg.write_text(cfg.read_text() + '[log]\nlevel = "DEBUG"\nfile = "/dev/full"\n')
    stderr = tmp_path / "monitor.err"
    processes.append(_start_monitor(cfg, log=stderr))
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online", timeout=10)
    mark = watcher.mark()
    svc.signal(signal.SIGKILL)
    verdict, _ = watcher.wait_verdict("alpha", "offline", timeout=5, start=mark)
    assert verdict.reason == "lost"
    processes[0].send_signal(signal.SIGTERM)
    processes[0].wait(10)
    reports = [line for line in stderr.read_text().splitlines() if "cannot write log file" in line]
    assert len(reports) == 1, reports
    assert "No space left on device" in reports[0]
    dropped = int(reports[0].split("(")[1].split()[0])
    record(
        "disk full under the log file",
        detection="kept working",
        error_reports=len(reports),
        messages_dropped_first_report=dropped,
    )
