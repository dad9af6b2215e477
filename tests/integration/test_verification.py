"""The verification service through the API with real MariaDB, RabbitMQ and files: a new backup ends
verified by a restore drill; damage of every kind fails it with a reason naming it; a backup verifies
again on request and on the drill schedule; two replicas never verify one backup at once."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.runtime import service as runtime
from backup_common.adapters.settings import Settings
from backup_common.domain.documents import SettingsDocument
from backup_verification import handlers as verification
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway, both backup workers and two verification replicas sharing one catalog and storage."""
    url = source_url(settings)
    source = await make_source(url)
    app = tmp_path / "app"
    (app / "uploads" / "2025").mkdir(parents=True)
    (app / "uploads" / "2025" / "cat.txt").write_text("meow\n" * 1000)
    (app / "configs").mkdir()
    (app / "configs" / "app.ini").write_text("[db]\n")
    async with running_gateway(settings, **system_overrides(url, tmp_path), lease_seconds=5) as gateway:
        try:
            async with running_workers(gateway, "database_backup", "file_backup", "verification", "verification"):
                yield gateway
        finally:
            await db.drop_database(source)


async def verified(system: Gateway, backup_id: str, *, after: str | None = None) -> dict[str, Any]:
    """The backup once a verification ended after ``after`` (a checked_at), as the API shows it."""
    async with asyncio.timeout(60):
        while True:
            status, body = await system.call("GET", f"{API}/{backup_id}")
            assert status == 200, body
            found = body["backup"]["verification"]
            if found["status"] != "pending" and (after is None or (found["checked_at"] or "") > after):
                return dict(body["backup"])
            await asyncio.sleep(0.2)


async def full_backup(system: Gateway) -> dict[str, Any]:
    made = await wait_finished(system, (await system.create("full"))["id"])
    assert made["status"] == "completed", made["error"]
    return made


async def scratch_databases(system: Gateway) -> list[str]:
    """This catalog's scratch databases: other test runs on the server have their own."""
    catalog = system.settings.catalog
    prefix = verification.drill_prefix(f"{catalog.host}:{catalog.port}/{catalog.database}")
    rows = await system.rows("SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA")
    return [row["name"] for row in rows if row["name"].startswith(prefix)]


