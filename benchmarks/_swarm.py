"""Simulated services for the capacity benchmark: one MQTT connection answering for many names.

    BENCH_PASSWORD=... python -m benchmarks._swarm --port P --first 0 --count 2500

Publishes a retained birth `{"state":"online","session":S,"since":T}` on `P/<name>/status` for
each of its names (user `monitor`, which may write any service's topics), then answers every
broadcast ping on `P/_monitor/ping` with one pong per name, `{"seq":N,"session":S,"ok":true}`
(QoS 0). It also answers pings of the raw paho floor on `floor/_monitor/ping` with pongs on
`floor/<name>/pong`, so the floor can run against the very same swarm without the monitor
seeing its traffic.

stdout: `READY <count>` once the births are processed by the broker, then one line per ping
answered: `PING <prefix> <seq> <pongs> <received unix time> <seconds to write the pongs>`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import time
from types import FrameType

from benchmarks._wire import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBLISH,
    SUBACK,
    Reader,
    connect_packet,
    publish_packet,
    remaining_length,
    split_publish,
    subscribe_packet,
)


class Pongs:
    """Pre-built pong packets for one prefix; only the seq changes per round."""

    def __init__(self, prefix: str, names: list[str], sessions: list[str]) -> None:
        self.parts: list[tuple[int, bytes, bytes]] = []
        for name, session in zip(names, sessions, strict=True):
            topic = f"{prefix}/{name}/pong".encode()
            head = len(topic).to_bytes(2, "big") + topic + b'{"seq":'
            tail = b',"session":"' + session.encode() + b'","ok":true}'
            self.parts.append((len(head) + len(tail), head, tail))

    def round(self, seq: int) -> bytes:
        """Every name's pong for ping `seq`, as one buffer."""
        digits = str(seq).encode()
        extra = len(digits)
        return b"".join(
            [
                b"\x30" + remaining_length(size + extra) + head + digits + tail
                for size, head, tail in self.parts
            ]
        )


def _expect(reader: Reader, kind: int) -> bytes:
    while True:
        for packet_type, _flags, body in reader.read():
            if packet_type == kind:
                return body


def _announce(
    sock: socket.socket, reader: Reader, prefix: str, names: list[str], sessions: list[str]
) -> None:
    """Publish every name's retained birth; return once the broker has processed them all."""
    since = round(time.time(), 3)
    births = []
    for i, (name, session) in enumerate(zip(names, sessions, strict=True)):
        payload = json.dumps(
            {"state": "online", "session": session, "since": since}, separators=(",", ":")
        ).encode()
        topic = f"{prefix}/{name}/status"
        births.append(publish_packet(topic, payload, qos=1, retain=True, mid=i % 65535 + 1))
    sock.sendall(b"".join(births))
    # The broker handles a client's packets in order: PINGRESP means every birth is in.
    sock.sendall(PINGREQ)
    _expect(reader, PINGRESP)


def _serve(
    sock: socket.socket, reader: Reader, pings: dict[str, str], answers: dict[str, Pongs]
) -> int:
    """Answer every ping until SIGTERM; one stdout line per ping."""
    stop = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    count = len(next(iter(answers.values())).parts)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    last_ping = time.monotonic()
    while not stop:
        if time.monotonic() - last_ping > 20:
            sock.sendall(PINGREQ)
            last_ping = time.monotonic()
        if not selector.select(timeout=1.0):
            continue
        try:
            packets = list(reader.read())
        except ConnectionError:
            print("ERROR broker closed the connection", flush=True)
            return 3
        for packet_type, flags, body in packets:
            if packet_type != PUBLISH:
                continue
            received = time.time()
            topic, payload = split_publish(flags, body)
            prefix = pings.get(topic)
            if prefix is None:
                continue
            seq = int(json.loads(payload)["seq"])
            started = time.perf_counter()
            sock.sendall(answers[prefix].round(seq))
            took = time.perf_counter() - started
            print(f"PING {prefix} {seq} {count} {received:.6f} {took:.6f}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="monitor")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--name-format", default="bench-{}")
    parser.add_argument("--prefix", default="presence")
    parser.add_argument("--floor-prefix", default="floor")
    args = parser.parse_args()
    names = [args.name_format.format(i) for i in range(args.first, args.first + args.count)]
    sessions = [secrets.token_hex(8) for _ in names]

    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = Reader(sock)
    client_id = f"bench-swarm-{os.getpid()}"
    sock.sendall(connect_packet(client_id, args.user, os.environ["BENCH_PASSWORD"], keepalive=60))
    ack = _expect(reader, CONNACK)
    if ack[1] != 0:
        print(f"ERROR connack {ack[1]}", flush=True)
        return 3
    pings = {f"{args.prefix}/_monitor/ping": args.prefix}
    if args.floor_prefix:
        pings[f"{args.floor_prefix}/_monitor/ping"] = args.floor_prefix
    sock.sendall(subscribe_packet(1, [(t, 0) for t in pings]))
    _expect(reader, SUBACK)
    _announce(sock, reader, args.prefix, names, sessions)
    print(f"READY {len(names)}", flush=True)
    answers = {prefix: Pongs(prefix, names, sessions) for prefix in pings.values()}
    code = _serve(sock, reader, pings, answers)
    sock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
