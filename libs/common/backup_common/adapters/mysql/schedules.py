"""``ScheduleRepository`` on ``schedules`` (each entry's cursor) and ``schedule_firings`` (what
became of each fire time; its primary key makes a firing happen once whatever the replicas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncmy.connection import Connection
from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import DUPLICATE_KEY, naive, utc
from backup_common.domain.schedule import Firing, FiringOutcome

MAX_REASON = 500


class MysqlSchedules:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def cursors(self) -> dict[str, datetime]:
        rows = await db.fetch_all(
            self._conn, "SELECT name, checked_until FROM schedules WHERE checked_until IS NOT NULL"
        )
        return {row["name"]: utc(row["checked_until"]) for row in rows}

    async def advance(self, schedule: str, checked_until: datetime, next_fire_at: datetime | None) -> None:
        await db.execute(
            self._conn,
            "INSERT INTO schedules (name, checked_until, next_run_at, updated_at) VALUES (%s, %s, %s, NOW(6))"
            " ON DUPLICATE KEY UPDATE checked_until = GREATEST(COALESCE(checked_until, VALUES(checked_until)),"
            " VALUES(checked_until)), next_run_at = VALUES(next_run_at), updated_at = NOW(6)",
            (schedule, naive(checked_until), naive(next_fire_at)),
        )

    async def record(self, firing: Firing, holder: str) -> bool:
        try:
            # Waits for another scheduler's uncommitted insert of the same firing, then collides with it.
            await db.execute(
                self._conn,
                "INSERT INTO schedule_firings (schedule_name, fire_at, outcome, backup_id, reason, recorded_by,"
                " recorded_at) VALUES (%s, %s, %s, %s, %s, %s, NOW(6))",
                (
                    firing.schedule,
                    naive(firing.fire_at),
                    firing.outcome.value,
                    firing.backup_id,
                    firing.reason[:MAX_REASON] if firing.reason else None,
                    holder,
                ),
            )
        except IntegrityError as exc:
            if exc.args[0] == DUPLICATE_KEY:
                return False
            raise
        if firing.outcome is FiringOutcome.FIRED:
            await db.execute(
                self._conn,
                "UPDATE schedules SET last_run_at = %s, last_backup_id = %s, updated_at = NOW(6) WHERE name = %s",
                (naive(firing.fire_at), firing.backup_id, firing.schedule),
            )
        return True

    async def firings(self, schedule: str | None = None, limit: int = 100) -> list[Firing]:
        where, args = ("WHERE schedule_name = %s", [schedule]) if schedule is not None else ("", [])
        rows = await db.fetch_all(
            self._conn,
            f"SELECT {_FIRING_COLUMNS} FROM schedule_firings {where} ORDER BY fire_at DESC, schedule_name LIMIT %s",
            [*args, limit],
        )
        return [_firing(row) for row in rows]

    async def latest_firing(self, schedule: str, at_or_before: datetime) -> Firing | None:
        row = await db.fetch_one(
            self._conn,
            f"SELECT {_FIRING_COLUMNS} FROM schedule_firings WHERE schedule_name = %s AND fire_at <= %s"
            " ORDER BY fire_at DESC LIMIT 1",
            (schedule, naive(at_or_before)),
        )
        return _firing(row) if row else None

    async def report_missing(self, schedule: str, fire_at: datetime, now: datetime) -> bool:
        # The row lock this takes makes a second replica wait, then find it reported.
        changed = await db.execute(
            self._conn,
            "UPDATE schedule_firings SET missing_reported_at = %s"
            " WHERE schedule_name = %s AND fire_at = %s AND missing_reported_at IS NULL",
            (naive(now), schedule, naive(fire_at)),
        )
        return changed == 1


_FIRING_COLUMNS = "schedule_name, fire_at, outcome, backup_id, reason, missing_reported_at"


def _firing(row: dict[str, Any]) -> Firing:
    return Firing(
        schedule=row["schedule_name"],
        fire_at=utc(row["fire_at"]),
        outcome=FiringOutcome(row["outcome"]),
        backup_id=row["backup_id"],
        reason=row["reason"],
        missing_reported_at=utc(row["missing_reported_at"]),
    )
