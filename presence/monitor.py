"""The monitor: one thread owns every service record and drives ping rounds and recovery.

paho's callbacks and the action workers only enqueue (`_Inbound`); the loop thread parses,
feeds the pure state machines (`tracker.step` for detection, `policy.step` for recovery) and
carries out their effects: publish verdicts and events, start restart actions, hand alerts to
the sinks' workers. A ping round counts only if the monitor's own broadcast came back to it:
when the broker (or our link to it) stalls, the round is void and nobody is blamed for the
silence.
"""

from __future__ import annotations

import os
import queue
import random
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from loguru import logger

from presence._version import __version__
from presence.actions import Outcome
from presence.alerts import Alerter, Observation
from presence.clock import Clock, Instant, SystemClock
from presence.devices import Devices
from presence.errors import BrokerUnreachable, PayloadError, PresenceError, TLSFailure
from presence.logs import BadPayloads
from presence.mqtt import Connection, Disconnect, Message, WillMessage, fetch_retained
from presence.outbox import Outbox
from presence.policy import (
    Recovery,
)
from presence.protocol import (
    MONITOR,
    Event,
    Status,
    Topics,
    Verdict,
    encode,
    parse_ping,
    parse_pong,
    parse_status,
    parse_verdict,
)
from presence.recovery import Recoverer
from presence.rounds import Round, Rounds
from presence.selfcheck import Notifier, SelfCheck
from presence.settings import Settings
from presence.surfaces import Surfaces
from presence.tracker import Event as DetectionEvent
from presence.tracker import (
    GraceExpired,
    Limits,
    RoundClosed,
    Service,
    State,
    StatusSeen,
    restore,
    step,
)
from presence.verdicts import build_verdict

__all__ = ["Monitor", "MonitorExit"]

_BATCH: Final = 512  # messages handled per wake-up before timers get a look in
# Unacknowledged messages above which verdicts and events wait in the outbox (the latest
# verdict per service wins): ~0.1 s of QoS 1 round trips on loopback, far above anything but
# a burst.
_BACKLOG: Final = 1000
_FLUSH_EVERY: Final = 0.01  # seconds between outbox flushes while messages wait
_OPERATOR_COMMANDS: Final = frozenset({"reset", "restart", "pause", "resume"})
_IDLE: Final = Recovery()


