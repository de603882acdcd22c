"""The monitor: one thread owns every service record and drives ping rounds.

paho's callbacks only translate and enqueue (`_Inbound`); the loop thread parses, feeds the pure
state machine (`tracker.step`) and publishes verdicts and events. A ping round counts only if
the monitor's own broadcast came back to it: when the broker (or our link to it) stalls, the
round is void and nobody is blamed for the silence.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from loguru import logger

from presence.clock import Clock, Instant, SystemClock
from presence.errors import BrokerUnreachable, PayloadError, PresenceError
from presence.logs import BadPayloads
from presence.mqtt import Connection, Disconnect, Message, WillMessage, fetch_retained
from presence.protocol import (
    MONITOR,
    Event,
    Ping,
    Status,
    Topics,
    Verdict,
    encode,
    parse_ping,
    parse_pong,
    parse_status,
    parse_verdict,
)
from presence.settings import Settings
from presence.tracker import (
    Answer,
    Effect,
    GraceExpired,
    Limits,
    RoundClosed,
    Service,
    State,
    StateChanged,
    StatusSeen,
    restore,
    step,
)

__all__ = ["Monitor", "MonitorExit"]

_BATCH: Final = 512  # messages handled per wake-up before timers get a look in


class MonitorExit(PresenceError):
    """The monitor cannot go on (another monitor took over, broker refused us...)."""


@dataclass(slots=True)
class _Round:
    seq: int
    sent: Instant
    answers: dict[str, Answer] = field(default_factory=dict)
    echoed: bool = False


@dataclass(frozen=True, slots=True)
class _Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Inbound = Message | _Connected | Disconnect | _Stop


class _Bridge:
    """The Connection's handler: runs on paho's thread and only enqueues."""

    __slots__ = ("_put",)

    def __init__(self, inbox: queue.SimpleQueue[_Inbound]) -> None:
        self._put = inbox.put

    def on_connected(self, session_present: bool) -> None:
        self._put(_Connected(session_present))

    def on_disconnected(self, info: Disconnect) -> None:
        self._put(info)

    def on_message(self, message: Message) -> None:
        self._put(message)


class Monitor:
    """Follows every service's status, runs ping rounds and publishes verdicts."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._clock = clock or SystemClock()
        self._limits = Limits(missed_pongs=settings.monitor.missed_pongs)
        self._interval = settings.monitor.ping_interval
        self._pong_timeout = settings.monitor.pong_timeout
        self._inbox: queue.SimpleQueue[_Inbound] = queue.SimpleQueue()
        self._services: dict[str, Service] = {
            s.name: Service(name=s.name, declared=True) for s in settings.services
        }
        self._published: dict[str, Verdict] = {}
        self._previous: dict[str, Verdict] = {}
        self._rtt: dict[str, float] = {}
        self._rounds: deque[_Round] = deque()
        self._by_seq: dict[int, _Round] = {}
        # Sequence numbers start from the clock so a restarted monitor never accepts late pongs
        # to its predecessor's pings.
        self._seq = int(self._clock.now().wall * 1000)
        self._connected = False
        self._next_round = 0.0
        self._grace_at: float | None = None
        self._session = ""
        self._session_since = 0.0
        self._own_sessions: set[str] = set()
        self._started = round(self._clock.now().wall, 6)
        self._bad = BadPayloads()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.exit_error: MonitorExit | None = None
        t = self.topics
        self._conn = Connection(
            settings.broker,
            client_id=settings.monitor_client_id,
            handler=_Bridge(self._inbox),
            subscriptions=[
                (t.wildcard("status"), 1),
                (t.wildcard("pong"), 0),
                (t.monitor_ping, 0),
            ],
            persistent=True,
            session_expiry=settings.monitor.session_expiry,
            will=self._new_session,
            label="monitor",
        )

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Connect and run the loop in this thread until `stop()`; raise MonitorExit on a fatal
        condition. Connection problems at start-up other than refusal are retried."""
        self._load_previous()
        try:
            self._conn.connect()
        except BrokerUnreachable as exc:
            if self.settings.broker.tls is not None:
                raise MonitorExit(str(exc)) from exc  # a TLS failure will not heal by waiting
            logger.warning("{}; will keep trying", exc)
            self._conn.start()
        except PresenceError as exc:
            raise MonitorExit(str(exc)) from exc
        now = self._clock.now()
        self._grace_at = now.mono + self.settings.monitor.startup_grace
        logger.info(
            "monitor up: broker {}, prefix {!r}, ping every {} s, {} declared services",
            self._conn.endpoint,
            self.settings.topic_prefix,
            self._interval,
            len(self._services),
        )
        try:
            self._loop()
        finally:
            self._goodbye()

    def _load_previous(self) -> None:
        """Read the verdicts a predecessor left (retained) before our own session starts.

        A separate, short connection: on the persistent session, queued status changes would
        arrive before any retained verdict, too late to compare them with.
        """
        try:
            retained = fetch_retained(
                self.settings.broker,
                [self.topics.verdicts],
                client_id=f"{self.settings.monitor_client_id}-sync",
                label="monitor-sync",
            )
        except BrokerUnreachable as exc:
            logger.warning("could not read earlier verdicts ({}); starting afresh", exc)
            return
        except PresenceError as exc:
            raise MonitorExit(str(exc)) from exc
        for message in retained:
            parts = self.topics.split(message.topic)
            if parts is None or not message.payload:
                continue
            try:
                verdict = parse_verdict(message.payload)
            except PayloadError as exc:
                self._bad.report(message.topic, exc)
                continue
            self._previous[parts[0]] = verdict
            self._published[parts[0]] = verdict
        logger.info("read {} earlier verdicts", len(self._previous))

    @property
    def session(self) -> str:
        """The session id of the monitor's current connection."""
        return self._session

    def start(self) -> Monitor:
        """Run in a background thread (tests, embedding); `stop()` ends it."""
        self._thread = threading.Thread(target=self._run_guarded, name="presence-monitor")
        self._thread.start()
        return self

    def _run_guarded(self) -> None:
        try:
            self.run()
        except MonitorExit as exc:
            self.exit_error = exc
            logger.error("monitor stopped: {}", exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end; it publishes the monitor's graceful offline and disconnects."""
        self._stopping.set()
        self._inbox.put(_Stop())
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _new_session(self) -> WillMessage:
        # Runs on whichever thread connects; the loop thread reads these after _Connected.
        self._session = secrets.token_hex(8)
        self._session_since = round(self._clock.now().wall, 3)
        self._own_sessions.add(self._session)
        will = Status("offline", self._session, self._session_since, reason="lost")
        return WillMessage(self.topics.monitor_status, encode(will), qos=1, retain=True)

    def _goodbye(self) -> None:
        # After losing to another monitor the status topic is theirs: leave it alone.
        if self._conn.connected and self.exit_error is None:
            status = Status(
                "offline",
                self._session,
                self._session_since,
                reason="shutdown",
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            self._conn.publish(self.topics.monitor_status, encode(status), 1, True).wait(2.0)
        self._conn.close()
        logger.info("monitor stopped")

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        inbox = self._inbox
        while not self._stopping.is_set():
            now = self._clock.now()
            self._timers(now)
            wait = max(0.0, self._next_deadline(now) - now.mono)
            try:
                item = inbox.get(timeout=wait)
            except queue.Empty:
                continue
            for _ in range(_BATCH):
                if isinstance(item, Message):
                    self._on_message(item)
                elif isinstance(item, _Stop):
                    return
                else:
                    self._on_link(item)
                if self.exit_error is not None:
                    raise self.exit_error
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break

    def _next_deadline(self, now: Instant) -> float:
        deadlines = [now.mono + 1.0]
        if self._connected:
            deadlines.append(self._next_round)
        if self._rounds:
            deadlines.append(self._rounds[0].sent.mono + self._pong_timeout)
        if self._grace_at is not None:
            deadlines.append(self._grace_at)
        return min(deadlines)

    def _timers(self, now: Instant) -> None:
        while self._rounds and self._rounds[0].sent.mono + self._pong_timeout <= now.mono:
            self._close_round(self._rounds.popleft(), now)
        if self._connected and now.mono >= self._next_round:
            self._send_round(now)
            # Keep the cadence; after a long stall, start afresh rather than catch up.
            self._next_round = max(self._next_round + self._interval, now.mono + self._interval / 2)
        if self._grace_at is not None and now.mono >= self._grace_at:
            self._grace_at = None
            for name in list(self._services):
                self._feed(name, GraceExpired(), now)

    def _send_round(self, now: Instant) -> None:
        self._seq += 1
        rnd = _Round(self._seq, now)
        self._rounds.append(rnd)
        self._by_seq[rnd.seq] = rnd
        self._conn.publish(self.topics.monitor_ping, encode(Ping(rnd.seq, round(now.wall, 3))))

    def _close_round(self, rnd: _Round, now: Instant) -> None:
        self._by_seq.pop(rnd.seq, None)
        if not rnd.echoed:
            # Our own ping never came back: the broker or our link stalled, so silence from the
            # services proves nothing about them.
            logger.warning("ping round {} did not come back from the broker; not counted", rnd.seq)
            return
        answers = rnd.answers
        sent = rnd.sent.mono
        published = self._published
        for name, svc in list(self._services.items()):
            if svc.connected:
                answer = answers.get(name)
                self._feed(name, RoundClosed(sent, answer), now)
                verdict = published.get(name)
                if answer is not None and verdict is not None and verdict.rtt_ms is None:
                    # The first round trip of a session: worth a verdict of its own.
                    self._commit(name, self._services[name], (), now)

    # -- inbound ---------------------------------------------------------------------------

    def _on_link(self, item: _Connected | Disconnect) -> None:
        if isinstance(item, _Connected):
            self._connected = True
            self._next_round = self._clock.now().mono + self._interval
            logger.info("monitor connected (session present: {})", item.session_present)
            birth = Status(
                "online",
                self._session,
                self._session_since,
                host=socket.gethostname(),
                pid=os.getpid(),
                started=self._started,
            )
            self._conn.publish(self.topics.monitor_status, encode(birth), 1, True)
            return
        self._connected = False
        # Rounds in flight can no longer be judged: drop them unjudged.
        self._rounds.clear()
        self._by_seq.clear()
        if item.taken_over:
            self.exit_error = MonitorExit(
                f"another monitor connected with client id {self.settings.monitor_client_id!r}; "
                "two monitors on one id would knock each other off forever, so this one exits"
            )
            return
        logger.warning("monitor lost the broker ({}); reconnecting", item.reason)

    def _on_message(self, message: Message) -> None:
        parts = self.topics.split(message.topic)
        if parts is None:
            return
        name, leaf = parts
        try:
            if leaf == "pong":
                self._on_pong(name, message)
            elif leaf == "status":
                if name == MONITOR:
                    self._on_monitor_status(message)
                else:
                    self._on_status(name, message)
            elif leaf == "ping" and name == MONITOR:
                rnd = self._by_seq.get(parse_ping(message.payload).seq)
                if rnd is not None:
                    rnd.echoed = True
        except PayloadError as exc:
            if message.payload:  # an empty retained payload just clears a topic
                self._bad.report(message.topic, exc)

    def _on_pong(self, name: str, message: Message) -> None:
        pong = parse_pong(message.payload)
        rnd = self._by_seq.get(pong.seq)
        if rnd is None:
            return  # a late pong, or an answer to someone else's targeted ping
        svc = self._services.get(name)
        if svc is None or pong.session != svc.session:
            return  # from a session we do not (or no longer) believe in
        delay = message.received - rnd.sent.mono
        if delay > self._pong_timeout:
            return
        detail = dict(pong.detail) if pong.detail is not None else None
        rnd.answers[name] = Answer(pong.ok, detail)
        self._rtt[name] = round(max(delay, 0.0) * 1000, 3)

    def _on_status(self, name: str, message: Message) -> None:
        status = parse_status(message.payload)
        now = self._clock.now()
        svc = self._services.get(name)
        if svc is None:
            svc = Service(name=name)
            self._services[name] = svc
        new, effects = step(svc, StatusSeen(status), now, self._limits)
        previous = self._previous.pop(name, None)
        if previous is not None and svc.state == State.UNKNOWN:
            new, effects = restore(new, previous, self._limits)
        self._commit(name, new, effects, now)

    def _on_monitor_status(self, message: Message) -> None:
        status = parse_status(message.payload)
        if status.state != "online" or status.session in self._own_sessions:
            return
        # Another monitor's birth, from a process started after ours: it is running now, on
        # our prefix (and usually our client id, so the broker keeps kicking one of us off).
        # The newcomer stays, as an MQTT session takeover would have it; we leave. An older
        # monitor's birth may be a stale leftover; if that monitor lives, it sees ours and goes.
        started = status.started if status.started is not None else status.since
        if (started, status.session) > (self._started, self._session):
            self.exit_error = MonitorExit(
                f"another monitor (host {status.host}, pid {status.pid}) started on this "
                "broker and prefix; this one exits (stop the other, or give one of them "
                "another topic_prefix and client_id)"
            )

    # -- state changes ---------------------------------------------------------------------

    def _feed(
        self, name: str, event: StatusSeen | RoundClosed | GraceExpired, now: Instant
    ) -> None:
        svc = self._services[name]
        new, effects = step(svc, event, now, self._limits)
        if new is not svc:
            self._commit(name, new, effects, now)

    def _commit(self, name: str, svc: Service, effects: tuple[Effect, ...], now: Instant) -> None:
        self._services[name] = svc
        for effect in effects:
            if isinstance(effect, StateChanged):
                self._publish_event(effect, now)
        verdict = self._verdict(svc)
        if self._published.get(name) != verdict:
            self._published[name] = verdict
            self._conn.publish(self.topics.verdict(name), encode(verdict), qos=1, retain=True)

    def _verdict(self, svc: Service) -> Verdict:
        extra: dict[str, object] = {}
        if svc.exit_code is not None:
            extra["exit_code"] = svc.exit_code
        if svc.signal is not None:
            extra["signal"] = svc.signal
        if svc.detail is not None:
            extra["detail"] = svc.detail
        if svc.group is not None:
            extra["group"] = svc.group
        return Verdict(
            service=svc.name,
            state=svc.state.value,
            since=svc.since,
            session=svc.session,
            reason=svc.reason,
            missed=svc.missed,
            rtt_ms=self._rtt.get(svc.name) if svc.connected else None,
            restarts=svc.restarts,
            extra=extra or None,
        )

    def _publish_event(self, change: StateChanged, now: Instant) -> None:
        logger.info(
            "{}: {} -> {} ({})",
            change.service,
            change.from_state.value,
            change.to_state.value,
            change.reason,
        )
        event = Event(
            ts=round(now.wall, 3),
            service=change.service,
            from_state=change.from_state.value,
            to_state=change.to_state.value,
            reason=change.reason,
        )
        self._conn.publish(self.topics.events, encode(event), qos=1)
