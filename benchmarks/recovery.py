"""3. Recovery: `kill -9` -> restart action started -> the new session `online`.

The restart action is `benchmarks/relaunch.sh` (an `exec` action): it stamps the time it
started and starts the service detached. The floor is that same relaunch command run alone by
the benchmark, timed from launch to the new birth on the status topic (process start + agent
connect). Presence and floor samples alternate, so both see the same machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    ROOT,
    Children,
    Config,
    MonitorProcess,
    MosquittoSubFeed,
    Section,
    Summary,
    Target,
    bench_env,
    fmt,
    is_status,
    is_verdict,
    log,
    start_broker,
    stat_row,
    table,
    wait_monitor_online,
)

RELAUNCH = ROOT / "benchmarks" / "relaunch.sh"
RESET_AFTER = 0.5


def _argv(stamps: Path, name: str, port: int) -> list[str]:
    service = [PYTHON, "-m", "benchmarks._service", "--name", name, "--port", str(port)]
    return ["/bin/sh", str(RELAUNCH), str(stamps), *service]


def _stamps(path: Path) -> list[float]:
    with contextlib.suppress(OSError):
        return [float(x) for x in path.read_text().split()]
    return []


def run(cfg: Config) -> Section:
    """Alternate: a crash recovered by the monitor, and the relaunch command alone."""
    workdir = cfg.workdir / "recovery"
    workdir.mkdir(parents=True, exist_ok=True)
    name, alone = "rec-0", "rel-0"
    broker = start_broker(workdir / "broker", services=[name, alone])
    feed = MosquittoSubFeed(broker, ["presence/+/status", "presence/_monitor/services/+"])
    action_stamps = workdir / "action-stamps"
    floor_stamps = workdir / "floor-stamps"
    monitor = MonitorProcess(
        broker,
        workdir / "monitor",
        monitor={"settle": 0.0},
        restart={
            "reset_after": RESET_AFTER,
            "max_restarts": 10_000,
            "window": 3600.0,
            "verify_timeout": 30.0,
        },
        services=[
            {
                "name": name,
                "action": {
                    "type": "exec",
                    "argv": _argv(action_stamps, name, broker.port),
                    "timeout": 30.0,
                    "env": {"BENCH_PASSWORD": broker.users[name]},
                    "cwd": str(ROOT),
                },
            }
        ],
    )
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "will",
            "offline",
            "restarting",
            "action",
            "birth",
            "online",
            "floor_sh",
            "floor_birth",
        )
    }
    try:
        wait_monitor_online(feed, monitor.pid)
        # The first instance, started like the action would.
        subprocess.run(
            _argv(workdir / "first-stamp", name, broker.port),
            env=bench_env(broker.users[name]),
            check=True,
        )
        birth = feed.wait_for(is_status(name, "online"), 30)
        if birth is None or birth.data is None:
            raise TimeoutError(f"{name} did not start")
        current = birth.data
        Children.add_pid(int(current["pid"]))
        if feed.wait_for(is_verdict(name, "online", current["session"]), 30) is None:
            raise TimeoutError(f"{name} did not come online at the monitor")
        for i in range(cfg.repeat):
            time.sleep(RESET_AFTER + 0.3)  # no back-off: the streak was reset
            current = _recover(feed, rows, name, current, action_stamps, i)
            _relaunch_alone(feed, rows, alone, broker.port, broker.users[alone], floor_stamps)
        log(f"recovery: {len(rows['online'])}/{cfg.repeat} restarts measured")
    finally:
        monitor.stop()
        feed.close()
        broker.kill()
    return _report(rows)


def _recover(
    feed: MosquittoSubFeed,
    rows: dict[str, list[float]],
    name: str,
    current: dict[str, object],
    stamps: Path,
    index: int,
) -> dict[str, object]:
    session = str(current["session"])
    mark = feed.mark()
    killed = time.time()
    os.kill(int(str(current["pid"])), signal.SIGKILL)
    will = feed.wait_for(is_status(name, "offline", session), 10, mark)
    offline = feed.wait_for(is_verdict(name, "offline", session), 10, mark)
    restarting = feed.wait_for(is_verdict(name, "restarting"), 10, mark)
    birth = feed.wait_for(is_status(name, "online", other=session), 30, mark)
    if will is None or offline is None or restarting is None or birth is None or birth.data is None:
        raise TimeoutError(f"recovery {index}: incomplete (Will, verdict, restarting, birth)")
    new_session = str(birth.data["session"])
    Children.add_pid(int(birth.data["pid"]))
    online = feed.wait_for(is_verdict(name, "online", new_session), 30, mark)
    if online is None:
        raise TimeoutError(f"recovery {index}: the new session never became online")
    # The action's own stamp: the first one written after the kill (the floor's runs never
    # overlap a presence sample). It may precede the verdict's arrival at mosquitto_sub: the
    # monitor publishes the verdict, then starts the action, and the two race to be seen.
    action = min((t for t in _stamps(stamps) if t >= killed), default=float("nan"))
    rows["will"].append(will.t - killed)
    rows["offline"].append(offline.t - killed)
    rows["restarting"].append(restarting.t - offline.t)
    rows["action"].append(action - offline.t)
    rows["birth"].append(birth.t - action)
    rows["online"].append(online.t - killed)
    return birth.data


def _relaunch_alone(
    feed: MosquittoSubFeed,
    rows: dict[str, list[float]],
    name: str,
    port: int,
    password: str,
    stamps: Path,
) -> None:
    mark = feed.mark()
    launched = time.time()
    subprocess.run(_argv(stamps, name, port), env=bench_env(password), check=True)
    birth = feed.wait_for(is_status(name, "online"), 30, mark)
    if birth is None or birth.data is None:
        raise TimeoutError("the relaunch command alone did not bring the service online")
    pid = int(birth.data["pid"])
    Children.add_pid(pid)
    started = _stamps(stamps)
    rows["floor_sh"].append(started[-1] - launched)
    rows["floor_birth"].append(birth.t - launched)
    os.kill(pid, signal.SIGTERM)  # a graceful stop, so the next one starts clean


def _report(rows: dict[str, list[float]]) -> Section:
    section = Section("3. Recovery (`kill -9` → restart action → new session `online`)")
    headers = ["ms", "n", "median", "p99", "min", "max"]
    section.lines += table(
        headers,
        [
            stat_row("kill → Will (broker)", rows["will"]),
            stat_row("kill → `offline` verdict", rows["offline"]),
            stat_row("`offline` verdict → `restarting` verdict", rows["restarting"]),
            stat_row("`offline` verdict → action started (its first line ran)", rows["action"]),
            stat_row("action started → new birth on the status topic", rows["birth"]),
            stat_row("**presence: kill → new session `online` verdict**", rows["online"]),
            stat_row("floor: relaunch command alone → its first line ran", rows["floor_sh"]),
            stat_row("**floor: relaunch command alone → new birth**", rows["floor_birth"]),
        ],
    )
    total = Summary.of(rows["online"])
    floor = Summary.of(rows["floor_birth"])
    will = Summary.of(rows["will"])
    overhead = total.median - floor.median - will.median
    section.lines += [
        "",
        f"Overhead of presence over its floors (medians): kill → online {fmt(total.median * 1000)}"
        f" ms - Will {fmt(will.median * 1000)} ms - relaunch alone "
        f"{fmt(floor.median * 1000)} ms = **{fmt(overhead * 1000)} ms**.",
        "",
        "The action is an `exec` action running `benchmarks/relaunch.sh`, which appends "
        "`date +%s.%N` to a file and starts `python -m benchmarks._service` with `setsid -f`; "
        f"`[restart] reset_after = {RESET_AFTER:g}` and a pause of {RESET_AFTER + 0.3:g} s "
        "between kills, so every restart is the first of its streak (no back-off). The floor "
        "runs the same script by the benchmark itself, alternating with the presence samples.",
    ]
    action = Summary.of(rows["action"])
    section.targets.append(
        Target(
            "recovery: restart action started after the verdict, p99 (no back-off)",
            "≤ 50 ms",
            f"{fmt(action.p99 * 1000)} ms (median {fmt(action.median * 1000)} ms, n = {action.n})",
            action.n > 0 and action.p99 <= 0.050,
        )
    )
    return section
