"""Loads a database archive back into a database: tables first, data in parallel, then the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

from backup_common.engine.archive import ArchiveReader
from backup_common.engine.database.model import LoadSummary
from backup_common.engine.database.sql import SqlConnection, SqlError, SqlServer, quote_identifier

# Bulk-load settings: constraints were checked when the data was written, and the dump's values are
# rendered in UTC with zero values allowed, as the members' own headers say.
LOAD_SESSION = (
    "SET SESSION foreign_key_checks = 0, unique_checks = 0, sql_mode = 'NO_AUTO_VALUE_ON_ZERO',"
    " time_zone = '+00:00', net_read_timeout = 3600, net_write_timeout = 3600"
)


READ_CHUNK = 1 << 20
# Lock waits and deadlocks between loaders filling one table: the statement is simply run again.
RETRYABLE = {1205, 1213}
RETRIES = 5


class LoadError(Exception):
    """The archive could not be loaded; the message says why."""


def _lines(text: bytes | bytearray) -> Iterator[bytes]:
    """Lines one at a time: splitting a whole member at once would hold a second copy of it."""
    start = 0
    size = len(text)
    while start < size:
        end = text.find(b"\n", start)
        if end < 0:
            end = size
        yield bytes(text[start:end])
        start = end + 1


def split_statements(text: bytes | bytearray) -> Iterator[bytes]:
    """Statements of a member: each ends at a line ending with the current delimiter (DELIMITER aware)."""
    delimiter = b";"
    pending: list[bytes] = []
    for line in _lines(text):
        stripped = line.strip()
        if not pending and stripped.upper().startswith(b"DELIMITER "):
            delimiter = stripped.split(None, 1)[1]
            continue
        if not pending and not stripped:
            continue
        pending.append(line)
        if stripped.endswith(delimiter):
            statement = (pending[0] if len(pending) == 1 else b"\n".join(pending)).rstrip()
            pending = []
            statement = statement[: -len(delimiter)].strip()
            if statement and not _only_comment(statement):
                yield statement
    if pending and not _only_comment(b"\n".join(pending).strip()):
        yield b"\n".join(pending).strip()


def _only_comment(statement: bytes) -> bool:
    return statement.startswith(b"/*") and statement.endswith(b"*/") and statement.count(b"/*") == 1


async def _connect(target: SqlServer) -> SqlConnection:
    conn = await target.connect(target.target.database)
    try:
        await conn.execute(LOAD_SESSION)
    except BaseException:
        conn.close()
        raise
    return conn


async def _run(conn: SqlConnection, statements: Iterator[bytes], member: str) -> int:
    """Runs a member's statements, each committed on its own so that row locks are held briefly;
    returns the rows they inserted."""
    rows = 0
    for statement in statements:
        for attempt in range(1, RETRIES + 1):
            try:
                rows += max(0, await conn.execute(statement))
                await conn.commit()
                break
            except SqlError as exc:
                await conn.rollback()
                if exc.code in RETRYABLE and attempt < RETRIES:
                    await asyncio.sleep(0.1 * attempt)
                    continue
                preview = statement[:200].decode(errors="replace")
                raise LoadError(f"{member}: {exc.message} (in: {preview}…)") from exc
    return rows


async def _object_count(conn: SqlConnection, database: str) -> dict[str, int]:
    queries = {
        "tables": "SELECT COUNT(*) AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
        "routines": "SELECT COUNT(*) AS n FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
        "events": "SELECT COUNT(*) AS n FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
        "triggers": "SELECT COUNT(*) AS n FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
        "views": "SELECT COUNT(*) AS n FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s",
    }
    counts = {}
    for name, sql in queries.items():
        row = await conn.fetch_one(sql, (database,))
        counts[name] = int(row["n"]) if row else 0
    return counts


async def _prepare_target(target: SqlServer, force: bool) -> None:
    database = target.target.database
    conn = await target.connect(None)  # the database may not exist yet
    try:
        exists = await conn.fetch_one(
            "SELECT 1 AS found FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,)
        )
        if exists:
            counts = await _object_count(conn, database)
            held = {name: count for name, count in counts.items() if count}
            if held and not force:
                listed = ", ".join(f"{count} {name}" for name, count in held.items())
                raise LoadError(
                    f"database {database} is not empty ({listed}); load into a new database,"
                    " or pass --force to replace its contents"
                )
            if held:
                await conn.execute(f"DROP DATABASE {quote_identifier(database)}")
        await conn.execute(
            f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    finally:
        conn.close()


def _read_member(reader: ArchiveReader, name: str) -> bytearray:
    """The whole member, read to its end so that its authentication code is checked before any of its
    statements runs; in one growing buffer, never twice in memory."""
    text = bytearray()
    with reader.open_member(name) as stream:
        while chunk := stream.read(READ_CHUNK):
            text += chunk
    return text


async def load_database(
    archive_path: Path, target: SqlServer, *, password: str | None, force: bool = False, parallelism: int = 2
) -> LoadSummary:
    """Loads the archive into ``target`` (created if missing; a non-empty one only with ``force``)."""
    started = time.monotonic()
    reader = await asyncio.to_thread(ArchiveReader, archive_path, password=password)
    try:
        names = sorted(reader.names())
        if not any(name.startswith("1-tables/") for name in names):
            raise LoadError(f"{archive_path} is not a database archive (no table definitions in it)")
        # Read one member before touching the target: a wrong key fails here, with nothing changed.
        first = await asyncio.to_thread(_read_member, reader, names[0])
        await _prepare_target(target, force)
        control = await _connect(target)
        try:
            for name in names:
                if name < "2":
                    text = first if name == names[0] else await asyncio.to_thread(_read_member, reader, name)
                    await _run(control, split_statements(text), name)
            data = [name for name in names if name.startswith("2-")]
            queue: asyncio.Queue[str] = asyncio.Queue()
            for name in data:
                queue.put_nowait(name)
            loaded = await asyncio.gather(
                *(_load_data(target, archive_path, password, queue) for _ in range(max(1, parallelism)))
            )
            for name in names:
                if name[0] in "3456":
                    await _run(control, split_statements(await asyncio.to_thread(_read_member, reader, name)), name)
            counts = await _object_count(control, target.target.database)
        finally:
            control.close()
    finally:
        await asyncio.to_thread(reader.close)
    return LoadSummary(
        database=target.target.database,
        tables=counts["tables"] - counts["views"],
        rows=sum(loaded),
        views=counts["views"],
        routines=counts["routines"],
        triggers=counts["triggers"],
        events=counts["events"],
        seconds=time.monotonic() - started,
    )


async def _load_data(target: SqlServer, archive_path: Path, password: str | None, queue: asyncio.Queue[str]) -> int:
    # Each loader reads through its own handle on the archive: no reader state is shared between threads.
    reader = await asyncio.to_thread(ArchiveReader, archive_path, password=password)
    conn = await _connect(target)
    rows = 0
    try:
        while True:
            try:
                name = queue.get_nowait()
            except asyncio.QueueEmpty:
                return rows
            # Decompression and decryption release the GIL: other loaders keep the server busy meanwhile.
            text = await asyncio.to_thread(_read_member, reader, name)
            rows += await _run(conn, split_statements(text), name)
    finally:
        conn.close()
        await asyncio.to_thread(reader.close)
