"""`presence watch`: a live terminal table of every verdict, worst first.

Read-only (the `dashboard` user is enough): it follows the monitor's retained verdicts and
status and its live events. paho's thread only parses and updates a `WatchModel`; the caller's
thread renders, as soon as the model changes and about once a second for the relative ages.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.text import Text

from presence.errors import BrokerError, PayloadError
from presence.logs import BadPayloads
from presence.mqtt import Connection, Disconnect, Message, cli_client_id, fetch_retained
from presence.protocol import (
    Event,
    Status,
    Topics,
    Verdict,
    parse_event,
    parse_status,
    parse_verdict,
)
from presence.settings import Settings

__all__ = ["Feed", "Snapshot", "WatchModel", "render", "run_watch"]

EXIT_OK: Final = 0
EXIT_DOWN: Final = 1
EXIT_BROKER: Final = 3
#: Worst first: what needs a human comes before what merely is not running.
SEVERITY: Final = (
    "failed",
    "offline",
    "hung",
    "unhealthy",
    "backoff",
    "restarting",
    "suspect",
    "unknown",
    "stopped",
    "online",
)
_RANK: Final = {state: rank for rank, state in enumerate(SEVERITY)}
#: A verdict state's colour, here and in `presence status`.
STATE_STYLE: Final = {
    "online": "green",
    "suspect": "yellow",
    "hung": "bold red",
    "unhealthy": "red",
    "offline": "bold red",
    "stopped": "dim",
    "unknown": "dim",
    "restarting": "cyan",
    "backoff": "magenta",
    "failed": "bold white on red",
}
_EVENTS_KEPT: Final = 5
_POLL: Final = 0.05  # how often the render loop notices `stop` while nothing changes
_AGE_REFRESH: Final = 1.0  # re-render this often anyway, so "3s ago" keeps counting
_MIN_FRAME: Final = 0.03  # a flapping fleet must not turn the render loop into a busy loop
_TEXT_LIMIT: Final = 120


def _rank(state: str) -> int:
    # A state this version does not know is shown with `unknown`: above the healthy ones.
    return _RANK.get(state, _RANK["unknown"])


def _clean(value: object, limit: int = _TEXT_LIMIT) -> str:
    """Printable, bounded text from the wire (rich keeps ESC, so a payload could drive the tty)."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: object) -> float | None:
    # `extra` is unvalidated JSON: a bool is an int in Python but not a number on the wire,
    # and an integer may be too large for a float.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _clock(ts: float) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a parseable but absurd time from the wire
        return "??:??:??"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent, immutable copy of a `WatchModel` (rows already sorted worst first)."""

    rows: tuple[Verdict, ...]
    monitor: Status | None
    events: tuple[Event, ...]
    #: True/False: the watch's own broker link is up/down; None: not a live watch.
    link: bool | None
    version: int


class WatchModel:
    """Everything the table shows. Thread-safe: paho's thread writes, the render thread reads.

    Every change bumps `version` and wakes `wait_changed`, which is how the render loop learns
    that it has to draw again without polling the model.
    """

    def __init__(self, events_kept: int = _EVENTS_KEPT) -> None:
        self._cond = threading.Condition()
        self._verdicts: dict[str, Verdict] = {}
        self._monitor: Status | None = None
        self._events: deque[Event] = deque(maxlen=events_kept)
        self._link: bool | None = None
        self._version = 0

    def _changed(self) -> None:
        # Caller holds the lock.
        self._version += 1
        self._cond.notify_all()

    def set_verdict(self, verdict: Verdict) -> None:
        """Store a service's latest verdict."""
        with self._cond:
            self._verdicts[verdict.service] = verdict
            self._changed()

    def remove(self, name: str) -> None:
        """Forget a service (its retained verdict was cleared)."""
        with self._cond:
            if self._verdicts.pop(name, None) is not None:
                self._changed()

    def set_monitor(self, status: Status | None) -> None:
        """Store the monitor's own status (None: cleared or never seen)."""
        with self._cond:
            self._monitor = status
            self._changed()

    def add_event(self, event: Event) -> None:
        """Remember an event; only the last few are kept."""
        with self._cond:
            self._events.append(event)
            self._changed()

    def set_link(self, up: bool) -> None:
        """Record whether the watch itself is connected to the broker."""
        with self._cond:
            self._link = up
            self._changed()

    def wait_changed(self, seen: int, timeout: float) -> int:
        """Wait up to `timeout` for a version newer than `seen`; return the current version."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen, timeout)
            return self._version

    def rows(self) -> list[Verdict]:
        """Every verdict, worst state first, ties by service name."""
        return list(self.snapshot().rows)

    def snapshot(self) -> Snapshot:
        """A consistent copy to render from without holding the lock."""
        with self._cond:
            verdicts = list(self._verdicts.values())
            monitor, events, link = self._monitor, tuple(self._events), self._link
            version = self._version
        rows = tuple(sorted(verdicts, key=lambda v: (_rank(v.state), v.service)))
        return Snapshot(rows, monitor, events, link, version)


class Feed:
    """A `presence.mqtt.Handler` that parses what arrives and applies it to a `WatchModel`.

    It runs on paho's network thread, so it only parses and updates the model; malformed
    payloads are logged once per topic (`BadPayloads`) and ignored.
    """

    def __init__(self, model: WatchModel, topics: Topics, bad: BadPayloads | None = None) -> None:
        self._model = model
        self._topics = topics
        self._bad = bad or BadPayloads()

    def on_connected(self, session_present: bool) -> None:  # noqa: ARG002 (Handler protocol)
        """The link is up (retained verdicts follow from the subscriptions)."""
        self._model.set_link(True)

    def on_disconnected(self, info: Disconnect) -> None:  # noqa: ARG002 (Handler protocol)
        """The link is down; paho reconnects and resubscribes by itself."""
        self._model.set_link(False)

    def on_message(self, message: Message) -> None:
        """Apply one verdict, monitor status or event."""
        topic, payload = message.topic, message.payload
        try:
            if topic == self._topics.monitor_status:
                self._model.set_monitor(parse_status(payload) if payload else None)
            elif topic == self._topics.events:
                self._model.add_event(parse_event(payload))
            else:
                where = self._topics.split(topic)
                if where is None or where[1] != "verdict":
                    return
                if not payload:  # an empty retained message deletes the verdict
                    self._model.remove(where[0])
                    return
                verdict = parse_verdict(payload)
                if verdict.service == where[0]:
                    self._model.set_verdict(verdict)
                else:
                    self._bad.report(topic, PayloadError(f"a verdict for {verdict.service!r}"))
        except PayloadError as exc:
            self._bad.report(topic, exc)


# -- rendering (pure: everything comes from the snapshot and `now`) ------------------------------


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _ago(ts: float | None, now: float) -> str:
    return f"{_span(now - ts)} ago" if ts else "-"


def _next(extra: Mapping[str, Any], now: float) -> str:
    at = _number(extra.get("next_attempt_at"))
    if at is None:
        return "-"
    # Rounded first, so float noise does not turn "in 12s" into "in 13s"; ceil so a pending
    # attempt never reads "in 0s".
    delta = math.ceil(round(at - now, 3))
    if delta <= 0:
        return "due"
    # Seconds matter for a countdown: "in 1m15s" rather than "in 1m".
    return f"in {delta // 60}m{delta % 60:02d}s" if 60 <= delta < 3600 else f"in {_span(delta)}"


def _state_cell(verdict: Verdict) -> Text:
    cell = Text(_clean(verdict.state, 20), style=STATE_STYLE.get(verdict.state, ""))
    if (verdict.extra or {}).get("paused") is True:
        cell.append(" (paused)", style="yellow")
    return cell


def _reason_cell(verdict: Verdict) -> str:
    extra = verdict.extra or {}
    text = verdict.reason or "-"
    for key, label in (("exit_code", "exit"), ("signal", "signal")):
        value = _number(extra.get(key))
        if value is not None:
            text += f" ({label} {int(value)})"
    if extra.get("why") is not None:
        text += f": {extra['why']}"
    elif isinstance(extra.get("detail"), Mapping):
        text += " " + json.dumps(extra["detail"], separators=(",", ":"), default=str)
    return _clean(text)


def _counts(counts: Counter[str]) -> Text:
    text = Text()
    for i, state in enumerate(sorted(counts, key=lambda s: (_rank(s), s))):
        if i:
            text.append(", ")
        text.append(f"{counts[state]} {_clean(state, 20)}", style=STATE_STYLE.get(state, ""))
    return text


_COLUMNS: Final = ("SERVICE", "STATE", "SINCE", "REASON", "RTT", "MISSED", "RESTARTS", "NEXT")
_FLEXIBLE: Final = (0, 3)  # SERVICE and REASON give way on a narrow terminal


class _Grid:
    """The table as fixed-width lines, one per row whatever the width.

    rich's Table costs about 0.7 ms a row; a screenful of these lines costs a tenth of that,
    which keeps a redraw well inside the 100 ms budget with hundreds of services.
    """

    def __init__(self, rows: Iterable[Verdict], now: float) -> None:
        self._lines = [[Text(title, style="bold") for title in _COLUMNS]]
        for v in rows:
            rtt = f"{v.rtt_ms:.1f} ms" if v.rtt_ms is not None else "-"
            self._lines.append(
                [
                    Text(v.service),
                    _state_cell(v),
                    Text(_ago(v.since, now)),
                    Text(_reason_cell(v)),
                    Text(rtt),
                    Text(str(v.missed)),
                    Text(str(v.restarts)),
                    Text(_next(v.extra or {}, now)),
                ]
            )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Lay the cells out for the width we get."""
        widths = [max(line[i].cell_len for line in self._lines) for i in range(len(_COLUMNS))]
        excess = sum(widths) + 2 * (len(widths) - 1) - options.max_width
        while excess > 0:  # the wider flexible column gives way first, down to its title
            i = max(_FLEXIBLE, key=lambda k: widths[k] - len(_COLUMNS[k]))
            if widths[i] <= len(_COLUMNS[i]):
                break
            widths[i], excess = widths[i] - 1, excess - 1
        for cells in self._lines:
            line = Text(no_wrap=True, overflow="ellipsis")  # still too wide: crop the end
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
                piece = cell.copy()  # rendering again (another width) must start from the full text
                piece.truncate(width, overflow="ellipsis", pad=i < len(widths) - 1)
                line.append_text(piece if i == 0 else Text("  ").append_text(piece))
            yield line


