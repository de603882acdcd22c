"""Ping rounds: one broadcast per round, answers matched by sequence number and session.

No I/O here: the monitor publishes the pings this hands out and feeds back what it receives.
A round counts only if the monitor's own broadcast came back to it (`echoed`); if the broker or
the monitor's link stalled, the round is void and its silence proves nothing.

A pong's `pong_timeout` runs from when our own copy of the ping came back, not from when we
sent it: when the monitor itself falls behind (a burst of births after a mass restart), its
echo and every pong wait in the same socket, and the services should not pay for our backlog.
The round trip reported is still measured from the send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
    #: When our own ping came back (mono, as stamped on receipt); the pongs' clock starts here.
    echoed_at: float | None = None
    #: A pong to this round came before our own ping did: the broker delivers our echo before
    #: any answer to it, so our echo is lost (a broken subscription), not merely late.
    orphaned: bool = False

    @property
    def echoed(self) -> bool:
        """Our own ping came back: the round counts."""
        return self.echoed_at is not None


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

    def echo(self, seq: int, received: float) -> None:
        """Our own broadcast came back from the broker (`received`: mono, at receipt)."""
        rnd = self._by_seq.get(seq)
        if rnd is not None and not rnd.echoed:
            rnd.echoed_at = max(received, rnd.sent.mono)

    def _deadline(self, rnd: Round) -> float:
        """When `rnd` closes: `pong_timeout` after its echo (after the send while none came)."""
        start = rnd.echoed_at if rnd.echoed_at is not None else rnd.sent.mono
        return start + self._timeout

    def answer(self, name: str, pong: Pong, received: float, session: str | None) -> float | None:
        """Record `name`'s pong if it counts; returns its round trip in seconds, else None.

        It counts when it answers an open round, within `pong_timeout`, from `session`.
        """
        rnd = self._by_seq.get(pong.seq)
        if rnd is None:
            return None  # late, or an answer to someone else's targeted ping
        if not rnd.echoed:
            rnd.orphaned = True
        if pong.session != session:
            return None  # a session we do not (or no longer) believe in
        if received > self._deadline(rnd):
            return None
        rnd.answers[name] = Answer(pong.ok, dict(pong.detail) if pong.detail is not None else None)
        return max(received - rnd.sent.mono, 0.0)

    def pop_due(
        self, now: Instant, caught_up: Callable[[float], bool] = lambda _: True
    ) -> Round | None:
        """Close and return the oldest round if its deadline has passed, else None.

        One at a time, so that what a round's close does (a self-check exit) sees the rounds
        after it still open. `caught_up(deadline)` says whether every message received before
        `deadline` has been handled: a round waits for its answers still queued behind a burst
        rather than calling them missing.
        """
        if not self._open:
            return None
        deadline = self._deadline(self._open[0])
        if deadline > now.mono or not caught_up(deadline):
            return None
        rnd = self._open.popleft()
        del self._by_seq[rnd.seq]
        return rnd

    def __len__(self) -> int:
        """How many rounds are open."""
        return len(self._open)

    def next_deadline(self) -> float | None:
        """When the oldest open round closes (mono), if any is open."""
        return self._deadline(self._open[0]) if self._open else None

    def clear(self) -> None:
        """Drop every open round unjudged (the link to the broker went down)."""
        self._open.clear()
        self._by_seq.clear()
