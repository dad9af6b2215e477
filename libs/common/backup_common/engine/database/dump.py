"""A consistent, streaming dump of one database into an archive of SQL members.

All reader connections share one snapshot: a brief FLUSH TABLES WITH READ LOCK while each starts a
consistent-snapshot transaction, the way mydumper does it. Without the RELOAD privilege that needs,
one connection reads everything in its own snapshot (still consistent, just not parallel).

Member names sort in replay order, so the stock client can load them by hand (see the README):
  0-database.sql              the database's default character set and collation
  1-tables/NNNN-name.sql      CREATE TABLE
  2-data/NNNN-name.NNNNNN.sql INSERT statements, one per line
  3-routines.sql              procedures and functions
  4-views.sql                 views, each after those it reads
  5-triggers.sql              triggers (after the data, so loading does not fire them)
  6-events.sql                events

Each table's rows are also digested as they are read (ROW_DIGEST): the restore drill reads a loaded
copy the same way and proves it holds exactly the rows the dump read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

from backup_common.engine.archive import ArchiveWriter
from backup_common.engine.database import schema
from backup_common.engine.database.model import DumpOptions, DumpProgress, DumpResult, ProgressCallback, TableSummary
from backup_common.engine.database.sql import Row, SqlConnection, SqlError, SqlServer

log = logging.getLogger(__name__)

SESSION_HEADER = (
    b"/* backup-system dump member: replay in name order with the mysql/mariadb client */\n"
    b"SET NAMES utf8mb4;\n"
    b"SET TIME_ZONE='+00:00';\n"
    b"SET FOREIGN_KEY_CHECKS=0;\n"
    b"SET UNIQUE_CHECKS=0;\n"
    b"SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO';\n"
)
# A reader stalls while its member is written; the server must not drop it meanwhile.
READER_SESSION = (
    "SET SESSION time_zone = '+00:00', sql_mode = '', net_write_timeout = 3600, net_read_timeout = 3600,"
    " wait_timeout = 28800"
)
# Rows arrive as the bytes the server rendered, whatever the columns' character sets.
BINARY_RESULTS = "SET SESSION character_set_results = binary"
ACCESS_DENIED = {1044, 1045, 1142, 1227}
# The session ended under the dump (killed, the server restarted, the network cut): server shutdown
# in progress, connection killed (MariaDB), gone away, lost during a query, lost (extended).
CONNECTION_LOST = {1053, 1927, 2006, 2013, 2055}
FETCH_ROWS = 2000
ASSUMED_ROW_BYTES = 100
PROGRESS_SECONDS = 1.0
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")

# The row digest of a table: the SHA-256 of each row's text (as it follows VALUES, e.g. ``(1,'a',NULL)``)
# read as a big-endian integer, summed modulo 2**128, in 32 hex digits. A sum does not depend on the
# order rows are read in, and unlike XOR it counts a row present twice (a table without a key).
ROW_DIGEST = "sha256-sum128"
_DIGEST_MODULUS = 1 << 128
# A batch of rows holding more bytes is hashed in a worker thread, where hashlib releases the GIL for
# rows of 2 KiB or more; a smaller one (at most FETCH_ROWS rows) holds the event loop a few milliseconds.
THREAD_DIGEST_BYTES = 1 << 20
_FIRST = itemgetter(0)
_DIGEST = methodcaller("digest")


class DumpError(Exception):
    """The dump could not be made; the message says why in an operator's words."""


class SourceConnectionLost(DumpError):
    """A connection to the source ended under the dump: a new attempt may well succeed."""


def connection_lost(exc: SqlError) -> bool:
    """Whether the error says the session is gone, rather than that a statement failed."""
    # A session killed mid-result makes the driver read the server's last packet out of sequence; it
    # reports that without an error number, and the session is as gone as with one.
    return exc.code in CONNECTION_LOST or (exc.code == 0 and "packet sequence" in exc.message.lower())


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def member_stem(index: int, name: str) -> str:
    # Table names may hold any character; the member name only needs to be unique and sorted.
    return f"{index:04d}-{_SAFE.sub('_', name)[:60]}"


