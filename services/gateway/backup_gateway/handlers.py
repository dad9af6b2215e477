"""What the gateway does for each admin request, apart from HTTP, written against the ports.

The views parse and validate a request, call one of these, and answer with what it returns. Every
state change and its event commit in one unit of work, which wakes the outbox relay.

``HANDLERS`` is the gateway's message table: the commands automation sends over AMQP
(``command.backup.create``, ``command.backup.verify``), carried out as the API's requests are, the
backup's trigger being ``event``. A command's message_id makes it idempotent, and it is audited with
it; one that cannot be carried out (an unknown or unfinished backup, a message_id reused for another
command) is rejected, so dead-lettered with the reason; a catalog that fails is retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.commands import CreateBackupCommand, VerifyBackupCommand
from backup_common.domain.documents import DOCUMENTS, Document, merge_patch, missing_sections
from backup_common.domain.errors import Conflict, InvalidRequest, NotFound, PreconditionFailed, Unavailable
from backup_common.domain.events import BackupPart, BackupType, VerifyRequested
from backup_common.domain.model import (
    SYSTEM_DATABASES,
    AuditEntry,
    Backup,
    BackupFilter,
    BackupStatus,
    CatalogStats,
    Idempotency,
    Restore,
    RestoreFilter,
    RestoreTarget,
    Trigger,
)
from backup_common.domain.ports import DuplicateRequest, MessageRejected, Ports, StoredDocument, retention_plan
from backup_common.domain.ports import read_document as read_stored_document
from backup_common.domain.retention import RetentionPlan
from backup_common.engine.database.restore import database_objects, unknown_tables
from backup_common.engine.database.sql import SqlError, SqlServer
from backup_common.engine.files.in_place import non_empty_trees, unknown_paths
from backup_common.engine.storage import directory_inside

log = logging.getLogger(__name__)


async def create_backup(
    ports: Ports,
    backup_type: BackupType,
    *,
    requested_by: str,
    description: str = "",
    idempotency: Idempotency | None = None,
    trigger: Trigger = Trigger.API,
    audit: AuditEntry | None = None,
) -> tuple[Backup, bool]:
    """Records a pending backup and its BackupRequested (and ``audit``, naming the new backup, in the
    same unit of work); returns it and whether it was created now.

    A repeated idempotency key returns the backup it created first (Conflict when the key is reused
    for a different request).
    """
    if idempotency is not None:
        existing = await _idempotent(ports, requested_by, idempotency)
        if existing is not None:
            return existing, False
    backup = Backup.request(
        backup_type, requested_by=requested_by, description=description, now=ports.clock(), trigger=trigger
    )
    try:
        async with ports.uow() as uow:
            await uow.backups.add(backup, idempotency)
            if audit is not None:
                await uow.audit.add(replace(audit, target=backup.id))
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


@dataclass(frozen=True)
class RestoreSpec:
    """A restore as the API asks for it (see RestoreRequest)."""

    parts: Sequence[BackupPart] | None = None
    target: RestoreTarget = field(default_factory=RestoreTarget)
    tables: Sequence[str] = ()
    paths: Sequence[str] = ()
    safety_backup: bool | None = None


@dataclass(frozen=True)
class RestoreTargets:
    """What the gateway checks a restore's target against before it accepts the restore."""

    source_database: str
    catalog_database: str
    restore_dir: Path
    source: SqlServer  # the source server, to see whether a target database holds anything


