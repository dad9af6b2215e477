"""The restore drill: a database backup loaded into a scratch database and proved against its dump.

What a passing drill proves: the archive opens with the key; every member authenticates before any of
its statements runs; the whole backup loads within the restore limits, its tables, data, routines,
views, triggers and events, every statement without error; the scratch database then holds as many
objects of each kind as the archive's members define; and every table holds exactly the rows the
dump read: as many (COUNT(*)), and the same row digest (dump.ROW_DIGEST) when read back with the
dump's own server-side rendering. A backup made before digests were recorded is compared by row
counts only, and the detail says so.

What it cannot prove: that the source was right when it was dumped (rows already wrong or missing
there are faithfully reproduced, and match), that views return and routines do what they did (they
are only created), or that the archive is the one the manifest names (the archive's SHA-256 is
another check). Events are created disabled, so that none runs against the scratch database, or
against another database it names, while the drill lasts. The digests compare the server's renderings
of the values: a drill on another server version than the dump's may see some render differently,
which a failure then mentions.

The scratch database is always dropped at the end; one a crashed process left behind is dropped by
:func:`sweep_scratch_databases` when the service starts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_common.domain.documents import RestoreLimits
from backup_common.domain.verification import Check
from backup_common.engine.archive import ArchiveError
from backup_common.engine.database import schema
from backup_common.engine.database.dump import BINARY_RESULTS, READER_SESSION, ROW_DIGEST, read_digest
from backup_common.engine.database.load import (
    DEFAULT_LIMITS,
    LoadError,
    MemberUnreadable,
    StatementFailed,
    all_or_cancel,
    load_database,
)
from backup_common.engine.database.manifest import ManifestError, manifest_tables
from backup_common.engine.database.model import LoadSummary
from backup_common.engine.database.restore import parse_object
from backup_common.engine.database.sql import SqlConnection, SqlError, SqlServer, quote_identifier

__all__ = ["DRILL_PREFIX", "restore_drill", "sweep_scratch_databases"]

log = logging.getLogger(__name__)

DRILL_PREFIX = "bk_drill_"
CHECK_NAME = "restore_drill"
MAX_NAME = 64  # characters in a database name
# Table problems named in the detail; a damaged backup can differ in every table.
MAX_PROBLEMS = 10
_KINDS = ("views", "routines", "triggers", "events")
_KIND_OF = {"PROCEDURE": "routines", "FUNCTION": "routines", "VIEW": "views", "TRIGGER": "triggers", "EVENT": "events"}
# SHOW CREATE EVENT always writes the status after ON COMPLETION; the first match is in the header.
_EVENT_STATUS = re.compile(
    rb"(\bON\s+COMPLETION\s+(?:NOT\s+)?PRESERVE\s+)(?:ENABLE|DISABLE\s+ON\s+(?:SLAVE|REPLICA)|DISABLE)\b", re.I
)


class _Failed(Exception):
    """The drill found the backup wanting; the message says what, in an operator's words."""


@dataclass(frozen=True)
class _Expected:
    """A table as the part manifest records it."""

    name: str
    rows: int
    digest: str | None  # None: compared by row count only


@dataclass(frozen=True)
class _Manifest:
    tables: list[_Expected]
    no_digests: str | None  # why no table is compared by digest, or None


def _expected_tables(manifest: dict[str, Any]) -> _Manifest:
    algorithm = manifest.get("row_digest")
    no_digests = None
    if algorithm is None:
        no_digests = "the manifest records no row digests (the backup was made before they were)"
    elif algorithm != ROW_DIGEST:
        no_digests = f"the manifest's row digests are {algorithm!r}, which this version does not compute"
    try:
        listed = manifest_tables(manifest)
    except ManifestError as exc:
        raise _Failed(str(exc)) from exc
    # A table without a digest is compared by its row count.
    tables = [_Expected(table.name, table.rows, table.digest if no_digests is None else None) for table in listed]
    return _Manifest(tables, no_digests)


class _Definitions:
    """Given each statement of the members after the data just before it runs (load_database's
    ``rewrite_objects``): counts the objects the archive defines, by kind, and has every event created
    disabled, so that none fires while the scratch database exists."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_KINDS, 0)

    def __call__(self, statement: bytes) -> list[bytes]:
        try:
            created = parse_object(statement)
        except ValueError as exc:  # a restore would refuse the backup for it too
            raise _Failed(f"a definition after the data cannot be read: {exc}") from None
        if created is None:
            return [statement]
        self.counts[_KIND_OF[created.kind]] += 1
        if created.kind != "EVENT":
            return [statement]
        disabled, found = _EVENT_STATUS.subn(rb"\1DISABLE", statement, count=1)
        if found:
            return [disabled]
        # Not as SHOW CREATE EVENT writes it: disabled at once instead.
        return [statement, b"ALTER EVENT " + quote_identifier(created.name).encode() + b" DISABLE"]


def _statement_failure(exc: StatementFailed) -> str:
    try:
        created = parse_object(exc.statement)
    except ValueError:
        created = None  # a CREATE TABLE, say
    if created is not None:
        return f"{created.kind.lower()} {created.name} could not be created: {exc.error.message}"
    return f"member {exc}"


def _text(value: Any) -> str:
    """A name as the driver returned it (bytes for some binary-collated columns)."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- the scratch database ----------------------------------------------------------------------


