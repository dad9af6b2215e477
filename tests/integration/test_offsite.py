"""Off-site copies end to end, with real MariaDB, RabbitMQ, files and an S3 endpoint (moto_server on
loopback): every completed backup copied with equal sizes and checksums; a lost local copy still
downloaded, restored and verified from the store, by the services and by backupctl; deletion
removing the objects; a store that is down failing the copy with a reason, and the copy made once it
is back, the local backup untouched meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from tests.integration.gateway_support import wait_finished
from tests.integration.s3_support import free_port, make_bucket
from tests.integration.source_snapshot import snapshot, snapshot_differences
from tests.integration.tcp_proxy import tcp_proxy
from tests.integration.test_restores import System, restore, running_system
from tests.integration.trees import trees

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
SERVICES = ("database_backup", "file_backup", "verification", "retention")


@dataclass
class OffsiteSystem(System):
    endpoint: str
    bucket: str

    async def objects(self, backup: dict[str, Any]) -> dict[str, tuple[int, str]]:
        """The backup's objects in the store by file name: size and SHA-256 of the bytes downloaded."""
        prefix = f"offsite-test/{backup['storage_path']}/"
        found = {}
        async with s3_client(self.endpoint) as client:
            listed = await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
            for item in listed.get("Contents", []):
                answer = await client.get_object(Bucket=self.bucket, Key=item["Key"])
                async with answer["Body"] as body:
                    data = await body.read()
                found[item["Key"].removeprefix(prefix)] = (len(data), hashlib.sha256(data).hexdigest())
        return found


def s3_client(endpoint: str) -> Any:
    return get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1")


@asynccontextmanager
async def offsite_system(
    settings: Settings, tmp_path: Path, endpoint: str, bucket: str
) -> AsyncIterator[OffsiteSystem]:
    """Every service, with an object store at ``endpoint``: failed copies are tried again soon."""
    store = {
        "offsite_url": f"s3://{bucket}/offsite-test",
        "offsite_endpoint_url": endpoint,
        "offsite_retry_seconds": 0.5,
        "offsite_part_size_mib": 5,
    }
    async with running_system(settings, tmp_path, *SERVICES, **store) as system:
        yield OffsiteSystem(system.gateway, system.source, system.app, system.restores, endpoint, bucket)


@pytest.fixture
async def system(settings: Settings, tmp_path: Path, moto_endpoint: str) -> AsyncIterator[OffsiteSystem]:
    async with offsite_system(settings, tmp_path, moto_endpoint, await make_bucket(moto_endpoint)) as running:
        yield running


async def completed_backup(system: OffsiteSystem, backup_type: str) -> dict[str, Any]:
    made = await wait_finished(system.gateway, (await system.gateway.create(backup_type))["id"])
    assert made["status"] == "completed", made["error"]
    return made


async def offsite_state(system: OffsiteSystem, backup_id: str, *wanted: str) -> dict[str, Any]:
    """The backup's off-site state once it is one of ``wanted``."""
    async with asyncio.timeout(60):
        while True:
            status, body = await system.gateway.call("GET", f"{API}/{backup_id}")
            assert status == 200, body
            offsite = body["backup"]["offsite"]
            if offsite is not None and offsite["status"] in wanted:
                return dict(offsite)
            await asyncio.sleep(0.2)


