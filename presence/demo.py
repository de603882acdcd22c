"""`presence demo`: a private broker, the monitor and three programs under `presence run`.

One command for a newcomer: Mosquitto with generated users and ACL on a free loopback port
(everything in a temporary directory), the monitor, and three copies of a small HTTP service,
each under `presence run`: `healthy` just runs, `crashy` is killed (-9) every ~20 s, `freezy`
is frozen (SIGSTOP) now and then. The monitor restarts them through their runners (the `agent`
action). `presence watch` shows it live until Ctrl-C or --duration; then everything is cleaned
up and a summary printed.
"""

from __future__ import annotations

import contextlib
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

from presence.broker import PrivateBroker, free_port
from presence.monitor import Monitor
from presence.mqtt import Connection, Disconnect, Message, cli_client_id
from presence.protocol import Topics, parse_event, parse_status
from presence.settings import (
    AgentAction,
    BrokerSettings,
    MonitorSettings,
    RestartSettings,
    ServiceSettings,
    Settings,
)
from presence.watch import run_watch

__all__ = ["run_demo"]

SERVICES: Final = ("healthy", "crashy", "freezy")


@dataclass
class _Tally:
    """What the demo saw, fed by the event stream and the fault injector."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    crashes: int = 0
    hangs: int = 0
    restarts: int = 0
    detect: dict[str, list[float]] = field(default_factory=lambda: {"crash": [], "hang": []})
    injected: dict[str, float] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


class _Feed:
    """Counts crashes, hangs and restarts from the monitor's events; learns each child's pid."""

    def __init__(self, tally: _Tally, topics: Topics) -> None:
        self.tally = tally
        self.topics = topics

    def on_connected(self, session_present: bool) -> None:
        """Nothing to do."""

    def on_disconnected(self, info: Disconnect) -> None:
        """Nothing to do."""

    def on_message(self, message: Message) -> None:
        """Events and the services' births (which carry the child's pid)."""
        tally = self.tally
        if message.topic != self.topics.events:
            status = parse_status(message.payload)
            name = message.topic.split("/")[-2]
            if status.state == "online" and status.incarnation and status.pid:
                with tally.lock:
                    tally.pids[name] = status.pid
            return
        event = parse_event(message.payload)
        kind = {"offline": "crash", "hung": "hang", "unhealthy": "hang"}.get(event.to_state)
        with tally.lock:
            if event.to_state == "restarting" and event.from_state != "restarting":
                tally.restarts += 1
            if kind is None:
                return
            if kind == "crash":
                tally.crashes += 1
            else:
                tally.hangs += 1
            started = tally.injected.pop(event.service, None)
            if started is not None:
                tally.detect[kind].append(time.monotonic() - started)


def _runner(tmp: Path, broker: PrivateBroker, name: str, port: int) -> subprocess.Popen[bytes]:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f'[broker]\nport = {broker.port}\nusername = "{name}"\npassword = "{broker.users[name]}"\n'
        'reconnect_max = 1\n[log]\nlevel = "WARNING"\n'
    )
    argv = [sys.executable, "-m", "presence", "run", "-c", str(cfg), "--name", name]
    argv += ["--probe-http", f"http://127.0.0.1:{port}/health", "--probe-grace", "3"]
    argv += ["--kill-timeout", "2", "--", sys.executable, "-m", "presence.demo_app", str(port)]
    return subprocess.Popen(  # noqa: S603 (our own interpreter and module, no shell)
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _chaos(tally: _Tally, stop: threading.Event) -> None:
    """Kill crashy's program every ~20 s, freeze freezy's now and then (first ones early)."""
    rng = random.Random()  # noqa: S311 (demo fault timing, not secrets)
    now = time.monotonic()
    next_crash, next_freeze = now + rng.uniform(6, 9), now + rng.uniform(3, 5)
    while not stop.wait(0.1):
        now = time.monotonic()
        for name, due in (("crashy", next_crash), ("freezy", next_freeze)):
            if now < due:
                continue
            with tally.lock:
                pid = tally.pids.pop(name, None)
                if pid is not None:
                    tally.injected[name] = now
            if pid is None:
                continue  # not up yet (a slow start, a restart under way): try again shortly
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if name == "crashy" else signal.SIGSTOP)
            if name == "crashy":
                next_crash = now + rng.uniform(17, 23)
            else:
                next_freeze = now + rng.uniform(15, 25)


def run_demo(duration: float | None, console: Console | None = None) -> int:
    """Run the demo; returns a process exit code. Raises MosquittoMissing without mosquitto."""
    console = console or Console()
    tally = _Tally()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    with tempfile.TemporaryDirectory(prefix="presence-demo-") as tmp_dir:
        tmp = Path(tmp_dir)
        broker = PrivateBroker(tmp / "broker", services=SERVICES).start()
        topics = Topics()
        monitor = Monitor(
            Settings(
                broker=broker.settings("monitor"),
                monitor=MonitorSettings(ping_interval=0.5, pong_timeout=0.5, settle=0.0),
                restart=RestartSettings(initial_delay=2.0, max_delay=10.0),
                services=[
                    ServiceSettings(name=n, action=AgentAction(type="agent")) for n in SERVICES
                ],
            )
        ).start()
        feed = Connection(
            broker.settings("dashboard"),
            client_id=cli_client_id("demo"),
            handler=_Feed(tally, topics),
            subscriptions=[(topics.events, 1), *((topics.status(n), 1) for n in SERVICES)],
        )
        feed.connect()
        runners = [_runner(tmp, broker, name, free_port()) for name in SERVICES]
        stop = threading.Event()
        chaos = threading.Thread(target=_chaos, args=(tally, stop), daemon=True)
        chaos.start()
        if duration is not None:
            threading.Timer(duration, stop.set).start()
        console.print(
            f"[bold]presence demo[/]: mosquitto on 127.0.0.1:{broker.port}, users and ACL in "
            f"{tmp}; three HTTP services under `presence run`: healthy, crashy (killed every "
            "~20 s), freezy (frozen now and then). Ctrl-C to stop.\n"
        )
        try:
            watch = Settings(broker=BrokerSettings(**broker.settings("dashboard").model_dump()))
            run_watch(watch, once=False, console=console, stop=stop)
        finally:
            stop.set()
            feed.close()
            for proc in runners:
                proc.terminate()
            for proc in runners:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            monitor.stop()
            broker.stop()
    _summary(console, tally)
    return 0


def _summary(console: Console, tally: _Tally) -> None:
    console.print()
    table = Table(title="demo summary", box=None)
    table.add_column("what")
    table.add_column("count / time", justify="right")
    table.add_row("crashes seen", str(tally.crashes))
    table.add_row("hangs seen", str(tally.hangs))
    table.add_row("restarts", str(tally.restarts))
    for kind in ("crash", "hang"):
        samples = tally.detect[kind]
        median = f"{statistics.median(samples) * 1000:.0f} ms" if samples else "-"
        table.add_row(f"median {kind} detection time", median)
    console.print(table)
