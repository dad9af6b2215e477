"""`backupctl backup`, `list`, `show`, `verify` and `restore` as scripts and cron jobs run them, against a
real gateway, database_backup and verification workers, MariaDB and RabbitMQ: exit statuses, JSON
records, plain lines, and the reasons of what failed or was refused."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from backup_common.engine.database.target import MysqlTarget
from tests.integration.gateway_support import Gateway, make_source, running_gateway, running_workers, source_url
from tests.integration.source_snapshot import snapshot, snapshot_differences

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


@dataclass
class Cli:
    """The gateway, its source database, and `backupctl` pointed at it as BACKUP_API_URL."""

    gateway: Gateway
    source: MysqlTarget
    capsys: pytest.CaptureFixture[str]

    async def run(self, *argv: str) -> tuple[int, str, str]:
        """Runs `backupctl` (in a thread: it runs its own event loop); its exit status, stdout and stderr."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(backupctl, list(argv))
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    async def backup(self, backup_type: str = "database") -> dict[str, Any]:
        code, out, err = await self.run("backup", "--type", backup_type, "--wait", "--json")
        assert code == 0, err
        record: dict[str, Any] = json.loads(out)
        return record

    def source_server(self) -> str:
        return self.gateway.settings.source_mysql_url.get_secret_value().rsplit("/", 1)[0]

    async def verified(self, backup_id: str) -> dict[str, Any]:
        """The backup once the verification it got after completing has ended."""
        async with asyncio.timeout(60):
            while True:
                status, body = await self.gateway.call("GET", f"{API}/{backup_id}")
                assert status == 200, body
                if body["backup"]["verification"]["checked_at"] is not None:
                    return dict(body["backup"])
                await asyncio.sleep(0.2)


@pytest.fixture
async def cli(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Cli]:
    url = source_url(settings)
    source = await make_source(url)
    overrides: dict[str, Any] = {
        "source_mysql_url": url,
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
        "lease_seconds": 5,
    }
    monkeypatch.chdir(tmp_path)  # no var/secrets of a local `make run` here
    monkeypatch.delenv("BACKUP_API_TOKEN", raising=False)
    async with running_gateway(settings, **overrides) as gateway:
        assert gateway.settings.jwt_secret is not None
        monkeypatch.setenv("BACKUP_API_URL", str(gateway.client.make_url("/")))
        monkeypatch.setenv("BACKUP_JWT_SECRET", gateway.settings.jwt_secret.get_secret_value())
        try:
            async with running_workers(gateway, "database_backup", "verification"):
                yield Cli(gateway, source, capsys)
        finally:
            await db.drop_database(source)


async def test_backup_wait_json_exits_0_and_prints_the_completed_record_as_the_api_has_it(cli: Cli) -> None:
    code, out, err = await cli.run("backup", "--type", "database", "--description", "nightly", "--wait", "--json")

    assert code == 0, err
    record = json.loads(out)
    assert (record["status"], record["type"], record["description"]) == ("completed", "database", "nightly")
    assert [(part["part"], part["status"]) for part in record["parts"]] == [("database", "completed")]
    assert record["parts"][0]["size_bytes"] > 0
    status, body = await cli.gateway.call("GET", f"{API}/{record['id']}")
    assert status == 200
    assert {key: body["backup"][key] for key in ("id", "status", "size_bytes", "parts")} == {
        key: record[key] for key in ("id", "status", "size_bytes", "parts")
    }
    assert f"backup {record['id']} (database) requested (pending)" in err, "with --json, the news is on stderr"
    assert "database: completed 1/1 tables 3 rows" in err


async def test_backup_wait_prints_plain_progress_lines_and_one_final_line(cli: Cli) -> None:
    code, out, err = await cli.run("backup", "--type", "database", "--wait")

    assert code == 0, err
    requested, completed = out.splitlines()
    backup_id = requested.split()[1]
    assert requested == f"backup {backup_id} (database) requested (pending)"
    assert completed.startswith(f"backup {backup_id} (database) completed in ")
    assert "\x1b[" not in err, "no terminal codes in a log"
    lines = err.splitlines()
    assert lines[-1].startswith("database: completed 1/1 tables 3 rows")
    assert len(lines) == len(set(lines)), "a line per change, not per poll"


async def test_backup_without_wait_exits_0_at_once_with_the_id_to_follow(cli: Cli) -> None:
    code, out, _ = await cli.run("backup", "--type", "database")

    assert code == 0
    backup_id = out.split()[1]
    assert f"follow it with: backupctl show {backup_id}" in out
    status, body = await cli.gateway.call("GET", f"{API}/{backup_id}")
    assert status == 200
    assert body["backup"]["type"] == "database"


async def test_a_failed_backup_exits_1_with_its_reason(cli: Cli) -> None:
    await db.drop_database(cli.source)

    code, out, err = await cli.run("backup", "--type", "database", "--wait", "--json")

    assert code == 1
    record = json.loads(out)
    assert record["status"] == "failed"
    reason = err.splitlines()[-1]
    assert reason == f"backupctl backup: backup {record['id']} failed: {record['error']}"
    assert "cannot connect to the source database" in reason
    assert "Unknown database" in reason


