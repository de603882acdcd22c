"""Detection against a real mosquitto and real processes: crash, hang, stale Will, graceful stop."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from presence.broker import PrivateBroker
from tests.helpers import (
    FAST,
    TOPICS,
    Monitors,
    MosquittoSub,
    ServiceProcess,
    Watcher,
    hang_bound,
)


def test_birth_makes_service_online(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """A service that embeds the agent shows up online with its session, then an rtt."""
    monitors.start()
    svc = spawn("alpha").ready()
    verdict, _ = watcher.wait_verdict("alpha", "online")
    assert verdict.session == svc.session
    assert verdict.reason == "birth"
    events = watcher.events("alpha")
    assert [(e.from_state, e.to_state) for e in events] == [("unknown", "online")]
    # The first answered round republishes the verdict with a round-trip time.
    watcher.wait(
        lambda m: m.topic == TOPICS.verdict("alpha") and b'"rtt_ms":null' not in m.payload,
        timeout=3,
    )


def test_kill_9_is_offline_lost_well_under_a_second(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """kill -9 of an agent process: the broker fires the Will and the verdict follows at once."""
    monitors.start()
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    killed = svc.signal(signal.SIGKILL)
    verdict, message = watcher.wait_verdict("alpha", "offline", timeout=3, start=mark)
    assert verdict.reason == "lost"
    assert verdict.session == svc.session
    assert message.received - killed < 1.0


def test_sigstop_is_hung_within_bound_and_sigcont_recovers(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """A frozen process keeps its socket (no Will) but stops answering: hung, then online."""
    monitors.start()
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    watcher.wait(lambda m: m.topic == TOPICS.verdict("alpha") and b'"rtt_ms":n' not in m.payload, 3)
    mark = watcher.mark()
    frozen = svc.signal(signal.SIGSTOP)
    verdict, message = watcher.wait_verdict("alpha", "hung", timeout=5, start=mark)
    took = message.received - frozen
    # Worst case is interval x missed + timeout; one interval of slack for a loaded machine.
    assert took <= hang_bound() + FAST["ping_interval"] + 0.3, took
    assert verdict.missed == FAST["missed_pongs"]
    assert verdict.session == svc.session  # still connected: not offline
    # It passed through suspect on the way.
    states = [v.state for v in watcher.verdicts("alpha", mark)]
    assert states.index("suspect") < states.index("hung")

    mark = watcher.mark()
    svc.signal(signal.SIGCONT)
    verdict, _ = watcher.wait_verdict("alpha", "online", timeout=3, start=mark)
    assert verdict.reason == "pong"
    assert verdict.session == svc.session


def test_deadlocked_main_loop_is_hung_although_paho_lives(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """The app's loop deadlocks while paho's thread keeps the socket: beats stop, so pongs stop."""
    monitors.start()
    svc = spawn("alpha", "--beat-timeout", "0.3").ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    svc.signal(signal.SIGUSR1)
    verdict, _ = watcher.wait_verdict("alpha", "hung", timeout=5, start=mark)
    # No Will was published: the connection is alive, which is exactly why pings exist.
    assert all(s.state == "online" for s in watcher.statuses("alpha", mark))
    assert verdict.session == svc.session


def test_graceful_stop_is_stopped(
    monitors: Monitors, watcher: Watcher, spawn: Callable[..., ServiceProcess]
) -> None:
    """SIGTERM makes the agent publish offline/shutdown before disconnecting: state stopped."""
    monitors.start()
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    mark = watcher.mark()
    svc.signal(signal.SIGTERM)
    assert svc.wait() == 0
    verdict, _ = watcher.wait_verdict("alpha", "stopped", timeout=3, start=mark)
    assert verdict.reason == "shutdown"
    # A clean disconnect sends no Will, so nothing says `lost` afterwards.
    assert all(s.reason == "shutdown" for s in watcher.statuses("alpha", mark))


def test_declared_but_absent_is_offline_missing(monitors: Monitors, watcher: Watcher) -> None:
    """A declared service never seen within startup_grace is offline with reason missing."""
    started = time.monotonic()
    monitors.start(services=[{"name": "sensor-gw"}])
    verdict, message = watcher.wait_verdict("sensor-gw", "offline", timeout=5)
    assert verdict.reason == "missing"
    assert message.received - started >= FAST["startup_grace"] - 0.05


def test_stale_will_of_old_session_does_not_mark_new_session_offline(
    broker: PrivateBroker,
    monitors: Monitors,
    watcher: Watcher,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """A Will fired by the broker for an older connection is ignored; the agent re-asserts."""
    monitors.start()
    svc = spawn("alpha").ready()
    watcher.wait_verdict("alpha", "online")
    # An older connection of the same service user, holding a Will for an older session.
    old = MosquittoSub(
        broker,
        "alpha",
        "-t",
        "presence/alpha/ping",
        "--will-topic",
        "presence/alpha/status",
        "--will-payload",
        '{"state":"offline","session":"0ld5e551on","since":1.0,"reason":"lost"}',
        "--will-qos",
        "1",
        "--will-retain",
    )
    try:
        mark = watcher.mark()
        old.proc.kill()
        old.proc.wait()
        # The broker publishes the stale Will...
        watcher.wait(
            lambda m: m.topic == TOPICS.status("alpha") and b"0ld5e551on" in m.payload, 3, mark
        )
        # ...and the agent heals the retained topic with its own birth.
        watcher.wait(
            lambda m: m.topic == TOPICS.status("alpha") and svc.session.encode() in m.payload,
            3,
            mark,
        )
        # A few rounds later the verdict is still online with the live session.
        time.sleep(3 * FAST["ping_interval"])
        assert [v.state for v in watcher.verdicts("alpha", mark)] in ([], ["online"])
        assert not watcher.events("alpha", mark)
    finally:
        old.stop()
