"""Shared helpers: brokers, monitor and helper processes, observers, /proc readings, statistics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

from presence.broker import PrivateBroker

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_T0 = time.monotonic()


# ----------------------------------------------------------------------------------------------
# progress and configuration


def log(message: str) -> None:
    """Progress on stderr, with the time since the benchmark started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    """What a run measures, and how much of it."""

    quick: bool
    repeat: int
    workdir: Path
    #: Capacity: service counts at 1 s, the steady window, the floor's window.
    capacity_sizes: tuple[int, ...] = (1000, 5000, 10000, 20000)
    capacity_window: float = 60.0
    capacity_slow: int = 20000  # the size run again at ping_interval = 2 s
    floor_window: float = 6.0
    will_clients: int = 5000
    c_messages: int = 200_000
    footprint_window: float = 20.0
    footprint_services: tuple[int, int] = (100, 1000)
    #: Capacity: go on to larger sizes even after the monitor failed to hold a smaller one.
    all_sizes: bool = False

    @classmethod
    def full(cls, workdir: Path, repeat: int | None, *, all_sizes: bool = False) -> Config:
        return cls(quick=False, repeat=repeat or 20, workdir=workdir, all_sizes=all_sizes)

    @classmethod
    def smoke(cls, workdir: Path, repeat: int | None, *, all_sizes: bool = False) -> Config:
        return cls(
            quick=True,
            repeat=repeat or 5,
            workdir=workdir,
            all_sizes=all_sizes,
            capacity_sizes=(500, 1500),
            capacity_window=6.0,
            capacity_slow=1500,
            floor_window=4.0,
            will_clients=500,
            c_messages=20_000,
            footprint_window=5.0,
            footprint_services=(100, 1000),
        )


# ----------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass(frozen=True)
class Summary:
    """n, median, p99, min, max of a sample."""

    n: int
    median: float
    p99: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        values = [v for v in values if not math.isnan(v)]  # a sample that was not measured
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values),
            statistics.median(values),
            percentile(values, 99),
            min(values),
            max(values),
        )


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table; '-' for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def stat_row(
    label: str, values: Sequence[float], scale: float = 1000.0, digits: int = 1
) -> list[str]:
    """A table row: label, n, median, p99, min, max (values in seconds, shown x scale)."""
    s = Summary.of(values)
    return [
        label,
        str(s.n),
        fmt(s.median * scale, digits),
        fmt(s.p99 * scale, digits),
        fmt(s.low * scale, digits),
        fmt(s.high * scale, digits),
    ]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


# ----------------------------------------------------------------------------------------------
# the report model


@dataclass
class Target:
    """One target of issue 6 and where we stand."""

    what: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run
    note: str = ""


@dataclass
class Section:
    """One measurement's part of the report."""

    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# the machine


