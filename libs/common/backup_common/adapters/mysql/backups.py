"""``BackupRepository`` on the catalog's ``backups`` and ``backup_parts`` tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from asyncmy.connection import Connection
from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import DUPLICATE_KEY, naive, placeholders, utc
from backup_common.adapters.mysql.offsite import offsite_copies_of
from backup_common.adapters.mysql.verifications import verifications_of
from backup_common.domain.events import BackupPart, BackupType
from backup_common.domain.jobs import Lease
from backup_common.domain.model import (
    REBUILT_UNCONFIRMED,
    Backup,
    BackupFilter,
    BackupStatus,
    CatalogStats,
    Idempotency,
    LastSuccess,
    Outcomes,
    Part,
    PartStatus,
    PartWarning,
    Trigger,
)
from backup_common.domain.ports import DuplicateRequest
from backup_common.domain.retention import Candidate

# Backups an incremental may still be made on, or restored from.
_LIVE = "'pending', 'running', 'completed'"
# Bytes of these backups are on disk (a backup being deleted still holds its files).
_HOLDING_FILES = (BackupStatus.COMPLETED.value, BackupStatus.DELETING.value)

_BACKUP_COLUMNS = (
    "id, type, status, description, requested_by, trigger_source, schedule_name, archive, parent_id,"
    " storage_path, size_bytes, error, created_at, started_at, completed_at, updated_at, erased_at"
)
_PART_COLUMNS = (
    "backup_id, part, status, file_name, size_bytes, sha256, item_count, progress, warning_count, error, attempts,"
    " started_at, completed_at, updated_at"
)
# Up to MAX_PART_WARNINGS paths a part: read for one backup, never for a page of them.
_PART_COLUMNS_WITH_WARNINGS = f"{_PART_COLUMNS}, warnings"


def _warnings_json(part: Part) -> str | None:
    """The part's warnings to store; None (keep those stored) for a part read without them."""
    if part.warning_count and not part.warnings:
        return None
    return json.dumps([asdict(warning) for warning in part.warnings])


def _part(row: dict[str, Any]) -> Part:
    progress = row["progress"]
    warnings = json.loads(row["warnings"]) if row.get("warnings") else []
    return Part(
        part=BackupPart(row["part"]),
        status=PartStatus(row["status"]),
        file_name=row["file_name"],
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        item_count=int(row["item_count"]),
        progress=json.loads(progress) if isinstance(progress, str | bytes) else progress,
        warnings=[PartWarning(warning["path"], warning["reason"]) for warning in warnings],
        warning_count=int(row["warning_count"]),
        error=row["error"],
        attempts=int(row["attempts"]),
        started_at=utc(row["started_at"]),
        completed_at=utc(row["completed_at"]),
        updated_at=utc(row["updated_at"]),
    )


