"""Restart actions, run in worker threads: exec / systemd / docker / pm2 / http.

Nothing goes through a shell: argv lists only, with `{name}`, `{host}` and `{reason}`
substituted inside argv elements, from values validated before they get here. A timed-out
action is killed with its whole process group. (The `agent` action is an MQTT exchange and
lives in the monitor loop; `none` never runs.)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import httpx
from loguru import logger

from presence.settings import (
    Action,
    DockerAction,
    ExecAction,
    HttpAction,
    MqttAction,
    Pm2Action,
    SystemdAction,
)

__all__ = ["ActionRunner", "Outcome", "build_argv", "placeholders", "run_argv", "run_http"]

_TAIL: Final = 2000
_HOST_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,253}")
_REASONS: Final = frozenset(
    {"lost", "missing", "hung", "unhealthy", "exited", "shutdown", "manual", "reset"}
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action attempt did."""

    ok: bool
    detail: str
    duration_ms: float
    exit_code: int | None = None
    output: str = ""


def placeholders(name: str, host: str | None, reason: str) -> dict[str, str]:
    """The substitution values, each checked: what reaches an argv element is known-safe.

    `name` is already a validated service name; `host` comes from the service's own birth
    payload, so anything that does not look like a host name is replaced by "unknown";
    `reason` must be one of ours.
    """
    return {
        "{name}": name,
        "{host}": host if host is not None and _HOST_RE.fullmatch(host) else "unknown",
        "{reason}": reason if reason in _REASONS else "unknown",
    }


def build_argv(action: Action, values: Mapping[str, str]) -> list[str] | None:
    """The argv for argv-style actions (None for http/agent/none)."""
    argv: list[str]
    if isinstance(action, ExecAction):
        argv = list(action.argv)
    elif isinstance(action, SystemdAction):
        argv = ["systemctl", *(["--user"] if action.user else []), "restart", action.unit]
    elif isinstance(action, DockerAction):
        argv = ["docker", "restart", action.container]
    elif isinstance(action, Pm2Action):
        argv = ["pm2", "restart", action.app]
    else:
        return None
    # Plain replacement, not str.format: a `{0.__class__}` in config stays literal text.
    out = []
    for element in argv:
        text = element
        for key, value in values.items():
            text = text.replace(key, value)
        out.append(text)
    return out


def _tail(data: bytes) -> str:
    return data[-_TAIL:].decode("utf-8", errors="replace")


def run_argv(
    argv: list[str],
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Outcome:
    """Run `argv` in its own process group; kill the group after `timeout` seconds.

    Output goes to a temporary file rather than a pipe: a command that leaves a daemon behind
    (which inherits the descriptors) must not keep us waiting for an end-of-file.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(  # noqa: S603 (argv list from config, never a shell)
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            return Outcome(False, f"command not found: {argv[0]}", _ms(started))
        except PermissionError:
            return Outcome(False, f"permission denied: {argv[0]}", _ms(started))
        except OSError as exc:
            return Outcome(False, f"cannot run {argv[0]}: {exc.strerror}", _ms(started))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out.seek(0)
            return Outcome(
                False,
                f"timed out after {timeout:g} s; killed",
                _ms(started),
                None,
                _tail(out.read()),
            )
        out.seek(0)
        output = _tail(out.read())
    if code == 0:
        return Outcome(True, "exit 0", _ms(started), 0, output)
    detail = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return Outcome(False, detail, _ms(started), code, output)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_http(action: HttpAction) -> Outcome:
    """Send the configured request; success is a 2xx within the timeout."""
    started = time.monotonic()
    try:
        response = httpx.request(
            action.method,
            action.url,
            headers=action.headers,
            json=action.body,
            timeout=action.timeout,
        )
    except httpx.HTTPError as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}", _ms(started))
    body = response.text[-_TAIL:]
    ok = 200 <= response.status_code < 300
    return Outcome(ok, f"HTTP {response.status_code}", _ms(started), response.status_code, body)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


#: publish(topic, payload, qos, retain, timeout) -> whether the broker took it
PublishWait = Callable[[str, bytes, int, bool, float], bool]


class ActionRunner:
    """A bounded pool that runs actions and reports each outcome through `done`."""

    def __init__(
        self,
        max_parallel: int,
        done: Callable[[str, int, Outcome], None],
        *,
        env: Mapping[str, str] | None = None,
        publish: PublishWait | None = None,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="presence-action")
        self._done = done
        self._env = env
        self._publish = publish

    def submit(self, name: str, token: int, action: Action, values: Mapping[str, str]) -> None:
        """Start `action` for service `name`; `done(name, token, outcome)` follows."""
        self._pool.submit(self._run, name, token, action, dict(values))

    def _run(self, name: str, token: int, action: Action, values: dict[str, str]) -> None:
        try:
            outcome = self._execute(action, values)
        except Exception as exc:  # noqa: BLE001 (an action's failure is a result)
            logger.opt(exception=True).error("restart action for {} crashed", name)
            outcome = Outcome(False, f"internal error: {exc}", 0.0)
        self._done(name, token, outcome)

    def _execute(self, action: Action, values: dict[str, str]) -> Outcome:
        if isinstance(action, HttpAction):
            return run_http(action)
        if isinstance(action, MqttAction):
            return self._run_mqtt(action)
        argv = build_argv(action, values)
        if argv is None or not isinstance(
            action, ExecAction | SystemdAction | DockerAction | Pm2Action
        ):
            return Outcome(False, f"action type {action.type!r} does not run here", 0.0)
        env = self._env
        cwd = None
        if isinstance(action, ExecAction):
            if action.env:
                env = {**(env if env is not None else os.environ), **action.env}
            cwd = str(action.cwd) if action.cwd else None
        return run_argv(argv, action.timeout, env=env, cwd=cwd)

    def _run_mqtt(self, action: MqttAction) -> Outcome:
        started = time.monotonic()
        if self._publish is None:
            return Outcome(False, "no MQTT connection to publish with", 0.0)
        ok = self._publish(action.topic, action.payload.encode(), action.qos, action.retain, 10.0)
        what = f"published to {action.topic}" if ok else f"the broker did not take {action.topic}"
        return Outcome(ok, what, _ms(started))

    def close(self) -> None:
        """Stop taking work; running actions finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
