"""What the monitor publishes besides verdicts and events: Home Assistant discovery, group
documents and Prometheus metrics. All of it is derived from the verdicts (no second source of
truth). Owned by the monitor's loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from presence import homeassistant as ha
from presence.groups import Member, group_payload, group_topic, load_of
from presence.metrics import Metrics
from presence.protocol import Topics, Verdict
from presence.settings import Settings
from presence.tracker import Answer, Service

__all__ = ["Surfaces"]

_DOWN_FOR_LATENCY: Final = {"offline": "will", "hung": "hang", "unhealthy": "health"}


class Surfaces:
    """Home Assistant discovery, groups and metrics for the monitor."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        publish: Callable[[str, bytes, int, bool], object],
        version: str,
    ) -> None:
        self._topics = topics
        self._publish = publish
        self._version = version
        self._ha = settings.homeassistant
        self._announced: set[str] = set()
        self._loads: dict[str, float] = {}
        self._groups: dict[str, bytes] = {}
        self._dirty_groups: set[str] = set()
        self.metrics = Metrics(settings.metrics)

    # -- Home Assistant --------------------------------------------------------------------

    @property
    def ha_status_topic(self) -> str | None:
        """Home Assistant's birth topic, when discovery is on."""
        return f"{self._ha.discovery_prefix}/status" if self._ha.enabled else None

    def seen(self, name: str) -> None:
        """A service is tracked: make sure Home Assistant knows it."""
        if self._ha.enabled and name not in self._announced:
            self._announced.add(name)
            self._discover(name)

    def rediscover(self, names: Iterable[str]) -> None:
        """Home Assistant (re)started: publish every service's discovery again."""
        if self._ha.enabled:
            for name in names:
                self._announced.add(name)
                self._discover(name)

    def _discover(self, name: str) -> None:
        for topic, payload in ha.discovery(
            self._topics, self._ha.discovery_prefix, name, self._version
        ):
            self._publish(topic, payload, 1, True)

    # -- verdicts, rounds --------------------------------------------------------------------

    def verdict(self, name: str, before: str, verdict: Verdict, latency: float | None) -> None:
        """A verdict was published (`before` is the previous state)."""
        metrics = self.metrics
        if verdict.state != before:
            metrics.set_state(name, verdict.state)
            kind = _DOWN_FOR_LATENCY.get(verdict.state)
            if metrics.enabled and kind is not None and latency is not None:
                metrics.latency.labels(kind).observe(latency)
        if metrics.enabled and verdict.rtt_ms is not None:
            metrics.rtt.labels(name).set(verdict.rtt_ms / 1000)
        group = (verdict.extra or {}).get("group")
        if isinstance(group, str):
            self._dirty_groups.add(group)

    def round_closed(
        self, counted: bool, answers: Mapping[str, Answer], missed: Iterable[str]
    ) -> None:
        """A ping round closed: record loads and misses."""
        if self.metrics.enabled:
            self.metrics.rounds.labels("counted" if counted else "void").inc()
            for name in missed:
                self.metrics.misses.labels(name).inc()
        for name, answer in answers.items():
            load = load_of(answer.detail)
            if load is not None and self._loads.get(name) != load:
                self._loads[name] = load

    def action(self, name: str, *, started: bool = False, ok: bool | None = None) -> None:
        """A restart action started or finished."""
        if not self.metrics.enabled:
            return
        if started:
            self.metrics.restarts.labels(name).inc()
        if ok is not None:
            self.metrics.actions.labels("ok" if ok else "failed").inc()

    def connected(self, up: bool) -> None:
        """The monitor's own link to the broker."""
        if self.metrics.enabled:
            self.metrics.up.set(1.0 if up else 0.0)

    # -- groups ----------------------------------------------------------------------------

    def publish_groups(
        self, services: Mapping[str, Service], verdicts: Mapping[str, Verdict], *, all_groups: bool
    ) -> None:
        """Republish the group documents that changed (all of them after a round: loads move)."""
        groups: dict[str, list[Member]] = {}
        for name, svc in services.items():
            if svc.group is not None:
                groups.setdefault(svc.group, [])
                verdict = verdicts.get(name)
                if verdict is not None and verdict.state == "online":
                    groups[svc.group].append(Member(name, self._loads.get(name), verdict.rtt_ms))
        wanted = groups.keys() if all_groups else self._dirty_groups & groups.keys()
        for group in wanted:
            payload = group_payload(group, groups[group])
            if self._groups.get(group) != payload:
                self._groups[group] = payload
                self._publish(group_topic(self._topics, group), payload, 1, True)
        self._dirty_groups.clear()

    # -- forgetting ------------------------------------------------------------------------

    def forget(self, name: str) -> None:
        """Remove a service's Home Assistant entities and metrics."""
        if self._ha.enabled:
            for topic, payload in ha.removal(self._topics, self._ha.discovery_prefix, name):
                self._publish(topic, payload, 1, True)
        self._announced.discard(name)
        self._loads.pop(name, None)
        self.metrics.forget(name)

    def close(self) -> None:
        """Stop the metrics server."""
        self.metrics.close()
