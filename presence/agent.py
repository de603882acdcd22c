"""The service side: birth and Last Will on the status topic, pongs from the app's own context.

A threaded app calls `beat()` from its main loop; pongs go out only while the last beat is
fresher than `beat_timeout`, so a deadlocked main loop stops answering even though paho's
network thread keeps the socket (and so the Will) alive. An asyncio app uses `AsyncAgent`,
whose pongs are produced on its event loop. A health callback, when given, decides `ok`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final, TypeAlias

from loguru import logger

from presence.errors import (
    BrokerUnreachable,
    ConnectionRefused,
    DuplicateServiceError,
    PayloadError,
)
from presence.logs import BadPayloads
from presence.mqtt import Connection, Delivery, Disconnect, Message, WillMessage
from presence.protocol import (
    MAX_PAYLOAD,
    Pong,
    Status,
    Topics,
    encode,
    parse_ping,
    parse_status,
    validate_name,
)
from presence.settings import BrokerSettings

__all__ = ["Agent", "AsyncAgent", "HealthResult", "Phase"]

#: What a health callback returns: ok, or (ok, detail).
HealthResult: TypeAlias = bool | tuple[bool, Mapping[str, Any]]
_DETAIL_LIMIT: Final = MAX_PAYLOAD // 2


class Phase(Enum):
    """The agent's lifecycle."""

    #: Created, `start()` not called yet.
    IDLE = "idle"
    #: Connecting, or connected with our birth not yet seen back from the broker.
    CONNECTING = "connecting"
    #: Birth out, but the status topic held another session's birth: waiting `confirm_timeout`
    #: for that session to prove it is alive (it would re-assert its birth).
    CHALLENGING = "challenging"
    #: Established: our birth is the live one.
    ONLINE = "online"
    #: Another live agent holds the name and won; we disconnected without a Will.
    CONFLICT = "conflict"
    #: `stop()` ran: graceful offline published, disconnected.
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class _Session:
    id: str
    since: float


def _normalise(result: object) -> tuple[bool, dict[str, Any] | None]:
    """Turn a health callback's result into (ok, detail), refusing odd shapes."""
    if isinstance(result, bool):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        ok, detail = result
        if isinstance(detail, Mapping):
            data = dict(detail)
            try:
                size = len(json.dumps(data, allow_nan=False))
            except (TypeError, ValueError) as exc:
                return False, {"error": f"health detail is not JSON: {exc}"}
            if size > _DETAIL_LIMIT:
                return ok, {
                    "error": f"health detail of {size} bytes dropped (limit {_DETAIL_LIMIT})"
                }
            return ok, data
    return False, {"error": f"health callback returned {type(result).__name__}, not bool"}


class _HealthWorker:
    """Runs the health callback off paho's thread, with a timeout.

    Python cannot kill a thread, so a callback that overruns is reported (ok:false) to pings
    that arrive meanwhile rather than waited for.
    """

    def __init__(
        self,
        health: Callable[[], HealthResult],
        timeout: float,
        answer: Callable[[int, str, bool, dict[str, Any] | None], None],
    ) -> None:
        self._health = health
        self._timeout = timeout
        self._answer = answer
        self._cond = threading.Condition()
        self._pending: tuple[int, str] | None = None
        self._started: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="presence-health", daemon=True)
        self._thread.start()

    def request(self, seq: int, session: str) -> None:
        with self._cond:
            started = self._started
            if started is not None and time.monotonic() - started > self._timeout:
                overdue = time.monotonic() - started
            else:
                self._pending = (seq, session)
                self._cond.notify()
                return
        detail = {"error": f"health check still running after {overdue:.1f} s"}
        self._answer(seq, session, False, detail)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                assert self._pending is not None  # noqa: S101 (loop condition)
                seq, session = self._pending
                self._pending = None
                self._started = time.monotonic()
            try:
                ok, detail = _normalise(self._health())
            except Exception as exc:  # noqa: BLE001 (a failing check is a result, not a crash)
                ok, detail = False, {"error": f"health check raised {type(exc).__name__}: {exc}"}
            with self._cond:
                elapsed = time.monotonic() - (self._started or 0.0)
                self._started = None
            if elapsed > self._timeout:
                ok, detail = False, {"error": f"health check took {elapsed:.1f} s"}
            self._answer(seq, session, ok, detail)


