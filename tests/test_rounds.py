"""Ping rounds (presence.rounds), pure: answers matched by seq and session, timed from the echo."""

from __future__ import annotations

import pytest

from presence.clock import Instant
from presence.protocol import Pong
from presence.rounds import Rounds

T0 = Instant(mono=100.0, wall=1_800_000_000.0)
TIMEOUT = 1.0


def _rounds() -> Rounds:
    return Rounds(first_seq=41, pong_timeout=TIMEOUT)


def test_a_pong_counts_for_its_round_and_session_only() -> None:
    """The right seq and session count, with the round trip from the send; a wrong session,
    an unknown seq or a pong after the deadline do not."""
    rounds = _rounds()
    ping = rounds.start(T0)
    assert ping.seq == 42
    rounds.echo(ping.seq, T0.mono + 0.002)
    rtt = rounds.answer("a", Pong(ping.seq, "s1", True), T0.mono + 0.010, "s1")
    assert rtt == pytest.approx(0.010)
    assert rounds.answer("b", Pong(ping.seq, "old", True), T0.mono + 0.010, "s2") is None
    assert rounds.answer("c", Pong(7, "s3", True), T0.mono + 0.010, "s3") is None
    assert rounds.answer("d", Pong(ping.seq, "s4", True), T0.mono + 1.5, "s4") is None
    closed = rounds.pop_due(T0.after(1.01))
    assert closed is not None
    assert set(closed.answers) == {"a"}


def test_the_timeout_runs_from_the_echo_when_the_monitor_fell_behind() -> None:
    """Our own ping came back 0.8 s late (the monitor's socket was backed up): a pong 1.5 s
    after the send, 0.7 s after the echo, still counts, and its round trip is 1.5 s."""
    rounds = _rounds()
    ping = rounds.start(T0)
    rounds.echo(ping.seq, T0.mono + 0.8)
    assert rounds.next_deadline() == T0.mono + 0.8 + TIMEOUT
    assert rounds.pop_due(T0.after(1.5)) is None  # the send-based deadline alone would close it
    assert rounds.answer("a", Pong(ping.seq, "s", True), T0.mono + 1.5, "s") == pytest.approx(1.5)
    assert rounds.answer("b", Pong(ping.seq, "s", True), T0.mono + 1.9, "s") is None
    closed = rounds.pop_due(T0.after(1.8))
    assert closed is not None
    assert closed.echoed
    assert set(closed.answers) == {"a"}


def test_a_round_without_its_echo_closes_at_the_send_deadline_unechoed() -> None:
    """No echo: the round closes `pong_timeout` after the send and is marked unechoed (void)."""
    rounds = _rounds()
    ping = rounds.start(T0)
    assert rounds.next_deadline() == T0.mono + TIMEOUT
    closed = rounds.pop_due(T0.after(TIMEOUT))
    assert closed is not None
    assert closed.seq == ping.seq
    assert not closed.echoed
    assert rounds.next_deadline() is None


def test_a_pong_before_the_echo_marks_the_round_orphaned() -> None:
    """The broker sends our echo before any answer to it: a pong first means the echo is lost."""
    rounds = _rounds()
    ping = rounds.start(T0)
    assert rounds.answer("a", Pong(ping.seq, "s", True), T0.mono + 0.01, "s") == pytest.approx(0.01)
    closed = rounds.pop_due(T0.after(TIMEOUT))
    assert closed is not None
    assert closed.orphaned


def test_a_round_waits_for_answers_still_queued_behind_a_burst() -> None:
    """`pop_due` keeps a round open while the monitor has not caught up with its deadline."""
    rounds = _rounds()
    rounds.start(T0)
    assert rounds.pop_due(T0.after(2.0), caught_up=lambda _deadline: False) is None
    assert rounds.pop_due(T0.after(2.0), caught_up=lambda _deadline: True) is not None
    assert len(rounds) == 0


def test_echoes_are_stamped_once_and_never_before_the_send() -> None:
    """A duplicate echo does not move the deadline; a clock quirk cannot put it before the send."""
    rounds = _rounds()
    ping = rounds.start(T0)
    rounds.echo(ping.seq, T0.mono - 5.0)
    assert rounds.next_deadline() == T0.mono + TIMEOUT
    rounds.echo(ping.seq, T0.mono + 0.9)
    assert rounds.next_deadline() == T0.mono + TIMEOUT


def test_pop_due_closes_one_round_at_a_time_oldest_first() -> None:
    """Two rounds past their deadline close one per call, oldest first; the other stays open."""
    rounds = _rounds()
    first = rounds.start(T0)
    second = rounds.start(T0.after(0.2))
    assert len(rounds) == 2
    closed = rounds.pop_due(T0.after(5.0))
    assert closed is not None
    assert closed.seq == first.seq
    assert len(rounds) == 1
    closed = rounds.pop_due(T0.after(5.0))
    assert closed is not None
    assert closed.seq == second.seq
    assert rounds.pop_due(T0.after(5.0)) is None
    assert len(rounds) == 0
