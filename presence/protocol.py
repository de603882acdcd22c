"""The wire contract: topic names, the service-name rule and the JSON payloads.

Everything that crosses MQTT is built and parsed here, so the contract lives in one place.
Parsing is strict about what we read and lenient about what we do not know: unknown keys are
ignored (forward compatibility), anything else that is off raises `PayloadError` and only that.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from presence.errors import InvalidName, PayloadError

__all__ = [
    "MAX_PAYLOAD",
    "MONITOR",
    "NAME_PATTERN",
    "Ack",
    "Command",
    "Event",
    "Ping",
    "Pong",
    "Status",
    "Topics",
    "Verdict",
    "encode",
    "parse_ack",
    "parse_command",
    "parse_event",
    "parse_ping",
    "parse_pong",
    "parse_status",
    "parse_verdict",
    "validate_name",
    "validate_prefix",
]

NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME_RE: Final = re.compile(NAME_PATTERN)
MONITOR: Final = "_monitor"
#: Larger payloads are refused before parsing; the shipped broker config caps messages too.
MAX_PAYLOAD: Final = 64 * 1024
#: Deeper JSON is refused (free-form details are copied into what we publish).
MAX_DEPTH: Final = 32
_MAX_TEXT: Final = 256
_MAX_INT: Final = 2**63 - 1
_T = TypeVar("_T")


def validate_name(name: object) -> str:
    """Return `name` if it is a valid service name, else raise `InvalidName` saying why."""
    if not isinstance(name, str):
        raise InvalidName(f"service name must be a string, not {type(name).__name__}")
    # fullmatch, not match with `$`: `$` would accept a trailing newline.
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidName(
            f"invalid service name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return name


def validate_prefix(prefix: object) -> str:
    """Return a usable topic prefix (one or more plain topic levels), else raise ValueError."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("topic prefix must be a non-empty string")
    if prefix.startswith(("/", "$")) or prefix.endswith("/") or "//" in prefix:
        raise ValueError(
            f"topic prefix {prefix!r} must not start with / or $, end with /, or hold //"
        )
    if any(c in prefix for c in "+#\x00"):
        raise ValueError(f"topic prefix {prefix!r} must not contain MQTT wildcards or NUL")
    return prefix


class Topics:
    """Topic names under one prefix `P` (see the wire contract in docs/protocol.md)."""

    __slots__ = (
        "_cut",
        "events",
        "monitor_ack",
        "monitor_cmd",
        "monitor_ping",
        "monitor_status",
        "prefix",
    )

    def __init__(self, prefix: str = "presence") -> None:
        self.prefix = validate_prefix(prefix)
        self._cut = len(prefix) + 1
        self.monitor_ping = f"{prefix}/{MONITOR}/ping"
        self.monitor_status = f"{prefix}/{MONITOR}/status"
        self.monitor_cmd = f"{prefix}/{MONITOR}/cmd"
        self.monitor_ack = f"{prefix}/{MONITOR}/ack"
        self.events = f"{prefix}/{MONITOR}/events"

    def _svc(self, name: str, leaf: str) -> str:
        return f"{self.prefix}/{validate_name(name)}/{leaf}"

    def status(self, name: str) -> str:
        """`P/<name>/status`: birth, Will and graceful offline (retained)."""
        return self._svc(name, "status")

    def ping(self, name: str) -> str:
        """`P/<name>/ping`: a targeted ping."""
        return self._svc(name, "ping")

    def pong(self, name: str) -> str:
        """`P/<name>/pong`: the service's answer to either ping."""
        return self._svc(name, "pong")

    def cmd(self, name: str) -> str:
        """`P/<name>/cmd`: commands for a sidecar runner."""
        return self._svc(name, "cmd")

    def ack(self, name: str) -> str:
        """`P/<name>/ack`: a runner's answers to commands."""
        return self._svc(name, "ack")

    def verdict(self, name: str) -> str:
        """`P/_monitor/services/<name>`: the monitor's retained verdict."""
        return f"{self.prefix}/{MONITOR}/services/{validate_name(name)}"

    def wildcard(self, leaf: str) -> str:
        """`P/+/<leaf>`, e.g. every status topic."""
        return f"{self.prefix}/+/{leaf}"

    @property
    def verdicts(self) -> str:
        """Every verdict topic."""
        return f"{self.prefix}/{MONITOR}/services/+"

    def split(self, topic: str) -> tuple[str, str] | None:
        """Split `P/<name>/<leaf>` into (name, leaf); verdict topics give (name, "verdict").

        Returns None for topics outside the prefix or with an invalid name, so a hostile
        name on the wire never gets further than this.
        """
        if not topic.startswith(self.prefix) or topic[self._cut - 1 : self._cut] != "/":
            return None
        parts = topic[self._cut :].split("/")
        if len(parts) == 2:
            name, leaf = parts
            if name == MONITOR or _NAME_RE.fullmatch(name) is not None:
                return name, leaf
            return None
        if (
            len(parts) == 3
            and parts[0] == MONITOR
            and parts[1] == "services"
            and _NAME_RE.fullmatch(parts[2]) is not None
        ):
            return parts[2], "verdict"
        return None


