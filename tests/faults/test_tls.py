"""TLS against a real Mosquitto TLS listener: mutual TLS end to end, a wrong CA, hostname checks,
missing client certificates. Every certificate is generated here (tests/faults/_certs.py)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from loguru import logger

from presence.agent import Agent
from presence.broker import PrivateBroker, TLSFiles
from presence.errors import BrokerUnreachable
from presence.monitor import Monitor
from presence.mqtt import Connection, Inbox, cli_client_id
from presence.settings import Settings, TLSSettings
from tests.faults._certs import CertAuthority, Issued
from tests.helpers import FAST, ROOT, Watcher

#: How long a deliberately failing connection may wait for a CONNACK.
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Pki:
    """The certificates of these tests: one CA that signs the broker and the client, an unrelated
    CA, and a server certificate that is valid for another host only."""

    ca: CertAuthority
    other_ca: CertAuthority
    server: Issued  # SAN: DNS localhost, IP 127.0.0.1
    otherhost: Issued  # SAN: DNS otherhost only
    client: Issued
    stranger: Issued  # a client certificate signed by the unrelated CA

    def mutual(self, **overrides: object) -> TLSSettings:
        """`[broker.tls]` with the right CA and the client certificate and key."""
        values: dict[str, object] = {
            "ca": self.ca.path,
            "cert": self.client.cert,
            "key": self.client.key,
        }
        values.update(overrides)
        return TLSSettings.model_validate(values)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Generate the certificates once per module (P-256 keys: milliseconds)."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertAuthority(directory, "presence-test-ca")
    other_ca = CertAuthority(directory, "unrelated-ca")
    return Pki(
        ca=ca,
        other_ca=other_ca,
        server=ca.issue("broker", dns=["localhost"], ips=["127.0.0.1"]),
        otherhost=ca.issue("otherhost", dns=["otherhost"]),
        client=ca.issue("client", client=True),
        stranger=other_ca.issue("stranger", client=True),
    )


def _start(directory: Path, files: TLSFiles) -> PrivateBroker:
    return PrivateBroker(directory, services=("alpha",), tls=files).start()


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[PrivateBroker]:
    """A mosquitto whose only listener is TLS 1.2+, requiring a client certificate by our CA."""
    broker = _start(tmp_path / "broker", TLSFiles(pki.ca.path, pki.server.cert, pki.server.key))
    try:
        yield broker
    finally:
        broker.kill()


class TLSWatcher(Watcher):
    """tests.helpers.Watcher (dashboard user, everything under presence/#), over TLS."""

    def __init__(self, broker: PrivateBroker, tls: TLSSettings) -> None:
        # Watcher.__init__ would connect in plain text: set up the same two fields over TLS.
        self.inbox = Inbox()
        self.conn = Connection(
            broker.settings("dashboard", tls=tls),
            client_id=cli_client_id("watch"),
            handler=self.inbox,
        )
        self.conn.connect()
        assert self.conn.subscribe("presence/#", 1)


def _connect(broker: PrivateBroker, tls: TLSSettings | None, host: str = "127.0.0.1") -> None:
    """Connect as the dashboard user and close again; raises what `Connection.connect` raises."""
    settings = broker.settings(
        "dashboard", host=host, tls=tls, connect_timeout=CONNECT_TIMEOUT, reconnect_max=1
    )
    conn = Connection(settings, client_id=cli_client_id("tls-test"))
    conn.connect()
    try:
        assert conn.connected
        assert conn.subscribe("presence/#", 0)
    finally:
        conn.close()


def _refused(broker: PrivateBroker, tls: TLSSettings | None) -> tuple[BrokerUnreachable, float]:
    """Connect expecting failure; the error and how long it took to arrive."""
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as info:
        _connect(broker, tls)
    return info.value, time.monotonic() - started


def _says(text: str, phrase: str) -> bool:
    """Whether `text` contains `phrase`, ignoring case and ssl's underscores
    ("CERTIFICATE_VERIFY_FAILED" and "certificate verify failed" both count)."""
    return phrase.lower() in text.lower().replace("_", " ")


def _wait_log(broker: PrivateBroker, text: str, timeout: float = 5.0) -> None:
    """Wait until mosquitto's log contains `text` (it writes lines as they happen)."""
    deadline = time.monotonic() + timeout
    while text not in broker.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"mosquitto never logged {text!r}:\n{broker.log_tail()}")
        time.sleep(0.02)


