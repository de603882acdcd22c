"""Fuzzing: 10,000 hostile payloads on every topic the monitor, an agent and a runner read.

The corpus is drawn with hypothesis (derandomized, so every run publishes the same 10,000
payloads): random bytes, JSON objects built from the real schemas' keys with wrong and
extreme values, deep nesting, invalid UTF-8, NaN/Infinity literals, integers with thousands of
digits, empty payloads and payloads just under and over 64 KiB. A property test checks that
every parser only ever raises `PayloadError`, and that whatever a parser accepts can be
published again (the monitor re-encodes pong details into verdicts).
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.commands import new_command
from presence.errors import PayloadError
from presence.monitor import Monitor
from presence.mqtt import Connection, Inbox, Message, cli_client_id, fetch_retained
from presence.protocol import (
    MAX_PAYLOAD,
    Ping,
    Status,
    encode,
    parse_ack,
    parse_command,
    parse_event,
    parse_ping,
    parse_pong,
    parse_status,
    parse_verdict,
)
from tests.helpers import TOPICS, Monitors, ServiceProcess, Watcher
from tests.test_runner import PY, Run, _alive

PARSERS: tuple[Callable[[bytes], object], ...] = (
    parse_status,
    parse_ping,
    parse_pong,
    parse_verdict,
    parse_event,
    parse_command,
    parse_ack,
)

# ---------------------------------------------------------------------------------------------
# the payload strategies


@dataclass(frozen=True)
class Raw:
    """A JSON token written verbatim: NaN, 1e999, a 5,000-digit integer, broken literals."""

    text: str


def dump(value: object) -> str:
    """JSON text for `value`, with `Raw` tokens as they are (json.dumps cannot write them)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # floats: NaN, Infinity and -Infinity as Python writes them


def _bytes(value: object) -> bytes:
    return dump(value).encode("utf-8", "surrogatepass")  # lone surrogates stay invalid UTF-8


SESSION = "0123456789abcdef"
#: One valid example of every payload schema (status, ping, pong, verdict, event, cmd, ack).
TEMPLATES: list[dict[str, Any]] = [
    {"state": "online", "session": SESSION, "since": 1.7e9, "host": "h", "pid": 42},
    {"state": "offline", "session": SESSION, "since": 1.7e9, "reason": "exited", "exit_code": 1},
    {"seq": 1, "ts": 1.7e9},
    {"seq": 1, "session": SESSION, "ok": False, "detail": {"load": 0.5}},
    {
        "service": "fz-a",
        "state": "online",
        "since": 1.7e9,
        "session": SESSION,
        "reason": "birth",
        "missed": 0,
        "rtt_ms": 1.0,
        "restarts": 0,
    },
    {"ts": 1.7e9, "service": "fz-a", "from": "online", "to": "hung", "reason": "missed_pongs"},
    {"id": "c0ffee", "cmd": "restart", "expires": 1.7e9, "service": "alpha", "reason": "hung"},
    {"id": "c0ffee", "ok": True, "detail": "done"},
]
KEYS = sorted(
    {key for template in TEMPLATES for key in template}
    | {"incarnation", "signal", "group", "started", "attempt", "paused"}
)
EDGE_INTS = [0, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30]
RAW_TOKENS = [
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1E+400",
    "-0",
    "1e-400",
    "1e99999999999",
    "9" * 19,
    "9" * 300,
    "9" * 4300,
    "9" * 4301,
    "-" + "9" * 5000,
    "0x10",
    "+1",
    "01",
    ".5",
    "1.",
    "tru",
    "nul",
]
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\n",
    "\u2028",
    "\ud800",
    "\udfff",
    "x" * 256,
    "x" * 257,
    "online",
    "offline",
    "lost",
    "exited",
    "restart",
    "_monitor",
    "$(id)",
    "`id`",
    "a;b",
    "-rf",
    "../..",
    "naïve",
    "\u0661",
    "\u202e",
    "\U0001f600",
    "a/b",
    "+",
    "#",
]
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",  # overlong "/"
    b"\xc3\x28",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # truncated
    b"\x80",
    b"\xf8\x88\x80\x80\x80",
]
CONSTANTS = [
    b"",
    b" ",
    b"null",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"[]",
    b"{}",
    b'""',
    b"0",
    b"true",
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b"{}garbage",
    b"\x00",
    b'{"seq":1,"seq":"dup"}',
    b'{"state":"online"}\x00',
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.floats(),
    st.sampled_from(RAW_TOKENS).map(Raw),
    st.text(max_size=12),
    st.sampled_from(NASTY_STRINGS),
)
_keys = st.sampled_from(KEYS) | st.text(max_size=4)
_containers = st.lists(_scalars, max_size=3) | st.dictionaries(_keys, _scalars, max_size=3)
#: Any JSON value, wrong types and out-of-range numbers included (two levels deep; deeper
#: nesting comes from `deep`).
json_values = (
    _scalars
    | _containers
    | st.lists(_containers, max_size=2)
    | st.dictionaries(_keys, _containers, max_size=2)
)


