"""`presence watch`: the pure model and rendering, then snapshot and live view on a real broker."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loguru import logger
from rich.console import Console

from presence.agent import Agent
from presence.broker import PrivateBroker, free_port
from presence.mqtt import Message
from presence.protocol import Event, Status, Verdict, encode
from presence.settings import Settings
from presence.watch import Feed, Snapshot, WatchModel, render, run_watch
from tests.helpers import TOPICS, Monitors, Watcher

NOW = 1_800_000_000.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def verdict(name: str, state: str, **extra: Any) -> Verdict:
    """A verdict that changed state a minute before NOW."""
    return Verdict(name, state, NOW - 60, "s1", "pong", 0, 1.5, 0, extra or None)


def text(model: WatchModel, height: int | None = None, now: float = NOW) -> str:
    """The model rendered as plain text, 120 columns wide."""
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render(model, now, height))
    return console.export_text()


def line_of(output: str, name: str) -> str:
    """The table row of service `name`."""
    [line] = [line for line in output.splitlines() if line.startswith(f"{name} ")]
    return line


# -- the pure model and rendering ---------------------------------------------------------------


def test_rows_are_sorted_worst_first_then_by_name() -> None:
    """Severity decides the order (failed first, online last); ties go by service name."""
    model = WatchModel()
    states = [
        ("z-ok", "online"),
        ("a-ok", "online"),
        ("stop", "stopped"),
        ("new", "unknown"),
        ("sus", "suspect"),
        ("rst", "restarting"),
        ("bo", "backoff"),
        ("sick", "unhealthy"),
        ("hang", "hung"),
        ("b-gone", "offline"),
        ("a-gone", "offline"),
        ("dead", "failed"),
    ]
    for name, state in states:
        model.set_verdict(verdict(name, state))
    order = [v.service for v in model.rows()]
    assert order == [
        "dead",
        "a-gone",
        "b-gone",
        "hang",
        "sick",
        "bo",
        "rst",
        "sus",
        "new",
        "stop",
        "a-ok",
        "z-ok",
    ]
    # The table shows them in the same order.
    rendered = [line.split()[0] for line in text(model).splitlines()[2:14]]
    assert rendered == order


def test_a_short_screen_shows_the_worst_rows_and_counts_the_rest() -> None:
    """More rows than fit: the worst ones, then "… N more (all online)", within the height."""
    model = WatchModel()
    for i in range(300):
        model.set_verdict(verdict(f"svc-{i:03d}", "online"))
    model.set_verdict(verdict("broken", "failed"))
    model.set_verdict(verdict("frozen", "hung"))
    model.set_monitor(Status("online", "m1", NOW - 5, host="gw1", pid=42))
    output = text(model, height=20)
    lines = output.splitlines()
    assert len(lines) <= 20
    assert lines[2].startswith("broken")
    assert lines[3].startswith("frozen")
    match = re.search(r"… (\d+) more \(all online\)", output)
    assert match is not None, output
    shown = [line for line in lines if line.startswith(("svc-", "broken", "frozen"))]
    assert len(shown) + int(match.group(1)) == 302
    assert "302 services: 1 failed, 1 hung, 300 online" in lines[0]

    # Hidden rows of several states are counted per state, worst first.
    for i in range(5):
        model.set_verdict(verdict(f"off-{i}", "stopped"))
    mixed = text(model, height=10)
    assert len(mixed.splitlines()) <= 10
    match = re.search(r"… (\d+) more \((\d+) stopped, (\d+) online\)", mixed)
    assert match is not None, mixed
    assert int(match.group(1)) == int(match.group(2)) + int(match.group(3))

    # Without a height (--once) every row is printed.
    assert len([ln for ln in text(model).splitlines() if ln.startswith(("svc-", "off-"))]) == 305


def test_next_attempt_paused_and_reason_details() -> None:
    """NEXT counts down to next_attempt_at; paused shows in the state cell; junk is harmless."""
    model = WatchModel()
    model.set_verdict(verdict("web", "backoff", next_attempt_at=NOW + 12, attempt=3))
    model.set_verdict(verdict("late", "backoff", next_attempt_at=NOW - 1))
    model.set_verdict(verdict("slow", "failed", next_attempt_at=NOW + 75))
    model.set_verdict(verdict("sick", "unhealthy", detail={"db": "down"}))
    model.set_verdict(verdict("ok", "online"))
    model.set_verdict(verdict("maint", "offline", paused=True, exit_code=1))
    model.set_verdict(
        verdict("junk", "failed", next_attempt_at="soon", paused="yes", why="x\x1b[2J")
    )
    output = text(model)
    assert line_of(output, "web").rstrip().endswith("in 12s")
    assert line_of(output, "late").rstrip().endswith("due")
    assert line_of(output, "slow").rstrip().endswith("in 1m15s")
    assert 'pong {"db":"down"}' in line_of(output, "sick")
    assert line_of(output, "ok").rstrip().endswith("-")
    assert "offline (paused)" in line_of(output, "maint")
    assert "(exit 1)" in line_of(output, "maint")
    junk = line_of(output, "junk")
    assert "paused" not in junk  # only a real `true` counts
    assert junk.rstrip().endswith("-")
    assert "\x1b" not in output  # a control sequence from the wire never reaches the terminal
    assert "1m ago" in line_of(output, "ok")
    assert "1.5 ms" in line_of(output, "ok")


def test_footer_shows_the_monitor_and_only_the_last_five_events() -> None:
    """The footer keeps the last five events (action results compactly) and the monitor state."""
    model = WatchModel()
    assert "monitor: never seen" in text(model)
    model.set_monitor(Status("offline", "m1", NOW - 120, reason="lost"))
    assert "monitor: OFFLINE (lost) since 2m ago" in text(model)
    model.set_monitor(Status("online", "m2", NOW - 30, host="gw1", pid=42))
    names = ["alpha", "beta", "gamma", "delta", "web", "worker-1", "worker-2"]
    for i, name in enumerate(names):
        model.add_event(Event(NOW - 10 + i, name, "online", "hung", "missed_pongs"))
    action = {"type": "exec", "ok": False, "detail": "exit status 1", "exit_code": 1}
    model.add_event(
        Event(NOW, "sensor-gw", "restarting", "restarting", "action", {"action": action})
    )
    output = text(model)
    assert "monitor: online since 30s ago on gw1 pid 42" in output
    footer = [line for line in output.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert len(footer) == 5
    assert [line.split()[1] for line in footer] == [
        "delta",
        "web",
        "worker-1",
        "worker-2",
        "sensor-gw",
    ]
    assert "online -> hung (missed_pongs)" in footer[0]
    assert footer[-1].endswith("action exec FAILED: exit status 1")
    assert "no verdicts published yet" in output


def test_feed_applies_verdicts_and_ignores_junk_logging_it_once() -> None:
    """Malformed payloads change nothing and are logged once per topic; empty ones delete."""
    model, warnings = WatchModel(), []
    feed = Feed(model, TOPICS)
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:

        def deliver(topic: str, payload: bytes) -> None:
            feed.on_message(Message(topic, payload, True, 0.0))

        deliver(TOPICS.verdict("alpha"), encode(verdict("alpha", "hung")))
        deliver(TOPICS.verdict("beta"), encode(verdict("gamma", "online")))  # not its topic
        for junk in (b"{", b"[]", b'{"state":"online"}'):
            deliver(TOPICS.verdict("delta"), junk)
            deliver(TOPICS.monitor_status, junk)
        deliver(TOPICS.events, b"not json")
        assert [(v.service, v.state) for v in model.rows()] == [("alpha", "hung")]
        assert model.snapshot().monitor is None
        assert model.snapshot().events == ()
        bad = [w for w in warnings if "malformed payload" in w]
        assert len(bad) == 4  # once per topic: beta, delta, monitor status, events
        deliver(TOPICS.verdict("alpha"), b"")  # a cleared retained verdict
        assert model.rows() == []
    finally:
        logger.remove(sink)


# -- against a real broker ----------------------------------------------------------------------


def dashboard(broker: PrivateBroker, **overrides: Any) -> Settings:
    """Settings with the read-only dashboard user."""
    return Settings(broker=broker.settings("dashboard", **overrides))


def test_once_prints_every_service_with_the_read_only_dashboard_user(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher
) -> None:
    """--once lists an online and an offline service, worst first, and exits 0."""
    monitors.start(services=[{"name": "beta"}])
    with Agent("alpha", broker.settings("alpha")):
        watcher.wait_verdict("alpha", "online")
        watcher.wait_verdict("beta", "offline", reason="missing")
        out = io.StringIO()
        code = run_watch(dashboard(broker), once=True, console=Console(file=out, width=120))
    output = out.getvalue()
    assert code == 0, output
    assert "\x1b[" not in output  # not a terminal: plain text for scripts
    assert "monitor: online" in output
    beta, alpha = line_of(output, "beta"), line_of(output, "alpha")
    assert beta.split()[1] == "offline"
    assert "missing" in beta
    assert alpha.split()[1] == "online"
    assert output.index(beta) < output.index(alpha)


def test_once_exits_1_when_no_monitor_was_ever_seen(broker: PrivateBroker) -> None:
    """Like `presence status`: without an online monitor the snapshot exits 1."""
    out = io.StringIO()
    assert run_watch(dashboard(broker), once=True, console=Console(file=out, width=120)) == 1
    assert "monitor: never seen" in out.getvalue()


class Screen(io.StringIO):
    """A fake terminal that wakes waiters whenever something is drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn = threading.Condition()

    def write(self, s: str) -> int:
        with self.drawn:
            written = super().write(s)
            self.drawn.notify_all()
        return written

    def plain(self) -> str:
        """Everything drawn so far, without colours and cursor movements."""
        return ANSI.sub("", self.getvalue())

    def wait_for(self, needle: str, timeout: float = 5.0) -> bool:
        """Wait until `needle` has been drawn (as plain text)."""
        with self.drawn:
            return self.drawn.wait_for(lambda: needle in self.plain(), timeout)


