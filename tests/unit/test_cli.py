"""`backupctl`: durations, tokens the gateway accepts, event schemas, restore requests and progress."""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from backup_common import cli
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import TokenVerifier
from backup_common.cli import build_parser, main, parse_duration
from backup_common.cli.progress import describe
from backup_common.cli.restore import restore_body
from backup_common.domain.commands import message_schemas
from backup_common.domain.events import event_schemas

SECRET = "c" * 48
# Variables `backupctl token` may set in os.environ itself (from local secret files).
TOUCHED = ("BACKUP_JWT_SECRET", "BACKUP_MASTER_KEY", "BACKUP_MASTER_KEY_FILE", "BACKUP_NOTIFICATION_SECRET")


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


def test_export_schemas_writes_every_event_and_command_schema(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = isolated / "schemas"

    assert main(["export-schemas", str(target)]) == 0

    written = sorted(path.name for path in target.iterdir())
    assert written == sorted(message_schemas())
    assert set(event_schemas()) < set(written)
    assert {"CreateBackupCommand.v1.json", "VerifyBackupCommand.v1.json"} < set(written)
    for name, schema in message_schemas().items():
        assert json.loads((target / name).read_text()) == schema
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([])

    assert stopped.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_db_load_refuses_a_parallelism_below_one(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["db-load", "b", "--into", "copy", "--parallel", value])

    assert stopped.value.code == 2
    assert "--parallel" in capsys.readouterr().err


def test_the_offline_tools_find_the_master_key_make_run_created(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Right after `make run`, `key` (like db-load and files-restore) reads var/secrets/master.key
    instead of failing for want of BACKUP_MASTER_KEY; here it then finds no such backup."""
    secrets_dir = isolated / "var" / "secrets"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "master.key").write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    monkeypatch.setenv("BACKUP_STORAGE_DIR", str(isolated / "storage"))
    monkeypatch.setenv("BACKUP_MYSQL_URL", "mysql://root@127.0.0.1:1/none")  # no catalog: storage alone

    code = main(["key", str(uuid.uuid4())])

    assert code == 1
    err = capsys.readouterr().err
    assert "no backup" in err
    assert "MASTER_KEY" not in err
    assert os.environ["BACKUP_MASTER_KEY_FILE"] == str((secrets_dir / "master.key").resolve())


def restore_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["restore", "b1", *argv])


def test_restore_sends_what_the_command_line_asks_for() -> None:
    assert restore_body(restore_args()) == {"confirm": "b1"}
    assert restore_body(
        restore_args("--target-database", "copy", "--replace", "--tables", "orders", "items", "--no-safety-backup")
    ) == {
        "confirm": "b1",
        "target": {"database": "copy", "replace": True},
        "tables": ["orders", "items"],
        "safety_backup": False,
    }
    assert restore_body(restore_args("--parts", "files", "--target-directory", "/r/x", "--paths", "configs")) == {
        "confirm": "b1",
        "parts": ["files"],
        "target": {"directory": "/r/x", "replace": False},
        "paths": ["configs"],
    }


def test_restore_takes_one_target_at_most(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        restore_args("--target-database", "a", "--target-directory", "/b")
    assert "not allowed with argument" in capsys.readouterr().err


def test_restore_without_a_gateway_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    code = main(["restore", str(uuid.uuid4()), "--gateway", "http://127.0.0.1:1"])

    assert code == 2
    assert "cannot reach the gateway at http://127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("progress", "text"),
    [
        (None, "waiting"),
        ({"phase": "checking"}, "checking"),
        (
            {"phase": "loading", "bytes_done": 512, "bytes_total": 2048, "tables_done": 1, "tables_total": 4},
            "loading 25% (512 B of 2.0 KiB) 1/4 tables",
        ),
        ({"phase": "writing", "files_done": 3, "files_total": 9, "bytes_total": 0}, "writing 3/9 files"),
    ],
)
def test_progress_reads_in_a_few_words(progress: dict[str, Any] | None, text: str) -> None:
    assert describe(progress) == text


class RunCalls:
    """`backupctl run` with its catalog migration, broker check and services faked: what it would supervise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.supervised: list[list[str]] = []

        async def migrate(target: Any) -> list[str]:
            return []

        async def supervise(services: dict[str, str], env: dict[str, str]) -> int:
            self.supervised.append(list(services))
            return 0

        async def check_broker(settings: Any) -> None:
            return None

        monkeypatch.setattr(cli, "migrate", migrate)
        monkeypatch.setattr(cli, "check_broker", check_broker)
        monkeypatch.setattr(cli, "run_services", supervise)


def printed_token(out: str) -> str | None:
    return next((line for line in out.splitlines() if line.startswith("ey")), None)


def test_run_prints_an_admin_token_for_the_jwt_secret_it_generated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = RunCalls(monkeypatch)

    assert main(["run", "gateway"]) == 0

    token = printed_token(capsys.readouterr().out)
    assert token is not None
    secret = Path("var/secrets/jwt-secret").read_text().strip()
    assert TokenVerifier(Settings(jwt_secret=secret)).verify(token).is_admin
    assert calls.supervised == [["gateway"]]


def test_run_prints_no_token_signed_with_the_operators_jwt_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    RunCalls(monkeypatch)
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    assert main(["run", "gateway"]) == 0

    out = capsys.readouterr().out
    assert printed_token(out) is None
    assert SECRET not in out


def test_run_prints_no_token_again_for_the_local_secret_an_earlier_run_made(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    RunCalls(monkeypatch)
    assert main(["run", "gateway"]) == 0
    capsys.readouterr()
    os.environ.pop("BACKUP_JWT_SECRET")  # the first run put the local secret there

    assert main(["run", "gateway"]) == 0

    assert printed_token(capsys.readouterr().out) is None


def test_run_supervises_only_the_services_named(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = RunCalls(monkeypatch)

    assert main(["run", "retention", "database_backup"]) == 0

    assert calls.supervised == [["retention", "database_backup"]]