def _near_valid(args: tuple[dict[str, Any], dict[str, Any], frozenset[str]]) -> bytes:
    template, changes, dropped = args
    data = {k: v for k, v in template.items() if k not in dropped}
    data.update(changes)
    return _bytes(data)


#: A real schema with one to three fields wrong or extreme, or missing.
near_valid = st.tuples(
    st.sampled_from(TEMPLATES),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3),
    st.frozensets(st.sampled_from(KEYS), max_size=2),
).map(_near_valid)
#: Objects made of the schemas' keys (and others) with any values.
key_soup = st.dictionaries(_keys, json_values, max_size=8).map(_bytes)
#: Any JSON value at the top level (arrays, numbers, strings, null...).
any_json = json_values.map(_bytes)


def _mutate(args: tuple[dict[str, Any], int, int, str]) -> bytes:
    template, pos, byte, how = args
    raw = dump(template).encode()
    i = pos % (len(raw) + 1)
    if how == "flip":
        return raw[:i] + bytes([byte]) + raw[i + 1 :]
    if how == "insert":
        return raw[:i] + bytes([byte]) + raw[i:]
    if how == "delete":
        return raw[:i] + raw[i + 1 :]
    return raw[:i]  # truncated


mutated = st.tuples(
    st.sampled_from(TEMPLATES),
    st.integers(0, 400),
    st.integers(0, 255),
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
).map(_mutate)


def _bad_utf8(args: tuple[dict[str, Any], bytes, int]) -> bytes:
    template, bad, pos = args
    raw = dump(template).encode()
    value = raw.find(b'":"')
    i = value + 3 if value >= 0 and pos % 2 == 0 else pos % (len(raw) + 1)
    return raw[:i] + bad + raw[i:]


#: A valid payload with an invalid UTF-8 sequence inside a string value or anywhere.
bad_utf8 = st.tuples(
    st.sampled_from(TEMPLATES), st.sampled_from(BAD_UTF8), st.integers(0, 400)
).map(_bad_utf8)


def _deep(args: tuple[str, int]) -> bytes:
    kind, depth = args
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "open":
        return b"[" * depth
    nested = b"[" * depth + b"]" * depth
    if kind == "detail":  # a well-formed pong whose detail is nested `depth` deep
        head = b'{"seq":1,"session":"' + SESSION.encode() + b'","ok":false,"detail":{"d":'
        return head + nested + b"}}"
    return b'{"state":"online","session":"s","since":1,"host":' + nested + b"}"


#: Deep nesting, around the interpreter's recursion limit and far beyond it.
deep = st.tuples(
    st.sampled_from(["list", "object", "open", "detail", "field"]),
    st.integers(1, 1200) | st.integers(975, 1000) | st.integers(1200, 48_000),
).map(_deep)


