"""presence.mqtt's receive path: the buffered reader and the lean PUBLISH decoder, over a real
broker, against every kind of packet paho would otherwise have handled itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTErrorCode

from presence import _speedups
from presence.broker import PrivateBroker
from presence.mqtt import Connection, Inbox, Message, cli_client_id

PROTOCOLS = ("5", "3.1.1")
_USER_PROPERTY = ("-D", "publish", "user-property", "origin", "test")  # paho decodes this one


def _listener(broker: PrivateBroker, protocol: str, inbox: Inbox) -> Connection:
    conn = Connection(
        broker.settings("monitor", protocol=protocol),
        client_id=cli_client_id("wire"),
        handler=inbox,
        subscriptions=[("presence/#", 1)],
    )
    conn.connect(timeout=5)
    assert conn.barrier(), "the subscription never took effect"
    return conn


def _pub(broker: PrivateBroker, *args: str) -> None:
    """Publish with the C client, which can set what our Connection never sends (properties)."""
    subprocess.run(
        [
            *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port)),
            *("-u", "monitor", "-P", broker.users["monitor"]),
            *args,
        ],
        check=True,
        timeout=10,
    )


def _wait(inbox: Inbox, topic: str) -> Message:
    message = inbox.wait_for(lambda m: m.topic == topic, timeout=5)
    assert message is not None, f"nothing arrived on {topic}"
    return message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_kind_of_publish_arrives_intact(
    broker: PrivateBroker, protocol: str, tmp_path: Path
) -> None:
    """QoS 0 (lean path), QoS 1 and a message with MQTT 5 properties (paho's path), live and
    retained, empty and larger than the read buffer, all arrive with the payload and retain
    flag they were sent with."""
    big = tmp_path / "big"
    # 100 KiB: larger than the 64 KiB read buffer, under the broker's 128 KiB packet limit
    big.write_bytes(bytes(range(256)) * 400)
    _pub(broker, "-t", "presence/old/status", "-m", "kept", "-r")
    inbox = Inbox()
    conn = _listener(broker, protocol, inbox)
    try:
        _pub(broker, "-t", "presence/a/pong", "-m", '{"q":0}')
        _pub(broker, "-t", "presence/b/pong", "-m", '{"q":1}', "-q", "1")
        _pub(broker, "-V", "5", "-t", "presence/c/pong", "-m", '{"p":1}', *_USER_PROPERTY)
        _pub(broker, "-t", "presence/d/pong", "-n")  # an empty payload
        _pub(broker, "-t", "presence/f/pong", "-m", "caf\u00e9 \u2713")
        _pub(broker, "-t", "presence/g/pong", "-f", str(big))
        kept = _wait(inbox, "presence/old/status")
        assert (kept.payload, kept.retained) == (b"kept", True)
        assert _wait(inbox, "presence/a/pong").payload == b'{"q":0}'
        assert _wait(inbox, "presence/b/pong").payload == b'{"q":1}'
        assert _wait(inbox, "presence/c/pong").payload == b'{"p":1}'
        assert _wait(inbox, "presence/d/pong").payload == b""
        assert _wait(inbox, "presence/f/pong").payload == "caf\u00e9 \u2713".encode()
        assert _wait(inbox, "presence/g/pong").payload == big.read_bytes()
        live = [m for m in inbox.snapshot() if m.topic != "presence/old/status"]
        assert len(live) == 6
        assert not any(m.retained for m in live)
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_burst_arrives_whole_and_in_order(broker: PrivateBroker, protocol: str) -> None:
    """5,000 messages sent back to back (many reads of the 64 KiB buffer, with packets cut at
    its edges), reach the handler complete, byte for byte and in the order they were sent."""
    inbox = Inbox()
    listener = _listener(broker, protocol, inbox)
    sender = Connection(broker.settings("monitor"), client_id=cli_client_id("burst"))
    sender.connect(timeout=5)
    try:
        sent = [f"{i:05d}".encode() * (1 + i % 7) for i in range(5000)]
        sent[2500] = bytes(range(256)) * 240  # 60 KiB, every byte value
        for i, payload in enumerate(sent):
            sender.publish(f"presence/s{i % 50}/pong", payload)
        last = inbox.wait_for(lambda m: m.payload == sent[-1], timeout=20)
        assert last is not None, f"only {len(inbox.snapshot())} of 5000 arrived"
        got = [m.payload for m in inbox.snapshot() if m.topic.endswith("/pong")]
        assert got == sent
    finally:
        sender.close()
        listener.close()


def test_the_reader_starts_clean_after_a_reconnect(broker: PrivateBroker) -> None:
    """After the broker restarts, the new connection's bytes are parsed from a fresh buffer:
    messages keep arriving intact (leftovers of the old socket would corrupt every packet)."""
    inbox = Inbox()
    conn = Connection(
        broker.settings("monitor"),
        client_id=cli_client_id("wire"),
        handler=inbox,
        subscriptions=[("presence/#", 0)],
    )
    conn.start()
    try:
        assert conn.wait_connected(5)
        assert conn.barrier()
        _pub(broker, "-t", "presence/before/pong", "-m", "one")
        assert _wait(inbox, "presence/before/pong").payload == b"one"
        broker.restart()
        assert inbox.wait_disconnected(1, timeout=10), "the restart was never noticed"
        assert conn.wait_connected(15), "never reconnected"
        assert conn.barrier(timeout=10)
        _pub(broker, "-t", "presence/after/pong", "-m", "two")
        assert _wait(inbox, "presence/after/pong").payload == b"two"
    finally:
        conn.close()


def test_the_short_cuts_speak_pahos_error_codes() -> None:
    """presence._speedups returns plain ints where paho returns MQTTErrorCode: they must agree."""
    assert _speedups.ERR_AGAIN == MQTTErrorCode.MQTT_ERR_AGAIN
    assert _speedups.ERR_SUCCESS == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert _speedups.ERR_NO_CONN == MQTTErrorCode.MQTT_ERR_NO_CONN


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos1_publishes_complete_and_refusals_still_come_through(
    broker: PrivateBroker, protocol: str
) -> None:
    """3,000 QoS 1 publishes (far more than the 100 in flight) all complete through the lean
    PUBACK path and arrive; a publish the broker refuses (MQTT 5 reports it) is still seen as
    refused, and the connection keeps working after it."""
    inbox = Inbox()
    listener = _listener(broker, protocol, inbox)
    sender = Connection(
        broker.settings("monitor", protocol=protocol), client_id=cli_client_id("q1")
    )
    sender.connect(timeout=5)
    try:
        # The short cut is really in place (otherwise this would only test paho).
        handler = sender._client._handle_pubackcomp
        assert type(handler.__self__).__name__ == "_LeanPuback"
        sent = [f'{{"n":{i}}}'.encode() for i in range(3000)]
        deliveries = [sender.publish("presence/_monitor/events", p, qos=1) for p in sent]
        assert all(d.wait(20) for d in deliveries), "not every QoS 1 publish completed"
        assert all(d.refusal is None for d in deliveries)
        last = inbox.wait_for(lambda m: m.payload == sent[-1], timeout=10)
        assert last is not None
        assert [m.payload for m in inbox.snapshot() if m.topic.endswith("events")] == sent
        if protocol == "5":
            # The monitor may not publish outside its prefix: the broker says so in the PUBACK.
            refused = sender.publish("elsewhere/status", b'{"x":1}', qos=1)
            assert refused.wait(5)
            assert refused.refusal is not None
            assert "authori" in refused.refusal.lower()
        after = sender.publish("presence/_monitor/events", b'{"after":1}', qos=1)
        assert after.wait(5)
        assert _wait(inbox, "presence/_monitor/events") is not None
    finally:
        sender.close()
        listener.close()