async def request_restore(
    ports: Ports, targets: RestoreTargets, backup_id: str, spec: RestoreSpec, *, requested_by: str
) -> Restore:
    """Records a pending restore of a completed backup once its target and selection are valid; in
    place, records the safety backup it waits for as well.

    InvalidRequest for a bad target or selection, Conflict when the backup cannot be restored, the
    target is not empty (without ``replace``) or another unfinished restore writes to it.
    """
    backup = await read_backup(ports, backup_id)
    target = await _checked_target(targets, spec.target)
    restore = Restore.request(
        backup,
        spec.parts,
        requested_by=requested_by,
        now=ports.clock(),
        target=target,
        tables=spec.tables,
        paths=spec.paths,
        safety_backup=spec.safety_backup,
    )
    await _check_selection(ports, backup, restore)
    await _check_target_is_free(targets, restore)
    async with ports.uow() as uow:
        # Locked, and read again: a deletion requested meanwhile makes the backup unrestorable.
        locked = await uow.backups.get(backup_id, for_update=True)
        if locked is None:
            raise NotFound(f"no backup with id {backup_id}")
        locked.restorable_parts(restore.part_names)
        if restore.safety_backup:
            safety = Backup.request(
                restore.safety_backup_type,
                requested_by=requested_by,
                now=ports.clock(),
                description=f"safety backup before restore {restore.id} of backup {backup_id}",
                trigger=Trigger.PRE_RESTORE,
            )
            await uow.backups.add(safety)
            restore.wait_for(safety)
        await uow.restores.add(restore, restore.target_keys(targets.source_database))
        await uow.commit()
    return restore


DATABASE_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")  # also stated in the OpenAPI document


async def _checked_target(targets: RestoreTargets, target: RestoreTarget) -> RestoreTarget:
    """The target with its directory resolved; InvalidRequest for one a restore may not write to."""
    if target.database is not None:
        name = target.database
        if not DATABASE_NAME.match(name):
            raise InvalidRequest(f"invalid database name {name!r}: use 1 to 64 letters, digits, '_', '$' or '-'")
        if name.lower() in SYSTEM_DATABASES or name == targets.catalog_database:
            raise InvalidRequest(f"database {name} belongs to the server or to the backup catalog; choose another")
        if name == targets.source_database:
            raise InvalidRequest(f"{name} is the source database: omit the target to restore in place")
    if target.directory is not None:
        try:
            resolved = await asyncio.to_thread(directory_inside, targets.restore_dir, target.directory)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return RestoreTarget(directory=str(resolved), replace=target.replace)
    return target


async def _check_selection(ports: Ports, backup: Backup, restore: Restore) -> None:
    """Every table and path selected exists in the backup (InvalidRequest naming those that do not)."""
    for part, wanted, unknown in (
        (BackupPart.DATABASE, restore.tables, unknown_tables),
        (BackupPart.FILES, restore.paths, unknown_paths),
    ):
        if not wanted:
            continue
        try:
            manifest = await ports.storage.read_part_manifest(backup, part)
        except OSError as exc:
            raise Conflict(
                f"backup {backup.id}: the {part.value} part manifest is unreadable ({exc.strerror or exc})",
                code="backup_unreadable",
            ) from exc
        missing = unknown(manifest, wanted)
        if missing:
            kind = "tables" if part is BackupPart.DATABASE else "paths"
            raise InvalidRequest(
                f"backup {backup.id} has no such {kind}: {', '.join(missing[:20])}", code=f"unknown_{kind}"
            )


async def _check_target_is_free(targets: RestoreTargets, restore: Restore) -> None:
    """Conflict when another database or directory to restore into is not empty and may not be replaced."""
    target = restore.target
    if target.replace or target.in_place:
        return
    if target.database is not None:
        try:
            held = await database_objects(targets.source, target.database)
        except SqlError as exc:
            source = targets.source.target
            raise Unavailable(
                f"cannot see whether database {target.database} is empty: the source server"
                f" {source.host}:{source.port} answered {exc.message}"
            ) from exc
        if held:
            listed = ", ".join(f"{count} {kind}" for kind, count in held.items())
            raise Conflict(
                f"database {target.database} is not empty ({listed}); choose a new one or send"
                ' "replace": true to replace its contents',
                code="target_not_empty",
            )
    if target.directory is not None:
        busy = await asyncio.to_thread(non_empty_trees, Path(target.directory))
        if busy:
            raise Conflict(
                f"{target.directory} already holds {', '.join(busy)}; choose another directory or send"
                ' "replace": true to replace them',
                code="target_not_empty",
            )


