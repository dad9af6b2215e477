"""MySQL/MariaDB access on asyncmy: pools, the catalog database, schema migrations."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
from asyncmy.connection import Connection
from asyncmy.cursors import DictCursor

from backup_common.engine.database.target import MysqlTarget
from backup_common.paths import MIGRATIONS_DIR

log = logging.getLogger(__name__)

Pool = Any  # asyncmy ships no type information for its pool

MIGRATION_LOCK = "backup_catalog_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connection_options(target: MysqlTarget) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "password": target.password,
        "charset": "utf8mb4",
        "autocommit": False,
        # Catalog times are UTC whatever the server's zone is.
        "init_command": "SET time_zone = '+00:00'",
        "connect_timeout": 5,
    }


async def create_pool(target: MysqlTarget, *, minsize: int = 1, maxsize: int = 10) -> Pool:
    return await asyncmy.create_pool(
        minsize=minsize,
        maxsize=maxsize,
        pool_recycle=600,
        db=target.database,
        **connection_options(target),
    )


async def close_pool(pool: Pool) -> None:
    pool.close()
    await pool.wait_closed()


@asynccontextmanager
async def transaction(pool: Pool, *, read_committed: bool = False) -> AsyncIterator[Connection]:
    """A connection inside one transaction: committed on success, rolled back on any error.

    ``read_committed`` runs it at READ COMMITTED rather than the server's REPEATABLE READ, under
    which a locking range scan also locks the gaps between rows, and so every insert into them.
    """
    async with pool.acquire() as conn:
        if read_committed:
            await execute(conn, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # this transaction only
        await conn.begin()
        try:
            yield conn
        except BaseException:
            try:
                await conn.rollback()
            except Exception:
                # Interrupted mid-query (e.g. cancelled): the connection's state is unknown, so it is
                # closed rather than returned to the pool; the original error is what the caller sees.
                conn.close()
            raise
        await conn.commit()


async def fetch_all(conn: Connection, sql: str, args: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(DictCursor) as cursor:
        await cursor.execute(sql, args)
        return list(await cursor.fetchall())


async def fetch_one(conn: Connection, sql: str, args: Any = None) -> dict[str, Any] | None:
    async with conn.cursor(DictCursor) as cursor:
        await cursor.execute(sql, args)
        row: dict[str, Any] | None = await cursor.fetchone()
        return row


async def execute(conn: Connection, sql: str, args: Any = None) -> int:
    """Runs one statement; returns the number of rows it changed."""
    async with conn.cursor() as cursor:
        count: int = await cursor.execute(sql, args)
        return count


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


async def ensure_database(target: MysqlTarget) -> None:
    """Creates the target database when it does not exist yet."""
    conn = await asyncmy.connect(**connection_options(target))
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS {quote_identifier(target.database)} "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        await conn.ensure_closed()


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
            await cursor.execute(statement)
        await cursor.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (%s, %s, %s, NOW(6))",
            (migration.version, migration.name, migration.checksum),
        )
        done.append(migration.name)
    return done


async def drop_database(target: MysqlTarget) -> None:
    conn = await asyncmy.connect(**connection_options(target))
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS {quote_identifier(target.database)}")
    finally:
        await conn.ensure_closed()
