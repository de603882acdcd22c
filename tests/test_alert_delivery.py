"""Alert sinks for real: a local webhook (JSON and Slack), an exec sink, retries with back-off."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from presence.alerts import Alert, Alerter, Observation, deliver
from presence.settings import ExecSink, WebhookSink

ALERT = Alert("down", "web", "hung", "hung", "web is DOWN: hung (hung)", 12.0, 2)


class Server:
    """Answers POSTs with the next status in `statuses` (then 204) and records the bodies."""

    def __init__(self, statuses: list[int]) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = statuses
        self.done = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                status = server.statuses.pop(0) if server.statuses else 204
                self.send_response(status)
                self.end_headers()
                if status < 300:
                    server.done.set()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    """A webhook endpoint that first fails twice, then accepts."""
    s = Server([500, 503])
    try:
        yield s
    finally:
        s.http.shutdown()
        s.http.server_close()


def test_json_webhook_body() -> None:
    """format json: the whole alert as an object."""
    s = Server([])
    try:
        deliver(WebhookSink(type="webhook", url=s.url), ALERT, None)
        [body] = s.bodies
        assert body["kind"] == "down"
        assert body["service"] == "web"
        assert body["text"] == ALERT.text
        assert body["down_for"] == 12.0
        assert set(body) >= {"kind", "service", "state", "reason", "text", "restarts", "ts"}
    finally:
        s.http.shutdown()
        s.http.server_close()


def test_slack_format_is_just_text() -> None:
    """format slack: {"text": ...}, which Slack, Mattermost, Rocket.Chat and Discord accept."""
    s = Server([])
    try:
        deliver(WebhookSink(type="webhook", url=s.url, format="slack"), ALERT, None)
        assert s.bodies == [{"text": ALERT.text}]
    finally:
        s.http.shutdown()
        s.http.server_close()


def test_exec_sink_gets_json_on_stdin_and_environment(tmp_path: Path) -> None:
    """The alert as JSON on stdin and as PRESENCE_* variables."""
    out = tmp_path / "alert"
    code = (
        "import json, os, sys; body = json.load(sys.stdin); "
        f"open({str(out)!r}, 'w').write(json.dumps([body['kind'], os.environ['PRESENCE_SERVICE'],"
        " os.environ['PRESENCE_STATE']]))"
    )
    deliver(ExecSink(type="exec", argv=[sys.executable, "-c", code]), ALERT, {"PATH": "/usr/bin"})
    assert json.loads(out.read_text()) == ["down", "web", "hung"]


def test_exec_sink_failure_raises() -> None:
    """A non-zero exit is a failed delivery (so the worker retries it)."""
    with pytest.raises(RuntimeError, match="exit 2"):
        deliver(ExecSink(type="exec", argv=[sys.executable, "-c", "exit(2)"]), ALERT, None)


def test_failing_sink_is_retried_with_backoff_without_blocking_the_caller(server: Server) -> None:
    """Two 5xx answers, then success: three tries, and observe() never waited for any."""
    alerter = Alerter([WebhookSink(type="webhook", url=server.url)], retries=5, backoff=0.05)
    try:
        started = time.monotonic()
        alerter.observe(Observation("web", "online", "offline", "lost", restartable=False), 0.0)
        assert time.monotonic() - started < 0.05  # handed to the sink's worker, not sent inline
        assert server.done.wait(5)
        assert len(server.bodies) == 3
        assert all(body["kind"] == "down" for body in server.bodies)
    finally:
        alerter.close()
