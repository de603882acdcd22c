"""Recovery end to end: real broker, real processes, real restart actions, a real webhook."""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from presence.agent import Agent
from presence.broker import PrivateBroker
from tests.helpers import ROOT, Monitors, ServiceProcess, Watcher, kill_listed
from tests.test_cli import config, presence


@pytest.fixture
def pidfile(tmp_path: Path) -> Iterator[Path]:
    """Where relaunched services write their pids; every one is killed at teardown."""
    path = tmp_path / "pids"
    try:
        yield path
    finally:
        kill_listed(path)


def launch(
    broker: PrivateBroker,
    name: str,
    pidfile: Path,
    *service_args: str,
    require: Path | None = None,
    kill_old: bool = False,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """An exec restart action that starts tests/programs/service.py for `name`, detached."""
    argv = [sys.executable, "-m", "tests.programs.launch"]
    if require is not None:
        argv += ["--require", str(require)]
    if kill_old:
        argv += ["--kill-pids", str(pidfile)]
    argv += [
        "--",
        sys.executable,
        "-m",
        "tests.programs.service",
        "--name",
        "{name}",
        "--port",
        str(broker.port),
        f"--password={broker.users[name]}",
        "--pidfile",
        str(pidfile),
        *service_args,
    ]
    return {
        "type": "exec",
        "argv": argv,
        "timeout": timeout,
        "cwd": str(ROOT),
        "env": {"PYTHONPATH": str(ROOT)},
    }


class Hook:
    """A real HTTP server on 127.0.0.1 collecting webhook alerts."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            # A complete HTTP/1.1 answer: a bare HTTP/1.0 close can reach the client as a
            # reset, which it rightly retries (alerts are delivered at least once).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.cond:
                    hook.received.append(json.loads(body))
                    hook.cond.notify_all()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_kind(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for alert in self.received:
                    if alert["kind"] == kind:
                        return alert
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {kind} alert in {timeout} s: {self.received}"
                self.cond.wait(remaining)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver."""
    h = Hook()
    try:
        yield h
    finally:
        h.close()


def test_kill_9_is_relaunched_by_the_exec_action_and_verified_by_a_new_session(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pidfile: Path,
) -> None:
    """kill -9 -> offline/lost -> restarting (exec runs at once) -> online with a new session."""
    monitors.start(
        monitor={"settle": 0},
        services=[{"name": "alpha", "action": launch(broker, "alpha", pidfile)}],
    )
    first = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    killed = first.signal(signal.SIGKILL)
    watcher.wait_verdict("alpha", "restarting", timeout=3, start=mark)
    verdict, message = watcher.wait_verdict(
        "alpha", "online", timeout=15, start=mark, where=lambda v: v.session != first.session
    )
    assert verdict.restarts == 1
    transitions = [(e.from_state, e.to_state) for e in watcher.events("alpha", mark)]
    assert transitions[:3] == [
        ("online", "offline"),
        ("offline", "restarting"),
        ("restarting", "restarting"),
    ]
    assert transitions[-1] == ("restarting", "online")
    [action] = [e for e in watcher.events("alpha", mark) if e.reason == "action"]
    assert action.extra is not None
    assert action.extra["action"]["ok"] is True
    assert action.extra["action"]["exit_code"] == 0
    print(f"kill -9 -> new session online: {message.received - killed:.3f} s")


def test_crash_loop_backs_off_with_growing_delays_then_fails_with_one_alert(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pidfile: Path,
    hook: Hook,
) -> None:
    """A program that dies 0.3 s after each start: delays 0, 0.4, 0.8, 1.6, then failed.

    Exactly one `failed` alert reaches a real HTTP server, and one `down` before it.
    """
    restart = {
        "initial_delay": 0.4,
        "factor": 2.0,
        "max_delay": 10.0,
        "jitter": 0.0,
        "max_restarts": 4,
        "window": 120.0,
        "verify_timeout": 10.0,
    }
    monitors.start(
        monitor={"settle": 0},
        services=[
            {
                "name": "beta",
                "action": launch(broker, "beta", pidfile, "--crash-after", "0.3"),
                "restart": restart,
            }
        ],
        alerts=[{"type": "webhook", "url": hook.url}],
    )
    spawn("beta", "--crash-after", "0.3").ready()
    watcher.wait_verdict("beta", "failed", timeout=40)
    events = watcher.events("beta")
    starts = [e.ts for e in events if e.to_state == "restarting" and e.from_state != "restarting"]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each gap is the back-off delay plus the service's short life (start-up + 0.3 s).
    for gap, delay in zip(gaps, (0.4, 0.8, 1.6), strict=True):
        assert gap >= delay, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    backoffs = [e for e in events if e.to_state == "backoff"]
    assert len(backoffs) == 3
    verdict = watcher.verdicts("beta")[-1]
    assert verdict.state == "failed"
    assert verdict.extra is not None
    assert "4 restarts within 120 s" in verdict.extra["why"]
    failed = hook.wait_kind("failed", timeout=10)
    assert failed["service"] == "beta"
    time.sleep(1.0)  # a second failed alert, if any, would arrive within this
    kinds = [a["kind"] for a in hook.received]
    assert kinds.count("failed") == 1
    assert kinds.count("down") == 1


def test_hanging_action_is_killed_at_its_timeout(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """An action that never returns is killed at `timeout` and counts as a failed attempt."""
    action = {
        "type": "exec",
        "argv": [sys.executable, "-c", "import time; time.sleep(60)"],
        "timeout": 0.5,
    }
    monitors.start(monitor={"settle": 0}, services=[{"name": "gamma", "action": action}])
    svc = spawn("gamma").ready()
    watcher.wait_verdict("gamma", "online")
    mark = watcher.mark()
    svc.signal(signal.SIGKILL)
    watcher.wait_verdict("gamma", "backoff", timeout=5, start=mark)
    [result] = [e for e in watcher.events("gamma", mark) if e.reason == "action"]
    assert result.extra is not None
    assert result.extra["action"]["ok"] is False
    assert result.extra["action"]["detail"] == "timed out after 0.5 s; killed"
    assert 400 <= result.extra["action"]["duration_ms"] < 5000


def test_broker_restart_causes_no_restart_actions(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, tmp_path: Path
) -> None:
    """Broker SIGTERM restart (persistence on): every Will fires, nobody is restarted."""
    canary = tmp_path / "restarted"
    names = ["alpha", "beta", "gamma", "delta", "web"]
    touch = {"type": "exec", "argv": ["touch", str(canary)], "timeout": 5}
    monitors.start(monitor={"settle": 3.0}, services=[{"name": n, "action": touch} for n in names])
    agents = [Agent(n, broker.settings(n)).start() for n in names]
    try:
        for name in names:
            watcher.wait_verdict(name, "online")
        before = {agent.name: agent.session for agent in agents}
        watcher.close()
        broker.restart()
        restarted = time.monotonic()
        back = Watcher(broker)
        try:
            for agent in agents:
                # Online again, with the session of the agent's reconnection.
                back.wait_verdict(
                    agent.name,
                    "online",
                    timeout=10,
                    where=lambda v, a=agent: v.session == a.session != before[a.name],
                )
            took = time.monotonic() - restarted
            print(f"all {len(names)} back online {took:.2f} s after the broker restart")
            assert took < 3.0
            time.sleep(4.0)  # past the settle period: a restart would have started by now
            assert not canary.exists()
            events = back.events()
            assert not [e for e in events if e.to_state == "restarting" or e.reason == "action"]
        finally:
            back.close()
    finally:
        for agent in agents:
            agent.stop()


def test_reset_recovers_a_failed_service(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pidfile: Path,
) -> None:
    """The action fails until fixed; the budget runs out (failed); `presence reset` recovers."""
    fixed = tmp_path / "fixed"
    monitors.start(
        monitor={"settle": 0},
        services=[
            {
                "name": "delta",
                "action": launch(broker, "delta", pidfile, require=fixed),
                "restart": {"max_restarts": 1},
            }
        ],
    )
    svc = spawn("delta").ready()
    watcher.wait_verdict("delta", "online")
    svc.signal(signal.SIGKILL)
    verdict, _ = watcher.wait_verdict("delta", "failed", timeout=10)
    assert verdict.restarts == 1
    fixed.touch()  # the operator fixes the cause...
    mark = watcher.mark()
    admin = str(config(tmp_path, broker, "admin"))
    result = presence("reset", "delta", "-c", admin)  # ...and resets
    assert result.returncode == 0, result.stderr
    assert "reset delta" in result.stdout
    verdict, _ = watcher.wait_verdict("delta", "online", timeout=15, start=mark)
    assert verdict.restarts == 2
    states = [e.to_state for e in watcher.events("delta", mark) if e.reason != "action"]
    assert states[0] == "restarting"


def test_pause_suppresses_restarts_and_resume_restarts(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pidfile: Path,
) -> None:
    """Maintenance: a paused service that dies is not restarted until resume."""
    monitors.start(
        monitor={"settle": 0},
        services=[{"name": "web", "action": launch(broker, "web", pidfile)}],
    )
    cfg = str(config(tmp_path, broker, "admin"))
    svc = spawn("web").ready()
    watcher.wait_verdict("web", "online")
    assert presence("pause", "web", "-c", cfg).returncode == 0
    mark = watcher.mark()
    svc.signal(signal.SIGKILL)
    verdict, _ = watcher.wait_verdict("web", "offline", timeout=3, start=mark)
    assert verdict.extra is not None
    assert verdict.extra["paused"] is True
    time.sleep(1.0)  # five ping rounds: a restart would have begun at once
    assert [v.state for v in watcher.verdicts("web", mark)] == ["offline"]
    assert presence("resume", "web", "-c", cfg).returncode == 0
    verdict, _ = watcher.wait_verdict("web", "online", timeout=15, start=mark)
    assert verdict.restarts == 1


def test_manual_restart_through_the_cli(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
    pidfile: Path,
) -> None:
    """`presence restart NAME` runs the action on a healthy service; a new session follows."""
    monitors.start(
        monitor={"settle": 0},
        services=[{"name": "alpha", "action": launch(broker, "alpha", pidfile, kill_old=True)}],
    )
    svc = spawn("alpha", "--pidfile", str(pidfile)).ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    result = presence("restart", "alpha", "-c", str(config(tmp_path, broker, "admin")))
    assert result.returncode == 0, result.stderr
    verdict, _ = watcher.wait_verdict(
        "alpha", "online", timeout=15, start=mark, where=lambda v: v.session != svc.session
    )
    assert verdict.restarts == 1
    assert svc.wait() == -signal.SIGKILL


def test_operator_commands_are_refused_when_unknown_replayed_or_from_the_dashboard(
    tmp_path: Path, broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """Unknown service: refused with a reason. The read-only user cannot send commands."""
    monitors.start()
    admin = str(config(tmp_path, broker, "admin"))
    unknown = presence("reset", "nobody", "-c", admin)
    assert unknown.returncode == 1
    assert "unknown service 'nobody'" in unknown.stderr
    dashboard = presence("reset", "alpha", "-c", str(config(tmp_path, broker, "dashboard")))
    assert dashboard.returncode == 3
    assert "admin or monitor user" in dashboard.stderr
