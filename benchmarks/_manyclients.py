"""Many real MQTT connections from one process, each with its own Last Will (raw paho).

    BENCH_PASSWORD=... python -m benchmarks._manyclients --port P --count 5000

paho's own loops (`loop_start`, `loop_forever`) `select()` on each socket and break silently once
a descriptor number passes 1024, and each creates a socket pair as well; this process drives
every client through paho's external-loop hooks (`socket()`, `loop_read()`, `loop_write()`,
`loop_misc()`, `want_write()`) with one epoll selector, after raising RLIMIT_NOFILE to the hard
limit. Each client `bench-will-<i>` publishes a retained birth and holds a Will
`{"state":"offline","session":S,"since":T,"reason":"lost"}` on `P/bench-will-<i>/status`.

stdout: `LIMIT <soft>`, `READY <connected> <seconds>` once every birth is acknowledged (or
`READY` with fewer after a timeout); then it idles until killed (the benchmark SIGKILLs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import selectors
import sys
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class Fleet:
    """The clients and the selector that drives them."""

    def __init__(self, port: int, password: str, prefix: str) -> None:
        self.port = port
        self.password = password
        self.prefix = prefix
        self.selector = selectors.DefaultSelector()
        self.clients: list[paho.Client] = []
        self.connected = 0
        self.births_acked = 0
        self.failed = 0

    def add(self, index: int) -> None:
        """Create client `index` and start connecting it."""
        name = f"bench-will-{index}"
        session = secrets.token_hex(8)
        since = round(time.time(), 3)
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.username_pw_set("monitor", self.password)
        status = f"{self.prefix}/{name}/status"
        will = {"state": "offline", "session": session, "since": since, "reason": "lost"}
        birth = {"state": "online", "session": session, "since": since, "pid": os.getpid()}
        client.will_set(status, json.dumps(will, separators=(",", ":")), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        client.user_data_set((status, json.dumps(birth, separators=(",", ":"))))
        try:
            client.connect("127.0.0.1", self.port, keepalive=60)
        except OSError as exc:
            self.failed += 1
            print(f"connect {index} failed: {exc}", file=sys.stderr, flush=True)
            return
        sock = client.socket()
        if sock is None:
            self.failed += 1
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        self.selector.register(sock, events, client)
        self.clients.append(client)

    # paho callbacks ----------------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            self.failed += 1
            return
        self.connected += 1
        topic, payload = userdata
        client.publish(topic, payload, qos=1, retain=True)

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, _mid: int, _reason: Any, _properties: Any
    ) -> None:
        self.births_acked += 1

    def _set_events(self, client: paho.Client, sock: Any, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        # KeyError: not registered yet (connect() in progress); ValueError: already closed.
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, events, client)

    def _want_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._set_events(client, sock, True)

    def _no_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._set_events(client, sock, False)

    # the loop ----------------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        """Handle whatever is ready."""
        for key, mask in self.selector.select(timeout):
            client: paho.Client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def misc(self) -> None:
        """Keepalive bookkeeping for every client."""
        for client in self.clients:
            client.loop_misc()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="presence")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"LIMIT {soft}", flush=True)
    count = min(args.count, soft - 64)
    fleet = Fleet(args.port, os.environ["BENCH_PASSWORD"], args.prefix)
    started = time.monotonic()
    deadline = started + args.timeout
    index = 0
    while fleet.births_acked + fleet.failed < count and time.monotonic() < deadline:
        # Open a batch at a time: the broker's listen backlog is finite.
        if index < count and index - (fleet.births_acked + fleet.failed) < args.batch:
            for _ in range(min(args.batch, count - index)):
                fleet.add(index)
                index += 1
        fleet.step(0.05)
    took = time.monotonic() - started
    print(f"READY {fleet.births_acked} {took:.3f} failed={fleet.failed}", flush=True)
    last_misc = time.monotonic()
    while True:
        fleet.step(1.0)
        if time.monotonic() - last_misc > 5:
            fleet.misc()
            last_misc = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
