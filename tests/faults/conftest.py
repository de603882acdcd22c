"""Fault-injection fixtures: every test reports its figures; the session prints them as a table
(copied into docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import kill_listed


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """record("what was injected", detected_in_s=0.12, actions=1): one row of the report.

    Kept in the test report's user properties, so it reaches the summary from xdist workers.
    """

    def _record(row: str, **figures: Any) -> None:
        text = ", ".join(
            f"{key.replace('_', ' ')} {value:.3f}"
            if isinstance(value, float)
            else f"{key.replace('_', ' ')} {value}"
            for key, value in figures.items()
        )
        request.node.user_properties.append(("fault", (row, text)))
        print(f"[fault] {row}: {text}")

    return _record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The measured figures of every fault test that ran, as a Markdown table."""
    rows = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for key, value in getattr(report, "user_properties", ())
        if key == "fault"
    ]
    if not rows:
        return
    terminalreporter.write_sep("-", "fault injection: measured")
    terminalreporter.write_line("| fault | measured |")
    terminalreporter.write_line("|---|---|")
    for row, text in rows:
        terminalreporter.write_line(f"| {row} | {text} |")


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A pid file per service for relaunched instances; everything listed is killed at the end."""
    files: dict[str, Path] = {}

    def pidfile(name: str) -> Path:
        return files.setdefault(name, tmp_path / f"{name}.pids")

    try:
        yield pidfile
    finally:
        for path in files.values():
            kill_listed(path)