def _backup(row: dict[str, Any], parts: list[Part]) -> Backup:
    return Backup(
        id=row["id"],
        type=BackupType(row["type"]),
        status=BackupStatus(row["status"]),
        storage_path=row["storage_path"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        description=row["description"],
        requested_by=row["requested_by"],
        trigger=Trigger(row["trigger_source"]),
        schedule=row["schedule_name"],
        archive=bool(row["archive"]),
        parent_id=row["parent_id"],
        size_bytes=int(row["size_bytes"]),
        error=row["error"],
        started_at=utc(row["started_at"]),
        completed_at=utc(row["completed_at"]),
        erased_at=utc(row["erased_at"]),
        parts=parts,
    )


class MysqlBackups:
    """Backups read and written in the unit of work's transaction; ``seen`` collects the ones whose
    events the unit of work writes to the outbox at commit."""

    def __init__(self, conn: Connection, seen: Callable[[Backup], None]) -> None:
        self._conn = conn
        self._seen = seen

    async def add(self, backup: Backup, idempotency: Idempotency | None = None) -> None:
        try:
            await db.execute(
                self._conn,
                "INSERT INTO backups (id, type, status, description, requested_by, trigger_source, schedule_name,"
                " archive, parent_id, storage_path, size_bytes, error, idempotency_key, request_hash, created_at,"
                " started_at, completed_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    backup.id,
                    backup.type.value,
                    backup.status.value,
                    backup.description,
                    backup.requested_by,
                    backup.trigger.value,
                    backup.schedule,
                    backup.archive,
                    backup.parent_id,
                    backup.storage_path,
                    backup.size_bytes,
                    backup.error,
                    idempotency.key if idempotency else None,
                    idempotency.request_hash if idempotency else None,
                    naive(backup.created_at),
                    naive(backup.started_at),
                    naive(backup.completed_at),
                    naive(backup.updated_at),
                ),
            )
        except IntegrityError as exc:
            if exc.args[0] == DUPLICATE_KEY and idempotency is not None:
                raise DuplicateRequest(idempotency.key) from exc
            raise
        for part in backup.parts:
            await db.execute(
                self._conn,
                "INSERT INTO backup_parts (backup_id, part, status, updated_at) VALUES (%s, %s, %s, %s)",
                (backup.id, part.part.value, part.status.value, naive(part.updated_at or backup.updated_at)),
            )
        self._seen(backup)

    async def get(self, backup_id: str, *, for_update: bool = False) -> Backup | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await db.fetch_one(self._conn, f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE id = %s{lock}", (backup_id,))
        if row is None:
            return None
        parts = await db.fetch_all(
            self._conn,
            f"SELECT {_PART_COLUMNS_WITH_WARNINGS} FROM backup_parts WHERE backup_id = %s ORDER BY part{lock}",
            (backup_id,),
        )
        backup = _backup(row, [_part(part) for part in parts])
        backup.verification = (await verifications_of(self._conn, [backup_id])).get(backup_id)
        backup.offsite = (await offsite_copies_of(self._conn, [backup_id])).get(backup_id)
        return backup

    async def by_idempotency_key(self, requested_by: str, key: str) -> tuple[Backup, str | None] | None:
        row = await db.fetch_one(
            self._conn,
            "SELECT id, request_hash FROM backups WHERE requested_by = %s AND idempotency_key = %s",
            (requested_by, key),
        )
        if row is None:
            return None
        backup = await self.get(row["id"])
        assert backup is not None  # read in the same transaction
        return backup, row["request_hash"]

    async def save(self, backup: Backup) -> None:
        await db.execute(
            self._conn,
            "UPDATE backups SET status = %s, parent_id = %s, size_bytes = %s, error = %s, started_at = %s,"
            " completed_at = %s, updated_at = %s, erased_at = %s WHERE id = %s",
            (
                backup.status.value,
                backup.parent_id,
                backup.size_bytes,
                backup.error,
                naive(backup.started_at),
                naive(backup.completed_at),
                naive(backup.updated_at),
                naive(backup.erased_at),
                backup.id,
            ),
        )
        for part in backup.parts:
            await db.execute(
                self._conn,
                "UPDATE backup_parts SET status = %s, file_name = %s, size_bytes = %s, sha256 = %s, item_count = %s,"
                " progress = %s, warnings = COALESCE(%s, warnings), warning_count = %s, error = %s, attempts = %s,"
                " started_at = %s, completed_at = %s, updated_at = %s WHERE backup_id = %s AND part = %s",
                (
                    part.status.value,
                    part.file_name,
                    part.size_bytes,
                    part.sha256,
                    part.item_count,
                    json.dumps(part.progress) if part.progress is not None else None,
                    _warnings_json(part),
                    part.warning_count,
                    part.error,
                    part.attempts,
                    naive(part.started_at),
                    naive(part.completed_at),
                    naive(part.updated_at or backup.updated_at),
                    backup.id,
                    part.part.value,
                ),
            )
        self._seen(backup)

    async def record_progress(self, lease: Lease, backup_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        # One statement, fenced by the lease in its WHERE clause: progress is written every second and
        # must not wait for, or lock, the rows a completing transaction needs.
        await db.execute(
            self._conn,
            "UPDATE backup_parts p JOIN job_leases l ON l.job_key = %s"
            " SET p.progress = %s, p.updated_at = NOW(6)"
            " WHERE p.backup_id = %s AND p.part = %s AND l.holder = %s AND l.version = %s AND l.state = 'held'",
            (lease.job_key, json.dumps(progress), backup_id, part.value, lease.holder, lease.version),
        )

    async def retention_candidates(self) -> list[Candidate]:
        rows = await db.fetch_all(
            self._conn,
            "SELECT id, type, created_at, parent_id, archive FROM backups WHERE status = 'completed'",
        )
        return [
            Candidate(
                id=row["id"],
                type=BackupType(row["type"]),
                created_at=utc(row["created_at"]),
                parent_id=row["parent_id"],
                archive=bool(row["archive"]),
            )
            for row in rows
        ]

    async def dependents(self, backup_id: str) -> list[str]:
        rows = await db.fetch_all(
            self._conn,
            "WITH RECURSIVE chain (id) AS ("
            f"  SELECT id FROM backups WHERE parent_id = %s AND status IN ({_LIVE})"
            f"  UNION SELECT b.id FROM backups b JOIN chain c ON b.parent_id = c.id WHERE b.status IN ({_LIVE})"
            ") SELECT b.id FROM chain JOIN backups b ON b.id = chain.id ORDER BY b.created_at, b.id",
            (backup_id,),
        )
        return [row["id"] for row in rows]

    async def running_of_schedule(self, schedule: str) -> Backup | None:
        row = await db.fetch_one(
            self._conn,
            "SELECT id FROM backups WHERE schedule_name = %s AND status IN ('pending', 'running')"
            " ORDER BY created_at DESC LIMIT 1",
            (schedule,),
        )
        return await self.get(row["id"]) if row else None

    async def last_success_of_schedule(self, schedule: str) -> Backup | None:
        # A completed backup deleted since still counts: it was made. A failed one keeps its error.
        row = await db.fetch_one(
            self._conn,
            "SELECT id FROM backups WHERE schedule_name = %s AND status IN ('completed', 'deleting', 'deleted')"
            " AND error IS NULL AND completed_at IS NOT NULL ORDER BY created_at DESC LIMIT 1",
            (schedule,),
        )
        return await self.get(row["id"]) if row else None

    async def idle_since(self, status: BackupStatus, before: datetime, limit: int) -> list[str]:
        rows = await db.fetch_all(
            self._conn,
            "SELECT id FROM backups WHERE status = %s AND updated_at < %s ORDER BY updated_at LIMIT %s",
            (status.value, naive(before), limit),
        )
        return [row["id"] for row in rows]

    async def unerased_failures(self, before: datetime, limit: int) -> list[str]:
        rows = await db.fetch_all(
            self._conn,
            "SELECT id FROM backups WHERE status = 'failed' AND erased_at IS NULL AND updated_at < %s"
            " AND (error IS NULL OR error NOT LIKE %s) ORDER BY updated_at LIMIT %s",
            (naive(before), f"{REBUILT_UNCONFIRMED}%", limit),
        )
        return [row["id"] for row in rows]

    async def list(self, query: BackupFilter) -> tuple[list[Backup], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.types:
            where.append(f"type IN ({placeholders(query.types)})")
            args.extend(t.value for t in query.types)
        if query.statuses:
            where.append(f"status IN ({placeholders(query.statuses)})")
            args.extend(s.value for s in query.statuses)
        if query.verification:
            # A backup never verified counts as pending.
            where.append(
                "COALESCE((SELECT v.status FROM backup_verifications v WHERE v.backup_id = backups.id), 'pending')"
                f" IN ({placeholders(query.verification)})"
            )
            args.extend(v.value for v in query.verification)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total_row = await db.fetch_one(self._conn, f"SELECT COUNT(*) AS n FROM backups {clause}", args)
        rows = await db.fetch_all(
            self._conn,
            f"SELECT {_BACKUP_COLUMNS} FROM backups {clause} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*args, query.limit, query.offset],
        )
        parts: dict[str, list[Part]] = {row["id"]: [] for row in rows}
        if rows:
            ids = list(parts)
            for part in await db.fetch_all(
                self._conn,
                f"SELECT {_PART_COLUMNS} FROM backup_parts WHERE backup_id IN ({placeholders(ids)}) ORDER BY part",
                ids,
            ):
                parts[part["backup_id"]].append(_part(part))
        total = int(total_row["n"]) if total_row else 0
        verified = await verifications_of(self._conn, [row["id"] for row in rows])
        copies = await offsite_copies_of(self._conn, [row["id"] for row in rows])
        backups = [_backup(row, parts[row["id"]]) for row in rows]
        for backup in backups:
            backup.verification = verified.get(backup.id)
            backup.offsite = copies.get(backup.id)
        return backups, total

    async def stats(self) -> CatalogStats:
        groups = await db.fetch_all(
            self._conn,
            "SELECT type, status, COUNT(*) AS n, COALESCE(SUM(size_bytes), 0) AS bytes FROM backups"
            " GROUP BY type, status",
        )
        last_ok = await db.fetch_all(
            self._conn,
            "SELECT b.type, b.id, b.completed_at, b.size_bytes FROM backups b"
            " JOIN (SELECT type, MAX(completed_at) AS at FROM backups WHERE status = 'completed'"
            "       GROUP BY type) last ON last.type = b.type AND last.at = b.completed_at"
            " WHERE b.status = 'completed'",
        )
        outcome = await db.fetch_one(
            self._conn,
            "SELECT COALESCE(SUM(completed_at IS NOT NULL AND status <> 'failed'), 0) AS ok,"
            " COALESCE(SUM(status = 'failed'), 0) AS failed FROM backups"
            " WHERE created_at >= UTC_TIMESTAMP(6) - INTERVAL 30 DAY",
        )
        checked = await db.fetch_all(
            self._conn,
            "SELECT COALESCE(v.status, 'never') AS state, COUNT(*) AS n FROM backups b"
            " LEFT JOIN backup_verifications v ON v.backup_id = b.id WHERE b.status = 'completed' GROUP BY state",
        )
        verification = {"verified": 0, "failed": 0, "never": 0}
        for row in checked:
            # A first verification still running has not proven anything yet.
            state = "never" if row["state"] == "pending" else row["state"]
            verification[state] += int(row["n"])
        by_type = {t.value: 0 for t in BackupType}
        by_status: dict[str, int] = {}
        bytes_by_type = {t.value: 0 for t in BackupType}
        for row in groups:
            count = int(row["n"])
            by_type[row["type"]] += count
            by_status[row["status"]] = by_status.get(row["status"], 0) + count
            if row["status"] in _HOLDING_FILES:
                bytes_by_type[row["type"]] += int(row["bytes"])
        last_success: dict[str, LastSuccess | None] = {t.value: None for t in BackupType}
        for row in last_ok:
            last_success[row["type"]] = LastSuccess(row["id"], utc(row["completed_at"]), int(row["size_bytes"]))
        return CatalogStats(
            by_type=by_type,
            by_status=by_status,
            bytes_by_type=bytes_by_type,
            last_success=last_success,
            last_30_days=Outcomes(int(outcome["ok"]) if outcome else 0, int(outcome["failed"]) if outcome else 0),
            verification=verification,
        )

    async def previous_with_files(self, backup: Backup) -> Backup | None:
        row = await db.fetch_one(
            self._conn,
            "SELECT b.id FROM backups b"
            " JOIN backup_parts p ON p.backup_id = b.id AND p.part = 'files' AND p.status = 'completed'"
            " WHERE b.status = 'completed' AND b.created_at < %s"
            " ORDER BY b.created_at DESC, b.id DESC LIMIT 1",
            (naive(backup.created_at),),
        )
        return await self.get(row["id"]) if row else None
