"""A small service that embeds the agent, for tests that kill, freeze and deadlock real processes.

Prints `READY <session>` once online. SIGTERM stops it gracefully; SIGUSR1 deadlocks its main
loop while paho's network thread lives on (the classic hang that keeps the socket open).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time

from presence.agent import Agent, AsyncAgent
from presence.errors import DuplicateServiceError, PresenceError
from presence.settings import BrokerSettings


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user")
    parser.add_argument("--password", required=True)
    parser.add_argument("--prefix", default="presence")
    parser.add_argument("--beat-timeout", type=float, default=0.3)
    parser.add_argument("--mode", choices=["threaded", "asyncio"], default="threaded")
    parser.add_argument("--health", choices=["none", "ok", "fail", "slow"], default="none")
    parser.add_argument("--confirm-timeout", type=float, default=0.5)
    parser.add_argument("--pidfile", help="append our pid here (tests kill what it lists)")
    parser.add_argument("--crash-after", type=float, help="exit 1 this long after coming online")
    parser.add_argument("--group", help="group name (routing tests)")
    parser.add_argument("--load", type=float, help="report this load in every pong's detail")
    parser.add_argument("--keepalive", type=int, default=5)
    return parser.parse_args()


def _health(kind: str):
    if kind == "none":
        return None
    if kind == "ok":
        return lambda: (True, {"load": 0.5})
    if kind == "fail":
        return lambda: (False, {"error": "database unreachable"})

    def slow() -> bool:
        time.sleep(5)
        return True

    return slow


def run_threaded(args: argparse.Namespace, broker: BrokerSettings) -> int:
    stop = threading.Event()
    deadlock = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: deadlock.set())
    agent = Agent(
        args.name,
        broker,
        prefix=args.prefix,
        beat_timeout=args.beat_timeout,
        health=(lambda: (True, {"load": args.load}))
        if args.load is not None
        else _health(args.health),
        group=args.group,
        health_timeout=0.5,
        confirm_timeout=args.confirm_timeout,
        on_conflict=lambda _error: stop.set(),
    )
    try:
        agent.start(wait=10)
    except DuplicateServiceError as exc:
        print(f"DUPLICATE {exc}", flush=True)
        return 4
    except PresenceError as exc:
        print(f"ERROR {exc}", flush=True)
        return 3
    print(f"READY {agent.session}", flush=True)
    lock = threading.Lock()
    crash_at = time.monotonic() + args.crash_after if args.crash_after is not None else None
    while not stop.wait(0.05):
        if crash_at is not None and time.monotonic() >= crash_at:
            os._exit(1)  # a crash: no graceful offline, the broker fires the Will
        if deadlock.is_set():
            lock.acquire()
            lock.acquire()  # never returns: the main loop is deadlocked
        agent.beat()
    agent.stop()  # after a conflict this only disconnects cleanly
    if agent.conflict is not None:
        print(f"DUPLICATE {agent.conflict}", flush=True)
        return 4
    return 0


async def run_async(args: argparse.Namespace, broker: BrokerSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # SIGUSR1 blocks the event loop itself: no pong can be produced any more.
    loop.add_signal_handler(signal.SIGUSR1, lambda: time.sleep(3600))
    agent = AsyncAgent(args.name, broker, prefix=args.prefix, confirm_timeout=args.confirm_timeout)
    await agent.start()
    print(f"READY {agent.agent.session}", flush=True)
    await stop.wait()
    await agent.stop()
    return 0


def main() -> int:
    args = _args()
    if args.pidfile:
        with open(args.pidfile, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    broker = BrokerSettings(
        host="127.0.0.1",
        port=args.port,
        username=args.user or args.name,
        password=args.password,
        keepalive=args.keepalive,
        reconnect_max=1,
    )
    if args.mode == "asyncio":
        return asyncio.run(run_async(args, broker))
    return run_threaded(args, broker)


if __name__ == "__main__":
    sys.exit(main())
