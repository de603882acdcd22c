"""Logging setup (loguru) and the rate limit that keeps garbage on the wire from flooding logs."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from loguru import logger

from presence.settings import LogSettings, parse_size

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["BadPayloads", "RotatingFile", "parse_size", "setup_logging"]

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
            RotatingFile(settings.file, parse_size(settings.rotation), settings.retention),
            filter=_ours,
            level=settings.level,
            serialize=settings.json_lines,
            format=_HUMAN,
            colorize=False,
            enqueue=True,  # a slow or full disk must not stall the monitor loop
            backtrace=False,
            diagnose=False,
        )


class RotatingFile:
    """A log file sink: rotates at `max_bytes`, keeps `keep` old files, and never raises.

    When the disk is full (or the file cannot be written at all) the message is dropped and the
    failure reported on stderr at most once a minute with a count: a full disk must not stop
    the monitor, nor turn every log line into an error report of its own.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int, every: float = 60.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._every = every
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._size = 0
        self._dropped = 0
        self._reported = float("-inf")

    def write(self, message: str) -> None:
        """Write one formatted record (loguru calls this)."""
        with self._lock:
            try:
                if self._file is None:
                    self._file = self.path.open("a", encoding="utf-8")
                    self._size = self._file.tell()
                if self._size and self._size + len(message) > self.max_bytes:
                    self._rotate()
                    self._file = self.path.open("a", encoding="utf-8")
                    self._size = 0
                self._file.write(message)
                self._file.flush()
                self._size += len(message)
            except OSError as exc:
                self._failed(exc)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for index in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if index == self.keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists() and not self.path.is_char_device():
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def _failed(self, exc: OSError) -> None:
        self._dropped += 1
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None  # reopen next time: the disk may have room again
        now = time.monotonic()
        if now - self._reported >= self._every:
            self._reported = now
            dropped, self._dropped = self._dropped, 0
            print(
                f"presence: cannot write log file {self.path}: {exc.strerror or exc} "
                f"({dropped} message(s) dropped; reported at most once a minute)",
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        """Close the file (loguru calls this when the sink is removed)."""
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None


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