def _first(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> list[tuple[str, str]]:
    """What the numbers were measured on."""
    import paho.mqtt  # noqa: PLC0415 (only for its version)

    cpu = _first("/proc/cpuinfo", "model name") or platform.processor() or "?"
    mhz = _first("/proc/cpuinfo", "cpu MHz")
    mem_kb = _first("/proc/meminfo", "MemTotal")
    mem = f"{int(mem_kb.split()[0]) / 1024 / 1024:.1f} GiB" if mem_kb else "?"
    nproc = _version(["nproc"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPU", f"{cpu}" + (f" ({float(mhz):.0f} MHz)" if mhz else "")),
        ("cores (nproc / os.cpu_count)", f"{nproc} / {os.cpu_count()}"),
        ("memory", mem),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("paho-mqtt", paho.mqtt.__version__),
        ("mosquitto", _version(["mosquitto", "-h"])),
        (
            "RLIMIT_NOFILE (soft / hard)",
            "{} / {}".format(*resource.getrlimit(resource.RLIMIT_NOFILE)),
        ),
        ("load average at start (1/5/15 min)", load),
    ]


def raise_fd_limit() -> int:
    """Raise our RLIMIT_NOFILE to the hard limit (children, mosquitto included, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU used by a process between `start()` and `stop()`, as seconds and % of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu0 = 0.0
        self._wall0 = 0.0
        self.cpu = 0.0
        self.wall = 0.0

    def start(self) -> CpuMeter:
        self._cpu0 = cpu_seconds(self.pid)
        self._wall0 = time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.wall = time.monotonic() - self._wall0
        return self

    @property
    def percent(self) -> float:
        return 100.0 * self.cpu / self.wall if self.wall > 0 else math.nan


# ----------------------------------------------------------------------------------------------
# processes


class Children:
    """Every process the benchmark starts, so none outlives it (killed by pid, never by name)."""

    procs: ClassVar[list[subprocess.Popen[Any]]] = []
    pids: ClassVar[set[int]] = set()

    @classmethod
    def add(cls, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        cls.procs.append(proc)
        return proc

    @classmethod
    def add_pid(cls, pid: int) -> None:
        """A detached process (started by a restart action): we only know its pid."""
        cls.pids.add(pid)

    @classmethod
    def kill_all(cls) -> None:
        for proc in cls.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)
        cls.procs.clear()
        for pid in cls.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        cls.pids.clear()


def bench_env(password: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for our helper processes (repo on the path, password out of argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    if password is not None:
        env["BENCH_PASSWORD"] = password
    env.update(extra)
    return env


class LineProcess:
    """A helper process whose stdout lines are read by a thread into a queue."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        stderr: TextIO | int | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.proc = Children.add(
            subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr if stderr is not None else subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        )
        self.label = " ".join(argv[1:3])
        self.lines: queue.Queue[str] = queue.Queue()
        self._on_line = on_line
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if self._on_line is not None:
                self._on_line(line)
            self.lines.put(line)
        self.lines.put("\x00EOF")

    def expect(self, prefix: str, timeout: float) -> str:
        """The next line starting with `prefix` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.label}: no {prefix!r} line in {timeout} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line
            if line == "\x00EOF":
                raise RuntimeError(f"{self.label} exited ({self.proc.wait()})")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_broker(
    directory: Path, services: Iterable[str] = (), monitor_topics: Sequence[str] = ()
) -> PrivateBroker:
    """A private mosquitto with the shipped settings and ACL on a free loopback port."""
    broker = PrivateBroker(directory, services=services, monitor_topics=monitor_topics)
    return broker.start()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


class MonitorProcess:
    """`python -m presence monitor -c cfg.toml` as a child process (its own GIL, its own /proc)."""

    def __init__(
        self,
        broker: PrivateBroker,
        directory: Path,
        *,
        monitor: dict[str, Any] | None = None,
        restart: dict[str, Any] | None = None,
        services: list[dict[str, Any]] | None = None,
        log_level: str = "INFO",
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "monitor.toml"
        self.log_path = directory / "monitor.log"
        lines = [
            "[broker]",
            'host = "127.0.0.1"',
            f"port = {broker.port}",
            'username = "monitor"',
            "",
            "[log]",
            f'level = "{log_level}"',
            "",
            "[monitor]",
            *(f"{k} = {_toml(v)}" for k, v in (monitor or {}).items()),
            "",
            "[restart]",
            *(f"{k} = {_toml(v)}" for k, v in (restart or {}).items()),
        ]
        for service in services or []:
            lines += ["", "[[services]]", *(f"{k} = {_toml(v)}" for k, v in service.items())]
        self.config.write_text("\n".join(lines) + "\n")
        env = bench_env(PRESENCE_BROKER__PASSWORD=broker.users["monitor"])
        self._log = self.log_path.open("a")
        self.proc = Children.add(
            subprocess.Popen(
                [PYTHON, "-m", "presence", "monitor", "-c", str(self.config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
            )
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str:
        """The exit code and the last ERROR line of its log, once it has exited."""
        code = self.proc.poll()
        errors = [line for line in self.log_text().splitlines() if "ERROR" in line]
        last = errors[-1].split("ERROR", 1)[1].strip() if errors else "no ERROR line in its log"
        return f"exit code {code}: {last}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count_in_log(self, text: str, since: int = 0) -> int:
        """Lines containing `text` from byte offset `since` on."""
        with self.log_path.open("rb") as handle:
            handle.seek(since)
            return sum(1 for line in handle if text.encode() in line)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def signal_stop(self) -> None:
        """Freeze it (SIGSTOP): its connection stays, it does nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def signal_cont(self) -> None:
        """Thaw it after `signal_stop()`."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful offline), SIGKILL if it does not end."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------------------------
# observers


@dataclass(frozen=True, slots=True)
class Seen:
    """One message an observer received: unix time of receipt, topic, parsed JSON payload."""

    t: float
    topic: str
    data: dict[str, Any] | None


def _parse(payload: str | bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class Feed:
    """Messages seen by an observer, in order; thread-safe waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seen: list[Seen] = []

    def add(self, item: Seen) -> None:
        with self._cond:
            self.seen.append(item)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.seen)

    def wait_for(
        self, match: Callable[[Seen], bool], timeout: float, start: int = 0
    ) -> Seen | None:
        """The first message from index `start` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.seen):
                    item = self.seen[index]
                    index += 1
                    if match(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def since(self, start: int) -> list[Seen]:
        with self._cond:
            return self.seen[start:]


class MosquittoSubFeed(Feed):
    """`mosquitto_sub -F '%U %t %p'`: a plain C client stamping each message's receipt time.

    The same kind of client observes the floor (a Will on a status topic) and presence (the
    monitor's verdict), so the two are compared on equal terms.
    """

    def __init__(
        self, broker: PrivateBroker, topics: Sequence[str], user: str = "dashboard"
    ) -> None:
        super().__init__()
        argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", user]
        argv += ["-P", broker.users[user], "-q", "1", "-F", "%U %t %p"]
        for topic in topics:
            argv += ["-t", topic]
        if shutil.which("stdbuf"):
            argv = ["stdbuf", "-oL", *argv]
        self.proc = Children.add(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) < 2:
                continue
            payload = parts[2] if len(parts) == 3 else ""
            with contextlib.suppress(ValueError):
                self.add(Seen(float(parts[0]), parts[1], _parse(payload) if payload else None))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _is_state(
    topic: str, state: str, session: str | None, other: str | None
) -> Callable[[Seen], bool]:
    def match(item: Seen) -> bool:
        d = item.data
        return (
            item.topic == topic
            and d is not None
            and d.get("state") == state
            and (session is None or d.get("session") == session)
            and (other is None or d.get("session") != other)
        )

    return match


def is_verdict(
    name: str, state: str, session: str | None = None, other: str | None = None
) -> Callable[[Seen], bool]:
    """A matcher for `name`'s verdict in `state` (for session `session`, or not `other`)."""
    return _is_state(f"presence/_monitor/services/{name}", state, session, other)


def is_status(
    name: str, state: str, session: str | None = None, other: str | None = None
) -> Callable[[Seen], bool]:
    """A matcher for `name`'s status topic saying `state` (same session rules)."""
    return _is_state(f"presence/{name}/status", state, session, other)


def wait_monitor_online(feed: Feed, pid: int, timeout: float = 30.0) -> None:
    """Wait for the birth of the monitor with process id `pid`."""

    def match(item: Seen) -> bool:
        d = item.data
        return (
            item.topic == "presence/_monitor/status"
            and d is not None
            and d.get("state") == "online"
            and d.get("pid") == pid
        )

    if feed.wait_for(match, timeout) is None:
        raise TimeoutError(f"the monitor (pid {pid}) did not come online in {timeout} s")


def spawn_service(broker: PrivateBroker, name: str, *extra: str) -> LineProcess:
    """benchmarks/_service.py for `name` (its own MQTT user) as a child process."""
    argv = [PYTHON, "-m", "benchmarks._service", "--name", name, "--port", str(broker.port)]
    return LineProcess([*argv, *extra], bench_env(broker.users[name]))


def session_of(ready_line: str) -> str:
    """The session id from a `READY <session>` line."""
    return ready_line.split()[1]


class Observer:
    """A raw paho client (user `monitor`) that follows verdicts, events and ping rounds.

    Tracks the last verdict per service, records events, and times sampled pongs against the
    ping they answer (`rtt`), for the monitor's prefix and the floor's. Runs paho's own thread:
    one socket, so `select()`'s 1024-descriptor limit does not matter here.
    """

    def __init__(
        self, broker: PrivateBroker, prefixes: Sequence[str] = ("presence", "floor")
    ) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415 (raw paho, benchmark side only)
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self._lock = threading.Condition()
        self.verdicts: dict[str, tuple[str, bool]] = {}  # name -> (state, has rtt)
        self.verdict_count = 0
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.monitor_status: list[dict[str, Any]] = []
        self._pings: dict[tuple[str, int], float] = {}
        self.recording = False
        self.rtt: dict[str, list[float]] = {p: [] for p in prefixes}
        self._prefixes = tuple(prefixes)
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-observer-{os.getpid()}-{id(self)}",
        )
        client.username_pw_set("monitor", broker.users["monitor"])
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        self._client = client
        self._connected = threading.Event()
        client.connect("127.0.0.1", broker.port, keepalive=30)
        client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("observer: no CONNACK")

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        topics = [
            ("presence/_monitor/services/+", 1),  # QoS 0 may be dropped in a burst
            ("presence/_monitor/events", 1),
            ("presence/_monitor/status", 1),
            *((f"{p}/_monitor/ping", 0) for p in self._prefixes),
        ]
        client.subscribe(topics)
        self._connected.set()

    def sample(self, names: Iterable[str]) -> None:
        """Time the pongs of these services (in every prefix)."""
        topics = [(f"{p}/{n}/pong", 0) for n in names for p in self._prefixes]
        for i in range(0, len(topics), 100):
            self._client.subscribe(topics[i : i + 100])

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        topic: str = msg.topic
        prefix, _, rest = topic.partition("/")
        if rest.endswith("/pong") or rest == "_monitor/ping":
            data = _parse(msg.payload)
            if data is None:
                return
            key = (prefix, int(data.get("seq", -1)))
            if rest == "_monitor/ping":
                self._pings[key] = now
                if len(self._pings) > 1000:
                    self._pings.pop(next(iter(self._pings)))
            elif self.recording:
                sent = self._pings.get(key)
                if sent is not None:
                    self.rtt[prefix].append(now - sent)
            return
        data = _parse(msg.payload)
        if data is None:
            return
        with self._lock:
            if rest.startswith("_monitor/services/"):
                name = rest.rsplit("/", 1)[1]
                self.verdicts[name] = (str(data.get("state")), data.get("rtt_ms") is not None)
                self.verdict_count += 1
            elif rest == "_monitor/events":
                self.events.append((time.time(), data))
            elif rest == "_monitor/status":
                self.monitor_status.append(data)
            self._lock.notify_all()

    def wait_monitor(self, pid: int, timeout: float = 60.0) -> None:
        """Wait for the birth of the monitor process `pid`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not any(
                s.get("pid") == pid and s.get("state") == "online" for s in self.monitor_status
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the monitor (pid {pid}) did not come online")
                self._lock.wait(remaining)

    def online(self, names: Iterable[str]) -> int:
        """How many of `names` have an `online` verdict with a round trip."""
        with self._lock:
            return sum(1 for n in names if self.verdicts.get(n) == ("online", True))

    def wait_settled(
        self,
        names: Sequence[str],
        timeout: float,
        quiet: float = 2.0,
        alive: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait until every name is online (with an rtt) and no event came for `quiet` s
        (False after `timeout`, or as soon as `alive()` says the monitor is gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                return False
            with self._lock:
                last_event = self.events[-1][0] if self.events else 0.0
            if self.online(names) == len(names) and time.time() - last_event >= quiet:
                return True
            time.sleep(0.25)
        return False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def swarm_names(first: int, count: int) -> list[str]:
    """The names a swarm process answers for."""
    return [f"bench-{i}" for i in range(first, first + count)]


class Swarm:
    """benchmarks/_swarm.py: one connection answering for `count` names."""

    def __init__(self, broker: PrivateBroker, first: int, count: int) -> None:
        self.first = first
        self.count = count
        self.rounds: list[tuple[str, int, int, float, float]] = []
        argv = [PYTHON, "-m", "benchmarks._swarm", "--port", str(broker.port)]
        argv += ["--first", str(first), "--count", str(count)]
        self.process = LineProcess(argv, bench_env(broker.users["monitor"]), on_line=self._line)

    def _line(self, line: str) -> None:
        if line.startswith("PING "):
            _, prefix, seq, count, received, took = line.split()
            self.rounds.append((prefix, int(seq), int(count), float(received), float(took)))

    def ready(self, timeout: float = 60.0) -> Swarm:
        self.process.expect("READY", timeout)
        return self

    def pongs(self, prefix: str, start: float, end: float) -> int:
        """Pongs sent for pings of `prefix` received between unix times start and end."""
        return sum(c for p, _, c, t, _ in list(self.rounds) if p == prefix and start <= t < end)

    def stop(self) -> None:
        self.process.stop()
