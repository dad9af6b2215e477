"""The database engine's SQL port (engine/database/sql.py) on asyncmy: every driver error leaves as SqlError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncmy
from asyncmy.connection import Connection
from asyncmy.cursors import SSCursor
from asyncmy.errors import MySQLError

from backup_common.adapters.mysql import db
from backup_common.engine.database.sql import Row, SqlError
from backup_common.engine.database.target import MysqlTarget


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except MySQLError as exc:
        # asyncmy's args are (errno, message); client-side errors may carry only a message.
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        message = str(exc.args[-1]) if exc.args else type(exc).__name__
        raise SqlError(code, message) from exc


class AsyncmySqlConnection:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str | bytes, args: Sequence[Any] | None = None) -> int:
        with _translated():
            # Bytes go to the server as they are: the loader's statements are never decoded and re-encoded.
            async with self._conn.cursor() as cursor:
                count: int = await cursor.execute(sql, args)
                return count

    async def fetch_one(self, sql: str, args: Sequence[Any] | None = None) -> dict[str, Any] | None:
        with _translated():
            return await db.fetch_one(self._conn, sql, args)

    async def fetch_all(self, sql: str, args: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        with _translated():
            return await db.fetch_all(self._conn, sql, args)

    async def stream(self, sql: str, batch_rows: int) -> AsyncIterator[Sequence[Row]]:
        with _translated():
            # An unbuffered cursor: rows come off the socket as they are fetched, never all at once.
            async with self._conn.cursor(SSCursor) as cursor:
                await cursor.execute(sql)
                while rows := await cursor.fetchmany(batch_rows):
                    yield rows

    async def commit(self) -> None:
        with _translated():
            await self._conn.commit()

    async def rollback(self) -> None:
        with _translated():
            await self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


class AsyncmySqlServer:
    """Connects to ``target``'s server with the catalog's session options (db.connection_options)."""

    def __init__(self, target: MysqlTarget) -> None:
        self.target = target

    async def connect(self, database: str | None = None) -> AsyncmySqlConnection:
        with _translated():
            conn = await asyncmy.connect(db=database, **db.connection_options(self.target))
        return AsyncmySqlConnection(conn)

    def __repr__(self) -> str:
        return f"AsyncmySqlServer({self.target!r})"