def row_select(table: schema.Table, where: str = "") -> str:
    """The query whose single column is each row of ``table`` rendered as the dump writes it."""
    return f"SELECT {table.row_expression()} FROM {schema.quote_name(table.name)}{where}"


def digest_rows(rows: Iterable[Row]) -> int:
    """The rows' digests summed, not yet reduced modulo 2**128 (see ROW_DIGEST); rows as streamed."""
    # map() keeps the per-row work in C: this runs once for every row of the database.
    return sum(map(int.from_bytes, map(_DIGEST, map(hashlib.sha256, map(_FIRST, rows)))))


async def digest_batch(rows: Sequence[Row]) -> int:
    """:func:`digest_rows` of one streamed batch, in a worker thread when the batch is large."""
    if sum(map(len, map(_FIRST, rows))) < THREAD_DIGEST_BYTES:
        return digest_rows(rows)
    return await asyncio.to_thread(digest_rows, rows)


def digest_hex(total: int) -> str:
    return f"{total % _DIGEST_MODULUS:032x}"


async def read_digest(reader: SqlConnection, table: schema.Table) -> str:
    """The row digest of ``table`` read through ``reader``, a session set up as the dump's readers
    are (READER_SESSION, BINARY_RESULTS): what a dump of the table now would record."""
    total = 0
    if table.dumped_columns:
        async for rows in reader.stream(row_select(table), FETCH_ROWS):
            total += await digest_batch(rows)
    return digest_hex(total)


@dataclass
class _Job:
    table: schema.Table
    index: int
    where: str = ""
    part: int = 0
    weight: int = 0


@dataclass
class _Counters:
    bytes_done: int = 0
    rows_done: int = 0
    tables_done: int = 0
    jobs_left: dict[str, int] = field(default_factory=dict)
    digests: dict[str, int] = field(default_factory=dict)  # per table, summed over its jobs


class _Archive:
    """Serialises members into the archive from worker threads; one member is written at a time."""

    def __init__(self, writer: ArchiveWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        self.members: list[str] = []
        self.write_seconds = 0.0

    async def add(self, name: str, chunks: list[bytes]) -> None:
        async with self._lock:
            started = time.perf_counter()
            await asyncio.to_thread(self._write, name, chunks)
            self.write_seconds += time.perf_counter() - started
            self.members.append(name)

    def _write(self, name: str, chunks: list[bytes]) -> None:
        with self._writer.open_member(name) as stream:
            for chunk in chunks:
                stream.write(chunk)


async def _connect(source: SqlServer) -> SqlConnection:
    conn = None
    try:
        conn = await source.connect(source.target.database)
        await conn.execute(READER_SESSION)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, SqlError):
            raise DumpError(f"cannot connect to the source database {source.target!r}: {exc.message}") from exc
        raise
    return conn


async def _show_create(conn: SqlConnection, sql: str, *columns: str) -> dict[str, Any]:
    row = await conn.fetch_one(sql)
    if row is None:
        raise DumpError(f"{sql} returned nothing")
    return {column: schema.row_value(row, column) for column in columns}


@dataclass
class _Snapshot:
    readers: list[SqlConnection]
    consistency: str
    note: str
    binlog: dict[str, Any] | None


async def _binlog_position(conn: SqlConnection, mariadb: bool) -> dict[str, Any] | None:
    row = None
    for statement in ("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"):
        try:
            row = await conn.fetch_one(statement)
            break
        except SqlError as exc:  # renamed in MySQL 8.4; denied without the privilege
            log.debug("%s: %s", statement, exc)
    if not row:
        return None
    gtid_sql = "SELECT @@GLOBAL.gtid_binlog_pos AS gtid" if mariadb else "SELECT @@GLOBAL.gtid_executed AS gtid"
    gtid_row = await conn.fetch_one(gtid_sql)
    return {
        "file": schema.row_value(row, "File"),
        "position": int(schema.row_value(row, "Position")),
        "gtid": (gtid_row or {}).get("gtid") or None,
    }


