"""A restart action for tests: optionally kill the old instance, then start ARGV detached.

    python -m tests.programs.launch [--require FILE] [--kill-pids FILE] -- ARGV...

Exits 1 (a failed action) when --require names a missing file. Exits 0 as soon as the new
process is started: the daemon lives on in its own session, like `setsid -f` would leave it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--require")
    parser.add_argument("--kill-pids")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.require and not Path(args.require).exists():
        print(f"launch: {args.require} is missing; refusing", flush=True)
        return 1
    if args.kill_pids and Path(args.kill_pids).exists():
        for pid in Path(args.kill_pids).read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    print(f"launch: started {argv[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
