"""Catalog schema migrations: the files of infra/mysql/, applied in order, once, under a lock."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
from asyncmy.errors import MySQLError

from backup_common.adapters.mysql.db import connection_options, ensure_database
from backup_common.engine.database.target import MysqlTarget
from backup_common.paths import MIGRATIONS_DIR

log = logging.getLogger(__name__)

MIGRATION_LOCK = "backup_catalog_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Duplicate column, duplicate key name, table exists, duplicate foreign key: the change is there.
_ALREADY_DONE = frozenset({1060, 1061, 1050, 1826})


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the file: each ends with a semicolon at the end of a line."""
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        return [part.strip() for part in re.split(r";\s*$", "\n".join(lines), flags=re.M) if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{directory}: two migrations share a version number")
    return migrations


class MigrationError(Exception):
    pass


async def migrate(target: MysqlTarget, migrations: list[Migration] | None = None) -> list[str]:
    """Creates the database if needed and applies every migration not applied yet.

    Safe to run from several processes at once: a server-side named lock serialises them, and every
    statement is written to be repeatable, so a run interrupted half-way is finished by the next.
    Returns the names of the migrations this call applied.
    """
    migrations = load_migrations() if migrations is None else migrations
    await ensure_database(target)
    conn = await asyncmy.connect(db=target.database, **{**connection_options(target), "autocommit": True})
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT GET_LOCK(%s, 60)", (MIGRATION_LOCK,))
            (locked,) = await cursor.fetchone()
            if locked != 1:
                raise MigrationError("another process held the migration lock for 60 s")
            try:
                return await _apply(cursor, migrations)
            finally:
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (MIGRATION_LOCK,))
    finally:
        await conn.ensure_closed()


async def _apply(cursor: Any, migrations: list[Migration]) -> list[str]:
    await cursor.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INT UNSIGNED NOT NULL PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL,"
        " checksum CHAR(64) NOT NULL,"
        " applied_at DATETIME(6) NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
    await cursor.execute("SELECT version, checksum FROM schema_migrations")
    applied = {int(version): checksum for version, checksum in await cursor.fetchall()}
    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationError(f"{migration.name} was changed after it was applied; add a new one")
            continue
        log.info("applying catalog migration %s", migration.name)
        for statement in migration.statements():
            try:
                await cursor.execute(statement)
            except MySQLError as exc:
                # MySQL has no ADD COLUMN IF NOT EXISTS: a statement a run interrupted before it was
                # recorded had already changed the schema, and finding that change is success.
                if exc.args[0] not in _ALREADY_DONE:
                    raise
                log.info("%s: already applied: %s", migration.name, exc.args[1])
        await cursor.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (%s, %s, %s, NOW(6))",
            (migration.version, migration.name, migration.checksum),
        )
        done.append(migration.name)
    return done