async def _open_snapshot(source: SqlServer, control: SqlConnection, parallelism: int, mariadb: bool) -> _Snapshot:
    start = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
    isolation = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
    try:
        await control.execute("SET SESSION lock_wait_timeout = 60")
        await control.execute("FLUSH TABLES WITH READ LOCK")
    except SqlError as exc:
        if exc.code not in ACCESS_DENIED:
            raise
        reader = await _connect(source)
        await reader.execute(isolation)
        await reader.execute(start)
        binlog = None
        if mariadb:
            # MariaDB reports the binary log position of a consistent snapshot without any lock.
            rows = await reader.fetch_all("SHOW STATUS LIKE 'binlog_snapshot_%'")
            values = {r["Variable_name"]: r["Value"] for r in rows}
            if values.get("Binlog_snapshot_file"):
                binlog = {
                    "file": values["Binlog_snapshot_file"],
                    "position": int(values["Binlog_snapshot_position"]),
                    "gtid": None,
                }
        note = (
            f"the account lacks the RELOAD privilege ({exc.message}); one connection read every table "
            "in a single snapshot, without parallelism"
        )
        return _Snapshot([reader], "single-connection", note, binlog)
    readers: list[SqlConnection] = []
    try:
        binlog = await _binlog_position(control, mariadb)
        for _ in range(parallelism):
            reader = await _connect(source)
            readers.append(reader)
            await reader.execute(isolation)
            await reader.execute(start)
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    finally:
        await control.execute("UNLOCK TABLES")
    note = f"{len(readers)} connections started one snapshot under a global read lock held while they began"
    return _Snapshot(readers, "shared-snapshot", note, binlog)


