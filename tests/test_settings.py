"""Configuration: TOML plus environment, validated at start-up with the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from presence.errors import ConfigError
from presence.settings import Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path = tmp_path / "presence.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    """No file: the documented defaults."""
    s = load_settings()
    assert s.topic_prefix == "presence"
    assert (s.broker.host, s.broker.port, s.broker.protocol) == ("127.0.0.1", 1883, "5")
    m = s.monitor
    assert (m.ping_interval, m.pong_timeout, m.missed_pongs, m.startup_grace) == (1.0, 1.0, 2, 10.0)
    assert s.services == []
    assert s.monitor_client_id == "presence-monitor"


def test_file_values_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PRESENCE_<SECTION>__<KEY> overrides the file, merged section by section."""
    path = write(
        tmp_path,
        """
topic_prefix = "site1/presence"
[broker]
host = "10.0.0.5"
port = 1884
username = "monitor"
protocol = 3.1
[monitor]
ping_interval = 0.5
[[services]]
name = "sensor-gw"
""".replace("3.1", '"3.1.1"'),
    )
    monkeypatch.setenv("PRESENCE_BROKER__PASSWORD", "from-env")
    monkeypatch.setenv("PRESENCE_MONITOR__MISSED_PONGS", "3")
    s = load_settings(path)
    assert s.topic_prefix == "site1/presence"
    assert (s.broker.host, s.broker.port, s.broker.protocol) == ("10.0.0.5", 1884, "3.1.1")
    assert s.broker.password is not None
    assert s.broker.password.get_secret_value() == "from-env"
    assert (s.monitor.ping_interval, s.monitor.missed_pongs) == (0.5, 3)
    assert [svc.name for svc in s.services] == ["sensor-gw"]
    # Derived from the credentials: stable, but not guessable by other users.
    assert s.monitor_client_id.startswith("site1-presence-monitor-")
    assert len(s.monitor_client_id) == len("site1-presence-monitor-") + 12
    assert "from-env" not in s.monitor_client_id


def test_password_file_is_read_once(tmp_path: Path) -> None:
    """password_file holds the secret (trailing newline stripped)."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = load_settings(write(tmp_path, f'[broker]\npassword_file = "{secret}"\n'))
    assert s.broker.password is not None
    assert s.broker.password.get_secret_value() == "s3cret"


def test_bad_values_name_every_field_and_reason_but_never_the_secret(tmp_path: Path) -> None:
    """One error listing each bad field; the password value does not appear anywhere."""
    path = write(
        tmp_path,
        """
[broker]
port = 99999
password = "hunter2-secret"
passwrd = "typo"
[monitor]
ping_interval = -1
missed_pongs = 0
[[services]]
name = "bad name"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert "broker.port" in text
    assert "less than or equal to 65535" in text
    assert "broker.passwrd" in text
    assert "monitor.ping_interval" in text
    assert "monitor.missed_pongs" in text
    assert "services.0.name" in text
    assert "invalid service name" in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[broker\n", "not valid TOML"),
        ('[broker]\npassword = "a"\npassword_file = "/nonexistent"\n', "password_file"),
        ('[broker]\nprotocol = "4"\n', "broker.protocol"),
        ('topic_prefix = "a/#"\n', "topic_prefix"),
        ('[[services]]\nname = "a"\n[[services]]\nname = "a"\n', "declared twice"),
        ('[broker.tls]\nca = "/nonexistent/ca.pem"\n', "does not exist"),
        ('[log]\nlevel = "LOUD"\n', "log.level"),
    ],
)
def test_more_bad_configs(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake fails at start-up with something a user can act on."""
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_frozen() -> None:
    """Read once, passed down, never changed underneath."""
    s = Settings()
    with pytest.raises(ValueError, match="frozen"):
        s.broker.port = 1  # type: ignore[misc]
