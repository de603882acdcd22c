"""The monitor watches itself: a dead paho thread means exit; systemd's watchdog is fed only
by rounds that came back."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from presence.broker import PrivateBroker
from presence.selfcheck import SelfCheck
from tests.helpers import FAST, ROOT, Watcher
from tests.test_cli import config


def test_selfcheck_rules() -> None:
    """Dead thread: at once; lost subscription: after `rounds`; silence: after `silent_limit`."""
    check = SelfCheck(rounds=3, silent_limit=10.0)
    assert check.closed(echoed=True, orphaned=True, network_alive=False, now=0) is not None
    check = SelfCheck(rounds=3, silent_limit=10.0)
    assert check.closed(echoed=False, orphaned=True, network_alive=True, now=1) is None
    assert check.closed(echoed=False, orphaned=True, network_alive=True, now=2) is None
    assert "lost subscription" in (
        check.closed(echoed=False, orphaned=True, network_alive=True, now=3) or ""
    )
    check = SelfCheck(rounds=3, silent_limit=10.0)
    for now in range(10):
        assert check.closed(echoed=False, orphaned=False, network_alive=True, now=now) is None
    assert "nothing at all" in (
        check.closed(echoed=False, orphaned=False, network_alive=True, now=10) or ""
    )
    check = SelfCheck(rounds=3, silent_limit=10.0)
    check.closed(echoed=False, orphaned=True, network_alive=True, now=1)
    check.closed(echoed=False, orphaned=True, network_alive=True, now=2)
    assert check.closed(echoed=True, orphaned=True, network_alive=True, now=3) is None  # recovered
    assert check.closed(echoed=False, orphaned=True, network_alive=True, now=4) is None
    assert (
        SelfCheck(rounds=0).closed(echoed=False, orphaned=True, network_alive=True, now=9) is None
    )


def test_dead_network_thread_makes_the_monitor_exit_within_three_rounds(
    tmp_path: Path, broker: PrivateBroker, watcher: Watcher
) -> None:
    """paho's thread killed inside a running monitor (test hook): exit 5 within 3 rounds,
    with systemd told READY=1 and WATCHDOG=1 only while rounds came back."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(10)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify_path}
    env.pop("PRESENCE_CONFIG", None)
    cfg = config(tmp_path, broker, "monitor")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "presence",
            "monitor",
            "-c",
            str(cfg),
            "--sd-notify",
            "--inject-fault",
            "network-thread",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        # The fault strikes right after the first round came back; from then on, no WATCHDOG.
        broken = time.monotonic()
        assert proc.wait(10) == 5
        took = time.monotonic() - broken
        assert took <= 3 * FAST["ping_interval"] + FAST["pong_timeout"] + 1.0, took
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert "self-check failed: the MQTT network thread died" in stderr
        messages = []
        notify.setblocking(False)
        while True:
            try:
                messages.append(notify.recv(4096))
            except BlockingIOError:
                break
        # The round that preceded the fault, and at most the rounds sent before it (their echo
        # may have been read already): never one sent after it. How many were open depends on
        # the machine's load; the monitor says.
        found = re.search(r"breaking the MQTT network thread \((\d+) rounds open\)", stderr)
        assert found is not None, stderr
        assert 1 <= messages.count(b"WATCHDOG=1") <= 1 + int(found.group(1))
        assert messages[-1] == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        notify.close()