_instances: dict[str, int] = {}
_instances_lock = threading.Lock()
# Drawn once per process: reconnects reuse the id, other clients cannot guess it (an
# authenticated user who knows a client id can knock that connection off the broker).
_PROCESS_TOKEN: Final = secrets.token_hex(4)


def _client_id(name: str, host: str, pid: int) -> str:
    """Stable for the process, so a reconnect takes over its own half-dead session at once.

    A second agent for the same name in one process gets a suffix: one client id shared by two
    connections would have them knock each other off forever.
    """
    with _instances_lock:
        n = _instances.get(name, 0)
        _instances[name] = n + 1
    suffix = f"-{n}" if n else ""
    return f"presence-{name}-{host[:24]}-{pid}{suffix}-{_PROCESS_TOKEN}"


class Agent:
    """Presence for one service: birth/Will on `P/<name>/status` and pongs on `P/<name>/pong`.

    Use as a context manager or call `start()`/`stop()`. Thread-safe.
    """

    def __init__(
        self,
        name: str,
        broker: BrokerSettings,
        *,
        prefix: str = "presence",
        health: Callable[[], HealthResult] | None = None,
        health_timeout: float = 2.0,
        beat_timeout: float | None = None,
        group: str | None = None,
        confirm_timeout: float = 1.0,
        on_conflict: Callable[[DuplicateServiceError], None] | None = None,
        on_command: Callable[[Message], None] | None = None,
    ) -> None:
        self.name = validate_name(name)
        self.group = validate_name(group) if group is not None else None
        self.topics = Topics(prefix)
        self._status_topic = self.topics.status(name)
        self._pong_topic = self.topics.pong(name)
        self._ping_topics = frozenset({self.topics.ping(name), self.topics.monitor_ping})
        self._cmd_topic = self.topics.cmd(name)
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._beat_timeout = beat_timeout
        self._confirm_timeout = confirm_timeout
        self._on_conflict = on_conflict
        self._on_command = on_command
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._phase = Phase.IDLE
        self._session: _Session | None = None
        self._own_sessions: set[str] = set()
        self._echoed = False
        self._rival: Status | None = None
        self._conflict: DuplicateServiceError | None = None
        self._announced: Status | None = None
        # Set while a runner's program is down: (reason, exit_code, signal).
        self._down: tuple[str, int | None, int | None] | None = None
        self._birth_delivery: Delivery | None = None
        self._incarnation = 0
        self._service_pid: int | None = None
        self._last_beat = time.monotonic()
        self._junk_healed = float("-inf")
        self._junk_timer: threading.Timer | None = None
        self._bad = BadPayloads()
        self._answer_hook: Callable[[int, str], bool] | None = None
        self._health = (
            _HealthWorker(health, health_timeout, self._send_pong) if health is not None else None
        )
        subscriptions = [(self._status_topic, 1), *((t, 0) for t in sorted(self._ping_topics))]
        if on_command is not None:
            subscriptions.append((self._cmd_topic, 1))
        self._conn = Connection(
            broker,
            client_id=_client_id(name, self._host, self._pid),
            handler=self,
            subscriptions=subscriptions,
            keep_retain_flag={self._cmd_topic},
            will=self._new_session,
            label=f"agent[{name}]",
        )

    # -- public API ------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the agent is in its lifecycle."""
        return self._phase

    @property
    def session(self) -> str | None:
        """The current connection's session id."""
        session = self._session
        return session.id if session else None

    @property
    def conflict(self) -> DuplicateServiceError | None:
        """Set when another live agent holds the name and this one gave way."""
        return self._conflict

    @property
    def connection(self) -> Connection:
        """The underlying MQTT connection (for publishing on the service's other topics)."""
        return self._conn

    def start(self, wait: float | None = 10.0) -> Agent:
        """Connect and announce. With `wait`, block until established and raise on failure:
        `DuplicateServiceError` if the name is taken, `ConnectionRefused` for bad credentials,
        `BrokerUnreachable` if the broker cannot be reached in time. With `wait=None`, return at
        once and keep trying in the background (the broker may come later)."""
        with self._lock:
            if self._phase != Phase.IDLE:
                raise RuntimeError("an Agent can be started once")
            self._phase = Phase.CONNECTING
            self._last_beat = time.monotonic()
        self._conn.start()
        if wait is None:
            return self
        deadline = time.monotonic() + wait
        with self._changed:
            while self._phase in (Phase.CONNECTING, Phase.CHALLENGING):
                refusal = self._conn.refusal
                remaining = deadline - time.monotonic()
                if refusal is not None or remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            phase = self._phase
        if phase == Phase.CONFLICT and self._conflict is not None:
            self._shutdown(publish=False)
            raise self._conflict
        if phase != Phase.ONLINE:
            refusal = self._conn.refusal
            birth = self._birth_delivery
            self._shutdown(publish=False)
            if refusal is not None:
                raise refusal
            if birth is not None and birth.refusal is not None:
                raise ConnectionRefused(
                    f"the broker refused {self.name!r}'s birth on {self._status_topic}: "
                    f"{birth.refusal}; the MQTT user must be named like the service, or the ACL "
                    "must let it write that topic",
                    birth.refusal,
                )
            failure = self._conn.failure
            raise BrokerUnreachable(
                f"agent {self.name!r} could not come online via {self._conn.endpoint} in {wait} s"
                + (f": {failure}" if failure is not None else "")
            )
        return self

    def wait_online(self, timeout: float) -> bool:
        """Block until the agent is established (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._phase != Phase.ONLINE:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._phase in (Phase.CONFLICT, Phase.STOPPED):
                    return False
                self._changed.wait(remaining)
            return True

    def beat(self) -> None:
        """Tell the agent the application's main loop is alive (call it from that loop)."""
        self._last_beat = time.monotonic()

    def stop(self, reason: str = "shutdown", timeout: float = 2.0, *, publish: bool = True) -> None:
        """Publish a graceful offline (state `stopped` at the monitor) and disconnect.

        With `publish=False` the last announcement stays (a runner whose program failed to
        start leaves its `exited`). After a name conflict nothing is published: the status
        topic belongs to the winner."""
        self._shutdown(publish=publish, reason=reason, timeout=timeout)

    def announce(
        self,
        *,
        online: bool,
        incarnation: int | None = None,
        pid: int | None = None,
        reason: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
    ) -> None:
        """Re-announce on the status topic while staying connected (used by `presence run`).

        `online=True` publishes a birth (a new `incarnation` of the program, with its `pid`);
        `online=False` publishes an offline with `reason` (e.g. `exited` with the exit code).
        """
        with self._lock:
            if incarnation is not None:
                self._incarnation = incarnation
            if pid is not None:
                self._service_pid = pid
            # Remembered, so a reconnection announces the same thing for its new session.
            self._down = None if online else (reason or "exited", exit_code, signal)
        self._publish_current()

    def set_answer_hook(self, hook: Callable[[int, str], bool] | None) -> None:
        """Let another context answer pings: `hook(seq, session)` returns True if it took it."""
        self._answer_hook = hook

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        with self._changed:
            self._phase = phase
            self._changed.notify_all()

    def _new_session(self) -> WillMessage:
        """Called before every connection attempt: a fresh session and its matching Will."""
        with self._lock:
            if self._session is not None:
                self._own_sessions.add(self._session.id)
            session = _Session(secrets.token_hex(8), round(time.time(), 3))
            self._session = session
            self._echoed = False
            self._rival = None
        will = Status(state="offline", session=session.id, since=session.since, reason="lost")
        return WillMessage(self._status_topic, encode(will), qos=1, retain=True)

    def _current(self, session: _Session) -> Status:
        """What this connection announces: a birth, or the program's exit (runner)."""
        down = self._down
        return Status(
            state="online" if down is None else "offline",
            session=session.id,
            since=session.since,
            reason=None if down is None else down[0],
            host=self._host,
            pid=self._service_pid or self._pid,
            incarnation=self._incarnation,
            exit_code=None if down is None else down[1],
            signal=None if down is None else down[2],
            group=self.group,
        )

    def _publish_current(self) -> None:
        with self._lock:
            session = self._session
            if session is None or self._phase in (Phase.CONFLICT, Phase.STOPPED):
                return
            status = self._current(session)
            self._announced = status
        delivery = self._conn.publish(self._status_topic, encode(status), qos=1, retain=True)
        self._birth_delivery = delivery

    def _shutdown(self, *, publish: bool, reason: str = "shutdown", timeout: float = 2.0) -> None:
        with self._lock:
            if self._phase == Phase.STOPPED:
                return
            was = self._phase
            session = self._session
            self._phase = Phase.STOPPED
        if publish and session is not None and was != Phase.CONFLICT and self._conn.connected:
            status = Status(state="offline", session=session.id, since=session.since, reason=reason)
            self._conn.publish(self._status_topic, encode(status), qos=1, retain=True).wait(timeout)
        self._conn.close()
        if self._health is not None:
            self._health.close()
        self._set_phase(Phase.STOPPED)

    def _lose(self, winner: Status) -> None:
        """Another live agent holds the name and wins the tie-break: give way without a Will."""
        error = DuplicateServiceError(self.name, winner.session, winner.host, winner.pid)
        with self._lock:
            if self._phase in (Phase.CONFLICT, Phase.STOPPED):
                return
            self._conflict = error
        logger.error("{}", error)
        self._set_phase(Phase.CONFLICT)
        # A clean DISCONNECT: no Will, so the winner's status is left alone. (We are on paho's
        # thread, which cannot join itself; stop() or start() does the joining.)
        self._conn.disconnect()
        if self._on_conflict is not None:
            self._on_conflict(error)

    # -- Handler (paho's network thread) ---------------------------------------------------

    def on_connected(self, session_present: bool) -> None:  # noqa: ARG002 (Handler protocol)
        """Publish the birth of this connection's session."""
        with self._lock:
            if self._phase in (Phase.CONFLICT, Phase.STOPPED):
                return
        self._set_phase(Phase.CONNECTING)
        self._publish_current()

    def on_disconnected(self, info: Disconnect) -> None:
        """paho reconnects by itself; note that we are no longer established."""
        with self._lock:
            if self._phase in (Phase.CONFLICT, Phase.STOPPED):
                return
        logger.warning("agent {}: connection lost ({}); reconnecting", self.name, info.reason)
        self._set_phase(Phase.CONNECTING)

    def on_message(self, message: Message) -> None:
        """Dispatch by topic."""
        topic = message.topic
        if topic in self._ping_topics:
            self._on_ping(message)
        elif topic == self._status_topic:
            self._on_status(message)
        elif topic == self._cmd_topic and self._on_command is not None:
            self._on_command(message)

    def _on_status(self, message: Message) -> None:  # noqa: PLR0912 (a branch per case of the rule)
        try:
            status = parse_status(message.payload)
        except PayloadError as exc:
            self._bad.report(message.topic, exc)
            # Junk (or an emptied retained message) now stands where our birth should be. Put
            # it back: at once, or (within a second of the last repair, so a junk flood is not
            # amplified) at the end of that second; never simply dropped.
            if self._echoed and self._phase == Phase.ONLINE:
                self._heal_junk()
            return
        heal = False
        winner: Status | None = None
        with self._lock:
            session = self._session
            if session is None or self._phase in (Phase.CONFLICT, Phase.STOPPED):
                return
            if status.session == session.id:
                if not self._echoed:
                    self._echoed = True
                    self._after_echo(session)
                elif status.state == "offline" and status != self._announced and not self._down:
                    heal = True  # someone published our session as offline: not true
            elif status.session in self._own_sessions:
                # A late Will of one of our own earlier connections overwrote the topic.
                heal = status.state == "offline"
            elif status.state == "offline" and status.reason != "exited":
                # Another session's death (a stale Will): re-assert, once our birth is out.
                # (An `exited` comes from a live runner whose program is down: a claim.)
                heal = self._echoed
            elif not self._echoed:
                self._rival = status  # was there before us (retained) or races with us
            elif (session.since, session.id) < (status.since, status.session):
                heal = True  # a live newcomer: we were first, re-assert and it gives way
            else:
                winner = status  # a live agent that was first: we give way
        if winner is not None:
            self._lose(winner)
        elif heal:
            logger.info("agent {}: status topic said otherwise; re-publishing birth", self.name)
            self._publish_current()

    def _heal_junk(self) -> None:
        with self._lock:
            if self._junk_timer is not None:
                return  # a repair is already due
            wait = self._junk_healed + 1.0 - time.monotonic()
            if wait > 0:
                self._junk_timer = threading.Timer(wait, self._heal_junk_now)
                self._junk_timer.daemon = True
                self._junk_timer.start()
                return
            self._junk_healed = time.monotonic()
        self._publish_current()

    def _heal_junk_now(self) -> None:
        with self._lock:
            self._junk_timer = None
            self._junk_healed = time.monotonic()
        self._publish_current()

    def _after_echo(self, session: _Session) -> None:
        """Our birth is back from the broker (lock held)."""
        if self._rival is None:
            self._set_phase(Phase.ONLINE)
            return
        logger.info(
            "agent {}: status topic held session {} ({}); checking whether it is alive",
            self.name,
            self._rival.session,
            self._rival.host,
        )
        self._set_phase(Phase.CHALLENGING)
        timer = threading.Timer(self._confirm_timeout, self._confirm, args=(session.id,))
        timer.daemon = True
        timer.start()

    def _confirm(self, session_id: str) -> None:
        with self._lock:
            if self._phase == Phase.CHALLENGING and self.session == session_id:
                logger.info("agent {}: the earlier session did not answer; it is stale", self.name)
                self._set_phase(Phase.ONLINE)

    def _on_ping(self, message: Message) -> None:
        try:
            ping = parse_ping(message.payload)
        except PayloadError as exc:
            self._bad.report(message.topic, exc)
            return
        session = self._session
        if session is None or self._phase not in (
            Phase.CONNECTING,
            Phase.CHALLENGING,
            Phase.ONLINE,
        ):
            return
        hook = self._answer_hook
        if hook is not None and hook(ping.seq, session.id):
            return
        stale = time.monotonic() - self._last_beat
        if self._beat_timeout is not None and stale > self._beat_timeout:
            return  # the app's main loop is stuck: stay silent, the monitor will see it
        if self._health is None:
            self._send_pong(ping.seq, session.id, True, None)
        else:
            self._health.request(ping.seq, session.id)

    def _send_pong(self, seq: int, session: str, ok: bool, detail: dict[str, Any] | None) -> None:
        pong = Pong(seq=seq, session=session, ok=ok, detail=detail)
        self._conn.publish(self._pong_topic, encode(pong), qos=0)


