"""Verdicts and events held back while the link is backed up; the latest verdict per topic wins.

A burst (a monitor start with thousands of services, a broker restart, a mass failure) makes
the monitor decide faster than QoS 1 PUBACKs come back. Queued inside paho, every message of
the burst would be held as a full paho message object until acknowledged, superseded verdicts
included: thousands at once, memory CPython keeps after they are gone, and dashboards seeing
the final state only after every stale one has gone out. While the connection's backlog is
over `limit`, the outbox keeps what waits as plain bytes instead: events in order (a stream,
never coalesced), and per verdict topic only the latest value (a retained verdict is a value,
not an event). The monitor's loop flushes as the backlog drains, events first, so whoever sees
a verdict has already been sent the event that led to it. No I/O here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["Outbox"]


class Outbox:
    """QoS 1 publishing under back-pressure: a stream in order, retained values coalesced."""

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
        self._stream: deque[tuple[str, bytes]] = deque()
        # Oldest first; a newer value for a waiting topic keeps that topic's place in line.
        self._latest: dict[str, bytes] = {}

    def __len__(self) -> int:
        """How many messages wait."""
        return len(self._stream) + len(self._latest)

    def _held(self) -> bool:
        return bool(self._stream or self._latest) or self._backlog() >= self._limit

    def put_event(self, topic: str, payload: bytes) -> None:
        """A stream message (not retained): sent now, or after everything waiting before it."""
        if self._held():
            self._stream.append((topic, payload))
        else:
            self._publish(topic, payload, False)

    def put_latest(self, topic: str, payload: bytes) -> None:
        """A retained value: sent now, or held, replacing whatever still waits for `topic`."""
        if self._held():
            self._latest[topic] = payload
        else:
            self._publish(topic, payload, True)

    def flush(self, force: bool = False) -> int:
        """Send what waits while the backlog allows (everything if `force`), events first;
        returns how many messages were sent."""
        sent = 0
        while self._stream and (force or self._backlog() < self._limit):
            topic, payload = self._stream.popleft()
            self._publish(topic, payload, False)
            sent += 1
        while not self._stream and self._latest and (force or self._backlog() < self._limit):
            topic = next(iter(self._latest))
            self._publish(topic, self._latest.pop(topic), True)
            sent += 1
        return sent
