"""The files we ship agree with the code: broker config, ACL, example config, public API."""

from __future__ import annotations

import getpass
import re
import subprocess
from pathlib import Path

import pytest

import presence
from presence.broker import DIRECTIVES, free_port, render_acl, wait_listening
from presence.mqtt import Connection, cli_client_id
from presence.settings import BrokerSettings, load_settings
from tests.helpers import ROOT


def test_shipped_acl_is_the_generated_one() -> None:
    """mosquitto/acl is exactly what the tests and the demo run with."""
    assert (ROOT / "mosquitto" / "acl").read_text() == render_acl("presence")


def test_shipped_broker_config_carries_every_directive_presence_relies_on() -> None:
    """allow_anonymous false, TCP_NODELAY, persistence, a big queue... all present."""
    text = (ROOT / "mosquitto" / "mosquitto.conf").read_text()
    lines = {line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"}
    for key, value in DIRECTIVES.items():
        assert f"{key} {value}" in lines, key
    assert "password_file /mosquitto/config/passwd" in lines
    assert "acl_file /mosquitto/config/acl" in lines


def test_shipped_broker_config_starts_mosquitto_and_refuses_anonymous(tmp_path: Path) -> None:
    """The real file, with its paths pointed at a temp dir, runs on this mosquitto."""
    port = free_port()
    conf = (ROOT / "mosquitto" / "mosquitto.conf").read_text()
    (tmp_path / "passwd").write_text("")
    (tmp_path / "passwd").chmod(0o600)
    acl = tmp_path / "acl"
    acl.write_text(render_acl())
    acl.chmod(0o600)
    conf = conf.replace("/mosquitto/config/", f"{tmp_path}/").replace(
        "/mosquitto/data/", f"{tmp_path}/"
    )
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = f"user {getpass.getuser()}\n" + conf
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=out, stderr=out
        )
    try:
        assert wait_listening(port, proc, 10), log.read_text()
        anonymous = Connection(
            BrokerSettings(port=port, connect_timeout=3), client_id=cli_client_id("anon")
        )
        with pytest.raises(presence.ConnectionRefused, match=r"(?i)authori"):
            anonymous.connect()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Error" not in log.read_text()


def test_example_config_loads() -> None:
    """examples/presence.toml is valid."""
    settings = load_settings(ROOT / "examples" / "presence.toml")
    assert settings.broker.username == "monitor"


def test_public_api_is_pinned() -> None:
    """What `import presence` offers is a deliberate list; changing it is a visible decision."""
    assert sorted(presence.__all__) == sorted(
        [
            "Agent",
            "AsyncAgent",
            "BrokerError",
            "BrokerSettings",
            "BrokerUnreachable",
            "ConfigError",
            "ConnectionRefused",
            "DuplicateServiceError",
            "HealthResult",
            "InvalidName",
            "PayloadError",
            "Phase",
            "PresenceError",
            "Settings",
            "TLSFailure",
            "__version__",
            "load_settings",
        ]
    )
    for name in presence.__all__:
        assert hasattr(presence, name), name


def test_paho_is_imported_by_one_module_only() -> None:
    """paho's types stop at presence/mqtt.py."""
    importers = [
        path.name
        for path in (ROOT / "presence").glob("*.py")
        if re.search(r"^\s*(import|from) paho", path.read_text(), flags=re.M)
    ]
    assert importers == ["mqtt.py"]
