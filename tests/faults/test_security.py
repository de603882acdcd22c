"""Security with the shipped mosquitto/ config: authentication, forgery, read isolation,
commands executed at most once, and hostile service names.

Every test runs a private mosquitto with the generated password file and the shipped ACL
(`broker` fixture). A canary file written by a restart action proves that nothing ran.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.commands import new_command
from presence.errors import ConfigError, ConnectionRefused, PayloadError
from presence.monitor import Monitor
from presence.mqtt import Connection, Delivery, Inbox, Message, cli_client_id, fetch_retained
from presence.protocol import (
    Ack,
    Command,
    Status,
    encode,
    parse_ack,
    parse_status,
)
from presence.settings import BrokerSettings, Settings, load_settings
from tests.helpers import FAST, ROOT, TOPICS, Monitors, MosquittoSub, Watcher
from tests.test_runner import PY, Run, _alive

PROTOCOLS = ["5", "3.1.1"]
MOSQUITTO_VERSION = {"5": "mqttv5", "3.1.1": "mqttv311"}


# ---------------------------------------------------------------------------------------------
# helpers


class Operator:
    """A connection that sends commands (as `admin` unless told) and collects every ack."""

    def __init__(self, broker: PrivateBroker, user: str = "admin", protocol: str = "5") -> None:
        self.inbox = Inbox()
        self.conn = Connection(
            broker.settings(user, protocol=protocol),
            client_id=cli_client_id("operator"),
            handler=self.inbox,
        )
        self.conn.connect()
        assert self.conn.subscribe(TOPICS.monitor_ack, 1)
        assert self.conn.subscribe(TOPICS.wildcard("ack"), 1)

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> Delivery:
        delivery = self.conn.publish(topic, payload, qos=1, retain=retain)
        assert delivery.wait(5), f"the broker did not acknowledge the publish to {topic}"
        return delivery

    def ack(self, command_id: str, timeout: float = 5.0, start: int = 0) -> Ack | None:
        def match(m: Message) -> bool:
            try:
                return parse_ack(m.payload).id == command_id
            except PayloadError:
                return False

        reply = self.inbox.wait_for(match, timeout, start)
        return None if reply is None else parse_ack(reply.payload)

    def mark(self) -> int:
        return len(self.inbox.snapshot())

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def operator(broker: PrivateBroker) -> Iterator[Operator]:
    """The admin user's command connection."""
    op = Operator(broker)
    try:
        yield op
    finally:
        op.close()


@pytest.fixture
def runs(tmp_path: Path, broker: PrivateBroker) -> Iterator[Callable[..., Run]]:
    """Start `presence run` processes; each (and by PDEATHSIG its child) is killed at teardown."""
    started: list[Run] = []

    def start(name: str, *args: str) -> Run:
        run = Run(tmp_path, broker, name, *args)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.cleanup()


def _counting_action(path: Path) -> dict[str, Any]:
    """An exec restart action appending one line (the reason) to `path` per run."""
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    return {"type": "exec", "argv": [PY, "-c", code, str(path), "{reason}"], "timeout": 5}


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < count:
        assert time.monotonic() < deadline, f"{path.name} has {_lines(path)}, not {count} lines"
        time.sleep(0.02)
    return _lines(path)


#: A bounded wait to prove that something does NOT happen (an action runs within
#: milliseconds of the verdict that starts it; a relayed message arrives within a round).
ABSENCE = 0.6


def _start_monitor(monitors: Monitors, broker: PrivateBroker, protocol: str, **kw: Any) -> Monitor:
    """A monitor on `protocol` (the fixture's helper only builds MQTT 5 settings)."""
    mark = monitors.watcher.mark()
    settings = Settings(
        broker=broker.settings("monitor", protocol=protocol),
        monitor={**FAST, **kw.pop("monitor", {})},
        **kw,
    )
    monitor = Monitor(settings).start()
    monitors.running.append(monitor)
    monitors.watcher.wait_monitor_online(start=mark)
    return monitor


def _alive_thread(monitor: Monitor) -> bool:
    return monitor._thread is not None and monitor._thread.is_alive()


# ---------------------------------------------------------------------------------------------
# authentication


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({}, id="anonymous"),
        pytest.param({"username": "alpha"}, id="user-without-password"),
        pytest.param({"username": "alpha", "password": "wrong"}, id="wrong-password"),
        pytest.param({"username": "alpha", "password": ""}, id="empty-password"),
        pytest.param({"username": "mallory", "password": "x"}, id="unknown-user"),
        pytest.param({"username": "alpha", "password": "beta"}, id="another-users-password"),
        pytest.param({"username": "monitor", "password": "admin"}, id="role-user-wrong-password"),
    ],
)
def test_unauthenticated_connects_are_refused(
    broker: PrivateBroker, protocol: str, credentials: dict[str, str]
) -> None:
    """Anonymous and wrong-password connects are refused: ConnectionRefused, never a session."""
    values = dict(credentials)
    if values.get("password") in broker.users:  # "another user's password", for real
        values["password"] = broker.users[values["password"]]
    settings = BrokerSettings(
        host="127.0.0.1", port=broker.port, protocol=protocol, keepalive=5, **values
    )
    conn = Connection(settings, client_id=cli_client_id("anon"))
    with pytest.raises(ConnectionRefused, match="refused the connection"):
        conn.connect()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("password", [None, "wrong"])
