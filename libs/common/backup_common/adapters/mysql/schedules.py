"""``ScheduleRepository`` on ``schedules`` (each entry's cursor) and ``schedule_firings`` (what
became of each fire time; its primary key makes a firing happen once whatever the replicas)."""

from __future__ import annotations

from datetime import datetime

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
            "SELECT schedule_name, fire_at, outcome, backup_id, reason FROM schedule_firings"
            f" {where} ORDER BY fire_at DESC, schedule_name LIMIT %s",
            [*args, limit],
        )
        return [
            Firing(
                schedule=row["schedule_name"],
                fire_at=utc(row["fire_at"]),
                outcome=FiringOutcome(row["outcome"]),
                backup_id=row["backup_id"],
                reason=row["reason"],
            )
            for row in rows
        ]
