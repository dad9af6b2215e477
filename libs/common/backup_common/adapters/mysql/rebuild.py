"""The catalog writes of `backupctl catalog rebuild`: which backups the catalog knows, and a backup
found in storage written back whole (its row and parts, its wrapped data key, its off-site copy) in
one transaction."""

from __future__ import annotations

from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.audit import MysqlAuditLog
from backup_common.adapters.mysql.backups import MysqlBackups
from backup_common.adapters.mysql.db import DUPLICATE_KEY
from backup_common.adapters.mysql.offsite import MysqlOffsiteCopies
from backup_common.domain.model import AuditEntry, Backup, BackupStatus
from backup_common.domain.offsite import OffsiteCopy
from backup_common.domain.ports import WrappedKey

# The server's answers when the catalog database, or one of its tables, does not exist (yet).
UNKNOWN_DATABASE = 1049
UNKNOWN_TABLE = 1146


async def catalogued(pool: db.Pool) -> dict[str, BackupStatus]:
    """Every backup the catalog has a row for, whatever its status, with that status."""
    async with db.transaction(pool) as conn:
        rows = await db.fetch_all(conn, "SELECT id, status FROM backups")
    return {row["id"]: BackupStatus(row["status"]) for row in rows}


async def add_rebuilt(pool: db.Pool, backup: Backup, key: WrappedKey | None, offsite: OffsiteCopy | None) -> bool:
    """Writes the backup, its parts, its wrapped data key (when given) and its off-site copy (when
    given) in one transaction; False, writing nothing, when the catalog has a row for the backup
    already (another run, or a service, wrote it meanwhile)."""
    async with db.transaction(pool) as conn:
        # The backup carries no events: a rebuilt backup is not news for the services (no
        # notification, no retention pass), so nothing goes to the outbox.
        backups = MysqlBackups(conn, lambda _: None)
        try:
            await backups.add(backup)
        except IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY:
                raise
            return False
        # add() writes a new backup's parts as pending; save() records what they hold.
        await backups.save(backup)
        if key is not None:
            # A row left by a catalog that lost only its backups rows is replaced: the manifest's key
            # is the one the rebuild proved against the manifest's MAC.
            await db.execute(
                conn,
                "INSERT INTO data_keys (backup_id, key_id, wrapped_key, created_at) VALUES (%s, %s, %s, %s)"
                " ON DUPLICATE KEY UPDATE key_id = VALUES(key_id), wrapped_key = VALUES(wrapped_key)",
                (backup.id, key.key_id, key.wrapped, db.naive(backup.created_at)),
            )
        if offsite is not None:
            await MysqlOffsiteCopies(conn).save(offsite)
    return True


async def record_rebuild(pool: db.Pool, entry: AuditEntry) -> None:
    """Writes the rebuild's audit record."""
    async with db.transaction(pool) as conn:
        await MysqlAuditLog(conn).add(entry)
