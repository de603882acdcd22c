"""`presence run` with real child processes, a real broker and (where it matters) the monitor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from presence.broker import PrivateBroker, free_port
from presence.commands import new_command
from presence.mqtt import Connection, Inbox, cli_client_id
from presence.protocol import Command, Status, encode, parse_ack, parse_status
from tests.helpers import FAST, ROOT, TOPICS, Monitors, Watcher, hang_bound

PY = sys.executable


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Run:
    """`python -m presence run ...` as a real process, output captured to files."""

    def __init__(self, tmp: Path, broker: PrivateBroker, name: str, *args: str, extra: str = ""):
        self.name = name
        cfg = tmp / f"run-{name}.toml"
        cfg.write_text(
            f'[broker]\nport = {broker.port}\nusername = "{name}"\n'
            f'password = "{broker.users[name]}"\nkeepalive = 5\nreconnect_max = 1\n{extra}'
        )
        self.out = tmp / f"run-{name}.out"
        self.err = tmp / f"run-{name}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PRESENCE_CONFIG", None)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "presence", "run", "-c", str(cfg), "--name", name, *args],
                stdout=out,
                stderr=err,
                env=env,
                cwd=ROOT,
            )

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def expect_output(self, text: str, timeout: float = 10) -> None:
        """Wait until the program's passed-through stdout contains `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no {text!r} on stdout in {timeout} s"
            time.sleep(0.02)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs(tmp_path: Path, broker: PrivateBroker) -> Iterator[Callable[..., Run]]:
    """Start runners; every runner (and so, by PDEATHSIG, its child) is killed at teardown."""
    started: list[Run] = []

    def start(name: str, *args: str, extra: str = "") -> Run:
        run = Run(tmp_path, broker, name, *args, extra=extra)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.cleanup()


def birth(
    watcher: Watcher, name: str, incarnation: int, timeout: float = 15, start: int = 0
) -> Status:
    """Wait for the runner's birth of `incarnation` (it carries the child's pid)."""

    def match(m: object) -> bool:
        if getattr(m, "topic", None) != TOPICS.status(name):
            return False
        status = parse_status(m.payload)  # type: ignore[attr-defined]
        return status.state == "online" and status.incarnation == incarnation

    return parse_status(watcher.wait(match, timeout, start).payload)


def send(
    broker: PrivateBroker, user: str, name: str, command: Command, *, retain: bool = False
) -> Inbox:
    """Publish `command` to P/<name>/cmd as `user`; returns an inbox subscribed to the acks."""
    inbox = Inbox()
    conn = Connection(broker.settings(user), client_id=cli_client_id("cmd"), handler=inbox)
    conn.connect()
    assert conn.subscribe(TOPICS.ack(name), 1) or user not in ("admin", "monitor")
    conn.publish(TOPICS.cmd(name), encode(command), qos=1, retain=retain).wait(3)
    inbox.conn = conn  # type: ignore[attr-defined]
    return inbox


def ack_of(inbox: Inbox, command_id: str, timeout: float = 10) -> tuple[bool, str] | None:
    reply = inbox.wait_for(lambda m: parse_ack(m.payload).id == command_id, timeout)
    return None if reply is None else (parse_ack(reply.payload).ok, parse_ack(reply.payload).detail)


def test_child_exit_is_offline_exited_with_its_code(
    runs: Callable[..., Run], monitors: Monitors, watcher: Watcher
) -> None:
    """The program exits 3: verdict offline/exited with exit_code 3; the runner stays on."""
    monitors.start()
    run = runs("web", "--", PY, "-c", "import sys, time; time.sleep(1); sys.exit(3)")
    verdict, _ = watcher.wait_verdict("web", "offline", timeout=15, reason="exited")
    assert verdict.extra is not None
    assert verdict.extra["exit_code"] == 3
    time.sleep(3 * FAST["ping_interval"])
    assert run.proc.poll() is None  # still connected, still the monitor's hands
    assert not [s for s in watcher.statuses("web") if s.reason == "lost"]