async def test_list_filters_limits_and_prints_json_or_columns(cli: Cli) -> None:
    first, second = await cli.backup(), await cli.backup()

    code, out, err = await cli.run("list", "--type", "database", "--status", "completed", "--limit", "1", "--json")

    assert code == 0, err
    page = json.loads(out)
    assert (page["total"], page["limit"], [b["id"] for b in page["backups"]]) == (2, 1, [second["id"]])

    code, out, err = await cli.run("list")

    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "CREATED", "(UTC)", "TYPE", "STATUS", "SIZE", "VERIFIED", "WARNINGS", "DESCRIPTION"]
    assert [row.split()[0] for row in rows] == [second["id"], first["id"]]
    assert all(row.split()[3:5] == ["database", "completed"] for row in rows)
    assert err == ""

    code, out, _ = await cli.run("list", "--status", "failed")
    assert (code, out.splitlines()[1:]) == (0, [])


async def test_show_prints_the_backup_its_parts_and_its_verification(cli: Cli) -> None:
    made = await cli.verified((await cli.backup())["id"])

    code, out, err = await cli.run("show", made["id"], "--json")

    assert code == 0, err
    assert json.loads(out) == made

    code, out, err = await cli.run("show", made["id"])

    assert code == 0, err
    lines = out.splitlines()
    assert f"id            {made['id']}" in lines
    assert "status        completed" in lines
    part = next(line for line in lines if line.startswith("  database  completed"))
    assert made["parts"][0]["sha256"] in part
    assert "verification checks:" in lines
    assert any(line.split()[:2] == ["ok", "restore_drill"] for line in lines)


async def test_show_of_an_unknown_backup_exits_2_saying_so(cli: Cli) -> None:
    code, out, err = await cli.run("show", "00000000-0000-4000-8000-000000000000")

    assert (code, out) == (2, "")
    assert err == "backupctl show: no backup with id 00000000-0000-4000-8000-000000000000 (HTTP 404)\n"


async def test_verify_wait_follows_a_new_verification_to_verified(cli: Cli) -> None:
    made = await cli.verified((await cli.backup())["id"])

    code, out, err = await cli.run("verify", made["id"], "--wait", "--json")

    assert code == 0, err
    record = json.loads(out)
    assert record["verification"]["status"] == "verified"
    assert record["verification"]["checked_at"] > made["verification"]["checked_at"]
    assert {check["name"] for check in record["verification"]["checks"]} >= {"restore_drill", "manifest_authentic"}

    code, out, err = await cli.run("verify", made["id"], "--wait")

    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"backup {made['id']} verified at ")


async def test_verify_of_a_damaged_backup_exits_1_naming_the_failed_check(cli: Cli) -> None:
    made = await cli.verified((await cli.backup())["id"])
    archive = cli.gateway.settings.storage_dir / made["storage_path"] / "database.zip"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    code, out, err = await cli.run("verify", made["id"], "--wait")

    assert code == 1
    assert any(line.split()[:2] == ["FAILED", "database.archive_digest"] for line in out.splitlines())
    reason = err.splitlines()[-1]
    assert reason.startswith(f"backupctl verify: backup {made['id']} failed verification: database.archive_digest: ")


async def test_verify_of_a_failed_backup_is_refused_with_exit_2(cli: Cli) -> None:
    await db.drop_database(cli.source)
    code, out, _ = await cli.run("backup", "--type", "database", "--wait", "--json")
    assert code == 1

    code, _, err = await cli.run("verify", json.loads(out)["id"], "--wait")

    assert code == 2
    assert err.endswith("only a completed backup can be verified (HTTP 409)\n")


async def test_a_token_in_backup_api_token_is_used_as_is_and_its_refusal_named(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUP_JWT_SECRET")
    monkeypatch.setenv("BACKUP_API_TOKEN", cli.gateway.token(subject="cron@backup-host"))

    code, out, err = await cli.run("backup", "--type", "database", "--json")

    assert code == 0, err
    assert json.loads(out)["requested_by"] == "cron@backup-host"

    monkeypatch.setenv("BACKUP_API_TOKEN", cli.gateway.token(roles=("viewer",)))

    code, out, err = await cli.run("list")

    assert (code, out) == (2, "")
    assert err == ("backupctl list: this token does not carry the admin role (HTTP 403; token from BACKUP_API_TOKEN)\n")


async def test_restore_finds_the_gateway_in_backup_api_url_and_prints_the_final_record(cli: Cli) -> None:
    made = await cli.backup()
    target = MysqlTarget(cli.source_server() + f"/backup_copy_{secrets.token_hex(4)}")
    try:
        code, out, err = await cli.run("restore", made["id"], "--target-database", target.database, "--wait", "--json")

        assert code == 0, err
        restore = json.loads(out)
        assert (restore["status"], restore["backup_id"]) == ("completed", made["id"])
        assert f"restore {restore['id']} of backup {made['id']} requested (pending)" in err
        assert not snapshot_differences(await snapshot(cli.source), await snapshot(target))

        code, out, err = await cli.run("restore", made["id"], "--target-database", target.database)

        assert (code, out) == (2, "")
        assert f"database {target.database} is not empty" in err
        assert err.endswith("(HTTP 409)\n")
    finally:
        await db.drop_database(target)
