"""4. Capacity: one monitor tracking thousands of services; the raw paho and C floors beside it.

Services are simulated by swarm processes (`benchmarks/_swarm.py`) that answer for many names
each. One monitor process grows through the sizes at `ping_interval = 1 s`; at each size, after
it has settled (every service `online` with a round trip, no event for 2 s), a steady window
measures lost pongs, false verdicts, CPU, RSS and the pong round trip. Then the monitor is
frozen (SIGSTOP) and the raw paho floor (`benchmarks/_floor.py`) runs the same ping rounds
against the same swarm on the `floor/` prefix; CPU seconds per pong of the two give the
throughput ratio. The largest size is run again at 2 s on a fresh broker. Separately, the Will
path with real connections: thousands of real MQTT clients (each with its own Will) in one
process, SIGKILLed at once.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    Config,
    LineProcess,
    MonitorProcess,
    MosquittoSubFeed,
    Observer,
    Section,
    Summary,
    Swarm,
    Target,
    bench_env,
    cpu_seconds,
    fmt,
    log,
    raise_fd_limit,
    rss_kb,
    start_broker,
    swarm_names,
    table,
    wait_monitor_online,
)
from presence.broker import PrivateBroker

FLOOR_ACL = ["topic readwrite floor/#"]
_STALLED = 30.0  # settling gives up when the online count has not grown for this long
_SAMPLES_PER_SWARM = 50


@dataclass
class Window:
    """One steady window of the monitor at one size."""

    size: int
    interval: float
    settled: bool = False
    settle_seconds: float = 0.0
    seconds: float = 0.0
    rounds: int = 0
    pongs_sent: int = 0
    misses: int = 0  # transitions to suspect/hung for a missing pong
    false_verdicts: int = 0  # transitions away from online
    void_rounds: int = 0
    cpu: float = 0.0
    broker_cpu: float = 0.0
    swarm_cpu: float = 0.0
    rss_kb: int = 0
    rtt: list[float] = field(default_factory=list)
    floor: FloorRun | None = None
    #: Why the monitor process exited (and was restarted) during this size, from its log.
    exits: list[str] = field(default_factory=list)
    #: Not run: the monitor did not hold this smaller size (see `Config.all_sizes`).
    skipped_after: int | None = None

    @property
    def held(self) -> bool:
        """Settled, and never exited."""
        return self.settled and not self.exits

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.seconds if self.seconds else math.nan

    @property
    def cpu_per_pong(self) -> float:
        return self.cpu / self.pongs_sent if self.pongs_sent else math.nan


@dataclass
class FloorRun:
    """The raw paho floor at one size."""

    seconds: float = 0.0
    rounds: int = 0
    pongs: int = 0
    answered: int = 0
    cpu: float = 0.0
    rtt: list[float] = field(default_factory=list)

    size: int = 0

    @property
    def lost(self) -> int:
        return max(0, self.rounds * self.size - self.answered)

    @property
    def cpu_per_pong(self) -> float:
        return self.cpu / self.pongs if self.pongs else math.nan


@dataclass
class WillPath:
    """Real connections killed at once."""

    limit: int = 0
    wanted: int = 0
    connected: int = 0
    connect_seconds: float = 0.0
    wills: int = 0
    offline: int = 0
    last_will: float = math.nan
    last_offline: float = math.nan
    median_offline: float = math.nan
    monitor_cpu: float = 0.0


# ----------------------------------------------------------------------------------------------


def run(cfg: Config) -> Section:
    """All of capacity: C throughput, the 1 s growth with floors, the 2 s run, the Will path."""
    raise_fd_limit()
    workdir = cfg.workdir / "capacity"
    windows: list[Window] = []
    c_rate: tuple[int, int, float] | None = None
    broker = start_broker(workdir / "broker-1s", monitor_topics=FLOOR_ACL)
    try:
        c_rate = c_throughput(broker, cfg.c_messages, workdir)
        log(f"capacity: C clients {c_rate[1]}/{c_rate[0]} messages at {c_rate[2]:,.0f} msg/s")
        windows += _grow(cfg, broker, workdir / "monitor-1s", cfg.capacity_sizes, 1.0, floors=True)
    finally:
        broker.kill()
    broker = start_broker(workdir / "broker-2s", monitor_topics=FLOOR_ACL)
    try:
        windows += _grow(
            cfg, broker, workdir / "monitor-2s", (cfg.capacity_slow,), 2.0, floors=False
        )
    finally:
        broker.kill()
    will = will_path(cfg, workdir / "will")
    return _report(cfg, windows, c_rate, will)


class Supervised:
    """The monitor process, restarted when it exits, as its supervisor (systemd) would."""

    def __init__(
        self, broker: PrivateBroker, directory: Path, interval: float, observer: Observer
    ) -> None:
        self._broker = broker
        self._directory = directory
        self._interval = interval
        self._observer = observer
        self.starts = 0
        self.current = self._start()

    def _start(self) -> MonitorProcess:
        self.starts += 1
        monitor = MonitorProcess(
            self._broker,
            self._directory / f"run-{self.starts}",
            monitor={"ping_interval": self._interval},
        )
        self._observer.wait_monitor(monitor.pid)
        return monitor

    def restart_if_gone(self) -> str | None:
        """If the monitor exited: why (and a fresh one is running); else None."""
        if self.current.alive:
            return None
        why = self.current.exit_reason()
        self.current.stop()
        log(f"capacity: the monitor exited ({why}); restarting it")
        self.current = self._start()
        return why

    def stop(self) -> None:
        self.current.stop()


def _grow(
    cfg: Config,
    broker: PrivateBroker,
    directory: Path,
    sizes: tuple[int, ...],
    interval: float,
    *,
    floors: bool,
) -> list[Window]:
    observer = Observer(broker)
    monitor = Supervised(broker, directory, interval, observer)
    swarms: list[Swarm] = []
    out: list[Window] = []
    try:
        total = 0
        for size in sizes:
            swarm = Swarm(broker, total, size - total).ready()
            swarms.append(swarm)
            step = max(1, swarm.count // _SAMPLES_PER_SWARM)
            observer.sample(swarm_names(total, swarm.count)[::step])
            total = size
            window = Window(size, interval)
            out.append(window)
            _settle(window, observer, monitor, swarm_names(0, total))
            _steady(cfg, window, observer, monitor, broker.pid, swarms)
            log(
                f"capacity: {total} services at {interval:g} s: monitor {window.cpu_percent:.0f} % "
                f"CPU, {window.misses} misses, {window.false_verdicts} false verdicts, "
                f"{len(window.exits)} exits"
            )
            if floors:
                window.floor = _floor(cfg, broker, observer, monitor.current, total)
                log(f"capacity: floor at {total}: {window.floor.cpu_per_pong * 1e6:.1f} us/pong")
            if not window.held and not cfg.all_sizes:
                for rest in sizes[sizes.index(size) + 1 :]:
                    out.append(Window(rest, interval, skipped_after=size))
                log(f"capacity: the monitor did not hold {size} services; skipping larger sizes")
                break
    finally:
        monitor.stop()
        for swarm in swarms:
            swarm.stop()
        observer.close()
    return out


def _settle(window: Window, observer: Observer, monitor: Supervised, names: list[str]) -> None:
    """Wait until the monitor has every service online; give up when that stops progressing."""
    started = time.monotonic()
    deadline = started + min(45.0, 30 + len(names) / 400)
    best, best_at = -1, started
    while time.monotonic() < deadline:
        why = monitor.restart_if_gone()
        if why is not None:
            window.exits.append(why)
        if observer.wait_settled(names, 1.0, alive=lambda: monitor.current.alive):
            window.settled = True
            break
        online = observer.online(names)
        if online > best:
            best, best_at = online, time.monotonic()
        elif time.monotonic() - best_at > _STALLED:
            break
    window.settle_seconds = time.monotonic() - started
    if not window.settled:
        log(
            f"capacity: {len(names)} services at {window.interval:g} s did not settle in "
            f"{window.settle_seconds:.0f} s ({observer.online(names)} online)"
        )


def _steady(
    cfg: Config,
    window: Window,
    observer: Observer,
    monitor: Supervised,
    broker_pid: int,
    swarms: list[Swarm],
) -> None:
    events_mark = len(observer.events)
    logs = [(monitor.current, monitor.current.log_size())]
    broker_cpu = cpu_seconds(broker_pid)
    swarm_cpu = sum(cpu_seconds(s.process.pid) for s in swarms)
    observer.rtt["presence"].clear()
    observer.recording = True
    start = time.time()
    t0 = time.monotonic()
    pid, last = monitor.current.pid, cpu_seconds(monitor.current.pid)
    cpu, rss = 0.0, 0
    end = t0 + cfg.capacity_window
    # Sampled every second: a monitor that exits in the window is restarted and its
    # successor's CPU counted from its start.
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        with contextlib.suppress(OSError):
            now = cpu_seconds(pid)
            cpu += now - last
            last = now
            rss = max(rss, rss_kb(pid))
        why = monitor.restart_if_gone()
        if why is not None:
            window.exits.append(why)
            logs.append((monitor.current, 0))
            pid, last = monitor.current.pid, 0.0
    window.seconds = time.monotonic() - t0
    observer.recording = False
    finish = time.time()
    window.cpu = cpu
    window.broker_cpu = cpu_seconds(broker_pid) - broker_cpu
    window.swarm_cpu = sum(cpu_seconds(s.process.pid) for s in swarms) - swarm_cpu
    window.rss_kb = rss
    window.rtt = list(observer.rtt["presence"])
    # Pongs for the pings received within the window (a round's pongs follow its ping at once).
    window.pongs_sent = sum(s.pongs("presence", start, finish) for s in swarms)
    window.rounds = len(
        {
            seq
            for s in swarms
            for prefix, seq, _count, received, _took in list(s.rounds)
            if prefix == "presence" and start <= received < finish
        }
    )
    events = [e for _, e in observer.events[events_mark:]]
    window.misses = sum(
        1
        for e in events
        if e.get("to") in ("suspect", "hung") and e.get("reason") in ("missed_pong", "missed_pongs")
    )
    window.false_verdicts = sum(1 for e in events if e.get("to") != "online")
    window.void_rounds = sum(m.count_in_log("did not come back", mark) for m, mark in logs)


def _floor(
    cfg: Config, broker: PrivateBroker, observer: Observer, monitor: MonitorProcess, size: int
) -> FloorRun:
    """Freeze the monitor; run the raw paho floor against the same swarm; thaw the monitor."""
    run = FloorRun(size=size)
    answered: list[int] = []

    def line(text: str) -> None:
        if text.startswith("ROUND "):
            answered.append(int(text.split()[2]))

    monitor.signal_stop()
    try:
        observer.rtt["floor"].clear()
        observer.recording = True
        argv = [PYTHON, "-m", "benchmarks._floor", "--port", str(broker.port)]
        argv += ["--duration", str(cfg.floor_window)]
        proc = LineProcess(argv, bench_env(broker.users["monitor"]), on_line=line)
        done = proc.expect("DONE", cfg.floor_window + 30).split()
        proc.proc.wait(10)
        observer.recording = False
        run.pongs, run.rounds = int(done[1]), int(done[2])
        run.cpu, run.seconds = float(done[3]), float(done[4])
        run.answered = sum(answered)
        run.rtt = list(observer.rtt["floor"])
    finally:
        monitor.signal_cont()
    return run


# ----------------------------------------------------------------------------------------------
# the C clients


def c_throughput(broker: PrivateBroker, count: int, workdir: Path) -> tuple[int, int, float]:
    """`mosquitto_pub -l` bursts `count` small QoS 0 messages to a `mosquitto_sub`.

    Returns (sent, received, messages per second at the subscriber)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "c-sub.txt"
    auth = [
        "-h",
        "127.0.0.1",
        "-p",
        str(broker.port),
        "-u",
        "monitor",
        "-P",
        broker.users["monitor"],
    ]
    with out.open("w") as handle:
        sub = subprocess.Popen(
            ["mosquitto_sub", *auth, "-t", "floor/c/+", "-F", "%U %t"],
            stdout=handle,
            stderr=subprocess.DEVNULL,
        )
    try:
        # Readiness: publish to floor/c/ready until the subscriber has it.
        deadline = time.monotonic() + 10
        while "floor/c/ready" not in out.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError("mosquitto_sub did not subscribe")
            subprocess.run(
                ["mosquitto_pub", *auth, "-t", "floor/c/ready", "-m", "x"],
                check=True,
            )
            time.sleep(0.1)
        line = b'{"seq":1795440856012,"session":"9f2c0a1b3d4e5f60","ok":true}\n'
        subprocess.run(
            ["mosquitto_pub", *auth, "-t", "floor/c/burst", "-l", "-q", "0"],
            input=line * count,
            check=True,
        )
        # Wait until the subscriber stops receiving.
        last, stable = -1, 0
        while stable < 5:
            time.sleep(0.2)
            size = out.stat().st_size
            stable = stable + 1 if size == last else 0
            last = size
    finally:
        sub.kill()
        sub.wait()
    stamps = [
        float(x.split()[0]) for x in out.read_text().splitlines() if x.endswith("floor/c/burst")
    ]
    if len(stamps) < 2:
        return count, len(stamps), math.nan
    return count, len(stamps), (len(stamps) - 1) / (stamps[-1] - stamps[0])