class MonitorExit(PresenceError):
    """The monitor cannot go on (another monitor took over, broker refused us...).

    `code` is the process exit code the CLI uses: 3 broker, 4 another monitor, 5 self-check.
    """

    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class _Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class _ActionDone:
    name: str
    token: int
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Inbound = Message | _Connected | Disconnect | _ActionDone | _Stop


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
    """Follows every service's status, runs ping rounds, publishes verdicts and recovers.

    `env` is the environment handed to restart actions and exec alert sinks (the CLI passes
    its own minus PRESENCE_* variables, so the monitor's broker password never leaks to them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        rand: Callable[[], float] | None = None,
        notify_socket: str | None = None,
        inject_fault: str | None = None,
    ) -> None:
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
        self._rounds = Rounds(int(self._clock.now().wall * 1000), self._pong_timeout)
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
        self._received: float | None = None  # when the message being handled arrived (mono)
        self._selfcheck = SelfCheck(
            rounds=settings.monitor.self_check_rounds,
            silent_limit=max(4.0 * settings.broker.keepalive, 3 * self._interval),
        )
        self._notifier = Notifier(notify_socket)
        self._seen_own_round = False
        self._heal_due: float | None = None
        self._healed = float("-inf")
        self._inject = inject_fault
        self._last_pong: dict[str, float] = {}
        self._pressed: dict[str, float] = {}
        self._devices = Devices(settings.services, self._publish)
        self._surfaces = Surfaces(settings, self.topics, self._publish, __version__)
        self._ha_button = f"{self.topics.prefix}/{MONITOR}/ha/"
        self._head = f"{self.topics.prefix}/"  # `P/<name>/pong`: the name starts after it
        self._recovery = Recoverer(
            settings,
            self._services,
            publish=self._publish,
            changed=self._commit,
            action_done=lambda name, token, outcome: self._inbox.put(
                _ActionDone(name, token, outcome)
            ),
            rand=rand or random.Random().random,  # noqa: S311 (jitter, not secrets)
            env=env,
            publish_wait=self._publish_wait,
            forget=self._forget,
            observer=self._surfaces.action,
            started=self._started,
        )
        self._alerter = Alerter(settings.alerts, env=env)
        t = self.topics
        self._conn = Connection(
            settings.broker,
            client_id=settings.monitor_client_id,
            handler=_Bridge(self._inbox),
            subscriptions=[
                (t.wildcard("status"), 1),
                (t.wildcard("pong"), 0),
                (t.monitor_ping, 0),
                (t.wildcard("ack"), 1),
                (t.monitor_cmd, 1),
                *self._devices.subscriptions(),
                *self._ha_subscriptions(),
            ],
            keep_retain_flag={t.monitor_cmd},
            persistent=True,
            session_expiry=settings.monitor.session_expiry,
            will=self._new_session,
            label="monitor",
        )
        self._outbox = Outbox(self._publish_qos1, self._conn.backlog, _BACKLOG)

    def _ha_subscriptions(self) -> list[tuple[str, int]]:
        status = self._surfaces.ha_status_topic
        if status is None:
            return []
        return [(status, 1), (f"{self._ha_button}+/restart", 0)]

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Connect and run the loop in this thread until `stop()`; raise MonitorExit on a fatal
        condition. Connection problems at start-up other than refusal are retried."""
        self._load_previous()
        try:
            self._conn.connect()
        except TLSFailure as exc:
            raise MonitorExit(str(exc)) from exc  # a TLS failure will not heal by waiting
        except BrokerUnreachable as exc:
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
                [self.topics.verdicts, self._recovery.executed_topic],
                client_id=f"{self.settings.monitor_client_id}-sync",
                label="monitor-sync",
            )
        except BrokerUnreachable as exc:
            logger.warning("could not read earlier verdicts ({}); starting afresh", exc)
            return
        except PresenceError as exc:
            raise MonitorExit(str(exc)) from exc
        for message in retained:
            if message.topic == self._recovery.executed_topic:
                self._recovery.remember_executed(message.payload)
                continue
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
        self._notifier.stopping()
        self._notifier.close()
        self._recovery.close()
        self._surfaces.close()
        self._alerter.close()
        self._outbox.flush(force=True)  # nothing decided is lost
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
            self._on_timers(now)
            self._outbox.flush()
            if self.exit_error is not None:
                raise self.exit_error
            wait = max(0.0, self._next_deadline(now) - now.mono)
            try:
                item: _Inbound | None = inbox.get(timeout=wait)
            except queue.Empty:
                continue
            # A batch at most, then the timers get a look in: a flood must not starve the
            # rounds. Only fetch what we handle: the rest stays queued, in order.
            handled = 0
            while item is not None:
                if isinstance(item, _Stop):
                    return
                self._handle(item)
                if self.exit_error is not None:
                    raise self.exit_error
                handled += 1
                if handled >= _BATCH:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    item = None

    def _handle(self, item: Message | _Connected | Disconnect | _ActionDone) -> None:
        try:
            if isinstance(item, Message):
                self._on_message(item)
            elif isinstance(item, _ActionDone):
                self._on_action_done(item)
            else:
                self._on_link(item)
        except Exception:  # noqa: BLE001 (one bad input must not stop watching everyone)
            what = item.topic if isinstance(item, Message) else type(item).__name__
            logger.opt(exception=True).error("internal error handling {}; carrying on", what)

    def _next_deadline(self, now: Instant) -> float:
        # While messages wait, look again soon; not while disconnected (nothing drains then,
        # and the reconnection wakes the loop).
        flush_soon = len(self._outbox) > 0 and self._connected
        deadlines = [now.mono + (_FLUSH_EVERY if flush_soon else 1.0)]
        if self._connected:
            deadlines.append(self._next_round)
        round_at = self._rounds.next_deadline()
        if round_at is not None:
            deadlines.append(round_at)
        if self._grace_at is not None:
            deadlines.append(self._grace_at)
        for extra in (
            self._heal_due,
            self._recovery.next_deadline(),
            self._alerter.next_deadline(),
            self._devices.next_deadline(),
        ):
            if extra is not None:
                deadlines.append(extra)
        return min(deadlines)

    def _on_timers(self, now: Instant) -> None:
        while (rnd := self._rounds.pop_due(now, self._caught_up)) is not None:
            self._close_round(rnd, now)
        if self._connected and now.mono >= self._next_round:
            self._send_round(now)
            # Keep the cadence; after a long stall, start afresh rather than catch up.
            self._next_round = max(self._next_round + self._interval, now.mono + self._interval / 2)
        if self._grace_at is not None and now.mono >= self._grace_at:
            self._grace_at = None
            for name in list(self._services):
                self._detect(name, GraceExpired(), now)
        self._recovery.on_timers(now)
        self._alerter.tick(now.mono)
        if self._heal_due is not None and now.mono >= self._heal_due:
            self._heal_due = None
            self._healed = now.mono
            logger.info("the monitor's status topic did not show our birth; republishing it")
            self._publish_birth()
        for name, event in self._devices.on_timers(now, self._is_connected):
            self._detect(name, event, now)

    def _caught_up(self, deadline: float) -> bool:
        """Whether everything received before `deadline` (mono) has been handled."""
        return self._inbox.empty() or (self._received is not None and self._received > deadline)

    def _send_round(self, now: Instant) -> None:
        ping = self._rounds.start(now)
        self._conn.publish(self.topics.monitor_ping, encode(ping))

    def _close_round(self, rnd: Round, now: Instant) -> None:
        self._check_self(rnd, now)
        if not rnd.echoed:
            # Our own ping never came back: the broker or our link stalled, so silence from the
            # services proves nothing about them. A stalled broker also disconnects healthy
            # clients when it resumes (their Wills fire): hold restarts as after a reconnect.
            logger.warning("ping round {} did not come back from the broker; not counted", rnd.seq)
            self._recovery.hold(now.mono + self.settings.monitor.settle)
            self._surfaces.round_closed(False, {}, ())
            return
        answers = rnd.answers
        sent = rnd.sent.mono
        published = self._published
        devices = self._devices.names
        missed: list[str] = []
        for name, svc in list(self._services.items()):
            if svc.connected and name not in devices:
                answer = answers.get(name)
                if answer is None and sent >= svc.online_mono:
                    missed.append(name)
                self._detect(name, RoundClosed(sent, answer), now)
                verdict = published.get(name)
                if answer is not None and verdict is not None and verdict.rtt_ms is None:
                    # The first round trip of a session: worth a verdict of its own.
                    self._commit(name, now)
        self._surfaces.round_closed(True, answers, missed)
        self._surfaces.publish_groups(self._services, published, all_groups=True)

    def _check_self(self, rnd: Round, now: Instant) -> None:
        """Our own ping is our proof of sight: exit when we have gone blind."""
        alive = self._conn.network_alive
        why = self._selfcheck.closed(
            echoed=rnd.echoed, orphaned=rnd.orphaned, network_alive=alive, now=now.mono
        )
        if why is not None:
            logger.error("self-check failed: {}; exiting so the supervisor restarts us", why)
            offline = Status("offline", self._session, self._session_since, reason="self_check")
            self._conn.publish(self.topics.monitor_status, encode(offline), 1, True)
            self.exit_error = MonitorExit(f"self-check failed: {why}", code=5)
            return
        if rnd.echoed:
            if not self._seen_own_round:
                self._seen_own_round = True
                self._notifier.ready()
                if self._inject == "network-thread":
                    # Rounds sent before the fault may still come back (their echo read
                    # already) and count: the test's bound on the watchdog pings after it.
                    logger.warning(
                        "fault injection: breaking the MQTT network thread ({} rounds open)",
                        len(self._rounds),
                    )
                    self._conn.break_network_thread()
            self._notifier.watchdog()

    # -- inbound ---------------------------------------------------------------------------

    def _on_link(self, item: _Connected | Disconnect) -> None:
        now = self._clock.now()
        self._surfaces.connected(isinstance(item, _Connected))
        if isinstance(item, _Connected):
            self._connected = True
            self._selfcheck.reset()
            self._next_round = now.mono + self._interval
            # Give every service the chance to re-announce itself before restarting anything:
            # after a broker restart all Wills fire, though the services come back by
            # themselves within seconds.
            self._recovery.hold(now.mono + self.settings.monitor.settle)
            logger.info("monitor connected (session present: {})", item.session_present)
            self._publish_birth()
            self._surfaces.rediscover(self._services)
            return
        self._connected = False
        # Rounds in flight can no longer be judged: drop them unjudged.
        self._rounds.clear()
        if item.taken_over:
            self.exit_error = MonitorExit(
                f"another monitor connected with client id {self.settings.monitor_client_id!r}; "
                "two monitors on one id would knock each other off forever, so this one exits",
                code=4,
            )
            return
        logger.warning("monitor lost the broker ({}); reconnecting", item.reason)

    def _on_foreign(self, message: Message) -> bool:
        """Device and Home Assistant topics; True if the message was one of those."""
        if self._devices.routes(message.topic):
            now = self._clock.now()
            for name, event in self._devices.on_message(message, now):
                self._detect(name, event, now)
            return True
        if message.topic.startswith(self._ha_button) or message.topic == (
            self._surfaces.ha_status_topic
        ):
            self._on_homeassistant(message)
            return True
        return False

    def _on_message(self, message: Message) -> None:
        self._received = message.received
        parts = self._route(message)
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
                self._rounds.echo(parse_ping(message.payload).seq, message.received)
            elif leaf == "ack" and name != MONITOR:
                self._recovery.on_ack(message.payload, self._clock.now())
            elif leaf == "cmd" and name == MONITOR:
                self._recovery.on_command(message.payload, message.retained, self._clock.now())
        except PayloadError as exc:
            if message.payload:  # an empty retained payload just clears a topic
                self._bad.report(message.topic, exc)

    def _route(self, message: Message) -> tuple[str, str] | None:
        """(name, leaf) for `_on_message`; None when another handler took it, or it is junk."""
        topic = message.topic
        # The hot path, one message per service per round: a tracked service's pong. Its name
        # was validated when first seen, so the full topic split is not needed.
        if topic.endswith("/pong") and topic.startswith(self._head):
            name = topic[len(self._head) : -5]
            if name in self._services and not self._devices.routes(topic):
                return name, "pong"
        if self._on_foreign(message):
            return None
        return self.topics.split(topic)

    def _on_homeassistant(self, message: Message) -> None:
        if message.topic == self._surfaces.ha_status_topic:
            if message.payload == b"online":
                logger.info("Home Assistant came online; publishing discovery")
                self._surfaces.rediscover(self._services)
            return
        name = message.topic[len(self._ha_button) :].split("/")[0]
        now = self._clock.now()
        if message.retained or name not in self._services:
            return  # a retained press would restart on every reconnect
        # A double click is one press.
        if now.mono - self._pressed.get(name, float("-inf")) < 5.0:
            return
        self._pressed[name] = now.mono
        self._recovery.press(name, now)

    def _is_connected(self, name: str) -> bool:
        svc = self._services.get(name)
        return svc is not None and svc.connected

    def _on_pong(self, name: str, message: Message) -> None:
        svc = self._services.get(name)
        if svc is None:
            return
        pong = parse_pong(message.payload)
        rtt = self._rounds.answer(name, pong, message.received, svc.session)
        if rtt is not None:
            self._rtt[name] = round(rtt * 1000, 3)
            self._last_pong[name] = message.received

    def _on_status(self, name: str, message: Message) -> None:
        status = parse_status(message.payload)
        now = self._clock.now()
        svc = self._services.get(name)
        if svc is None:
            svc = Service(name=name)
            self._services[name] = svc
        previous = self._previous.pop(name, None) if svc.state == State.UNKNOWN else None
        if previous is None:
            self._detect(name, StatusSeen(status), now)
            return
        # First sight since our start: carry the predecessor's verdict over.
        after, _ = step(svc, StatusSeen(status), now, self._limits)
        after = restore(after, previous, self._limits)
        self._recovery.restore(name, previous, now)
        self._services[name] = after
        self._commit(name, now)
        self._recovery.detected(name, svc, now)

    def _on_monitor_status(self, message: Message) -> None:
        try:
            status = parse_status(message.payload)
        except PayloadError as exc:
            if message.payload:
                self._bad.report(message.topic, exc)
            self._heal_own_status()  # junk, or emptied: dashboards would think we are gone
            return
        if status.state != "online" or status.session in self._own_sessions:
            if status.state != "online" or status.session != self._session:
                # Someone's offline (a late Will of ours, another monitor's goodbye) or an old
                # birth of ours now stands for the live monitor: put our birth back.
                self._heal_own_status()
            return
        # Another monitor's birth, from a process started after ours: it is running now, on
        # our prefix (and usually our client id, so the broker keeps kicking one of us off).
        # The newcomer stays, as an MQTT session takeover would have it; we leave. An older
        # monitor's birth may be a stale leftover; if that monitor lives, it sees ours and goes.
        started = status.started if status.started is not None else status.since
        if (started, status.session) <= (self._started, self._session):
            self._heal_own_status()  # an older monitor's birth (stale, or it will give way)
        else:
            self.exit_error = MonitorExit(
                f"another monitor (host {status.host}, pid {status.pid}) started on this "
                "broker and prefix; this one exits (stop the other, or give one of them "
                "another topic_prefix and client_id)",
                code=4,
            )

    def _heal_own_status(self) -> None:
        """Republish our birth, at most once a second (a flood is not amplified)."""
        if self._connected and self.exit_error is None:
            now = self._clock.now().mono
            self._heal_due = max(now, self._healed + 1.0)

    def _publish_birth(self) -> None:
        birth = Status(
            "online",
            self._session,
            self._session_since,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
        )
        self._conn.publish(self.topics.monitor_status, encode(birth), 1, True)

    def _on_action_done(self, item: _ActionDone) -> None:
        self._recovery.finish(item.name, item.token, item.outcome, self._clock.now())

    # -- state changes ---------------------------------------------------------------------

    def _detect(self, name: str, event: DetectionEvent, now: Instant) -> None:
        before = self._services[name]
        after, effects = step(before, event, now, self._limits)
        if after is before:
            return
        self._services[name] = after
        for change in effects:
            logger.debug(
                "{} detected: {} -> {} ({})",
                name,
                change.from_state,
                change.to_state,
                change.reason,
            )
        self._commit(name, now)  # what detection alone says, before recovery reacts
        self._recovery.detected(name, before, now)

    def _commit(self, name: str, now: Instant) -> None:
        svc = self._services[name]
        rec = self._recovery.record(name)
        verdict = build_verdict(svc, rec, self._rtt.get(name), self._published.get(name), now)
        old = self._published.get(name)
        if old == verdict:
            return
        self._published[name] = verdict
        self._surfaces.seen(name)
        before = old.state if old is not None else State.UNKNOWN.value
        self._surfaces.verdict(name, before, verdict, self._latency(svc, now))
        if before == verdict.state:
            self._outbox.put_latest(self.topics.verdict(name), encode(verdict))
            return
        logger.info("{}: {} -> {} ({})", name, before, verdict.state, verdict.reason)
        # The event first: whoever sees the new verdict has already been sent the event.
        self._publish_event(Event(round(now.wall, 3), name, before, verdict.state, verdict.reason))
        self._outbox.put_latest(self.topics.verdict(name), encode(verdict))
        if svc.group is not None:
            self._surfaces.publish_groups(self._services, self._published, all_groups=False)
        self._alerter.observe(
            Observation(
                service=name,
                before=before,
                after=verdict.state,
                reason=verdict.reason,
                restartable=self._recovery.policy(name).has_action,
                attempt=rec.attempt,
                restarts=rec.restarts,
                paused=rec.paused,
                clean_exit=svc.reason == "exited" and svc.exit_code == 0 and svc.signal is None,
                detail=rec.why_failed or "",
            ),
            now.mono,
        )

    def _latency(self, svc: Service, now: Instant) -> float | None:
        """Detection latency for metrics: from the Will's arrival, or from the last pong."""
        if svc.state == State.OFFLINE and svc.reason == "lost" and self._received is not None:
            return now.mono - self._received
        if svc.state in (State.HUNG, State.UNHEALTHY):
            last = self._last_pong.get(svc.name)
            return now.mono - last if last is not None else None
        return None

    def _forget(self, name: str) -> None:
        """`presence forget NAME`: drop the service and clear what we published about it."""
        svc = self._services.pop(name, None)
        self._published.pop(name, None)
        self._previous.pop(name, None)
        self._rtt.pop(name, None)
        self._last_pong.pop(name, None)
        self._outbox.put_latest(self.topics.verdict(name), b"")  # replaces a verdict still waiting
        # Its retained status would bring it back at the next start.
        self._publish(self.topics.status(name), b"", 1, True)
        self._surfaces.forget(name)
        if svc is not None and svc.group is not None:
            self._surfaces.publish_groups(self._services, self._published, all_groups=True)
        logger.info("{}: forgotten", name)

    def _publish_event(self, event: Event) -> None:
        self._outbox.put_event(self.topics.events, encode(event))

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic == self.topics.events:
            # Recovery's events join the same stream, in order, behind any backlog.
            self._outbox.put_event(topic, payload)
        else:
            self._conn.publish(topic, payload, qos, retain)

    def _publish_qos1(self, topic: str, payload: bytes, retain: bool) -> None:
        self._conn.publish(topic, payload, 1, retain)

    def _publish_wait(
        self, topic: str, payload: bytes, qos: int, retain: bool, timeout: float
    ) -> bool:
        """Publish from an action worker and wait for the broker (thread-safe)."""
        delivery = self._conn.publish(topic, payload, qos, retain)
        return True if qos == 0 else delivery.wait(timeout) and delivery.refusal is None
