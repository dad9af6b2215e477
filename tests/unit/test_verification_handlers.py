"""The verification service's handlers and schedule, run through its bootstrap with fakes of the ports
and of the restore drill, over backups the database_backup service made in real files (the drill and
the archive checks are tested against real servers and files elsewhere)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.jobs import JobMetrics, reap_jobs
from backup_common.adapters.runtime.service import Service
from backup_common.adapters.runtime.stored import StoredPart
from backup_common.adapters.settings import Settings
from backup_common.domain.documents import RestoreLimits, SettingsDocument
from backup_common.domain.events import (
    BackupCompleted,
    BackupRequested,
    BackupType,
    BackupVerificationFailed,
    BackupVerified,
    VerifyRequested,
)
from backup_common.domain.jobs import MAX_JOB_ATTEMPTS, verify_job_key
from backup_common.domain.model import Backup, BackupFilter, BackupStatus
from backup_common.domain.ports import MessageRejected
from backup_common.domain.verification import Check, VerificationStatus
from backup_database.bootstrap import bootstrap as database_backup
from backup_gateway import handlers as gateway
from backup_verification.bootstrap import bootstrap
from backup_verification.handlers import DrillSchedule, VerificationMetrics, Verifier, drill_prefix, scratch_database
from tests.unit.fakes import FakeSystem, fake_ports
from tests.unit.test_database_backup_handlers import FakeDump, Source


class FakeDrill:
    """Stands in for the restore drill: records what it was given, and passes or fails."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls: list[tuple[Path, str]] = []

    async def __call__(self, part: StoredPart, scratch: str, limits: RestoreLimits) -> Check:
        self.calls.append((part.archive, scratch))
        return Check("restore_drill", self.ok, "every table as the dump read it" if self.ok else "table x differs", 0.1)


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def verification_service(system: FakeSystem, drill: FakeDrill) -> Service:
    return bootstrap(Settings(), system.ports, CollectorRegistry(), drill_server=Source(), drill=drill)


async def completed_backup(system: FakeSystem) -> Backup:
    """A database backup made by the database_backup service (a real, encrypted archive)."""
    workers = database_backup(Settings(), system.ports, CollectorRegistry(), source=Source(), dump=FakeDump())
    backup, _ = await gateway.create_backup(system.ports, BackupType.DATABASE, requested_by="alice")
    [requested] = [event for event in system.catalog.events(BackupRequested) if str(event.backup_id) == backup.id]
    await workers.handlers[BackupRequested](requested)
    await workers.wait_idle()
    stored = system.catalog.backups[backup.id]
    assert stored.status is BackupStatus.COMPLETED
    return stored


async def deliver(service: Service, event: Any) -> None:
    await service.handlers[type(event)](event)
    await service.wait_idle()


def completed_event(system: FakeSystem, backup: Backup) -> BackupCompleted:
    [event] = [e for e in system.catalog.outbox if isinstance(e, BackupCompleted) and str(e.backup_id) == backup.id]
    return event


async def test_a_completed_backup_is_verified_with_every_check_passed_and_announced(system: FakeSystem) -> None:
    drill = FakeDrill()
    service = verification_service(system, drill)
    backup = await completed_backup(system)

    await deliver(service, completed_event(system, backup))

    verification = system.catalog.verifications[backup.id]
    assert verification.status is VerificationStatus.VERIFIED, verification.error
    assert [check.name for check in verification.checks] == [
        "manifest_authentic",
        "database.archive_digest",
        "database.members_authentic",
        "restore_drill",
    ]
    assert all(check.ok for check in verification.checks)
    # Named after the catalog, so that the drills of another catalog on the server are not its to sweep.
    catalog = Settings().catalog
    prefix = drill_prefix(f"{catalog.host}:{catalog.port}/{catalog.database}")
    assert drill.calls == [(system.storage.directory(backup) / "database.zip", scratch_database(prefix, backup.id))]
    assert [str(e.backup_id) for e in system.catalog.events(BackupVerified)] == [backup.id]
    lease = system.catalog.leases[verify_job_key(backup.id)]
    assert (lease.state, lease.attempts) == ("released", 0)  # free for the next verification


async def test_no_verification_after_the_backup_when_the_settings_say_so(system: FakeSystem) -> None:
    async with system.ports.uow() as uow:
        document = SettingsDocument.model_validate({"verification": {"after_backup": False}})
        await uow.documents.put("settings", document, "alice")
        await uow.commit()
    service = verification_service(system, FakeDrill())
    backup = await completed_backup(system)

    await deliver(service, completed_event(system, backup))

    assert backup.id not in system.catalog.verifications


def tamper_manifest(system: FakeSystem, backup: Backup) -> None:
    path = system.storage.directory(backup) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["parts"]["database"]["rows"] = 999
    path.write_text(json.dumps(manifest))


async def test_a_manifest_edited_by_hand_fails_verification_naming_it(system: FakeSystem) -> None:
    service = verification_service(system, FakeDrill())
    backup = await completed_backup(system)
    tamper_manifest(system, backup)

    await deliver(service, VerifyRequested(backup_id=uuid.UUID(backup.id), requested_by="alice"))

    verification = system.catalog.verifications[backup.id]
    assert verification.status is VerificationStatus.FAILED
    assert verification.error is not None
    assert verification.error.startswith("manifest_authentic: the manifest's MAC does not match")
    [failed] = system.catalog.events(BackupVerificationFailed)
    assert failed.reason == verification.error