async def read_restore(ports: Ports, restore_id: str) -> Restore:
    async with ports.uow() as uow:
        restore = await uow.restores.get(restore_id)
    if restore is None:
        raise NotFound(f"no restore with id {restore_id}")
    return restore


async def list_restores(ports: Ports, query: RestoreFilter) -> tuple[list[Restore], int]:
    async with ports.uow() as uow:
        return await uow.restores.list(query)


async def request_verification(
    ports: Ports, backup_id: str, *, requested_by: str, audit: AuditEntry | None = None
) -> Backup:
    """Asks the verification service to verify a completed backup again (Conflict unless completed),
    recording ``audit`` in the same unit of work."""
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id)
        if backup is None:
            raise NotFound(f"no backup with id {backup_id}")
        if backup.status is not BackupStatus.COMPLETED:
            raise Conflict(
                f"backup {backup_id} is {backup.status}; only a completed backup can be verified",
                code="backup_not_verifiable",
            )
        await uow.outbox.add(VerifyRequested(backup_id=uuid.UUID(backup_id), requested_by=requested_by))
        if audit is not None:
            await uow.audit.add(audit)
        await uow.commit()
    return backup


async def request_delete(ports: Ports, backup_id: str, *, requested_by: str) -> Backup:
    """Marks the backup `deleting` and asks for its deletion (Conflict while it is in progress, being
    restored, or the base of an incremental that is kept)."""
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id, for_update=True)
        if backup is None:
            raise NotFound(f"no backup with id {backup_id}")
        restoring = await uow.restores.unfinished_of(backup_id)
        if restoring:
            raise Conflict(
                f"backup {backup_id} is being restored (restore {restoring[0]}); delete it once that has finished",
                code="backup_being_restored",
            )
        dependents = await uow.backups.dependents(backup_id)
        if dependents:
            raise Conflict(
                f"backup {backup_id} is needed to restore the incremental backups {', '.join(dependents)}:"
                " delete those first, newest first",
                code="backup_has_dependents",
            )
        backup.request_delete(requested_by, ports.clock())
        await uow.backups.save(backup)
        await uow.commit()
    return backup


async def preview_retention(ports: Ports) -> RetentionPlan:
    """What the retention policy would keep and delete now."""
    return await retention_plan(ports.uow, ports.clock())


async def read_document(ports: Ports, name: str) -> StoredDocument:
    return await read_stored_document(ports.uow, name)


async def replace_document(
    ports: Ports, name: str, body: dict[str, Any], *, updated_by: str, if_match: int | None = None
) -> StoredDocument:
    """Validates the whole document (pydantic.ValidationError names each bad field) and stores it; a
    body that leaves out a section is refused rather than taken to mean its defaults."""
    document = DOCUMENTS[name].model_validate(body)
    missing = missing_sections(DOCUMENTS[name], body)
    if missing:
        raise InvalidRequest(
            f"PUT replaces the whole {name} document, and this one leaves out {', '.join(missing)}:"
            " send them all (as GET shows them), or PATCH just what changes",
            code="incomplete_document",
        )
    return await _store_document(ports, name, lambda current: document, updated_by, if_match)


async def patch_document(
    ports: Ports, name: str, patch: dict[str, Any], *, updated_by: str, if_match: int | None = None
) -> StoredDocument:
    """Applies a JSON merge patch (RFC 7396) to the stored document and stores the valid result."""

    def patched(current: Document) -> Document:
        return DOCUMENTS[name].model_validate(merge_patch(current.model_dump(mode="json"), patch))

    return await _store_document(ports, name, patched, updated_by, if_match)


