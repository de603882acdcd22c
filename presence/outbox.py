"""Verdicts and events held back while the link is backed up; the latest verdict per topic wins.

A burst (a monitor start with thousands of services, a broker restart, a mass failure) makes
the monitor decide faster than QoS 1 PUBACKs come back. Queued inside paho, every message of
the burst would be held as a full paho message object until acknowledged, superseded verdicts
included: thousands at once, memory CPython keeps after they are gone, and dashboards seeing
the final state only after every stale one has gone out. While the connection's backlog is
over `limit`, the outbox keeps what waits as plain bytes instead, in one line in the order it
was decided: every event (a stream, never coalesced), and per verdict topic only the latest
value (a retained verdict is a value, not an event), which takes its place at the back of the
line. So whoever sees a verdict has already been sent the event that led to it, and nothing
waits behind anything decided after it. The monitor's loop flushes as the backlog drains. No
I/O here.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Outbox"]


class Outbox:
    """QoS 1 publishing under back-pressure: one line in order, retained values coalesced."""

    def __init__(
        self,
        publish: Callable[[str, bytes, bool], None],
        backlog: Callable[[], int],
        limit: int,
    ) -> None:
        #: Hands one message (topic, payload, retain) to the connection now.
        self._publish = publish
        #: How many of our messages the connection holds unacknowledged.
        self._backlog = backlog
        self._limit = limit
        # Keyed by a sequence number (events) or the topic (retained values, one slot each).
        self._line: OrderedDict[int | str, tuple[str, bytes, bool]] = OrderedDict()
        self._seq = itertools.count()

    def __len__(self) -> int:
        """How many messages wait."""
        return len(self._line)

    def _held(self) -> bool:
        return bool(self._line) or self._backlog() >= self._limit

    def put_event(self, topic: str, payload: bytes) -> None:
        """A stream message (not retained): sent now, or after everything waiting before it."""
        if self._held():
            self._line[next(self._seq)] = (topic, payload, False)
        else:
            self._publish(topic, payload, False)

    def put_latest(self, topic: str, payload: bytes) -> None:
        """A retained value: sent now, or held at the back of the line, replacing whatever
        still waits for `topic`."""
        if self._held():
            self._line.pop(topic, None)
            self._line[topic] = (topic, payload, True)
        else:
            self._publish(topic, payload, True)

    def flush(self, force: bool = False) -> int:
        """Send what waits, in order, while the backlog allows (everything if `force`);
        returns how many messages were sent."""
        sent = 0
        while self._line and (force or self._backlog() < self._limit):
            _, (topic, payload, retain) = self._line.popitem(last=False)
            self._publish(topic, payload, retain)
            sent += 1
        return sent
