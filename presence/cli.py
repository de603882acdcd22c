"""Command line: `presence monitor | status | ping`.

This is the edge: it reads the config file and the environment once, sets up logging and hands
typed settings down. Exit codes: 0 fine, 1 the thing asked about is down, 2 bad usage or
configuration, 3 broker unreachable or refused, 4 duplicate (name or monitor already running).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

import click
from loguru import logger
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from presence.commands import new_command
from presence.errors import BrokerError, ConfigError, PayloadError, PresenceError
from presence.logs import setup_logging
from presence.monitor import Monitor, MonitorExit
from presence.mqtt import Connection, Inbox, Message, cli_client_id, fetch_retained
from presence.protocol import (
    Ping,
    Status,
    Topics,
    Verdict,
    encode,
    parse_ack,
    parse_pong,
    parse_status,
    parse_verdict,
    validate_name,
)
from presence.settings import Settings, load_settings, parse_size

__all__ = ["main"]

EXIT_DOWN: Final = 1
EXIT_CONFIG: Final = 2
EXIT_BROKER: Final = 3
EXIT_DUPLICATE: Final = 4
_F = TypeVar("_F", bound=Callable[..., Any])


def _Fail(message: str, code: int) -> click.ClickException:  # noqa: N802 (reads like a class)
    """A ClickException (message, no traceback) that exits with `code`."""
    error = click.ClickException(message)
    error.exit_code = code  # type: ignore[misc]  # click reads it per instance
    return error


def _common(func: _F) -> _F:
    func = click.option(
        "-c",
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="PRESENCE_CONFIG",
        help="TOML config file (default: $PRESENCE_CONFIG; PRESENCE_<SECTION>__<KEY> overrides).",
    )(func)
    func = click.option("--log-json", is_flag=True, help="Log one JSON object per line.")(func)
    return click.option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        help="Log level (default from config, INFO).",
    )(func)


def _load(config: Path | None, log_json: bool, log_level: str | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _Fail(str(exc), EXIT_CONFIG) from exc
    log = settings.log
    updates: dict[str, Any] = {}
    if log_json:
        updates["json_lines"] = True
    if log_level:
        updates["level"] = log_level.upper()
    setup_logging(log.model_copy(update=updates) if updates else log)
    return settings


def _connect(settings: Settings, role: str, inbox: Inbox) -> Connection:
    conn = Connection(settings.broker, client_id=cli_client_id(role), handler=inbox, label=role)
    try:
        conn.connect()
    except BrokerError as exc:
        raise _Fail(str(exc), EXIT_BROKER) from exc
    return conn


def _valid_name(value: str) -> None:
    """A service or group name from the command line, checked before anything connects."""
    try:
        validate_name(value)
    except PresenceError as exc:
        raise _Fail(str(exc), EXIT_CONFIG) from exc


def _listen(settings: Settings, role: str, topic: str, qos: int) -> tuple[Inbox, Connection]:
    """A connection for a one-shot command, subscribed to where its answers come."""
    inbox = Inbox()
    conn = _connect(settings, role, inbox)
    if not conn.subscribe(topic, qos):
        conn.close()
        raise _Fail("the broker did not answer the subscription in time", EXIT_BROKER)
    return inbox, conn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="presence")
def cli() -> None:
    """presence: know which services are alive, crashed (Last Will) or hung (no pong)."""


@cli.command()
@_common
@click.option(
    "--sd-notify",
    is_flag=True,
    help="Speak systemd's notify protocol: READY=1, and WATCHDOG=1 after each round that came "
    "back (use with Type=notify and WatchdogSec).",
)
@click.option("--inject-fault", hidden=True, type=click.Choice(["network-thread"]))
def monitor(
    config: Path | None,
    log_json: bool,
    log_level: str | None,
    sd_notify: bool,
    inject_fault: str | None,
) -> None:
    """Run the monitor until SIGINT/SIGTERM."""
    settings = _load(config, log_json, log_level)
    # Restart actions and exec alert sinks inherit our environment minus our own settings, so
    # the monitor's broker password never reaches them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    notify = os.environ.get("NOTIFY_SOCKET") if sd_notify else None
    if sd_notify and not notify:
        logger.warning("--sd-notify given but NOTIFY_SOCKET is not set; not notifying")
    mon = Monitor(settings, env=env, notify_socket=notify, inject_fault=inject_fault)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal {} received; stopping", signal.Signals(signum).name)
        mon.stop(timeout=0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        mon.run()
    except MonitorExit as exc:
        raise _Fail(str(exc), exc.code) from exc


def _since(ts: float | None) -> str:
    if not ts:
        return "-"
    ago = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= size:
            return f"{ago / size:.0f}{unit} ago"
    return f"{ago:.0f}s ago"


def _read_status(settings: Settings) -> tuple[Status | None, list[Verdict]]:
    topics = Topics(settings.topic_prefix)
    try:
        retained = fetch_retained(
            settings.broker,
            [topics.monitor_status, topics.verdicts],
            client_id=cli_client_id("status"),
        )
    except BrokerError as exc:
        raise _Fail(str(exc), EXIT_BROKER) from exc
    monitor_status: Status | None = None
    verdicts: dict[str, Verdict] = {}
    for message in retained:
        if not message.payload:
            continue
        try:
            if message.topic == topics.monitor_status:
                monitor_status = parse_status(message.payload)
            else:
                verdict = parse_verdict(message.payload)
                parts = topics.split(message.topic)
                # The topic names the service; a payload claiming another name is not it.
                if parts is not None and parts[0] == verdict.service:
                    verdicts[verdict.service] = verdict
        except PayloadError as exc:
            logger.warning("ignoring malformed payload on {}: {}", message.topic, exc)
    return monitor_status, sorted(verdicts.values(), key=lambda v: v.service)


@cli.command()
@_common
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(config: Path | None, log_json: bool, log_level: str | None, as_json: bool) -> None:
    """Print every service's verdict; exit 1 when the monitor is not online."""
    settings = _load(config, log_json, log_level)
    monitor_status, verdicts = _read_status(settings)
    monitor_online = monitor_status is not None and monitor_status.state == "online"
    if as_json:
        doc = {
            "monitor": monitor_status.to_json() if monitor_status else None,
            "services": [v.to_json() for v in verdicts],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        from presence.watch import STATE_STYLE  # noqa: PLC0415 (keeps other commands' start-up lean)

        console = Console()
        if monitor_status is None:
            console.print("[bold red]monitor: never seen[/] (no retained monitor status)")
        else:
            style = "green" if monitor_online else "bold red"
            # Everything from the wire is escaped: a "[/]" in a payload must not be markup.
            host = escape(str(monitor_status.host))
            where = f" on {host} pid {monitor_status.pid}" if monitor_online else ""
            reason = f" ({escape(monitor_status.reason)})" if monitor_status.reason else ""
            console.print(
                f"monitor: [{style}]{monitor_status.state}[/]{reason}{where}, "
                f"since {_since(monitor_status.since)}"
            )
        table = Table(box=None, header_style="bold")
        for column in ("SERVICE", "STATE", "SINCE", "REASON", "MISSED", "RTT", "RESTARTS"):
            table.add_column(column)
        for v in verdicts:
            rtt = f"{v.rtt_ms:.1f} ms" if v.rtt_ms is not None else "-"
            style = STATE_STYLE.get(v.state, "")
            table.add_row(
                v.service,
                f"[{style}]{v.state}[/]" if style else escape(v.state),
                _since(v.since),
                escape(v.reason or "-"),
                str(v.missed),
                rtt,
                str(v.restarts),
            )
        if verdicts:
            console.print(table)
        else:
            console.print("no verdicts published yet")
    if not monitor_online:
        sys.exit(EXIT_DOWN)


@cli.command()
@_common
@click.argument("name")
@click.option("--count", "-n", default=3, show_default=True, type=click.IntRange(1))
@click.option("--timeout", "-W", default=2.0, show_default=True, type=click.FloatRange(0.01))
@click.option("--interval", "-i", default=1.0, show_default=True, type=click.FloatRange(0))
def ping(
    config: Path | None,
    log_json: bool,
    log_level: str | None,
    name: str,
    count: int,
    timeout: float,
    interval: float,
) -> None:
    """Send targeted pings to NAME and print round-trip times; exit 1 if none came back."""
    _valid_name(name)
    settings = _load(config, log_json, log_level)
    topics = Topics(settings.topic_prefix)
    inbox, conn = _listen(settings, "ping", topics.pong(name), 0)
    received = 0
    # Far below the monitor's clock-based sequence numbers: our pings never count as its rounds.
    base = secrets.randbelow(2**31) + 1
    try:
        for i in range(count):
            seq = base + i
            start = time.monotonic()
            mark = len(inbox.snapshot())
            conn.publish(topics.ping(name), encode(Ping(seq, round(time.time(), 3))))
            reply = inbox.wait_for(functools.partial(_is_pong, seq=seq), timeout, start=mark)
            if reply is None:
                click.echo(f"no pong from {name}: seq={seq} (timeout {timeout} s)")
            else:
                received += 1
                pong = parse_pong(reply.payload)
                rtt = (reply.received - start) * 1000
                detail = f" detail={json.dumps(pong.detail)}" if pong.detail else ""
                click.echo(
                    f"pong from {name}: seq={seq} ok={str(pong.ok).lower()} "
                    f"time={rtt:.2f} ms session={pong.session}{detail}"
                )
            if i + 1 < count:
                time.sleep(max(0.0, interval - (time.monotonic() - start)))
    finally:
        conn.close()
    click.echo(f"--- {name}: {count} pings, {received} pongs")
    if received == 0:
        sys.exit(EXIT_DOWN)


def _command(
    config: Path | None, log_json: bool, log_level: str | None, cmd: str, name: str, timeout: float
) -> None:
    """Send an operator command to the monitor and wait for its answer."""
    _valid_name(name)
    settings = _load(config, log_json, log_level)
    topics = Topics(settings.topic_prefix)
    inbox, conn = _listen(settings, cmd, topics.monitor_ack, 1)
    try:
        command = new_command(cmd, time.time(), lifetime=timeout, service=name)
        delivery = conn.publish(topics.monitor_cmd, encode(command), qos=1)
        if not delivery.wait(timeout) or delivery.refusal:
            reason = delivery.refusal or "no acknowledgement from the broker"
            raise _Fail(
                f"the broker did not take the command ({reason}); this needs the admin or "
                "monitor user",
                EXIT_BROKER,
            )
        reply = inbox.wait_for(functools.partial(_is_ack, command_id=command.id), timeout)
    finally:
        conn.close()
    if reply is None:
        raise _Fail(f"no answer from the monitor within {timeout} s (is it running?)", EXIT_DOWN)
    ack = parse_ack(reply.payload)
    if not ack.ok:
        raise _Fail(f"the monitor refused: {ack.detail}", EXIT_DOWN)
    click.echo(ack.detail)


def _is_ack(message: Message, command_id: str) -> bool:
    try:
        return parse_ack(message.payload).id == command_id
    except PayloadError:
        return False


def _operator(cmd: str, help_text: str) -> None:
    @_common
    @click.argument("name")
    @click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1))
    def command(
        config: Path | None, log_json: bool, log_level: str | None, name: str, timeout: float
    ) -> None:
        _command(config, log_json, log_level, cmd, name, timeout)

    command.__doc__ = help_text
    cli.command(name=cmd)(command)


