"""`presence demo`: a private broker, the monitor and three misbehaving services, one command.

Everything lives in a temporary directory and on a free loopback port; Ctrl-C (or --duration)
cleans it all up and prints what was seen.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from loguru import logger
from rich.console import Console
from rich.table import Table

from presence.broker import PrivateBroker
from presence.monitor import Monitor
from presence.mqtt import Connection, Disconnect, Message, cli_client_id
from presence.protocol import Topics, parse_event
from presence.settings import MonitorSettings, ServiceSettings, Settings

__all__ = ["run_demo"]

SERVICES: Final = ("healthy", "crashy", "freezy")
_STYLE: Final = {"online": "green", "offline": "bold red", "hung": "red", "suspect": "yellow"}
# A tiny service embedding the agent; its main loop beats, so a freeze stops the pongs.
_SERVICE_CODE: Final = """
import sys, time
from loguru import logger
from presence.agent import Agent
from presence.settings import BrokerSettings
logger.remove()
logger.add(sys.stderr, level="WARNING")
name, port, password = sys.argv[1:4]
broker = BrokerSettings(port=int(port), username=name, password=password, reconnect_max=1)
agent = Agent(name, broker, beat_timeout=1.0).start()
print("ready", flush=True)
while True:
    agent.beat()
    time.sleep(0.1)
"""


@dataclass
class _Tally:
    crashes: int = 0
    hangs: int = 0
    relaunches: int = 0
    detect: dict[str, list[float]] = field(default_factory=lambda: {"offline": [], "hung": []})
    pending: dict[str, float] = field(default_factory=dict)


class _Feed:
    """Prints the monitor's events as they arrive and measures detection latency."""

    def __init__(self, console: Console, tally: _Tally, topics: Topics) -> None:
        self.console = console
        self.tally = tally
        self.topics = topics
        self.lock = threading.Lock()
        self.muted = False

    def fault(self, service: str, expect: str) -> None:
        """Note when a fault was injected, to time its detection."""
        with self.lock:
            self.tally.pending[f"{service}:{expect}"] = time.monotonic()

    def on_connected(self, session_present: bool) -> None:
        """Nothing to do."""

    def on_disconnected(self, info: Disconnect) -> None:
        """Nothing to do."""

    def on_message(self, message: Message) -> None:
        """One line per state change."""
        event = parse_event(message.payload)
        took = ""
        with self.lock:
            if self.muted:
                return
            started = self.tally.pending.pop(f"{event.service}:{event.to_state}", None)
            if started is not None:
                latency = time.monotonic() - started
                self.tally.detect[event.to_state].append(latency)
                took = f"  [dim](detected {latency * 1000:.0f} ms after the fault)[/]"
        style = _STYLE.get(event.to_state, "cyan")
        self.console.print(
            f"{time.strftime('%H:%M:%S')}  {event.service:<8} {event.from_state:>8} -> "
            f"[{style}]{event.to_state}[/] ({event.reason}){took}"
        )


def _spawn(broker: PrivateBroker, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 (our own interpreter and code, no shell)
        [sys.executable, "-c", _SERVICE_CODE, name, str(broker.port), broker.users[name]],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    if proc.stdout is not None:
        proc.stdout.readline()  # "ready": the agent is online
    return proc


class _Chaos:
    """Injects the faults: kill -9 crashy every ~20 s (relaunching it), freeze freezy."""

    def __init__(self, broker: PrivateBroker, feed: _Feed, tally: _Tally) -> None:
        self.broker = broker
        self.feed = feed
        self.tally = tally
        self.rng = random.Random()  # noqa: S311 (demo fault timing, not secrets)
        self.procs = {name: _spawn(broker, name) for name in SERVICES}
        now = time.monotonic()
        self.next_crash = now + self.rng.uniform(8, 12)
        self.next_freeze = now + self.rng.uniform(5, 8)
        self.relaunch_at: float | None = None
        self.frozen_until: float | None = None

    def tick(self, now: float) -> None:
        """Inject or undo whatever is due."""
        if now >= self.next_crash:
            self.tally.crashes += 1
            self.feed.fault("crashy", "offline")
            self.procs["crashy"].kill()
            self.procs["crashy"].wait()
            self.next_crash = now + self.rng.uniform(15, 25)
            self.relaunch_at = now + 3.0
        if self.relaunch_at is not None and now >= self.relaunch_at:
            self.procs["crashy"] = _spawn(self.broker, "crashy")
            self.tally.relaunches += 1
            self.relaunch_at = None
        if self.frozen_until is None and now >= self.next_freeze:
            self.tally.hangs += 1
            self.feed.fault("freezy", "hung")
            os.kill(self.procs["freezy"].pid, signal.SIGSTOP)
            self.frozen_until = now + self.rng.uniform(4, 6)
        elif self.frozen_until is not None and now >= self.frozen_until:
            os.kill(self.procs["freezy"].pid, signal.SIGCONT)
            self.frozen_until = None
            self.next_freeze = now + self.rng.uniform(12, 20)

    def close(self) -> None:
        """Kill every service process."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def run_demo(duration: float | None, console: Console | None = None) -> int:
    """Run the demo; returns a process exit code."""
    console = console or Console()
    tally = _Tally()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="presence-demo-") as tmp:
        broker = PrivateBroker(Path(tmp) / "broker", services=SERVICES).start()
        topics = Topics()
        settings = Settings(
            broker=broker.settings("monitor"),
            monitor=MonitorSettings(ping_interval=0.5, pong_timeout=0.5, missed_pongs=2),
            services=[ServiceSettings(name=n) for n in SERVICES],
        )
        console.print(
            f"[bold]presence demo[/]: mosquitto on 127.0.0.1:{broker.port} (users and ACL in "
            f"{tmp}), monitor pinging every 0.5 s; hung = 2 missed pongs.\n"
            "  healthy: just runs.  crashy: killed (-9) every ~20 s, relaunched 3 s later.  "
            "freezy: frozen (SIGSTOP) now and then.\nCtrl-C to stop.\n"
        )
        feed = _Feed(console, tally, topics)
        watch = Connection(
            broker.settings("dashboard"),
            client_id=cli_client_id("demo"),
            handler=feed,
            subscriptions=[(topics.events, 1)],
        )
        watch.connect()
        monitor = Monitor(settings).start()
        chaos = _Chaos(broker, feed, tally)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.wait(0.1):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                chaos.tick(now)
        finally:
            with feed.lock:
                feed.muted = True  # the clean-up kills everything; that is not news
            watch.close()
            chaos.close()
            monitor.stop()
            broker.stop()
    _summary(console, tally)
    return 0


def _summary(console: Console, tally: _Tally) -> None:
    table = Table(title="demo summary", box=None)
    table.add_column("what")
    table.add_column("count / time", justify="right")
    table.add_row("crashes injected (kill -9)", str(tally.crashes))
    table.add_row("hangs injected (SIGSTOP)", str(tally.hangs))
    table.add_row("relaunches", str(tally.relaunches))
    for state, label in (("offline", "crash"), ("hung", "hang")):
        samples = tally.detect[state]
        if samples:
            median = statistics.median(samples) * 1000
            table.add_row(f"median {label} detection time", f"{median:.0f} ms")
    console.print(table)
