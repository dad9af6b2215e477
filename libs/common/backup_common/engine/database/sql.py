"""The port the database engine talks to a MySQL/MariaDB server through; adapters implement it.

The engine speaks SQL but never names a driver: it opens connections from a :class:`SqlServer`,
runs statements on a :class:`SqlConnection`, and sees every failure as a :class:`SqlError` carrying
the server's error number, which is what its decisions (fallbacks, retries) are made on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from backup_common.engine.database.target import MysqlTarget

Row = tuple[Any, ...]


class SqlError(Exception):
    """A statement or a connection failed.

    ``code`` is the server's error number (1045 access denied, 1205 lock wait timeout, 1213
    deadlock, ...) or the client's (2003 cannot connect, 2013 connection lost); 0 when the driver
    gave none. ``message`` is the server's text, without the number.
    """

    def __init__(self, code: int, message: str) -> None:
        # Same args as the drivers' own errors, so str() reads as it did: (1045, 'Access denied ...').
        super().__init__(code, message)
        self.code = code
        self.message = message


class SqlConnection(Protocol):
    """One session: utf8mb4, autocommit off, time zone '+00:00' (see :class:`SqlServer`).

    Not safe to share between concurrent tasks: each runs its statements on its own connection.
    """

    async def execute(self, sql: str | bytes, args: Sequence[Any] | None = None) -> int:
        """Runs one statement (``%s`` placeholders filled from ``args``); returns the rows it changed."""
        ...

    async def fetch_one(self, sql: str, args: Sequence[Any] | None = None) -> dict[str, Any] | None:
        """The first row of the result, keyed by column name; None for an empty result."""
        ...

    async def fetch_all(self, sql: str, args: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Every row of the result, keyed by column name."""
        ...

    def stream(self, sql: str, batch_rows: int) -> AsyncIterator[Sequence[Row]]:
        """The rows of a query read unbuffered from the server, ``batch_rows`` at a time (the last
        batch may be shorter): memory stays bounded whatever the size of the result. The connection
        runs nothing else until the iteration ends."""
        ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    def close(self) -> None:
        """Drops the connection at once (no round trip): safe in ``finally`` and after cancellation."""
        ...


class SqlServer(Protocol):
    """A server reachable with the account and address of :attr:`target`.

    Its connections start as :class:`SqlConnection` describes, with a connect timeout of 5 s; a
    failure to connect raises :class:`SqlError` (2003 when the server cannot be reached).
    """

    @property
    def target(self) -> MysqlTarget: ...

    async def connect(self, database: str | None = None) -> SqlConnection:
        """A new session whose default database is ``database`` (None: none, for server-wide statements)."""
        ...


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