def local_files(system: OffsiteSystem, backup: dict[str, Any]) -> dict[str, tuple[int, str]]:
    directory = system.gateway.settings.storage_dir / backup["storage_path"]
    return {
        path.name: (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in directory.iterdir()
        if path.is_file()
    }


def lose_local_copy(system: OffsiteSystem, backup: dict[str, Any]) -> None:
    shutil.rmtree(system.gateway.settings.storage_dir / backup["storage_path"])


async def test_every_completed_backup_is_copied_with_equal_sizes_and_checksums(system: OffsiteSystem) -> None:
    made = await completed_backup(system, "full")

    offsite = await offsite_state(system, made["id"], "copied")

    assert offsite["location"] == f"s3://{system.bucket}/offsite-test/{made['storage_path']}/"
    assert offsite["error"] is None
    assert offsite["copied_at"] is not None
    stored = await system.objects(made)
    assert stored == local_files(system, made)
    assert set(stored) == {"database.zip", "database.json", "files.zip", "files.json", "manifest.json"}
    for part in made["parts"]:
        assert stored[part["file_name"]] == (part["size_bytes"], part["sha256"])


async def test_a_lost_local_copy_still_downloads_restores_and_verifies_from_the_store(system: OffsiteSystem) -> None:
    made = await completed_backup(system, "full")
    await offsite_state(system, made["id"], "copied")
    # The verification every backup gets first: its files must not vanish under it.
    first = await verification_of(system, made["id"])
    assert first["status"] == "verified", first
    database_before = await snapshot(system.source)
    trees_before = trees(system.app)
    copy = system.other_database("copy")
    try:
        lose_local_copy(system, made)
        response = await system.gateway.client.get(f"{API}/{made['id']}/download", headers=system.gateway.auth())
        assert response.status == 200, await response.text()
        assert len(await response.read()) > sum(part["size_bytes"] for part in made["parts"])

        lose_local_copy(system, made)
        into_database = await restore(system, made["id"], parts=["database"], target={"database": copy.database})
        assert into_database["status"] == "completed", into_database["error"]
        differences = snapshot_differences(database_before, await snapshot(copy))
        assert not differences, "\n".join(differences[:20])

        lose_local_copy(system, made)
        directory = system.restores / "copy"
        into_directory = await restore(system, made["id"], parts=["files"], target={"directory": str(directory)})
        assert into_directory["status"] == "completed", into_directory["error"]
        assert trees(directory) == trees_before

        lose_local_copy(system, made)
        status, body = await system.gateway.call("POST", f"{API}/{made['id']}/verify")
        assert status == 202, body
        verified = await verification_of(system, made["id"], after=first["checked_at"])
        assert verified["status"] == "verified", verified
    finally:
        await db.drop_database(copy)


async def verification_of(system: OffsiteSystem, backup_id: str, *, after: str | None = None) -> dict[str, Any]:
    """The backup's verification once one ended (after ``after``, a checked_at, when given)."""
    async with asyncio.timeout(120):
        while True:
            status, body = await system.gateway.call("GET", f"{API}/{backup_id}")
            assert status == 200, body
            verification = body["backup"]["verification"]
            checked = verification["checked_at"]
            if verification["status"] != "pending" and checked is not None and (after is None or checked > after):
                return dict(verification)
            await asyncio.sleep(0.3)


async def test_backupctl_loads_and_restores_from_the_store_when_the_local_copy_is_gone(
    system: OffsiteSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await completed_backup(system, "full")
    await offsite_state(system, made["id"], "copied")
    database_before = await snapshot(system.source)
    trees_before = trees(system.app)
    settings = system.gateway.settings
    assert settings.master_key is not None
    for name, value in {
        "BACKUP_MYSQL_URL": settings.mysql_url.get_secret_value(),
        "BACKUP_SOURCE_MYSQL_URL": settings.source_mysql_url.get_secret_value(),
        "BACKUP_STORAGE_DIR": str(settings.storage_dir),
        "BACKUP_MASTER_KEY": settings.master_key.get_secret_value(),
        "BACKUP_OFFSITE_URL": f"s3://{system.bucket}/offsite-test",
        "BACKUP_OFFSITE_ENDPOINT_URL": system.endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    copy = system.other_database("cli")
    try:
        lose_local_copy(system, made)
        assert await asyncio.to_thread(backupctl, ["db-load", made["id"], "--into", copy.database]) == 0
        assert not snapshot_differences(database_before, await snapshot(copy))

        lose_local_copy(system, made)
        into = tmp_path / "cli-restore"
        assert await asyncio.to_thread(backupctl, ["files-restore", made["id"], "--into", str(into)]) == 0
        assert trees(into) == trees_before
    finally:
        await db.drop_database(copy)


async def test_deleting_a_backup_removes_its_objects_from_the_store(system: OffsiteSystem) -> None:
    made = await completed_backup(system, "database")
    await offsite_state(system, made["id"], "copied")
    assert await system.objects(made)

    status, body = await system.gateway.call("DELETE", f"{API}/{made['id']}")
    assert status == 202, body
    offsite = await offsite_state(system, made["id"], "removed")

    assert offsite["error"] is None
    assert await system.objects(made) == {}
    assert not (system.gateway.settings.storage_dir / made["storage_path"]).exists()


async def test_a_store_that_is_down_fails_the_copy_with_a_reason_and_it_is_copied_once_back(
    settings: Settings, tmp_path: Path, moto_endpoint: str
) -> None:
    bucket = await make_bucket(moto_endpoint)
    port = free_port()  # nothing listens on it until the proxy below does
    down = f"http://127.0.0.1:{port}"
    async with offsite_system(settings, tmp_path, down, bucket) as system:
        made = await completed_backup(system, "database")
        failed = await offsite_state(system, made["id"], "failed")
        assert "127.0.0.1" in failed["error"], failed
        assert failed["next_attempt_at"] is not None
        directory = system.gateway.settings.storage_dir / made["storage_path"]
        assert (directory / "database.zip").stat().st_size == made["parts"][0]["size_bytes"]

        upstream = moto_endpoint.removeprefix("http://").rsplit(":", 1)
        async with tcp_proxy(upstream[0], int(upstream[1]), port=port):
            copied = await offsite_state(system, made["id"], "copied")
            assert copied["attempts"] >= 2
            system.endpoint = moto_endpoint
            stored = await system.objects(made)
        assert stored["database.zip"] == (made["parts"][0]["size_bytes"], made["parts"][0]["sha256"])
