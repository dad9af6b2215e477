"""What the gateway's /metrics tells about the whole system, read from the catalog in one pass.

A few aggregate queries, each on an index or on a bounded set of rows: counts by type and status
(the ``backups_type_status`` index alone), the completed backups (as many as the retention policy
keeps) and the failed ones (through ``backups_status``), the restores by status, the outbox's unsent
rows (few, unless the broker is away) and the schedule document. Read-only, in one transaction, so
the figures of one scrape agree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import utc
from backup_common.domain.documents import ScheduleDocument

# Backups whose files are on disk (one being deleted still holds them).
_HOLDING_FILES = "'completed', 'deleting'"


@dataclass(frozen=True)
class LatestBackup:
    """The newest completed backup of a type."""

    id: str
    completed_at: datetime
    duration_seconds: float  # from its first part starting (its request, if none recorded) to its completion
    size_bytes: int


@dataclass(frozen=True)
class OutboxFigures:
    pending: int  # unsent, not parked
    parked: int
    lag_seconds: float  # age of the oldest pending event; 0 without one


@dataclass(frozen=True)
class StoredSchedule:
    document: ScheduleDocument
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class CatalogFigures:
    backups: dict[tuple[str, str], int]  # (type, status) -> backups; only the pairs that have any
    stored_bytes: dict[str, int]  # type -> bytes of its completed backups and those being deleted
    last_success: dict[str, LatestBackup]  # type -> its newest completed backup, for types that have one
    last_failure: dict[str, datetime]  # type -> when its latest failed backup failed
    verifications: dict[tuple[str, str], int]  # (type, verified|failed|pending|never) -> completed backups
    last_verification_failure: dict[str, datetime]  # type -> latest failed check of a completed backup
    restores: dict[str, int]  # status -> restores
    outbox: OutboxFigures
    schedule: StoredSchedule | None  # None until a service first read (and so seeded) it


async def read_catalog_figures(pool: db.Pool) -> CatalogFigures:
    async with db.transaction(pool) as conn:
        return await _read(conn)


async def _read(conn: Connection) -> CatalogFigures:
    counts = await db.fetch_all(conn, "SELECT type, status, COUNT(*) AS n FROM backups GROUP BY type, status")
    stored = await db.fetch_all(
        conn,
        "SELECT type, COALESCE(SUM(size_bytes), 0) AS bytes FROM backups"
        f" WHERE status IN ({_HOLDING_FILES}) GROUP BY type",
    )
    # The newest completed backup of each type (window functions: MySQL 8, MariaDB 10.2).
    latest = await db.fetch_all(
        conn,
        "SELECT type, id, completed_at, COALESCE(started_at, created_at) AS began_at, size_bytes FROM ("
        "  SELECT type, id, completed_at, started_at, created_at, size_bytes,"
        "    ROW_NUMBER() OVER (PARTITION BY type ORDER BY completed_at DESC, id DESC) AS newest"
        "  FROM backups WHERE status = 'completed' AND completed_at IS NOT NULL"
        ") completed WHERE newest = 1",
    )
    # A failed backup records when it failed in completed_at (older rows: only updated_at).
    failures = await db.fetch_all(
        conn,
        "SELECT type, MAX(COALESCE(completed_at, updated_at)) AS at FROM backups WHERE status = 'failed' GROUP BY type",
    )
    checked = await db.fetch_all(
        conn,
        "SELECT b.type, COALESCE(v.status, 'never') AS state, COUNT(*) AS n,"
        " MAX(CASE WHEN v.status = 'failed' THEN COALESCE(v.checked_at, v.updated_at) END) AS failed_at"
        " FROM backups b LEFT JOIN backup_verifications v ON v.backup_id = b.id"
        " WHERE b.status = 'completed' GROUP BY b.type, COALESCE(v.status, 'never')",
    )
    restores = await db.fetch_all(conn, "SELECT status, COUNT(*) AS n FROM restores GROUP BY status")
    # Ages on the server's clock, the one that wrote created_at: no skew with this host's.
    outbox = await db.fetch_one(
        conn,
        "SELECT COALESCE(SUM(parked_at IS NULL), 0) AS pending, COALESCE(SUM(parked_at IS NOT NULL), 0) AS parked,"
        " TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN parked_at IS NULL THEN created_at END), NOW(6)) AS lag_us"
        " FROM outbox WHERE sent_at IS NULL",
    )
    schedule = await db.fetch_one(conn, "SELECT document, revision, updated_at FROM settings WHERE name = 'schedule'")
    last_verification_failure: dict[str, datetime] = {}
    for row in checked:
        if row["failed_at"] is not None:
            last_verification_failure[row["type"]] = utc(row["failed_at"])
    return CatalogFigures(
        backups={(row["type"], row["status"]): int(row["n"]) for row in counts},
        stored_bytes={row["type"]: int(row["bytes"]) for row in stored},
        last_success={
            row["type"]: LatestBackup(
                id=row["id"],
                completed_at=utc(row["completed_at"]),
                duration_seconds=max(0.0, (row["completed_at"] - row["began_at"]).total_seconds()),
                size_bytes=int(row["size_bytes"]),
            )
            for row in latest
        },
        last_failure={row["type"]: utc(row["at"]) for row in failures},
        verifications={(row["type"], row["state"]): int(row["n"]) for row in checked},
        last_verification_failure=last_verification_failure,
        restores={row["status"]: int(row["n"]) for row in restores},
        outbox=OutboxFigures(
            pending=int(outbox["pending"]) if outbox else 0,
            parked=int(outbox["parked"]) if outbox else 0,
            lag_seconds=max(0.0, int(outbox["lag_us"]) / 1e6) if outbox and outbox["lag_us"] is not None else 0.0,
        ),
        schedule=_schedule(schedule) if schedule else None,
    )


def _schedule(row: dict[str, Any]) -> StoredSchedule:
    document = row["document"]
    parsed = (
        ScheduleDocument.model_validate_json(document)
        if isinstance(document, str | bytes)
        else ScheduleDocument.model_validate(document)
    )
    return StoredSchedule(parsed, int(row["revision"]), utc(row["updated_at"]))