def _monitor_line(snap: Snapshot, now: float) -> Text:
    status = snap.monitor
    if status is None:
        line = Text("monitor: never seen", style="bold red")
    elif status.state == "online":
        where = f" on {_clean(status.host or '?', 64)} pid {status.pid or '?'}"
        line = Text(f"monitor: online since {_ago(status.since, now)}{where}", style="green")
    else:
        line = Text(
            f"monitor: OFFLINE ({_clean(status.reason or 'lost', 32)}) since "
            f"{_ago(status.since, now)}",
            style="bold red",
        )
    if snap.link is False:
        line.append("  · watch: not connected to the broker, reconnecting", style="yellow")
    return line


def _event_line(event: Event) -> Text:
    line = Text(_clock(event.ts), style="dim")
    line.append(f"  {event.service}  ")
    action = (event.extra or {}).get("action")
    if event.reason == "action" and isinstance(action, Mapping):
        ok = action.get("ok") is True
        line.append(f"action {_clean(action.get('type', '?'), 16)} ")
        line.append("ok" if ok else "FAILED", style="green" if ok else "bold red")
        if action.get("detail"):
            line.append(f": {_clean(action['detail'], 80)}")
        return line
    line.append(_clean(event.from_state, 20), style=STATE_STYLE.get(event.from_state, ""))
    line.append(" -> ")
    line.append(_clean(event.to_state, 20), style=STATE_STYLE.get(event.to_state, ""))
    if event.reason:
        line.append(f" ({_clean(event.reason, 64)})")
    return line


