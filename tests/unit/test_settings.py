"""Settings: the documented defaults, every refusal naming its BACKUP_ variable, the master key."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from backup_common.adapters.settings import (
    JwtAlgorithm,
    LogFormat,
    Settings,
    SettingsError,
    decode_master_key,
    load_settings,
)
from backup_common.engine.database.target import MysqlTarget

GOOD_SECRET = "s" * 40
KEY_BYTES = bytes(range(32))
KEY_B64 = base64.b64encode(KEY_BYTES).decode()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BACKUP_* variable of the developer's shell leaks into a test (names are case-insensitive)."""
    for name in list(os.environ):
        if name.upper().startswith("BACKUP_"):
            monkeypatch.delenv(name)


def test_the_defaults_match_the_documented_contract() -> None:
    settings = Settings()

    assert settings.mysql_url.get_secret_value() == "mysql://root@127.0.0.1:3306/backup_catalog"
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.amqp_exchange == "backup.events"
    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8080)
    assert settings.storage_dir == Path("var/backups")
    assert settings.source_mysql_url.get_secret_value() == "mysql://root@127.0.0.1:3306/app"
    assert settings.uploads_dir == Path("var/app/uploads")
    assert settings.configs_dir == Path("var/app/configs")
    assert settings.logs_dir == Path("var/app/logs")
    assert settings.jwt_algorithm is JwtAlgorithm.HS256
    assert settings.jwt_secret is None
    assert settings.jwt_public_key is None
    assert settings.jwt_issuer is None
    assert settings.jwt_audience is None
    assert settings.master_key is None
    assert settings.master_key_file is None
    assert settings.log_level == "INFO"
    assert settings.log_format is LogFormat.TEXT


def test_the_default_urls_name_the_local_catalog_and_application_databases() -> None:
    settings = Settings()

    catalog, source = settings.catalog, settings.source
    assert (catalog.user, catalog.password, catalog.host, catalog.port, catalog.database) == (
        "root",
        "",
        "127.0.0.1",
        3306,
        "backup_catalog",
    )
    assert (source.host, source.port, source.database) == ("127.0.0.1", 3306, "app")


def test_settings_are_read_from_backup_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_MYSQL_URL", "mariadb://backup:pw@db.internal:3307/catalog")
    monkeypatch.setenv("BACKUP_AMQP_URL", "amqps://user:pw@mq.internal:5671/vhost")
    monkeypatch.setenv("BACKUP_GATEWAY_HOST", "10.1.2.3")
    monkeypatch.setenv("BACKUP_GATEWAY_PORT", "9090")
    monkeypatch.setenv("BACKUP_STORAGE_DIR", "/srv/backups")
    monkeypatch.setenv("BACKUP_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("BACKUP_MASTER_KEY", KEY_B64)

    settings = load_settings()

    assert settings.catalog.host == "db.internal"
    assert settings.catalog.port == 3307
    assert settings.amqp_url.get_secret_value() == "amqps://user:pw@mq.internal:5671/vhost"
    assert (settings.gateway_host, settings.gateway_port) == ("10.1.2.3", 9090)
    assert settings.storage_dir == Path("/srv/backups")
    assert settings.jwt_verification_key() == GOOD_SECRET
    assert settings.load_master_key() == KEY_BYTES


def test_secrets_are_hidden_from_the_settings_repr() -> None:
    settings = Settings(jwt_secret=GOOD_SECRET, master_key=KEY_B64, mysql_url="mysql://root:hunter2@db/catalog")

    text = repr(settings)

    assert GOOD_SECRET not in text
    assert KEY_B64 not in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("BACKUP_MYSQL_URL", "postgres://root:hunter2@db/catalog", "must be a mysql://"),
        ("BACKUP_MYSQL_URL", "mysql://root:hunter2@db/", "must name exactly one database"),
        ("BACKUP_MYSQL_URL", "mysql://root:hunter2@db/one/two", "must name exactly one database"),
        ("BACKUP_MYSQL_URL", "mysql://root:hunter2@db:notaport/catalog", "port"),
        ("BACKUP_SOURCE_MYSQL_URL", "https://root:hunter2@db/app", "must be a mysql://"),
        ("BACKUP_AMQP_URL", "http://guest:hunter2@mq:5672/", "amqp://"),
        ("BACKUP_AMQP_URL", "mysql://guest:hunter2@mq/x", "amqp://"),
        ("BACKUP_JWT_SECRET", "hunter2-is-too-short", "at least 32 characters"),
        ("BACKUP_MASTER_KEY", "hunter2 is not base64!", "base64"),
        ("BACKUP_MASTER_KEY", base64.b64encode(b"hunter2-sixteen!").decode(), "32 bytes, got 16"),
        ("BACKUP_GATEWAY_PORT", "70000", "65535"),
        ("BACKUP_GATEWAY_PORT", "-1", "greater than or equal to 0"),
        ("BACKUP_GATEWAY_PORT", "http", "valid integer"),
        ("BACKUP_JWT_ALGORITHM", "none", "HS256"),
        ("BACKUP_LOG_LEVEL", "LOUD", "pattern"),
    ],
)
def test_an_invalid_variable_stops_the_process_with_a_message_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    line = next((line for line in err.splitlines() if line.startswith(f"{variable}: ")), None)
    assert line is not None, f"no line names {variable} in:\n{err}"
    assert expected.lower() in line.lower()
    assert "hunter2" not in err, "the rejected value (possibly a secret) must not be echoed"


