"""`backupctl`: durations, issuing tokens the gateway accepts, exporting the event schemas."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jwt
import pytest

from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import TokenVerifier
from backup_common.cli import main, parse_duration
from backup_common.domain.events import event_schemas

SECRET = "c" * 48
# Variables `backupctl token` may set in os.environ itself (from local secret files).
TOUCHED = ("BACKUP_JWT_SECRET", "BACKUP_MASTER_KEY", "BACKUP_MASTER_KEY_FILE")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory (no var/secrets) and no BACKUP_* variable from the outer shell.

    Setting then deleting each variable the CLI may write makes monkeypatch remove it again afterwards.
    """
    for name in list(os.environ):
        if name.upper().startswith("BACKUP_"):
            monkeypatch.delenv(name)
    for name in TOUCHED:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604_800), ("30", 30), ("1", 1), (" 2h ", 7200), ("12 h", 43_200)],
)
def test_parse_duration_reads_seconds_minutes_hours_and_days(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "00m", "1w", "abc", "", "-5m", "1.5h", "1h30m", "h", "1H", "5 minutes"])
def test_parse_duration_refuses_zero_unknown_units_and_garbage(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


def test_token_prints_an_admin_token_the_verifier_accepts_for_the_requested_ttl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)
    before = time.time()

    code = main(["token", "--role", "admin", "--ttl", "1h"])

    out = capsys.readouterr().out
    assert code == 0
    token = out.strip()
    assert out == token + "\n", "only the token is printed, so it can be captured with $(...)"
    principal = TokenVerifier(Settings(jwt_secret=SECRET)).verify(token)
    assert principal.is_admin
    exp = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    assert before + 3600 - 2 <= exp <= time.time() + 3600 + 2


def test_token_defaults_to_the_admin_role_and_a_one_hour_lifetime(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    assert main(["token", "--subject", "ops-bot"]) == 0

    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ops-bot"
    assert claims["roles"] == ["admin"]
    assert claims["exp"] - claims["iat"] == 3600


def test_token_with_other_roles_is_not_admin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    assert main(["token", "--role", "viewer", "--role", "auditor", "--ttl", "15m"]) == 0

    principal = TokenVerifier(Settings(jwt_secret=SECRET)).verify(capsys.readouterr().out.strip())
    assert principal.roles == frozenset({"viewer", "auditor"})
    assert not principal.is_admin


def test_token_without_a_secret_or_local_file_fails_naming_the_secret_variable(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["token", "--role", "admin", "--ttl", "1h"])

    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    assert "BACKUP_JWT_SECRET" in captured.err
    assert not (isolated / "var").exists(), "`token` must not create local secret files"


def test_token_uses_the_local_secret_file_when_no_secret_is_set(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = "l" * 64
    (isolated / "var" / "secrets").mkdir(parents=True)
    (isolated / "var" / "secrets" / "jwt-secret").write_text(local + "\n")

    assert main(["token"]) == 0

    assert TokenVerifier(Settings(jwt_secret=local)).verify(capsys.readouterr().out.strip()).is_admin


def test_token_with_an_invalid_ttl_is_refused_by_the_argument_parser(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    with pytest.raises(SystemExit) as stopped:
        main(["token", "--ttl", "1w"])

    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert "invalid duration '1w'" in captured.err
    assert captured.out == ""


def test_token_with_invalid_settings_stops_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", "too-short")

    with pytest.raises(SystemExit) as stopped:
        main(["token"])

    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "BACKUP_JWT_SECRET: must be at least 32 characters" in err
    assert "too-short" not in err


def test_token_signs_rs256_tokens_with_the_given_private_key_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], isolated: Path, rsa_keys: tuple[str, str]
) -> None:
    private, public = rsa_keys
    key_file = isolated / "signing.pem"
    key_file.write_text(private)
    monkeypatch.setenv("BACKUP_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("BACKUP_JWT_PUBLIC_KEY", public)

    assert main(["token", "--private-key-file", str(key_file), "--ttl", "30m"]) == 0

    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=public)).verify(token).is_admin


def test_token_for_rs256_without_a_private_key_file_fails_saying_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rsa_keys: tuple[str, str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("BACKUP_JWT_PUBLIC_KEY", rsa_keys[1])

    code = main(["token"])

    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    assert "--private-key-file" in captured.err


def test_export_schemas_writes_every_event_schema(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = isolated / "schemas"

    assert main(["export-schemas", str(target)]) == 0

    written = sorted(path.name for path in target.iterdir())
    assert written == sorted(event_schemas())
    for name, schema in event_schemas().items():
        assert json.loads((target / name).read_text()) == schema
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([])

    assert stopped.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