def test_an_agent_without_valid_credentials_is_refused(
    broker: PrivateBroker, watcher: Watcher, protocol: str, password: str | None
) -> None:
    """Agent.start() raises ConnectionRefused (anonymous, wrong password); no birth is seen."""
    username = None if password is None else "alpha"
    settings = BrokerSettings(
        host="127.0.0.1",
        port=broker.port,
        protocol=protocol,
        keepalive=5,
        username=username,
        password=password,
    )
    with pytest.raises(ConnectionRefused, match="check username and password"):
        Agent("alpha", settings).start(wait=3)
    assert watcher.statuses("alpha") == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_mosquitto_clients_without_valid_credentials_get_nothing_through(
    broker: PrivateBroker, watcher: Watcher, protocol: str
) -> None:
    """mosquitto_pub/_sub without -u, or with a wrong password, exit non-zero; nothing arrives."""
    base = ["-h", "127.0.0.1", "-p", str(broker.port), "-V", MOSQUITTO_VERSION[protocol]]
    attempts = [[], ["-u", "alpha", "-P", "wrong"], ["-u", "alpha"], ["-u", "nobody", "-P", "x"]]
    mark = watcher.mark()
    for creds in attempts:
        pub = subprocess.run(
            ["mosquitto_pub", *base, *creds, "-t", "presence/alpha/status", "-m", "ANON", "-r"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert pub.returncode != 0, (creds, pub.stderr)
        assert "not authori" in pub.stderr.lower(), pub.stderr
        sub = subprocess.run(
            ["mosquitto_sub", *base, *creds, "-t", "#", "-C", "1", "-W", "2"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert sub.returncode != 0, (creds, sub.stderr)
    # A marker from a real user, published after every attempt, arrives; nothing else did.
    marker = Connection(broker.settings("monitor"), client_id=cli_client_id("marker"))
    marker.connect()
    marker.publish(TOPICS.ack("ghost"), b"marker", qos=1).wait(3)
    marker.close()
    watcher.wait(lambda m: m.payload == b"marker", 5, mark)
    assert [m.topic for m in watcher.inbox.snapshot()[mark:]] == [TOPICS.ack("ghost")]
    assert (
        fetch_retained(
            broker.settings("dashboard"), [TOPICS.status("alpha")], client_id=cli_client_id("r")
        )
        == []
    )


# ---------------------------------------------------------------------------------------------
# forgery


def _forgeries(alpha_session: str, now: float) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, retain): everything a hostile user might try; all carry FORGED."""
    restart_alpha = new_command("restart", now, service="alpha", reason="hung").to_json()
    restart_web = new_command("restart", now, service="web").to_json()
    return [
        (
            TOPICS.status("alpha"),
            encode({"state": "offline", "session": alpha_session, "since": now, "x": "FORGED"}),
            True,
        ),
        (
            TOPICS.status("alpha"),
            encode({"state": "online", "session": "FORGED", "since": 1.0, "host": "FORGED"}),
            True,
        ),
        (
            TOPICS.pong("alpha"),
            encode({"seq": 1, "session": alpha_session, "ok": False, "detail": {"FORGED": 1}}),
            False,
        ),
        (TOPICS.ping("alpha"), encode({"seq": 1, "ts": now, "x": "FORGED"}), False),
        (TOPICS.monitor_ping, encode({"seq": 1, "ts": now, "x": "FORGED"}), False),
        # A later-started monitor's birth would make the real one give way (rule 5).
        (
            TOPICS.monitor_status,
            encode({"state": "online", "session": "FORGED", "since": now, "started": now + 1e6}),
            True,
        ),
        (
            TOPICS.verdict("alpha"),
            encode({"service": "alpha", "state": "failed", "since": now, "why": "FORGED"}),
            True,
        ),
        (
            TOPICS.events,
            encode({"ts": now, "service": "alpha", "from": "online", "to": "FORGED"}),
            False,
        ),
        (TOPICS.monitor_cmd, encode({**restart_alpha, "id": "FORGED-m"}), False),
        (TOPICS.cmd("web"), encode({**restart_web, "id": "FORGED-r"}), False),
        (TOPICS.ack("web"), encode({"id": "FORGED-a", "ok": True, "detail": "FORGED"}), False),
        (TOPICS.monitor_ack, encode({"id": "FORGED-b", "ok": True, "detail": "x"}), False),
        ("presence/_monitor/ha/alpha/restart", b"PRESS-FORGED", False),
        ("presence/_monitor/groups/api", b'{"group":"api","members":["FORGED"]}', True),
        ("homeassistant/status", b"online-FORGED", False),
    ]


#: Users that try every forgery: another service, the target itself (beyond its own status
#: and pong), the read-only dashboard and Home Assistant (beyond its buttons).
FORGERS = ["beta", "alpha", "dashboard", "homeassistant"]


def _allowed(user: str, topic: str) -> bool:
    """What the ACL does let `user` write among the forgeries (those are not forgeries)."""
    if user == "homeassistant":  # its restart buttons and its own discovery tree
        return topic in ("presence/_monitor/ha/alpha/restart", "homeassistant/status")
    if user == "dashboard":
        return False
    return topic in (TOPICS.status(user), TOPICS.pong(user))


def _forge_publishes(
    broker: PrivateBroker, protocol: str, alpha_session: str
) -> list[tuple[str, str, str | None]]:
    """Every forger publishes every forgery it may not write, at QoS 0 and 1; returns
    (user, topic, the broker's refusal of the QoS 1 copy)."""
    refusals = []
    for user in FORGERS:
        conn = Connection(
            broker.settings(user, protocol=protocol), client_id=cli_client_id("forge")
        )
        conn.connect()
        for topic, payload, retain in _forgeries(alpha_session, time.time()):
            if _allowed(user, topic):
                continue
            conn.publish(topic, payload, qos=0, retain=retain)
            delivery = conn.publish(topic, payload, qos=1, retain=retain)
            assert delivery.wait(5)  # the PUBACK: the broker has handled (and dropped) both
            refusals.append((user, topic, delivery.refusal))
        conn.close()
    return refusals


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forged_messages_from_other_users_reach_nobody(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    runs: Callable[..., Run],
    protocol: str,
) -> None:
    """Forged status, pong, ping, verdict, Will and commands from other users reach nobody."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    touch = {"type": "exec", "argv": ["touch", f"{canaries}/{{name}}"], "timeout": 5}
    monitor = _start_monitor(
        monitors,
        broker,
        "5",
        # startup_grace: the runner takes a second to start; `missing` would restart it.
        monitor={"settle": 0, "startup_grace": 30},
        services=[{"name": "alpha", "action": touch}, {"name": "web", "action": touch}],
        homeassistant={"enabled": True},
    )
    ha = Watcher(broker, user="monitor", topic="homeassistant/#")
    run = runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    # What the targets themselves receive (their own readable topics), as plain C clients.
    v = MOSQUITTO_VERSION[protocol]
    alpha_view = MosquittoSub(broker, "alpha", "-V", v, "-v", "-t", "presence/alpha/#")
    web_view = MosquittoSub(broker, "web", "-V", v, "-v", "-t", "presence/web/#")
    try:
        with Agent("alpha", broker.settings("alpha")) as alpha:
            child = _wait_runner_birth(watcher, 1).pid
            for name in ("alpha", "web"):
                watcher.wait_verdict(name, "online", timeout=10)
            mark, ha_mark = watcher.mark(), ha.mark()
            refusals = _forge_publishes(broker, protocol, alpha.session or "")
            # Last Wills set on other users' topics, fired by killing the connection.
            _forge_wills(broker, v, alpha.session or "")

            # Ordering barrier: a legitimate Will of beta, fired after the forged ones.
            legit = MosquittoSub(
                broker,
                "beta",
                "-V",
                v,
                "-t",
                "presence/beta/ping",
                "--will-topic",
                TOPICS.status("beta"),
                "--will-payload",
                "LEGIT-WILL",
            )
            legit.proc.kill()
            legit.stop()
            watcher.wait(lambda m: m.payload == b"LEGIT-WILL", 5, mark)
            time.sleep(ABSENCE)  # bounded: a relayed forgery or a restart would show by now

            seen = [m for m in watcher.inbox.snapshot()[mark:] if b"FORGED" in m.payload]
            assert seen == [], [(m.topic, m.payload[:80]) for m in seen]
            assert not [m for m in ha.inbox.snapshot()[ha_mark:] if b"FORGED" in m.payload]
            if protocol == "5":
                # MQTT 5 tells the forger: every QoS 1 forgery was refused as not authorised.
                assert all(r == "Not authorized" for _, _, r in refusals), refusals
            assert _alive_thread(monitor)
            assert monitor.exit_error is None
            assert watcher.events("alpha", mark) == []
            assert watcher.events("web", mark) == []
            assert list(canaries.iterdir()) == []
            assert run.proc.poll() is None
            assert child is not None
            assert _alive(child)
            assert not [s for s in watcher.statuses("web", mark) if s.incarnation > 1]
            assert alpha.session is not None
            assert parse_status(_retained(broker, TOPICS.status("alpha"))).session == alpha.session
    finally:
        targets_saw = alpha_view.stop() + web_view.stop()
        ha.close()
    assert not [line for line in targets_saw if "FORGED" in line]


def _forge_wills(broker: PrivateBroker, version: str, alpha_session: str) -> None:
    """Connections that set a Will on a topic their user may not write, then die (SIGKILL)."""
    now = time.time()
    restart = {**new_command("restart", now, service="alpha").to_json(), "id": "FORGED-w"}
    wills = [
        (
            "beta",
            TOPICS.status("alpha"),
            {"state": "offline", "session": alpha_session, "since": now, "x": "FORGED"},
        ),
        ("beta", TOPICS.monitor_cmd, restart),
        ("alpha", TOPICS.monitor_status, {"state": "offline", "session": "FORGED", "since": now}),
        (
            "dashboard",
            TOPICS.status("alpha"),
            {"state": "offline", "session": alpha_session, "since": now, "x": "FORGED"},
        ),
    ]
    for user, topic, payload in wills:
        sub = MosquittoSub(
            broker,
            user,
            "-V",
            version,
            "-t",
            "presence/_monitor/ping",
            "--will-topic",
            topic,
            "--will-payload",
            json.dumps(payload),
            "--will-qos",
            "1",
            "--will-retain",
        )
        sub.proc.kill()
        sub.stop()


def _retained(broker: PrivateBroker, topic: str) -> bytes:
    found = fetch_retained(broker.settings("dashboard"), [topic], client_id=cli_client_id("r"))
    assert len(found) == 1, f"no retained message on {topic}"
    return found[0].payload


# ---------------------------------------------------------------------------------------------
# read isolation


#: Everything the `beta` service user may read.
BETA_READS = {
    TOPICS.status("beta"),
    TOPICS.ping("beta"),
    TOPICS.cmd("beta"),
    TOPICS.monitor_ping,
}


def _published_topics(lines: list[str]) -> list[str]:
    """Topics of the PUBLISH packets a `mosquitto_sub -d` received."""
    out = []
    for line in lines:
        if "received PUBLISH" in line:
            out.append(line.split("'")[1])
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_service_user_reads_only_its_own_topics(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    operator: Operator,
    protocol: str,
) -> None:
    """beta subscribed to # and presence/# receives its own status/ping/cmd and the broadcast."""
    v = MOSQUITTO_VERSION[protocol]
    spy = MosquittoSub(
        broker, "beta", "-V", v, "-t", "#", "-t", "presence/#", "-t", "$SYS/#", "-t", "+/+/+"
    )
    inbox = Inbox()
    spy2 = Connection(
        broker.settings("beta", protocol=protocol), client_id=cli_client_id("spy"), handler=inbox
    )
    spy2.connect()
    for topic in ("#", "presence/+/status", "presence/_monitor/#", "homeassistant/#"):
        spy2.subscribe(topic, 1)
    try:
        mark = watcher.mark()
        monitors.start(monitor={"settle": 0}, homeassistant={"enabled": True})
        with Agent("alpha", broker.settings("alpha")), Agent("beta", broker.settings("beta")):
            watcher.wait_verdict("alpha", "online")
            watcher.wait_verdict("beta", "online")
            # Targeted pings, commands for alpha, beta and the monitor, answered on acks.
            pinger = Connection(broker.settings("monitor"), client_id=cli_client_id("p"))
            pinger.connect()
            for name in ("alpha", "beta"):
                pinger.publish(TOPICS.ping(name), b'{"seq":5,"ts":1}', qos=1).wait(3)
            pinger.close()
            for topic in (TOPICS.cmd("alpha"), TOPICS.cmd("beta"), TOPICS.monitor_cmd):
                command = new_command("pause", time.time(), service="nobody")
                operator.send(topic, encode(command))
            assert operator.ack(command.id) is not None  # the monitor's answer to the last one
            watcher.wait(lambda m: m.topic == TOPICS.monitor_ack, 5, mark)
            # What beta must not read did happen (the dashboard saw it all). Waited for, not
            # sampled: a pong (QoS 0, from the agents' own loops) may come after the ack.
            expected_elsewhere = {
                TOPICS.status("alpha"),
                TOPICS.pong("alpha"),
                TOPICS.ping("alpha"),
                TOPICS.cmd("alpha"),
                TOPICS.pong("beta"),
                TOPICS.verdict("alpha"),
                TOPICS.verdict("beta"),
                TOPICS.events,
                TOPICS.monitor_status,
                TOPICS.monitor_ack,
            }
            for topic in sorted(expected_elsewhere):
                found = watcher.inbox.wait_for(lambda m, topic=topic: m.topic == topic, 10, mark)
                assert found is not None, f"nothing on {topic}"
            # The broadcast ping reaches beta (a round or two after the monitor came up).
            spy.expect(f"'{TOPICS.monitor_ping}'")
            assert inbox.wait_for(lambda m: m.topic == TOPICS.monitor_ping, 5) is not None
            # A last ping to beta: once the spy has it, it has had everything before it.
            last = Connection(broker.settings("monitor"), client_id=cli_client_id("p"))
            last.connect()
            last.publish(TOPICS.ping("beta"), b'{"seq":6,"ts":1}', qos=1).wait(3)
            last.close()
            spy.expect('"seq":6')
            assert inbox.wait_for(lambda m: m.payload == b'{"seq":6,"ts":1}', 5) is not None
    finally:
        lines = spy.stop()
        spy2.close()
    received = _published_topics(lines)
    assert set(received) <= BETA_READS, set(received) - BETA_READS
    assert {TOPICS.monitor_ping, TOPICS.ping("beta"), TOPICS.cmd("beta")} <= set(received)
    received2 = {m.topic for m in inbox.snapshot()}
    assert received2 <= BETA_READS, received2 - BETA_READS
    assert TOPICS.monitor_ping in received2


# ---------------------------------------------------------------------------------------------
# commands: executed at most once


@pytest.fixture
def counted(tmp_path: Path) -> Path:
    """The file a counting restart action appends to (one line per run)."""
    return tmp_path / "restarts"


def _command_monitor(
    monitors: Monitors, broker: PrivateBroker, counted: Path, protocol: str = "5"
) -> Monitor:
    return _start_monitor(
        monitors,
        broker,
        protocol,
        monitor={"settle": 0, "startup_grace": 3600},
        # verify_timeout: an unverified manual restart is never retried during a test.
        services=[
            {
                "name": "alpha",
                "action": _counting_action(counted),
                "restart": {"verify_timeout": 600},
            }
        ],
    )


def test_a_monitor_command_runs_once_and_its_replay_is_refused(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    operator: Operator,
    counted: Path,
) -> None:
    """`restart alpha` on P/_monitor/cmd runs the action once; the same command again is refused."""
    _command_monitor(monitors, broker, counted)
    first = Agent("alpha", broker.settings("alpha")).start()
    second: Agent | None = None
    try:
        watcher.wait_verdict("alpha", "online")
        command = new_command("restart", time.time(), service="alpha")
        operator.send(TOPICS.monitor_cmd, encode(command))
        ack = operator.ack(command.id)
        assert ack is not None
        assert (ack.ok, ack.detail) == (True, "restart alpha: done")
        assert _wait_lines(counted, 1) == ["manual"]
        # Complete the restart: a new session comes online, the monitor is idle again and
        # would run the action at once for a fresh command.
        first.stop()
        second = Agent("alpha", broker.settings("alpha")).start()
        session = second.session
        watcher.wait_verdict("alpha", "online", timeout=5, where=lambda v: v.session == session)

        mark = operator.mark()
        operator.send(TOPICS.monitor_cmd, encode(command))  # the replay
        again = operator.ack(command.id, start=mark)
        assert again is not None
        assert again.ok is False
        assert "replay" in again.detail
        time.sleep(ABSENCE)  # bounded: the action would have run within milliseconds
        assert _lines(counted) == ["manual"]
        assert [v.restarts for v in watcher.verdicts("alpha")][-1] == 1
        # A fresh command does run: the refusal was about the replay, not about the state.
        fresh = new_command("restart", time.time(), service="alpha")
        operator.send(TOPICS.monitor_cmd, encode(fresh))
        assert (operator.ack(fresh.id) or Ack("", False)).ok
        assert _wait_lines(counted, 2) == ["manual", "manual"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_replayed_pause_does_not_undo_a_later_resume(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, operator: Operator, counted: Path
) -> None:
    """pause, resume, then the pause again (replayed): refused, the service stays not paused."""
    _command_monitor(monitors, broker, counted)
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        pause = new_command("pause", time.time(), service="alpha")
        resume = new_command("resume", time.time(), service="alpha")
        for command in (pause, resume):
            operator.send(TOPICS.monitor_cmd, encode(command))
            assert (operator.ack(command.id) or Ack("", False)).ok
        watcher.wait_verdict("alpha", "online", where=lambda v: not (v.extra or {}).get("paused"))
        mark, verdicts = operator.mark(), watcher.mark()
        operator.send(TOPICS.monitor_cmd, encode(pause))
        ack = operator.ack(pause.id, start=mark)
        assert ack is not None
        assert ack.ok is False
        assert "replay" in ack.detail
        time.sleep(ABSENCE)  # bounded: a paused verdict would be republished at once
        assert not [v for v in watcher.verdicts("alpha", verdicts) if (v.extra or {}).get("paused")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_late_far_future_and_retained_monitor_commands_are_refused(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    operator: Operator,
    counted: Path,
    protocol: str,
) -> None:
    """Expired, >600 s and retained restart commands: refused with the reason, nothing runs."""
    _command_monitor(monitors, broker, counted, protocol)
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        now = time.time()
        cases = [
            (new_command("restart", now - 60, service="alpha"), False, "expired"),
            (Command("far0ff", "restart", now + 3600, "alpha"), False, "more than 600 s"),
            (new_command("restart", now, service="alpha"), True, "retained"),
        ]
        for command, retain, why in cases:
            operator.send(TOPICS.monitor_cmd, encode(command), retain=retain)
            ack = operator.ack(command.id)
            if retain:
                operator.send(TOPICS.monitor_cmd, b"", retain=True)  # clear it again
            assert ack is not None, f"no answer to the {why} command"
            assert (ack.ok, why in ack.detail) == (False, True), (why, ack.detail)
        time.sleep(ABSENCE)  # bounded: an accepted restart would have run by now
        assert _lines(counted) == []
        assert {v.state for v in watcher.verdicts("alpha")} == {"online"}


def test_commands_waiting_for_a_starting_monitor_are_refused_when_retained_or_late(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, operator: Operator, counted: Path
) -> None:
    """Retained, or queued for the absent monitor and expired meanwhile: refused on reconnect."""
    first = _command_monitor(monitors, broker, counted)  # creates the persistent session
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        first.stop()
        monitors.running.remove(first)
        kept = new_command("restart", time.time(), service="alpha")
        operator.send(TOPICS.monitor_cmd, encode(kept), retain=True)
        late = new_command("restart", time.time(), lifetime=0.5, service="alpha")
        operator.send(TOPICS.monitor_cmd, encode(late))  # queued in the monitor's session
        time.sleep(1.0)  # the queued command expires while the monitor is away
        _command_monitor(monitors, broker, counted)
        for command, why in ((kept, "retained"), (late, "expired")):
            ack = operator.ack(command.id, timeout=5)
            assert ack is not None, f"no answer to the {why} command"
            assert ack.ok is False
            assert why in ack.detail, ack.detail
        operator.send(TOPICS.monitor_cmd, b"", retain=True)
        time.sleep(ABSENCE)  # bounded: an accepted restart would have run by now
        assert _lines(counted) == []


def test_a_command_replayed_to_a_restarted_monitor_is_refused(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, operator: Operator, counted: Path
) -> None:
    """A command the previous monitor process executed is a replay for its successor too."""
    first = _command_monitor(monitors, broker, counted)
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        command = new_command("restart", time.time(), lifetime=60, service="alpha")
        operator.send(TOPICS.monitor_cmd, encode(command))
        assert (operator.ack(command.id) or Ack("", False)).ok
        assert _wait_lines(counted, 1) == ["manual"]
        first.stop()  # e.g. a crash and a supervisor restart, well within the command's expiry
        monitors.running.remove(first)
        _command_monitor(monitors, broker, counted)
        mark = operator.mark()
        operator.send(TOPICS.monitor_cmd, encode(command))  # the same bytes, replayed
        ack = operator.ack(command.id, start=mark)
        time.sleep(ABSENCE)  # bounded: the action would have run within milliseconds
        assert _lines(counted) == ["manual"], "the replayed command ran a second time"
        assert ack is not None
        assert ack.ok is False
        assert "replay" in ack.detail


def _runner_births(watcher: Watcher, start: int = 0) -> list[Status]:
    return [s for s in watcher.statuses("web", start) if s.state == "online" and s.incarnation]


def _wait_runner_birth(watcher: Watcher, incarnation: int, start: int = 0) -> Status:
    deadline = time.monotonic() + 20
    while True:
        found = [s for s in _runner_births(watcher, start) if s.incarnation == incarnation]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no birth of incarnation {incarnation}"
        time.sleep(0.05)


def test_runner_refuses_a_retained_command_waiting_at_start_unknown_and_far_future_ones(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher, operator: Operator
) -> None:
    """A runner refuses a retained command found at start, unknown ones and >600 s expiries."""
    kept = new_command("restart", time.time(), service="web")
    operator.send(TOPICS.cmd("web"), encode(kept), retain=True)
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    child = _wait_runner_birth(watcher, 1).pid
    ack = operator.ack(kept.id, timeout=10)
    operator.send(TOPICS.cmd("web"), b"", retain=True)
    assert ack is not None
    assert (ack.ok, "retained" in ack.detail) == (False, True), ack.detail
    now = time.time()
    for command, why in (
        (Command("unk0wn", "rm -rf /", now + 30, "web"), "unknown command"),
        (Command("far0ff", "restart", now + 3600, "web"), "more than 600 s"),
    ):
        operator.send(TOPICS.cmd("web"), encode(command))
        ack = operator.ack(command.id)
        assert ack is not None
        assert (ack.ok, why in ack.detail) == (False, True), ack.detail
    time.sleep(ABSENCE)  # bounded: a restart would have announced incarnation 2 by now
    assert {(s.pid, s.incarnation) for s in _runner_births(watcher)} == {(child, 1)}
    assert child is not None
    assert _alive(child)


def test_a_command_replayed_to_a_restarted_runner_is_refused(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher, operator: Operator
) -> None:
    """A restart the previous runner process executed is a replay for its successor too."""
    first = runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    _wait_runner_birth(watcher, 1)
    command = new_command("restart", time.time(), lifetime=60, service="web")
    operator.send(TOPICS.cmd("web"), encode(command))
    assert (operator.ack(command.id, timeout=10) or Ack("", False)).ok
    _wait_runner_birth(watcher, 2)
    first.proc.send_signal(signal.SIGTERM)  # e.g. a host reboot, well within the expiry
    first.wait()
    mark = watcher.mark()
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    child = _wait_runner_birth(watcher, 1, mark).pid
    ack_mark = operator.mark()
    operator.send(TOPICS.cmd("web"), encode(command))  # the same bytes, replayed
    ack = operator.ack(command.id, timeout=10, start=ack_mark)
    time.sleep(ABSENCE)  # bounded: a restart would have announced incarnation 2 by now
    assert {(s.pid, s.incarnation) for s in _runner_births(watcher, mark)} == {(child, 1)}, (
        "the replayed command restarted the child"
    )
    assert ack is not None
    assert ack.ok is False
    assert "replay" in ack.detail


# ---------------------------------------------------------------------------------------------
# hostile service names


HOSTILE = [
    "$(id)",
    "`touch x`",
    "a;b",
    "-rf",
    "naïve",
    "ä",
    "a b",
    "alpha ",
    " alpha",
    "_evil",
    ".hidden",
    "..",
    "\uff41\uff4c\uff50\uff48\uff41",  # "alpha" in fullwidth letters
    "alpha\u200b",  # a zero-width space
    "\u0661",  # an Arabic-Indic digit
    "x" * 65,
    "$HOME",
    "a|b",
    "a&&b",
    "a>b",
    "'quoted'",
    '"quoted"',
    "a\\b",
]
#: Not even publishable as a topic level (mosquitto drops the connection of a client that
#: sends a control character or a wildcard in a topic name), but still refused by the config.
UNPUBLISHABLE = ["alpha\n", "a\x00", "a+b", "a#", "a/b", "", "alpha\t"]
#: Valid names a careless sanitiser might turn hostile ones into: declared, with the canary.
DECOYS = ["id", "touchx", "touch", "x", "a", "b", "ab", "rf", "naive", "nave", "ae", "alpha"]


def _hostile_payloads(now: float) -> list[tuple[bytes, bool]]:
    birth = encode({"state": "online", "session": "0badc0de", "since": now, "pid": 1})
    will = encode({"state": "offline", "session": "0badc0de", "since": now, "reason": "lost"})
    exited = encode(
        {
            "state": "offline",
            "session": "0badc0de",
            "since": now,
            "reason": "exited",
            "exit_code": 1,
        }
    )
    return [(birth, True), (will, True), (birth, False), (exited, False)]


def test_hostile_names_on_status_topics_are_rejected_before_any_action(
    tmp_path: Path,
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    operator: Operator,
) -> None:
    """Births and Wills under hostile names: no verdict, no event, no discovery, no command."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    touch = {"type": "exec", "argv": ["touch", f"{canaries}/{{name}}"], "timeout": 5}
    publisher = Connection(broker.settings("monitor"), client_id=cli_client_id("hostile"))
    publisher.connect()
    ha = Watcher(broker, user="monitor", topic="homeassistant/#")
    try:
        # Retained before the monitor starts (it reads statuses and verdicts at start-up)...
        verdict = encode({"service": "alpha", "state": "failed", "since": 1.0, "restarts": 9})
        for name in HOSTILE:
            topic = f"presence/_monitor/services/{name}"
            assert publisher.publish(topic, verdict, 1, True).wait(3)
        watcher.wait(lambda m: m.topic.endswith(HOSTILE[-1]), 5)  # our own, seen: mark after
        mark = watcher.mark()
        for name in HOSTILE:
            for payload, retain in _hostile_payloads(time.time())[:2]:
                assert publisher.publish(f"presence/{name}/status", payload, 1, retain).wait(3)
        monitor = monitors.start(
            monitor={"settle": 0, "startup_grace": 3600},
            services=[{"name": name, "action": touch} for name in DECOYS],
            homeassistant={"enabled": True},
        )
        # ...and live, with pongs, acks, Home Assistant presses and commands naming them.
        for name in HOSTILE:
            topic = f"presence/{name}"
            for payload, retain in _hostile_payloads(time.time()):
                assert publisher.publish(f"{topic}/status", payload, 1, retain).wait(3)
            assert publisher.publish(
                f"{topic}/pong", b'{"seq":1,"session":"0badc0de","ok":false}', 1
            ).wait(3)
            assert publisher.publish(f"presence/_monitor/ha/{name}/restart", b"PRESS", 1).wait(3)
            command = new_command("restart", time.time()).to_json()
            operator.send(TOPICS.monitor_cmd, encode({**command, "service": name}))
        # Barrier: a valid birth after all of them; once its verdict is out, the monitor has
        # handled everything before it (one publisher, one ordered stream).
        assert publisher.publish(
            TOPICS.status("fz-ok"), _hostile_payloads(time.time())[0][0], 1, True
        ).wait(3)
        watcher.wait_verdict("fz-ok", "online", timeout=5, start=mark)
        time.sleep(ABSENCE)  # bounded: a restart action would have created its canary by now
        assert list(canaries.iterdir()) == []
        hostile_events = _hostile_events(watcher, mark)
        # Positive control: the same birth and Will under a declared name ("rf", what a
        # careless sanitiser makes of "-rf") runs the restart action at once.
        for payload, retain in _hostile_payloads(time.time())[:2]:
            assert publisher.publish(TOPICS.status("rf"), payload, 1, retain).wait(3)
        deadline = time.monotonic() + 5
        while not (canaries / "rf").exists():
            assert time.monotonic() < deadline, "the canary action never ran for a valid name"
            time.sleep(0.05)
    finally:
        publisher.close()
        ha.close()

    assert _alive_thread(monitor)
    assert hostile_events == []
    services = {
        m.topic.rsplit("/", 1)[1]
        for m in watcher.inbox.snapshot()[mark:]
        if m.topic.startswith("presence/_monitor/services/")
    }
    assert services <= {*DECOYS, "fz-ok"}, services - {*DECOYS, "fz-ok"}
    for message in ha.inbox.snapshot():
        assert not any(name in message.topic for name in HOSTILE if len(name) > 2), message.topic
    # Operator commands naming them got no action either (and the decoys were never touched).
    others = [d for d in DECOYS if d != "rf"]
    assert not [v for d in others for v in watcher.verdicts(d) if v.state != "unknown"]


def _hostile_events(watcher: Watcher, mark: int) -> list[dict[str, Any]]:
    """Events since `mark` about anything but the declared decoys and the barrier service."""
    events = [
        json.loads(m.payload) for m in watcher.inbox.snapshot()[mark:] if m.topic == TOPICS.events
    ]
    return [e for e in events if e.get("service") not in {*DECOYS, "fz-ok"}]


@pytest.mark.parametrize("name", HOSTILE + UNPUBLISHABLE)
def test_hostile_names_cannot_be_declared(tmp_path: Path, name: str) -> None:
    """Configuration naming a hostile service fails validation with the name rule."""
    with pytest.raises(ValidationError, match="invalid service name"):
        Settings(services=[{"name": name}])
    config = tmp_path / "presence.toml"
    config.write_text(f"[[services]]\nname = {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match=r"services\.0\.name: invalid service name"):
        load_settings(config)


def test_hostile_names_are_refused_by_the_command_line_before_connecting() -> None:
    """`presence run --name '$(id)'` and `presence restart '$(id)'` exit 2 naming the rule."""
    for argv in (
        ["run", "--name", "$(id)", "--", "true"],
        ["restart", "$(id)"],
        ["ping", "--", "-rf"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "presence", *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 2, (argv, result.stderr)
        assert "invalid service name" in result.stderr


def test_wildcards_cannot_be_published_as_names(broker: PrivateBroker) -> None:
    """Topics with + or # are refused by the client library and by mosquitto_pub."""
    conn = Connection(broker.settings("monitor"), client_id=cli_client_id("wild"))
    conn.connect()
    try:
        for topic in ("presence/a+b/status", "presence/#/status", "presence/+/status"):
            assert conn.publish(topic, b"x", qos=1).wait(1) is False
    finally:
        conn.close()
    pub = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-u",
            "monitor",
            "-P",
            broker.users["monitor"],
            "-t",
            "presence/+/status",
            "-m",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert pub.returncode != 0
