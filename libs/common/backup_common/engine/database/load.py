"""Loads a database archive back into a database: tables first, data in parallel, then the rest.

The pieces here are shared with the restore (restore.py), which loads into a staging database:
the limits an archive must keep before anything is loaded, running a member's statements (a member
is always read to its end, which authenticates it, before any of its statements runs), loading
data members in parallel, and counting progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader, CorruptArchive, MemberInfo, WrongPassword
from backup_common.engine.database.model import DatabaseRestoreProgress, LoadSummary, RestoreProgressCallback
from backup_common.engine.database.sql import SqlConnection, SqlError, SqlServer, quote_identifier

log = logging.getLogger(__name__)

# Bulk-load settings: constraints were checked when the data was written, and the dump's values are
# rendered in UTC with zero values allowed, as the members' own headers say.
LOAD_SESSION = (
    "SET SESSION foreign_key_checks = 0, unique_checks = 0, sql_mode = 'NO_AUTO_VALUE_ON_ZERO',"
    " time_zone = '+00:00', net_read_timeout = 3600, net_write_timeout = 3600"
)


READ_CHUNK = 1 << 20
# A member is held whole while its statements run, so that it is authenticated before any of them
# does. Above this declared size it is instead read twice: once to the end keeping nothing (which
# authenticates it), then statement by statement.
BUFFERED_MEMBER_BYTES = 256 << 20
# Statements of a streamed member go to the event loop in batches of about this many bytes.
STREAM_BATCH_BYTES = 4 << 20
# Below this size a member's compression ratio is not looked at (as for a files restore).
SMALL_MEMBER_BYTES = 1024
# Lock waits and deadlocks between loaders filling one table: the statement is simply run again.
RETRYABLE = {1205, 1213}
RETRIES = 5
PROGRESS_SECONDS = 0.5
DEFAULT_LIMITS = RestoreLimits()

# What load_database reports: a restore's progress, without its "swapping" phase.
LoadProgress = DatabaseRestoreProgress

T = TypeVar("T")
Rewrite = Callable[[bytes], Iterable[bytes]]


class LoadError(Exception):
    """The archive could not be loaded; the message says why."""


class MemberUnreadable(LoadError):
    """A member failed its authentication or checksum, or cannot be decrypted; the message names it."""


class StatementFailed(LoadError):
    """A statement of a member failed on the server: which member, which statement, and the server's error."""

    def __init__(self, member: str, statement: bytes, error: SqlError) -> None:
        preview = statement[:200].decode(errors="replace")
        super().__init__(f"{member}: {error.message} (in: {preview}…)")
        self.member = member
        self.statement = statement
        self.error = error


def limits_breach(infos: Sequence[MemberInfo], limits: RestoreLimits) -> str | None:
    """Why the archive exceeds ``limits`` (member count, total size, compression ratio), or None.

    The rules and words are those of a files restore (engine/files/chain_check.py). The sizes are the
    ones the archive declares, and reading never returns more than a member declares, so the check
    bounds what a load decompresses.
    """
    if len(infos) > limits.max_entries:
        return f"the archive holds {len(infos)} members, more than the limit of {limits.max_entries} entries"
    total = 0
    seen: set[str] = set()
    for info in infos:
        if info.name in seen:
            return f"member {info.name!r} appears twice in the archive"
        seen.add(info.name)
        if info.size >= SMALL_MEMBER_BYTES:
            ratio = info.size / info.compressed_size if info.compressed_size > 0 else float("inf")
            if ratio > limits.max_compression_ratio:
                return (
                    f"member {info.name!r} is refused: it expands {info.size} bytes from {info.compressed_size}"
                    f" (ratio {ratio:.0f}), over the compression ratio limit of {limits.max_compression_ratio}"
                )
        total += info.size
        if total > limits.max_total_bytes:
            return (
                f"member {info.name!r} takes the archive to {total} bytes, over the limit of"
                f" {limits.max_total_bytes} bytes"
            )
    return None