async def _store_document(
    ports: Ports, name: str, change: Callable[[Document], Document], updated_by: str, if_match: int | None
) -> StoredDocument:
    async with ports.uow() as uow:
        # Locked until the commit: two writers with the same If-Match cannot both succeed.
        current = await uow.documents.get(name, for_update=True)
        if if_match is not None and if_match != current.revision:
            raise PreconditionFailed(
                f"the {name} document is at revision {current.revision}, not {if_match}: someone changed it"
                " meanwhile; read it again and reapply your change"
            )
        stored = await uow.documents.put(name, change(current.document), updated_by)
        await uow.commit()
    return stored


async def record_audit(ports: Ports, entry: AuditEntry) -> None:
    async with ports.uow() as uow:
        await uow.audit.add(entry)
        await uow.commit()


# --- Commands from automation, over AMQP -----------------------------------------------------------

COMMAND_SOURCE = "amqp"  # the audit log's source_address of a command
COMMAND_KEY_PREFIX = "amqp:"  # a command's idempotency key is its message_id, apart from the API's keys


GatewayCommand = CreateBackupCommand | VerifyBackupCommand


def _command_audit(command: GatewayCommand, action: str, outcome: str, target: str = "", **detail: Any) -> AuditEntry:
    """The audit record of a command, as the API's are written: who, what, on which backup, the outcome."""
    return AuditEntry(
        actor=command.requested_by,
        action=action,
        outcome=outcome,
        target=target,
        source_address=COMMAND_SOURCE,
        detail={"routing_key": command.routing_key, "message_id": command.message_id, **detail},
    )


async def _rejected(ports: Ports, command: GatewayCommand, action: str, target: str, reason: str) -> MessageRejected:
    """Audits the refusal of a command (best effort: the refusal stands) and returns the rejection."""
    try:
        await record_audit(ports, _command_audit(command, action, "failed", target, reason=reason))
    except Exception:
        log.exception("could not write the audit record of the rejected command %s", command.message_id)
    return MessageRejected(reason)


async def create_backup_on_command(command: CreateBackupCommand, ports: Ports) -> None:
    """Creates the backup a ``command.backup.create`` asks for, as the API does, with trigger `event`.

    The message_id is the idempotency key: a command delivered again (after a crash between the commit
    and its acknowledgement) returns the backup it made; one reusing the message_id for another body is
    rejected.
    """
    if not command.message_id:
        raise MessageRejected("it has no message_id")
    body = command.model_dump_json().encode()
    idempotency = Idempotency(COMMAND_KEY_PREFIX + command.message_id, hashlib.sha256(body).hexdigest())
    audit = _command_audit(command, "backup.create", "allowed", trigger=Trigger.EVENT.value)
    try:
        backup, created = await create_backup(
            ports,
            command.type,
            requested_by=command.requested_by,
            description=command.description,
            idempotency=idempotency,
            trigger=Trigger.EVENT,
            audit=audit,
        )
    except Conflict as exc:
        reason = f"its message_id {command.message_id!r} was already used for a different command"
        raise await _rejected(ports, command, "backup.create", "", reason) from exc
    if created:
        log.info("command %s: backup %s requested by %s", command.message_id, backup.id, command.requested_by)
    else:
        log.info("command %s: already made backup %s; not made again", command.message_id, backup.id)


async def verify_backup_on_command(command: VerifyBackupCommand, ports: Ports) -> None:
    """Asks for the verification a ``command.backup.verify`` asks for, as the API does; an unknown backup
    or one not completed rejects the command."""
    if not command.message_id:
        raise MessageRejected("it has no message_id")
    backup_id = str(command.backup_id)
    audit = _command_audit(command, "backup.verify", "allowed", backup_id)
    try:
        await request_verification(ports, backup_id, requested_by=command.requested_by, audit=audit)
    except (NotFound, Conflict) as exc:
        raise await _rejected(ports, command, "backup.verify", backup_id, exc.message) from exc
    log.info("command %s: verification of backup %s requested by %s", command.message_id, backup_id,
             command.requested_by)  # fmt: skip


HANDLERS: Handlers[Ports] = {
    CreateBackupCommand: create_backup_on_command,
    VerifyBackupCommand: verify_backup_on_command,
}