def test_kill_9_of_the_runner_is_a_will_and_takes_the_child_along(
    runs: Callable[..., Run], monitors: Monitors, watcher: Watcher
) -> None:
    """The host side is gone: Will, reason lost. PDEATHSIG kills the orphaned child too."""
    monitors.start()
    run = runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    child = birth(watcher, "web", 1).pid
    assert child is not None
    assert _alive(child)
    watcher.wait_verdict("web", "online")
    mark = watcher.mark()
    run.proc.kill()
    verdict, _ = watcher.wait_verdict("web", "offline", timeout=3, start=mark)
    assert verdict.reason == "lost"
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_frozen_child_behind_an_http_probe_is_unhealthy_then_recovers(
    runs: Callable[..., Run], monitors: Monitors, watcher: Watcher
) -> None:
    """SIGSTOP of the child (the runner lives): unhealthy within the bound; SIGCONT: online."""
    monitors.start()
    port = free_port()
    runs(
        "web",
        "--probe-http",
        f"http://127.0.0.1:{port}/health",
        "--probe-interval",
        "0.2",
        "--probe-timeout",
        "0.3",
        "--probe-grace",
        "3",
        "--",
        PY,
        "-m",
        "tests.programs.httpchild",
        str(port),
    )
    child = birth(watcher, "web", 1).pid
    assert child is not None
    # Wait for the verdict a first pong brings (it carries a round trip): the service really
    # answers. (The birth's own `online` verdict comes before it, and would race the freeze.)
    watcher.wait_verdict("web", "online", where=lambda v: v.rtt_ms is not None)
    mark = watcher.mark()
    frozen = time.monotonic()
    os.kill(child, signal.SIGSTOP)
    try:
        verdict, message = watcher.wait_verdict("web", "unhealthy", timeout=5, start=mark)
        took = message.received - frozen
        bound = 0.3 + hang_bound()
        assert took <= bound + 0.5, took
        assert verdict.extra is not None
        assert verdict.extra["detail"]["child"] == "stopped (SIGSTOP)"
        thawed = watcher.mark()  # the recovery is what comes after the unhealthy verdict
    finally:
        os.kill(child, signal.SIGCONT)
    verdict, _ = watcher.wait_verdict("web", "online", timeout=5, start=thawed)
    assert verdict.reason == "pong"


