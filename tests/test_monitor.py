"""The monitor on a real broker: restarts, junk, forgery, a second monitor, a stalled broker."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.errors import ConnectionRefused
from presence.mqtt import Connection, Inbox, Message, cli_client_id, fetch_retained
from presence.protocol import Ping, Status, encode, parse_pong, parse_status
from tests.helpers import FAST, TOPICS, Monitors, MosquittoSub, ServiceProcess, Watcher

JUNK = [
    b"",
    b"\xff\xfe\x00garbage",
    b"not json",
    b"[1, 2, 3]",
    b'{"state": "online"}',
    b'{"state": "online", "session": 5, "since": "yesterday"}',
    b'{"seq": NaN, "ts": 1}',
    b'{"seq": 1e999, "ts": 1}',
    b'{"seq": ' + b"9" * 5000 + b', "ts": 1}',
    b'{"seq": true, "session": "x", "ok": "yes"}',
    b"[" * 20000 + b"]" * 20000,
    b'{"service": "alpha", "state": "online", "since": -1}',
    b'{"state":"offline","session":"\\u0000","since":1}',
]


def test_monitor_restart_rebuilds_the_picture_from_retained_topics(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """A new monitor takes over the verdicts without flapping, and learns what changed meanwhile."""
    first = monitors.start()
    alive = spawn("alpha").ready()
    frozen = spawn("beta").ready()
    doomed = spawn("gamma").ready()
    for name in ("alpha", "beta", "gamma"):
        watcher.wait_verdict(name, "online")
    frozen.signal(signal.SIGSTOP)
    watcher.wait_verdict("beta", "hung", timeout=5)

    first.stop()
    doomed.signal(signal.SIGKILL)  # dies while no monitor runs
    watcher.wait(lambda m: m.topic == TOPICS.status("gamma") and b'"lost"' in m.payload, 3)

    mark = watcher.mark()
    monitors.start()
    watcher.wait_verdict("gamma", "offline", timeout=5, start=mark, reason="lost")
    time.sleep(5 * FAST["ping_interval"])  # several rounds under the new monitor
    # Nothing flapped: alpha stayed online and beta stayed hung, without a single event.
    assert watcher.events("alpha", mark) == []
    assert watcher.events("beta", mark) == []
    assert [(e.from_state, e.to_state) for e in watcher.events("gamma", mark)] == [
        ("online", "offline")
    ]
    assert alive.proc.poll() is None


def test_garbage_on_every_subscribed_topic_is_survived(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """Junk on every topic the monitor and agent read is logged and ignored; both keep working."""
    monitors.start()
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    admin = Connection(broker.settings("monitor"), client_id=cli_client_id("junk"))
    admin.connect()
    try:
        topics = [
            TOPICS.status("alpha"),
            TOPICS.pong("alpha"),
            TOPICS.ping("alpha"),
            TOPICS.monitor_ping,
            TOPICS.verdict("alpha"),
            TOPICS.status("nobody"),
            TOPICS.monitor_status,
            "presence/$(id)/status",
            "presence/a b/pong",
        ]
        for topic in topics:
            for payload in JUNK:
                admin.publish(topic, payload, qos=1).wait(3)
        # Retained junk too, where retained messages are read.
        admin.publish(TOPICS.status("beta"), b"\x00junk", qos=1, retain=True).wait(3)
    finally:
        admin.close()

    # The agent still answers pings, from its own session.
    inbox = Inbox()
    pinger = Connection(broker.settings("monitor"), client_id=cli_client_id("p"), handler=inbox)
    pinger.connect()
    try:
        assert pinger.subscribe(TOPICS.pong("alpha"), 0)
        pinger.publish(TOPICS.ping("alpha"), encode(Ping(7, time.time())))
        reply = inbox.wait_for(lambda m: b'"seq":7,' in m.payload, 3)
        assert reply is not None
        assert parse_pong(reply.payload).session == svc.session
    finally:
        pinger.close()

    # The monitor still detects a crash, and the junk changed no verdict.
    assert {v.state for v in watcher.verdicts("alpha")} == {"online"}
    mark = watcher.mark()
    svc.signal(signal.SIGKILL)
    verdict, _ = watcher.wait_verdict("alpha", "offline", timeout=3, start=mark)
    assert verdict.reason == "lost"


def test_service_user_cannot_forge_or_read_another_service(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """The shipped ACL: beta cannot publish alpha's status or pong, read them, or take its Will."""
    monitors.start()
    with Agent("alpha", broker.settings("alpha")) as alpha:
        watcher.wait_verdict("alpha", "online")
        spy = MosquittoSub(broker, "beta", "-t", "presence/alpha/#", "-t", "presence/_monitor/#")
        try:
            mark = watcher.mark()
            forger = Connection(broker.settings("beta"), client_id=cli_client_id("forge"))
            forger.connect()
            forged = Status("offline", alpha.session or "", 1.0, reason="lost")
            forger.publish(TOPICS.status("alpha"), encode(forged), qos=1, retain=True).wait(3)
            forger.publish(TOPICS.pong("alpha"), b'{"seq":1,"session":"x","ok":false}').wait(1)
            forger.close()
            # Give the broker a few ping rounds in which it could have relayed something.
            time.sleep(5 * FAST["ping_interval"])
            assert watcher.statuses("alpha", mark) == []
            assert all(b'"session":"x"' not in m.payload for m in watcher.inbox.snapshot()[mark:])
            assert [v.state for v in watcher.verdicts("alpha", mark)] in ([], ["online"])
        finally:
            out = spy.stop()
        # beta saw only the monitor's broadcast pings, none of alpha's traffic or verdicts.
        received = [line for line in out if "received PUBLISH" in line]
        assert received, "beta should at least receive the broadcast ping"
        assert all("presence/_monitor/ping" in line for line in received), received

    # An agent for alpha logged in as beta: its birth is refused, with a hint at the cause.
    impostor = Agent("alpha", broker.settings("beta"))
    with pytest.raises(ConnectionRefused, match="must be named like the service"):
        impostor.start(wait=2)
    # A Will on alpha's status topic set by beta is not delivered when beta's connection dies.
    mark = watcher.mark()
    will = MosquittoSub(
        broker,
        "beta",
        "-t",
        "presence/beta/ping",
        "--will-topic",
        "presence/alpha/status",
        "--will-payload",
        '{"state":"offline","session":"forged","since":9e9,"reason":"lost"}',
        "--will-qos",
        "1",
        "--will-retain",
    )
    will.proc.kill()
    will.stop()
    # Our own marker, published after the kill, arrives; the forged Will never does.
    marker = Connection(broker.settings("beta"), client_id=cli_client_id("marker"))
    marker.connect()
    marker.publish(TOPICS.status("beta"), b"marker", qos=1).wait(3)
    marker.close()
    watcher.wait(lambda m: m.topic == TOPICS.status("beta") and m.payload == b"marker", 3, mark)
    assert all(b"forged" not in m.payload for m in watcher.inbox.snapshot()[mark:])
    retained = fetch_retained(
        broker.settings("dashboard"), [TOPICS.status("alpha")], client_id=cli_client_id("r")
    )
    assert [parse_status(m.payload).reason for m in retained] == ["shutdown"]


