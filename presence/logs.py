"""Logging setup (loguru) and the rate limit that keeps garbage on the wire from flooding logs."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Final

from loguru import logger

from presence.settings import LogSettings

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["BadPayloads", "setup_logging"]

_HUMAN: Final = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
    "<cyan>{name}</cyan> {message}"
)


def _ours(record: Record) -> bool:
    # A `presence run` child's output is logged to its own file only, never to our sinks.
    return "child_stream" not in record["extra"]


def setup_logging(settings: LogSettings) -> None:
    """Send logs to stderr (human or JSON lines) and optionally to a rotating file."""
    logger.remove()
    logger.add(
        sys.stderr,
        filter=_ours,
        level=settings.level,
        serialize=settings.json_lines,
        format=_HUMAN,
        colorize=None if not settings.json_lines else False,
        backtrace=False,
        diagnose=False,  # diagnose would print local variables, which may hold secrets
    )
    if settings.file is not None:
        logger.add(
            settings.file,
            filter=_ours,
            level=settings.level,
            serialize=settings.json_lines,
            format=_HUMAN,
            rotation=settings.rotation,
            retention=settings.retention,
            enqueue=True,  # a slow or full disk must not stall the monitor loop
            catch=True,  # a failing sink reports to stderr instead of raising into our code
            backtrace=False,
            diagnose=False,
        )


class BadPayloads:
    """Log each malformed payload once per topic, then at most once a minute with a count."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def report(self, topic: str, error: Exception) -> None:
        """Record one bad payload on `topic` and log it unless the topic was logged recently."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._seen.get(topic, (float("-inf"), 0))
            if now - last < self._every:
                self._seen[topic] = (last, suppressed + 1)
                return
            # Bounded: a flood of distinct junk topics must not grow this without limit.
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[topic] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("ignoring malformed payload on {}: {}{}", topic, error, more)
