"""The only module that imports paho-mqtt.

It turns paho's types (ReasonCode, MQTTMessage, error codes) into ours at the boundary, raises
our errors (`raise ... from exc`) and guards every callback: an exception escaping a paho
callback silently kills paho's network thread while `is_connected()` stays true.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, Protocol, TypeVar

import paho.mqtt.client as paho
from loguru import logger
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from presence import _speedups
from presence.errors import BrokerError, BrokerUnreachable, ConnectionRefused, TLSFailure
from presence.protocol import MAX_PAYLOAD
from presence.settings import BrokerSettings

__all__ = [
    "Connection",
    "Delivery",
    "Disconnect",
    "Handler",
    "Inbox",
    "Message",
    "WillMessage",
    "cli_client_id",
    "fetch_retained",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_TAKEN_OVER: Final = 142  # MQTT 5 "Session taken over": someone else connected with our id
_NOT_AUTHORISED: Final = frozenset({4, 5, 134, 135})  # 3.1.1 and 5 codes for bad login/ACL


@dataclass(frozen=True, slots=True)
class Message:
    """An incoming PUBLISH, in our terms."""

    topic: str
    payload: bytes
    retained: bool
    #: time.monotonic() when paho handed it to us.
    received: float


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why a connection ended."""

    reason: str
    #: True when the broker says another client took over our client id (MQTT 5 only).
    taken_over: bool = False


@dataclass(frozen=True, slots=True)
class WillMessage:
    """The Last Will the broker publishes if this connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Handler(Protocol):
    """What a Connection tells its owner. Called on paho's network thread: enqueue, do not block."""

    def on_connected(self, session_present: bool) -> None:
        """The broker accepted the connection (subscriptions are already requested)."""

    def on_disconnected(self, info: Disconnect) -> None:
        """The connection ended (called once per connection, however often paho reports it)."""

    def on_message(self, message: Message) -> None:
        """A message arrived."""


class Delivery:
    """Handle for one publish: `wait()` tells whether the broker acknowledged it (QoS 1)."""

    __slots__ = ("_info", "_refusals")

    def __init__(
        self, info: paho.MQTTMessageInfo | None, refusals: dict[int, str] | None = None
    ) -> None:
        self._info = info
        self._refusals = refusals

    @property
    def refusal(self) -> str | None:
        """The broker's reason when it refused this QoS 1 publish (MQTT 5: e.g. not authorised)."""
        if self._info is None or self._refusals is None:
            return None
        return self._refusals.get(self._info.mid)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the publish to complete; True when it did."""
        if self._info is None:
            return False
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return self._info.is_published()


def _guard(label: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R | None]]:
    """Wrap a paho callback so an exception is logged instead of killing paho's thread."""

    def deco(func: Callable[_P, _R]) -> Callable[_P, _R | None]:
        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
            try:
                return func(*args, **kwargs)
            except Exception:  # noqa: BLE001 (whatever it is, paho's thread must survive it)
                logger.opt(exception=True).error("error in MQTT callback {}", label)
                return None

        return wrapper

    return deco


def _reason_text(rc: ReasonCode | int | None) -> str:
    if rc is None:
        return "unknown"
    if isinstance(rc, ReasonCode):
        return str(rc.getName())
    return paho.error_string(rc)


_HOSTNAME_MISMATCH: Final = frozenset({62, 64})  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH


