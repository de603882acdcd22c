"""The monitor's live Python heap per tracked service (tracemalloc), beside its RSS slope.

    python -m benchmarks.heap --services 2000

The footprint benchmark reports RSS growth per service, which includes what the allocator
keeps after the start-up burst (thousands of births, verdicts and events queued at once) and
never returns to the OS. This measures what stays allocated once that burst is over: a
Monitor in this process (no observer, so nothing else allocates here), a swarm answering for
`--services` names, a tracemalloc snapshot before the swarm and one after every service is
online with a round trip and the monitor's outgoing queue is empty. Prints the total and the
top allocation sites per service. Not part of `python -m benchmarks` (tracing is slow).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks._common import Children, Swarm, log, raise_fd_limit, start_broker


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    raise_fd_limit()

    from presence.logs import setup_logging  # noqa: PLC0415 (after argument parsing)
    from presence.monitor import Monitor  # noqa: PLC0415
    from presence.settings import LogSettings, Settings  # noqa: PLC0415
    from presence.tracker import State  # noqa: PLC0415

    setup_logging(LogSettings(level="ERROR"))
    workdir = Path(tempfile.mkdtemp(prefix="presence-heap-"))
    broker = start_broker(workdir / "broker")
    tracemalloc.start(1)
    settings = Settings(broker=broker.settings("monitor", keepalive=10))
    monitor = Monitor(settings).start()
    swarm = None
    try:
        time.sleep(2)
        gc.collect()
        before = tracemalloc.take_snapshot()
        swarm = Swarm(broker, 0, args.services).ready()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            # Reads of the monitor's state from another thread: a sample, not a decision.
            services = list(monitor._services.values())
            online = sum(1 for s in services if s.state == State.ONLINE)
            queued = len(monitor._conn._client._out_messages)
            if online == args.services and len(monitor._rtt) == args.services and not queued:
                break
            time.sleep(1)
        else:
            log("heap: the monitor did not settle in 180 s")
            return 1
        time.sleep(3)  # a few quiet rounds
        gc.collect()
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "lineno")
        total = sum(s.size_diff for s in stats)
        n = args.services
        print(f"monitor heap growth for {n} services: {total / n:,.0f} B per service")
        for stat in stats[: args.top]:
            site = stat.traceback[0]
            print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} objects  {site}")
    finally:
        monitor.stop()
        if swarm is not None:
            swarm.stop()
        Children.kill_all()
        broker.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
