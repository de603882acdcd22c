"""A tiny service for the benchmarks: a main loop that beats an embedded agent.

    BENCH_PASSWORD=... python -m benchmarks._service --name NAME --port P [--no-agent]

Prints `READY <session>` once online. With --no-agent it is the same process and loop without
presence, which is not even imported (the per-service overhead); --import-only imports
`presence.agent` and starts nothing (import cost vs running cost). The agent uses the
production defaults (keepalive 10 s, MQTT 5); the MQTT user is the service name. SIGTERM stops
it gracefully.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--beat-timeout", type=float, default=5.0)
    parser.add_argument("--tick", type=float, default=0.05, help="main loop period, seconds")
    parser.add_argument("--no-agent", action="store_true")
    parser.add_argument(
        "--import-only", action="store_true", help="import presence.agent but start no agent"
    )
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent: Any = None
    if args.import_only:
        import presence.agent  # noqa: F401, PLC0415
    elif not args.no_agent:
        # Imported here: without the agent the process does not load presence (or paho) at all.
        from presence.agent import Agent  # noqa: PLC0415
        from presence.settings import BrokerSettings  # noqa: PLC0415

        broker = BrokerSettings(
            host="127.0.0.1",
            port=args.port,
            username=args.name,
            password=os.environ["BENCH_PASSWORD"],
        )
        agent = Agent(args.name, broker, beat_timeout=args.beat_timeout).start(wait=30)
    print(f"READY {agent.session if agent else '-'}", flush=True)
    while not stop.wait(args.tick):
        if agent is not None:
            agent.beat()
    if agent is not None:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
