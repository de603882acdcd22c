"""Thousands of real MQTT connections from one process, each with its own Last Will.

    python -m tests.faults.swarm --port P --user monitor --password X --count 2000

paho's own loops use select(), which fails silently once a descriptor number passes 1024, so
the clients are driven through paho's external-loop hooks with `selectors` (epoll). Prints
READY once every birth is acknowledged, then serves the sockets until killed: `kill -9` of this
process makes the broker publish every Will at once (a mass failure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import selectors
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="presence")
    parser.add_argument("--names", default="m", help="service names are <names><index>")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    selector = selectors.DefaultSelector()
    clients: list[mqtt.Client] = []
    acked = 0

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        acked += 1

    for index in range(args.count):
        name = f"{args.names}{index}"
        session, since = secrets.token_hex(8), round(time.time(), 3)
        topic = f"{args.prefix}/{name}/status"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"swarm-{os.getpid()}-{index}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.username_pw_set(args.user, args.password)
        will = {"state": "offline", "session": session, "since": since, "reason": "lost"}
        client.will_set(topic, json.dumps(will), qos=1, retain=True)
        birth = json.dumps({"state": "online", "session": session, "since": since})

        def on_connect(
            c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any, t: str = topic, b: str = birth
        ) -> None:
            c.publish(t, b, qos=1, retain=True)

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect("127.0.0.1", args.port, keepalive=60)
        sock = client.socket()
        assert sock is not None
        selector.register(sock, selectors.EVENT_READ, client)
        clients.append(client)

    ready = False
    last_misc = 0.0
    while True:
        for key, _ in selector.select(timeout=0.2):
            key.data.loop_read()
        for client in clients:
            if client.want_write():
                client.loop_write()
        now = time.monotonic()
        if now - last_misc > 1.0:
            last_misc = now
            for client in clients:
                client.loop_misc()
        if not ready and acked >= args.count:
            ready = True
            print(f"READY {args.count}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