# --- statements --------------------------------------------------------------------------------


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


def stream_lines(stream: IO[bytes], chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """The lines of a stream read ``chunk`` bytes at a time, as :func:`_lines` gives those of a buffer."""
    pending: list[bytes] = []
    while data := stream.read(chunk):
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pending.append(data[start:end])
            yield b"".join(pending)
            pending = []
            start = end + 1
        if start < len(data):
            pending.append(data[start:])
    if pending:
        yield b"".join(pending)


def statements_of(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Statements of a member: each ends at a line ending with the current delimiter (DELIMITER aware)."""
    delimiter = b";"
    pending: list[bytes] = []
    for line in lines:
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


def split_statements(text: bytes | bytearray) -> Iterator[bytes]:
    """Statements of a member held in memory."""
    return statements_of(_lines(text))


def _only_comment(statement: bytes) -> bool:
    return statement.startswith(b"/*") and statement.endswith(b"*/") and statement.count(b"/*") == 1


# --- reading members -----------------------------------------------------------------------------


@contextmanager
def _member_read(name: str) -> Iterator[None]:
    """Archive failures while reading a member, as an error naming the member and what it means."""
    try:
        yield
    except CorruptArchive as exc:
        raise MemberUnreadable(
            f"member {name} failed authentication: the archive is damaged or the key is wrong ({exc})"
        ) from exc
    except WrongPassword as exc:
        raise MemberUnreadable(f"member {name} cannot be decrypted: the password is wrong or missing") from exc


def read_member(reader: ArchiveReader, name: str) -> bytearray:
    """The whole member, read to its end so that its authentication code is checked before any of its
    statements runs; in one growing buffer, never twice in memory."""
    text = bytearray()
    with _member_read(name), reader.open_member(name) as stream:
        while chunk := stream.read(READ_CHUNK):
            text += chunk
    return text


def authenticate_member(reader: ArchiveReader, name: str) -> None:
    """Reads the member to its end keeping nothing: its authentication code or checksum is checked."""
    with _member_read(name), reader.open_member(name) as stream:
        while stream.read(READ_CHUNK):
            pass


class _StatementStream:
    """The statements of a member read chunk by chunk, handed out in batches; for members too large to
    hold whole. Each call runs in a worker thread, one at a time."""

    def __init__(self, reader: ArchiveReader, name: str) -> None:
        self.name = name
        with _member_read(name):
            self._stream = reader.open_member(name)
        self._statements = statements_of(stream_lines(self._stream))

    def next_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        with _member_read(self.name):
            for statement in self._statements:
                batch.append(statement)
                size += len(statement)
                if size >= STREAM_BATCH_BYTES:
                    break
        return batch

    def close(self) -> None:
        self._stream.close()


# --- running members ---------------------------------------------------------------------------


async def connect_loader(server: SqlServer, database: str) -> SqlConnection:
    """A session on ``database`` with the bulk-load settings."""
    conn = await server.connect(database)
    try:
        await conn.execute(LOAD_SESSION)
    except BaseException:
        conn.close()
        raise
    return conn


async def run_statements(conn: SqlConnection, statements: Iterable[bytes], member: str) -> int:
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
                raise StatementFailed(member, statement, exc) from exc
    return rows


def _rewritten(statements: Iterable[bytes], rewrite: Rewrite | None) -> Iterator[bytes]:
    for statement in statements:
        if rewrite is None:
            yield statement
        else:
            yield from rewrite(statement)


async def run_member(
    conn: SqlConnection, reader: ArchiveReader, member: MemberInfo, rewrite: Rewrite | None = None
) -> int:
    """Runs the statements of one member (each passed through ``rewrite`` when given, which may
    replace it by any number of statements); returns the rows they inserted.

    None of them runs before the member has been read to its end: a member of up to
    BUFFERED_MEMBER_BYTES is held whole meanwhile, a larger one is read twice.
    """
    if member.size <= BUFFERED_MEMBER_BYTES:
        text = await asyncio.to_thread(read_member, reader, member.name)
        return await run_statements(conn, _rewritten(split_statements(text), rewrite), member.name)
    await asyncio.to_thread(authenticate_member, reader, member.name)
    # The second read is checked again at its end; should the file have changed in between, the
    # statements already run are a loss the caller handles as any failed load (a restore drops its
    # staging database).
    stream = await asyncio.to_thread(_StatementStream, reader, member.name)
    rows = 0
    try:
        while batch := await asyncio.to_thread(stream.next_batch):
            rows += await run_statements(conn, _rewritten(batch, rewrite), member.name)
    finally:
        await asyncio.to_thread(stream.close)
    return rows


async def all_or_cancel(coroutines: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the coroutines concurrently; the first failure cancels the others (rather than leaving them
    loading into a database that is about to be dropped) and is raised once they have stopped."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return [task.result() for task in tasks]


async def load_members_in_parallel(
    server: SqlServer,
    database: str,
    archive_path: Path,
    password: str | None,
    members: Sequence[MemberInfo],
    parallelism: int,
    loaded: Callable[[MemberInfo, int], Awaitable[None]],
) -> int:
    """Runs the data members on ``parallelism`` sessions of ``database``; returns the rows inserted.
    ``loaded`` is awaited after each member with the rows it inserted."""
    queue: asyncio.Queue[MemberInfo] = asyncio.Queue()
    # The largest first, to even out the loaders.
    for member in sorted(members, key=lambda info: -info.size):
        queue.put_nowait(member)
    counts = await all_or_cancel(
        [
            _load_data(server, database, archive_path, password, queue, loaded)
            for _ in range(max(1, min(parallelism, len(members))))
        ]
    )
    return sum(counts)


async def _load_data(
    server: SqlServer,
    database: str,
    archive_path: Path,
    password: str | None,
    queue: asyncio.Queue[MemberInfo],
    loaded: Callable[[MemberInfo, int], Awaitable[None]],
) -> int:
    # Each loader reads through its own handle on the archive: no reader state is shared between threads.
    reader = await asyncio.to_thread(ArchiveReader, archive_path, password=password)
    rows = 0
    try:
        conn = await connect_loader(server, database)
        try:
            while True:
                try:
                    member = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return rows
                # Decompression and decryption release the GIL: other loaders keep the server busy meanwhile.
                count = await run_member(conn, reader, member)
                rows += count
                await loaded(member, count)
        finally:
            conn.close()
    finally:
        await asyncio.to_thread(reader.close)


# --- progress ----------------------------------------------------------------------------------


class ProgressTracker:
    """Counts the members, bytes, tables and rows loaded, and reports them through the callback: at
    each phase change, and after a member at most every PROGRESS_SECONDS. A failing callback is
    logged, never fatal."""

    def __init__(self, callback: RestoreProgressCallback | None) -> None:
        self._callback = callback
        self._lock = asyncio.Lock()
        self._last = 0.0
        self._pending: dict[str, set[str]] = {}
        self._table_of: dict[str, str] = {}
        self.phase = "checking"
        self.bytes_done = 0
        self.bytes_total = 0
        self.tables_done = 0
        self.tables_total = 0
        self.rows_done = 0

    def plan(self, tables: Mapping[str, Iterable[MemberInfo]]) -> None:
        """The members each table is loaded from: a table is done once they all are."""
        self._pending = {table: {member.name for member in members} for table, members in tables.items()}
        self._table_of = {name: table for table, names in self._pending.items() for name in names}
        self.bytes_total = sum(member.size for members in tables.values() for member in members)
        self.tables_total = len(tables)

    @property
    def current(self) -> DatabaseRestoreProgress:
        return DatabaseRestoreProgress(
            self.phase, self.bytes_done, self.bytes_total, self.tables_done, self.tables_total, self.rows_done
        )

    async def enter(self, phase: str) -> None:
        self.phase = phase
        await self._report(force=True)

    async def loaded(self, member: MemberInfo, rows: int) -> None:
        self.bytes_done += member.size
        self.rows_done += rows
        table = self._table_of.get(member.name)
        if table is not None:
            pending = self._pending[table]
            pending.discard(member.name)
            if not pending:
                self.tables_done += 1
                del self._pending[table]
        await self._report(force=False)

    async def _report(self, *, force: bool) -> None:
        if self._callback is None:
            return
        if not force and time.monotonic() - self._last < PROGRESS_SECONDS:
            return
        async with self._lock:  # one report at a time, so that they arrive in order
            self._last = time.monotonic()
            try:
                await self._callback(self.current)
            except Exception:
                log.exception("progress report failed")


# --- the offline load --------------------------------------------------------------------------


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


async def _prepare_target(target: SqlServer, database: str, force: bool) -> None:
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


def table_stem(name: str) -> str | None:
    """``NNNN-name``, which a table's definition and data members share, or None for other members."""
    if name.startswith("1-tables/"):
        return name.removeprefix("1-tables/").removesuffix(".sql")
    if name.startswith("2-data/"):
        return name.removeprefix("2-data/").rsplit(".", 2)[0]
    return None


async def load_database(
    archive_path: Path,
    target: SqlServer,
    *,
    password: str | None,
    force: bool = False,
    parallelism: int = 2,
    limits: RestoreLimits = DEFAULT_LIMITS,
    progress: RestoreProgressCallback | None = None,
    database: str | None = None,
    rewrite_objects: Rewrite | None = None,
) -> LoadSummary:
    """Loads the archive into ``target`` (created if missing; a non-empty one only with ``force``).

    An archive over ``limits`` is refused before anything is touched. ``database`` names another
    database of the target's server to load into; ``rewrite_objects`` is given each statement of the
    members after the data (routines, views, triggers, events) just before it runs, as
    :func:`run_member` describes.
    """
    started = time.monotonic()
    database = database or target.target.database
    tracker = ProgressTracker(progress)
    await tracker.enter("checking")
    reader = await asyncio.to_thread(ArchiveReader, archive_path, password=password)
    try:
        infos = {info.name: info for info in reader.infos()}
        if breach := limits_breach(list(infos.values()), limits):
            raise LoadError(f"{archive_path} is refused: {breach}")
        names = sorted(infos)
        if not any(name.startswith("1-tables/") for name in names):
            raise LoadError(f"{archive_path} is not a database archive (no table definitions in it)")
        tables: dict[str, list[MemberInfo]] = {}
        for name in names:
            if (stem := table_stem(name)) is not None:
                tables.setdefault(stem, []).append(infos[name])
        tracker.plan(tables)
        tracker.bytes_total = sum(info.size for info in infos.values())
        # Read one member before touching the target: a wrong key fails here, with nothing changed.
        await asyncio.to_thread(authenticate_member, reader, names[0])
        await _prepare_target(target, database, force)
        await tracker.enter("loading")
        control = await connect_loader(target, database)
        try:
            # Only data members count rows: a DDL statement may report some changed.
            for name in names:
                if name < "2":
                    await run_member(control, reader, infos[name])
                    await tracker.loaded(infos[name], 0)
            data = [infos[name] for name in names if name.startswith("2-")]
            rows = await load_members_in_parallel(
                target, database, archive_path, password, data, parallelism, tracker.loaded
            )
            for name in names:
                if name[0] in "3456":
                    await run_member(control, reader, infos[name], rewrite_objects)
                    await tracker.loaded(infos[name], 0)
            counts = await _object_count(control, database)
        finally:
            control.close()
    finally:
        await asyncio.to_thread(reader.close)
    await tracker.enter("done")
    return LoadSummary(
        database=database,
        tables=counts["tables"] - counts["views"],
        rows=rows,
        views=counts["views"],
        routines=counts["routines"],
        triggers=counts["triggers"],
        events=counts["events"],
        seconds=time.monotonic() - started,
    )