def render(model: WatchModel, now: float, height: int | None = None) -> RenderableType:
    """The whole screen: a summary line, the table (worst first) and the footer.

    With `height`, at most that many lines: the worst rows that fit, then one line counting
    the rest ("… 312 more (all online)"). Without it, every row (for `--once`).
    """
    snap = model.snapshot()
    rows = list(snap.rows)
    header = Text(f"presence watch  {_clock(now)}  ")
    header.append(f"{len(rows)} service{'' if len(rows) == 1 else 's'}" + (": " if rows else ""))
    header.append_text(_counts(Counter(v.state for v in rows)))
    footer = [_monitor_line(snap, now), *(_event_line(e) for e in snap.events)]
    for line in (header, *footer):
        # Cut, never wrapped: the height budget below counts one line each.
        line.no_wrap, line.overflow = True, "ellipsis"
    if not rows:
        return Group(header, Text("no verdicts published yet", style="dim"), *footer)
    parts: list[RenderableType] = [header]
    hidden: list[Verdict] = []
    if height is not None:
        # summary + table header + footer; at least one row and the "more" line stay visible.
        room = max(2, height - 2 - len(footer))
        if len(rows) > room:
            rows, hidden = rows[: room - 1], rows[room - 1 :]
    parts.append(_Grid(rows, now))
    if hidden:
        counts = Counter(v.state for v in hidden)
        more = Text(f"… {len(hidden)} more ", style="dim")
        if len(counts) == 1:
            more.append(f"(all {_clean(next(iter(counts)), 20)})", style="dim")
        else:
            more.append("(").append_text(_counts(counts)).append(")")
        more.no_wrap, more.overflow = True, "ellipsis"
        parts.append(more)
    return Group(*parts, *footer)


