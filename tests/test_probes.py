"""Probes of `presence run`, against real local sockets and commands."""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from presence.broker import free_port
from presence.probes import ExecProbe, HttpProbe, Prober, TcpProbe, check, parse_probe


def test_parse_probe_options() -> None:
    """One probe at most, each spelled the documented way; argv split without a shell."""
    assert parse_probe("http://127.0.0.1:3000/health", None, None) == HttpProbe(
        "http://127.0.0.1:3000/health"
    )
    assert parse_probe(None, "127.0.0.1:5432", None) == TcpProbe("127.0.0.1", 5432)
    assert parse_probe(None, "[::1]:80", None) == TcpProbe("::1", 80)
    assert parse_probe(None, None, "pg_isready -h 'my host'") == ExecProbe(
        ("pg_isready", "-h", "my host")
    )
    assert parse_probe(None, None, None) is None


@pytest.mark.parametrize(
    ("http", "tcp", "command", "message"),
    [
        ("ftp://x", None, None, "http:// or https://"),
        (None, "nohost", None, "HOST:PORT"),
        (None, "h:99999", None, "HOST:PORT"),
        (None, None, "   ", "needs a command"),
        ("http://a", "b:1", None, "at most one"),
    ],
)
def test_bad_probe_options_are_explained(
    http: str | None, tcp: str | None, command: str | None, message: str
) -> None:
    """Mistakes fail before anything starts, saying what is expected."""
    with pytest.raises(ValueError, match=message):
        parse_probe(http, tcp, command)


def test_tcp_probe() -> None:
    """Connect succeeds while something listens; fails once it is gone."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    assert check(TcpProbe("127.0.0.1", port), 1.0)[0]
    server.close()
    ok, detail = check(TcpProbe("127.0.0.1", port), 1.0)
    assert not ok
    assert "refused" in detail["error"].lower()


def test_exec_probe() -> None:
    """Exit 0 is healthy; anything else is not."""
    assert check(ExecProbe((sys.executable, "-c", "pass")), 5.0)[0]
    ok, detail = check(ExecProbe((sys.executable, "-c", "raise SystemExit(2)")), 5.0)
    assert not ok
    assert detail["result"] == "exit 2"


class _Slow(BaseHTTPRequestHandler):
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(type(self).delay)
        body = b'{"load": 0.5}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_http_probe_body_and_timeout() -> None:
    """A 2xx with a JSON body is healthy and carries the body; a slow answer times out."""
    handler = type("H", (_Slow,), {"delay": 0.0})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        ok, detail = check(HttpProbe(url), 2.0)
        assert ok
        assert detail["body"] == {"load": 0.5}
        handler.delay = 1.0
        ok, detail = check(HttpProbe(url), 0.2)
        assert not ok
        assert "Timeout" in detail["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_prober_fails_within_its_timeout_when_the_service_stops_answering() -> None:
    """A stuck probe counts as failed after `timeout`, not at the next interval."""
    stuck = ExecProbe((sys.executable, "-c", "import time; time.sleep(3)"))
    prober = Prober(stuck, interval=10.0, timeout=0.3).start()
    try:
        started = time.monotonic()
        while prober.result() == (True, {"probe": "pending"}) or prober.result()[0]:
            assert time.monotonic() - started < 1.5
            time.sleep(0.02)
        assert prober.result()[1]["probe"] in ("overdue", "exec")
    finally:
        prober.stop()


def test_grace_after_a_start_hides_failures_while_the_program_comes_up() -> None:
    """Failing probes during `grace` after a start mean 'starting', not unhealthy."""
    prober = Prober(TcpProbe("127.0.0.1", free_port()), interval=0.05, timeout=0.2, grace=5.0)
    prober.restart_grace()
    prober.start()
    try:
        time.sleep(0.3)
        assert prober.result() == (True, {"probe": "starting"})
        prober.grace = 0.0
        prober.restart_grace()
        deadline = time.monotonic() + 2
        while prober.result()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        prober.stop()