async def test_another_backups_archive_put_in_place_fails_the_digest_and_skips_what_would_read_it(
    system: FakeSystem,
) -> None:
    drill = FakeDrill()
    service = verification_service(system, drill)
    first, second = await completed_backup(system), await completed_backup(system)
    (system.storage.directory(first) / "database.zip").write_bytes(
        (system.storage.directory(second) / "database.zip").read_bytes()
    )

    await deliver(service, VerifyRequested(backup_id=uuid.UUID(first.id), requested_by="alice"))

    verification = system.catalog.verifications[first.id]
    assert verification.status is VerificationStatus.FAILED
    names = {check.name: check.ok for check in verification.checks}
    assert names == {"manifest_authentic": True, "database.archive_digest": False}
    assert drill.calls == []


async def test_a_failed_drill_fails_the_verification_and_a_later_one_can_pass(system: FakeSystem) -> None:
    drill = FakeDrill(ok=False)
    service = verification_service(system, drill)
    backup = await completed_backup(system)
    request = VerifyRequested(backup_id=uuid.UUID(backup.id), requested_by="alice")

    await deliver(service, request)
    assert system.catalog.verifications[backup.id].error == "restore_drill: table x differs"
    drill.ok = True
    system.clock.advance(60)
    await deliver(service, request.model_copy(update={"event_id": uuid.uuid4()}))

    verification = system.catalog.verifications[backup.id]
    assert verification.status is VerificationStatus.VERIFIED
    assert verification.checked_at == system.clock()
    assert len(drill.calls) == 2


async def test_a_backup_another_replica_verifies_is_left_to_it(system: FakeSystem) -> None:
    drill = FakeDrill()
    service = verification_service(system, drill)
    backup = await completed_backup(system)
    held = await system.ports.leases.claim(verify_job_key(backup.id), "verification@elsewhere:1")
    assert held is not None

    await deliver(service, VerifyRequested(backup_id=uuid.UUID(backup.id), requested_by="alice"))

    assert drill.calls == []
    assert backup.id not in system.catalog.verifications


async def test_a_verifier_lost_too_often_fails_the_verification_and_frees_the_backup(system: FakeSystem) -> None:
    service = verification_service(system, FakeDrill())
    backup = await completed_backup(system)
    key = verify_job_key(backup.id)
    for _ in range(MAX_JOB_ATTEMPTS):
        assert await system.ports.leases.claim(key, "verification@gone:1") is not None
        system.clock.advance(3600)
        await reap_jobs(system.ports, MAX_JOB_ATTEMPTS)

    verification = system.catalog.verifications[backup.id]
    assert verification.status is VerificationStatus.FAILED
    assert verification.error == f"verification: the verifier was lost {MAX_JOB_ATTEMPTS} times; giving up"
    await deliver(service, VerifyRequested(backup_id=uuid.UUID(backup.id), requested_by="alice"))
    assert system.catalog.verifications[backup.id].status is VerificationStatus.VERIFIED


async def test_the_schedule_reverifies_those_verified_longest_ago_first_once_per_firing(system: FakeSystem) -> None:
    drill = FakeDrill()
    service = verification_service(system, drill)
    older, newer, never = [await completed_backup(system) for _ in range(3)]
    for backup in (older, newer):
        await deliver(service, VerifyRequested(backup_id=uuid.UUID(backup.id), requested_by="alice"))
        system.clock.advance(10)
    async with system.ports.uow() as uow:
        document = SettingsDocument.model_validate({"verification": {"restore_drill_cron": "0 * * * *"}})
        await uow.documents.put("settings", document, "alice")
        await uow.commit()
    replicas = [
        Verifier(system.ports, JobMetrics(registry, "verification"), VerificationMetrics(registry), drill)
        for registry in (CollectorRegistry(), CollectorRegistry())
    ]
    schedules = [DrillSchedule(system.ports, verifier) for verifier in replicas]
    for schedule in schedules:
        assert await schedule.tick() is False  # the first tick only starts counting
    minutes = 60 - system.clock().minute
    system.clock.advance(timedelta(minutes=minutes).total_seconds())
    drill.calls.clear()

    ran = [await schedule.tick() for schedule in schedules]

    assert ran == [True, False]  # two replicas, one round
    assert [Path(archive).parent.name for archive, _ in drill.calls] == [never.id, older.id, newer.id]
    verified, total = await gateway.list_backups(system.ports, BackupFilter(verification=[VerificationStatus.VERIFIED]))
    assert total == 3
    assert {backup.verification.status for backup in verified if backup.verification} == {VerificationStatus.VERIFIED}


async def test_a_verify_request_for_a_backup_the_catalog_never_had_is_rejected(system: FakeSystem) -> None:
    service = verification_service(system, drill := FakeDrill())
    unknown = uuid.uuid4()

    with pytest.raises(MessageRejected, match=f"backup {unknown} is not in the catalog"):
        await deliver(service, VerifyRequested(backup_id=unknown, requested_by="automation"))

    assert drill.calls == []
    assert system.catalog.verifications == {}