def _check_scratch(scratch: str) -> None:
    if not scratch.startswith(DRILL_PREFIX) or len(scratch) == len(DRILL_PREFIX) or len(scratch) > MAX_NAME:
        raise ValueError(
            f"a scratch database name must start with {DRILL_PREFIX!r} and have at most {MAX_NAME} characters,"
            f" not {scratch!r}"
        )


async def _drop(conn: SqlConnection, name: str) -> None:
    # Nothing outside a scratch database should reference it; should anything, it does not hold the drop up.
    await conn.execute("SET SESSION foreign_key_checks = 0")
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")


async def _drop_scratch(server: SqlServer, scratch: str) -> str | None:
    """Drops the scratch database; why it could not be, or None."""
    try:
        conn = await server.connect(None)
        try:
            await _drop(conn, scratch)
        finally:
            conn.close()
    except SqlError as exc:
        log.warning("could not drop the scratch database %s: %s", scratch, exc.message)
        return f"{exc.message} (server error {exc.code})"
    return None


# --- the tables ----------------------------------------------------------------------------------


async def _open_reader(server: SqlServer, scratch: str) -> SqlConnection:
    """A session rendering rows as the dump's readers do, so that an exact copy gives the same digest."""
    conn = await server.connect(scratch)
    try:
        await conn.execute(READER_SESSION)
        await conn.execute(BINARY_RESULTS)
    except BaseException:
        conn.close()
        raise
    return conn


async def _compare_tables(
    server: SqlServer, scratch: str, expected: list[_Expected], parallelism: int
) -> tuple[int, list[str]]:
    """Each table's row count and digest against the manifest's, on ``parallelism`` sessions; returns
    the rows counted and what differs, in the manifest's order."""
    conn = await server.connect(scratch)
    try:
        inventory = await schema.read_inventory(conn, scratch)
    finally:
        conn.close()
    found = {table.name: table for table in inventory.tables}
    problems: dict[str, str] = {}
    for entry in expected:
        if entry.name not in found:
            problems[entry.name] = f"table {entry.name}: missing from the loaded copy"
    listed = {entry.name for entry in expected}
    extra = [name for name in found if name not in listed]
    queue: asyncio.Queue[_Expected] = asyncio.Queue()
    # The largest first, to even out the readers.
    for entry in sorted(expected, key=lambda entry: -entry.rows):
        if entry.name in found:
            queue.put_nowait(entry)
    counted = 0

    async def compare() -> None:
        nonlocal counted
        reader = await _open_reader(server, scratch)
        try:
            while True:
                try:
                    entry = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                table = found[entry.name]
                row = await reader.fetch_one(f"SELECT COUNT(*) AS n FROM {schema.quote_name(table.name)}")
                count = int((row or {}).get("n", -1))
                counted += count
                if count != entry.rows:
                    problems[entry.name] = f"table {entry.name}: {_plural(count, 'row')}, the dump read {entry.rows}"
                    continue
                if entry.digest is not None:
                    digest = await read_digest(reader, table)
                    if digest != entry.digest:
                        problems[entry.name] = (
                            f"table {entry.name}: rows differ from what the dump read"
                            f" (digest {digest}, the dump's {entry.digest})"
                        )
        finally:
            reader.close()

    await all_or_cancel([compare() for _ in range(max(1, min(parallelism, queue.qsize())))])
    ordered = [problems[entry.name] for entry in expected if entry.name in problems]
    ordered += [f"table {name}: loaded, but the manifest does not list it" for name in extra]
    return counted, ordered


# --- the drill -----------------------------------------------------------------------------------


def _objects_problem(summary: LoadSummary, defined: dict[str, int]) -> str | None:
    held = dict(zip(_KINDS, (summary.views, summary.routines, summary.triggers, summary.events), strict=True))
    differing = [
        f"{_plural(held[kind], kind[:-1])} where the archive's members define {defined[kind]}"
        for kind in _KINDS
        if held[kind] != defined[kind]
    ]
    if not differing:
        return None
    return "the scratch database holds " + ", ".join(differing)


async def _version_note(server: SqlServer, manifest: dict[str, Any]) -> list[str]:
    """A note when this server is another version than the dump's, which may render values differently."""
    conn = await server.connect(None)
    try:
        row = await conn.fetch_one("SELECT VERSION() AS v")
    finally:
        conn.close()
    version, dumped = _text((row or {}).get("v", "")), manifest.get("server_version")
    if not isinstance(dumped, str) or dumped == version:
        return []
    return [f"note: the dump was read by server {dumped}, the drill by {version}, which may render values differently"]


