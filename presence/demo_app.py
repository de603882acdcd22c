"""The demo's stand-in for a real service: a tiny HTTP server with a /health endpoint.

`python -m presence.demo_app PORT` answers `GET /health` with `{"load": ...}`; it knows
nothing about presence (`presence run` gives it presence), exactly like a program of yours.
"""

from __future__ import annotations

import json
import random
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"load": round(random.random(), 2)}).encode()  # noqa: S311 (demo)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the demo's screen for the watch table


def main() -> None:
    """Serve until killed."""
    HTTPServer(("127.0.0.1", int(sys.argv[1])), _Health).serve_forever()


if __name__ == "__main__":
    main()
