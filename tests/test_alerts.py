"""Alert noise control, driven directly with made-up times (no sinks, no sleeps)."""

from __future__ import annotations

from typing import Any

from presence.alerts import Alert, Alerter, Observation
from presence.settings import WebhookSink


def sink(**kw: Any) -> WebhookSink:
    """A webhook sink config (never contacted: the Alerter gets a fake `send`)."""
    return WebhookSink(type="webhook", url="http://127.0.0.1:9/", **kw)


class Recorder:
    """An Alerter whose sends are recorded instead of delivered."""

    def __init__(self, *sinks: WebhookSink) -> None:
        self.sent: list[tuple[int, Alert]] = []
        self.alerter = Alerter(list(sinks), send=lambda i, a: self.sent.append((i, a)))
        self.state = "online"

    def go(self, t: float, state: str, **kw: Any) -> Recorder:
        obs = Observation(
            service="web",
            before=self.state,
            after=state,
            reason=kw.pop("reason", "lost"),
            restartable=kw.pop("restartable", True),
            **kw,
        )
        self.state = state
        self.alerter.observe(obs, t)
        return self

    def tick(self, t: float) -> Recorder:
        self.alerter.tick(t)
        return self

    @property
    def kinds(self) -> list[str]:
        return [a.kind for _, a in self.sent]


def test_one_down_and_one_recovered_per_episode() -> None:
    """Down at once (alert_after 0), nothing for the flaps inside the episode, then recovered."""
    r = Recorder(sink())
    r.go(0, "offline").go(0.1, "restarting").go(1, "online").go(2, "offline")
    r.go(3, "restarting").go(4, "online").tick(10).tick(13.9)
    assert r.kinds == ["down"]
    r.tick(14)  # healthy for resolve_after (10 s) since t=4
    assert r.kinds == ["down", "recovered"]
    assert "recovered after 14 s" in r.sent[-1][1].text


def test_alert_after_swallows_short_outages() -> None:
    """An outage that recovers before alert_after sends nothing at all."""
    r = Recorder(sink(alert_after=30))
    r.go(0, "offline").go(5, "restarting").go(6, "online").tick(20).tick(40)
    assert r.kinds == []
    r.go(100, "offline").tick(129)
    assert r.kinds == []
    r.tick(130)
    assert r.kinds == ["down"]


def test_repeat_every_sends_reminders_while_still_down() -> None:
    """Reminders at the configured interval, marked as such."""
    r = Recorder(sink(repeat_every=60))
    r.go(0, "hung", reason="hung").tick(59).tick(60).tick(100).tick(120)
    assert r.kinds == ["down", "down", "down"]
    assert [a.reminder for _, a in r.sent] == [False, True, True]


def test_failed_is_sent_exactly_once() -> None:
    """A crash loop that ends failed: one down, one failed, whatever flaps before."""
    r = Recorder(sink())
    for t in range(0, 50, 10):
        r.go(t, "offline").go(t + 1, "restarting").go(t + 2, "online").go(t + 3, "offline")
        r.go(t + 4, "backoff")
    r.go(60, "failed", detail="5 restarts within 300 s did not keep it up").go(61, "failed")
    r.tick(1000)
    assert r.kinds == ["down", "failed"]
    assert "5 restarts within 300 s" in r.sent[-1][1].text


def test_escalation_waits_for_failed_restart_attempts() -> None:
    """alert_after_attempts 2: restarts get two tries before a human is told."""
    r = Recorder(sink(alert_after_attempts=2))
    r.go(0, "offline").go(0.1, "restarting").go(1, "backoff")
    assert r.kinds == []
    r.go(5, "restarting").go(6, "backoff")
    assert r.kinds == ["down"]


def test_escalation_does_not_wait_when_nothing_can_restart() -> None:
    """Without a restart action there are no attempts to wait for."""
    r = Recorder(sink(alert_after_attempts=3))
    r.go(0, "offline", restartable=False)
    assert r.kinds == ["down"]


def test_restart_alerts_only_for_sinks_that_ask() -> None:
    """`restart` is opt-in per sink; each sink decides for itself."""
    r = Recorder(sink(), sink(on=["restart"]))
    r.go(0, "offline").go(0.1, "restarting", attempt=1)
    assert [(i, a.kind) for i, a in r.sent] == [(0, "down"), (1, "restart")]


def test_paused_services_send_nothing() -> None:
    """Maintenance: no alerts, and no recovered for an episode nobody was told about."""
    r = Recorder(sink())
    r.go(0, "offline", paused=True).go(5, "online", paused=True).tick(100)
    assert r.kinds == []


def test_clean_exit_is_not_an_outage() -> None:
    """A program that exits 0 under a runner is done, not down."""
    r = Recorder(sink())
    r.go(0, "offline", reason="exited", clean_exit=True)
    assert r.kinds == []
    r.go(1, "offline", reason="exited", clean_exit=False)
    assert r.kinds == ["down"]


def test_service_filter() -> None:
    """A sink limited to some services ignores the others."""
    r = Recorder(sink(services=["db"]))
    r.go(0, "offline")
    assert r.kinds == []


def test_next_deadline_points_at_the_next_due_alert() -> None:
    """The monitor loop sleeps exactly until an alert is due."""
    r = Recorder(sink(alert_after=30))
    assert r.alerter.next_deadline() is None
    r.go(5, "offline")
    assert r.alerter.next_deadline() == 35
