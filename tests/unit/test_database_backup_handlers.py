"""The database_backup service's handlers, run through its bootstrap with fakes of the ports and of
the dump (the dump itself is tested against a real server in tests/integration)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pyzipper
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.jobs import reap_jobs
from backup_common.adapters.runtime.service import Service
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupFailed, BackupPart, BackupRequested, BackupType, RestoreRequested
from backup_common.domain.jobs import MAX_JOB_ATTEMPTS, part_job_key
from backup_common.domain.model import Backup, BackupStatus, PartStatus
from backup_common.domain.ports import MessageRejected
from backup_common.engine.archive import ArchiveWriter
from backup_common.engine.database.dump import DumpError, SourceConnectionLost
from backup_common.engine.database.model import DumpOptions, DumpProgress, DumpResult, TableSummary
from backup_common.engine.database.sql import SqlServer
from backup_common.engine.database.target import MysqlTarget
from backup_database.bootstrap import bootstrap
from tests.unit.fakes import FakeSystem, fake_ports

SOURCE = MysqlTarget("mysql://app@db.internal:3306/shop")


class Source:
    """Where the fake dump says it read from; it is never connected to."""

    target = SOURCE

    async def connect(self, database: str | None = None) -> Any:
        raise AssertionError("the fake dump does not connect")


class FakeDump:
    """Writes a one-member archive as the engine would, or fails, or waits until released."""

    def __init__(self, *, error: Exception | None = None, hold: bool = False, leave: tuple[str, ...] = ()) -> None:
        self.calls: list[DumpOptions] = []
        self.error = error
        self.leave = leave  # files a failing dump leaves beside the archive, as a killed one would
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(
        self,
        source: SqlServer,
        archive: Path,
        *,
        password: str | None,
        options: DumpOptions,
        progress: Any,
    ) -> DumpResult:
        self.calls.append(options)
        self.started.set()
        await progress(DumpProgress(bytes_done=10, rows_done=2, tables_done=0, tables_total=1))
        await self.release.wait()
        if self.error is not None:
            for name in self.leave:
                (archive.parent / name).write_bytes(b"half an archive")
            raise self.error
        sql = b"INSERT INTO accounts VALUES (1), (2);\n"
        with ArchiveWriter(archive, password=password, compression_level=options.compression_level) as writer:
            writer.write_member("2-data/0001-accounts.000001.sql", sql)
            info = writer.commit()
        table = TableSummary("accounts", 2, len(sql), ["2-data/0001-accounts.000001.sql"])
        return DumpResult(info.size, info.sha256, [table], "10.11", "shared-snapshot", "", None, table.members)


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def service_with(system: FakeSystem, dump: FakeDump) -> Service:
    return bootstrap(Settings(), system.ports, CollectorRegistry(), source=Source(), dump=dump)


async def requested(system: FakeSystem, backup_type: BackupType = BackupType.DATABASE) -> BackupRequested:
    """A backup recorded as the gateway records it, and the request it sent."""
    backup = Backup.request(backup_type, requested_by="alice", now=system.ports.clock())
    async with system.ports.uow() as uow:
        await uow.backups.add(backup)
        await uow.commit()
    [event] = system.catalog.events(BackupRequested)[-1:]
    assert isinstance(event, BackupRequested)
    return event


async def handle(service: Service, event: BackupRequested | RestoreRequested) -> None:
    await service.handlers[type(event)](event)
    await service.wait_idle()


async def test_a_database_backup_is_dumped_encrypted_described_and_completed(system: FakeSystem) -> None:
    service = service_with(system, dump := FakeDump())
    event = await requested(system)

    await handle(service, event)

    backup = system.catalog.backups[str(event.backup_id)]
    assert backup.status is BackupStatus.COMPLETED
    part = backup.part(BackupPart.DATABASE)
    assert (part.status, part.item_count, part.file_name) == (PartStatus.COMPLETED, 2, "database.zip")
    assert part.progress == {"bytes_done": 38, "rows_done": 2, "tables_done": 1, "tables_total": 1}
    directory = system.storage.root / backup.storage_path
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["parts"]["database"]["sha256"] == part.sha256
    assert manifest["parts"]["database"]["source"] == {"host": "db.internal", "port": 3306, "database": "shop"}
    assert manifest["encryption"]["key_id"] == system.keys.master.key_id
    assert dump.calls == [DumpOptions(keep_definers=True, compression_level=3)]
    with pyzipper.AESZipFile(directory / "database.zip") as archive, pytest.raises(RuntimeError):
        archive.read(archive.namelist()[0])
    assert [type(e).__name__ for e in system.catalog.outbox] == ["BackupRequested", "BackupCompleted"]
    assert system.catalog.leases[part_job_key(backup.id, BackupPart.DATABASE)].state == "done"


async def test_a_request_without_a_database_part_is_left_to_the_other_worker(system: FakeSystem) -> None:
    service = service_with(system, dump := FakeDump())
    event = await requested(system, BackupType.FILES)

    await handle(service, event)

    assert dump.calls == []
    assert system.catalog.leases == {}
    assert system.catalog.backups[str(event.backup_id)].status is BackupStatus.PENDING


async def test_a_redelivered_request_for_a_completed_part_dumps_nothing_again(system: FakeSystem) -> None:
    service = service_with(system, dump := FakeDump())
    event = await requested(system)
    await handle(service, event)

    await handle(service, event)

    assert len(dump.calls) == 1


async def test_a_failed_dump_fails_the_backup_with_its_reason_and_announces_it(system: FakeSystem) -> None:
    service = service_with(system, FakeDump(error=DumpError("cannot connect to the source database")))
    event = await requested(system)

    await handle(service, event)

    backup = system.catalog.backups[str(event.backup_id)]
    assert backup.status is BackupStatus.FAILED
    assert backup.error == "database part failed: cannot connect to the source database"
    [failed] = system.catalog.events(BackupFailed)
    assert failed.reason == backup.error
    assert system.catalog.leases[part_job_key(backup.id, BackupPart.DATABASE)].state == "failed"
    assert not (system.storage.root / backup.storage_path / "database.zip").exists()


async def test_a_stopped_worker_gives_its_running_job_back_and_asks_for_it_again(system: FakeSystem) -> None:
    service = service_with(system, dump := FakeDump(hold=True))
    event = await requested(system)
    await service.handlers[BackupRequested](event)
    await dump.started.wait()

    await service.stop()

    lease = system.catalog.leases[part_job_key(str(event.backup_id), BackupPart.DATABASE)]
    assert (lease.state, lease.last_error) == ("released", "the worker was stopped")
    again = system.catalog.events(BackupRequested)[-1]
    assert (again.backup_id, again.parts) == (event.backup_id, event.parts)
    assert again.event_id != event.event_id


async def test_a_lost_worker_is_reaped_and_its_part_requested_again_then_failed_after_three_losses(
    system: FakeSystem,
) -> None:
    service = service_with(system, dump := FakeDump(hold=True))
    event = await requested(system)
    assert service.reaps_leases
    job_key = part_job_key(str(event.backup_id), BackupPart.DATABASE)

    for attempt in range(1, MAX_JOB_ATTEMPTS + 1):
        await service.handlers[BackupRequested](event)
        await dump.started.wait()
        dump.started.clear()
        assert system.catalog.leases[job_key].attempts == attempt
        system.clock.advance(3600)  # the fake clock; the worker went silent
        await reap_jobs(system.ports, MAX_JOB_ATTEMPTS)

    backup = system.catalog.backups[str(event.backup_id)]
    assert backup.status is BackupStatus.FAILED
    assert backup.error == "database part failed: the worker was lost 3 times; giving up"
    assert len(system.catalog.events(BackupRequested)) == 1 + MAX_JOB_ATTEMPTS - 1
    await service.stop()


async def test_a_restore_of_the_files_alone_is_left_to_the_files_worker(system: FakeSystem) -> None:
    service = service_with(system, FakeDump())
    event = RestoreRequested(
        restore_id=uuid.uuid4(), backup_id=uuid.uuid4(), parts=(BackupPart.FILES,), requested_by="bob"
    )

    await handle(service, event)

    assert system.catalog.commits == 0


LOST = "the connection to the source database was lost: Lost connection to MySQL server during query"


async def test_a_lost_source_connection_hands_the_part_back_and_asks_for_it_again(system: FakeSystem) -> None:
    service = service_with(system, FakeDump(error=SourceConnectionLost(LOST)))
    event = await requested(system)

    await handle(service, event)

    backup = system.catalog.backups[str(event.backup_id)]
    assert backup.status is BackupStatus.RUNNING
    lease = system.catalog.leases[part_job_key(backup.id, BackupPart.DATABASE)]
    assert (lease.state, lease.last_error) == ("released", LOST)
    again = system.catalog.events(BackupRequested)[-1]
    assert (again.backup_id, again.parts) == (event.backup_id, event.parts)
    assert again.event_id != event.event_id
    assert system.catalog.events(BackupFailed) == []


async def test_a_source_connection_lost_on_every_attempt_fails_the_part_saying_so_after_the_last(
    system: FakeSystem,
) -> None:
    service = service_with(system, dump := FakeDump(error=SourceConnectionLost(LOST)))
    await requested(system)

    for _ in range(MAX_JOB_ATTEMPTS):
        await handle(service, system.catalog.events(BackupRequested)[-1])

    assert len(dump.calls) == MAX_JOB_ATTEMPTS
    [backup] = system.catalog.backups.values()
    assert backup.status is BackupStatus.FAILED
    assert backup.error == f"database part failed: {LOST} (attempt 3 of 3; giving up)"
    assert system.catalog.leases[part_job_key(backup.id, BackupPart.DATABASE)].state == "failed"
    assert len(system.catalog.events(BackupRequested)) == MAX_JOB_ATTEMPTS


def hidden_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


async def test_a_retried_part_starts_by_removing_the_temporary_files_earlier_attempts_left(
    system: FakeSystem,
) -> None:
    service = service_with(system, FakeDump())
    event = await requested(system)
    directory = system.storage.root / system.catalog.backups[str(event.backup_id)].storage_path
    directory.mkdir(parents=True)
    for name in (".database.zip.k1ll3d.partial", ".database.json.partial", ".manifest.json.partial"):
        (directory / name).write_bytes(b"")
    (directory / ".files.zip.0th3r.partial").write_bytes(b"")  # the files part's: not this worker's

    await handle(service, event)

    assert system.catalog.backups[str(event.backup_id)].status is BackupStatus.COMPLETED
    assert hidden_files(directory) == [".files.zip.0th3r.partial"]


async def test_a_part_that_fails_for_good_leaves_nothing_behind(system: FakeSystem) -> None:
    leave = (".database.zip.h4lf.partial", ".manifest.json.partial", "database.zip", "database.json")
    service = service_with(system, FakeDump(error=OSError(28, "No space left on device"), leave=leave))
    event = await requested(system)

    await handle(service, event)

    backup = system.catalog.backups[str(event.backup_id)]
    assert backup.status is BackupStatus.FAILED
    assert list((system.storage.root / backup.storage_path).iterdir()) == []


async def test_at_start_the_worker_sweeps_temporary_files_of_backups_no_live_worker_is_making(
    system: FakeSystem,
) -> None:
    root = system.storage.root
    service = bootstrap(Settings(storage_dir=root), system.ports, CollectorRegistry(), source=Source(), dump=FakeDump())
    abandoned, running = str(uuid.uuid4()), str(uuid.uuid4())
    assert await system.ports.leases.claim(part_job_key(running, BackupPart.DATABASE), "another-worker")
    an_hour_ago = time.time() - 3600
    for backup_id in (abandoned, running):
        directory = root / "2026-01-01" / backup_id
        directory.mkdir(parents=True)
        for name in (".database.zip.k1ll3d.partial", ".files.json.partial", "database.zip"):
            (directory / name).write_bytes(b"x")
            os.utime(directory / name, (an_hour_ago, an_hour_ago))

    [sweep] = service.loops
    await sweep()

    assert sorted(path.name for path in (root / "2026-01-01" / abandoned).iterdir()) == ["database.zip"]
    assert hidden_files(root / "2026-01-01" / running) == [".database.zip.k1ll3d.partial", ".files.json.partial"]


async def test_a_backup_request_for_a_backup_not_in_the_catalog_is_rejected_so_dead_lettered(
    system: FakeSystem,
) -> None:
    # Published by hand or by automation: the gateway records every backup before requesting it.
    service = service_with(system, dump := FakeDump())
    event = BackupRequested(
        backup_id=uuid.uuid4(), backup_type=BackupType.DATABASE, parts=(BackupPart.DATABASE,), requested_by="cron"
    )

    with pytest.raises(MessageRejected, match=r"is not in the catalog .*publish command\.backup\.create"):
        await handle(service, event)

    assert dump.calls == []
    assert system.catalog.leases == {}
    assert system.catalog.backups == {}


async def test_a_backup_request_for_a_part_its_backup_does_not_have_is_rejected(system: FakeSystem) -> None:
    files_only = await requested(system, BackupType.FILES)
    service = service_with(system, dump := FakeDump())
    event = files_only.model_copy(update={"parts": (BackupPart.DATABASE,)})

    with pytest.raises(MessageRejected, match="is a files backup, which has no database part"):
        await handle(service, event)

    assert dump.calls == []
