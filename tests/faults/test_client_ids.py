"""Client-id takeover: an authenticated user who reuses another client's id knocks it off the
broker (Mosquitto does not tie ids to users), so presence's ids are not guessable."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from presence.agent import Agent
from presence.broker import PrivateBroker
from presence.mqtt import Connection
from tests.helpers import FAST, Monitors, Watcher


def test_guessable_ids_are_not_the_real_ones_so_nobody_can_knock_us_off(
    broker: PrivateBroker, monitors: Monitors, watcher: Watcher, record: Callable[..., None]
) -> None:
    """beta connects with the ids an attacker would derive (name-host-pid, '<prefix>-monitor'):
    alpha and the monitor stay connected, nothing changes state."""
    monitor = monitors.start()
    with Agent("alpha", broker.settings("alpha")) as alpha:
        watcher.wait_verdict("alpha", "online")
        naive = f"presence-alpha-{socket.gethostname()[:24]}-{os.getpid()}"
        assert alpha.connection.client_id != naive
        assert alpha.connection.client_id.startswith(naive + "-")
        assert monitor.settings.monitor_client_id != "presence-monitor"
        mark = watcher.mark()
        intruders = []
        for guess in (naive, "presence-monitor"):
            intruder = Connection(broker.settings("beta"), client_id=guess)
            intruder.connect()
            intruders.append(intruder)
        time.sleep(5 * FAST["ping_interval"])  # rounds in which a knocked-off client would show
        for intruder in intruders:
            intruder.close()
        assert watcher.events(start=mark) == []
        assert watcher.statuses("alpha", mark) == []
        assert monitor.exit_error is None
        record("client-id takeover attempt with guessable ids", disturbed=0)
