"""Test helpers: a dashboard-side watcher, real service processes, fast monitor settings."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from presence.broker import PrivateBroker
from presence.errors import PayloadError
from presence.monitor import Monitor
from presence.mqtt import Connection, Inbox, Message, cli_client_id
from presence.protocol import (
    Event,
    Status,
    Topics,
    Verdict,
    parse_event,
    parse_status,
    parse_verdict,
)
from presence.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TOPICS = Topics("presence")

#: Ping every 0.2 s, pong within 0.2 s, two misses: hung within 0.6 s of a freeze.
FAST: dict[str, Any] = {
    "ping_interval": 0.2,
    "pong_timeout": 0.2,
    "missed_pongs": 2,
    "startup_grace": 3.0,
}


def kill_listed(pidfile: Path) -> None:
    """Kill (waking first, if frozen) every process whose pid a relaunch appended to `pidfile`."""
    if not pidfile.exists():
        return
    for pid in pidfile.read_text().split():
        try:
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def hang_bound(monitor: dict[str, Any] = FAST) -> float:
    """The theoretical worst case from freeze to `hung`."""
    return monitor["ping_interval"] * monitor["missed_pongs"] + monitor["pong_timeout"]


def monitor_settings(broker: PrivateBroker, **overrides: Any) -> Settings:
    """Settings for a monitor on `broker` with the FAST timings (overridable)."""
    monitor = {**FAST, **overrides.pop("monitor", {})}
    return Settings(broker=broker.settings("monitor"), monitor=monitor, **overrides)


def _verdict_or_none(message: Message) -> Verdict | None:
    try:
        return parse_verdict(message.payload)
    except PayloadError:
        return None


class Watcher:
    """A dashboard-user client that records everything under the prefix."""

    def __init__(self, broker: PrivateBroker, user: str = "dashboard", topic: str = "presence/#"):
        self.inbox = Inbox()
        self.conn = Connection(
            broker.settings(user), client_id=cli_client_id("watch"), handler=self.inbox
        )
        self.conn.connect()
        assert self.conn.subscribe(topic, 1)

    def close(self) -> None:
        self.conn.close()

    def mark(self) -> int:
        return len(self.inbox.snapshot())

    def wait(self, predicate: Callable[[Message], bool], timeout: float, start: int = 0) -> Message:
        message = self.inbox.wait_for(predicate, timeout, start)
        assert message is not None, f"nothing matched within {timeout} s"
        return message

    def wait_verdict(
        self,
        name: str,
        state: str,
        timeout: float = 5.0,
        start: int = 0,
        reason: str | None = None,
        where: Callable[[Verdict], bool] | None = None,
    ) -> tuple[Verdict, Message]:
        topic = TOPICS.verdict(name)

        def match(m: Message) -> bool:
            if m.topic != topic:
                return False
            v = _verdict_or_none(m)
            return (
                v is not None
                and v.state == state
                and (reason is None or v.reason == reason)
                and (where is None or where(v))
            )

        message = self.inbox.wait_for(match, timeout, start)
        if message is None:
            seen = [(v.state, v.reason) for v in self.verdicts(name)]
            raise AssertionError(f"{name} never became {state}/{reason} in {timeout} s: {seen}")
        return parse_verdict(message.payload), message

    def verdicts(self, name: str, start: int = 0) -> list[Verdict]:
        """The parseable verdicts published for `name` (tests publish junk there too)."""
        topic = TOPICS.verdict(name)
        found = (_verdict_or_none(m) for m in self.inbox.snapshot()[start:] if m.topic == topic)
        return [v for v in found if v is not None]

    def events(self, name: str | None = None, start: int = 0) -> list[Event]:
        out = []
        for m in self.inbox.snapshot()[start:]:
            if m.topic == TOPICS.events:
                event = parse_event(m.payload)
                if name is None or event.service == name:
                    out.append(event)
        return out

    def statuses(self, name: str, start: int = 0) -> list[Status]:
        topic = TOPICS.status(name)
        out = []
        for m in self.inbox.snapshot()[start:]:
            if m.topic == topic and m.payload:
                try:
                    out.append(parse_status(m.payload))
                except PayloadError:
                    continue
        return out

    def wait_monitor_online(self, timeout: float = 5.0, start: int = 0) -> None:
        def match(m: Message) -> bool:
            return m.topic == TOPICS.monitor_status and b'"online"' in m.payload

        self.wait(match, timeout, start)


class ServiceProcess:
    """tests/programs/service.py running as a real child process."""

    def __init__(
        self,
        broker: PrivateBroker,
        name: str,
        *args: str,
        user: str | None = None,
        port: int | None = None,
    ):
        self.name = name
        cmd = [
            sys.executable,
            "-m",
            "tests.programs.service",
            "--name",
            name,
            "--port",
            str(port or broker.port),
            f"--password={broker.users[user or name]}",
            *args,
        ]
        if user is not None:
            cmd += ["--user", user]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no line starting {prefix!r} in {timeout} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line
            if line == "EOF":
                raise AssertionError(f"{self.name} exited ({self.proc.wait()}) before {prefix!r}")

    def ready(self, timeout: float = 10.0) -> ServiceProcess:
        self.session = self.expect("READY", timeout).split()[1]
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> float:
        """Send a signal; return the monotonic time it was sent."""
        sent = time.monotonic()
        os.kill(self.proc.pid, sig)
        return sent

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Monitors:
    """Starts in-process monitors and stops them all at teardown."""

    def __init__(self, broker: PrivateBroker, watcher: Watcher):
        self.broker = broker
        self.watcher = watcher
        self.running: list[Monitor] = []

    def start(self, wait_online: bool = True, **overrides: Any) -> Monitor:
        mark = self.watcher.mark()
        monitor = Monitor(monitor_settings(self.broker, **overrides)).start()
        self.running.append(monitor)
        if wait_online:
            self.watcher.wait_monitor_online(start=mark)
        return monitor

    def stop_all(self) -> None:
        for monitor in self.running:
            monitor.stop()
        self.running.clear()


class MosquittoSub:
    """`mosquitto_sub -d` as a given user: a plain C client, for forgery and device tests."""

    def __init__(self, broker: PrivateBroker, user: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                "stdbuf",  # line-buffered, or the debug lines sit in stdio's buffer
                "-oL",
                "mosquitto_sub",
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.port),
                "-u",
                user,
                "-P",
                broker.users[user],
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("received SUBACK")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("")

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """Wait for an output line containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"mosquitto_sub printed no {text!r} in {timeout} s") from None
            self.output.append(line)
            if text in line:
                return line
            if line == "":
                raise AssertionError(f"mosquitto_sub exited with {self.proc.wait()}")

    def stop(self) -> list[str]:
        """Kill it and return everything it printed."""
        self.proc.kill()
        self.proc.wait()
        while True:
            line = self._lines.get(timeout=5)
            if line == "":
                return self.output
            self.output.append(line)