def test_a_second_monitor_on_the_same_id_makes_the_first_exit(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """Two monitors with one client id would kick each other forever; the displaced one exits."""
    first = monitors.start()
    second = monitors.start()
    deadline = time.monotonic() + 5
    while first.exit_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exit_error is not None
    assert "another monitor" in str(first.exit_error)
    mark = watcher.mark()

    # The one that stays ends up holding the retained monitor status, online.
    def second_online(m: Message) -> bool:
        return m.topic == TOPICS.monitor_status and second.session.encode() in m.payload

    # The displaced monitor's last reconnect knocked the second off once; it comes back.
    watcher.wait(second_online, 5, mark)
    retained = fetch_retained(
        broker.settings("dashboard"), [TOPICS.monitor_status], client_id=cli_client_id("r")
    )
    assert [parse_status(m.payload).session for m in retained] == [second.session]
    assert second.exit_error is None


def test_stalled_broker_voids_rounds_instead_of_blaming_services(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """While the broker is paused no ping comes back, so no service is marked suspect or hung."""
    monitors.start()
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        mark = watcher.mark()
        broker.pause()
        time.sleep(6 * FAST["ping_interval"])  # three times the hang bound
        broker.resume()
        time.sleep(4 * FAST["ping_interval"])
        assert [v.state for v in watcher.verdicts("alpha", mark)] in ([], ["online"])
        assert watcher.events("alpha", mark) == []