async def test_a_new_full_backup_ends_verified_by_a_restore_drill_and_leaves_no_scratch_database(
    system: Gateway,
) -> None:
    made = await full_backup(system)

    backup = await verified(system, made["id"])

    check = backup["verification"]
    assert check["status"] == "verified", check["error"]
    assert {item["name"]: item["ok"] for item in check["checks"]} == {
        "manifest_authentic": True,
        "database.archive_digest": True,
        "database.members_authentic": True,
        "restore_drill": True,
        "files.archive_digest": True,
        "files.members_authentic": True,
        "files.chain_consistent": True,
        "files.files_content": True,
    }
    assert await scratch_databases(system) == []
    status, stats = await system.call("GET", f"{API}/stats")
    assert (status, stats["verification"]) == (200, {"verified": 1, "failed": 0, "never": 0})
    status, page = await system.call("GET", f"{API}/list?verification=verified")
    assert [item["id"] for item in page["backups"]] == [made["id"]]
    status, page = await system.call("GET", f"{API}/list?verification=failed,pending")
    assert page["total"] == 0


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_manifest(path: Path) -> None:
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["parts"]["database"]["rows"] += 1
    manifest_path.write_text(json.dumps(manifest))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "one flipped bit": (flip_a_bit, "database.archive_digest: the archive's SHA-256 is"),
    "a missing archive": (Path.unlink, "database.archive_digest:"),
    "a truncated archive": (truncate, "database.archive_digest: the archive holds"),
    "a manifest edited by hand": (edit_manifest, "manifest_authentic: the manifest's MAC does not match"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_damage_fails_verification_with_a_reason_naming_it(system: Gateway, damage: str) -> None:
    made = await full_backup(system)
    first = await verified(system, made["id"])
    assert first["verification"]["status"] == "verified", first["verification"]["error"]
    harm, reason = DAMAGE[damage]
    harm(system.settings.storage_dir / made["storage_path"] / "database.zip")

    status, _ = await system.call("POST", f"{API}/{made['id']}/verify")
    assert status == 202
    again = await verified(system, made["id"], after=first["verification"]["checked_at"])

    check = again["verification"]
    assert check["status"] == "failed"
    assert reason in check["error"], check["error"]
    if damage == "a missing archive":
        assert "missing" in check["error"]
    assert await scratch_databases(system) == []


async def test_another_backups_valid_archive_put_in_place_fails_verification(system: Gateway) -> None:
    made, other = await full_backup(system), await full_backup(system)
    first = await verified(system, made["id"])
    await verified(system, other["id"])
    storage = system.settings.storage_dir
    (storage / made["storage_path"] / "database.zip").write_bytes(
        (storage / other["storage_path"] / "database.zip").read_bytes()
    )

    await system.call("POST", f"{API}/{made['id']}/verify")
    again = await verified(system, made["id"], after=first["verification"]["checked_at"])

    assert again["verification"]["status"] == "failed"
    assert "database.archive_digest: the archive's SHA-256 is" in again["verification"]["error"]


async def test_verify_requests_are_refused_for_unknown_or_unfinished_backups(system: Gateway) -> None:
    status, body = await system.call("POST", f"{API}/00000000-0000-4000-8000-000000000000/verify")
    assert (status, body["error"]["code"]) == (404, "not_found")
    running = str(uuid.uuid4())  # recorded as the gateway would, but with no request for the workers
    await system.rows(
        "INSERT INTO backups (id, type, status, requested_by, storage_path, created_at, updated_at)"
        " VALUES (%s, 'full', 'running', 'alice', %s, NOW(6), NOW(6))",
        (running, f"2026-01-01/{running}"),
    )
    status, body = await system.call("POST", f"{API}/{running}/verify")
    assert (status, body["error"]["code"]) == (409, "backup_not_verifiable")


async def test_on_a_drill_schedule_of_every_minute_an_old_backup_is_checked_again_by_itself(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The services' clock is moved a minute ahead once the backup was first verified, rather than the
    # test waiting for the next minute to start.
    ahead = [timedelta(0)]
    monkeypatch.setattr(runtime, "system_clock", lambda: datetime.now(UTC) + ahead[0])
    monkeypatch.setattr(verification, "TICK_SECONDS", 0.5)
    source_url = settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_src_{secrets.token_hex(4)}"
    source = await make_source(source_url)
    overrides: dict[str, Any] = {
        "source_mysql_url": source_url,
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
    }
    try:
        async with running_gateway(settings, **overrides) as gateway:
            document = SettingsDocument.model_validate({"verification": {"restore_drill_cron": "* * * * *"}})
            status, _ = await gateway.call("PUT", f"{API}/settings", document.model_dump(mode="json"))
            assert status == 200
            async with running_workers(gateway, "database_backup", "verification"):
                made = await wait_finished(gateway, (await gateway.create("database"))["id"])
                first = await verified(gateway, made["id"])
                assert first["verification"]["status"] == "verified", first["verification"]["error"]
                ahead[0] = timedelta(minutes=1)

                again = await verified(gateway, made["id"], after=first["verification"]["checked_at"])

            rounds = await gateway.rows("SELECT state FROM job_leases WHERE job_key LIKE 'verify-round:%%'")
        assert again["verification"]["status"] == "verified"
        assert rounds
    finally:
        await db.drop_database(source)


async def test_two_replicas_never_verify_one_backup_at_once(system: Gateway) -> None:
    made = await full_backup(system)
    first = await verified(system, made["id"])

    answers = await asyncio.gather(*(system.call("POST", f"{API}/{made['id']}/verify") for _ in range(8)))
    assert [status for status, _ in answers] == [202] * 8
    again = await verified(system, made["id"], after=first["verification"]["checked_at"])
    await asyncio.sleep(2)  # let any verification still running end

    assert again["verification"]["status"] == "verified", again["verification"]["error"]
    outcomes = await system.rows(
        "SELECT routing_key, COUNT(*) AS n FROM outbox WHERE correlation_id = %s AND routing_key LIKE 'backup.verif%%'"
        " GROUP BY routing_key",
        (made["id"],),
    )
    counts = {row["routing_key"]: int(row["n"]) for row in outcomes}
    # Overlapping drills would share one scratch database and fail each other.
    assert counts.get("backup.verification.failed", 0) == 0, counts
    assert 2 <= counts["backup.verified"] <= 9
    assert await scratch_databases(system) == []
