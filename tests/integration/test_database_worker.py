"""The database_backup worker driven through the API, with a real source database, catalog and broker."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.outbox import add_to_outbox
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart, BackupRequested, BackupType
from tests.integration.gateway_support import Gateway, make_source, running_gateway, running_workers, wait_finished

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway and a database_backup worker sharing one catalog, storage and exchange."""
    source_url = settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_src_{secrets.token_hex(4)}"
    source = await make_source(source_url)
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    overrides: dict[str, Any] = {
        "source_mysql_url": source_url,
        "master_key": master,
        "storage_dir": tmp_path / "storage",
        "lease_seconds": 5,
    }
    async with running_gateway(settings, **overrides) as gateway:
        try:
            async with running_workers(gateway, "database_backup"):
                yield gateway
        finally:
            await db.drop_database(source)


async def test_a_database_backup_requested_through_the_api_completes_with_an_encrypted_archive(
    system: Gateway,
) -> None:
    created = await system.create("database")
    backup = await wait_finished(system, created["id"])
    assert backup["status"] == "completed", backup["error"]
    [part] = backup["parts"]
    assert part["status"] == "completed"
    assert part["item_count"] == 3
    assert part["progress"]["tables_done"] == part["progress"]["tables_total"] == 1
    directory = system.settings.storage_dir / backup["storage_path"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["backup"]["id"] == backup["id"]
    database = manifest["parts"]["database"]
    assert database["sha256"] == part["sha256"]
    assert database["tables"][0]["rows"] == 3
    assert manifest["encryption"]["scheme"] == "winzip-aes-256"
    assert (directory / "database.zip").stat().st_size == part["size_bytes"]
    with pyzipper.AESZipFile(directory / "database.zip") as archive, pytest.raises(RuntimeError):
        archive.read(archive.namelist()[0])
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


async def test_a_redelivered_backup_request_does_not_make_a_second_archive(system: Gateway) -> None:
    created = await system.create("database")
    backup = await wait_finished(system, created["id"])
    directory = system.settings.storage_dir / backup["storage_path"]
    before = (directory / "database.zip").stat()
    duplicate = BackupRequested(
        backup_id=uuid.UUID(created["id"]),
        backup_type=BackupType.DATABASE,
        parts=(BackupPart.DATABASE,),
        requested_by="alice",
    )
    async with db.transaction(system.pool) as conn:
        await add_to_outbox(conn, duplicate)
    await asyncio.sleep(2)
    after = (directory / "database.zip").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    rows = await system.rows("SELECT state, attempts FROM job_leases WHERE job_key = %s",
                             (f"backup:{created['id']}:database",))  # fmt: skip
    assert rows == [{"state": "done", "attempts": 1}]


async def test_an_unreachable_source_fails_the_backup_with_a_reason_and_leaves_no_archive(
    settings: Settings, tmp_path: Path
) -> None:
    overrides: dict[str, Any] = {
        "source_mysql_url": "mysql://root@127.0.0.1:1/app",
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
    }
    async with running_gateway(settings, **overrides) as gateway:
        async with running_workers(gateway, "database_backup"):
            created = await gateway.create("full")
            backup = await wait_finished(gateway, created["id"])
        assert backup["status"] == "failed"
        assert "database part failed" in backup["error"]
        assert "cannot connect to the source database" in backup["error"]
        directory = gateway.settings.storage_dir / backup["storage_path"]
        assert not (directory / "database.zip").exists()
        leftovers = list(directory.glob("*")) if directory.exists() else []
        assert leftovers == []
        _, listing = await gateway.call("GET", f"{API}/list?status=completed")
        assert listing["total"] == 0


async def test_a_part_whose_worker_died_is_requested_again_and_completed_by_another(system: Gateway) -> None:
    created = await system.create("database")
    await wait_finished(system, created["id"])
    # A second backup whose part a now-dead worker claimed: its lease expired and no message is left.
    backup_id = str(uuid.uuid4())
    event = BackupRequested(
        backup_id=uuid.UUID(backup_id), backup_type=BackupType.DATABASE, parts=(BackupPart.DATABASE,),
        requested_by="alice",
    )  # fmt: skip
    async with db.transaction(system.pool) as conn:
        await db.execute(
            conn,
            "INSERT INTO backups (id, type, status, requested_by, storage_path, created_at, updated_at)"
            " VALUES (%s, 'database', 'running', 'alice', %s, NOW(6), NOW(6))",
            (backup_id, f"2026-01-01/{backup_id}"),
        )
        await db.execute(
            conn,
            "INSERT INTO backup_parts (backup_id, part, status, attempts, updated_at)"
            " VALUES (%s, 'database', 'running', 1, NOW(6))",
            (backup_id,),
        )
        await db.execute(
            conn,
            "INSERT INTO job_leases (job_key, holder, version, state, attempts, payload, claimed_at, expires_at,"
            " updated_at) VALUES (%s, 'database_backup@gone:1', 1, 'held', 1, %s, NOW(6), NOW(6), NOW(6))",
            (f"backup:{backup_id}:database", event.to_json()),
        )
    backup = await wait_finished(system, backup_id)
    assert backup["status"] == "completed", backup["error"]
    assert backup["parts"][0]["attempts"] == 2


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own (tmpfs; needs root, as in CI), so writing runs out of space."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


async def test_a_full_disk_fails_the_backup_with_the_reason_and_leaves_nothing_behind(
    settings: Settings, full_disk: Path
) -> None:
    source_url = settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_src_{secrets.token_hex(4)}"
    source = await make_source(source_url)
    pool = await db.create_pool(source, maxsize=1)
    try:
        async with db.transaction(pool) as conn:
            await db.execute(conn, "CREATE TABLE noise (id INT PRIMARY KEY, data LONGBLOB)")
            for batch in range(4):  # about 4 MiB that does not compress
                await db.execute(conn, "INSERT INTO noise VALUES (%s, %s)", (batch, secrets.token_bytes(1 << 20)))
    finally:
        await db.close_pool(pool)
    overrides: dict[str, Any] = {
        "source_mysql_url": source_url,
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": full_disk,
    }
    try:
        async with (
            running_gateway(settings, **overrides) as gateway,
            running_workers(gateway, "database_backup"),
        ):
            backup = await wait_finished(gateway, (await gateway.create("database"))["id"])
    finally:
        await db.drop_database(source)
    assert backup["status"] == "failed"
    assert "No space left on device" in backup["error"], backup["error"]
    assert backup["parts"][0]["error"]
    assert [str(path) for path in full_disk.rglob("*") if path.is_file()] == []


async def test_after_a_hundred_and_ten_failed_backups_a_new_one_is_still_requested_and_completed(
    settings: Settings, tmp_path: Path
) -> None:
    # Every failure announces BackupFailed, which no service consumes. The first relay published each
    # as mandatory, could never send it, and took the same 100 oldest rows every pass: a backup
    # requested after 110 failures stayed pending for ever.
    source_url = settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_src_{secrets.token_hex(4)}"
    overrides: dict[str, Any] = {
        "source_mysql_url": source_url,  # not created yet: every backup fails
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
    }
    async with running_gateway(settings, **overrides) as gateway, running_workers(gateway, "database_backup"):
        failed = [await gateway.create("database") for _ in range(110)]
        for backup in failed:
            assert (await wait_finished(gateway, backup["id"]))["status"] == "failed"
        source = await make_source(source_url)
        try:
            backup = await wait_finished(gateway, (await gateway.create("database"))["id"])
        finally:
            await db.drop_database(source)
        assert backup["status"] == "completed", backup["error"]
        for _ in range(150):  # every BackupFailed is sent too, within 30 s
            unsent = await gateway.rows("SELECT event_type FROM outbox WHERE sent_at IS NULL")
            if not unsent:
                break
            await asyncio.sleep(0.2)
        assert unsent == []
        assert await gateway.rows("SELECT event_type FROM outbox WHERE parked_at IS NOT NULL") == []
