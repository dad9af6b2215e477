"""The gateway's handlers of the commands automation sends over AMQP, run through its bootstrap with
fakes of the ports: they do what the API does, once per message_id, audited with it, and reject what
cannot be done."""

from __future__ import annotations

import dataclasses
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.service import Service
from backup_common.adapters.settings import Settings
from backup_common.domain.commands import Command, CreateBackupCommand, VerifyBackupCommand
from backup_common.domain.events import BackupPart, BackupRequested, BackupType, VerifyRequested
from backup_common.domain.model import BackupStatus, Idempotency, PartResult, Trigger
from backup_common.domain.ports import MessageRejected
from backup_gateway import handlers
from backup_gateway.bootstrap import bootstrap
from tests.unit.fakes import FakeSystem, fake_ports


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


@pytest.fixture
def service(system: FakeSystem) -> Service:
    return bootstrap(Settings(), system.ports, CollectorRegistry())


def create(message_id: str = "deploy-1", **fields: Any) -> CreateBackupCommand:
    body = {"type": "database", "description": "before the upgrade", "requested_by": "ci-pipeline", **fields}
    return CreateBackupCommand.model_validate(body).with_message_id(message_id)


def verify(backup_id: str, message_id: str = "verify-1") -> VerifyBackupCommand:
    return VerifyBackupCommand(backup_id=uuid.UUID(backup_id), requested_by="nightly-check").with_message_id(message_id)


async def handle(service: Service, command: Command) -> None:
    await service.handlers[type(command)](command)


async def completed_backup(system: FakeSystem) -> str:
    backup, _ = await handlers.create_backup(system.ports, BackupType.DATABASE, requested_by="alice")
    async with system.ports.uow() as uow:
        stored = await uow.backups.get(backup.id, for_update=True)
        assert stored is not None
        stored.start_part(BackupPart.DATABASE, 1, system.ports.clock())
        stored.complete_part(BackupPart.DATABASE, PartResult("database.zip", 10, "0" * 64, 1, {}), system.ports.clock())
        await uow.backups.save(stored)
        await uow.commit()
    return backup.id


def test_the_gateway_consumes_the_two_commands_and_nothing_else(service: Service) -> None:
    assert set(service.handlers) == {CreateBackupCommand, VerifyBackupCommand}
    assert not service.reaps_leases


async def test_a_create_command_records_a_pending_backup_with_trigger_event_its_request_and_its_audit_at_once(
    system: FakeSystem, service: Service
) -> None:
    await handle(service, create())

    [backup] = system.catalog.backups.values()
    assert (backup.type, backup.status, backup.trigger) == (BackupType.DATABASE, BackupStatus.PENDING, Trigger.EVENT)
    assert (backup.description, backup.requested_by) == ("before the upgrade", "ci-pipeline")
    [event] = system.catalog.events(BackupRequested)
    assert (str(event.backup_id), event.parts, event.requested_by) == (backup.id, (BackupPart.DATABASE,), "ci-pipeline")
    [entry] = system.catalog.audit
    assert (entry.actor, entry.action, entry.outcome, entry.target, entry.source_address) == (
        "ci-pipeline",
        "backup.create",
        "allowed",
        backup.id,
        "amqp",
    )
    assert entry.detail["message_id"] == "deploy-1"
    assert entry.detail["routing_key"] == "command.backup.create"
    # The backup, its request and its audit record commit together.
    assert system.catalog.commits == 1


async def test_the_same_message_id_twice_makes_one_backup(system: FakeSystem, service: Service) -> None:
    await handle(service, create("deploy-1"))
    await handle(service, create("deploy-1"))

    assert len(system.catalog.backups) == 1
    assert len(system.catalog.events(BackupRequested)) == 1
    assert len(system.catalog.audit) == 1


async def test_another_message_id_makes_another_backup(system: FakeSystem, service: Service) -> None:
    await handle(service, create("deploy-1"))
    await handle(service, create("deploy-2"))

    assert len(system.catalog.backups) == 2


async def test_a_message_id_reused_for_another_command_is_rejected_and_audited_as_failed(
    system: FakeSystem, service: Service
) -> None:
    await handle(service, create("deploy-1"))

    with pytest.raises(MessageRejected, match="message_id 'deploy-1' was already used for a different command"):
        await handle(service, create("deploy-1", type="full"))

    assert len(system.catalog.backups) == 1
    assert [(entry.action, entry.outcome) for entry in system.catalog.audit] == [
        ("backup.create", "allowed"),
        ("backup.create", "failed"),
    ]


async def test_an_api_idempotency_key_equal_to_a_message_id_names_another_request(
    system: FakeSystem, service: Service
) -> None:
    await handlers.create_backup(
        system.ports,
        BackupType.DATABASE,
        requested_by="ci-pipeline",
        idempotency=Idempotency("deploy-1", "some hash"),
    )

    await handle(service, create("deploy-1"))

    assert len(system.catalog.backups) == 2


async def test_a_command_that_never_got_a_message_id_is_rejected(system: FakeSystem, service: Service) -> None:
    command = CreateBackupCommand(type=BackupType.FULL, requested_by="ci-pipeline")

    with pytest.raises(MessageRejected, match="no message_id"):
        await handle(service, command)

    assert system.catalog.backups == {}


async def test_a_verify_command_asks_to_verify_a_completed_backup_and_is_audited(
    system: FakeSystem, service: Service
) -> None:
    backup_id = await completed_backup(system)

    await handle(service, verify(backup_id))

    [event] = system.catalog.events(VerifyRequested)
    assert (str(event.backup_id), event.requested_by) == (backup_id, "nightly-check")
    [entry] = system.catalog.audit
    assert (entry.actor, entry.action, entry.outcome, entry.target) == (
        "nightly-check",
        "backup.verify",
        "allowed",
        backup_id,
    )
    assert entry.detail["message_id"] == "verify-1"


async def test_verifying_an_unknown_backup_is_rejected_naming_it(system: FakeSystem, service: Service) -> None:
    missing = str(uuid.uuid4())

    with pytest.raises(MessageRejected, match=f"no backup with id {missing}"):
        await handle(service, verify(missing))

    assert system.catalog.events(VerifyRequested) == []
    [entry] = system.catalog.audit
    assert (entry.action, entry.outcome, entry.target) == ("backup.verify", "failed", missing)
    assert entry.detail["reason"] == f"no backup with id {missing}"


async def test_verifying_a_backup_that_is_not_completed_is_rejected(system: FakeSystem, service: Service) -> None:
    pending, _ = await handlers.create_backup(system.ports, BackupType.DATABASE, requested_by="alice")

    with pytest.raises(MessageRejected, match="is pending; only a completed backup can be verified"):
        await handle(service, verify(pending.id))

    assert system.catalog.events(VerifyRequested) == []


class CatalogDown(AbstractAsyncContextManager[Any]):
    async def __aenter__(self) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    async def __aexit__(self, *exc: object) -> None:
        return None


def catalog_down() -> Any:
    return CatalogDown()


@pytest.mark.parametrize("kind", ["create", "verify"])
async def test_a_catalog_that_fails_is_not_a_rejection_so_the_command_is_retried(system: FakeSystem, kind: str) -> None:
    down = bootstrap(Settings(), dataclasses.replace(system.ports, uow=catalog_down), CollectorRegistry())
    command: Command = create() if kind == "create" else verify(str(uuid.uuid4()))

    with pytest.raises(ConnectionRefusedError):
        await handle(down, command)
