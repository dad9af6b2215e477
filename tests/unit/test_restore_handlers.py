"""Restores through the gateway's handlers and the database_backup service, with fakes of the ports
and of the database engine (the engine is tested against a real server in tests/integration): what
is accepted, the safety backup a restore in place waits for, and how a restore's parts complete,
fail, are handed back and are reaped."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.jobs import reap_jobs
from backup_common.adapters.runtime.service import Service
from backup_common.adapters.settings import Settings
from backup_common.domain.errors import Conflict, InvalidRequest, Unavailable
from backup_common.domain.events import (
    BackupPart,
    BackupRequested,
    BackupType,
    RestoreCompleted,
    RestoreFailed,
    RestorePartProgressed,
    RestoreRequested,
)
from backup_common.domain.jobs import MAX_JOB_ATTEMPTS, restore_job_key
from backup_common.domain.model import (
    Backup,
    BackupStatus,
    PartStatus,
    Restore,
    RestoreFilter,
    RestoreStatus,
    RestoreTarget,
    Trigger,
)
from backup_common.domain.ports import MessageRejected
from backup_common.engine.database.dump import DumpError
from backup_common.engine.database.load import LoadError
from backup_common.engine.database.restore import DatabaseRestoreProgress, DatabaseRestoreSummary
from backup_common.engine.database.sql import SqlError
from backup_common.engine.database.target import MysqlTarget
from backup_database.bootstrap import bootstrap
from backup_gateway import handlers
from backup_gateway.handlers import RestoreSpec, RestoreTargets
from tests.unit.fakes import FakeSystem, fake_ports
from tests.unit.test_database_backup_handlers import FakeDump, Source

DATABASE = BackupPart.DATABASE


class FakeRestore:
    """Stands in for engine.database.restore.restore_database: records its call, reports progress,
    then succeeds, fails, or waits until released."""

    def __init__(self, *, error: Exception | None = None, hold: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, archive: Path, manifest: dict[str, Any], server: Any, database: str, **kwargs: Any) -> Any:
        self.calls.append({"archive": archive, "manifest": manifest, "database": database, **kwargs})
        self.started.set()
        await kwargs["progress"](DatabaseRestoreProgress("checking", 0, 20, 0, 2, 0))
        await kwargs["progress"](DatabaseRestoreProgress("loading", 5, 20, 0, 2, 2))
        await kwargs["progress"](DatabaseRestoreProgress("loading", 10, 20, 1, 2, 5))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return DatabaseRestoreSummary(database, 2, 5, 0, 0, 0, 0, ["stray"], 0.5)


class NoServer:
    """The gateway's view of the source server in these tests: never reached, as every target is in
    place or replaced (whether a database is empty is asked of a real server in tests/integration)."""

    target = MysqlTarget("mysql://root@db.internal:3306/shop")

    async def connect(self, database: str | None = None) -> Any:
        raise AssertionError("not reached")


TARGETS = RestoreTargets(
    source_database="shop", catalog_database="backup_catalog", restore_dir=Path("/srv/restores"), source=NoServer()
)
COPY = RestoreTarget(database="copy", replace=True)


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def service_with(system: FakeSystem, restore: FakeRestore) -> Service:
    return bootstrap(Settings(), system.ports, CollectorRegistry(), source=Source(), dump=FakeDump(), restore=restore)


async def run_all(system: FakeSystem, service: Service) -> None:
    """Delivers every request the catalog's outbox holds to the service, until none is left."""
    delivered = 0
    while delivered < len(system.catalog.outbox):
        event = system.catalog.outbox[delivered]
        delivered += 1
        handler = service.handlers.get(type(event))
        if handler is not None:
            await handler(event)
            await service.wait_idle()


async def completed_backup(system: FakeSystem, service: Service) -> Backup:
    backup, _ = await handlers.create_backup(system.ports, BackupType.DATABASE, requested_by="alice")
    await run_all(system, service)
    stored = system.catalog.backups[backup.id]
    assert stored.status is BackupStatus.COMPLETED
    return stored


async def test_a_restore_in_place_takes_its_safety_backup_first_then_restores_and_completes(
    system: FakeSystem,
) -> None:
    service = service_with(system, engine := FakeRestore())
    backup = await completed_backup(system, service)

    restore = await handlers.request_restore(system.ports, TARGETS, backup.id, RestoreSpec(), requested_by="bob")

    assert restore.safety_backup_id is not None
    safety = system.catalog.backups[restore.safety_backup_id]
    assert (safety.type, safety.trigger) == (BackupType.DATABASE, Trigger.PRE_RESTORE)
    assert system.catalog.events(RestoreRequested) == []
    assert system.catalog.restore_targets == {"database:shop": restore.id}

    await run_all(system, service)

    assert system.catalog.backups[safety.id].status is BackupStatus.COMPLETED
    stored = system.catalog.restores[restore.id]
    assert stored.status is RestoreStatus.COMPLETED
    [call] = engine.calls
    assert (call["database"], call["replace"], call["tables"]) == ("shop", True, None)
    assert call["staging"].startswith("bk_restore_")
    assert call["archive"].name == "database.zip"
    assert call["password"] is not None  # the backup's own key, not a new one
    part = stored.part(DATABASE)
    assert part.status is PartStatus.COMPLETED
    assert part.progress is not None
    assert part.progress["dropped_tables"] == ["stray"]
    assert len(system.catalog.events(RestoreCompleted)) == 1
    announced = system.catalog.events(RestorePartProgressed)
    assert [(event.part, event.phase) for event in announced] == [(DATABASE, "checking"), (DATABASE, "loading")]
    assert system.catalog.restore_targets == {}