@pytest.mark.parametrize("variable", ["BACKUP_MYSQL_URL", "BACKUP_SOURCE_MYSQL_URL"])
def test_a_mysql_url_missing_its_host_is_refused_without_echoing_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    monkeypatch.setenv(variable, "mysql://backup:hunter2/catalog")

    with pytest.raises(SystemExit):
        load_settings()

    err = capsys.readouterr().err
    assert f"{variable}: " in err
    assert "hunter2" not in err


def test_rs256_without_a_public_key_stops_the_process_naming_the_public_key_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_ALGORITHM", "RS256")

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    assert stopped.value.code == 2
    assert "BACKUP_JWT_PUBLIC_KEY is required with BACKUP_JWT_ALGORITHM=RS256" in capsys.readouterr().err


def test_a_public_key_with_a_symmetric_algorithm_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----")

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    assert stopped.value.code == 2
    assert "BACKUP_JWT_PUBLIC_KEY is only used with an RS algorithm" in capsys.readouterr().err


def test_both_master_key_and_master_key_file_stop_the_process_naming_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(KEY_B64)
    monkeypatch.setenv("BACKUP_MASTER_KEY", KEY_B64)
    monkeypatch.setenv("BACKUP_MASTER_KEY_FILE", str(key_file))

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "BACKUP_MASTER_KEY or BACKUP_MASTER_KEY_FILE, not both" in err
    assert KEY_B64 not in err


def test_every_invalid_variable_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_AMQP_URL", "http://mq/")
    monkeypatch.setenv("BACKUP_GATEWAY_PORT", "99999")

    with pytest.raises(SystemExit):
        load_settings()

    err = capsys.readouterr().err
    assert "BACKUP_AMQP_URL: " in err
    assert "BACKUP_GATEWAY_PORT: " in err


def test_the_master_key_is_read_from_the_environment() -> None:
    assert Settings(master_key=KEY_B64).load_master_key() == KEY_BYTES


def test_the_master_key_is_read_from_a_file_with_surrounding_whitespace(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(f"  {KEY_B64}\n\n")

    assert Settings(master_key_file=key_file).load_master_key() == KEY_BYTES


def test_a_missing_master_key_file_is_reported_naming_the_variable(tmp_path: Path) -> None:
    settings = Settings(master_key_file=tmp_path / "absent.key")

    with pytest.raises(SettingsError, match=r"^BACKUP_MASTER_KEY_FILE: cannot read"):
        settings.load_master_key()


def test_a_master_key_file_with_a_short_key_is_reported_naming_the_variable(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(b"x" * 31).decode())

    with pytest.raises(SettingsError, match=r"^BACKUP_MASTER_KEY_FILE: must decode to 32 bytes, got 31"):
        Settings(master_key_file=key_file).load_master_key()


def test_a_master_key_file_that_is_not_base64_is_reported_naming_the_variable(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"\x00\x01 raw bytes, not base64")

    with pytest.raises(SettingsError, match=r"^BACKUP_MASTER_KEY_FILE: must be base64"):
        Settings(master_key_file=key_file).load_master_key()


def test_no_master_key_at_all_is_reported_naming_both_variables() -> None:
    with pytest.raises(SettingsError, match="BACKUP_MASTER_KEY or BACKUP_MASTER_KEY_FILE is required"):
        Settings().load_master_key()


@pytest.mark.parametrize("text", ["", "=", "QUJD", base64.b64encode(b"x" * 33).decode(), "@" * 44])
def test_decode_master_key_refuses_anything_but_32_base64_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="openssl rand -base64 32"):
        decode_master_key(text)


def test_a_mysql_url_is_split_into_its_parts_with_a_percent_encoded_password_decoded() -> None:
    target = MysqlTarget("mysql://back%40up:p%40ss%3Aw%2Frd%25@db.example.com:3307/cata%20log")

    assert target.user == "back@up"
    assert target.password == "p@ss:w/rd%"
    assert target.host == "db.example.com"
    assert target.port == 3307
    assert target.database == "cata log"


def test_a_mysql_url_without_user_port_or_host_falls_back_to_local_root() -> None:
    target = MysqlTarget("mariadb:///catalog")

    assert (target.user, target.password, target.host, target.port, target.database) == (
        "root",
        "",
        "127.0.0.1",
        3306,
        "catalog",
    )


def test_a_mysql_target_repr_never_shows_the_password() -> None:
    target = MysqlTarget("mysql://root:hunter2@db:3306/catalog")

    assert repr(target) == "MysqlTarget(root@db:3306/catalog)"


@pytest.mark.parametrize(
    "url",
    ["postgres://root@db/catalog", "db:3306/catalog", "mysql://root@db", "mysql://root@db/", "mysql://root@db/a/b"],
)
def test_mysql_target_refuses_a_url_that_does_not_name_one_mysql_database(url: str) -> None:
    with pytest.raises(ValueError, match="mysql://"):
        MysqlTarget(url)


def test_jwt_verification_key_without_a_secret_names_the_secret_variable() -> None:
    with pytest.raises(SettingsError, match="BACKUP_JWT_SECRET is required"):
        Settings().jwt_verification_key()


def test_jwt_verification_key_is_the_public_key_with_an_rs_algorithm() -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_public_key="-----BEGIN PUBLIC KEY-----\n...")

    assert settings.jwt_verification_key() == "-----BEGIN PUBLIC KEY-----\n..."


def test_settings_are_immutable() -> None:
    settings = Settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.gateway_port = 1  # type: ignore[misc]
