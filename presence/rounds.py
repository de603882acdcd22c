"""Ping rounds: one broadcast per round, answers matched by sequence number and session.

No I/O here: the monitor publishes the pings this hands out and feeds back what it receives.
A round counts only if the monitor's own broadcast came back to it (`echoed`); if the broker or
the monitor's link stalled, the round is void and its silence proves nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from presence.clock import Instant
from presence.protocol import Ping, Pong
from presence.tracker import Answer

__all__ = ["Round", "Rounds"]


@dataclass(slots=True)
class Round:
    """One ping round and the answers it got."""

    seq: int
    sent: Instant
    answers: dict[str, Answer] = field(default_factory=dict)
    echoed: bool = False


class Rounds:
    """The rounds in flight, oldest first."""

    def __init__(self, first_seq: int, pong_timeout: float) -> None:
        # Sequence numbers start from the clock (ms) so a restarted monitor never accepts late
        # pongs to its predecessor's pings.
        self._seq = first_seq
        self._timeout = pong_timeout
        self._open: deque[Round] = deque()
        self._by_seq: dict[int, Round] = {}

    def start(self, now: Instant) -> Ping:
        """Open a round; returns the ping to broadcast."""
        self._seq += 1
        rnd = Round(self._seq, now)
        self._open.append(rnd)
        self._by_seq[rnd.seq] = rnd
        return Ping(rnd.seq, round(now.wall, 3))

    def echo(self, seq: int) -> None:
        """Our own broadcast came back from the broker."""
        rnd = self._by_seq.get(seq)
        if rnd is not None:
            rnd.echoed = True

    def answer(self, name: str, pong: Pong, received: float, session: str | None) -> float | None:
        """Record `name`'s pong if it counts; returns its round trip in seconds, else None.

        It counts when it answers an open round, within `pong_timeout`, from `session`.
        """
        rnd = self._by_seq.get(pong.seq)
        if rnd is None or pong.session != session:
            return None  # late, someone else's targeted ping, or a session we do not believe
        delay = received - rnd.sent.mono
        if delay > self._timeout:
            return None
        rnd.answers[name] = Answer(pong.ok, dict(pong.detail) if pong.detail is not None else None)
        return max(delay, 0.0)

    def due(self, now: Instant) -> list[Round]:
        """Close and return the rounds whose deadline has passed."""
        closed = []
        while self._open and self._open[0].sent.mono + self._timeout <= now.mono:
            rnd = self._open.popleft()
            del self._by_seq[rnd.seq]
            closed.append(rnd)
        return closed

    def next_deadline(self) -> float | None:
        """When the oldest open round closes (mono), if any is open."""
        return self._open[0].sent.mono + self._timeout if self._open else None

    def clear(self) -> None:
        """Drop every open round unjudged (the link to the broker went down)."""
        self._open.clear()
        self._by_seq.clear()
