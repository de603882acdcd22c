"""The outbox (presence.outbox), pure: back-pressure holds messages, coalesces verdicts only."""

from __future__ import annotations

from presence.outbox import Outbox

LIMIT = 3


class Link:
    """A stand-in for the connection: records what was handed over, with a settable backlog."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.backlog = 0

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.sent.append((topic, payload, retain))


def _outbox() -> tuple[Outbox, Link]:
    link = Link()
    return Outbox(link.publish, lambda: link.backlog, LIMIT), link


def test_without_a_backlog_everything_goes_out_at_once() -> None:
    """Below the limit nothing waits: events and verdicts are handed over as they come."""
    outbox, link = _outbox()
    outbox.put_event("ev", b"e1")
    outbox.put_latest("v/a", b"a1")
    outbox.put_latest("v/a", b"a2")
    assert link.sent == [("ev", b"e1", False), ("v/a", b"a1", True), ("v/a", b"a2", True)]
    assert len(outbox) == 0


def test_a_backlog_keeps_every_event_in_order_and_only_the_latest_verdict() -> None:
    """At the limit, events queue in order and a verdict replaces the one waiting for its topic,
    taking its place at the back: it still follows the event that led to it."""
    outbox, link = _outbox()
    link.backlog = LIMIT
    outbox.put_event("ev", b"e1")
    outbox.put_latest("v/a", b"a1")
    outbox.put_latest("v/b", b"b1")
    outbox.put_event("ev", b"e2")
    outbox.put_latest("v/a", b"a2")
    assert link.sent == []
    assert len(outbox) == 4
    assert outbox.flush() == 0  # still backed up
    link.backlog = 0
    assert outbox.flush() == 4
    assert link.sent == [
        ("ev", b"e1", False),
        ("v/b", b"b1", True),
        ("ev", b"e2", False),
        ("v/a", b"a2", True),
    ]


def test_a_stream_of_events_does_not_starve_the_verdicts_before_it() -> None:
    """A verdict waiting is sent before events decided after it, however many come."""
    outbox, link = _outbox()
    link.backlog = LIMIT
    outbox.put_latest("v/a", b"a1")
    for i in range(100):
        outbox.put_event("ev", f"e{i}".encode())
    link.backlog = 0

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        link.sent.append((topic, payload, retain))
        link.backlog = LIMIT  # one message per flush: the backlog refills at once

    outbox._publish = publish
    assert outbox.flush() == 1
    assert link.sent == [("v/a", b"a1", True)]


def test_once_something_waits_newcomers_wait_behind_it() -> None:
    """A message put while others wait is held even if the backlog has just drained: nothing
    overtakes what was decided before it."""
    outbox, link = _outbox()
    link.backlog = LIMIT
    outbox.put_event("ev", b"e1")
    link.backlog = 0
    outbox.put_event("ev", b"e2")
    outbox.put_latest("v/a", b"a1")
    assert link.sent == []
    outbox.flush()
    assert [payload for _, payload, _ in link.sent] == [b"e1", b"e2", b"a1"]


def test_a_flush_stops_when_the_backlog_reaches_the_limit_again() -> None:
    """Each message handed over grows the backlog; the flush stops at the limit, in order."""
    outbox, link = _outbox()
    link.backlog = LIMIT
    for i in range(5):
        outbox.put_event("ev", f"e{i}".encode())

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        link.sent.append((topic, payload, retain))
        link.backlog += 1

    outbox._publish = publish
    link.backlog = 1
    assert outbox.flush() == 2
    assert [payload for _, payload, _ in link.sent] == [b"e0", b"e1"]
    assert len(outbox) == 3
    assert outbox.flush(force=True) == 3  # shutting down: everything, regardless
    assert [payload for _, payload, _ in link.sent][2:] == [b"e2", b"e3", b"e4"]


def test_an_empty_retained_value_replaces_a_waiting_verdict() -> None:
    """`forget` clears a verdict with an empty retained message: a verdict still waiting for
    that topic must not be sent after it (it would bring the service back)."""
    outbox, link = _outbox()
    link.backlog = LIMIT
    outbox.put_latest("v/a", b"a1")
    outbox.put_latest("v/a", b"")
    link.backlog = 0
    outbox.flush()
    assert link.sent == [("v/a", b"", True)]
