"""Healthy members for routing: which members of a group are alive, least loaded first.

Services declare a `group` (agent option, `presence run --group`) and report a `load` number in
their pong `detail`. The monitor publishes a retained `P/_monitor/groups/<group>` with the
members whose verdict is `online`, sorted by load; `pick()` / `Picker` read it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from presence.errors import PayloadError
from presence.mqtt import Connection, Disconnect, Message, cli_client_id, fetch_retained
from presence.protocol import MONITOR, Topics, encode, validate_name
from presence.settings import BrokerSettings

__all__ = ["Member", "Picker", "group_payload", "group_topic", "load_of", "parse_group", "pick"]


@dataclass(frozen=True, slots=True)
class Member:
    """A live member of a group."""

    service: str
    load: float | None
    rtt_ms: float | None


def group_topic(topics: Topics, group: str) -> str:
    """`P/_monitor/groups/<group>`."""
    return f"{topics.prefix}/{MONITOR}/groups/{validate_name(group)}"


def load_of(detail: Mapping[str, Any] | None) -> float | None:
    """The `load` a pong reports: `detail.load`, or `detail.body.load` behind an HTTP probe."""
    if not detail:
        return None
    value = detail.get("load")
    body = detail.get("body")
    if value is None and isinstance(body, Mapping):
        value = body.get("load")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _order(member: Member) -> tuple[bool, float, float, str]:
    # Unknown loads last; then least loaded, fastest, and by name for a stable order.
    load = member.load if member.load is not None else math.inf
    rtt = member.rtt_ms if member.rtt_ms is not None else math.inf
    return (member.load is None, load, rtt, member.service)


def group_payload(group: str, members: list[Member]) -> bytes:
    """The retained group document: live members, least loaded first."""
    ordered = sorted(members, key=_order)
    return encode(
        {
            "group": group,
            "members": [
                {"service": m.service, "load": m.load, "rtt_ms": m.rtt_ms} for m in ordered
            ],
        }
    )


def parse_group(payload: bytes) -> list[str]:
    """The member names of a group document, in order; PayloadError if it is not one."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(f"group document is not JSON: {exc}") from exc
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list):
        raise PayloadError("group document has no member list")
    names = [m.get("service") for m in members if isinstance(m, dict)]
    return [n for n in names if isinstance(n, str)]


def pick(broker: BrokerSettings, group: str, *, prefix: str = "presence") -> str | None:
    """The least-loaded live member of `group` right now (one round trip to the broker)."""
    topic = group_topic(Topics(prefix), group)
    for message in fetch_retained(broker, [topic], client_id=cli_client_id("pick")):
        if message.topic == topic and message.payload:
            members = parse_group(message.payload)
            return members[0] if members else None
    return None


class Picker:
    """Keeps a live subscription to a group, so `pick()` costs no network round trip.

    For a gateway that routes every request: `with Picker(broker, "api") as p: p.pick()`.
    """

    def __init__(self, broker: BrokerSettings, group: str, *, prefix: str = "presence") -> None:
        self._topic = group_topic(Topics(prefix), group)
        self._lock = threading.Lock()
        self._members: list[str] = []
        self._ready = threading.Event()
        self._conn = Connection(
            broker,
            client_id=cli_client_id("picker"),
            handler=self,
            subscriptions=[(self._topic, 1)],
            label="picker",
        )

    def on_connected(self, session_present: bool) -> None:
        """Nothing to do: the subscription brings the retained document."""

    def on_disconnected(self, info: Disconnect) -> None:
        """paho reconnects by itself."""

    def on_message(self, message: Message) -> None:
        """A new group document."""
        try:
            members = parse_group(message.payload) if message.payload else []
        except PayloadError:
            return
        with self._lock:
            self._members = members
        self._ready.set()

    def start(self, timeout: float = 5.0) -> Picker:
        """Connect and wait (up to `timeout`) for the first document."""
        self._conn.connect()
        self._ready.wait(timeout)
        return self

    def pick(self) -> str | None:
        """The least-loaded live member, or None if none is live."""
        with self._lock:
            return self._members[0] if self._members else None

    def members(self) -> list[str]:
        """All live members, least loaded first."""
        with self._lock:
            return list(self._members)

    def close(self) -> None:
        """Disconnect."""
        self._conn.close()

    def __enter__(self) -> Picker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