@pytest.fixture
def live(broker: PrivateBroker) -> Iterator[tuple[WatchModel, Screen, Callable[[], int]]]:
    """run_watch in live mode in a thread; yields its model, its screen and a stopper."""
    model, screen, stop = WatchModel(), Screen(), threading.Event()
    result: list[int] = []
    console = Console(file=screen, force_terminal=True, width=120)
    thread = threading.Thread(
        target=lambda: result.append(
            run_watch(dashboard(broker), once=False, console=console, stop=stop, model=model)
        ),
        daemon=True,
    )
    thread.start()

    def finish() -> int:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "run_watch did not stop"
        [code] = result
        return code

    try:
        yield model, screen, finish
    finally:
        stop.set()
        thread.join(10)


def wait_until(model: WatchModel, predicate: Callable[[Snapshot], bool], timeout: float) -> bool:
    """Wait up to `timeout` until `predicate` holds for the model, waking on every change."""
    deadline = time.monotonic() + timeout
    while True:
        snap = model.snapshot()
        if predicate(snap):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        model.wait_changed(snap.version, remaining)


def state_of(name: str, state: str) -> Callable[[Snapshot], bool]:
    """A snapshot predicate: `name` is in `state`."""
    return lambda snap: any(v.service == name and v.state == state for v in snap.rows)