class AsyncAgent:
    """An Agent for asyncio apps: pongs (and async health checks) run on the event loop.

    `async with AsyncAgent(name, broker) as agent: ...` — if the loop is blocked, no pong.
    """

    def __init__(
        self,
        name: str,
        broker: BrokerSettings,
        *,
        health: Callable[[], Awaitable[HealthResult] | HealthResult] | None = None,
        health_timeout: float = 2.0,
        **kwargs: Any,
    ) -> None:
        self._health = health
        self._health_timeout = health_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.agent = Agent(name, broker, **kwargs)
        self.agent.set_answer_hook(self._hook)

    def _hook(self, seq: int, session: str) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return True  # no loop, no pong
        loop.call_soon_threadsafe(self._spawn, seq, session)
        return True

    def _spawn(self, seq: int, session: str) -> None:
        task = asyncio.ensure_future(self._answer(seq, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, seq: int, session: str) -> None:
        ok: bool
        detail: dict[str, Any] | None
        if self._health is None:
            ok, detail = True, None
        else:
            try:
                result = self._health()
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self._health_timeout)
                ok, detail = _normalise(result)
            except TimeoutError:
                ok, detail = False, {"error": f"health check took over {self._health_timeout} s"}
            except Exception as exc:  # noqa: BLE001 (a failing check is a result, not a crash)
                ok, detail = False, {"error": f"health check raised {type(exc).__name__}: {exc}"}
        self.agent._send_pong(seq, session, ok, detail)

    async def start(self, wait: float | None = 10.0) -> AsyncAgent:
        """Bind to the running loop and start the agent (in a worker thread: it blocks)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.agent.start, wait)
        return self

    async def stop(self, reason: str = "shutdown") -> None:
        """Graceful offline and disconnect."""
        await asyncio.to_thread(self.agent.stop, reason)
        self._loop = None

    async def __aenter__(self) -> AsyncAgent:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
