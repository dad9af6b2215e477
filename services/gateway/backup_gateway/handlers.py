"""What the gateway does for each admin request, apart from HTTP, written against the ports.

The views parse and validate a request, call one of these, and answer with what it returns. Every
state change and its event commit in one unit of work, which wakes the outbox relay.

``HANDLERS`` is the gateway's event table: empty, as the gateway consumes no event yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.documents import DOCUMENTS
from backup_common.domain.errors import Conflict, NotFound
from backup_common.domain.events import BackupPart, BackupType
from backup_common.domain.model import (
    AuditEntry,
    Backup,
    BackupFilter,
    CatalogStats,
    Idempotency,
    Restore,
    Trigger,
)
from backup_common.domain.ports import DuplicateRequest, Ports, StoredDocument
from backup_common.domain.ports import read_document as read_stored_document

HANDLERS: Handlers[Ports] = {}


async def create_backup(
    ports: Ports,
    backup_type: BackupType,
    *,
    requested_by: str,
    description: str = "",
    idempotency: Idempotency | None = None,
) -> tuple[Backup, bool]:
    """Records a pending backup and its BackupRequested; returns it and whether it was created now.

    A repeated idempotency key returns the backup it created first (Conflict when the key is reused
    for a different request).
    """
    if idempotency is not None:
        existing = await _idempotent(ports, requested_by, idempotency)
        if existing is not None:
            return existing, False
    backup = Backup.request(
        backup_type, requested_by=requested_by, description=description, now=ports.clock(), trigger=Trigger.API
    )
    try:
        async with ports.uow() as uow:
            await uow.backups.add(backup, idempotency)
            await uow.commit()
    except DuplicateRequest:
        # Two requests with one key raced; the other one won.
        assert idempotency is not None
        existing = await _idempotent(ports, requested_by, idempotency)
        if existing is None:
            raise
        return existing, False
    return backup, True


async def _idempotent(ports: Ports, requested_by: str, idempotency: Idempotency) -> Backup | None:
    async with ports.uow() as uow:
        found = await uow.backups.by_idempotency_key(requested_by, idempotency.key)
    if found is None:
        return None
    backup, request_hash = found
    if request_hash != idempotency.request_hash:
        raise Conflict("this Idempotency-Key was already used for a different request", code="idempotency_key_reused")
    return backup


async def read_backup(ports: Ports, backup_id: str) -> Backup:
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id)
    if backup is None:
        raise NotFound(f"no backup with id {backup_id}")
    return backup


async def list_backups(ports: Ports, query: BackupFilter) -> tuple[list[Backup], int]:
    async with ports.uow() as uow:
        return await uow.backups.list(query)


async def catalog_stats(ports: Ports) -> CatalogStats:
    async with ports.uow() as uow:
        return await uow.backups.stats()


async def request_restore(
    ports: Ports, backup_id: str, parts: Sequence[BackupPart] | None, *, requested_by: str
) -> Restore:
    """Records a pending restore of a completed backup and its RestoreRequested."""
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id, for_update=True)
        if backup is None:
            raise NotFound(f"no backup with id {backup_id}")
        restore = Restore.request(backup, parts, requested_by=requested_by, now=ports.clock())
        await uow.restores.add(restore)
        await uow.commit()
    return restore


async def read_restore(ports: Ports, restore_id: str) -> Restore:
    async with ports.uow() as uow:
        restore = await uow.restores.get(restore_id)
    if restore is None:
        raise NotFound(f"no restore with id {restore_id}")
    return restore


async def list_restores(ports: Ports, limit: int, offset: int) -> tuple[list[Restore], int]:
    async with ports.uow() as uow:
        return await uow.restores.list(limit, offset)


async def request_delete(ports: Ports, backup_id: str, *, requested_by: str) -> Backup:
    """Marks the backup `deleting` and asks for its deletion (Conflict while it is in progress)."""
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id, for_update=True)
        if backup is None:
            raise NotFound(f"no backup with id {backup_id}")
        backup.request_delete(requested_by, ports.clock())
        await uow.backups.save(backup)
        await uow.commit()
    return backup


async def read_document(ports: Ports, name: str) -> StoredDocument:
    return await read_stored_document(ports.uow, name)


async def replace_document(ports: Ports, name: str, body: dict[str, Any], *, updated_by: str) -> StoredDocument:
    """Validates the whole document (pydantic.ValidationError names each bad field) and stores it."""
    document = DOCUMENTS[name].model_validate(body)
    async with ports.uow() as uow:
        stored = await uow.documents.put(name, document, updated_by)
        await uow.commit()
    return stored


async def record_audit(ports: Ports, entry: AuditEntry) -> None:
    async with ports.uow() as uow:
        await uow.audit.add(entry)
        await uow.commit()