async def test_a_failed_safety_backup_fails_the_restore_and_restores_nothing(system: FakeSystem) -> None:
    service = service_with(system, engine := FakeRestore())
    backup = await completed_backup(system, service)
    restore = await handlers.request_restore(system.ports, TARGETS, backup.id, RestoreSpec(), requested_by="bob")
    assert restore.safety_backup_id is not None
    failing_dump = FakeDump(error=DumpError("the source is down"))
    failing = bootstrap(
        Settings(), system.ports, CollectorRegistry(), source=Source(), dump=failing_dump, restore=engine
    )

    await run_all(system, failing)

    stored = system.catalog.restores[restore.id]
    assert stored.status is RestoreStatus.FAILED
    assert stored.error is not None
    assert f"the safety backup {restore.safety_backup_id} failed" in stored.error
    assert engine.calls == []
    assert len(system.catalog.events(RestoreFailed)) == 1


async def test_a_failed_restore_keeps_the_engines_reason(system: FakeSystem) -> None:
    service = service_with(system, FakeRestore(error=LoadError("member 2-data/x failed authentication")))
    backup = await completed_backup(system, service)
    spec = RestoreSpec(target=COPY)

    restore = await handlers.request_restore(system.ports, TARGETS, backup.id, spec, requested_by="bob")
    await run_all(system, service)

    stored = system.catalog.restores[restore.id]
    assert (stored.status, stored.error) == (
        RestoreStatus.FAILED,
        "database part failed: member 2-data/x failed authentication",
    )
    assert system.catalog.leases[restore_job_key(restore.id, DATABASE)].state == "failed"


async def test_a_second_restore_of_the_same_target_waits_and_a_backup_being_restored_is_not_deleted(
    system: FakeSystem,
) -> None:
    service = service_with(system, FakeRestore())
    backup = await completed_backup(system, service)
    spec = RestoreSpec(target=COPY)
    first = await handlers.request_restore(system.ports, TARGETS, backup.id, spec, requested_by="bob")

    with pytest.raises(Conflict, match=f"restore {first.id} into database copy has not finished") as refused:
        await handlers.request_restore(system.ports, TARGETS, backup.id, spec, requested_by="bob")
    assert refused.value.code == "restore_in_progress"
    with pytest.raises(Conflict, match="is being restored") as busy:
        await handlers.request_delete(system.ports, backup.id, requested_by="alice")
    assert busy.value.code == "backup_being_restored"

    await run_all(system, service)
    again = await handlers.request_restore(system.ports, TARGETS, backup.id, spec, requested_by="bob")
    assert again.id != first.id


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (RestoreTarget(database="mysql"), "belongs to the server or to the backup catalog"),
        (RestoreTarget(database="backup_catalog"), "belongs to the server or to the backup catalog"),
        (RestoreTarget(database="shop"), "is the source database"),
        (RestoreTarget(database="bad name;"), "invalid database name"),
        (RestoreTarget(directory="/etc"), "must be below the restore directory"),
        (RestoreTarget(directory="relative/dir"), "must be an absolute path"),
        (RestoreTarget(directory="/srv/restores/../../etc"), "must be below the restore directory"),
    ],
)
async def test_a_target_outside_what_a_restore_may_write_is_refused(
    system: FakeSystem, target: RestoreTarget, message: str
) -> None:
    service = service_with(system, FakeRestore())
    backup = await completed_backup(system, service)

    with pytest.raises(InvalidRequest, match=message):
        await handlers.request_restore(system.ports, TARGETS, backup.id, RestoreSpec(target=target), requested_by="b")
    assert system.catalog.restores == {}


async def test_unknown_tables_are_refused_by_name(system: FakeSystem) -> None:
    service = service_with(system, FakeRestore())
    backup = await completed_backup(system, service)

    with pytest.raises(InvalidRequest, match="has no such tables: ghosts") as refused:
        await handlers.request_restore(
            system.ports, TARGETS, backup.id, RestoreSpec(tables=["accounts", "ghosts"]), requested_by="bob"
        )
    assert refused.value.code == "unknown_tables"
    restore = await handlers.request_restore(
        system.ports, TARGETS, backup.id, RestoreSpec(tables=["accounts"], safety_backup=False), requested_by="bob"
    )
    assert restore.tables == ("accounts",)