_operator("reset", "Clear NAME's failed state and restart it now (needs the admin user).")
_operator("restart", "Restart NAME now through its configured action (needs the admin user).")
_operator("pause", "Maintenance: no restarts and no alerts for NAME until resume.")
_operator("resume", "End maintenance for NAME; restart it if it is down.")
_operator(
    "forget",
    "Drop NAME (after removing it from the config): clears its verdict, retained status and "
    "Home Assistant entities.",
)


@cli.command()
@_common
@click.argument("group")
@click.option("--all", "show_all", is_flag=True, help="List every live member, best first.")
def pick(
    config: Path | None, log_json: bool, log_level: str | None, group: str, show_all: bool
) -> None:
    """Print the least-loaded live member of GROUP; exit 1 if none is live."""
    from presence.groups import group_topic, parse_group  # noqa: PLC0415 (only `pick` needs it)

    _valid_name(group)
    settings = _load(config, log_json, log_level)
    topic = group_topic(Topics(settings.topic_prefix), group)
    try:
        retained = fetch_retained(settings.broker, [topic], client_id=cli_client_id("pick"))
    except BrokerError as exc:
        raise _Fail(str(exc), EXIT_BROKER) from exc
    members: list[str] = []
    for message in retained:
        if message.payload:
            try:
                members = parse_group(message.payload)
            except PayloadError as exc:
                raise _Fail(f"malformed group document on {topic}: {exc}", EXIT_DOWN) from exc
    if not members:
        raise _Fail(f"no live member in group {group!r}", EXIT_DOWN)
    click.echo("\n".join(members) if show_all else members[0])


