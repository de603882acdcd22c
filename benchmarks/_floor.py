"""The raw paho floor: the least a monitor must do for ping rounds, with no presence code.

    BENCH_PASSWORD=... python -m benchmarks._floor --port P --expect N --duration 10

One paho client (user `monitor`) in one thread: broadcasts `{"seq":N,"ts":T}` on
`floor/_monitor/ping` every `--interval`, subscribes to `floor/+/pong`, parses every pong with
`json.loads`, matches its seq to an open round and records the name's answer. A round closes
`--timeout` after its ping. Runs against the same swarm as the monitor (the swarm answers
`floor/` pings on `floor/<name>/pong`).

stdout: one `ROUND <seq> <answers> <late>` per closed round, then
`DONE <pongs> <rounds> <cpu seconds> <wall seconds>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class Floor:
    """Rounds and their answers."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.open: dict[int, tuple[float, dict[str, bool]]] = {}
        self.pongs = 0
        self.late = 0

    def on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        topic = msg.topic
        if not topic.endswith("/pong"):
            return
        self.pongs += 1
        rnd = self.open.get(data["seq"])
        if rnd is None or time.monotonic() - rnd[0] > self.timeout:
            self.late += 1
            return
        rnd[1][topic.split("/", 2)[1]] = data["ok"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", default="floor")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args()
    floor = Floor(args.timeout)
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-floor-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set("monitor", os.environ["BENCH_PASSWORD"])
    client.on_message = floor.on_message
    client.connect("127.0.0.1", args.port, keepalive=10)
    client.subscribe([(f"{args.prefix}/+/pong", 0), (f"{args.prefix}/_monitor/ping", 0)])
    seq = int(time.time() * 1000)
    cpu0 = time.process_time()
    start = time.monotonic()
    next_ping = start + 0.2
    end = start + args.duration
    rounds = 0
    while True:
        now = time.monotonic()
        for key in [k for k, (sent, _) in floor.open.items() if now - sent > args.timeout]:
            _, answers = floor.open.pop(key)
            rounds += 1
            print(f"ROUND {key} {len(answers)} {floor.late}", flush=True)
        if now >= end and not floor.open:
            break
        if now >= next_ping and now < end:
            seq += 1
            floor.open[seq] = (now, {})
            ping = json.dumps({"seq": seq, "ts": round(time.time(), 3)}, separators=(",", ":"))
            client.publish(f"{args.prefix}/_monitor/ping", ping)
            next_ping += args.interval
        wake = min([next_ping, *(sent + args.timeout for sent, _ in floor.open.values())])
        client.loop(timeout=max(0.0, min(0.1, wake - time.monotonic())))
    cpu = time.process_time() - cpu0
    print(f"DONE {floor.pongs} {rounds} {cpu:.3f} {time.monotonic() - start:.3f}", flush=True)
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