def _status(config: Path) -> subprocess.CompletedProcess[str]:
    """`python -m presence status -c CONFIG`, as tests/test_cli.py runs the CLI."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PRESENCE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "presence", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def _config(path: Path, broker: PrivateBroker, ca: Path, pki: Pki) -> Path:
    """A config file for the dashboard user with `[broker.tls]` (the given CA, our client cert)."""
    path.write_text(
        f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
username = "dashboard"
password = "{broker.users["dashboard"]}"
connect_timeout = {CONNECT_TIMEOUT}

[broker.tls]
ca = "{ca}"
cert = "{pki.client.cert}"
key = "{pki.client.key}"
"""
    )
    return path


# -- mutual TLS works ------------------------------------------------------------------------


def test_mutual_tls_carries_monitor_agent_and_verdicts(tls_broker: PrivateBroker, pki: Pki) -> None:
    """A monitor and an agent connecting with CA, client cert and key produce an online verdict
    that a dashboard reads over TLS."""
    tls = pki.mutual()
    watcher = TLSWatcher(tls_broker, tls)
    monitor = Monitor(Settings(broker=tls_broker.settings("monitor", tls=tls), monitor=FAST))
    try:
        mark = watcher.mark()
        monitor.start()
        watcher.wait_monitor_online(start=mark)
        with Agent("alpha", tls_broker.settings("alpha", tls=tls)) as agent:
            verdict, _ = watcher.wait_verdict("alpha", "online", start=mark)
            assert verdict.session == agent.session
            assert verdict.reason == "birth"
        assert monitor.exit_error is None
    finally:
        monitor.stop()
        watcher.close()


def test_tls_broker_offers_no_plain_text_port(tls_broker: PrivateBroker, pki: Pki) -> None:
    """The TLS broker opens exactly one listener, TLS, and a plain-text MQTT client gets nowhere."""
    conf = tls_broker.conf_path.read_text().splitlines()
    assert [line for line in conf if line.startswith("listener")] == [
        f"listener {tls_broker.port} 127.0.0.1"
    ]
    assert "require_certificate true" in conf
    assert "tls_version tlsv1.2" in conf  # the minimum: TLS 1.3 stays allowed
    log = tls_broker.log_path.read_text()
    assert log.count("listen socket on port") == 1, log
    error, _ = _refused(tls_broker, None)
    assert str(tls_broker.port) in str(error)
    # The same client with TLS gets in: the refusal above is about plain text, nothing else.
    _connect(tls_broker, pki.mutual())


# -- a wrong CA fails clearly ----------------------------------------------------------------


def test_wrong_ca_fails_at_once_with_a_tls_handshake_error(
    tls_broker: PrivateBroker, pki: Pki, record: Callable[..., None]
) -> None:
    """A CA that did not sign the broker's certificate fails the handshake at once, and says so."""
    error, elapsed = _refused(tls_broker, pki.mutual(ca=pki.other_ca.path))
    message = str(error)
    assert f"TLS handshake with 127.0.0.1:{tls_broker.port} failed" in message
    assert _says(message, "certificate verify failed")
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert elapsed < CONNECT_TIMEOUT / 2  # an answer, not a timeout
    record("TLS: wrong CA", refused_in_s=elapsed)


def test_cli_status_with_a_wrong_ca_exits_3_naming_the_tls_failure(
    tmp_path: Path, tls_broker: PrivateBroker, pki: Pki
) -> None:
    """`presence status` with a wrong `[broker.tls] ca` exits 3 and prints the handshake failure."""
    good = _status(_config(tmp_path / "good.toml", tls_broker, pki.ca.path, pki))
    # Control: the same file with the right CA reaches the broker (1: no monitor is running).
    assert good.returncode == 1, good.stderr
    bad = _status(_config(tmp_path / "bad.toml", tls_broker, pki.other_ca.path, pki))
    assert bad.returncode == 3, (bad.stdout, bad.stderr)
    assert f"TLS handshake with 127.0.0.1:{tls_broker.port} failed" in bad.stderr
    assert _says(bad.stderr, "certificate verify failed")
    assert "Traceback" not in bad.stderr


def test_agent_with_a_wrong_ca_names_the_tls_failure(tls_broker: PrivateBroker, pki: Pki) -> None:
    """An agent whose CA is wrong fails to start with an error that names the certificate."""
    agent = Agent("alpha", tls_broker.settings("alpha", tls=pki.mutual(ca=pki.other_ca.path)))
    with pytest.raises(BrokerUnreachable) as info:
        agent.start(wait=CONNECT_TIMEOUT)
    assert _says(str(info.value), "certificate verify failed")


# -- hostname checking -----------------------------------------------------------------------


