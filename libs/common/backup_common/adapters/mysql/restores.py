"""``RestoreRepository`` on the catalog's ``restores``, ``restore_parts`` and ``restore_targets`` tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from asyncmy.connection import Connection
from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import DUPLICATE_KEY, naive, placeholders, utc
from backup_common.domain.events import BackupPart
from backup_common.domain.jobs import Lease
from backup_common.domain.model import (
    PartStatus,
    Restore,
    RestoreFilter,
    RestorePart,
    RestoreStatus,
    RestoreTarget,
    target_busy,
)

_COLUMNS = (
    "id, backup_id, status, parts, requested_by, error, target, selected_tables, selected_paths, safety_backup,"
    " safety_backup_id, created_at, started_at, completed_at, updated_at"
)
_PART_COLUMNS = "restore_id, part, status, progress, error, attempts, started_at, completed_at, updated_at"


def _json_list(value: Any) -> tuple[str, ...]:
    return tuple(json.loads(value)) if value else ()


def _part(row: dict[str, Any]) -> RestorePart:
    return RestorePart(
        part=BackupPart(row["part"]),
        status=PartStatus(row["status"]),
        progress=json.loads(row["progress"]) if row["progress"] else None,
        error=row["error"],
        attempts=int(row["attempts"]),
        started_at=utc(row["started_at"]),
        completed_at=utc(row["completed_at"]),
        updated_at=utc(row["updated_at"]),
    )


def _restore(row: dict[str, Any], parts: list[RestorePart]) -> Restore:
    status = RestoreStatus(row["status"])
    if not parts:
        # Recorded before restores had parts of their own: each part shares the restore's outcome.
        part_status = PartStatus(status.value)
        parts = [
            RestorePart(BackupPart(name), part_status, updated_at=utc(row["updated_at"]))
            for name in json.loads(row["parts"])
        ]
    return Restore(
        id=row["id"],
        backup_id=row["backup_id"],
        status=status,
        parts=parts,
        requested_by=row["requested_by"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        target=RestoreTarget.from_dict(json.loads(row["target"]) if row["target"] else None),
        tables=_json_list(row["selected_tables"]),
        paths=_json_list(row["selected_paths"]),
        safety_backup=bool(row["safety_backup"]),
        safety_backup_id=row["safety_backup_id"],
        error=row["error"],
        started_at=utc(row["started_at"]),
        completed_at=utc(row["completed_at"]),
    )


class MysqlRestores:
    """Restores read and written in the unit of work's transaction; ``seen`` collects the ones whose
    events the unit of work writes to the outbox at commit."""

    def __init__(self, conn: Connection, seen: Callable[[Restore], None]) -> None:
        self._conn = conn
        self._seen = seen

    async def add(self, restore: Restore, target_keys: Sequence[str]) -> None:
        await db.execute(
            self._conn,
            f"INSERT INTO restores ({_COLUMNS}) VALUES ({placeholders(_COLUMNS.split(','))})",
            (
                restore.id,
                restore.backup_id,
                restore.status.value,
                json.dumps([part.value for part in restore.part_names]),
                restore.requested_by,
                restore.error,
                json.dumps(restore.target.as_dict()),
                json.dumps(list(restore.tables)),
                json.dumps(list(restore.paths)),
                restore.safety_backup,
                restore.safety_backup_id,
                naive(restore.created_at),
                naive(restore.started_at),
                naive(restore.completed_at),
                naive(restore.updated_at),
            ),
        )
        for part in restore.parts:
            await db.execute(
                self._conn,
                "INSERT INTO restore_parts (restore_id, part, status, updated_at) VALUES (%s, %s, %s, %s)",
                (restore.id, part.part.value, part.status.value, naive(part.updated_at or restore.updated_at)),
            )
        for key in target_keys:
            try:
                await db.execute(
                    self._conn,
                    "INSERT INTO restore_targets (target_key, restore_id) VALUES (%s, %s)",
                    (key, restore.id),
                )
            except IntegrityError as exc:
                if exc.args[0] != DUPLICATE_KEY:
                    raise
                holder = await db.fetch_one(
                    self._conn, "SELECT restore_id FROM restore_targets WHERE target_key = %s", (key,)
                )
                raise target_busy(key, holder["restore_id"] if holder else "(finished since)") from exc
        self._seen(restore)

    async def get(self, restore_id: str, *, for_update: bool = False) -> Restore | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await db.fetch_one(self._conn, f"SELECT {_COLUMNS} FROM restores WHERE id = %s{lock}", (restore_id,))
        if row is None:
            return None
        parts = await db.fetch_all(
            self._conn,
            f"SELECT {_PART_COLUMNS} FROM restore_parts WHERE restore_id = %s ORDER BY part{lock}",
            (restore_id,),
        )
        return _restore(row, [_part(part) for part in parts])

    async def save(self, restore: Restore) -> None:
        await db.execute(
            self._conn,
            "UPDATE restores SET status = %s, error = %s, safety_backup_id = %s, started_at = %s, completed_at = %s,"
            " updated_at = %s WHERE id = %s",
            (
                restore.status.value,
                restore.error,
                restore.safety_backup_id,
                naive(restore.started_at),
                naive(restore.completed_at),
                naive(restore.updated_at),
                restore.id,
            ),
        )
        for part in restore.parts:
            await db.execute(
                self._conn,
                "UPDATE restore_parts SET status = %s, progress = %s, error = %s, attempts = %s, started_at = %s,"
                " completed_at = %s, updated_at = %s WHERE restore_id = %s AND part = %s",
                (
                    part.status.value,
                    json.dumps(part.progress) if part.progress is not None else None,
                    part.error,
                    part.attempts,
                    naive(part.started_at),
                    naive(part.completed_at),
                    naive(part.updated_at or restore.updated_at),
                    restore.id,
                    part.part.value,
                ),
            )
        if restore.status.finished:
            await db.execute(self._conn, "DELETE FROM restore_targets WHERE restore_id = %s", (restore.id,))
        self._seen(restore)

    async def record_progress(self, lease: Lease, restore_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        # One statement fenced by the lease, like a backup part's progress.
        await db.execute(
            self._conn,
            "UPDATE restore_parts p JOIN job_leases l ON l.job_key = %s"
            " SET p.progress = %s, p.updated_at = NOW(6)"
            " WHERE p.restore_id = %s AND p.part = %s AND l.holder = %s AND l.version = %s AND l.state = 'held'",
            (lease.job_key, json.dumps(progress), restore_id, part.value, lease.holder, lease.version),
        )

    async def waiting_on(self, safety_backup_id: str) -> Restore | None:
        row = await db.fetch_one(
            self._conn, "SELECT id FROM restores WHERE safety_backup_id = %s FOR UPDATE", (safety_backup_id,)
        )
        return await self.get(row["id"], for_update=True) if row else None

    async def idle_pending(self, before: datetime, limit: int) -> list[str]:
        rows = await db.fetch_all(
            self._conn,
            "SELECT r.id FROM restores r LEFT JOIN backups s ON s.id = r.safety_backup_id"
            " WHERE r.status = 'pending' AND r.updated_at < %s"
            " AND (s.id IS NULL OR s.status NOT IN ('pending', 'running'))"
            " ORDER BY r.updated_at LIMIT %s",
            (naive(before), limit),
        )
        return [row["id"] for row in rows]

    async def unfinished_of(self, backup_id: str) -> list[str]:
        rows = await db.fetch_all(
            self._conn,
            "SELECT id FROM restores WHERE backup_id = %s AND status IN ('pending', 'running') ORDER BY created_at",
            (backup_id,),
        )
        return [row["id"] for row in rows]

    async def list(self, query: RestoreFilter) -> tuple[list[Restore], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.statuses:
            where.append(f"status IN ({placeholders(query.statuses)})")
            args.extend(status.value for status in query.statuses)
        if query.backup_id is not None:
            where.append("backup_id = %s")
            args.append(query.backup_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = await db.fetch_one(self._conn, f"SELECT COUNT(*) AS n FROM restores {clause}", args)
        rows = await db.fetch_all(
            self._conn,
            f"SELECT {_COLUMNS} FROM restores {clause} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*args, query.limit, query.offset],
        )
        parts: dict[str, list[RestorePart]] = {row["id"]: [] for row in rows}
        if rows:
            ids = list(parts)
            for part in await db.fetch_all(
                self._conn,
                f"SELECT {_PART_COLUMNS} FROM restore_parts WHERE restore_id IN ({placeholders(ids)}) ORDER BY part",
                ids,
            ):
                parts[part["restore_id"]].append(_part(part))
        return [_restore(row, parts[row["id"]]) for row in rows], int(total["n"]) if total else 0