def _plan_jobs(tables: list[schema.Table], options: DumpOptions, ranges: dict[str, tuple[int, int]]) -> list[_Job]:
    """One job per table, or per key range of a large table; the largest pieces first, to even out the readers."""
    jobs: list[_Job] = []
    for index, table in enumerate(tables, start=1):
        bounds = ranges.get(table.name)
        key = table.integer_key
        if bounds is None or key is None:
            jobs.append(_Job(table, index, weight=table.data_bytes))
            continue
        low, high = bounds
        # Table statistics can be far behind after bulk changes; the key span is always current.
        estimate = max(table.data_bytes, (high - low + 1) * (table.average_row_bytes or ASSUMED_ROW_BYTES))
        pieces = max(1, math.ceil(estimate / options.member_bytes))
        if pieces == 1:
            jobs.append(_Job(table, index, weight=estimate))
            continue
        column = schema.quote_name(key.name)
        step = max(1, math.ceil((high - low + 1) / pieces))
        starts = list(range(low, high + 1, step))
        for part, start in enumerate(starts):
            if part == 0:
                where = f" WHERE {column} < {start + step}"
            elif part == len(starts) - 1:
                where = f" WHERE {column} >= {start}"
            else:
                where = f" WHERE {column} >= {start} AND {column} < {start + step}"
            jobs.append(_Job(table, index, where, part, weight=estimate // len(starts)))
    jobs.sort(key=lambda job: -job.weight)
    return jobs


async def _key_ranges(
    conn: SqlConnection, tables: list[schema.Table], options: DumpOptions
) -> dict[str, tuple[int, int]]:
    ranges = {}
    for table in tables:
        key = table.integer_key
        if key is None:
            continue
        row = await conn.fetch_one(
            f"SELECT MIN({schema.quote_name(key.name)}) AS lo, MAX({schema.quote_name(key.name)}) AS hi"
            f" FROM {schema.quote_name(table.name)}",
        )
        if row and row["lo"] is not None:
            ranges[table.name] = (int(row["lo"]), int(row["hi"]))
    return ranges


async def _run_job(
    reader: SqlConnection, job: _Job, archive: _Archive, options: DumpOptions, counters: _Counters,
    summaries: dict[str, TableSummary],
) -> None:  # fmt: skip
    table = job.table
    summary = summaries[table.name]
    stem = f"2-data/{member_stem(job.index, table.name)}"
    prefix = table.insert_prefix()
    sql = row_select(table, job.where)
    member: list[bytes] = [SESSION_HEADER]
    member_size = 0
    sequence = 0
    statement: list[bytes] = []
    statement_size = 0

    async def flush_member() -> None:
        nonlocal member, member_size, sequence
        name = f"{stem}.{job.part:03d}{sequence:03d}.sql"
        sequence += 1
        await archive.add(name, member)
        summary.members.append(name)
        member, member_size = [SESSION_HEADER], 0

    def end_statement() -> None:
        nonlocal statement, statement_size, member_size
        text = prefix + b",".join(statement) + b";\n"
        member.append(text)
        member_size += len(text)
        summary.sql_bytes += len(text)
        counters.bytes_done += len(text)
        statement, statement_size = [], 0

    if not table.dumped_columns:
        counters.jobs_left[table.name] -= 1
        return
    batches = reader.stream(sql, FETCH_ROWS)
    try:
        async for rows in batches:
            for (row,) in rows:
                statement.append(row)
                statement_size += len(row) + 1
                if statement_size >= options.statement_bytes:
                    end_statement()
                    if member_size >= options.member_bytes:
                        await flush_member()
            summary.rows += len(rows)
            counters.rows_done += len(rows)
            # Awaited before the += reads the sum: another job of the same table may add to it meanwhile.
            digest = await digest_batch(rows)
            counters.digests[table.name] += digest
    except BaseException as exc:
        await _abandon(reader, batches)
        if not isinstance(exc, asyncio.CancelledError) and _cancelling():
            # Cancelled inside the driver's read, whose clean-up then failed on the dropped session:
            # the cancellation is what happened, and what the caller must see.
            raise asyncio.CancelledError from exc
        raise
    if statement:
        end_statement()
    if member_size:
        await flush_member()
    counters.jobs_left[table.name] -= 1
    if counters.jobs_left[table.name] == 0:
        counters.tables_done += 1


async def _abandon(reader: SqlConnection, batches: AsyncIterator[Sequence[Row]]) -> None:
    """Ends a stream left half-read by a failure or a cancellation, dropping its connection first.

    Closing an unbuffered cursor reads the rest of its result: all of it on a healthy session, and on
    a broken or cancelled one an error that would hide the real one. Dropped, the session has no rest.
    """
    reader.close()
    if isinstance(batches, AsyncGenerator):
        with contextlib.suppress(Exception):
            await batches.aclose()


async def _read_definitions(
    control: SqlConnection, inventory: schema.Inventory, options: DumpOptions
) -> dict[str, list[bytes]]:
    """CREATE statements of every object, as members keyed by name."""
    keep = options.keep_definers

    def owned(sql: str) -> str:
        return sql if keep else schema.strip_definer(sql)

    members: dict[str, list[bytes]] = {}
    # Columns and routine parameters declared without a collation take the database's default.
    defaults = await control.fetch_one(
        "SELECT DEFAULT_CHARACTER_SET_NAME AS charset, DEFAULT_COLLATION_NAME AS collation"
        " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()",
    )
    if defaults:
        members["0-database.sql"] = [
            SESSION_HEADER,
            f"ALTER DATABASE CHARACTER SET {defaults['charset']} COLLATE {defaults['collation']};\n".encode(),
        ]
    for index, table in enumerate(inventory.tables, start=1):
        row = await _show_create(control, f"SHOW CREATE TABLE {schema.quote_name(table.name)}", "Create Table")
        table.create_sql = row["Create Table"]
        members[f"1-tables/{member_stem(index, table.name)}.sql"] = [
            SESSION_HEADER,
            f"DROP TABLE IF EXISTS {schema.quote_name(table.name)};\n{table.create_sql};\n".encode(),
        ]
    routines = []
    for routine in inventory.routines:
        column = "Create Procedure" if routine.kind == "PROCEDURE" else "Create Function"
        row = await _show_create(
            control,
            f"SHOW CREATE {routine.kind} {schema.quote_name(routine.name)}",
            column, "sql_mode", "character_set_client", "collation_connection",
        )  # fmt: skip
        if row[column] is None:
            raise DumpError(f"the account may not read the definition of {routine.kind.lower()} {routine.name}")
        routines.append((row, owned(row[column])))
    if routines:
        members["3-routines.sql"] = [_delimited(routines, "routine")]
    views = {}
    for view in inventory.views:
        row = await _show_create(control, f"SHOW CREATE VIEW {schema.quote_name(view)}", "Create View",
                                 "character_set_client", "collation_connection")  # fmt: skip
        views[view] = (row, owned(row["Create View"]))
    if views:
        ordered = schema.order_views({name: sql for name, (_, sql) in views.items()})
        members["4-views.sql"] = [_delimited([views[name] for name in ordered], "view")]
    triggers = []
    for trigger in inventory.triggers:
        row = await _show_create(control, f"SHOW CREATE TRIGGER {schema.quote_name(trigger)}",
                                 "SQL Original Statement", "sql_mode", "character_set_client",
                                 "collation_connection")  # fmt: skip
        triggers.append((row, owned(row["SQL Original Statement"])))
    if triggers:
        members["5-triggers.sql"] = [_delimited(triggers, "trigger")]
    events = []
    for event in inventory.events:
        row = await _show_create(control, f"SHOW CREATE EVENT {schema.quote_name(event)}", "Create Event",
                                 "sql_mode", "character_set_client", "collation_connection", "time_zone")  # fmt: skip
        events.append((row, owned(row["Create Event"])))
    if events:
        members["6-events.sql"] = [_delimited(events, "event")]
    return members


def _delimited(objects: list[tuple[dict[str, Any], str]], kind: str) -> bytes:
    """A member of CREATE statements whose bodies may hold semicolons, for the stock client too."""
    body = "\n".join(sql for _, sql in objects)
    delimiter = next(d for d in (";;", "$$", "//", "$$$$", "@@@@") if d not in body)
    lines = [
        "/* backup-system dump member: replay in name order with the mysql/mariadb client */",
        "SET NAMES utf8mb4;",
        "SET TIME_ZONE='+00:00';",
        f"DELIMITER {delimiter}",
    ]
    for row, sql in objects:
        settings = [f"SET SESSION sql_mode = '{row.get('sql_mode') or ''}'"]
        if row.get("character_set_client"):
            settings.append(f"SET character_set_client = {row['character_set_client']}")
        if row.get("collation_connection"):
            settings.append(f"SET collation_connection = {row['collation_connection']}")
        if kind == "event" and row.get("time_zone"):
            settings.append(f"SET time_zone = '{row['time_zone']}'")
        lines.extend(f"{statement}{delimiter}" for statement in settings)
        lines.append(f"{sql}{delimiter}")
    lines.append("DELIMITER ;")
    lines.append("SET NAMES utf8mb4;")
    return ("\n".join(lines) + "\n").encode()


async def dump_database(
    source: SqlServer,
    archive_path: Path,
    *,
    password: str | None,
    options: DumpOptions | None = None,
    progress: ProgressCallback | None = None,
) -> DumpResult:
    """Dumps ``source`` into a new archive at ``archive_path``; nothing is left there on failure."""
    options = options or DumpOptions()
    control = await _connect(source)
    writer = await asyncio.to_thread(
        ArchiveWriter, archive_path, password=password, compression_level=options.compression_level
    )
    readers: list[SqlConnection] = []
    ticker: asyncio.Task[None] | None = None
    try:
        version_row = await control.fetch_one("SELECT VERSION() AS v")
        server_version = str((version_row or {}).get("v", ""))
        mariadb = "mariadb" in server_version.lower()
        inventory = await schema.read_inventory(control, source.target.database)
        snapshot = await _open_snapshot(source, control, max(1, options.parallelism), mariadb)
        readers = snapshot.readers
        # Definitions are read after the snapshot began; a schema change during the dump is refused
        # by the readers (the table definition changed) rather than silently mixed in.
        definitions = await _read_definitions(control, inventory, options)
        ranges = await _key_ranges(readers[0], inventory.tables, options)
        jobs = _plan_jobs(inventory.tables, options, ranges)
        summaries = {table.name: TableSummary(table.name, 0, 0) for table in inventory.tables}
        counters = _Counters(
            jobs_left={table.name: 0 for table in inventory.tables},
            digests={table.name: 0 for table in inventory.tables},
        )
        for job in jobs:
            counters.jobs_left[job.table.name] += 1
        archive = _Archive(writer)
        for name in sorted(n for n in definitions if n < "2"):
            await archive.add(name, definitions[name])
        if progress is not None:
            ticker = asyncio.create_task(_report(progress, counters, len(inventory.tables)))
        queue: asyncio.Queue[_Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        for reader in readers:
            await reader.execute(BINARY_RESULTS)
        await _drain_all(readers, queue, archive, options, counters, summaries)
        for name, total in counters.digests.items():
            summaries[name].digest = digest_hex(total)
        for name in sorted(n for n in definitions if n > "2"):
            await archive.add(name, definitions[name])
        info = await asyncio.to_thread(writer.commit)
        log.info("archive writing took %.2f s", archive.write_seconds)
        if ticker is not None:
            ticker.cancel()
            await progress(_progress_of(counters, len(inventory.tables)))  # type: ignore[misc]
        return DumpResult(
            archive_bytes=info.size,
            sha256=info.sha256,
            tables=[summaries[table.name] for table in inventory.tables],
            server_version=server_version,
            consistency=snapshot.consistency,
            consistency_note=snapshot.note,
            binlog=snapshot.binlog,
            members=archive.members,
            row_digest=ROW_DIGEST,
        )
    except SqlError as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc  # see _run_job
        if connection_lost(exc):
            raise SourceConnectionLost(f"the connection to the source database was lost: {exc.message}") from exc
        raise DumpError(f"reading the source database failed: {exc.message}") from exc
    finally:
        if ticker is not None and not ticker.done():
            ticker.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(writer.abort)
        for conn in (*readers, control):
            conn.close()


async def _drain_all(
    readers: list[SqlConnection], queue: asyncio.Queue[_Job], archive: _Archive, options: DumpOptions,
    counters: _Counters, summaries: dict[str, TableSummary],
) -> None:  # fmt: skip
    """Every reader works the queue; the first failure stops the others before it is raised, so none
    still writes to the archive or reads while the dump cleans up."""
    drains = [
        asyncio.create_task(_drain(reader, queue, archive, options, counters, summaries), name=f"dump reader {n}")
        for n, reader in enumerate(readers, start=1)
    ]
    try:
        await asyncio.gather(*drains)
    except BaseException:
        for drain in drains:
            drain.cancel()
        await asyncio.wait(drains)
        raise


async def _drain(
    reader: SqlConnection, queue: asyncio.Queue[_Job], archive: _Archive, options: DumpOptions, counters: _Counters,
    summaries: dict[str, TableSummary],
) -> None:  # fmt: skip
    while True:
        try:
            job = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await _run_job(reader, job, archive, options, counters, summaries)


def _progress_of(counters: _Counters, tables_total: int) -> DumpProgress:
    return DumpProgress(counters.bytes_done, counters.rows_done, counters.tables_done, tables_total)


async def _report(progress: Callable[[DumpProgress], Awaitable[None]], counters: _Counters, total: int) -> None:
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        started = time.monotonic()
        try:
            await progress(_progress_of(counters, total))
        except Exception:
            log.exception("progress report failed")
        log.debug("progress reported in %.3f s", time.monotonic() - started)
