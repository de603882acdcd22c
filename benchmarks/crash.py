"""1. Crash detection: `kill -9` of a process running the agent -> the monitor's `offline`.

The floor is the broker's own Last Will, seen by a bare `mosquitto_sub` on the status topic; the
same `mosquitto_sub` also stamps the monitor's verdict, so both are timed by one kind of client.
"""

from __future__ import annotations

import random
import signal
import time

from benchmarks._common import (
    Config,
    MonitorProcess,
    MosquittoSubFeed,
    Section,
    Summary,
    Target,
    fmt,
    is_status,
    is_verdict,
    log,
    session_of,
    spawn_service,
    start_broker,
    stat_row,
    table,
    wait_monitor_online,
)

_BATCH = 10


def run(cfg: Config) -> Section:
    """Kill `cfg.repeat` agent processes one at a time; time the Will and the verdict."""
    names = [f"crash-{i}" for i in range(cfg.repeat)]
    broker = start_broker(cfg.workdir / "crash" / "broker", services=names)
    feed = MosquittoSubFeed(broker, ["presence/+/status", "presence/_monitor/services/+"])
    monitor = MonitorProcess(broker, cfg.workdir / "crash" / "monitor")
    wills: list[float] = []
    verdicts: list[float] = []
    overhead: list[float] = []
    try:
        wait_monitor_online(feed, monitor.pid)
        for first in range(0, len(names), _BATCH):
            group = names[first : first + _BATCH]
            procs = {name: spawn_service(broker, name) for name in group}
            sessions = {name: session_of(procs[name].expect("READY", 60)) for name in group}
            for name in group:
                if feed.wait_for(is_verdict(name, "online", sessions[name]), 30) is None:
                    raise TimeoutError(f"{name} never came online at the monitor")
            time.sleep(1.0)  # let the start-up of the batch settle
            for name in group:
                # A random phase relative to the ping rounds.
                time.sleep(random.uniform(0.2, 0.6))  # noqa: S311 (not crypto)
                mark = feed.mark()
                killed = time.time()
                procs[name].signal(signal.SIGKILL)
                will = feed.wait_for(is_status(name, "offline", sessions[name]), 10, mark)
                verdict = feed.wait_for(is_verdict(name, "offline", sessions[name]), 10, mark)
                procs[name].kill()
                if will is None or verdict is None:
                    log(f"crash: {name}: no Will or no verdict within 10 s")
                    continue
                wills.append(will.t - killed)
                verdicts.append(verdict.t - killed)
                overhead.append(verdict.t - will.t)
            log(f"crash: {len(verdicts)}/{len(names)} kills measured")
    finally:
        monitor.stop()
        feed.close()
        broker.kill()
    return _report(wills, verdicts, overhead)


def _report(wills: list[float], verdicts: list[float], overhead: list[float]) -> Section:
    section = Section("1. Crash detection (`kill -9` → `offline`)")
    headers = ["ms after the kill", "n", "median", "p99", "min", "max"]
    section.lines += table(
        headers,
        [
            stat_row("floor: the broker's Will at `mosquitto_sub`", wills, digits=2),
            stat_row("presence: the monitor's `offline` verdict", verdicts, digits=2),
            stat_row("overhead: verdict - Will (same kill)", overhead, digits=2),
        ],
    )
    section.lines += [
        "",
        "One service process embedding the agent per kill, killed at a random phase of the 1 s "
        "ping rounds; times are `time.time()` just before `os.kill` and the receipt stamps "
        "(`%U`) of one `mosquitto_sub` subscribed to the status and verdict topics.",
    ]
    v, o, w = Summary.of(verdicts), Summary.of(overhead), Summary.of(wills)
    floor_note = (
        f"the Will alone (floor) takes {fmt(w.median * 1000, 2)} ms median / "
        f"{fmt(w.p99 * 1000, 2)} ms p99 here; presence adds {fmt(o.median * 1000, 2)} ms median"
    )
    section.targets += [
        Target(
            "crash: verdict after the kill, median",
            "≤ 5 ms",
            f"{fmt(v.median * 1000, 2)} ms",
            v.n > 0 and v.median <= 0.005,
            floor_note,
        ),
        Target(
            "crash: verdict after the kill, p99",
            "≤ 25 ms",
            f"{fmt(v.p99 * 1000, 2)} ms (n = {v.n})",
            v.n > 0 and v.p99 <= 0.025,
            floor_note,
        ),
        Target(
            "crash: overhead over the Will, median",
            "< 3 ms",
            f"{fmt(o.median * 1000, 2)} ms",
            o.n > 0 and o.median < 0.003,
        ),
    ]
    return section