def _sized(args: tuple[dict[str, Any], int]) -> bytes:
    template, offset = args
    body = dump(template).encode()
    pad = MAX_PAYLOAD + offset - len(body) - len(b',"pad":""')
    return body[:-1] + b',"pad":"' + b"x" * max(0, pad) + b'"}'


#: A valid object padded to just under, exactly at, or just over 64 KiB (and up to ~94 KiB).
sized = st.tuples(
    st.sampled_from(TEMPLATES),
    st.integers(-40, 40) | st.sampled_from([-1, 0, 1]) | st.integers(-2000, 30_000),
).map(_sized)

small = st.one_of(
    near_valid,
    key_soup,
    any_json,
    mutated,
    bad_utf8,
    st.binary(max_size=200),
    st.sampled_from(CONSTANTS),
)
#: One fuzzed payload: about 3 % deeply nested, 1 % around 64 KiB, the rest small.
payloads = st.integers(0, 99).flatmap(lambda k: deep if k < 3 else sized if k < 4 else small)

FUZZ_SETTINGS = settings(
    database=None,
    derandomize=True,  # the same corpus on every run
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


#: The shipped broker refuses larger packets (max_packet_size 131072) and disconnects their
#: sender, so bigger payloads never reach the monitor or an agent: not worth publishing.
MAX_RELAYED = 100_000


@functools.cache
def corpus(count: int = 10_000) -> tuple[bytes, ...]:
    """`count` distinct fuzzed payloads, the same on every run (about 10 s to draw)."""
    seen: dict[bytes, None] = {}

    @settings(FUZZ_SETTINGS, max_examples=85)
    @given(st.lists(payloads, min_size=200, max_size=200, unique=True))
    def collect(batch: list[bytes]) -> None:
        for payload in batch:
            if len(payload) <= MAX_RELAYED:
                seen.setdefault(payload, None)

    collect()
    drawn = tuple(seen)[:count]
    assert len(drawn) == count, f"only {len(drawn)} distinct payloads drawn"
    return drawn


# ---------------------------------------------------------------------------------------------
# property tests: the parsers


def _parse_all(payload: bytes) -> list[object]:
    """Every parser on `payload`: the models they accept; anything but PayloadError escapes."""
    accepted = []
    for parse in PARSERS:
        try:
            accepted.append(parse(payload))
        except PayloadError:
            continue
    return accepted


@settings(FUZZ_SETTINGS, max_examples=1500)
@given(st.binary(max_size=4096) | mutated | bad_utf8 | deep | sized | st.sampled_from(CONSTANTS))
def test_parsers_only_raise_payload_error_on_arbitrary_bytes(payload: bytes) -> None:
    """All seven parsers on arbitrary bytes: a model or PayloadError, never anything else."""
    _parse_all(payload)


@settings(FUZZ_SETTINGS, max_examples=1500)
@given(near_valid | key_soup | any_json)
def test_parsers_only_raise_payload_error_on_arbitrary_json(payload: bytes) -> None:
    """All seven parsers on JSON with the schemas' keys, hostile values: model or PayloadError."""
    _parse_all(payload)


@settings(FUZZ_SETTINGS, max_examples=1500)
@example(b'{"seq":1,"session":"s","ok":false,"detail":{"x":1e999}}')
@example(b'{"seq":1,"session":"s","ok":true,"detail":{"x":[-1E+400]}}')
@example(b'{"service":"a","state":"online","since":1,"extra":1e999}')
@example(b'{"ts":1,"service":"a","from":"online","to":"hung","extra":{"x":-1e999}}')
@given(near_valid | key_soup)
def test_what_a_parser_accepts_can_be_published_again(payload: bytes) -> None:
    """A parsed model encodes again: no out-of-range number (1e999 is inf) gets past a parser."""
    # The monitor copies a pong's `detail` into the verdict it publishes: an accepted infinity
    # makes `encode` raise inside the monitor loop (see the live test below).
    for model in _parse_all(payload):
        encode(model)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the live fuzz


class Flood:
    """A raw paho client (so payloads over 64 KiB go out too) publishing as `user`."""

    def __init__(self, broker: PrivateBroker, user: str = "monitor") -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cli_client_id("fuzz"),
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(user, broker.users[user])
        self.client.max_inflight_messages_set(1000)
        connected = threading.Event()
        self.client.on_connect = lambda *_args: connected.set()
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(5), "the fuzz client could not connect"

    def send(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == paho.MQTT_ERR_SUCCESS, (topic, info.rc)

    def sync(self, topic: str, payload: bytes, timeout: float = 30.0) -> None:
        """A QoS 1 publish we wait for: everything sent before it has reached the broker."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), "the broker did not acknowledge the barrier publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def flood(broker: PrivateBroker) -> Iterator[Flood]:
    """The fuzzer's connection (the `monitor` user may write anything under presence/)."""
    f = Flood(broker)
    try:
        yield f
    finally:
        f.close()


LIVE = ("alpha", "web")  # the embedded agent and the `presence run` runner
#: Every command a runner or the monitor executes.
COMMANDS = {"restart", "stop", "start", "reset", "pause", "resume", "forget"}
#: Every topic the monitor, the agent `alpha` and the runner `web` read (verdicts: at start-up).
LIVE_TOPICS = [
    TOPICS.status("alpha"),
    TOPICS.status("web"),
    TOPICS.status("fz-a"),
    TOPICS.status("ghost"),
    TOPICS.pong("alpha"),
    TOPICS.pong("web"),
    TOPICS.pong("fz-a"),
    TOPICS.ping("alpha"),
    TOPICS.ping("web"),
    TOPICS.monitor_ping,
    TOPICS.monitor_cmd,
    TOPICS.cmd("web"),
    TOPICS.ack("alpha"),
    TOPICS.ack("web"),
    TOPICS.ack("ghost"),
    TOPICS.monitor_status,
    "presence/_monitor/ha/fz-a/restart",
    "presence/_monitor/ha/ghost/restart",
    "homeassistant/status",
]


def _parses(parse: Callable[[bytes], Any], payload: bytes) -> Any:
    try:
        return parse(payload)
    except PayloadError:
        return None


def harmless(topic: str, payload: bytes, now: float) -> bool:
    """False for the few drawn payloads that are *valid* protocol messages with a real effect.

    Those are not fuzz but legitimate traffic from a trusted user: a valid birth of another
    session on a live service's status topic is a duplicate-name claim (rule 3), a later
    monitor's birth on the monitor status makes this monitor give way (rule 5), and a fresh
    command would be executed. They go to an unknown service's status topic instead.
    """
    if topic in (TOPICS.status("alpha"), TOPICS.status("web"), TOPICS.verdict("alpha")):
        parse = parse_verdict if "/services/" in topic else parse_status
        return _parses(parse, payload) is None
    if topic == TOPICS.monitor_status:
        status = _parses(parse_status, payload)
        return status is None or status.state != "online"
    if topic in (TOPICS.monitor_cmd, TOPICS.cmd("web")):
        command = _parses(parse_command, payload)
        return (
            command is None
            or command.cmd not in COMMANDS
            or not now - 5 <= command.expires <= now + 605
        )
    return True


def _retained_status(broker: PrivateBroker, name: str) -> bytes | None:
    found = fetch_retained(
        broker.settings("dashboard"), [TOPICS.status(name)], client_id=cli_client_id("r")
    )
    return found[0].payload if found else None


def _pong_session(broker: PrivateBroker, name: str, seq: int) -> str | None:
    """Send a targeted ping as the monitor user; the session of the pong that answers it."""
    inbox = Inbox()
    conn = Connection(broker.settings("monitor"), client_id=cli_client_id("p"), handler=inbox)
    conn.connect()
    try:
        assert conn.subscribe(TOPICS.pong(name), 0)
        conn.publish(TOPICS.ping(name), encode(Ping(seq, time.time())))
        reply = inbox.wait_for(
            lambda m: (p := _parses(parse_pong, m.payload)) is not None and p.seq == seq, 5
        )
        return None if reply is None else parse_pong(reply.payload).session
    finally:
        conn.close()


def _runner_birth(watcher: Watcher, name: str, timeout: float = 20) -> Status:
    """The runner's first birth (incarnation 1), skipping the junk fuzzed onto its topic."""

    def match(m: Message) -> bool:
        status = _parses(parse_status, m.payload) if m.topic == TOPICS.status(name) else None
        return status is not None and status.state == "online" and status.incarnation == 1

    return parse_status(watcher.wait(match, timeout).payload)


def _command_ack(broker: PrivateBroker, topic: str, ack_topic: str, payload: bytes) -> str:
    """Publish a command as admin; the detail of its ack (proves the receiver got this far)."""
    command_id = json.loads(payload)["id"]
    inbox = Inbox()
    conn = Connection(broker.settings("admin"), client_id=cli_client_id("cmd"), handler=inbox)
    conn.connect()
    try:
        assert conn.subscribe(ack_topic, 1)
        assert conn.publish(topic, payload, qos=1).wait(5)
        reply = inbox.wait_for(
            lambda m: (a := _parses(parse_ack, m.payload)) is not None and a.id == command_id, 15
        )
        assert reply is not None, f"no ack on {ack_topic} within 15 s"
        return parse_ack(reply.payload).detail
    finally:
        conn.close()


def _prestart(flood: Flood, drawn: tuple[bytes, ...]) -> None:
    """Retained junk where the monitor (verdicts) and the services read at start-up."""
    now = time.time()
    for i, payload in enumerate(drawn):
        topic = [
            TOPICS.verdict(f"fz-v-{i}"),
            TOPICS.verdict("alpha"),
            TOPICS.status("alpha"),
            TOPICS.status("web"),
            TOPICS.cmd("web"),
        ][i % 5]
        if not harmless(topic, payload, now):
            topic = TOPICS.verdict(f"fz-v-{i}")
        flood.send(topic, payload, qos=1, retain=True)
    flood.sync(TOPICS.ack("ghost"), b"prestart-done")


def _fuzz(flood: Flood, watcher: Watcher, drawn: tuple[bytes, ...], *, paced: bool) -> None:
    """Every payload on the next topic of LIVE_TOPICS: QoS 0 in bulk, every 7th QoS 1, every
    5th retained; then an empty retained message on every topic.

    Paced: after every 256 KB a QoS 1 marker, waited for at the dashboard watcher, which reads
    the same stream as the monitor (a superset of it): the payloads, not the volume, are under
    test. Unpaced: as fast as paho can write.
    """
    now = time.time()
    budget = 0
    for i, payload in enumerate(drawn):
        topic = LIVE_TOPICS[i % len(LIVE_TOPICS)]
        if not harmless(topic, payload, now):
            topic = TOPICS.status("ghost")
        flood.send(topic, payload, qos=1 if i % 7 == 0 else 0, retain=i % 5 == 0)
        budget += len(payload)
        if paced and budget > 256_000:
            budget = 0
            _sync(flood, watcher, f"chunk-{i}".encode())
    for topic in LIVE_TOPICS:
        flood.send(topic, b"", qos=1, retain=True)
    _sync(flood, watcher, b"fuzz-done")


def _sync(flood: Flood, watcher: Watcher, marker: bytes) -> None:
    """A QoS 1 marker after everything sent so far; returns once the watcher has it."""
    mark = watcher.mark()
    flood.sync(TOPICS.ack("ghost"), marker)
    watcher.wait(functools.partial(_has_payload, payload=marker), 30, mark)


def _has_payload(message: Message, payload: bytes) -> bool:
    return message.payload == payload


def _barriers(broker: PrivateBroker, watcher: Watcher) -> None:
    """An ack from the monitor and one from the runner, asked for after the flood: each has
    worked through everything that reached it before (and the watcher has seen both)."""
    mark = watcher.mark()
    probe = new_command("pause", time.time(), service="nobody")
    detail = _command_ack(broker, TOPICS.monitor_cmd, TOPICS.monitor_ack, encode(probe))
    assert "unknown service 'nobody'" in detail
    runner_probe = new_command("start", time.time(), service="web")
    assert _command_ack(broker, TOPICS.cmd("web"), TOPICS.ack("web"), encode(runner_probe)) == (
        "already running"
    )
    for topic, command_id in ((TOPICS.monitor_ack, probe.id), (TOPICS.ack("web"), runner_probe.id)):
        watcher.wait(functools.partial(_is_ack, topic=topic, command_id=command_id), 5, mark)


def _is_ack(message: Message, topic: str, command_id: str) -> bool:
    ack = _parses(parse_ack, message.payload) if message.topic == topic else None
    return ack is not None and ack.id == command_id


def _births_missing(broker: PrivateBroker, sessions: dict[str, str | None]) -> list[str]:
    """The services that have not put their birth back over the junk and the final empty
    retained message within 5 s (an agent re-asserts its birth at most once a second)."""
    missing = []
    for name, session in sessions.items():
        deadline = time.monotonic() + 5
        while True:
            retained = _retained_status(broker, name)
            status = None if retained is None else _parses(parse_status, retained)
            if status is not None and (status.state, status.session) == ("online", session):
                break
            if time.monotonic() > deadline:
                missing.append(f"{name}: retained status {retained!r}")
                break
            time.sleep(0.1)
    return missing


def _assert_nothing_changed(watcher: Watcher, mark: int, canaries: Path, runner: Status) -> None:
    """Verdicts stayed up (online; on a loaded machine a pong may come late under the flood,
    which is `suspect` and nothing more), no restart action, the runner's child is the same."""
    for name in LIVE:
        states = [(v.state, v.reason) for v in watcher.verdicts(name, mark)]
        assert {state for state, _ in states} <= {"online", "suspect"}, (
            f"{name} went down: {states}"
        )
        assert {e.to_state for e in watcher.events(name, mark)} <= {"online", "suspect"}
        assert all(v.restarts == 0 for v in watcher.verdicts(name))
    assert not [e for e in watcher.events(start=mark) if e.reason == "action"]
    assert list(canaries.iterdir()) == []
    # Re-asserted births (healing the junk) are fine; a new child or incarnation is not.
    births = {(s.pid, s.incarnation) for s in watcher.statuses("web", mark) if s.state == "online"}
    assert births <= {(runner.pid, 1)}, births
    assert runner.pid is not None
    assert _alive(runner.pid)


def _live_setup(
    tmp_path: Path, broker: PrivateBroker, monitors: Monitors
) -> tuple[Monitor, Path, Run]:
    """The monitor (restart action: touch a canary per service), and the runner `web`."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    touch = {"type": "exec", "argv": ["touch", f"{canaries}/{{name}}"], "timeout": 5}
    monitor = monitors.start(
        # startup_grace: the runner takes a second to start; `missing` would restart it.
        # Hung only after ~3 s of silence rather than FAST's 0.6 s: what is under test is the
        # payloads, and a service starved of CPU on a loaded machine while ~16 MB of junk goes
        # through it is late, not broken by what it read.
        monitor={
            "settle": 0,
            "startup_grace": 30,
            "ping_interval": 0.5,
            "pong_timeout": 1.0,
            "missed_pongs": 4,
        },
        services=[{"name": name, "action": touch} for name in LIVE],
        homeassistant={"enabled": True},
    )
    run = Run(tmp_path, broker, "web", "--", PY, "-c", "import time; time.sleep(600)")
    return monitor, canaries, run


def _assert_alive(monitor: Monitor) -> None:
    assert monitor.exit_error is None, f"the monitor exited: {monitor.exit_error}"
    assert monitor._thread is not None
    assert monitor._thread.is_alive(), "the monitor thread died"


# Drawing the corpus alone takes ~10 s of CPU (several times that on a loaded machine): the
# default 60 s guard against a hang is too tight here.
@pytest.mark.timeout(180)
def test_10000_fuzzed_payloads_change_nothing(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    flood: Flood,
    record: Callable[..., None],
    spawn: Callable[..., ServiceProcess],
) -> None:
    """10,000 fuzzed payloads on every topic read: monitor, agent and runner survive unchanged.

    The agent runs in a service process of its own, as in real life: embedded in this one it
    would share a GIL with the monitor, the watcher and the flood's writer, and on a loaded
    machine a starved agent (late pongs, `hung`) is not what is under test.
    """
    started = time.monotonic()
    drawn = corpus()
    drawn_in = time.monotonic() - started
    _prestart(flood, drawn[:400])
    monitor, canaries, run = _live_setup(tmp_path, broker, monitors)
    try:
        alpha = spawn("alpha").ready()
        runner = _runner_birth(watcher, "web")
        for name in LIVE:
            watcher.wait_verdict(name, "online", timeout=10)
        mark = watcher.mark()
        fuzz_started = time.monotonic()
        _fuzz(flood, watcher, drawn[400:], paced=True)
        _assert_alive(monitor)
        _barriers(broker, watcher)
        record(
            "10,000 fuzzed payloads (paced), every topic read",
            payloads=len(drawn),
            megabytes=sum(map(len, drawn)) / 1e6,
            drawn_in_s=drawn_in,
            published_and_handled_in_s=time.monotonic() - fuzz_started,
        )

        _assert_alive(monitor)
        assert alpha.proc.poll() is None
        assert _pong_session(broker, "alpha", 424242) == alpha.session
        assert _pong_session(broker, "web", 434343) == runner.session
        assert run.proc.poll() is None
        _assert_nothing_changed(watcher, mark, canaries, runner)
        # Checked here, asserted last: the checks below must run either way.
        missing = _births_missing(broker, {"alpha": alpha.session, "web": runner.session})

        # Detection still works: kill -9 of the runner is offline/lost at once, and the
        # restart action now runs, proving the canary would have shown a restart.
        mark = watcher.mark()
        run.proc.send_signal(signal.SIGKILL)
        verdict, _ = watcher.wait_verdict("web", "offline", timeout=3, start=mark)
        assert verdict.reason == "lost"
        deadline = time.monotonic() + 5
        while not (canaries / "web").exists():
            assert time.monotonic() < deadline, "the canary action never ran"
            time.sleep(0.05)
        assert not (canaries / "alpha").exists()
        assert missing == [], "the agents did not re-assert their births over the junk"
    finally:
        run.cleanup()


@pytest.mark.timeout(180)
def test_the_same_payloads_as_one_burst_change_nothing(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    flood: Flood,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """The corpus unpaced (~16 MB in ~2 s): the monitor stays up and no verdict changes.

    The agent runs in a service process of its own, as in real life: embedded in this one it
    would share a GIL with the flood's writer, and a starved agent is not what is under test.
    """
    drawn = corpus()
    monitor, canaries, run = _live_setup(tmp_path, broker, monitors)
    try:
        alpha = spawn("alpha").ready()
        runner = _runner_birth(watcher, "web")
        for name in LIVE:
            watcher.wait_verdict(name, "online", timeout=10)
        mark = watcher.mark()
        _fuzz(flood, watcher, drawn, paced=False)
        _assert_alive(monitor)
        _barriers(broker, watcher)
        _assert_alive(monitor)
        assert _pong_session(broker, "alpha", 424242) == alpha.session
        _assert_nothing_changed(watcher, mark, canaries, runner)
    finally:
        run.cleanup()


def test_junk_twice_within_a_second_on_an_agents_status_topic_is_healed(
    broker: PrivateBroker, watcher: Watcher, flood: Flood
) -> None:
    """Junk, then an empty retained message 0.2 s later: the agent's birth still comes back."""
    with Agent("alpha", broker.settings("alpha")) as alpha:
        flood.send(TOPICS.status("alpha"), b"\xffjunk", qos=1, retain=True)

        def own_birth(m: Message) -> bool:
            status = _parses(parse_status, m.payload) if m.topic == TOPICS.status("alpha") else None
            return status is not None and status.session == alpha.session

        mark = watcher.mark()
        watcher.wait(own_birth, 3, mark)  # healed at once
        time.sleep(0.2)  # a second blow inside the agent's one-second heal rate limit
        flood.send(TOPICS.status("alpha"), b"", qos=1, retain=True)
        missing = _births_missing(broker, {"alpha": alpha.session})
        assert missing == [], "the birth was not re-asserted after the second blow"


# ---------------------------------------------------------------------------------------------
# a service's own pong with extreme values


class RawService:
    """A service speaking the protocol by hand as its own MQTT user: what a buggy or hostile
    service can do within the ACL (birth on its status topic, pongs on its pong topic)."""

    def __init__(self, broker: PrivateBroker, name: str, detail: Callable[[int], bytes]) -> None:
        self.name = name
        self.session = "f0" * 8
        self.detail = detail
        self.answered = 0
        self.inbox = Inbox()
        self.conn = Connection(broker.settings(name), client_id=cli_client_id("raw"), handler=self)
        self.conn.connect()
        birth = {"state": "online", "session": self.session, "since": round(time.time(), 3)}
        assert self.conn.publish(TOPICS.status(name), encode(birth), qos=1, retain=True).wait(3)
        assert self.conn.subscribe(TOPICS.monitor_ping, 0)

    def on_connected(self, session_present: bool) -> None:
        """Nothing to do."""

    def on_disconnected(self, info: object) -> None:
        """Nothing to do."""

    def on_message(self, message: Message) -> None:
        """Answer each broadcast ping with ok:false and the hostile detail."""
        seq = parse_ping(message.payload).seq
        head = f'{{"seq":{seq},"session":"{self.session}","ok":false,"detail":'.encode()
        self.conn.publish(TOPICS.pong(self.name), head + self.detail(self.answered) + b"}")
        self.answered += 1

    def close(self) -> None:
        self.conn.close()


def _sweep(start: int, stop: int) -> Callable[[int], bytes]:
    """A detail nested one level less deep in every round, from `start` down to `stop`."""

    def detail(n: int) -> bytes:
        depth = max(stop, start - n)
        return b'{"d":' + b"[" * depth + b"]" * depth + b"}"

    return detail


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param(lambda _n: b'{"x":1e999}', id="1e999"),
        pytest.param(lambda _n: b'{"load":-1E+400,"why":"disk"}', id="-1e400"),
        pytest.param(_sweep(1000, 940), id="nested-near-the-recursion-limit"),
    ],
)
def test_own_pong_with_extreme_detail_cannot_stop_the_monitor(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, detail: Callable[[int], bytes]
) -> None:
    """A service's own ok:false pongs carrying 1e999 or near-limit nesting leave the monitor up."""
    monitor: Monitor = monitors.start(monitor={"ping_interval": 0.1, "pong_timeout": 0.1})
    service = RawService(broker, "alpha", detail)
    try:
        watcher.wait_verdict("alpha", "online")
        mark = watcher.mark()
        # Enough rounds for the whole sweep (60 rounds of 0.1 s), ended early by a dead monitor.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and monitor._thread is not None:
            if not monitor._thread.is_alive() or service.answered > 65:
                break
            time.sleep(0.05)
        assert monitor._thread is not None
        assert monitor._thread.is_alive(), (
            f"the monitor thread died after {service.answered} hostile pongs from alpha"
        )
        assert monitor.exit_error is None
        # It judged them: either ok:false (suspect/unhealthy) or, if refused, missing pongs.
        states = {v.state for v in watcher.verdicts("alpha", mark)}
        assert states & {"suspect", "unhealthy", "hung"}, states
    finally:
        service.close()
