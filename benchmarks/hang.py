"""2. Hang detection: `kill -STOP` of a process running the agent -> the monitor's `hung`.

The floor is the theoretical bound `ping_interval x missed_pongs + pong_timeout`. Alongside, one
more agent process is frozen and left frozen until the broker's keepalive check publishes its
Will (`keepalive x 1.5` plus the broker's check period), to show why pings exist.
"""

from __future__ import annotations

import random
import signal
import time

from benchmarks._common import (
    Config,
    LineProcess,
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
    table,
    wait_monitor_online,
)

INTERVALS = (1.0, 0.5, 0.25)
MISSED = 2
KEEPALIVE = 10  # the agents' default (BrokerSettings.keepalive)
_CONCURRENT = 10


def bound(interval: float) -> float:
    """The theoretical worst case from freeze to `hung` (pong_timeout = interval here)."""
    return interval * MISSED + interval


def run(cfg: Config) -> Section:
    """Freeze and thaw agent processes under monitors with each ping interval."""
    width = min(_CONCURRENT, cfg.repeat)
    names = [f"hang-{i}" for i in range(width)]
    # The broker's own keepalive takes 16-22 s to notice a frozen agent: not in a smoke run.
    frozen = [] if cfg.quick else ["frozen-0"]
    broker = start_broker(cfg.workdir / "hang" / "broker", services=[*names, *frozen])
    feed = MosquittoSubFeed(broker, ["presence/+/status", "presence/_monitor/services/+"])
    procs: dict[str, LineProcess] = {}
    samples: dict[float, list[float]] = {}
    will_after: float | None = None
    try:
        for name in [*names, *frozen]:
            procs[name] = spawn_service(broker, name)
        sessions = {name: session_of(p.expect("READY", 60)) for name, p in procs.items()}
        frozen_at: float | None = None
        for interval in INTERVALS:
            monitor = MonitorProcess(
                broker,
                cfg.workdir / "hang" / f"monitor-{interval}",
                monitor={
                    "ping_interval": interval,
                    "pong_timeout": interval,
                    "missed_pongs": MISSED,
                },
            )
            try:
                wait_monitor_online(feed, monitor.pid)
                time.sleep(3 * interval + 0.5)  # a few answered rounds
                if frozen and frozen_at is None:
                    frozen_at = time.time()
                    procs["frozen-0"].signal(signal.SIGSTOP)
                samples[interval] = _measure(feed, procs, sessions, names, interval, cfg.repeat)
                log(f"hang: interval {interval} s: {len(samples[interval])} samples")
            finally:
                monitor.stop()
            if frozen_at is not None and will_after is None:
                will = feed.wait_for(
                    is_status("frozen-0", "offline", sessions["frozen-0"]),
                    max(0.0, frozen_at + KEEPALIVE * 2 + 5 - time.time()),
                )
                if will is not None:
                    will_after = will.t - frozen_at
                procs["frozen-0"].kill()
    finally:
        for proc in procs.values():
            proc.kill()
        feed.close()
        broker.kill()
    return _report(samples, will_after)


def _measure(
    feed: MosquittoSubFeed,
    procs: dict[str, LineProcess],
    sessions: dict[str, str],
    names: list[str],
    interval: float,
    wanted: int,
) -> list[float]:
    """Freeze groups of services at random phases until `wanted` hangs are timed."""
    out: list[float] = []
    while len(out) < wanted:
        group = names[: min(len(names), wanted - len(out))]
        start = time.time() + 0.05
        plan = sorted((random.uniform(0, 2 * interval), name) for name in group)  # noqa: S311
        mark = feed.mark()
        frozen: dict[str, float] = {}
        for offset, name in plan:
            time.sleep(max(0.0, start + offset - time.time()))
            frozen[name] = time.time()
            procs[name].signal(signal.SIGSTOP)
        for name in group:
            hung = feed.wait_for(
                is_verdict(name, "hung", sessions[name]), bound(interval) * 3 + 5, mark
            )
            if hung is None:
                log(f"hang: {name} was not declared hung")
                continue
            out.append(hung.t - frozen[name])
        mark = feed.mark()
        for name in group:
            procs[name].signal(signal.SIGCONT)
        for name in group:
            if (
                feed.wait_for(is_verdict(name, "online", sessions[name]), 10 + 4 * interval, mark)
                is None
            ):
                log(f"hang: {name} did not come back online after SIGCONT")
        time.sleep(interval)
    return out


def _report(samples: dict[float, list[float]], will_after: float | None) -> Section:
    section = Section("2. Hang detection (`kill -STOP` → `hung`)")
    rows = []
    worst_ratio = 0.0
    for interval, values in samples.items():
        s = Summary.of(values)
        b = bound(interval)
        ratio = s.p99 / b if s.n else float("nan")
        worst_ratio = max(worst_ratio, ratio) if s.n else worst_ratio
        rows.append(
            [
                f"{interval:g} s",
                f"{b * 1000:,.0f}",
                str(s.n),
                fmt(s.median * 1000, 0),
                fmt(s.p99 * 1000, 0),
                fmt(s.low * 1000, 0),
                fmt(s.high * 1000, 0),
                f"{ratio:.2f}",
            ]
        )
    section.lines += table(
        [
            "ping interval (= pong timeout)",
            "floor: bound (ms)",
            "n",
            "median (ms)",
            "p99 (ms)",
            "min (ms)",
            "max (ms)",
            "p99 / bound",
        ],
        rows,
    )
    theory = KEEPALIVE * 1.5
    section.lines += [
        "",
        f"`missed_pongs = {MISSED}`; bound = interval x missed_pongs + pong_timeout. A freeze "
        "lands at a random phase of the round, so the verdict comes between "
        "`interval + pong_timeout` and the bound after it.",
        "",
        "Without pings: the broker's keepalive check for the same agent (keepalive "
        f"{KEEPALIVE} s, the default) would publish the Will after keepalive x 1.5 = "
        f"{theory:g} s plus the broker's check period (mosquitto 2.0 checks keepalives about "
        "every 6 s, in whole seconds: 16-22 s); measured for one frozen agent in this run: "
        + (
            f"**{fmt(will_after, 2)} s** after the SIGSTOP"
            if will_after is not None
            else "not measured (not in a --quick run)"
        )
        + ". An agent whose main loop deadlocks while paho's thread lives on "
        "never trips the keepalive at all: only pings find it.",
    ]
    per_interval = ", ".join(
        f"{i:g} s: {fmt(Summary.of(v).p99 / bound(i) * 100, 0)} %" for i, v in samples.items()
    )
    met = bool(samples) and all(
        Summary.of(v).n > 0 and Summary.of(v).p99 <= 1.1 * bound(i) for i, v in samples.items()
    )
    section.targets.append(
        Target(
            "hang: p99 within the bound + 10 %, intervals down to 0.25 s",
            "p99 ≤ 110 % of the bound",
            f"p99 = {per_interval} of the bound",
            met,
        )
    )
    return section
