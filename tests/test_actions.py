"""Restart actions as real processes and real HTTP: argv only, timeouts kill the whole group."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from presence.actions import build_argv, placeholders, run_argv, run_http
from presence.settings import DockerAction, ExecAction, HttpAction, Pm2Action, SystemdAction

VALUES = placeholders("web", "gw-1.lan", "hung")


def test_placeholders_are_substituted_inside_argv_elements_only() -> None:
    """{name} {host} {reason} are replaced literally; format tricks stay text."""
    action = ExecAction(
        type="exec", argv=["/bin/restart-{name}", "--host={host}", "{reason}", "{0.__class__}"]
    )
    assert build_argv(action, VALUES) == [
        "/bin/restart-web",
        "--host=gw-1.lan",
        "hung",
        "{0.__class__}",
    ]


def test_wrapper_actions_build_their_argv() -> None:
    """systemd / docker / pm2 are thin argv builders (placeholders work there too)."""
    assert build_argv(SystemdAction(type="systemd", unit="app@{name}"), VALUES) == [
        "systemctl",
        "restart",
        "app@web",
    ]
    assert build_argv(SystemdAction(type="systemd", unit="x", user=True), VALUES) == [
        "systemctl",
        "--user",
        "restart",
        "x",
    ]
    assert build_argv(DockerAction(type="docker", container="c"), VALUES) == [
        "docker",
        "restart",
        "c",
    ]
    assert build_argv(Pm2Action(type="pm2", app="api"), VALUES) == ["pm2", "restart", "api"]


@pytest.mark.parametrize("host", ["$(id)", "`id`", "-rf", "a;b", "a b", "", None, "x" * 300])
def test_hostile_hosts_never_reach_an_argv(host: str | None) -> None:
    """The host comes from the service's own birth: anything odd becomes 'unknown'."""
    assert placeholders("web", host, "lost")["{host}"] == "unknown"


def test_unknown_reasons_are_not_substituted() -> None:
    """Reasons are ours; anything else becomes 'unknown'."""
    assert placeholders("web", "h", "$(reboot)")["{reason}"] == "unknown"


def test_exec_success_and_output_tail(tmp_path: Path) -> None:
    """Exit 0 is success; stdout and stderr are captured."""
    out = run_argv(
        [sys.executable, "-c", "import sys; print('hi'); print('oops', file=sys.stderr)"], 10
    )
    assert out.ok
    assert out.exit_code == 0
    assert "hi" in out.output
    assert "oops" in out.output


def test_exec_failure_reports_the_exit_code() -> None:
    """A non-zero exit is a failed attempt with its code."""
    out = run_argv([sys.executable, "-c", "raise SystemExit(3)"], 10)
    assert not out.ok
    assert (out.exit_code, out.detail) == (3, "exit 3")


def test_missing_program_is_a_clear_failure() -> None:
    """Command not found says so."""
    out = run_argv(["/nonexistent/restart-me"], 10)
    assert not out.ok
    assert out.detail == "command not found: /nonexistent/restart-me"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A hanging action and the children it spawned are all killed at the timeout."""
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    out = run_argv([sys.executable, "-c", script], 1.0)
    assert not out.ok
    assert out.detail == "timed out after 1 s; killed"
    assert time.monotonic() - started < 10
    for pid in map(int, pids.read_text().split()):
        # SIGKILL is delivered asynchronously: give a loaded machine a moment to act on it.
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_action_that_leaves_a_daemon_behind_does_not_block() -> None:
    """`setsid -f` style launchers return at once even though the daemon keeps our stdout."""
    started = time.monotonic()
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'],"
        " start_new_session=True)"
    )
    out = run_argv([sys.executable, "-c", code], 10)
    assert out.ok
    assert time.monotonic() - started < 3


class _Handler(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    seen: ClassVar[list[tuple[str, str, dict[str, object]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        type(self).seen.append((self.path, self.headers.get("X-Token", ""), body))
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b'{"restarted": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    """A local HTTP server on 127.0.0.1 that records POSTs."""
    handler = type("H", (_Handler,), {"seen": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_http_action_success_is_a_2xx(http_server: tuple[str, type[_Handler]]) -> None:
    """The configured method, headers and JSON body are sent; 2xx is success."""
    url, handler = http_server
    action = HttpAction(
        type="http", url=f"{url}/restart", headers={"X-Token": "t"}, body={"service": "web"}
    )
    out = run_http(action)
    assert out.ok
    assert out.detail == "HTTP 200"
    assert handler.seen == [("/restart", "t", {"service": "web"})]


def test_http_action_failure_statuses_and_refusals(http_server: tuple[str, type[_Handler]]) -> None:
    """A 500 fails; so does nothing listening."""
    url, handler = http_server
    handler.status = 500
    out = run_http(HttpAction(type="http", url=url))
    assert (out.ok, out.detail) == (False, "HTTP 500")
    dead = run_http(HttpAction(type="http", url="http://127.0.0.1:9/", timeout=2))
    assert not dead.ok
    assert "Connect" in dead.detail
