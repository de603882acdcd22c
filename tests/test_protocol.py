"""The wire contract: names, topics, payloads, and a parser that only ever raises PayloadError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.errors import InvalidName, PayloadError
from presence.protocol import (
    MAX_PAYLOAD,
    Event,
    Ping,
    Pong,
    Status,
    Topics,
    Verdict,
    encode,
    parse_event,
    parse_ping,
    parse_pong,
    parse_status,
    parse_verdict,
    validate_name,
    validate_prefix,
)

PARSERS = [parse_status, parse_ping, parse_pong, parse_verdict, parse_event]


@pytest.mark.parametrize("name", ["a", "A1", "sensor-gw", "web.api_2", "x" * 64, "0", "9lives"])
def test_valid_names(name: str) -> None:
    """Names matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ pass unchanged."""
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "_monitor",
        "-rf",
        ".hidden",
        "x" * 65,
        "a/b",
        "a+",
        "a#",
        "a b",
        "$(id)",
        "`id`",
        "a;b",
        "naïve",
        "ok\n",
        "\u0661",  # an Arabic-Indic digit: "a digit" to str.isdigit, not to the rule
        None,
        5,
    ],
)
def test_invalid_names_are_rejected_with_the_rule(name: object) -> None:
    """Anything else raises InvalidName that explains the rule (never reaches a topic)."""
    with pytest.raises(InvalidName, match="service name"):
        validate_name(name)


def test_topics_follow_the_contract() -> None:
    """Every topic name of the wire contract, under the default prefix."""
    t = Topics()
    assert t.status("a") == "presence/a/status"
    assert t.ping("a") == "presence/a/ping"
    assert t.pong("a") == "presence/a/pong"
    assert t.cmd("a") == "presence/a/cmd"
    assert t.ack("a") == "presence/a/ack"
    assert t.verdict("a") == "presence/_monitor/services/a"
    assert t.monitor_ping == "presence/_monitor/ping"
    assert t.monitor_status == "presence/_monitor/status"
    assert t.events == "presence/_monitor/events"
    assert t.monitor_cmd == "presence/_monitor/cmd"
    assert t.wildcard("status") == "presence/+/status"
    assert t.verdicts == "presence/_monitor/services/+"
    with pytest.raises(InvalidName):
        t.status("a/b")


def test_split_accepts_only_valid_names_under_the_prefix() -> None:
    """split() maps topics back to (name, leaf) and refuses hostile or foreign topics."""
    t = Topics("site/presence")
    assert t.split("site/presence/web/status") == ("web", "status")
    assert t.split("site/presence/_monitor/ping") == ("_monitor", "ping")
    assert t.split("site/presence/_monitor/services/web") == ("web", "verdict")
    for topic in (
        "site/presence/$(id)/status",
        "site/presence/a b/status",
        "site/presencex/web/status",
        "other/web/status",
        "site/presence/web/status/extra",
        "site/presence/_monitor/services/-x",
    ):
        assert t.split(topic) is None, topic


@pytest.mark.parametrize("prefix", ["", "/p", "p/", "a//b", "a/+", "a/#", "$SYS"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    """A prefix must be plain topic levels."""
    with pytest.raises(ValueError, match="prefix"):
        validate_prefix(prefix)


def test_payloads_round_trip() -> None:
    """What we encode, we parse back to the same value."""
    status = Status("online", "s1", 1.5, host="h", pid=3, incarnation=2, group="g")
    assert parse_status(encode(status)) == status
    assert parse_ping(encode(Ping(5, 2.5))) == Ping(5, 2.5)
    pong = Pong(5, "s1", False, {"load": 0.3})
    assert parse_pong(encode(pong)) == pong
    verdict = Verdict("a", "hung", 1.0, "s", "missed_pongs", 2, 0.4, 1, {"attempt": 3})
    assert parse_verdict(encode(verdict)) == verdict
    event = Event(1.0, "a", "online", "hung", "missed_pongs")
    assert parse_event(encode(event)) == event


def test_wire_form_of_a_will_and_a_pong_uses_the_contract_keys() -> None:
    """Exact keys, as external dashboards read them."""
    will = json.loads(encode(Status("offline", "S", 1.0, reason="lost")))
    assert will == {"state": "offline", "session": "S", "since": 1.0, "reason": "lost"}
    pong = json.loads(encode(Pong(3, "S", True)))
    assert pong == {"seq": 3, "session": "S", "ok": True}
    event = json.loads(encode(Event(1.0, "a", "online", "hung", "x")))
    assert set(event) == {"ts", "service", "from", "to", "reason"}


def test_unknown_keys_are_ignored() -> None:
    """Forward compatible: a newer peer's extra keys do not break parsing."""
    status = parse_status(b'{"state":"online","session":"s","since":1,"new_thing":[1,2]}')
    assert status.state == "online"


def test_offline_without_reason_counts_as_lost() -> None:
    """A bare offline is treated like a Will."""
    assert parse_status(b'{"state":"offline","session":"s","since":1}').reason == "lost"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"nope",
        b"[]",
        b"null",
        b'{"state":"online"}',
        b'{"state":"maybe","session":"s","since":1}',
        b'{"state":"online","session":"","since":1}',
        b'{"state":"online","session":"s","since":-1}',
        b'{"state":"online","session":"s","since":NaN}',
        b'{"state":"online","session":"s","since":Infinity}',
        b'{"state":"online","session":"s","since":1e999}',
        b'{"state":"online","session":"s","since":true}',
        b'{"state":"online","session":"s\\u0000","since":1}',
        b'{"state":"online","session":"s","since":1,"pid":-1}',
        b'{"state":"online","session":"s","since":1,"pid":' + b"9" * 5000 + b"}",
        b'{"state":"online","session":"s","since":1,"group":"a/b"}',
        b"[" * 50_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b" " * (MAX_PAYLOAD + 1),
    ],
)
def test_bad_status_payloads_raise_payload_error(payload: bytes) -> None:
    """Non-UTF-8, deep nesting, NaN, huge numbers, wrong types: all PayloadError."""
    with pytest.raises(PayloadError):
        parse_status(payload)


def test_pong_field_types_are_checked() -> None:
    """ok must be a boolean and detail an object."""
    with pytest.raises(PayloadError, match="'ok'"):
        parse_pong(b'{"seq":1,"session":"s","ok":"yes"}')
    with pytest.raises(PayloadError, match="'detail'"):
        parse_pong(b'{"seq":1,"session":"s","ok":true,"detail":[1]}')
    with pytest.raises(PayloadError, match="'seq'"):
        parse_pong(b'{"seq":true,"session":"s","ok":true}')


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_parsers_only_ever_raise_payload_error_on_bytes(payload: bytes) -> None:
    """Arbitrary bytes: a model or PayloadError, nothing else."""
    for parse in PARSERS:
        with contextlib.suppress(PayloadError):
            parse(payload)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["state", "session", "since", "seq", "ts", "ok", "detail", "pid", "reason", "service", "from"]
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _json, max_size=8))
def test_parsers_only_ever_raise_payload_error_on_json(data: dict[str, object]) -> None:
    """Objects with the right keys and wrong values: a model or PayloadError, nothing else."""
    payload = json.dumps(data).encode()  # NaN and Infinity included, as Python writes them
    for parse in PARSERS:
        with contextlib.suppress(PayloadError):
            parse(payload)
