"""`presence demo`, the README's first command, end to end (short run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import ROOT


def test_demo_runs_detects_faults_and_cleans_up() -> None:
    """A 16 s demo sees at least one crash and one hang, restarts them, and leaves nothing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("PRESENCE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "presence", "demo", "--duration", "16"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout

    def count(label: str) -> int:
        match = re.search(rf"{label}\s+(\d+)", out)
        assert match, out[-2000:]
        return int(match.group(1))

    assert count("crashes seen") >= 1
    assert count("hangs seen") >= 1
    assert count("restarts") >= 2
    # A fault injected before its target's pid was known is not timed: at least one kind is.
    medians = re.findall(r"median (crash|hang) detection time\s+(\d+ ms|-)", out)
    assert len(medians) == 2, out[-1000:]
    assert any(value != "-" for _, value in medians), medians
    tmp = re.search(r"users and ACL in\s+(\S+);", out)
    assert tmp, out[:500]
    leftovers = subprocess.run(["pgrep", "-f", tmp.group(1)], capture_output=True, check=False)
    assert leftovers.stdout == b"", "the demo left processes behind"
    assert not os.path.exists(tmp.group(1))
