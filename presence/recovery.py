"""The recovery shell: runs the pure restart policy per service and carries out its effects.

Owned by the monitor's loop thread. It keeps each service's `Recovery` record and the timers
they ask for, starts restart actions (in the action pool, or as an MQTT command to a sidecar
runner for the `agent` action), matches their results back, and executes operator commands
(`reset`, `restart`, `pause`, `resume`), each at most once.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from typing import Final

from loguru import logger

from presence.actions import ActionRunner, Outcome, PublishWait, build_argv, placeholders
from presence.clock import Instant
from presence.commands import (
    CommandGuard,
    command_id_of,
    new_command,
    parse_executed,
    sent_retained,
)
from presence.errors import PayloadError
from presence.policy import (
    ActionFinished,
    Command,
    Context,
    Detected,
    Policy,
    Recovery,
    StartAction,
    Tick,
)
from presence.policy import step as recover
from presence.protocol import (
    MONITOR,
    Ack,
    Event,
    Topics,
    Verdict,
    encode,
    parse_ack,
    parse_command,
)
from presence.settings import Action, AgentAction, NoAction, Settings
from presence.tracker import Service
from presence.verdicts import policy_from, restored_recovery

__all__ = ["IDLE", "Recoverer"]

IDLE: Final = Recovery()
_OPERATOR_COMMANDS: Final = frozenset({"reset", "restart", "pause", "resume", "forget"})

#: publish(topic, payload, qos, retain)
Publish = Callable[[str, bytes, int, bool], object]


class Recoverer:
    """Recovery for every service; `changed(name, now)` is called after each record change."""

    def __init__(
        self,
        settings: Settings,
        services: Mapping[str, Service],
        *,
        publish: Publish,
        changed: Callable[[str, Instant], None],
        action_done: Callable[[str, int, Outcome], None],
        rand: Callable[[], float],
        env: Mapping[str, str] | None = None,
        publish_wait: PublishWait | None = None,
        forget: Callable[[str], None] | None = None,
        observer: Callable[..., None] | None = None,
        started: float | None = None,
    ) -> None:
        self._services = services
        self._topics = Topics(settings.topic_prefix)
        self._publish = publish
        self._changed = changed
        self._rand = rand
        self._actions: dict[str, Action] = {s.name: s.action for s in settings.services}
        self._policies: dict[str, Policy] = {
            s.name: policy_from(settings.restart_for(s), s.action) for s in settings.services
        }
        self._default_policy = policy_from(settings.restart, NoAction())
        self.records: dict[str, Recovery] = {}
        self._timers: list[tuple[float, str, str]] = []
        self._hold_until = 0.0
        self._tokens: dict[str, int] = {}
        self._token_counter = itertools.count(1)
        self._acks: dict[str, tuple[str, int]] = {}
        self._guard = CommandGuard(started)
        self._broker = settings.broker
        self._executed_topic = f"{self._topics.prefix}/{MONITOR}/executed"
        self._forget = forget
        self._observe = observer or (lambda *_args, **_kwargs: None)
        self._runner = ActionRunner(
            settings.monitor.max_parallel_actions, action_done, env=env, publish=publish_wait
        )

    def policy(self, name: str) -> Policy:
        """The policy of `name` (discovered services: watch and alert only)."""
        return self._policies.get(name, self._default_policy)

    def record(self, name: str) -> Recovery:
        """The current recovery record of `name`."""
        return self.records.get(name, IDLE)

    @property
    def executed_topic(self) -> str:
        """Where the ids of executed operator commands are kept (retained)."""
        return self._executed_topic

    def remember_executed(self, payload: bytes) -> None:
        """A predecessor's record of executed command ids (read at start)."""
        self._guard.remember(parse_executed(payload))

    def hold(self, until: float) -> None:
        """Start no attempt before `until` (mono): the settle period after a (re)connect or a
        stall of the broker. Holds only ever extend."""
        self._hold_until = max(self._hold_until, until)

    def restore(self, name: str, previous: Verdict, now: Instant) -> None:
        """Take over what a predecessor monitor's verdict says about `name`'s recovery."""
        rec = restored_recovery(previous, now.mono, self.policy(name))
        self.records[name] = rec
        if rec.next_at is not None:
            heapq.heappush(self._timers, (rec.next_at, "recovery", name))

    def detected(self, name: str, before: Service, now: Instant) -> None:
        """The detector changed `name`'s record (from `before`)."""
        self.feed(name, Detected(before, self._services[name]), now)

    def feed(
        self, name: str, event: Detected | Tick | ActionFinished | Command, now: Instant
    ) -> None:
        """Run one event through the policy and carry out its effects."""
        rec = self.record(name)
        ctx = Context(hold_until=self._hold_until, rand=self._rand())
        new, effects = recover(rec, event, self._services[name], now.mono, self.policy(name), ctx)
        if new is rec:
            return
        self.records[name] = new
        if new.next_at is not None and new.next_at != rec.next_at:
            heapq.heappush(self._timers, (new.next_at, "recovery", name))
        for effect in effects:
            self._start(name, effect, now)
        self._changed(name, now)

    # -- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest timer (mono), if any."""
        return self._timers[0][0] if self._timers else None

    def on_timers(self, now: Instant) -> None:
        """Fire every timer that is due."""
        while self._timers and self._timers[0][0] <= now.mono:
            _, kind, key = heapq.heappop(self._timers)
            if kind == "ack":
                pending = self._acks.pop(key, None)
                if pending is not None:
                    outcome = Outcome(False, "the runner did not acknowledge in time", 0.0)
                    self.finish(pending[0], pending[1], outcome, now)
                continue
            rec = self.records.get(key)
            if rec is not None and rec.next_at is not None and rec.next_at <= now.mono:
                self.feed(key, Tick(), now)

    # -- actions ---------------------------------------------------------------------------

    def _start(self, name: str, effect: StartAction, now: Instant) -> None:
        action = self._actions.get(name, NoAction())
        token = next(self._token_counter)
        self._tokens[name] = token
        values = placeholders(name, self._services[name].host, effect.cause)
        what = "manual restart" if effect.manual else f"restart attempt {effect.attempt}"
        logger.warning("{}: {} ({}) via {}", name, what, effect.cause, action.type)
        self._observe(name, started=True)
        if isinstance(action, AgentAction):
            command = new_command(
                "restart", now.wall, lifetime=action.timeout, service=name, reason=effect.cause
            )
            self._acks[command.id] = (name, token)
            heapq.heappush(self._timers, (now.mono + action.timeout, "ack", command.id))
            self._publish(self._topics.cmd(name), encode(command), 1, False)
            return
        argv = build_argv(action, values)
        if argv is not None:
            logger.debug("{}: running {}", name, argv)  # debug: argv may carry secrets
        self._runner.submit(name, token, action, values)

    def on_ack(self, payload: bytes, now: Instant) -> None:
        """A runner answered a command on `P/<name>/ack`."""
        ack = parse_ack(payload)
        pending = self._acks.pop(ack.id, None)
        if pending is None:
            return  # someone else's command, or answered after its timeout
        detail = ack.detail or ("ok" if ack.ok else "refused")
        self.finish(pending[0], pending[1], Outcome(ack.ok, detail, 0.0), now)

    def finish(self, name: str, token: int, outcome: Outcome, now: Instant) -> None:
        """An action attempt returned; stale results (an attempt no longer waited for) are
        dropped."""
        if self._tokens.get(name) != token:
            return
        del self._tokens[name]
        self._observe(name, ok=outcome.ok)
        log = logger.info if outcome.ok else logger.warning
        verb = "succeeded" if outcome.ok else "failed"
        log("{}: restart action {} in {} ms: {}", name, verb, outcome.duration_ms, outcome.detail)
        if outcome.output:
            logger.debug("{}: action output: {}", name, outcome.output)
        self._publish(self._topics.events, encode(self._action_event(name, outcome, now)), 1, False)
        self.feed(name, ActionFinished(outcome.ok, outcome.detail), now)

    def _action_event(self, name: str, outcome: Outcome, now: Instant) -> Event:
        state = "restarting"  # an action only ever finishes while restarting
        return Event(
            ts=round(now.wall, 3),
            service=name,
            from_state=state,
            to_state=state,
            reason="action",
            extra={
                "action": {
                    "type": self._actions.get(name, NoAction()).type,
                    "ok": outcome.ok,
                    "detail": outcome.detail,
                    "exit_code": outcome.exit_code,
                    "duration_ms": outcome.duration_ms,
                    "output": outcome.output,
                }
            },
        )

    # -- operator commands -----------------------------------------------------------------

    def on_command(self, payload: bytes, retained: bool, now: Instant) -> None:
        """An operator command on `P/_monitor/cmd`; answered on `P/_monitor/ack`."""
        try:
            command = parse_command(payload)
        except PayloadError as exc:
            command_id = command_id_of(payload)
            if command_id is not None:  # malformed, but its sender is waiting for an answer
                self._ack(command_id, ok=False, detail=f"malformed command: {exc}")
            raise
        refusal = self._refusal(command.cmd, command.service)
        # Only a command we are going to run is remembered as executed.
        refusal = refusal or self._guard.check(command, retained=retained, now=now.wall)
        if refusal is None and sent_retained(self._broker, self._topics.monitor_cmd, payload):
            self._publish(self._topics.monitor_cmd, b"", 1, True)  # clear it: never again
            refusal = "refusing a retained command (it would run again on every reconnect)"
        name = command.service
        if refusal is not None or name is None:
            logger.warning("refused command {} ({}): {}", command.id, command.cmd, refusal)
            self._ack(command.id, ok=False, detail=refusal or "no service")
            return
        logger.info("command {}: {} {}", command.id, command.cmd, name)
        # Remembered on the broker too: a successor monitor refuses a replay of it.
        executed = {"ids": self._guard.executed(now.wall)}
        self._publish(self._executed_topic, encode(executed), 1, True)
        if command.cmd == "forget":
            self._tokens.pop(name, None)
            self.records.pop(name, None)
            if self._forget is not None:
                self._forget(name)
        else:
            self.feed(name, Command(command.cmd, self._services[name]), now)
        self._ack(command.id, ok=True, detail=f"{command.cmd} {name}: done")

    def _refusal(self, cmd: str, name: str | None) -> str | None:
        if cmd not in _OPERATOR_COMMANDS:
            return f"unknown command {cmd!r}"
        if name is None or name not in self._services:
            return f"unknown service {name!r}"
        if cmd in ("reset", "restart") and not self.policy(name).has_action:
            return f"{name} has no restart action configured"
        return None

    def _ack(self, command_id: str, *, ok: bool, detail: str) -> None:
        self._publish(self._topics.monitor_ack, encode(Ack(command_id, ok, detail)), 1, False)

    def press(self, name: str, now: Instant) -> None:
        """Home Assistant's restart button for `name` was pressed."""
        if name not in self._services or not self.policy(name).has_action:
            logger.warning("restart button for {}: no restart action configured", name)
            return
        logger.info("{}: restart button pressed", name)
        self.feed(name, Command("restart", self._services[name]), now)

    def close(self) -> None:
        """Stop the action pool (running actions finish in the background)."""
        self._runner.close()
