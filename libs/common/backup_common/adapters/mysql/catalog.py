"""The catalog's operations on backups, restores, documents and the audit log (asyncmy).

Each operation that announces something writes its outbox row in the same transaction as the state
change, so the catalog and the bus never disagree.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.outbox import add_to_outbox
from backup_common.domain.documents import DOCUMENTS, default_document
from backup_common.domain.errors import Conflict, NotFound
from backup_common.domain.events import (
    BackupPart,
    BackupRequested,
    BackupType,
    DeleteRequested,
    RestoreRequested,
)

DUPLICATE_KEY = 1062
IN_PROGRESS = ("pending", "running")


def utc(value: datetime | None) -> datetime | None:
    """Catalog times are stored naive in UTC; give them back their zone."""
    return value.replace(tzinfo=UTC) if value is not None else None


def storage_path_for(backup_id: str, created_at: datetime) -> str:
    """`YYYY-MM-DD/<id>` below the storage root."""
    return f"{created_at:%Y-%m-%d}/{backup_id}"


@dataclass(frozen=True)
class NewBackup:
    backup_type: BackupType
    description: str
    requested_by: str
    trigger: str = "api"
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class BackupFilter:
    types: Sequence[BackupType] = ()
    statuses: Sequence[str] = ()
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    outcome: str
    target: str = ""
    status_code: int | None = None
    source_address: str = ""
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


_BACKUP_COLUMNS = (
    "id, type, status, description, requested_by, trigger_source, parent_id, storage_path, size_bytes,"
    " error, created_at, started_at, completed_at, updated_at"
)
_PART_COLUMNS = (
    "backup_id, part, status, file_name, size_bytes, sha256, item_count, progress, error, attempts,"
    " started_at, completed_at, updated_at"
)


def _backup_dict(row: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    done = sum(1 for part in parts if part["status"] == "completed")
    return {
        "id": row["id"],
        "type": row["type"],
        "status": row["status"],
        "description": row["description"],
        "requested_by": row["requested_by"],
        "trigger": row["trigger_source"],
        "parent_id": row["parent_id"],
        "storage_path": row["storage_path"],
        "size_bytes": int(row["size_bytes"]),
        "error": row["error"],
        "created_at": utc(row["created_at"]),
        "started_at": utc(row["started_at"]),
        "completed_at": utc(row["completed_at"]),
        "updated_at": utc(row["updated_at"]),
        "progress": {"parts_completed": done, "parts_total": len(parts)},
        "parts": parts,
    }


def _part_dict(row: dict[str, Any]) -> dict[str, Any]:
    progress = row["progress"]
    return {
        "part": row["part"],
        "status": row["status"],
        "file_name": row["file_name"],
        "size_bytes": int(row["size_bytes"]),
        "sha256": row["sha256"],
        "item_count": int(row["item_count"]),
        "progress": json.loads(progress) if isinstance(progress, str | bytes) else progress,
        "error": row["error"],
        "attempts": int(row["attempts"]),
        "started_at": utc(row["started_at"]),
        "completed_at": utc(row["completed_at"]),
    }


def _restore_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "backup_id": row["backup_id"],
        "status": row["status"],
        "parts": json.loads(row["parts"]),
        "requested_by": row["requested_by"],
        "error": row["error"],
        "created_at": utc(row["created_at"]),
        "completed_at": utc(row["completed_at"]),
    }


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


class Catalog:
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def create_backup(self, new: NewBackup) -> tuple[dict[str, Any], bool]:
        """Records a pending backup and its BackupRequested event in one transaction.

        Returns the backup and whether it was created now; a repeated idempotency key returns the
        backup it created first (Conflict when the key is reused for a different request).
        """
        if new.idempotency_key is not None:
            existing = await self._find_idempotent(new)
            if existing is not None:
                return existing, False
        backup_id = str(uuid.uuid4())
        now = datetime.now(UTC).replace(tzinfo=None)
        parts = new.backup_type.parts
        try:
            async with db.transaction(self._pool) as conn:
                await db.execute(
                    conn,
                    "INSERT INTO backups (id, type, status, description, requested_by, trigger_source,"
                    " storage_path, idempotency_key, request_hash, created_at, updated_at)"
                    " VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        backup_id,
                        new.backup_type.value,
                        new.description,
                        new.requested_by,
                        new.trigger,
                        storage_path_for(backup_id, now),
                        new.idempotency_key,
                        new.request_hash,
                        now,
                        now,
                    ),
                )
                for part in parts:
                    await db.execute(
                        conn,
                        "INSERT INTO backup_parts (backup_id, part, status, updated_at) VALUES (%s, %s, 'pending', %s)",
                        (backup_id, part.value, now),
                    )
                await add_to_outbox(
                    conn,
                    BackupRequested(
                        backup_id=uuid.UUID(backup_id),
                        backup_type=new.backup_type,
                        parts=parts,
                        description=new.description,
                        requested_by=new.requested_by,
                    ),
                )
        except IntegrityError as exc:
            # Two requests with one idempotency key raced; the other one won.
            if exc.args[0] != DUPLICATE_KEY or new.idempotency_key is None:
                raise
            existing = await self._find_idempotent(new)
            if existing is None:
                raise
            return existing, False
        created = await self.get_backup(backup_id)
        return created, True

    async def _find_idempotent(self, new: NewBackup) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            row = await db.fetch_one(
                conn,
                "SELECT id, request_hash FROM backups WHERE requested_by = %s AND idempotency_key = %s",
                (new.requested_by, new.idempotency_key),
            )
            await conn.rollback()
        if row is None:
            return None
        if row["request_hash"] != new.request_hash:
            raise Conflict(
                "this Idempotency-Key was already used for a different request", code="idempotency_key_reused"
            )
        return await self.get_backup(row["id"])

    async def get_backup(self, backup_id: str) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            row = await db.fetch_one(conn, f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE id = %s", (backup_id,))
            if row is None:
                await conn.rollback()
                raise NotFound(f"no backup with id {backup_id}")
            parts = await db.fetch_all(
                conn,
                f"SELECT {_PART_COLUMNS} FROM backup_parts WHERE backup_id = %s ORDER BY part",
                (backup_id,),
            )
            await conn.rollback()
        return _backup_dict(row, [_part_dict(part) for part in parts])

    async def list_backups(self, query: BackupFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of backups, newest first, and the number matching the filter."""
        where: list[str] = []
        args: list[Any] = []
        if query.types:
            where.append(f"type IN ({_placeholders(query.types)})")
            args.extend(t.value for t in query.types)
        if query.statuses:
            where.append(f"status IN ({_placeholders(query.statuses)})")
            args.extend(query.statuses)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self._pool.acquire() as conn:
            total_row = await db.fetch_one(conn, f"SELECT COUNT(*) AS n FROM backups {clause}", args)
            rows = await db.fetch_all(
                conn,
                f"SELECT {_BACKUP_COLUMNS} FROM backups {clause} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
                [*args, query.limit, query.offset],
            )
            parts_by_backup: dict[str, list[dict[str, Any]]] = {row["id"]: [] for row in rows}
            if rows:
                ids = list(parts_by_backup)
                for part in await db.fetch_all(
                    conn,
                    f"SELECT {_PART_COLUMNS} FROM backup_parts WHERE backup_id IN ({_placeholders(ids)}) ORDER BY part",
                    ids,
                ):
                    parts_by_backup[part["backup_id"]].append(_part_dict(part))
            await conn.rollback()
        total = int(total_row["n"]) if total_row else 0
        return [_backup_dict(row, parts_by_backup[row["id"]]) for row in rows], total

    async def request_restore(
        self, backup_id: str, parts: Sequence[BackupPart] | None, requested_by: str
    ) -> dict[str, Any]:
        restore_id = str(uuid.uuid4())
        async with db.transaction(self._pool) as conn:
            backup = await self._lock_backup(conn, backup_id)
            if backup["status"] != "completed":
                raise Conflict(
                    f"backup {backup_id} is {backup['status']}; only a completed backup can be restored",
                    code="backup_not_restorable",
                )
            available = BackupType(backup["type"]).parts
            chosen = tuple(parts) if parts else available
            missing = [part.value for part in chosen if part not in available]
            if missing:
                raise Conflict(
                    f"backup {backup_id} has no {', '.join(missing)} part (it has: "
                    f"{', '.join(p.value for p in available)})",
                    code="part_not_in_backup",
                )
            await db.execute(
                conn,
                "INSERT INTO restores (id, backup_id, status, parts, requested_by, created_at, updated_at)"
                " VALUES (%s, %s, 'pending', %s, %s, NOW(6), NOW(6))",
                (restore_id, backup_id, json.dumps([p.value for p in chosen]), requested_by),
            )
            await add_to_outbox(
                conn,
                RestoreRequested(
                    restore_id=uuid.UUID(restore_id),
                    backup_id=uuid.UUID(backup_id),
                    parts=chosen,
                    requested_by=requested_by,
                ),
            )
            row = await db.fetch_one(conn, "SELECT * FROM restores WHERE id = %s", (restore_id,))
        assert row is not None
        return _restore_dict(row)

    async def request_delete(self, backup_id: str, requested_by: str) -> dict[str, Any]:
        async with db.transaction(self._pool) as conn:
            backup = await self._lock_backup(conn, backup_id)
            status = backup["status"]
            if status in IN_PROGRESS:
                raise Conflict(
                    f"backup {backup_id} is {status}; wait until it completes or fails",
                    code="backup_in_progress",
                )
            if status == "deleted":
                raise Conflict(f"backup {backup_id} is already deleted", code="backup_deleted")
            if status != "deleting":
                await db.execute(
                    conn,
                    "UPDATE backups SET status = 'deleting', updated_at = NOW(6) WHERE id = %s",
                    (backup_id,),
                )
                await add_to_outbox(conn, DeleteRequested(backup_id=uuid.UUID(backup_id), requested_by=requested_by))
        return await self.get_backup(backup_id)

    async def _lock_backup(self, conn: Any, backup_id: str) -> dict[str, Any]:
        row = await db.fetch_one(conn, "SELECT id, type, status FROM backups WHERE id = %s FOR UPDATE", (backup_id,))
        if row is None:
            raise NotFound(f"no backup with id {backup_id}")
        return row

    async def stats(self) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            groups = await db.fetch_all(
                conn,
                "SELECT type, status, COUNT(*) AS n, COALESCE(SUM(size_bytes), 0) AS bytes"
                " FROM backups GROUP BY type, status",
            )
            last_ok = await db.fetch_all(
                conn,
                "SELECT b.type, b.id, b.completed_at, b.size_bytes FROM backups b"
                " JOIN (SELECT type, MAX(completed_at) AS at FROM backups WHERE status = 'completed'"
                "       GROUP BY type) last ON last.type = b.type AND last.at = b.completed_at"
                " WHERE b.status = 'completed'",
            )
            outcome = await db.fetch_one(
                conn,
                "SELECT COALESCE(SUM(completed_at IS NOT NULL AND status <> 'failed'), 0) AS ok,"
                " COALESCE(SUM(status = 'failed'), 0) AS failed FROM backups"
                " WHERE created_at >= UTC_TIMESTAMP(6) - INTERVAL 30 DAY",
            )
            await conn.rollback()
        by_type = {t.value: 0 for t in BackupType}
        by_status: dict[str, int] = {}
        bytes_by_type = {t.value: 0 for t in BackupType}
        stored = ("completed", "deleting")
        for row in groups:
            count = int(row["n"])
            by_type[row["type"]] += count
            by_status[row["status"]] = by_status.get(row["status"], 0) + count
            if row["status"] in stored:
                bytes_by_type[row["type"]] += int(row["bytes"])
        ok = int(outcome["ok"]) if outcome else 0
        failed = int(outcome["failed"]) if outcome else 0
        return {
            "total": sum(by_type.values()),
            "by_type": by_type,
            "by_status": by_status,
            "bytes_total": sum(bytes_by_type.values()),
            "bytes_by_type": bytes_by_type,
            "last_success": {
                t.value: next(
                    (
                        {
                            "id": r["id"],
                            "completed_at": utc(r["completed_at"]),
                            "size_bytes": int(r["size_bytes"]),
                        }
                        for r in last_ok
                        if r["type"] == t.value
                    ),
                    None,
                )
                for t in BackupType
            },
            "last_30_days": {
                "completed": ok,
                "failed": failed,
                "success_rate": round(ok / (ok + failed), 4) if ok + failed else None,
            },
        }

    async def get_document(self, name: str) -> dict[str, Any]:
        """The named document, seeded from its default file the first time it is read."""
        row = await self._read_document(name)
        if row is None:
            # Its own transaction: several services may seed at once; the losers' IGNORE only waits
            # for the winner, and the read below (a new snapshot) sees whichever row won.
            async with db.transaction(self._pool) as conn:
                await db.execute(
                    conn,
                    "INSERT IGNORE INTO settings (name, document, revision, updated_by, updated_at)"
                    " VALUES (%s, %s, 1, 'defaults', NOW(6))",
                    (name, default_document(name).model_dump_json()),
                )
            row = await self._read_document(name)
        assert row is not None
        return self._document_dict(name, row)

    async def _read_document(self, name: str) -> dict[str, Any] | None:
        async with db.transaction(self._pool) as conn:
            return await db.fetch_one(conn, "SELECT * FROM settings WHERE name = %s", (name,))

    async def put_document(self, name: str, document: dict[str, Any], updated_by: str) -> dict[str, Any]:
        model, _ = DOCUMENTS[name]
        text = model.model_validate(document).model_dump_json()
        async with db.transaction(self._pool) as conn:
            await db.execute(
                conn,
                "INSERT INTO settings (name, document, revision, updated_by, updated_at)"
                " VALUES (%s, %s, 1, %s, NOW(6))"
                " ON DUPLICATE KEY UPDATE document = VALUES(document), revision = revision + 1,"
                " updated_by = VALUES(updated_by), updated_at = VALUES(updated_at)",
                (name, text, updated_by),
            )
            row = await db.fetch_one(conn, "SELECT * FROM settings WHERE name = %s", (name,))
        assert row is not None
        return self._document_dict(name, row)

    @staticmethod
    def _document_dict(name: str, row: dict[str, Any]) -> dict[str, Any]:
        model, _ = DOCUMENTS[name]
        document = row["document"]
        parsed = (
            model.model_validate_json(document) if isinstance(document, str | bytes) else model.model_validate(document)
        )
        return {
            "document": parsed.model_dump(mode="json"),
            "revision": int(row["revision"]),
            "updated_by": row["updated_by"],
            "updated_at": utc(row["updated_at"]),
        }

    async def record_audit(self, entry: AuditEntry) -> None:
        async with db.transaction(self._pool) as conn:
            await db.execute(
                conn,
                "INSERT INTO audit_log (occurred_at, actor, action, target, outcome, status_code,"
                " source_address, request_id, detail) VALUES (NOW(6), %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    entry.actor[:255],
                    entry.action,
                    entry.target[:255],
                    entry.outcome,
                    entry.status_code,
                    entry.source_address[:64],
                    entry.request_id,
                    json.dumps(entry.detail) if entry.detail else None,
                ),
            )

    async def previous_files_backup(self, backup_id: str) -> dict[str, Any] | None:
        """The newest completed backup with a files part created before this one: an incremental's parent."""
        async with self._pool.acquire() as conn:
            row = await db.fetch_one(
                conn,
                "SELECT b.id, b.storage_path FROM backups b"
                " JOIN backup_parts p ON p.backup_id = b.id AND p.part = 'files' AND p.status = 'completed'"
                " JOIN backups me ON me.id = %s"
                " WHERE b.status = 'completed' AND b.created_at < me.created_at"
                " ORDER BY b.created_at DESC, b.id DESC LIMIT 1",
                (backup_id,),
            )
            await conn.rollback()
        return row

    async def ping(self) -> None:
        async with self._pool.acquire() as conn:
            await db.fetch_one(conn, "SELECT 1 AS ok")
            await conn.rollback()
