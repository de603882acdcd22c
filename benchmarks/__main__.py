"""`python -m benchmarks`: measure presence against its floors, write a Markdown report.

    python -m benchmarks                  # the full run (about 9.5 minutes on 2 cores)
    python -m benchmarks --quick          # a smoke run of about a minute and a half
    python -m benchmarks --only crash,hang --repeat 30 --out /tmp/bench.md

Every measurement starts its own private Mosquitto on a free loopback port (never 1883).
Progress goes to stderr; the report goes to `--out` (default benchmarks/results.md) and stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import capacity, crash, footprint, hang, recovery
from benchmarks._common import Children, Config, Section, Target, log, machine, table

MEASUREMENTS: dict[str, Callable[[Config], Section]] = {
    "crash": crash.run,
    "hang": hang.run,
    "recovery": recovery.run,
    "capacity": capacity.run,
    "footprint": footprint.run,
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small sizes, short windows, 5 repetitions"
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument(
        "--repeat", type=int, help="kills/freezes per measurement (default 20; 5 with --quick)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results.md",
        help="where to write the Markdown report (default: benchmarks/results.md)",
    )
    parser.add_argument(
        "--all-sizes",
        action="store_true",
        help="capacity: measure every size even after the monitor failed a smaller one "
        "(by default larger sizes are skipped then; a failing size costs minutes)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m benchmarks"]
    if args.quick:
        parts.append("--quick")
    if args.only != ",".join(MEASUREMENTS):
        parts.append(f"--only {args.only}")
    if args.repeat is not None:
        parts.append(f"--repeat {args.repeat}")
    if args.all_sizes:
        parts.append("--all-sizes")
    return " ".join(parts)


def _status(target: Target) -> str:
    if target.met is None:
        return "not measured"
    return "met" if target.met else "**not met**"


def _chosen(cfg: Config) -> list[str]:
    sizes = " / ".join(f"{n:,}" for n in cfg.capacity_sizes)
    return [
        f"- crash: {cfg.repeat} kills, one agent process each, at random phases of the 1 s "
        "ping rounds;",
        f"- hang: {cfg.repeat} freezes per ping interval (1, 0.5, 0.25 s), up to 10 at a time "
        "at random phases"
        + ("" if cfg.quick else "; plus one agent left frozen until the broker's keepalive fires")
        + ";",
        f"- recovery: {cfg.repeat} kills recovered by an exec action, alternating with "
        f"{cfg.repeat} runs of the same relaunch command alone;",
        f"- capacity: {sizes} services at 1 s and {cfg.capacity_slow:,} at 2 s, "
        f"{cfg.capacity_window:g} s steady windows; raw paho floor {cfg.floor_window:g} s per "
        f"size; {cfg.c_messages:,} messages for the C clients; {cfg.will_clients:,} real "
        "connections for the Will path"
        + ("" if cfg.all_sizes else "; sizes above one the monitor did not hold are skipped")
        + ";",
        f"- footprint: {cfg.footprint_window:g} s idle window, {cfg.footprint_services[0]} → "
        f"{cfg.footprint_services[1]} services for the memory slope.",
    ]


def render(
    args: argparse.Namespace, cfg: Config, sections: list[Section], started: float, took: float
) -> str:
    """The Markdown report."""
    when = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "smoke run (--quick): small sizes, not the reference" if cfg.quick else "full run"
    lines = [
        "# presence benchmarks",
        "",
        f"`{_command(args)}` — {mode}, {when}, {took / 60:.1f} min. Every figure was measured "
        "in this one run, presence side by side with its floor on the same private Mosquitto.",
        "p99 is interpolated between closest ranks: with 20 samples it lies between the two "
        "largest. Reproduce: `python -m benchmarks` (see benchmarks/__main__.py for options).",
        "",
        "## Targets",
        "",
    ]
    targets = [t for s in sections for t in s.targets]
    lines += table(
        ["target", "goal", "measured", "status", "note"],
        [[t.what, t.goal, t.measured, _status(t), t.note] for t in targets],
    )
    lines += ["", "## Machine", ""]
    lines += table(["", ""], [[k, v] for k, v in machine()])
    for section in sections:
        lines += ["", f"## {section.title}", "", *section.lines]
        lines += ["", f"*({section.seconds:.0f} s)*"]
    lines += ["", "## What this run chose", "", *_chosen(cfg), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    make = Config.smoke if args.quick else Config.full
    cfg = make(workdir, args.repeat, all_sizes=args.all_sizes)
    started = time.time()
    sections: list[Section] = []
    wanted = args.only.split(",")
    try:
        for name, measure in MEASUREMENTS.items():
            if name not in wanted:
                continue
            log(f"{name}: starting")
            t0 = time.monotonic()
            try:
                section = measure(cfg)
            except Exception as exc:  # noqa: BLE001 (one failed measurement must not lose the rest)
                log(f"{name}: FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                section = Section(name, [f"**This measurement failed:** `{exc!r}`"])
            finally:
                Children.kill_all()
            section.seconds = time.monotonic() - t0
            sections.append(section)
            log(f"{name}: done in {section.seconds:.0f} s")
    finally:
        Children.kill_all()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, cfg, sections, started, time.time() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    log(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