# ---------------------------------------------------------------------------------------------
# payload models


@dataclass(frozen=True, slots=True)
class Status:
    """A birth (`online`), a Will or graceful stop, or a runner's `exited` report (`offline`)."""

    state: Literal["online", "offline"]
    session: str
    since: float
    reason: str | None = None
    host: str | None = None
    pid: int | None = None
    incarnation: int = 0
    exit_code: int | None = None
    signal: int | None = None
    group: str | None = None
    #: The monitor's process start (monitor status only): the later-started monitor wins.
    started: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form: optional fields appear only when set."""
        out: dict[str, Any] = {"state": self.state, "session": self.session, "since": self.since}
        for key in ("reason", "host", "pid", "exit_code", "signal", "group", "started"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.incarnation:
            out["incarnation"] = self.incarnation
        return out


@dataclass(frozen=True, slots=True)
class Ping:
    """One ping, broadcast (`P/_monitor/ping`) or targeted (`P/<name>/ping`)."""

    seq: int
    ts: float

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"seq": self.seq, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Pong:
    """A service's answer to a ping, from the service's own context."""

    seq: int
    session: str
    ok: bool
    detail: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        out: dict[str, Any] = {"seq": self.seq, "session": self.session, "ok": self.ok}
        if self.detail is not None:
            out["detail"] = dict(self.detail)
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """The monitor's retained verdict on one service."""

    service: str
    state: str
    since: float
    session: str | None
    reason: str | None
    missed: int
    rtt_ms: float | None
    restarts: int
    extra: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form; `extra` keys (next_attempt_at, attempt, exit_code...) are merged in."""
        out: dict[str, Any] = {
            "service": self.service,
            "state": self.state,
            "since": self.since,
            "session": self.session,
            "reason": self.reason,
            "missed": self.missed,
            "rtt_ms": self.rtt_ms,
            "restarts": self.restarts,
        }
        if self.extra:
            out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """One state change on `P/_monitor/events`."""

    ts: float
    service: str
    from_state: str
    to_state: str
    reason: str | None
    extra: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form (`from`/`to` are Python keywords, hence the field names)."""
        out: dict[str, Any] = {
            "ts": self.ts,
            "service": self.service,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
        }
        if self.extra:
            out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Command:
    """An operator or monitor command (`P/_monitor/cmd`, `P/<name>/cmd`).

    Every command has a unique `id` and an `expires` time: a receiver executes it at most once,
    and refuses it when late, replayed or retained.
    """

    id: str
    cmd: str
    expires: float
    service: str | None = None
    reason: str | None = None
    #: When it was sent (unix time): a receiver refuses what was sent before it started.
    issued: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        out: dict[str, Any] = {"id": self.id, "cmd": self.cmd, "expires": self.expires}
        if self.issued is not None:
            out["issued"] = self.issued
        if self.service is not None:
            out["service"] = self.service
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a command (`P/_monitor/ack`, `P/<name>/ack`)."""

    id: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"id": self.id, "ok": self.ok, "detail": self.detail}


def encode(
    obj: Status | Ping | Pong | Verdict | Event | Command | Ack | Mapping[str, Any],
) -> bytes:
    """Serialise a payload model (or a plain mapping) to compact UTF-8 JSON."""
    data = obj if isinstance(obj, Mapping) else obj.to_json()
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


# ---------------------------------------------------------------------------------------------
# parsing: every failure becomes PayloadError, whatever the input


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON here")


def _finite_float(text: str) -> float:
    # json turns 1e999 into inf without asking parse_constant; inf cannot be encoded again.
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError(f"number {text[:20]} is out of range")
    return value


# One decoder for every payload: `json.loads` with hooks builds a new JSONDecoder per call,
# which is a quarter of a pong's parsing cost.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not payload:
        raise PayloadError("empty payload")
    try:
        text = payload.decode("utf-8")
        data = _DECODER.decode(text)
    except PayloadError:
        raise
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise PayloadError("payload is nested too deeply") from exc
    except (ValueError, TypeError, MemoryError) as exc:
        # JSONDecodeError is a ValueError; so is an integer with too many digits.
        raise PayloadError(f"payload is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, not {type(data).__name__}")
    # Free-form parts (a pong's detail, a verdict's extras) are copied into what we publish:
    # keep them well within what can be encoded again on any stack.
    # (A byte scan first: the walk is needed only when the text holds a second bracket.)
    nested = payload.count(b"{") > 1 or b"[" in payload
    if nested and _depth(data) > MAX_DEPTH:
        raise PayloadError(f"payload is nested deeper than {MAX_DEPTH} levels")
    return data


def _req(data: dict[str, Any], key: str, check: Callable[[str, object], _T]) -> _T:
    value = data.get(key)
    if value is None:
        raise PayloadError(f"missing {key!r}")
    return check(key, value)


def _opt(data: dict[str, Any], key: str, check: Callable[[str, object], _T]) -> _T | None:
    value = data.get(key)
    return None if value is None else check(key, value)


def _as_int(key: str, value: object) -> int:
    # bool is an int in Python, but `true` is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{key!r} must be an integer")
    if not 0 <= value <= _MAX_INT:
        raise PayloadError(f"{key!r} out of range")
    return value


def _as_signed(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
        raise PayloadError(f"{key!r} must be a small integer")
    return value


def _as_num(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{key!r} must be a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise PayloadError(f"{key!r} is too large") from exc
    if not math.isfinite(number) or number < 0:
        raise PayloadError(f"{key!r} must be a finite, non-negative number")
    return number


def _as_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise PayloadError(f"{key!r} must be a non-empty string of at most {_MAX_TEXT} characters")
    if not value.isprintable():
        raise PayloadError(f"{key!r} must be printable")
    return value


def _as_name(key: str, value: object) -> str:
    try:
        return validate_name(value)
    except InvalidName as exc:
        raise PayloadError(f"{key!r}: {exc}") from exc


def parse_status(payload: bytes) -> Status:
    """Parse a status payload (birth, Will, graceful offline, runner exit)."""
    data = _decode(payload)
    state = data.get("state")
    if state not in ("online", "offline"):
        raise PayloadError("'state' must be 'online' or 'offline'")
    reason = _opt(data, "reason", _as_str)
    return Status(
        state=state,
        session=_req(data, "session", _as_str),
        since=_req(data, "since", _as_num),
        # An offline without a reason is treated like a Will: the connection was lost.
        reason=reason if reason is not None or state == "online" else "lost",
        host=_opt(data, "host", _as_str),
        pid=_opt(data, "pid", _as_int),
        incarnation=_opt(data, "incarnation", _as_int) or 0,
        exit_code=_opt(data, "exit_code", _as_signed),
        signal=_opt(data, "signal", _as_signed),
        group=_opt(data, "group", _as_name),
        started=_opt(data, "started", _as_num),
    )


def parse_ping(payload: bytes) -> Ping:
    """Parse a ping."""
    data = _decode(payload)
    return Ping(seq=_req(data, "seq", _as_int), ts=_req(data, "ts", _as_num))


def parse_pong(payload: bytes) -> Pong:
    """Parse a pong."""
    data = _decode(payload)
    # The monitor's hot path (one per service per round): the usual pong passes these exact
    # type checks at once; anything else takes the checks below, which name what is wrong.
    seq, session, ok = data.get("seq"), data.get("session"), data.get("ok")
    if (
        type(seq) is int
        and 0 <= seq <= _MAX_INT
        and type(session) is str
        and 0 < len(session) <= _MAX_TEXT
        and session.isprintable()
        and type(ok) is bool
        and data.get("detail") is None
    ):
        return Pong(seq, session, ok)
    ok = data.get("ok")
    if not isinstance(ok, bool):
        raise PayloadError("'ok' must be true or false")
    detail = data.get("detail")
    if detail is not None and not isinstance(detail, dict):
        raise PayloadError("'detail' must be an object")
    return Pong(
        seq=_req(data, "seq", _as_int),
        session=_req(data, "session", _as_str),
        ok=ok,
        detail=detail,
    )


_VERDICT_KEYS: Final = frozenset(
    {"service", "state", "since", "session", "reason", "missed", "rtt_ms", "restarts"}
)
_EVENT_KEYS: Final = frozenset({"ts", "service", "from", "to", "reason"})


def parse_verdict(payload: bytes) -> Verdict:
    """Parse a retained verdict (used by the CLI and by a restarting monitor)."""
    data = _decode(payload)
    return Verdict(
        service=_req(data, "service", _as_name),
        state=_req(data, "state", _as_str),
        since=_req(data, "since", _as_num),
        session=_opt(data, "session", _as_str),
        reason=_opt(data, "reason", _as_str),
        missed=_opt(data, "missed", _as_int) or 0,
        rtt_ms=_opt(data, "rtt_ms", _as_num),
        restarts=_opt(data, "restarts", _as_int) or 0,
        extra={k: v for k, v in data.items() if k not in _VERDICT_KEYS} or None,
    )


def parse_event(payload: bytes) -> Event:
    """Parse one state-change event."""
    data = _decode(payload)
    return Event(
        ts=_req(data, "ts", _as_num),
        service=_req(data, "service", _as_name),
        from_state=_req(data, "from", _as_str),
        to_state=_req(data, "to", _as_str),
        reason=_opt(data, "reason", _as_str),
        extra={k: v for k, v in data.items() if k not in _EVENT_KEYS} or None,
    )


def parse_command(payload: bytes) -> Command:
    """Parse a command."""
    data = _decode(payload)
    return Command(
        id=_req(data, "id", _as_str),
        cmd=_req(data, "cmd", _as_str),
        expires=_req(data, "expires", _as_num),
        service=_opt(data, "service", _as_name),
        reason=_opt(data, "reason", _as_str),
        issued=_opt(data, "issued", _as_num),
    )


def parse_ack(payload: bytes) -> Ack:
    """Parse a command's answer."""
    data = _decode(payload)
    ok = data.get("ok")
    if not isinstance(ok, bool):
        raise PayloadError("'ok' must be true or false")
    detail = data.get("detail", "")
    if not isinstance(detail, str):
        detail = json.dumps(detail)[:_MAX_TEXT]
    return Ack(id=_req(data, "id", _as_str), ok=ok, detail=detail[:4096])
