"""`presence run`: start any program as a child and speak the presence protocol for it.

One thread (the caller's, normally the main thread) owns the child and every decision; the
child's waiter, the signal handlers, paho's thread and the probe only enqueue. The runner's
MQTT presence is the agent library's (same sessions, stale-Will healing, duplicate-name
protection); each child it starts is a new *incarnation* announced with its pid, and its exit
is announced as `offline`/`exited` while the runner stays connected. Commands on
`P/<name>/cmd` (restart, stop, start) make it the monitor's hands on this host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import heapq
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from loguru import logger

from presence.agent import Agent
from presence.commands import CommandGuard, command_id_of, sent_retained
from presence.errors import PayloadError
from presence.logs import RotatingFile
from presence.mqtt import Message
from presence.policy import ActionFinished, Context, Detected, Recovery, StartAction, Tick
from presence.policy import step as recover
from presence.probes import Probe, Prober
from presence.protocol import Ack, Topics, encode, parse_command, validate_name
from presence.settings import NoAction, Settings, parse_size
from presence.tracker import Service, State
from presence.verdicts import policy_from

__all__ = ["EXIT_CANNOT_RUN", "EXIT_DUPLICATE", "EXIT_NOT_FOUND", "RunOptions", "Runner"]

EXIT_NOT_FOUND: Final = 127
EXIT_CANNOT_RUN: Final = 126
EXIT_DUPLICATE: Final = 4
_RUNNER_COMMANDS: Final = frozenset({"restart", "stop", "start"})


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What `presence run` was asked to do."""

    name: str
    argv: tuple[str, ...]
    probe: Probe | None = None
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    probe_grace: float = 5.0
    kill_timeout: float = 10.0
    restart_local: bool = False
    group: str | None = None
    log_file: Path | None = None
    log_rotation: str = "10 MB"
    log_retention: int = 5
    connect_wait: float = 3.0


@dataclass(frozen=True, slots=True)
class _Exited:
    incarnation: int
    returncode: int


@dataclass(frozen=True, slots=True)
class _Signal:
    signum: int


@dataclass(frozen=True, slots=True)
class _Cmd:
    message: Message


@dataclass(frozen=True, slots=True)
class _Conflict:
    pass