# ----------------------------------------------------------------------------------------------
# the Will path with real connections


def will_path(cfg: Config, workdir: Path) -> WillPath:
    """M real clients in one process (epoll), SIGKILLed: count the Wills and `offline` verdicts."""
    result = WillPath(wanted=cfg.will_clients)
    broker = start_broker(workdir / "broker")
    feed = MosquittoSubFeed(
        broker, ["presence/+/status", "presence/_monitor/services/+"], user="monitor"
    )
    # No ping round during the test: the Will path alone.
    monitor = MonitorProcess(broker, workdir / "monitor", monitor={"ping_interval": 600.0})
    try:
        wait_monitor_online(feed, monitor.pid)
        argv = [PYTHON, "-m", "benchmarks._manyclients", "--port", str(broker.port)]
        argv += ["--count", str(cfg.will_clients)]
        fleet = LineProcess(argv, bench_env(broker.users["monitor"]))
        result.limit = int(fleet.expect("LIMIT", 30).split()[1])
        ready = fleet.expect("READY", 180).split()
        result.connected, result.connect_seconds = int(ready[1]), float(ready[2])
        log(f"capacity: {result.connected} real connections in {result.connect_seconds:.1f} s")
        # Every birth seen by the monitor (online verdicts), then quiet.
        deadline = time.monotonic() + 60 + result.connected / 100
        while time.monotonic() < deadline:
            online = {s.topic for s in feed.seen if _will_verdict(s, "online")}
            if len(online) >= result.connected:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        mark = feed.mark()
        cpu0 = cpu_seconds(monitor.pid)
        killed = time.time()
        fleet.signal(signal.SIGKILL)
        wait_until = time.monotonic() + 60
        wills: dict[str, float] = {}
        offline: dict[str, float] = {}
        while time.monotonic() < wait_until:
            for s in feed.since(mark):
                if _will_status(s):
                    wills.setdefault(s.topic, s.t)
                elif _will_verdict(s, "offline"):
                    offline.setdefault(s.topic, s.t)
            if len(offline) >= result.connected and len(wills) >= result.connected:
                break
            time.sleep(0.5)
        fleet.proc.wait()
        result.monitor_cpu = cpu_seconds(monitor.pid) - cpu0
        result.wills, result.offline = len(wills), len(offline)
        if wills:
            result.last_will = max(wills.values()) - killed
        if offline:
            result.last_offline = max(offline.values()) - killed
            result.median_offline = Summary.of([t - killed for t in offline.values()]).median
        log(
            f"capacity: kill of {result.connected}: {result.wills} Wills, "
            f"{result.offline} offline verdicts"
        )
    finally:
        monitor.stop()
        feed.close()
        broker.kill()
    return result


