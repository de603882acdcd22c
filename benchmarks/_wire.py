"""A minimal MQTT 3.1.1 client on a plain socket, for the swarm load generator only.

paho costs ~20 us of CPU per publish (one `send()` per message); at 20,000 pongs a second that
is 40 % of one of this machine's two cores spent by the *load generator*, taken away from the
monitor being measured. The swarm instead writes a whole round of pongs (one PUBLISH per
service name) with one `sendall()`. What is measured — the broker, the monitor, the raw paho
floor — is unchanged.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final

__all__ = [
    "PINGREQ",
    "Reader",
    "connect_packet",
    "publish_packet",
    "remaining_length",
    "subscribe_packet",
]

PINGREQ: Final = b"\xc0\x00"
CONNACK: Final = 2
PUBLISH: Final = 3
SUBACK: Final = 9
PINGRESP: Final = 13


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    """CONNECT with clean session, user name and password (no Will)."""
    flags = 0x80 | 0x40 | 0x02
    body = (
        _utf8("MQTT")
        + bytes([4, flags])
        + struct.pack("!H", keepalive)
        + _utf8(client_id)
        + _utf8(username)
        + _utf8(password)
    )
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(mid: int, topics: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE to `topics` [(filter, qos)]."""
    body = struct.pack("!H", mid) + b"".join(_utf8(t) + bytes([q]) for t, q in topics)
    return b"\x82" + remaining_length(len(body)) + body


def publish_packet(
    topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, mid: int = 1
) -> bytes:
    """One PUBLISH packet."""
    header = 0x30 | (qos << 1) | (1 if retain else 0)
    body = _utf8(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([header]) + remaining_length(len(body)) + body


class Reader:
    """Splits the incoming byte stream into (packet type, flags, body)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def read(self) -> Iterator[tuple[int, int, bytes]]:
        """Read what the socket has (one recv) and yield every complete packet.

        Raises ConnectionError when the broker closed the connection.
        """
        data = self._sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self._buf += data
        yield from self._packets()

    def _packets(self) -> Iterator[tuple[int, int, bytes]]:
        buf = self._buf
        while len(buf) >= 2:
            length, multiplier, pos = 0, 1, 1
            while True:
                if pos >= len(buf):
                    return
                byte = buf[pos]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                pos += 1
                if not byte & 0x80:
                    break
            if len(buf) < pos + length:
                return
            first = buf[0]
            body = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            yield first >> 4, first & 0x0F, body


def split_publish(flags: int, body: bytes) -> tuple[str, bytes]:
    """(topic, payload) of a PUBLISH body."""
    (size,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + size].decode()
    start = 2 + size + (2 if flags & 0x06 else 0)
    return topic, body[start:]