_Item = _Exited | _Signal | _Cmd | _Conflict


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux kill the child if the runner dies (even by SIGKILL), so a
    restarted runner never finds an orphaned first instance still holding the port."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl  # resolved now, not after fork
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` (R, S, T, Z...), None if gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _exit_code(returncode: int) -> int:
    """A shell-style exit code: a signal N becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Runner:
    """Runs one program under presence until SIGINT/SIGTERM; `run()` returns the exit code."""

    def __init__(
        self, settings: Settings, options: RunOptions, env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.options = options
        self._env = env
        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._topics = Topics(settings.topic_prefix)
        self._child: subprocess.Popen[bytes] | None = None
        self._child_info: tuple[int, int] | None = None  # (pid, incarnation) while running
        self._incarnation = 0
        self._last_code: int | None = None
        self._stopping = False  # SIGINT/SIGTERM: stop the child, then leave
        self._after_exit: tuple[str, str] | None = None  # (command, id) to finish on exit
        self._kill_at: float | None = None
        self._pumps: list[threading.Thread] = []
        self._guard = CommandGuard(started=time.time())
        self._timers: list[tuple[float, str]] = []
        self._rec = Recovery()
        self._svc = Service(name=options.name)
        # --restart-local: the monitor's own pure policy, with "restart the child" as action.
        local = replace(policy_from(settings.restart, NoAction()), has_action=True)
        self._local = local if options.restart_local else None
        self._prober = (
            Prober(
                options.probe, options.probe_interval, options.probe_timeout, options.probe_grace
            )
            if options.probe is not None
            else None
        )
        broker = settings.broker
        if broker.username is None:
            # The ACL gives every service a user named like the service.
            broker = broker.model_copy(update={"username": options.name})
        self._broker = broker
        self.agent = Agent(
            validate_name(options.name),
            broker,
            prefix=settings.topic_prefix,
            health=self._health,
            health_timeout=max(0.5, options.probe_timeout),
            group=options.group,
            on_conflict=lambda _error: self._inbox.put(_Conflict()),
            on_command=lambda message: self._inbox.put(_Cmd(message)),
        )

    # -- health (the agent's health thread) --------------------------------------------------

    def _health(self) -> tuple[bool, dict[str, Any]]:
        info = self._child_info
        if info is None:
            return False, {"child": "not running", "incarnation": self._incarnation}
        pid, incarnation = info
        base = {"pid": pid, "incarnation": incarnation}
        state = _proc_state(pid)
        if state in ("T", "t"):
            return False, {**base, "child": "stopped (SIGSTOP)"}
        if state == "Z":
            return False, {**base, "child": "exited"}
        if self._prober is None:
            return True, base
        ok, detail = self._prober.result()
        return ok, {**base, **detail}

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Connect, start the child, and serve until told to stop; returns the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        sink = self._child_log_sink()
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._prober is not None:
                self._prober.stop()
            if sink is not None:
                logger.remove(sink)

    def _run(self) -> int:
        self.agent.start(wait=None)
        if not self.agent.wait_online(self.options.connect_wait):
            if self.agent.conflict is not None:
                print(f"presence run: {self.agent.conflict}", file=sys.stderr)
                return EXIT_DUPLICATE
            refusal = self.agent.connection.refusal
            why = str(refusal) if refusal else f"cannot reach {self.agent.connection.endpoint}"
            logger.warning("{}; starting the program anyway and retrying in the background", why)
        code = self._start_child()
        if code is not None:
            self.agent.stop(publish=False)
            return code
        if self._prober is not None:
            self._prober.start()
        return self._loop()

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            self._on_timers(now)
            wait = 1.0 if not self._timers else max(0.0, self._timers[0][0] - now)
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                continue
            if isinstance(item, _Exited):
                done = self._on_exit(item)
                if done is not None:
                    return done
            elif isinstance(item, _Signal):
                done = self._on_signal_item(item.signum)
                if done is not None:
                    return done
            elif isinstance(item, _Cmd):
                self._on_command(item.message)
            else:
                logger.error("another runner holds {!r}; stopping ours", self.options.name)
                if self._child is None:
                    return EXIT_DUPLICATE
                self._stopping = True
                self._terminate()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._inbox.put(_Signal(signum))  # SimpleQueue.put is safe in a signal handler

    def _on_signal_item(self, signum: int) -> int | None:
        if signum == signal.SIGHUP:
            self._send(signal.SIGHUP)
            return None
        logger.info("{} received; stopping the program", signal.Signals(signum).name)
        self._stopping = True
        if self._child is None:
            return self._leave()
        self._send(signum)
        self._kill_at = time.monotonic() + self.options.kill_timeout
        heapq.heappush(self._timers, (self._kill_at, "kill"))
        return None

    def _leave(self) -> int:
        """Graceful offline (reason shutdown) and the child's exit code."""
        self.agent.stop()
        return _exit_code(self._last_code) if self._last_code is not None else 0

    # -- the child ---------------------------------------------------------------------------

    def _start_child(self) -> int | None:
        """Start a new incarnation; returns an exit code if the program cannot run at all."""
        argv = list(self.options.argv)
        pipes = self.options.log_file is not None
        try:
            child = subprocess.Popen(  # noqa: S603 (the user's own command line, no shell)
                argv,
                stdout=subprocess.PIPE if pipes else None,
                stderr=subprocess.PIPE if pipes else None,
                env=dict(self._env) if self._env is not None else None,
                process_group=0,  # its own group: our signals are forwarded deliberately
                preexec_fn=_pdeathsig(),  # noqa: PLW1509 (only a prctl call, resolved before fork)
            )
        except FileNotFoundError:
            return self._cannot_run(f"command not found: {argv[0]}", EXIT_NOT_FOUND)
        except PermissionError:
            return self._cannot_run(f"permission denied: {argv[0]}", EXIT_CANNOT_RUN)
        except OSError as exc:
            return self._cannot_run(f"cannot run {argv[0]}: {exc.strerror}", EXIT_CANNOT_RUN)
        self._incarnation += 1
        incarnation = self._incarnation
        self._child = child
        self._child_info = (child.pid, incarnation)
        if self._prober is not None:
            self._prober.restart_grace()
        if pipes:
            self._pump(child.stdout, sys.stdout.buffer, "stdout")
            self._pump(child.stderr, sys.stderr.buffer, "stderr")
        threading.Thread(
            target=lambda: self._inbox.put(_Exited(incarnation, child.wait())),
            name=f"presence-child-{incarnation}",
            daemon=True,
        ).start()
        logger.info("started {} (pid {}, incarnation {})", argv[0], child.pid, incarnation)
        self.agent.announce(online=True, incarnation=incarnation, pid=child.pid)
        self._svc = Service(
            name=self.options.name, state=State.ONLINE, session=f"incarnation-{incarnation}"
        )
        return None

    def _cannot_run(self, why: str, code: int) -> int | None:
        print(f"presence run: {why}", file=sys.stderr)
        logger.error("{}", why)
        self._last_code = code
        self.agent.announce(online=False, reason="exited", exit_code=code)
        # The first start decides whether the runner can work at all; later ones are retried.
        return code if self._incarnation == 0 else None

    def _pump(self, stream: IO[bytes] | None, out: IO[bytes], name: str) -> None:
        """Copy the child's output to ours and to the rotating log file, line by line."""
        if stream is None:
            return
        child_log = logger.bind(child_stream=name)

        def pump() -> None:
            for line in iter(stream.readline, b""):
                with contextlib.suppress(OSError):
                    out.write(line)
                    out.flush()
                child_log.info(line.decode("utf-8", errors="replace").rstrip("\n"))

        thread = threading.Thread(target=pump, name=f"presence-{name}", daemon=True)
        thread.start()
        self._pumps.append(thread)

    def _child_log_sink(self) -> int | None:
        path = self.options.log_file
        if path is None:
            return None
        return logger.add(
            RotatingFile(path, parse_size(self.options.log_rotation), self.options.log_retention),
            format="{message}",
            filter=lambda record: "child_stream" in record["extra"],
            colorize=False,
            enqueue=True,
        )

    def _send(self, signum: int) -> None:
        """Signal the child's whole process group."""
        if self._child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._child.pid, signum)

    def _terminate(self) -> None:
        """SIGTERM now, SIGKILL after kill_timeout."""
        self._send(signal.SIGTERM)
        self._kill_at = time.monotonic() + self.options.kill_timeout
        heapq.heappush(self._timers, (self._kill_at, "kill"))

    def _on_exit(self, item: _Exited) -> int | None:
        if item.incarnation != self._incarnation:
            return None
        self._child = None
        self._child_info = None
        self._kill_at = None
        self._last_code = item.returncode
        for pump in self._pumps:  # the last lines, before anyone hears that it exited
            pump.join(2.0)
        self._pumps.clear()
        code, sig = (None, -item.returncode) if item.returncode < 0 else (item.returncode, None)
        logger.info("program exited ({})", f"signal {sig}" if sig else f"exit {code}")
        if self._stopping:
            return self._leave()
        pending, self._after_exit = self._after_exit, None
        if pending is not None and pending[0] == "restart":
            self._start_and_ack(pending[1])
            return None
        reason = "shutdown" if pending is not None else "exited"
        self.agent.announce(online=False, reason=reason, exit_code=code, signal=sig)
        if pending is not None:
            self._ack(pending[1], ok=True, detail=f"stopped (exit {_exit_code(item.returncode)})")
            return None
        before = self._svc
        self._svc = Service(
            name=self.options.name,
            state=State.OFFLINE,
            reason="exited",
            session=before.session,
            exit_code=code,
            signal=sig,
        )
        self._local_policy(Detected(before, self._svc))
        return None

    # -- the local restart policy ------------------------------------------------------------

    def _local_policy(self, event: Detected | Tick | ActionFinished) -> None:
        if self._local is None:
            return
        now = time.monotonic()
        rec, effects = recover(self._rec, event, self._svc, now, self._local, Context(rand=0.5))
        if rec.next_at is not None and rec.next_at != self._rec.next_at:
            heapq.heappush(self._timers, (rec.next_at, "policy"))
        if rec.why_failed and not self._rec.why_failed:
            logger.error("giving up restarting locally: {}", rec.why_failed)
        self._rec = rec
        for effect in effects:
            self._restart_locally(effect)

    def _restart_locally(self, effect: StartAction) -> None:
        logger.warning("restarting the program locally (attempt {})", effect.attempt)
        before = self._svc
        started = self._start_child() is None
        if started:
            self._local_policy(Detected(before, self._svc))
        self._local_policy(ActionFinished(ok=started))

    def _on_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, kind = heapq.heappop(self._timers)
            if kind == "kill" and self._kill_at is not None and now >= self._kill_at:
                logger.warning(
                    "the program ignored SIGTERM for {} s; killing it", self.options.kill_timeout
                )
                self._send(signal.SIGKILL)
                self._kill_at = None
            elif kind == "policy" and self._rec.next_at is not None and now >= self._rec.next_at:
                self._local_policy(Tick())

    # -- commands ----------------------------------------------------------------------------

    def _on_command(self, message: Message) -> None:
        try:
            command = parse_command(message.payload)
        except PayloadError as exc:
            logger.warning("ignoring malformed command: {}", exc)
            command_id = command_id_of(message.payload)
            if command_id is not None:  # its sender is waiting for an answer
                self._ack(command_id, ok=False, detail=f"malformed command: {exc}")
            return
        refusal = None if command.cmd in _RUNNER_COMMANDS else f"unknown command {command.cmd!r}"
        refusal = refusal or self._guard.check(command, retained=message.retained, now=time.time())
        topic = self._topics.cmd(self.options.name)
        if refusal is None and sent_retained(self._broker, topic, message.payload):
            refusal = "refusing a retained command (it would run again on every reconnect)"
        if refusal is not None:
            logger.warning("refused command {} ({}): {}", command.id, command.cmd, refusal)
            self._ack(command.id, ok=False, detail=refusal)
            return
        logger.info("command {}: {}", command.id, command.cmd)
        running = self._child is not None
        if command.cmd == "start" and running:
            self._ack(command.id, ok=True, detail="already running")
        elif command.cmd in ("start", "restart") and not running:
            self._start_and_ack(command.id)
        elif command.cmd == "stop" and not running:
            self._ack(command.id, ok=True, detail="not running")
        else:  # restart or stop of a running child: finish once it has exited
            self._after_exit = (command.cmd, command.id)
            self._terminate()

    def _start_and_ack(self, command_id: str) -> None:
        self._rec = Recovery()  # a commanded start begins a fresh local streak
        failed = self._start_child()
        if self._child is None:
            self._ack(command_id, ok=False, detail=f"could not start (exit {failed})")
            return
        detail = f"started pid {self._child.pid}, incarnation {self._incarnation}"
        self._ack(command_id, ok=True, detail=detail)

    def _ack(self, command_id: str, *, ok: bool, detail: str) -> None:
        ack = Ack(command_id, ok, detail)
        self.agent.connection.publish(self._topics.ack(self.options.name), encode(ack), qos=1)
