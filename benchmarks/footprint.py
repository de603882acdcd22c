"""5. Footprint: an idle monitor with 100 services, and one agent embedded in an idle service.

In one window, side by side: the monitor (default settings: a ping round every second) tracking
100 simulated services, and the same tiny service process twice, with and without an agent.
Then the monitor is grown to 1,000 services: the RSS difference per added service is its memory
per tracked service.
"""

from __future__ import annotations

import time

from benchmarks._common import (
    PYTHON,
    Config,
    CpuMeter,
    LineProcess,
    MonitorProcess,
    Observer,
    Section,
    Swarm,
    Target,
    bench_env,
    log,
    rss_kb,
    spawn_service,
    start_broker,
    swarm_names,
    table,
)

AGENT = "fp-agent"


def run(cfg: Config) -> Section:
    """Measure the idle monitor and the agent's overhead, then the monitor's memory slope."""
    small, large = cfg.footprint_services
    workdir = cfg.workdir / "footprint"
    broker = start_broker(workdir / "broker", services=[AGENT])
    observer = Observer(broker, prefixes=("presence",))
    monitor = MonitorProcess(broker, workdir / "monitor")
    swarms: list[Swarm] = []
    procs: list[LineProcess] = []
    try:
        observer.wait_monitor(monitor.pid)
        swarms.append(Swarm(broker, 0, small).ready())
        with_agent = spawn_service(broker, AGENT)
        plain = LineProcess(
            [
                PYTHON,
                "-m",
                "benchmarks._service",
                "--name",
                "fp-plain",
                "--port",
                "1",
                "--no-agent",
            ],
            bench_env(),
        )
        imported = LineProcess(
            [
                PYTHON,
                "-m",
                "benchmarks._service",
                "--name",
                "fp-imp",
                "--port",
                "1",
                "--import-only",
            ],
            bench_env(),
        )
        procs += [with_agent, plain, imported]
        for proc in procs:
            proc.expect("READY", 60)
        if not observer.wait_settled([*swarm_names(0, small), AGENT], 60):
            log("footprint: the monitor did not settle")
        time.sleep(2.0)
        meters = {
            "monitor": CpuMeter(monitor.pid).start(),
            "agent": CpuMeter(with_agent.pid).start(),
            "plain": CpuMeter(plain.pid).start(),
            "imported": CpuMeter(imported.pid).start(),
        }
        peak = dict.fromkeys(meters, 0)
        end = time.monotonic() + cfg.footprint_window
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            for key, meter in meters.items():
                peak[key] = max(peak[key], rss_kb(meter.pid))
        for meter in meters.values():
            meter.stop()
        log(f"footprint: idle monitor {meters['monitor'].percent:.2f} % CPU, {peak['monitor']} KiB")
        swarms.append(Swarm(broker, small, large - small).ready())
        if not observer.wait_settled([*swarm_names(0, large), AGENT], 60 + large / 100):
            log(f"footprint: the monitor did not settle at {large} services")
        rss_large = 0
        for _ in range(6):
            time.sleep(0.5)
            rss_large = max(rss_large, rss_kb(monitor.pid))
    finally:
        monitor.stop()
        for proc in procs:
            proc.stop()
        for swarm in swarms:
            swarm.stop()
        observer.close()
        broker.kill()
    return _report(cfg, meters, peak, rss_large)


def _report(
    cfg: Config, meters: dict[str, CpuMeter], peak: dict[str, int], rss_large: int
) -> Section:
    small, large = cfg.footprint_services
    section = Section("5. Footprint")
    mon, agent, plain = meters["monitor"], meters["agent"], meters["plain"]
    imported = meters["imported"]
    per_service = (rss_large - peak["monitor"]) * 1024 / (large - small)
    cpu_delta = agent.percent - plain.percent
    rss_delta = (peak["agent"] - peak["plain"]) / 1024
    section.lines += table(
        ["process", "CPU (% of one core)", "RSS (MiB)"],
        [
            [
                f"idle monitor, {small} services + 1 agent",
                f"{mon.percent:.2f} %",
                f"{peak['monitor'] / 1024:.1f}",
            ],
            [f"the same monitor grown to {large} services", "-", f"{rss_large / 1024:.1f}"],
            [
                "tiny service with the agent",
                f"{agent.percent:.2f} %",
                f"{peak['agent'] / 1024:.1f}",
            ],
            [
                "the same service without it",
                f"{plain.percent:.2f} %",
                f"{peak['plain'] / 1024:.1f}",
            ],
            [
                "the same service, `import presence.agent` only",
                f"{imported.percent:.2f} %",
                f"{peak['imported'] / 1024:.1f}",
            ],
            ["**the agent's overhead**", f"**{cpu_delta:+.2f} %**", f"**{rss_delta:+.1f}**"],
            [
                "of which: importing presence.agent",
                "-",
                f"{(peak['imported'] - peak['plain']) / 1024:+.1f}",
            ],
        ],
    )
    section.lines += [
        "",
        f"A {cfg.footprint_window:g} s window with default monitor settings (ping every 1 s); "
        "CPU from `/proc/<pid>/stat` (utime + stime, all threads), RSS peak from "
        f"`/proc/<pid>/status`. Monitor memory per tracked service: (RSS at {large} - RSS at "
        f"{small}) / {large - small} = **{per_service / 1024:.2f} KiB**. The service is a "
        "main loop waking every 50 ms (`benchmarks/_service.py`); without the agent it does "
        "not even import presence.",
    ]
    section.targets += [
        Target(
            f"footprint: idle monitor with {small} services",
            "< 1 % of a core",
            f"{mon.percent:.2f} %",
            mon.percent < 1.0,
        ),
        Target(
            "footprint: monitor memory per tracked service",
            "< 2 KB",
            f"{per_service / 1024:.2f} KiB ({small} → {large} services)",
            per_service < 2048,
        ),
        Target(
            "footprint: the agent's CPU in an idle service",
            "< 1 % of a core",
            f"{cpu_delta:+.2f} %",
            cpu_delta < 1.0,
        ),
        Target(
            "footprint: the agent's RSS in a service",
            "< 5 MB",
            f"{rss_delta:+.1f} MiB",
            rss_delta * 1024 * 1024 < 5_000_000,
            f"importing presence.agent alone: {(peak['imported'] - peak['plain']) / 1024:+.1f} MiB",
        ),
    ]
    return section
