"""Short cuts through paho-mqtt's hot paths, installed on a client by `presence.mqtt`.

At 10,000 pongs a second, and at tens of thousands of verdicts after a mass failure, most of
the monitor's CPU went to paho itself: three `recv()` syscalls per packet, a Properties and a
ReasonCode object for every MQTT 5 PUBLISH and PUBACK. Each class here takes over one paho
method *on the client instance* for the common case and hands everything else back to paho's
own method, unchanged. They rely on paho 2.x internals (`_sock`, `_in_packet`,
`_packet_read`, `_out_messages`, ...): `install` checks those exist and otherwise leaves paho
alone, so a paho upgrade can make presence slower, never wrong. tests/test_wire.py drives
every packet kind through them against a real broker.

This module does not import paho (`presence.mqtt` is the only one that does): the client is
duck-typed, and the few error codes it returns are paho's `MQTTErrorCode` values, which are
`IntEnum`s and compare equal to these ints (a test pins that).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any, Final

ERR_AGAIN: Final = -1  # MQTTErrorCode.MQTT_ERR_AGAIN
ERR_SUCCESS: Final = 0  # MQTTErrorCode.MQTT_ERR_SUCCESS
ERR_NO_CONN: Final = 4  # MQTTErrorCode.MQTT_ERR_NO_CONN

#: `deliver(topic, payload, retained, received)`: where a lean PUBLISH goes.
Deliver = Callable[[str, bytes, bool, float], object]

#: PUBACK reason codes that mean "accepted": Success and No matching subscribers (MQTT 5).
_ACCEPTED: Final = (0x00, 0x10)


def install(client: Any, deliver: Deliver, v5: bool) -> None:
    """Put every short cut on `client` whose paho internals are there."""
    _BufferedReader.install(client)
    _LeanPublish.install(client, deliver, v5)
    _LeanPuback.install(client)


class _BufferedReader:
    """Feeds paho's packet parser from one 64 KiB `recv()` instead of three syscalls a packet.

    paho reads a packet as recv(1) for the type, recv(1) per length byte and recv(n) for the
    body, and handles one packet per `select()`: at 10,000 pongs a second that is 40,000
    syscalls, most of the monitor's CPU. Installed on the client instance as `_sock_recv` and
    `loop_read`; `loop_read` keeps parsing until the buffer is empty, so no byte is ever left
    here while `select()` waits on an empty socket (the invariant that keeps this correct).
    After `_REFILLS` refills it reports "would block" so that writes (pings) get their turn;
    the rest waits in the kernel, where `select()` sees it.
    """

    _CHUNK: Final = 65536
    _REFILLS: Final = 4  # up to 256 KiB parsed per select() before paho gets to write

    __slots__ = ("_buf", "_client", "_pos", "_refills", "_sock")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._sock: object = None
        self._buf = b""
        self._pos = 0
        self._refills = 0

    @classmethod
    def install(cls, client: Any) -> None:
        """Use the reader on `client` when paho still has the internals it relies on."""
        needed = ("_sock", "_packet_read", "_loop_rc_handle", "_call_socket_register_write")
        if all(hasattr(client, name) for name in needed):
            reader = cls(client)
            client._sock_recv = reader.recv
            client.loop_read = reader.loop_read

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes from the buffer, refilling it with one `recv()` when empty."""
        sock = self._client._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        if sock is not self._sock:  # a new connection: the old one's bytes are not its bytes
            self._sock, self._buf, self._pos = sock, b"", 0
        if self._pos >= len(self._buf):
            if self._refills <= 0:
                raise BlockingIOError
            self._refills -= 1
            try:
                data: bytes = sock.recv(self._CHUNK)
            except ssl.SSLWantReadError as err:
                raise BlockingIOError from err
            except ssl.SSLWantWriteError as err:
                self._client._call_socket_register_write()
                raise BlockingIOError from err
            if not data:
                return b""  # EOF: paho treats it as a lost connection
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buf))
        return self._buf[start : self._pos]

    def loop_read(self, max_packets: int = 1) -> Any:
        """paho's `loop_read`, but parsing every packet the refills bring (see the class)."""
        client = self._client
        self._refills = self._REFILLS
        while True:
            if client._sock is None:
                return ERR_NO_CONN
            rc = client._packet_read()
            if rc > 0:
                self._buf, self._pos = b"", 0
                return client._loop_rc_handle(rc)
            # AGAIN also comes back mid-buffer: paho yields after 100 reads of one big packet.
            if rc == ERR_AGAIN and self._pos >= len(self._buf):
                return ERR_SUCCESS