def _tls_problem(exc: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in words (ssl's `reason` alone is only
    CERTIFICATE_VERIFY_FAILED for a wrong CA and a host name mismatch alike)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {exc.verify_message}"
        if exc.verify_code in _HOSTNAME_MISMATCH:
            return (
                f"{detail} (the broker's certificate does not name the host we connect to; "
                "connect by a name it carries, or set broker.tls.insecure to skip this check)"
            )
        return f"{detail} (is broker.tls.ca the CA that signed the broker's certificate?)"
    return _with_hint(str(exc.reason or exc))


def _with_hint(reason: str) -> str:
    """An OpenSSL reason (e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED) with what to do about it."""
    if "CERTIFICATE_REQUIRED" in reason:
        return f"{reason} (the broker requires a client certificate: set broker.tls.cert and key)"
    if reason.endswith(("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
        return f"{reason} (the broker did not accept our client certificate)"
    return reason


def _reason_value(rc: ReasonCode | int | None) -> int:
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    return int(rc or 0)


_counter = itertools.count()


def cli_client_id(role: str) -> str:
    """A client id that never collides with a monitor or agent (one-shot CLI commands, tests)."""
    return f"presence-{role}-{socket.gethostname()[:24]}-{os.getpid()}-{next(_counter)}"


class _SocketErrors(logging.Logger):
    """paho's logger for one connection: keeps its ERROR lines (the only place paho says why a
    socket broke, e.g. the TLS 1.3 alert "certificate required" a broker sends after the
    handshake completed on our side). Not registered with `logging`: it dies with its client.
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(f"presence.paho.{connection.client_id}", logging.ERROR)
        self.propagate = False
        self._connection = connection

    def handle(self, record: logging.LogRecord) -> None:
        """Called for records at ERROR and above only; the message is formatted here."""
        with contextlib.suppress(Exception):
            self._connection.note_socket_error(record.getMessage())


class Connection:
    """One MQTT connection with guarded callbacks, automatic reconnects and TCP_NODELAY.

    `connect()` makes the first connection in the caller's thread so that an unreachable broker,
    a TLS failure or refused credentials surface as our errors; `start()` instead connects in
    the background and keeps retrying (for daemons that must outlive a broker restart).
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        client_id: str,
        handler: Handler | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        keep_retain_flag: Collection[str] = (),
        persistent: bool = False,
        session_expiry: int = 0,
        will: Callable[[], WillMessage | None] | None = None,
        label: str = "mqtt",
    ) -> None:
        self._broker = broker
        self._handler = handler
        # MQTT 5 "retain as published" for these filters: a command sent with the retain flag
        # must look retained even when it reaches us live, so it can be refused.
        self._subscriptions: list[tuple[str, int]] | list[tuple[str, SubscribeOptions]]
        if broker.protocol == "5":
            self._subscriptions = [
                (topic, SubscribeOptions(qos=qos, retainAsPublished=topic in keep_retain_flag))
                for topic, qos in subscriptions
            ]
        else:
            self._subscriptions = list(subscriptions)
        self._will = will
        self._label = label
        self._persistent = persistent
        self._v5 = broker.protocol == "5"
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._answered = threading.Event()  # CONNACK seen (accepted or refused)
        self._refusal: ConnectionRefused | None = None
        self._is_up = False
        self._suback: dict[int, threading.Event] = {}
        # mid -> reason for QoS 1 publishes the broker refused (bounded, oldest dropped).
        self._refusals: dict[int, str] = {}
        self._fail_logged = 0.0
        # Why the last attempt failed before a CONNACK (TLS errors included), for messages.
        self._failure: BrokerUnreachable | None = None
        self._socket_error: str | None = None  # paho's last "failed to receive" text
        self.client_id = client_id

        client = self._client = self._make_client(broker, client_id, persistent)
        self._connect_properties: Properties | None = None
        if self._v5 and persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
            self._connect_properties = props

        client.on_pre_connect = _guard(f"{label}.on_pre_connect")(self._on_pre_connect)
        client.on_socket_open = _guard(f"{label}.on_socket_open")(self._on_socket_open)
        client.on_connect = _guard(f"{label}.on_connect")(self._on_connect)
        client.on_connect_fail = _guard(f"{label}.on_connect_fail")(self._on_connect_fail)
        client.on_disconnect = _guard(f"{label}.on_disconnect")(self._on_disconnect)
        client.on_message = _guard(f"{label}.on_message")(self._on_message)
        client.on_subscribe = _guard(f"{label}.on_subscribe")(self._on_subscribe)
        client.on_publish = _guard(f"{label}.on_publish")(self._on_publish)
        # paho formats a debug line for every packet when `on_log` is set (~20 us each with
        # MQTT 5 properties); a standard logger formats lazily, so only errors cost anything.
        client.enable_logger(_SocketErrors(self))

    def _make_client(self, broker: BrokerSettings, client_id: str, persistent: bool) -> paho.Client:
        """The paho client with our protocol, credentials, TLS and limits."""
        protocol = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, Any] = {}
        if not self._v5:
            kwargs["clean_session"] = not persistent
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            **kwargs,
        )
        client.connect_timeout = broker.connect_timeout
        client.reconnect_delay_set(1, broker.reconnect_max)
        # paho's default of 20 in flight throttles the monitor's verdict bursts; far more makes
        # every PUBACK cost a walk over all of them (paho's _update_inflight).
        client.max_inflight_messages_set(100)
        _speedups.install(client, _guard(f"{self._label}.on_message")(self._deliver), self._v5)
        if broker.username is not None:
            password = broker.password.get_secret_value() if broker.password else None
            client.username_pw_set(broker.username, password)
        if broker.tls is not None:
            tls = broker.tls
            try:
                client.tls_set(
                    ca_certs=str(tls.ca) if tls.ca else None,
                    certfile=str(tls.cert) if tls.cert else None,
                    keyfile=str(tls.key) if tls.key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerError(f"cannot load TLS files: {exc}") from exc
            client.tls_insecure_set(tls.insecure)
        return client

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port, for messages."""
        return f"{self._broker.host}:{self._broker.port}"

    def _connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "host": self._broker.host,
            "port": self._broker.port,
            "keepalive": self._broker.keepalive,
        }
        if self._v5:
            # A persistent session must survive our own restarts too, so never clean it.
            args["clean_start"] = not self._persistent
            args["properties"] = self._connect_properties
        return args

    def connect(self, timeout: float | None = None) -> None:
        """Connect now (raising our errors), then keep the connection up in the background."""
        timeout = self._broker.connect_timeout if timeout is None else timeout
        try:
            self._client.connect(**self._connect_args())
        except (OSError, ValueError) as exc:
            raise self._describe(exc) from exc
        self._client.loop_start()
        if not self._answered.wait(timeout):
            self.close()
            raise BrokerUnreachable(
                f"the MQTT broker at {self.endpoint} did not answer in {timeout} s"
            )
        if self._failure is not None and self._refusal is None and not self.connected:
            failure = self._failure
            self.close()
            raise failure
        if self._refusal is not None:
            refusal = self._refusal
            self.close()
            raise refusal

    def _describe(self, exc: BaseException) -> BrokerUnreachable:
        if isinstance(exc, ssl.SSLError):
            return TLSFailure(f"TLS handshake with {self.endpoint} failed: {_tls_problem(exc)}")
        return BrokerUnreachable(f"cannot reach the MQTT broker at {self.endpoint}: {exc}")

    @property
    def failure(self) -> BrokerUnreachable | None:
        """Why the last connection attempt failed before the broker answered, if it did."""
        return self._failure

    def start(self) -> None:
        """Connect in the background, retrying until it works (or `close()`)."""
        self._client.connect_async(**self._connect_args())
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or `timeout` passes (False)."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        """Whether the last CONNACK accepted us and no disconnect followed."""
        return self._connected.is_set()

    def backlog(self) -> int:
        """How many of our QoS 1/2 messages paho holds: queued, or sent and not yet acknowledged."""
        # A private attribute (as in _speedups): without it, report no backlog, never hold back.
        return len(getattr(self._client, "_out_messages", ()))

    @property
    def network_alive(self) -> bool:
        """Whether paho's network thread still runs (an exception in it ends it silently)."""
        thread = self._client._thread
        return thread is not None and thread.is_alive()

    def break_network_thread(self) -> None:
        """Fault injection for tests: the next socket read raises inside paho's thread, which
        dies exactly as it would from an unexpected packet (the socket stays open)."""

        def boom() -> MQTTErrorCode:
            raise RuntimeError("injected fault: paho's network thread dies here")

        self._client._packet_read = boom  # type: ignore[method-assign]

    @property
    def refusal(self) -> ConnectionRefused | None:
        """The broker's last refusal, if the last attempt was refused."""
        return self._refusal

    def disconnect(self) -> None:
        """Send DISCONNECT (no Will) without waiting; safe from paho's own thread."""
        with contextlib.suppress(Exception):
            self._client.disconnect()

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly (the broker sends no Will) and stop the network thread."""
        with contextlib.suppress(Exception):
            self._client.disconnect()
        deadline = time.monotonic() + timeout
        # loop_stop joins paho's thread; it ends once the DISCONNECT is written.
        thread = threading.Thread(target=self._client.loop_stop, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        self._connected.clear()

    # -- traffic ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Delivery:
        """Queue a message; oversized payloads are refused here (the broker would drop the
        connection, and an unexpected PUBACK code can kill paho's thread)."""
        if len(payload) > MAX_PAYLOAD:
            logger.error("not publishing {} bytes to {}: over {}", len(payload), topic, MAX_PAYLOAD)
            return Delivery(None)
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as exc:
            logger.warning("publish to {} failed: {}", topic, exc)
            return Delivery(None)
        return Delivery(info, self._refusals)

    def subscribe(self, topic: str, qos: int = 0, timeout: float = 5.0) -> bool:
        """Subscribe now (not remembered for reconnects) and wait for the SUBACK."""
        done = threading.Event()
        with self._lock:
            result, mid = self._client.subscribe(topic, qos)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._suback[mid] = done
        return done.wait(timeout)

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription made with `subscribe()`."""
        self._client.unsubscribe(topic)

    def barrier(self, timeout: float = 5.0) -> bool:
        """Wait until every message the broker queued for us before now has arrived.

        The broker answers packets in order, so once the SUBACK of a fresh subscription is
        back, the retained messages of earlier (QoS 0) subscriptions are here too.
        """
        topic = f"$presence-barrier/{secrets.token_hex(6)}"
        ok = self.subscribe(topic, 0, timeout)
        self.unsubscribe(topic)
        return ok

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        # Called before every attempt: a fresh Will per connection (a service's session id).
        if self._will is None:
            return
        will = self._will()
        if will is None:
            client.will_clear()
        else:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Without this, a small QoS 1 round trip waits ~40 ms on delayed ACKs (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            code = _reason_value(reason)
            text = _reason_text(reason)
            hint = " (check username and password)" if code in _NOT_AUTHORISED else ""
            self._refusal = ConnectionRefused(
                f"the MQTT broker at {self.endpoint} refused the connection: {text}{hint}", text
            )
            logger.error("{}: {}", self._label, self._refusal)
            self._answered.set()
            return
        self._refusal = None
        self._failure = None
        self._socket_error = None
        with self._lock:
            self._is_up = True
            if self._subscriptions:
                client.subscribe(self._subscriptions)
        self._connected.set()
        self._answered.set()
        logger.debug("{}: connected to {} as {}", self._label, self.endpoint, self.client_id)
        if self._handler is not None:
            self._handler.on_connected(bool(flags.session_present))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:`: the exception is still current.
        exc = sys.exc_info()[1]
        if exc is not None:
            self._failure = self._describe(exc)
        now = time.monotonic()
        if now - self._fail_logged > 30:  # one line per 30 s while the broker is away
            self._fail_logged = now
            logger.warning(
                "{}: {}; retrying",
                self._label,
                self._failure or f"cannot reach the MQTT broker at {self.endpoint}",
            )

    def note_socket_error(self, text: str) -> None:
        """paho said why a socket broke (see `_SocketErrors`)."""
        prefix = "failed to receive on socket: "
        if text.startswith(prefix):
            self._socket_error = text[len(prefix) :]

    def _closed_early(self) -> BrokerUnreachable:
        """The error for a connection the broker closed before its CONNACK."""
        detail, self._socket_error = self._socket_error, None
        what = f"the MQTT broker at {self.endpoint} closed the connection before answering"
        if detail:
            what += f": {detail}"
        tls = self._broker.tls
        if tls is None:
            return BrokerUnreachable(f"{what} (does this port expect TLS? see broker.tls)")
        alert = re.search(r"\[SSL: (\w+)\]", detail or "")
        if alert is not None:  # the broker said why: no retry will change that
            return TLSFailure(f"{what}: {_with_hint(alert.group(1))}")
        if tls.cert is None:  # the alert may be lost in a TCP reset: say what is likely
            return BrokerUnreachable(
                f"{what} (does the broker require a client certificate? "
                "set broker.tls.cert and broker.tls.key)"
            )
        return BrokerUnreachable(f"{what} (did the broker refuse our client certificate?)")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # paho may report one disconnect twice: act on the first only.
        with self._lock:
            was_up, self._is_up = self._is_up, False
        self._connected.clear()
        if not was_up:
            if self._refusal is None:  # closed before a CONNACK: connect() need not wait on
                self._failure = self._closed_early()
                self._answered.set()
            return
        info = Disconnect(_reason_text(reason), _reason_value(reason) == _TAKEN_OVER)
        logger.debug("{}: disconnected ({})", self._label, info.reason)
        if self._handler is not None:
            self._handler.on_disconnected(info)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            logger.warning("{}: ignoring a message whose topic is not UTF-8", self._label)
            return
        handler.on_message(Message(topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def _deliver(self, topic: str, payload: bytes, retained: bool, received: float) -> None:
        """Where `_speedups` delivers a lean PUBLISH (guarded like every paho callback)."""
        if self._handler is not None:
            self._handler.on_message(Message(topic, payload, retained, received))

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            return
        text = _reason_text(reason)
        if len(self._refusals) > 1000:
            self._refusals.pop(next(iter(self._refusals)))
        self._refusals[mid] = text
        logger.warning("{}: the broker refused a publish: {}", self._label, text)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            done = self._suback.pop(mid, None)
        if done is not None:
            done.set()
        failed = [r for r in reasons if r.is_failure]
        if failed:
            logger.warning("{}: subscription refused: {}", self._label, _reason_text(failed[0]))


class Inbox:
    """A Handler that records messages for one-shot commands and tests (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.messages: list[Message] = []
        self.disconnects: list[Disconnect] = []

    def on_connected(self, session_present: bool) -> None:
        """Nothing to do."""

    def on_disconnected(self, info: Disconnect) -> None:
        """Record it."""
        with self._cond:
            self.disconnects.append(info)
            self._cond.notify_all()

    def on_message(self, message: Message) -> None:
        """Record it and wake waiters."""
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float, start: int = 0
    ) -> Message | None:
        """Return the first message from index `start` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.messages):
                    message = self.messages[index]
                    index += 1
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_disconnected(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` disconnects were recorded."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.disconnects) >= count, timeout)

    def snapshot(self) -> list[Message]:
        """A copy of everything received so far."""
        with self._cond:
            return list(self.messages)


def fetch_retained(
    broker: BrokerSettings, topics: Sequence[str], *, client_id: str, label: str = "snapshot"
) -> list[Message]:
    """Connect, collect the retained messages on `topics` (filters allowed), disconnect.

    Raises our BrokerError subclasses when the broker cannot be reached or refuses us.
    """
    inbox = Inbox()
    conn = Connection(broker, client_id=client_id, handler=inbox, label=label)
    conn.connect()
    try:
        for topic in topics:
            if not conn.subscribe(topic, 0):
                raise BrokerError(f"the broker did not acknowledge a subscription to {topic}")
        if not conn.barrier():
            raise BrokerError("the broker did not acknowledge a subscription in time")
    finally:
        conn.close()
    return [m for m in inbox.snapshot() if m.retained]