def _will_verdict(seen: object, state: str) -> bool:
    topic = getattr(seen, "topic", "")
    data = getattr(seen, "data", None)
    return (
        topic.startswith("presence/_monitor/services/bench-will-")
        and data is not None
        and data.get("state") == state
    )


def _will_status(seen: object) -> bool:
    topic = getattr(seen, "topic", "")
    data = getattr(seen, "data", None)
    return (
        topic.startswith("presence/bench-will-")
        and topic.endswith("/status")
        and data is not None
        and data.get("state") == "offline"
    )


# ----------------------------------------------------------------------------------------------
# the report


def _report(
    cfg: Config,
    windows: list[Window],
    c_rate: tuple[int, int, float] | None,
    will: WillPath,
) -> Section:
    section = Section("4. Capacity")
    rows = []
    for w in windows:
        if w.skipped_after is not None:
            rows.append(
                [
                    f"{w.size:,}",
                    f"{w.interval:g} s",
                    f"skipped: the monitor did not hold {w.skipped_after:,}",
                    *["-"] * 9,
                ]
            )
            continue
        rtt = Summary.of(w.rtt)
        rows.append(
            [
                f"{w.size:,}",
                f"{w.interval:g} s",
                _settled(w),
                f"{w.rounds}",
                f"{w.pongs_sent:,}",
                f"{w.misses:,}",
                f"{w.false_verdicts:,}",
                f"{w.void_rounds}",
                _pct(w.cpu, w.seconds),
                f"{w.rss_kb / 1024:,.0f}",
                f"{fmt(rtt.median * 1000)} / {fmt(rtt.p99 * 1000)}",
                f"{_pct(w.broker_cpu, w.seconds)} / {_pct(w.swarm_cpu, w.seconds)}",
            ]
        )
    section.lines += table(
        [
            "services",
            "ping interval",
            "settled",
            "rounds",
            "pongs sent",
            "pongs lost",
            "false verdicts",
            "void rounds",
            "monitor CPU (one core = 100 %)",
            "monitor RSS (MiB)",
            "pong RTT p50 / p99 (ms)",
            "broker / swarm CPU",
        ],
        rows,
    )
    grown = [
        w for w in windows if w.interval == 1.0 and w.held and not w.false_verdicts and w.rss_kb
    ]
    if len(grown) >= 2:
        first, last = grown[0], grown[-1]
        slope = (last.rss_kb - first.rss_kb) * 1024 / (last.size - first.size)
        section.lines += [
            "",
            f"Monitor RSS growth from {first.size:,} to {last.size:,} tracked services: "
            f"**{slope / 1024:.2f} KiB per service**.",
        ]
    for w in windows:
        for why in dict.fromkeys(w.exits):
            section.lines += [
                "",
                f"**The monitor exited at {w.size:,} services ({w.interval:g} s)** and was "
                f"restarted ({w.exits.count(why)}x): {why}",
            ]
    section.lines += [
        "",
        f"Steady windows of {cfg.capacity_window:g} s after the monitor settled (every service "
        "`online` with a round trip, no event for 2 s); `pong_timeout = 1 s`, "
        "`missed_pongs = 2`. *pongs lost*: verdict changes to `suspect`/`hung` for a missing "
        "pong in the window (each is at least one pong the monitor did not count); *false "
        "verdicts*: every transition away from `online` (all services were alive); *void "
        "rounds*: rounds whose own ping did not come back to the monitor (logged). RTT: ping → "
        "pong at a raw paho observer subscribed to the ping and to ~50 sampled services per "
        "swarm process.",
        "",
    ]
    floor_rows = []
    for w in windows:
        f = w.floor
        if f is None:
            continue
        ratio = f.cpu_per_pong / w.cpu_per_pong if w.pongs_sent else math.nan
        rtt = Summary.of(f.rtt)
        floor_rows.append(
            [
                f"{w.size:,}",
                f"{w.cpu_per_pong * 1e6:.1f}",
                f"{f.cpu_per_pong * 1e6:.1f}",
                f"**{ratio:.2f}**",
                f"{100 * f.cpu / f.seconds:.0f} %" if f.seconds else "-",
                f"{f.lost:,} of {f.rounds * w.size:,}",
                f"{fmt(rtt.median * 1000)} / {fmt(rtt.p99 * 1000)}",
            ]
        )
    if floor_rows:
        section.lines += table(
            [
                "services",
                "monitor CPU µs / pong",
                "raw paho floor CPU µs / pong",
                "throughput ratio (floor / monitor cost)",
                "floor CPU",
                "floor: pongs lost",
                "floor: pong RTT p50 / p99 (ms)",
            ],
            floor_rows,
        )
        section.lines += [
            "",
            f"The floor (`benchmarks/_floor.py`) runs {cfg.floor_window:g} s at each size while "
            "the monitor is frozen (SIGSTOP), against the same swarm, on the `floor/` prefix: "
            "one paho client, `json.loads` per pong, seq matched to the open round, the name "
            "recorded.",
            "",
        ]
    if c_rate is not None:
        sent, got, rate = c_rate
        section.lines += [
            f"C clients on the same broker: `mosquitto_pub -l` → `mosquitto_sub`, {sent:,} "
            f"QoS 0 messages of 62 bytes: **{rate:,.0f} msg/s** at the subscriber "
            f"({got:,} received).",
            "",
        ]
    section.lines += [
        "**Will path with real connections** (one process, paho's external-loop API on an "
        "epoll selector; `RLIMIT_NOFILE` raised to the hard limit):",
        "",
        *table(
            [
                "fd limit",
                "clients wanted / connected",
                "connect time (s)",
                "Wills received",
                "`offline` verdicts",
                "last Will (s after kill)",
                "median / last verdict (s after kill)",
                "monitor CPU for the burst (s)",
            ],
            [
                [
                    f"{will.limit:,}",
                    f"{will.wanted:,} / {will.connected:,}",
                    f"{will.connect_seconds:.1f}",
                    f"{will.wills:,}",
                    f"{will.offline:,}",
                    fmt(will.last_will, 3),
                    f"{fmt(will.median_offline, 3)} / {fmt(will.last_offline, 3)}",
                    fmt(will.monitor_cpu, 2),
                ]
            ],
        ),
        "",
    ]
    section.targets += _targets(windows)
    return section