class _LeanPublish:
    """Hands a plain QoS 0 PUBLISH straight to us, without paho's MQTTMessage and Properties.

    For MQTT 5, paho builds a Properties object for every PUBLISH even when its property block
    is empty (~18 us each here, half of paho's cost per pong). A QoS 0 message without
    properties needs no state in paho (no ack, no in-flight entry), so it is decoded here:
    2-byte topic length, topic, an empty property block (MQTT 5), payload. Anything else
    (QoS 1/2, properties, a topic that is not UTF-8, a malformed packet) goes to paho's own
    handler unchanged.
    """

    __slots__ = ("_client", "_deliver", "_original", "_v5")

    def __init__(self, client: Any, deliver: Deliver, v5: bool) -> None:
        self._client = client
        self._deliver = deliver
        self._original: Callable[[], Any] = client._handle_publish
        self._v5 = v5

    @classmethod
    def install(cls, client: Any, deliver: Deliver, v5: bool) -> None:
        """Take over `client`'s PUBLISH handling when paho still has the internals it uses."""
        if hasattr(client, "_in_packet") and hasattr(client, "_handle_publish"):
            client._handle_publish = cls(client, deliver, v5).handle

    def handle(self) -> Any:
        """paho's `_handle_publish`, short-cut for the common case."""
        cmd: int = self._client._in_packet["command"]
        packet: bytes | bytearray = self._client._in_packet["packet"]
        if cmd & 0x06 == 0 and len(packet) >= 2:  # QoS 0
            end = 2 + ((packet[0] << 8) | packet[1])
            body = end + 1 if self._v5 else end
            if body <= len(packet) and (not self._v5 or packet[end] == 0):
                try:
                    topic = packet[2:end].decode("utf-8")
                except UnicodeDecodeError:
                    return self._original()
                self._deliver(topic, bytes(packet[body:]), bool(cmd & 1), time.monotonic())
                return ERR_SUCCESS
        return self._original()


class _LeanPuback:
    """Completes an accepted QoS 1 publish without paho's ReasonCode, Properties and callback.

    paho decodes every PUBACK into a ReasonCode and a Properties object and calls `on_publish`
    (~40 us together here); the monitor sends a QoS 1 verdict and event per state change, so
    after a mass failure that was its bottleneck. presence's `on_publish` only acts on
    refusals, so a PUBACK that says "accepted" with no properties is completed here exactly as
    paho completes it (drop the message, wake its waiters, send the next queued one); a refusal,
    properties, a PUBCOMP or an unknown id go to paho's own handler.
    """

    __slots__ = ("_client", "_original")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._original: Callable[[str], Any] = client._handle_pubackcomp

    @classmethod
    def install(cls, client: Any) -> None:
        """Take over `client`'s PUBACK handling when paho still has the internals it uses."""
        needed = (
            "_handle_pubackcomp",
            "_in_packet",
            "_out_message_mutex",
            "_out_messages",
            "_inflight_messages",
            "_max_inflight_messages",
            "_update_inflight",
        )
        if all(hasattr(client, name) for name in needed):
            client._handle_pubackcomp = cls(client).handle

    def handle(self, cmd: str) -> Any:
        """paho's `_handle_pubackcomp`, short-cut for an accepted PUBACK."""
        client = self._client
        packet: bytes | bytearray = client._in_packet["packet"]
        size = len(packet)
        # 3.1.1: the id alone. MQTT 5: the id, then optionally a reason code and a property
        # block; a 4-byte packet with an empty block is what some brokers send.
        accepted = size == 2 or (
            size in (3, 4) and packet[2] in _ACCEPTED and (size == 3 or packet[3] == 0)
        )
        if cmd != "PUBACK" or not accepted:
            return self._original(cmd)
        mid = (packet[0] << 8) | packet[1]
        with client._out_message_mutex:
            message = client._out_messages.pop(mid, None)
            if message is None:
                return ERR_SUCCESS  # a duplicate: paho ignores it too
            message.info._set_as_published()
            if message.qos > 0:
                client._inflight_messages -= 1
                if client._max_inflight_messages > 0:
                    return client._update_inflight()
        return ERR_SUCCESS