def test_restart_command_restarts_the_child_and_is_acknowledged(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """`restart` on P/<name>/cmd: a new child pid, incarnation 2, ack ok; replays refused."""
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    first = birth(watcher, "web", 1).pid
    command = new_command("restart", time.time(), service="web")
    inbox = send(broker, "admin", "web", command)
    ok, detail = ack_of(inbox, command.id) or (False, "no ack")
    assert ok
    second = birth(watcher, "web", 2)
    assert second.pid != first
    assert f"started pid {second.pid}, incarnation 2" == detail
    assert first is not None
    assert not _alive(first)
    # The same command again (a replay) is refused and changes nothing.
    mark = len(inbox.snapshot())
    inbox.conn.publish(TOPICS.cmd("web"), encode(command), qos=1).wait(3)  # type: ignore[attr-defined]
    reply = inbox.wait_for(lambda m: parse_ack(m.payload).id == command.id, 5, start=mark)
    assert reply is not None
    assert parse_ack(reply.payload).ok is False
    assert "replay" in parse_ack(reply.payload).detail
    inbox.conn.close()  # type: ignore[attr-defined]


def test_late_and_retained_commands_are_refused(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """An expired command and a retained one are refused, never executed."""
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    first = birth(watcher, "web", 1).pid
    late = new_command("restart", time.time() - 60, service="web")
    inbox = send(broker, "admin", "web", late)
    ok, detail = ack_of(inbox, late.id) or (True, "")
    assert not ok
    assert "expired" in detail
    kept = new_command("restart", time.time(), service="web")
    inbox.conn.publish(TOPICS.cmd("web"), encode(kept), qos=1, retain=True).wait(3)  # type: ignore[attr-defined]
    ok, detail = ack_of(inbox, kept.id) or (True, "")
    assert not ok
    assert "retained" in detail
    inbox.conn.publish(TOPICS.cmd("web"), b"", qos=1, retain=True).wait(3)  # type: ignore[attr-defined]
    inbox.conn.close()  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert [s.pid for s in watcher.statuses("web") if s.state == "online"][-1] == first


def test_forged_commands_from_service_users_never_arrive(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """The ACL: another service user, and the service's own user, cannot command the runner."""
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    first = birth(watcher, "web", 1).pid
    for user in ("beta", "web"):
        forged = new_command("restart", time.time(), service="web")
        send(broker, user, "web", forged).conn.close()  # type: ignore[attr-defined]
    marker = new_command("start", time.time(), service="web")
    inbox = send(broker, "admin", "web", marker)
    assert ack_of(inbox, marker.id) == (True, "already running")  # the admin's did arrive
    inbox.conn.close()  # type: ignore[attr-defined]
    # The runner answers commands in arrival order, so once the watcher has the marker's ack any
    # answer to a forged command would already be in its inbox too.
    watcher.wait(lambda m: m.topic == TOPICS.ack("web") and marker.id.encode() in m.payload, 5)
    acks = [m for m in watcher.inbox.snapshot() if m.topic == TOPICS.ack("web")]
    assert len(acks) == 1  # only the admin's command was answered
    assert [s.pid for s in watcher.statuses("web") if s.state == "online"][-1] == first


def test_broker_down_for_10_s_keeps_the_child_and_the_runner_comes_back(
    broker: PrivateBroker, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """The child is never killed because the broker went away; the runner re-announces."""
    run = runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    first = birth(watcher, "web", 1)
    watcher.close()
    broker.stop()
    down_until = time.monotonic() + 10
    while time.monotonic() < down_until:
        assert first.pid is not None
        assert _alive(first.pid)
        assert run.proc.poll() is None
        time.sleep(0.5)
    broker.start()
    back = Watcher(broker)
    try:
        status = back.wait(
            lambda m: (
                m.topic == TOPICS.status("web")
                and parse_status(m.payload).session != first.session
                and parse_status(m.payload).state == "online"
            ),
            15,
        )
        again = parse_status(status.payload)
        assert (again.pid, again.incarnation) == (first.pid, 1)
    finally:
        back.close()


def test_sigterm_stops_the_child_says_goodbye_and_passes_the_exit_code(
    runs: Callable[..., Run], watcher: Watcher
) -> None:
    """SIGTERM to the runner: forwarded, graceful offline (shutdown), the child's exit code."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)"
    )
    run = runs("web", "--", PY, "-c", code)
    child = birth(watcher, "web", 1).pid
    run.expect_output("ready")
    mark = watcher.mark()
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 7
    # The broker has it (the runner waits for the PUBACK); the watcher's copy may still be on
    # its way: wait for it rather than sample.
    watcher.wait(lambda m: m.topic == TOPICS.status("web"), 5, mark)
    [status] = watcher.statuses("web", mark)
    assert (status.state, status.reason) == ("offline", "shutdown")
    assert child is not None
    assert not _alive(child)


def test_a_child_ignoring_sigterm_is_killed_after_kill_timeout(
    runs: Callable[..., Run], watcher: Watcher
) -> None:
    """SIGKILL after --kill-timeout; the exit code says so (128 + 9)."""
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(600)"
    )
    run = runs("web", "--kill-timeout", "0.5", "--", PY, "-c", code)
    birth(watcher, "web", 1)
    run.expect_output("ready")
    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 137
    assert 0.5 <= time.monotonic() - started < 5


def test_command_not_found_and_permission_denied_exit_like_a_shell(
    tmp_path: Path, runs: Callable[..., Run]
) -> None:
    """127 and 126, with a message naming the program."""
    missing = runs("web", "--", "/nonexistent/program")
    assert missing.wait() == 127
    assert "command not found: /nonexistent/program" in missing.stderr()
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    denied = runs("beta", "--", str(script))
    assert denied.wait() == 126
    assert f"permission denied: {script}" in denied.stderr()


def test_second_runner_with_the_same_name_exits_4_without_starting_its_program(
    tmp_path: Path, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """Duplicate-name protection is the agent library's: clear error, no second program."""
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    birth(watcher, "web", 1)
    marker = tmp_path / "second-started"
    second = runs("web", "--", PY, "-c", f"open({str(marker)!r}, 'w')")
    assert second.wait() == 4
    assert "already running" in second.stderr()
    assert not marker.exists()


def test_the_monitors_agent_action_restarts_a_crashed_child(
    tmp_path: Path, runs: Callable[..., Run], monitors: Monitors, watcher: Watcher
) -> None:
    """End to end: the child crashes, the monitor sends `restart`, the runner obeys, online."""
    flag = tmp_path / "crashed-once"
    code = (
        "import os, sys, time\n"
        f"flag = {str(flag)!r}\n"
        "if not os.path.exists(flag):\n"
        "    open(flag, 'w').close(); time.sleep(1); sys.exit(1)\n"
        "time.sleep(600)\n"
    )
    # The runner first: the monitor must not find it `missing` (and restart it) at start-up.
    runs("web", "--", PY, "-c", code)
    birth(watcher, "web", 1)
    monitors.start(monitor={"settle": 0}, services=[{"name": "web", "action": {"type": "agent"}}])
    watcher.wait_verdict("web", "online")
    watcher.wait_verdict("web", "restarting", timeout=15)
    verdict, _ = watcher.wait_verdict("web", "online", timeout=15, where=lambda v: v.restarts == 1)
    assert verdict.reason == "birth"
    assert birth(watcher, "web", 2).pid is not None
    [action] = [e for e in watcher.events("web") if e.reason == "action"]
    assert action.extra is not None
    assert action.extra["action"]["type"] == "agent"
    assert action.extra["action"]["ok"] is True


def test_restart_local_backs_off_and_gives_up(runs: Callable[..., Run], watcher: Watcher) -> None:
    """--restart-local: the monitor's policy, here: 0, 0.3, 0.6 s, then it stops trying."""
    extra = (
        "[restart]\ninitial_delay = 0.3\nfactor = 2.0\njitter = 0.0\nmax_restarts = 3\n"
        "window = 60.0\nreset_after = 30.0\n"
    )
    run = runs("web", "--restart-local", "--", PY, "-c", "import sys; sys.exit(1)", extra=extra)
    births = [birth(watcher, "web", n) for n in (1, 2, 3, 4)]
    assert [b.incarnation for b in births] == [1, 2, 3, 4]
    run_err = ""
    deadline = time.monotonic() + 10
    while "giving up restarting locally" not in run_err and time.monotonic() < deadline:
        time.sleep(0.1)
        run_err = run.stderr()
    assert "giving up restarting locally: 3 restarts within 60 s" in run_err
    time.sleep(1.0)
    assert not [s for s in watcher.statuses("web") if s.incarnation == 5]
    assert run.proc.poll() is None  # still there, still reachable for commands


def test_log_file_gets_the_programs_output_with_rotation(
    tmp_path: Path, runs: Callable[..., Run], watcher: Watcher
) -> None:
    """--log-file: the program's lines are passed through and written to a rotating file."""
    log = tmp_path / "web.log"
    code = "import sys\nfor i in range(400): print(f'line {i:04d} ' + 'x' * 40)\nsys.stdout.flush()"
    run = runs(
        "web",
        "--log-file",
        str(log),
        "--log-rotation",
        "4 KB",
        "--",
        PY,
        "-c",
        code,
    )
    watcher.wait(lambda m: m.topic == TOPICS.status("web") and b'"exited"' in m.payload, 15)
    run.proc.send_signal(signal.SIGTERM)
    run.wait()
    files = sorted(tmp_path.glob("web.log*"))
    assert len(files) > 1  # rotated
    text = "".join(f.read_text() for f in files)
    assert "line 0000" in text
    assert "line 0399" in text
    assert "line 0399" in run.out.read_text()  # and passed through to our stdout


def test_stop_and_start_commands(
    broker: PrivateBroker, runs: Callable[..., Run], monitors: Monitors, watcher: Watcher
) -> None:
    """`stop`: the program is stopped on purpose (verdict stopped); `start`: a new incarnation."""
    monitors.start()
    runs("web", "--", PY, "-c", "import time; time.sleep(600)")
    first = birth(watcher, "web", 1).pid
    stop = new_command("stop", time.time(), service="web")
    inbox = send(broker, "admin", "web", stop)
    ok, detail = ack_of(inbox, stop.id) or (False, "no ack")
    assert ok, detail
    assert detail.startswith("stopped")
    verdict, _ = watcher.wait_verdict("web", "stopped", timeout=5)
    assert verdict.reason == "shutdown"
    assert first is not None
    assert not _alive(first)
    start = new_command("start", time.time(), service="web")
    inbox.conn.publish(TOPICS.cmd("web"), encode(start), qos=1).wait(3)  # type: ignore[attr-defined]
    assert (ack_of(inbox, start.id) or (False, ""))[0]
    assert birth(watcher, "web", 2).pid != first
    watcher.wait_verdict("web", "online", timeout=5, where=lambda v: v.reason == "birth")
    inbox.conn.close()  # type: ignore[attr-defined]
