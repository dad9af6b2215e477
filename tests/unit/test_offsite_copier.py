"""The retention service's off-site copier and the reads that fall back on the off-site copy, with
fakes of the catalog and of the object store (storage is a real directory). The same against
MariaDB and a real S3 endpoint is in tests/integration/test_offsite.py."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.fetch import LocalCopyMissing, local_copy
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupType
from backup_common.domain.model import Backup, BackupStatus, PartResult
from backup_common.domain.offsite import OffsiteStatus
from backup_retention.bootstrap import bootstrap
from backup_retention.handlers import erase
from backup_retention.offsite import Copier, OffsiteMetrics, OffsitePolicy
from tests.unit.fakes import FakeOffsiteStore, FakeSystem, fake_ports

RETRY = timedelta(seconds=30)
ARCHIVE = b"encrypted archive bytes"


@pytest.fixture
def store() -> FakeOffsiteStore:
    return FakeOffsiteStore()


@pytest.fixture
def system(tmp_path: Path, store: FakeOffsiteStore) -> FakeSystem:
    return fake_ports(tmp_path / "storage", offsite=store)


def copier(system: FakeSystem, store: FakeOffsiteStore, *, local_keep: timedelta | None = None) -> Copier:
    policy = OffsitePolicy(retry=RETRY, lock_days=None, local_keep=local_keep)
    return Copier(system.ports, store, OffsiteMetrics(CollectorRegistry()), policy)


async def completed(system: FakeSystem) -> Backup:
    backup = Backup.request(BackupType.DATABASE, requested_by="alice", now=system.clock())
    digest = hashlib.sha256(ARCHIVE).hexdigest()
    for part in backup.parts:
        backup.start_part(part.part, 1, system.clock())
        backup.complete_part(part.part, PartResult("database.zip", len(ARCHIVE), digest, 1, {}), system.clock())
    directory = system.storage.directory(backup)
    directory.mkdir(parents=True)
    (directory / "database.zip").write_bytes(ARCHIVE)
    (directory / "database.json").write_text("{}")
    (directory / "manifest.json").write_text("{}")
    async with system.ports.uow() as uow:
        await uow.backups.add(backup)
        await uow.commit()
    return system.catalog.backups[backup.id]


def test_the_retention_service_runs_the_copier_only_with_an_object_store(tmp_path: Path, system: FakeSystem) -> None:
    without = bootstrap(Settings(), fake_ports(tmp_path / "other").ports, CollectorRegistry())
    with_store = bootstrap(Settings(), system.ports, CollectorRegistry())

    assert len(with_store.loops) == len(without.loops) + 1


async def test_a_completed_backup_is_copied_with_its_manifest_last(system: FakeSystem, store: FakeOffsiteStore) -> None:
    backup = await completed(system)

    await copier(system, store).round()

    copy = system.catalog.offsite[backup.id]
    assert copy.status is OffsiteStatus.COPIED
    assert copy.location == f"s3://fake/{backup.storage_path}/"
    assert copy.copied_at == system.clock()
    names = ("database.zip", "database.json", "manifest.json")
    assert store.written == [f"{backup.storage_path}/{name}" for name in names]
    assert copy.bytes_copied == len(ARCHIVE) + 4


async def test_a_store_that_is_down_fails_the_copy_with_its_reason_and_it_is_tried_again_later(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    store.down = "could not connect to the endpoint http://127.0.0.1:1"
    copying = copier(system, store)

    await copying.round()
    copy = system.catalog.offsite[backup.id]
    assert copy.status is OffsiteStatus.FAILED
    assert copy.error == "could not connect to the endpoint http://127.0.0.1:1"
    assert copy.next_attempt_at == system.clock() + RETRY
    assert system.catalog.backups[backup.id].status is BackupStatus.COMPLETED
    assert (system.storage.directory(backup) / "database.zip").read_bytes() == ARCHIVE

    system.clock.advance(RETRY.total_seconds())
    await copying.round()
    assert system.catalog.offsite[backup.id].attempts == 2
    assert system.catalog.offsite[backup.id].next_attempt_at == system.clock() + 2 * RETRY

    store.down = None
    await copying.round()  # not due yet: the delay doubled
    assert system.catalog.offsite[backup.id].status is OffsiteStatus.FAILED
    system.clock.advance(2 * RETRY.total_seconds())
    await copying.round()
    assert system.catalog.offsite[backup.id].status is OffsiteStatus.COPIED
    assert system.catalog.offsite[backup.id].error is None


async def test_a_copy_the_store_holds_with_other_bytes_fails(system: FakeSystem, store: FakeOffsiteStore) -> None:
    backup = await completed(system)
    (system.storage.directory(backup) / "database.zip").write_bytes(b"changed on disk after the backup")

    await copier(system, store).round()

    copy = system.catalog.offsite[backup.id]
    assert copy.status is OffsiteStatus.FAILED
    assert "database.zip has another SHA-256 than the" in (copy.error or "")
    assert (system.storage.directory(backup) / "database.zip").exists()


async def test_deleting_a_backup_removes_its_off_site_copy(system: FakeSystem, store: FakeOffsiteStore) -> None:
    backup = await completed(system)
    await copier(system, store).round()
    await request_delete(system, backup)

    assert await erase(system.ports, backup.id)

    assert store.objects == {}
    assert system.catalog.offsite[backup.id].status is OffsiteStatus.REMOVED
    assert system.catalog.backups[backup.id].status is BackupStatus.DELETED


async def test_a_deletion_the_store_fails_stays_pending_with_the_key_kept(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    await copier(system, store).round()
    await system.keys.data_key(backup.id)
    await request_delete(system, backup)
    store.down = "the endpoint does not answer"

    assert not await erase(system.ports, backup.id)

    assert system.catalog.backups[backup.id].status is BackupStatus.DELETING
    assert backup.id in system.keys.keys
    store.down = None
    assert await erase(system.ports, backup.id)
    assert store.objects == {}


async def test_objects_object_lock_keeps_are_tombstoned_and_removed_once_the_lock_ends(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    copying = copier(system, store)
    await copying.round()
    await request_delete(system, backup)
    store.lock_until = system.clock() + timedelta(days=7)

    assert await erase(system.ports, backup.id)

    assert system.catalog.backups[backup.id].status is BackupStatus.DELETED
    assert store.tombstones == {backup.id}
    copy = system.catalog.offsite[backup.id]
    assert copy.status is OffsiteStatus.LOCKED
    assert copy.next_attempt_at == store.lock_until
    store.lock_until = None
    await copying.round()
    assert system.catalog.offsite[backup.id].status is OffsiteStatus.LOCKED  # not due before the lock ends
    system.clock.advance(timedelta(days=7).total_seconds())
    await copying.round()
    assert system.catalog.offsite[backup.id].status is OffsiteStatus.REMOVED
    assert store.objects == {}


async def test_old_local_copies_are_removed_once_off_site_and_fetched_back_when_read(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    copying = copier(system, store, local_keep=timedelta(days=3))
    await copying.round()
    directory = system.storage.directory(backup)
    # The local copy's files are as old as the backup once its days are up.
    system.clock.advance(timedelta(days=4).total_seconds())
    assert await copying.expire_local(timedelta(days=3)) == []  # its files were just written
    for path in directory.iterdir():
        old = (system.clock() - timedelta(days=4)).timestamp()
        os.utime(path, (old, old))

    assert await copying.expire_local(timedelta(days=3)) == [backup.id]
    assert not directory.exists()
    assert system.catalog.offsite[backup.id].local_removed_at == system.clock()

    fetched = await local_copy(system.ports, system.catalog.backups[backup.id])

    assert (fetched / "database.zip").read_bytes() == ARCHIVE
    assert system.catalog.offsite[backup.id].local_removed_at is None
    assert await copying.expire_local(timedelta(days=3)) == []  # fetched back: fresh files


async def test_a_damaged_local_archive_is_replaced_by_the_off_site_one(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    await copier(system, store).round()
    archive = system.storage.directory(backup) / "database.zip"
    archive.write_bytes(b"X" * len(ARCHIVE))

    await local_copy(system.ports, backup)

    assert archive.read_bytes() == ARCHIVE


async def test_without_an_off_site_store_the_local_copy_is_given_as_it_is_for_the_reads_to_judge(
    tmp_path: Path,
) -> None:
    system = fake_ports(tmp_path / "storage")
    backup = await completed(system)
    (system.storage.directory(backup) / "database.zip").unlink()

    assert await local_copy(system.ports, backup) == system.storage.directory(backup)


async def test_a_local_copy_the_store_cannot_give_back_is_reported_with_both_reasons(
    system: FakeSystem, store: FakeOffsiteStore
) -> None:
    backup = await completed(system)
    (system.storage.directory(backup) / "database.zip").unlink()
    store.down = "the endpoint does not answer"

    with pytest.raises(LocalCopyMissing, match=r"database\.zip: missing.+the endpoint does not answer"):
        await local_copy(system.ports, backup)


async def request_delete(system: FakeSystem, backup: Backup) -> None:
    async with system.ports.uow() as uow:
        found = await uow.backups.get(backup.id, for_update=True)
        assert found is not None
        found.request_delete("alice", system.clock())
        await uow.backups.save(found)
        await uow.commit()
