"""What the gateway does for each admin request, apart from HTTP, with fakes of the ports."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backup_common.domain.errors import Conflict
from backup_common.domain.events import BackupPart, BackupRequested, BackupType, DeleteRequested
from backup_common.domain.model import BackupStatus, Idempotency, PartResult
from backup_gateway import handlers
from tests.unit.fakes import FakeSystem, fake_ports


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


async def completed_backup(system: FakeSystem, backup_type: BackupType = BackupType.FULL) -> str:
    backup, _ = await handlers.create_backup(system.ports, backup_type, requested_by="alice")
    async with system.ports.uow() as uow:
        stored = await uow.backups.get(backup.id, for_update=True)
        assert stored is not None
        for part in backup_type.parts:
            stored.start_part(part, 1, system.ports.clock())
            stored.complete_part(part, PartResult(f"{part}.zip", 10, "0" * 64, 1, {}), system.ports.clock())
        await uow.backups.save(stored)
        await uow.commit()
    return backup.id


async def test_creating_a_backup_records_it_pending_with_its_request_in_one_unit_of_work(system: FakeSystem) -> None:
    backup, created = await handlers.create_backup(
        system.ports, BackupType.INCREMENTAL, requested_by="alice", description="nightly"
    )

    assert created
    assert system.catalog.commits == 1
    stored = system.catalog.backups[backup.id]
    assert (stored.status, stored.description, stored.requested_by) == (BackupStatus.PENDING, "nightly", "alice")
    [event] = system.catalog.events(BackupRequested)
    assert (str(event.backup_id), event.parts) == (backup.id, (BackupPart.FILES,))


async def test_a_repeated_idempotency_key_returns_the_first_backup_and_a_reused_one_is_refused(
    system: FakeSystem,
) -> None:
    key = Idempotency("retry-1", "hash-of-full")
    first, created = await handlers.create_backup(system.ports, BackupType.FULL, requested_by="alice", idempotency=key)
    again, created_again = await handlers.create_backup(
        system.ports, BackupType.FULL, requested_by="alice", idempotency=key
    )

    assert (created, created_again, again.id) == (True, False, first.id)
    assert len(system.catalog.events(BackupRequested)) == 1
    with pytest.raises(Conflict, match="already used for a different request"):
        await handlers.create_backup(
            system.ports, BackupType.FILES, requested_by="alice", idempotency=Idempotency("retry-1", "other")
        )


async def test_deleting_marks_the_backup_deleting_asks_again_when_repeated_and_refuses_one_in_progress(
    system: FakeSystem,
) -> None:
    backup_id = await completed_backup(system, BackupType.DATABASE)
    running, _ = await handlers.create_backup(system.ports, BackupType.DATABASE, requested_by="alice")

    deleted = await handlers.request_delete(system.ports, backup_id, requested_by="alice")
    await handlers.request_delete(system.ports, backup_id, requested_by="alice")

    assert deleted.status is BackupStatus.DELETING
    # The second request retries a deletion that may have failed half-way; deleting is idempotent.
    assert system.catalog.backups[backup_id].status is BackupStatus.DELETING
    assert len(system.catalog.events(DeleteRequested)) == 2
    with pytest.raises(Conflict, match="wait until it completes or fails"):
        await handlers.request_delete(system.ports, running.id, requested_by="alice")


async def test_a_document_is_seeded_from_its_default_and_replaced_whole_with_a_new_revision(
    system: FakeSystem,
) -> None:
    seeded = await handlers.read_document(system.ports, "settings")
    body = seeded.document.model_dump(mode="json") | {"exclude": ["**/*.bak"]}

    replaced = await handlers.replace_document(system.ports, "settings", body, updated_by="alice")

    assert (seeded.revision, seeded.updated_by) == (1, "defaults")
    assert (replaced.revision, replaced.updated_by) == (2, "alice")
    assert (await handlers.read_document(system.ports, "settings")).document == replaced.document
    with pytest.raises(ValidationError):
        await handlers.replace_document(system.ports, "settings", body | {"unknown": 1}, updated_by="alice")