async def test_restores_are_listed_newest_first_and_filtered(system: FakeSystem) -> None:
    service = service_with(system, FakeRestore())
    backup = await completed_backup(system, service)
    first = await handlers.request_restore(
        system.ports,
        TARGETS,
        backup.id,
        RestoreSpec(target=RestoreTarget(database="a", replace=True)),
        requested_by="bob",
    )
    await run_all(system, service)
    system.clock.advance(1)
    second = await handlers.request_restore(
        system.ports,
        TARGETS,
        backup.id,
        RestoreSpec(target=RestoreTarget(database="b", replace=True)),
        requested_by="bob",
    )

    everything, total = await handlers.list_restores(system.ports, RestoreFilter())
    pending, _ = await handlers.list_restores(system.ports, RestoreFilter(statuses=[RestoreStatus.PENDING]))
    other, none = await handlers.list_restores(system.ports, RestoreFilter(backup_id="other"))

    assert ([r.id for r in everything], total) == ([second.id, first.id], 2)
    assert [r.id for r in pending] == [second.id]
    assert (other, none) == ([], 0)
    assert (await handlers.read_restore(system.ports, first.id)).status is RestoreStatus.COMPLETED


async def test_a_stopped_worker_gives_its_restore_back_and_a_lost_one_is_reaped_then_failed(
    system: FakeSystem,
) -> None:
    service = service_with(system, engine := FakeRestore(hold=True))
    backup = await completed_backup(system, service)
    restore = await handlers.request_restore(
        system.ports, TARGETS, backup.id, RestoreSpec(target=COPY), requested_by="bob"
    )
    [event] = system.catalog.events(RestoreRequested)
    job_key = restore_job_key(restore.id, DATABASE)

    await service.handlers[RestoreRequested](event)
    await engine.started.wait()
    await service.stop()
    assert system.catalog.leases[job_key].state == "released"
    assert len(system.catalog.events(RestoreRequested)) == 2

    claims = 1
    while not system.catalog.restores[restore.id].status.finished:
        engine.started.clear()
        await service.handlers[RestoreRequested](event)
        await engine.started.wait()
        claims += 1
        assert system.catalog.restores[restore.id].part(DATABASE).progress == {
            "phase": "loading",
            "bytes_done": 10,
            "bytes_total": 20,
            "tables_done": 1,
            "tables_total": 2,
            "rows_done": 5,
        }
        system.clock.advance(3600)  # the worker went silent
        await reap_jobs(system.ports, MAX_JOB_ATTEMPTS)

    assert claims == MAX_JOB_ATTEMPTS
    stored = system.catalog.restores[restore.id]
    assert stored.status is RestoreStatus.FAILED
    assert stored.error == f"database part failed: the worker was lost {MAX_JOB_ATTEMPTS} times; giving up"
    await service.stop()


async def test_a_restore_request_for_the_files_alone_is_left_to_the_files_worker(system: FakeSystem) -> None:
    service = service_with(system, engine := FakeRestore())
    await completed_backup(system, service)
    full, _ = await handlers.create_backup(system.ports, BackupType.FULL, requested_by="alice")
    async with system.ports.uow() as uow:
        stored = await uow.backups.get(full.id, for_update=True)
        assert stored is not None
        stored.status = BackupStatus.COMPLETED
        await uow.backups.save(stored)
        await uow.commit()
    restore = Restore.request(stored, [BackupPart.FILES], requested_by="bob", now=system.ports.clock())
    restore.safety_backup = False

    await service.handlers[RestoreRequested](
        RestoreRequested(
            restore_id=uuid.UUID(restore.id),
            backup_id=uuid.UUID(full.id),
            parts=(BackupPart.FILES,),
            requested_by="bob",
        )
    )

    assert engine.calls == []
    assert [type(e) for e in system.catalog.outbox].count(BackupRequested) == 2


class DownServer(NoServer):
    async def connect(self, database: str | None = None) -> Any:
        raise SqlError(2003, "Can't connect to server on 'db.internal'")


async def test_a_target_database_that_cannot_be_checked_is_refused_as_unavailable(system: FakeSystem) -> None:
    service = service_with(system, FakeRestore())
    backup = await completed_backup(system, service)
    targets = dataclasses.replace(TARGETS, source=DownServer())

    with pytest.raises(Unavailable, match="cannot see whether database copy is empty"):
        await handlers.request_restore(
            system.ports, targets, backup.id, RestoreSpec(target=RestoreTarget(database="copy")), requested_by="bob"
        )
    assert system.catalog.restores == {}


async def test_a_restore_request_the_gateway_never_recorded_is_rejected(system: FakeSystem) -> None:
    service = service_with(system, engine := FakeRestore())
    unknown = uuid.uuid4()
    event = RestoreRequested(
        restore_id=unknown, backup_id=uuid.uuid4(), parts=(BackupPart.DATABASE,), requested_by="automation"
    )

    with pytest.raises(MessageRejected, match=f"restore {unknown} is not in the catalog"):
        await service.handlers[RestoreRequested](event)

    assert engine.calls == []
    assert system.catalog.leases == {}
