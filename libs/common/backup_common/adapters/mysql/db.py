"""MySQL/MariaDB access on asyncmy: pools, transactions, and creating or dropping a database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, overload

import asyncmy
from asyncmy.connection import Connection
from asyncmy.cursors import DictCursor
from asyncmy.errors import InterfaceError, OperationalError

from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget

log = logging.getLogger(__name__)

Pool = Any  # asyncmy ships no type information for its pool


DUPLICATE_KEY = 1062


@overload
def utc(value: datetime) -> datetime: ...


@overload
def utc(value: None) -> None: ...


def utc(value: datetime | None) -> datetime | None:
    """Catalog times are stored naive in UTC; give them back their zone."""
    return value.replace(tzinfo=UTC) if value is not None else None


def naive(value: datetime | None) -> datetime | None:
    """A time as the catalog stores it: naive, in UTC (every session runs in UTC)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def placeholders(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


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


async def drop_database(target: MysqlTarget) -> None:
    conn = await asyncmy.connect(**connection_options(target))
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS {quote_identifier(target.database)}")
    finally:
        await conn.ensure_closed()


async def ping(pool: Pool) -> None:
    async with pool.acquire() as conn:
        await fetch_one(conn, "SELECT 1 AS ok")
        await conn.rollback()


# MySQL's client errors (2000-2999: cannot connect, server gone, connection lost) and the server's
# "too many connections", "shutdown in progress" and "connection killed".
_CLIENT_ERRORS = range(2000, 3000)
_UNREACHABLE_SERVER_ERRORS = frozenset({1040, 1053, 1927})


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot be reached now, rather than that a statement is wrong."""
    if isinstance(exc, ConnectionError | InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return code in _CLIENT_ERRORS or code in _UNREACHABLE_SERVER_ERRORS
