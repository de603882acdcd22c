"""The monitor's live Python heap per tracked service (tracemalloc), beside its RSS slope.

    python -m benchmarks.heap --services 2000              # heap (tracemalloc) and RSS
    python -m benchmarks.heap --services 10000 --no-trace  # RSS only, at full speed

The footprint benchmark reports RSS growth per service, which includes what the allocator
keeps after the start-up burst (thousands of births, verdicts and events queued at once) and
never returns to the OS. This measures what stays allocated once that burst is over: a
Monitor in this process (no observer, so nothing else allocates here), a swarm answering for
`--services` names, a tracemalloc snapshot before the swarm and one after every service is
online with a round trip and the monitor's outgoing queue is empty. Prints the total and the
top allocation sites per service, the time the burst took to settle and how many publishes
the monitor had waiting for a PUBACK at most. Not part of `python -m benchmarks` (tracing is
slow).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._common import Children, Swarm, log, raise_fd_limit, rss_kb, start_broker

if TYPE_CHECKING:
    from presence.monitor import Monitor


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument(
        "--no-trace", action="store_true", help="RSS only: tracemalloc's own tables inflate it"
    )
    args = parser.parse_args()
    raise_fd_limit()

    from presence.logs import setup_logging  # noqa: PLC0415 (after argument parsing)
    from presence.monitor import Monitor  # noqa: PLC0415
    from presence.settings import LogSettings, Settings  # noqa: PLC0415

    setup_logging(LogSettings(level="ERROR"))
    workdir = Path(tempfile.mkdtemp(prefix="presence-heap-"))
    broker = start_broker(workdir / "broker")
    if not args.no_trace:
        tracemalloc.start(1)
    settings = Settings(broker=broker.settings("monitor", keepalive=10))
    monitor = Monitor(settings).start()
    swarm = None
    try:
        time.sleep(2)
        gc.collect()
        before = tracemalloc.take_snapshot() if not args.no_trace else None
        rss_before = rss_kb(os.getpid())
        swarm = Swarm(broker, 0, args.services).ready()
        started = time.monotonic()
        peak = _settled(monitor, args.services, 180)
        if peak is None:
            log("heap: the monitor did not settle in 180 s")
            return 1
        print(
            f"settled in {time.monotonic() - started:.1f} s; the monitor's unacknowledged "
            f"publishes peaked at {peak:,}"
        )
        time.sleep(3)  # a few quiet rounds
        gc.collect()
        n = args.services
        rss_growth = (rss_kb(os.getpid()) - rss_before) * 1024 / n
        print(f"monitor RSS growth for {n} services: {rss_growth:,.0f} B per service")
        if before is None:
            return 0
        _print_heap(before, n, args.top)
    finally:
        monitor.stop()
        if swarm is not None:
            swarm.stop()
        Children.kill_all()
        broker.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _settled(monitor: Monitor, n: int, timeout: float) -> int | None:
    """Wait until every service is online with a round trip and the monitor's outgoing queue
    is empty; returns the largest outgoing queue seen meanwhile, None on timeout."""
    from presence.tracker import State  # noqa: PLC0415 (imported with the monitor, as main does)

    peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reads of the monitor's state from another thread: a sample, not a decision.
        queued = monitor._conn.backlog() + len(monitor._outbox)
        peak = max(peak, monitor._conn.backlog())
        services = list(monitor._services.values())
        online = sum(1 for s in services if s.state == State.ONLINE)
        if online == n and len(monitor._rtt) == n and not queued:
            return peak
        time.sleep(0.05)
    return None


def _print_heap(before: tracemalloc.Snapshot, n: int, top: int) -> None:
    _, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"monitor heap growth for {n} services: {total / n:,.0f} B per service")
    print(f"traced peak over the whole run: {peak / n:,.0f} B per service")
    for stat in stats[:top]:
        site = stat.traceback[0]
        print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} objects  {site}")


if __name__ == "__main__":
    sys.exit(main())
