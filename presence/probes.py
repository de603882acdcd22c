"""Health probes for `presence run`: HTTP, TCP or a command, each in its own thread.

A probe runs every `interval` with a `timeout`; the runner's pongs report its latest result.
A probe that has been running longer than its timeout counts as failed at once, so a frozen
child behind an HTTP probe turns `ok:false` after about `timeout`, not at the next interval.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from presence.actions import run_argv

__all__ = ["ExecProbe", "HttpProbe", "Probe", "ProbeResult", "Prober", "TcpProbe", "parse_probe"]

_DETAIL_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class HttpProbe:
    """GET `url`; ok on a 2xx within the timeout. A JSON body becomes the pong's detail."""

    url: str


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """Connect to host:port. (Proves the port accepts connections, which the kernel does for a
    stopped process too: the runner also checks the child's process state.)"""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ExecProbe:
    """Run argv (no shell); ok on exit 0. Killed with its process group at the timeout."""

    argv: tuple[str, ...]


Probe = HttpProbe | TcpProbe | ExecProbe


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome."""

    ok: bool
    detail: dict[str, Any]
    finished: float  # monotonic


def parse_probe(http: str | None, tcp: str | None, command: str | None) -> Probe | None:
    """Build the probe from the CLI options (at most one); raise ValueError with the reason."""
    given = [p for p in (http, tcp, command) if p]
    if len(given) > 1:
        raise ValueError("give at most one of --probe-http, --probe-tcp, --probe-exec")
    if http:
        if not http.startswith(("http://", "https://")):
            raise ValueError(f"--probe-http needs an http:// or https:// URL, not {http!r}")
        return HttpProbe(http)
    if tcp:
        host, sep, port = tcp.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--probe-tcp needs HOST:PORT, not {tcp!r}")
        return TcpProbe(host.strip("[]"), int(port))
    if command:
        argv = tuple(shlex.split(command))
        if not argv:
            raise ValueError("--probe-exec needs a command")
        return ExecProbe(argv)
    return None


def check(probe: Probe, timeout: float) -> tuple[bool, dict[str, Any]]:
    """Run one probe now; (ok, detail)."""
    if isinstance(probe, HttpProbe):
        try:
            response = httpx.get(probe.url, timeout=timeout)
        except httpx.HTTPError as exc:
            return False, {"probe": "http", "error": f"{type(exc).__name__}: {exc}"[:300]}
        detail: dict[str, Any] = {"probe": "http", "status": response.status_code}
        body = response.content[:_DETAIL_LIMIT]
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            detail["body"] = data
        return 200 <= response.status_code < 300, detail
    if isinstance(probe, TcpProbe):
        try:
            with socket.create_connection((probe.host, probe.port), timeout=timeout):
                return True, {"probe": "tcp"}
        except OSError as exc:
            return False, {"probe": "tcp", "error": str(exc)[:300]}
    outcome = run_argv(list(probe.argv), timeout)
    return outcome.ok, {"probe": "exec", "result": outcome.detail, "output": outcome.output[-500:]}


class Prober:
    """Runs a probe every `interval` in a daemon thread and keeps the latest result."""

    def __init__(self, probe: Probe, interval: float, timeout: float, grace: float = 0.0) -> None:
        self.probe = probe
        self.interval = interval
        self.timeout = timeout
        self.grace = grace
        self._grace_until = 0.0
        self._lock = threading.Lock()
        self._result: ProbeResult | None = None
        self._running_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence-probe", daemon=True)

    def start(self) -> Prober:
        """Begin probing."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                self._running_since = started
            ok, detail = check(self.probe, self.timeout)
            with self._lock:
                self._running_since = None
                self._result = ProbeResult(ok, detail, time.monotonic())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def restart_grace(self) -> None:
        """A new child started: failures during `grace` seconds only mean it is starting up."""
        with self._lock:
            self._grace_until = time.monotonic() + self.grace
            self._result = None

    def result(self) -> tuple[bool, dict[str, Any]]:
        """The verdict right now: the last result, unless a probe is overdue (then failed)."""
        now = time.monotonic()
        with self._lock:
            result, running = self._result, self._running_since
            starting = now < self._grace_until
        if starting and (result is None or not result.ok):
            return True, {"probe": "starting"}
        if running is not None and now - running > self.timeout:
            return False, {"probe": "overdue", "error": f"probe running for {now - running:.1f} s"}
        if result is None:
            return True, {"probe": "pending"}  # not probed yet: the child only just started
        return result.ok, result.detail

    def stop(self) -> None:
        """Stop probing (the thread ends after its current probe)."""
        self._stop.set()