def test_live_view_follows_a_verdict_change_and_stops_cleanly(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    live: tuple[WatchModel, Screen, Callable[[], int]],
) -> None:
    """A stopped agent turns `stopped` in the model and on screen, with its event; exit 0."""
    model, screen, finish = live
    monitors.start()
    agent = Agent("alpha", broker.settings("alpha")).start()
    try:
        assert wait_until(model, state_of("alpha", "online"), 10), model.snapshot()
        assert wait_until(model, lambda s: s.monitor is not None and s.link is True, 5)
        assert screen.wait_for("alpha")
        assert screen.wait_for("monitor: online")
    finally:
        agent.stop()
    assert wait_until(model, state_of("alpha", "stopped"), 10), model.snapshot()
    assert wait_until(
        model, lambda s: any(e.service == "alpha" and e.to_state == "stopped" for e in s.events), 5
    )
    assert screen.wait_for("stopped"), screen.plain()[-2000:]
    assert screen.wait_for("online -> stopped"), screen.plain()[-2000:]
    assert finish() == 0


def stopped_already() -> threading.Event:
    """A set stop event: should run_watch connect after all, it returns instead of hanging."""
    stop = threading.Event()
    stop.set()
    return stop


def test_unreachable_broker_exits_3_naming_host_and_port(broker: PrivateBroker) -> None:
    """Nothing listens on the port: exit 3 and a message with host:port, in both modes."""
    port = free_port()
    settings = dashboard(broker, port=port, connect_timeout=2.0)
    stopped = stopped_already()
    for once in (True, False):
        err = io.StringIO()
        code = run_watch(
            settings,
            once=once,
            console=Console(file=io.StringIO()),
            err_console=Console(file=err, width=300),
            stop=stopped,
        )
        assert code == 3
        assert f"127.0.0.1:{port}" in err.getvalue()


def test_refused_credentials_exit_3_saying_so(broker: PrivateBroker) -> None:
    """A wrong password is reported as refused, with exit code 3."""
    err = io.StringIO()
    code = run_watch(
        dashboard(broker, password="wrong"),  # noqa: S106 (a deliberately wrong one)
        once=False,
        console=Console(file=io.StringIO()),
        err_console=Console(file=err, width=300),
        stop=stopped_already(),
    )
    assert code == 3
    assert "check username and password" in err.getvalue()


def test_live_view_says_when_its_own_broker_link_is_down(
    broker: PrivateBroker, live: tuple[WatchModel, Screen, Callable[[], int]]
) -> None:
    """While the broker is away the footer says the watch is reconnecting; then it recovers."""
    model, screen, finish = live
    assert wait_until(model, lambda s: s.link is True, 5)
    broker.stop()
    assert wait_until(model, lambda s: s.link is False, 10)
    assert screen.wait_for("watch: not connected to the broker, reconnecting")
    broker.start()
    assert wait_until(model, lambda s: s.link is True, 15)
    assert finish() == 0