@cli.command()
@_common
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts).")
def watch(config: Path | None, log_json: bool, log_level: str | None, once: bool) -> None:
    """Live table of every service, worst first; Ctrl-C quits (the dashboard user is enough)."""
    from presence.watch import run_watch  # noqa: PLC0415 (keeps other commands' start-up lean)

    settings = _load(config, log_json, log_level or "WARNING")
    sys.exit(run_watch(settings, once=once))


@cli.command(context_settings={"ignore_unknown_options": True})
@_common
@click.option("--name", "-n", required=True, help="Service name (also its MQTT user by default).")
@click.option("--probe-http", metavar="URL", help="Healthy while GET URL answers 2xx.")
@click.option("--probe-tcp", metavar="HOST:PORT", help="Healthy while HOST:PORT accepts.")
@click.option("--probe-exec", metavar="'CMD ARGS'", help="Healthy while CMD exits 0 (no shell).")
@click.option("--probe-interval", default=1.0, show_default=True, type=click.FloatRange(0.05))
@click.option("--probe-timeout", default=1.0, show_default=True, type=click.FloatRange(0.05))
@click.option(
    "--probe-grace",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="After each start, failing probes mean 'starting' for this long.",
)
@click.option(
    "--kill-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="SIGKILL the program this long after SIGTERM.",
)
@click.option(
    "--restart-local",
    is_flag=True,
    help="Restart the program here with the [restart] policy (for when no monitor is reachable).",
)
@click.option("--group", help="Group name (for 'healthy members' routing).")
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the program's output to this rotating file.",
)
@click.option("--log-rotation", default="10 MB", show_default=True)
@click.option("--log-retention", default=5, show_default=True, type=click.IntRange(1))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    config: Path | None,
    log_json: bool,
    log_level: str | None,
    name: str,
    probe_http: str | None,
    probe_tcp: str | None,
    probe_exec: str | None,
    probe_interval: float,
    probe_timeout: float,
    probe_grace: float,
    kill_timeout: float,
    restart_local: bool,
    group: str | None,
    log_file: Path | None,
    log_rotation: str,
    log_retention: int,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND under presence: birth/Will, pongs, probes, restart commands.

    presence run --name web --probe-http http://127.0.0.1:3000/health -- node server.js
    """
    from presence.probes import parse_probe  # noqa: PLC0415 (only `run` needs these)
    from presence.runner import Runner, RunOptions  # noqa: PLC0415

    try:
        validate_name(name)
        if group is not None:
            validate_name(group)
        probe = parse_probe(probe_http, probe_tcp, probe_exec)
        parse_size(log_rotation)
    except (PresenceError, ValueError) as exc:
        raise _Fail(str(exc), EXIT_CONFIG) from exc
    settings = _load(config, log_json, log_level)
    options = RunOptions(
        name=name,
        argv=command,
        probe=probe,
        probe_interval=probe_interval,
        probe_timeout=probe_timeout,
        probe_grace=probe_grace,
        kill_timeout=kill_timeout,
        restart_local=restart_local,
        group=group,
        log_file=log_file,
        log_rotation=log_rotation,
        log_retention=log_retention,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    sys.exit(Runner(settings, options, env=env).run())


@cli.command()
@click.option(
    "--duration", type=click.FloatRange(1), help="Stop after this many seconds (default: Ctrl-C)."
)
def demo(duration: float | None) -> None:
    """Private broker + monitor + three misbehaving services, live; Ctrl-C cleans up."""
    from presence.broker import MosquittoMissing  # noqa: PLC0415 (only the demo needs it)
    from presence.demo import run_demo  # noqa: PLC0415 (keeps other commands' start-up lean)

    try:
        sys.exit(run_demo(duration))
    except MosquittoMissing as exc:
        raise _Fail(str(exc), EXIT_BROKER) from exc


def _is_pong(message: Message, seq: int) -> bool:
    try:
        return parse_pong(message.payload).seq == seq
    except PayloadError:
        return False


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="presence")