async def _drill(
    archive: Path,
    manifest: dict[str, Any],
    server: SqlServer,
    scratch: str,
    password: str | None,
    limits: RestoreLimits,
    parallelism: int,
) -> str:
    """Runs the drill; the detail of a pass, or raises what failed."""
    expected = _expected_tables(manifest)
    conn = await server.connect(None)
    try:
        await _drop(conn, scratch)
    finally:
        conn.close()
    definitions = _Definitions()
    summary = await load_database(
        archive, server, password=password, force=True, parallelism=parallelism, limits=limits,
        database=scratch, rewrite_objects=definitions,
    )  # fmt: skip
    if problem := _objects_problem(summary, definitions.counts):
        raise _Failed(problem)
    rows, problems = await _compare_tables(server, scratch, expected.tables, parallelism)
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"and {len(problems) - MAX_PROBLEMS} more")
        if any("differ from what the dump read" in problem for problem in problems):
            shown += await _version_note(server, manifest)
        raise _Failed("; ".join(shown))
    loaded = ", ".join(
        [
            _plural(len(expected.tables), "table"),
            _plural(rows, "row"),
            _plural(summary.views, "view"),
            _plural(summary.routines, "routine"),
            _plural(summary.triggers, "trigger"),
            _plural(summary.events, "event"),
        ]
    )
    unproven = [entry.name for entry in expected.tables if entry.digest is None]
    if expected.no_digests is not None:
        proof = f"every table's row count matches the dump's; {expected.no_digests}, so rows were not compared"
    elif unproven:
        proof = (
            f"every table's row count matches the dump's, and the rows of all but {', '.join(unproven)}"
            f" match the dump's digest ({'it carries' if len(unproven) == 1 else 'they carry'} none)"
        )
    else:
        proof = "every table's rows match the dump's digest"
    return f"loaded {loaded} into a scratch database; {proof}"


async def restore_drill(
    archive: Path,
    manifest: dict[str, Any],
    server: SqlServer,
    scratch: str,
    *,
    password: str | None,
    limits: RestoreLimits = DEFAULT_LIMITS,
    parallelism: int = 2,
) -> Check:
    """Loads the database part ``archive`` into the scratch database ``scratch`` on ``server`` (a name
    starting with DRILL_PREFIX; dropped first if it exists, and always at the end) and proves it against
    the part ``manifest``: see the module's description.

    A backup found wanting gives a failed check naming what failed; only a programming error (such as a
    scratch name without the prefix, a ValueError) or cancellation raises.
    """
    _check_scratch(scratch)
    started = time.monotonic()
    ok = False
    try:
        detail = await _drill(archive, manifest, server, scratch, password, limits, parallelism)
        ok = True
    except _Failed as exc:
        detail = str(exc)
    except StatementFailed as exc:
        detail = _statement_failure(exc)
    except MemberUnreadable as exc:
        detail = str(exc)
    except LoadError as exc:
        detail = f"the backup could not be loaded: {exc}"
    except (ArchiveError, OSError) as exc:
        detail = f"the archive cannot be read: {exc}"
    except SqlError as exc:
        detail = f"the drill could not run on the server: {exc.message} (server error {exc.code})"
    finally:
        # Shielded: a cancellation while dropping stops the wait, not the drop.
        left = await asyncio.shield(_drop_scratch(server, scratch))
    if (task := asyncio.current_task()) is not None and task.cancelling():
        # The driver's connect (asyncio.wait_for on Python 3.11) can swallow a cancellation: stop anyway.
        raise asyncio.CancelledError
    if left is not None:
        detail += f"; the scratch database {scratch} could not be dropped ({left}): the next sweep drops it"
    return Check(CHECK_NAME, ok, detail, time.monotonic() - started)


async def sweep_scratch_databases(
    server: SqlServer, *, prefix: str = DRILL_PREFIX, keep: Callable[[str], bool] = lambda name: False
) -> list[str]:
    """Drops every database whose name starts with ``prefix`` (DRILL_PREFIX or longer: the scratch
    databases of one catalog), but those ``keep`` says are in use (by another replica's drill);
    returns the names dropped. One that cannot be dropped is logged and left for the next sweep."""
    if not prefix.startswith(DRILL_PREFIX):
        raise ValueError(f"scratch database prefixes start with {DRILL_PREFIX!r}, not {prefix!r}")
    conn = await server.connect(None)
    try:
        rows = await conn.fetch_all("SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA")
        # Filtered here rather than with LIKE, where the prefix's underscores would match any character.
        names = sorted(name for name in (_text(row["name"]) for row in rows) if name.startswith(prefix))
        dropped: list[str] = []
        for name in names:
            if keep(name):
                continue
            try:
                await _drop(conn, name)
            except SqlError as exc:
                log.warning("could not drop the leftover scratch database %s: %s", name, exc.message)
                continue
            dropped.append(name)
        return dropped
    finally:
        conn.close()
