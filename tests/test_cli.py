"""The command line, run as real processes: monitor, status, ping, and their exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from presence.agent import Agent
from presence.broker import PrivateBroker, free_port
from tests.helpers import FAST, ROOT, TOPICS, Monitors, Watcher


def config(tmp_path: Path, broker: PrivateBroker, user: str, port: int | None = None) -> Path:
    """A config file for `user` on `broker`, with the fast test timings."""
    path = tmp_path / f"{user}.toml"
    monitor = "\n".join(f"{k} = {v}" for k, v in FAST.items())
    path.write_text(
        f"""
[broker]
host = "127.0.0.1"
port = {port or broker.port}
username = "{user}"
password = "{broker.users[user]}"
connect_timeout = 2.0
[monitor]
{monitor}
"""
    )
    return path


def presence(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `python -m presence ARGS` and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PRESENCE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "presence", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_status_json_and_table_with_the_read_only_dashboard_user(
    tmp_path: Path, broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """status lists every verdict; the dashboard user is enough; exit 0 while the monitor runs."""
    monitors.start()
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        cfg = config(tmp_path, broker, "dashboard")
        result = presence("status", "-c", str(cfg), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["monitor"]["state"] == "online"
        [alpha] = doc["services"]
        assert (alpha["service"], alpha["state"]) == ("alpha", "online")
        assert set(alpha) >= {
            "service",
            "state",
            "since",
            "session",
            "reason",
            "missed",
            "rtt_ms",
            "restarts",
        }
        table = presence("status", "-c", str(cfg))
        assert table.returncode == 0, table.stderr
        assert "monitor: online" in table.stdout
        assert "alpha" in table.stdout
        assert "online" in table.stdout


def test_status_exits_non_zero_when_no_monitor_is_online(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    """No monitor status retained: exit 1 with a message that says so."""
    result = presence("status", "-c", str(config(tmp_path, broker, "dashboard")))
    assert result.returncode == 1
    assert "never seen" in result.stdout


def test_ping_prints_round_trip_times_and_fails_when_nobody_answers(
    tmp_path: Path, broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """ping NAME: one line per pong with time=; exit 1 when no pong arrives.

    It uses the running monitor's own config file without disturbing that monitor.
    """
    monitor = monitors.start()
    cfg = config(tmp_path, broker, "monitor")
    with Agent("alpha", broker.settings("alpha")) as agent:
        watcher.wait_verdict("alpha", "online")
        result = presence("ping", "alpha", "-c", str(cfg), "--count", "2", "--interval", "0.1")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("pong from")]
        assert len(lines) == 2
        assert all("time=" in line and f"session={agent.session}" in line for line in lines)
    silent = presence("ping", "nobody", "-c", str(cfg), "--count", "1", "--timeout", "0.3")
    assert silent.returncode == 1
    assert "no pong from nobody" in silent.stdout
    assert monitor.exit_error is None  # the CLI used its own client id


def test_monitor_command_runs_until_sigterm_then_says_goodbye(
    tmp_path: Path, broker: PrivateBroker, watcher: Watcher
) -> None:
    """`presence monitor` publishes its birth, and on SIGTERM a graceful offline; exit 0."""
    cfg = config(tmp_path, broker, "monitor")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRESENCE_CONFIG": str(cfg)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "presence", "monitor", "--log-json"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        watcher.wait_monitor_online(timeout=10)
        mark = watcher.mark()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        watcher.wait(
            lambda m: m.topic == TOPICS.monitor_status and b'"shutdown"' in m.payload, 3, mark
        )
        # --log-json: every log line is one JSON object.
        records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
        assert any("monitor up" in r["text"] for r in records)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    """Invalid configuration fails at start-up with the field and the reason."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[monitor]\nping_interval = 0\n")
    result = presence("monitor", "-c", str(bad))
    assert result.returncode == 2
    assert "monitor.ping_interval" in result.stderr
    assert "greater than 0" in result.stderr


def test_unreachable_broker_exits_3_with_the_address(tmp_path: Path, broker: PrivateBroker) -> None:
    """Nothing listens on the port: a clear message and exit code 3, quickly."""
    port = free_port()
    result = presence("status", "-c", str(config(tmp_path, broker, "dashboard", port=port)))
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr


def test_wrong_password_exits_3_saying_so(tmp_path: Path, broker: PrivateBroker) -> None:
    """Refused credentials are named as such."""
    cfg = config(tmp_path, broker, "dashboard")
    cfg.write_text(cfg.read_text().replace(broker.users["dashboard"], "wrong"))
    result = presence("status", "-c", str(cfg))
    assert result.returncode == 3
    assert "check username and password" in result.stderr


def test_help_lists_the_commands() -> None:
    """`python -m presence --help` works and names the commands."""
    result = presence("--help")
    assert result.returncode == 0
    for command in ("monitor", "status", "ping"):
        assert command in result.stdout
