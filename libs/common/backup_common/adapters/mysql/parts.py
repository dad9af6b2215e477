"""The life of one backup part (database or files): claim, progress, completion, failure, reaping.

Every write a worker makes is fenced by its lease, so a worker whose lease was taken over cannot
mark a part done. The completion that leaves no part pending completes the backup, writing its
manifest before the transaction that lists it as usable commits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.leases import Lease, LeaseStore
from backup_common.adapters.mysql.outbox import add_to_outbox
from backup_common.domain.events import (
    BackupCompleted,
    BackupFailed,
    BackupPart,
    BackupRequested,
    BackupType,
    parse_event,
)

log = logging.getLogger(__name__)

FINISHED_BACKUP = ("completed", "failed", "deleting", "deleted")


def job_key(backup_id: str, part: BackupPart) -> str:
    return f"backup:{backup_id}:{part.value}"


@dataclass(frozen=True)
class PartResult:
    file_name: str
    size_bytes: int
    sha256: str
    item_count: int
    progress: dict[str, Any]


@dataclass(frozen=True)
class BackupRecord:
    id: str
    type: BackupType
    status: str
    storage_path: str
    description: str
    requested_by: str
    parent_id: str | None
    created_at: Any


# Called with the backup's finished parts while the completing transaction is open; writes the
# manifest durably before the backup is listed as completed.
ManifestWriter = Callable[[BackupRecord, list[dict[str, Any]]], Awaitable[None]]


class PartJobs:
    def __init__(self, pool: db.Pool, leases: LeaseStore, holder: str) -> None:
        self._pool = pool
        self._leases = leases
        self.holder = holder

    async def backup(self, backup_id: str) -> BackupRecord | None:
        async with db.transaction(self._pool) as conn:
            row = await db.fetch_one(conn, "SELECT * FROM backups WHERE id = %s", (backup_id,))
        return _record(row) if row else None

    async def claim(self, event: BackupRequested, part: BackupPart) -> Lease | None:
        """Takes the part's job unless it is finished, held by a live worker, or its backup is over."""
        backup_id = str(event.backup_id)
        async with db.transaction(self._pool) as conn:
            row = await db.fetch_one(
                conn,
                "SELECT b.status AS backup_status, p.status AS part_status FROM backups b"
                " JOIN backup_parts p ON p.backup_id = b.id WHERE b.id = %s AND p.part = %s",
                (backup_id, part.value),
            )
        if row is None:
            log.warning("backup %s has no %s part in the catalog; ignoring the request", backup_id, part.value)
            return None
        if row["backup_status"] in FINISHED_BACKUP or row["part_status"] in ("completed", "failed"):
            return None
        lease = await self._leases.claim(job_key(backup_id, part), self.holder, json.loads(event.to_json()))
        if lease is None:
            return None
        async with db.transaction(self._pool) as conn:
            await self._leases.fence(conn, lease)
            await db.execute(
                conn,
                "UPDATE backup_parts SET status = 'running', attempts = %s, error = NULL,"
                " started_at = COALESCE(started_at, NOW(6)), updated_at = NOW(6) WHERE backup_id = %s AND part = %s",
                (lease.attempts, backup_id, part.value),
            )
            await db.execute(
                conn,
                "UPDATE backups SET status = 'running', started_at = COALESCE(started_at, NOW(6)),"
                " updated_at = NOW(6) WHERE id = %s AND status = 'pending'",
                (backup_id,),
            )
        return lease

    async def progress(self, lease: Lease, backup_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        async with db.transaction(self._pool) as conn:
            await db.execute(
                conn,
                "UPDATE backup_parts p JOIN job_leases l ON l.job_key = %s"
                " SET p.progress = %s, p.updated_at = NOW(6)"
                " WHERE p.backup_id = %s AND p.part = %s AND l.holder = %s AND l.version = %s AND l.state = 'held'",
                (lease.job_key, json.dumps(progress), backup_id, part.value, lease.holder, lease.version),
            )

    async def set_parent(self, lease: Lease, backup_id: str, parent_id: str | None) -> None:
        async with db.transaction(self._pool) as conn:
            await self._leases.fence(conn, lease)
            await db.execute(
                conn, "UPDATE backups SET parent_id = %s, updated_at = NOW(6) WHERE id = %s", (parent_id, backup_id)
            )

    async def complete(
        self, lease: Lease, backup_id: str, part: BackupPart, result: PartResult, write_manifest: ManifestWriter
    ) -> bool:
        """Records the part; returns True when this completion completed the whole backup."""
        async with db.transaction(self._pool) as conn:
            await self._leases.fence(conn, lease)
            row = await db.fetch_one(conn, "SELECT * FROM backups WHERE id = %s FOR UPDATE", (backup_id,))
            if row is None:
                raise LookupError(f"backup {backup_id} vanished from the catalog")
            await db.execute(
                conn,
                "UPDATE backup_parts SET status = 'completed', file_name = %s, size_bytes = %s, sha256 = %s,"
                " item_count = %s, progress = %s, error = NULL, completed_at = NOW(6), updated_at = NOW(6)"
                " WHERE backup_id = %s AND part = %s",
                (
                    result.file_name,
                    result.size_bytes,
                    result.sha256,
                    result.item_count,
                    json.dumps(result.progress),
                    backup_id,
                    part.value,
                ),
            )
            await self._leases.complete(lease, conn=conn)
            parts = await db.fetch_all(conn, "SELECT * FROM backup_parts WHERE backup_id = %s", (backup_id,))
            if row["status"] in FINISHED_BACKUP or any(p["status"] != "completed" for p in parts):
                return False
            record = _record(row)
            await write_manifest(record, parts)
            total = sum(int(p["size_bytes"]) for p in parts)
            await db.execute(
                conn,
                "UPDATE backups SET status = 'completed', size_bytes = %s, completed_at = NOW(6), updated_at = NOW(6)"
                " WHERE id = %s",
                (total, backup_id),
            )
            await add_to_outbox(
                conn, BackupCompleted(backup_id=uuid.UUID(backup_id), backup_type=record.type, size_bytes=total)
            )
        return True

    async def fail(self, lease: Lease, backup_id: str, part: BackupPart, reason: str) -> None:
        async with db.transaction(self._pool) as conn:
            await self._leases.fence(conn, lease)
            await self._leases.fail(lease, reason, conn=conn)
            await fail_part(conn, backup_id, part, reason)

    async def release(self, lease: Lease, event: BackupRequested, reason: str) -> None:
        """Gives the job back (e.g. at shutdown) and asks for it again, so another worker resumes it."""
        async with db.transaction(self._pool) as conn:
            await self._leases.release(lease, reason, conn=conn)
            await add_to_outbox(conn, event.model_copy(update={"event_id": uuid.uuid4()}))

    async def reap(self, max_attempts: int) -> None:
        """Re-requests parts whose worker was lost, or fails them after too many losses."""
        async with db.transaction(self._pool) as conn:
            result = await self._leases.reap(max_attempts, conn=conn)
            for job in result.requeue:
                if job.payload is None:
                    continue
                event = parse_event(json.dumps(job.payload))
                log.warning("worker %s lost %s; requesting it again", job.holder, job.job_key)
                await add_to_outbox(conn, event.model_copy(update={"event_id": uuid.uuid4()}))
            for job in result.failed:
                _, backup_id, part = job.job_key.split(":")
                await fail_part(
                    conn, backup_id, BackupPart(part), f"the worker was lost {job.attempts} times; giving up"
                )


async def fail_part(conn: Connection, backup_id: str, part: BackupPart, reason: str) -> None:
    """Marks the part failed and, with it, the backup (once), keeping the reason in both."""
    await db.execute(
        conn,
        "UPDATE backup_parts SET status = 'failed', error = %s, updated_at = NOW(6) WHERE backup_id = %s AND part = %s",
        (reason[:4000], backup_id, part.value),
    )
    row = await db.fetch_one(conn, "SELECT type, status FROM backups WHERE id = %s FOR UPDATE", (backup_id,))
    if row is None or row["status"] in FINISHED_BACKUP:
        return
    message = f"{part.value} part failed: {reason}"[:4000]
    await db.execute(
        conn,
        "UPDATE backups SET status = 'failed', error = %s, completed_at = NOW(6), updated_at = NOW(6) WHERE id = %s",
        (message, backup_id),
    )
    await add_to_outbox(
        conn, BackupFailed(backup_id=uuid.UUID(backup_id), backup_type=BackupType(row["type"]), reason=message)
    )


def _record(row: dict[str, Any]) -> BackupRecord:
    return BackupRecord(
        id=row["id"],
        type=BackupType(row["type"]),
        status=row["status"],
        storage_path=row["storage_path"],
        description=row["description"],
        requested_by=row["requested_by"],
        parent_id=row["parent_id"],
        created_at=row["created_at"],
    )