# -- running ------------------------------------------------------------------------------------


def _broker_failure(err: Console, exc: BrokerError) -> int:
    err.print(Text(f"presence watch: {exc}", style="bold red"))
    return EXIT_BROKER


def _once(settings: Settings, topics: Topics, console: Console, err: Console) -> int:
    model = WatchModel()
    feed = Feed(model, topics)
    try:
        retained = fetch_retained(
            settings.broker,
            [topics.monitor_status, topics.verdicts],
            client_id=cli_client_id("watch"),
            label="watch",
        )
    except BrokerError as exc:
        return _broker_failure(err, exc)
    for message in retained:
        feed.on_message(message)
    console.print(render(model, time.time()))
    monitor = model.snapshot().monitor
    return EXIT_OK if monitor is not None and monitor.state == "online" else EXIT_DOWN


def _live(
    settings: Settings,
    topics: Topics,
    console: Console,
    err: Console,
    stop: threading.Event,
    model: WatchModel,
) -> int:
    conn = Connection(
        settings.broker,
        client_id=cli_client_id("watch"),
        handler=Feed(model, topics),
        # Given here rather than subscribed once, so a reconnect resubscribes by itself.
        subscriptions=[(topics.verdicts, 1), (topics.monitor_status, 1), (topics.events, 1)],
        label="watch",
    )
    try:
        conn.connect()
    except BrokerError as exc:
        return _broker_failure(err, exc)

    def frame() -> RenderableType:
        # One line short of the terminal: a full-height frame would scroll it by a line.
        return render(model, time.time(), max(5, console.size.height - 1))

    try:
        # Our own thread redraws (no auto refresh); stdout/stderr stay as they are, because
        # swapping the process-wide streams from a library call surprises the caller.
        with Live(
            frame(),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            seen = model.snapshot().version
            drawn = time.monotonic()
            while not stop.is_set():
                current = model.wait_changed(seen, _POLL)
                if current == seen and time.monotonic() - drawn < _AGE_REFRESH:
                    continue
                seen = current  # read before rendering: a later change triggers another frame
                live.update(frame(), refresh=True)
                drawn = time.monotonic()
                stop.wait(_MIN_FRAME)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a human leaves a live view: not an error
    finally:
        conn.close()
    return EXIT_OK


def run_watch(
    settings: Settings,
    *,
    once: bool,
    console: Console | None = None,
    stop: threading.Event | None = None,
    err_console: Console | None = None,
    model: WatchModel | None = None,
) -> int:
    """Show the live table until Ctrl-C or `stop` (or, with `once`, print one snapshot).

    Settings are already loaded and logging is set up by the caller. Returns the exit code:
    0; with `once`, 1 when the monitor is not online; 3 when the broker cannot be reached or
    refuses us (the message, naming host:port, goes to `err_console`, default stderr). Pass
    `model` to observe what the live view shows.
    """
    topics = Topics(settings.topic_prefix)
    console = console or Console()
    err = err_console or Console(stderr=True)
    if once:
        return _once(settings, topics, console, err)
    return _live(settings, topics, console, err, stop or threading.Event(), model or WatchModel())
