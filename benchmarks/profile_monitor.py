"""Where the monitor's CPU goes: cProfile of every monitor thread under a swarm's ping load.

    python -m benchmarks.profile_monitor --services 5000 --seconds 20 [--wills 2000]

Starts a private Mosquitto, a swarm answering for `--services` names, and a Monitor in this
process with every thread profiled (paho's network thread and the monitor's loop thread
separately); prints the top functions by own time and by cumulative time per thread. With
`--wills N`, also profiles N real connections (benchmarks/_manyclients.py) being killed at
once: the Will burst. Not part of `python -m benchmarks` (profiling slows everything down).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PYTHON,
    Children,
    LineProcess,
    Observer,
    Swarm,
    bench_env,
    log,
    raise_fd_limit,
    start_broker,
    swarm_names,
)

_profiles: list[tuple[str, cProfile.Profile]] = []
_original_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile()
    _profiles.append((self.name, profile))
    profile.enable()
    try:
        _original_run(self)
    finally:
        profile.disable()


def _reset() -> None:
    """Forget what was collected so far. (A profiler can only be enabled or disabled from its
    own thread; clearing it from another is safe under the GIL, and so is reading it.)"""
    for _, profile in _profiles:
        profile.clear()


def _print(title: str, sort: str, top: int) -> None:
    for name, profile in _profiles:
        buf = io.StringIO()
        try:
            stats = pstats.Stats(profile, stream=buf)
        except TypeError:
            continue  # a thread that never ran any Python under the profiler
        if getattr(stats, "total_tt", 1.0) < 0.05:
            continue
        stats.sort_stats(sort).print_stats(top)
        print(f"\n===== {title}: thread {name} =====")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--wills", type=int, default=0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    raise_fd_limit()
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]

    from presence.logs import setup_logging  # noqa: PLC0415 (after the patch)
    from presence.monitor import Monitor  # noqa: PLC0415
    from presence.settings import LogSettings, MonitorSettings, Settings  # noqa: PLC0415

    setup_logging(LogSettings(level="WARNING"))
    monitor_settings: dict[str, Any] = {"ping_interval": args.interval}
    if "self_check_rounds" in MonitorSettings.model_fields:
        # Profiling slows the monitor down: rounds go void while it catches up, and the
        # self-check would end it.
        monitor_settings["self_check_rounds"] = 0
    workdir = Path(tempfile.mkdtemp(prefix="presence-profile-"))
    broker = start_broker(workdir / "broker")
    observer = Observer(broker, prefixes=("presence",))
    settings = Settings(
        broker=broker.settings("monitor", keepalive=10),
        monitor=monitor_settings,
    )
    monitor = Monitor(settings).start()
    try:
        swarm = Swarm(broker, 0, args.services).ready()
        log(f"profile: waiting for {args.services} services to settle")
        observer.wait_settled(swarm_names(0, args.services), 120)
        log("profile: resetting the profiles; measuring")
        _reset()
        time.sleep(args.seconds)
        _print(f"{args.services} services, {args.seconds:g} s steady", "tottime", args.top)
        _print(f"{args.services} services, {args.seconds:g} s steady", "cumulative", args.top)
        swarm.stop()
        if args.wills:
            _wills(broker, args.wills, args.top)
    finally:
        monitor.stop()
        observer.close()
        Children.kill_all()
        broker.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _wills(broker: Any, count: int, top: int) -> None:
    argv = [PYTHON, "-m", "benchmarks._manyclients", "--port", str(broker.port)]
    fleet = LineProcess([*argv, "--count", str(count)], bench_env(broker.users["monitor"]))
    fleet.expect("READY", 120)
    time.sleep(count / 1000 + 3)  # let the monitor take in the births
    _reset()
    fleet.signal(signal.SIGKILL)
    time.sleep(count / 1000 + 3)
    _print(f"{count} Wills at once", "tottime", top)


if __name__ == "__main__":
    sys.exit(main())