@pytest.fixture
def otherhost_broker(tmp_path: Path, pki: Pki) -> Iterator[PrivateBroker]:
    """A TLS broker on 127.0.0.1 whose certificate (by the right CA) names only `otherhost`."""
    files = TLSFiles(pki.ca.path, pki.otherhost.cert, pki.otherhost.key)
    broker = _start(tmp_path / "otherhost", files)
    try:
        yield broker
    finally:
        broker.kill()


def test_hostname_is_checked_by_default(
    otherhost_broker: PrivateBroker, pki: Pki, record: Callable[..., None]
) -> None:
    """A certificate by the trusted CA but for another host is refused unless `insecure`."""
    error, elapsed = _refused(otherhost_broker, pki.mutual())
    assert f"TLS handshake with 127.0.0.1:{otherhost_broker.port} failed" in str(error)
    cause = error.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "mismatch" in cause.verify_message  # "IP address mismatch ... '127.0.0.1'"
    assert elapsed < CONNECT_TIMEOUT / 2
    record("TLS: server certificate for another host", refused_in_s=elapsed)
    # `insecure = true` disables only the hostname check: the chain is still verified against
    # `ca` (see test_insecure_still_verifies_the_chain) and the client certificate still sent.
    _connect(otherhost_broker, pki.mutual(insecure=True))


def test_insecure_still_verifies_the_chain(otherhost_broker: PrivateBroker, pki: Pki) -> None:
    """`insecure = true` with a CA that did not sign the broker's certificate still fails."""
    error, _ = _refused(otherhost_broker, pki.mutual(ca=pki.other_ca.path, insecure=True))
    assert _says(str(error), "certificate verify failed")


def test_hostname_mismatch_is_named_in_the_error(otherhost_broker: PrivateBroker, pki: Pki) -> None:
    """The user-facing error for a hostname mismatch says that the host name does not match."""
    error, _ = _refused(otherhost_broker, pki.mutual())
    assert "mismatch" in str(error)


# -- client certificates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "broker_log"),
    [
        ("none", "peer did not return a certificate"),
        ("unrelated CA", "certificate verify failed"),
    ],
)
def test_broker_requiring_a_client_certificate_refuses_clients_without_one(
    tmp_path: Path, pki: Pki, case: str, broker_log: str
) -> None:
    """Without a client certificate by the broker's CA no connection is made, while the same
    client gets in once the broker no longer requires one."""
    if case == "none":
        tls = TLSSettings(ca=pki.ca.path)
    else:
        tls = pki.mutual(cert=pki.stranger.cert, key=pki.stranger.key)
    files = TLSFiles(pki.ca.path, pki.server.cert, pki.server.key)
    broker = _start(tmp_path / "strict", files)
    try:
        error, _ = _refused(broker, tls)
        assert str(broker.port) in str(error)
        _wait_log(broker, broker_log)
    finally:
        broker.kill()
    relaxed = _start(tmp_path / "relaxed", replace(files, require_certificate=False))
    try:
        assert "require_certificate false" in relaxed.conf_path.read_text().splitlines()
        _connect(relaxed, tls)
    finally:
        relaxed.kill()


def test_missing_client_certificate_fails_fast_and_says_so(
    tls_broker: PrivateBroker, pki: Pki
) -> None:
    """Connecting without a client certificate to a broker that requires one fails at once with
    an error that names the certificate."""
    error, elapsed = _refused(tls_broker, TLSSettings(ca=pki.ca.path))
    assert "certificate" in str(error).lower()
    assert elapsed < CONNECT_TIMEOUT / 2


# -- the monitor -----------------------------------------------------------------------------


def test_tls_monitor_waits_for_a_broker_that_is_not_up_yet(tmp_path: Path, pki: Pki) -> None:
    """A monitor with `[broker.tls]` started before its broker keeps retrying and comes online
    once the broker is up (only a TLS failure is final)."""
    broker = PrivateBroker(
        tmp_path / "late",
        services=("alpha",),
        tls=TLSFiles(pki.ca.path, pki.server.cert, pki.server.key),
    )
    tls = pki.mutual()
    outcome: list[str] = []
    decided = threading.Event()

    def sink(message: object) -> None:
        text = str(message)
        if "will keep trying" in text or "monitor stopped" in text:
            outcome.append(text)
            decided.set()

    sink_id = logger.add(sink, level="WARNING")
    monitor = Monitor(Settings(broker=broker.settings("monitor", tls=tls), monitor=FAST))
    try:
        monitor.start()
        assert decided.wait(10), "the monitor neither retried nor stopped"
        assert monitor.exit_error is None, outcome
        broker.start()
        watcher = TLSWatcher(broker, tls)
        try:
            watcher.wait_monitor_online(timeout=10)
        finally:
            watcher.close()
    finally:
        logger.remove(sink_id)
        monitor.stop()
        broker.kill()