def _pct(cpu: float, wall: float) -> str:
    return f"{100 * cpu / wall:.0f} %" if wall > 0 else "-"


def _settled(w: Window) -> str:
    text = "yes" if w.settled else f"**no** ({w.settle_seconds:.0f} s)"
    if w.exits:
        text += f"; **the monitor exited {len(w.exits)}x** (restarted)"
    return text


def _targets(windows: list[Window]) -> list[Target]:
    out = []
    for size, interval in ((10_000, 1.0), (20_000, 2.0)):
        found = [w for w in windows if w.size == size and w.interval == interval]
        if not found:
            out.append(
                Target(
                    f"capacity: {size:,} services at {interval:g} s",
                    "0 lost pongs, 0 false verdicts in 60 s, monitor < 1 core",
                    "not measured in this run",
                    None,
                )
            )
            continue
        w = found[0]
        if w.skipped_after is not None:
            smaller = next(
                x for x in windows if x.size == w.skipped_after and x.interval == interval
            )
            out.append(
                Target(
                    f"capacity: {size:,} services at {interval:g} s",
                    "0 lost pongs, 0 false verdicts in 60 s, monitor < 1 core",
                    f"not run: the monitor did not hold {w.skipped_after:,}",
                    False,
                    f"at {smaller.size:,}: {smaller.false_verdicts:,} false verdicts, "
                    f"{_pct(smaller.cpu, smaller.seconds)} CPU, "
                    f"exited {len(smaller.exits)}x"
                    + ("" if smaller.settled else ", never settled"),
                )
            )
            continue
        ok = (
            w.settled
            and not w.exits
            and w.misses == 0
            and w.false_verdicts == 0
            and w.cpu_percent < 100
        )
        note = f"{w.cpu_per_pong * 1e6:.0f} µs of monitor CPU per pong"
        if w.floor is not None:
            note += f" (raw paho floor: {w.floor.cpu_per_pong * 1e6:.0f} µs)"
        out.append(
            Target(
                f"capacity: {size:,} services at {interval:g} s",
                "0 lost pongs, 0 false verdicts in 60 s, monitor < 1 core",
                f"{w.misses:,} lost, {w.false_verdicts:,} false, {w.cpu_percent:.0f} % CPU"
                + ("" if w.settled else ", never settled")
                + (f", monitor exited {len(w.exits)}x" if w.exits else ""),
                ok,
                note,
            )
        )
    # Compared where the monitor keeps up (no exits, no false verdicts): past that, its cost
    # per pong is its overload's, not its steady state's.
    measured = [w for w in windows if w.floor is not None and w.pongs_sent]
    steady = [w for w in measured if w.held and w.false_verdicts == 0]
    ref = steady or measured[:1]
    if ref:
        w = ref[-1]
        assert w.floor is not None
        ratio = w.floor.cpu_per_pong / w.cpu_per_pong if w.pongs_sent else math.nan
        out.append(
            Target(
                "capacity: monitor throughput vs the raw paho floor (same run)",
                "≥ 0.7 x the floor",
                f"{ratio:.2f} x at {w.size:,} services"
                + ("" if steady else " (the monitor did not keep up at any size)"),
                ratio >= 0.7,
                f"monitor {w.cpu_per_pong * 1e6:.0f} µs vs floor "
                f"{w.floor.cpu_per_pong * 1e6:.0f} µs of CPU per pong",
            )
        )
    return out
