"""Restores the database part of a backup: into the live database in place, or into another database.

What an administrator needs on a bad day: the application sees the old data or the new, never a mix
or a missing table, and a damaged backup fails with the target exactly as it was. So a restore

1. checks before it touches anything: the tables asked for are in the backup, the target is empty
   unless replacing it was asked for, the archive's SHA-256 is the manifest's, and the archive keeps
   the restore limits (members, total size, compression ratio);
2. loads the chosen tables' definitions and data into a staging database, in parallel, each member
   read to its end (which authenticates it) before any of its statements runs; views, routines,
   triggers and events stay out of it (a trigger cannot follow its table to another database, nor a
   view be renamed into one) but their members are read and checked now too;
3. compares each staged table's row count with the manifest's;
4. swaps the staged tables in with ONE ``RENAME TABLE``: a table the target has is renamed to an old
   name within the target (its triggers cannot leave the database) and the staged one takes its
   name, so any query sees the old table or the new one, never none;
5. settles the target: drops the old tables and, for a full restore, whatever the backup does not
   have (tables, views, routines, triggers, events), then (re)creates the backup's views, routines,
   triggers and events, or for a selective restore only the chosen tables' triggers.

A failure before the swap drops the staging database and leaves the target as it was. A failure after
it leaves the backup's tables in place and says what was left undone; running the same restore again
(same staging name) finishes it, dropping first what the earlier attempt left behind.

Foreign keys need care, because InnoDB keeps constraint names unique per database and points a
constraint at whatever its parent table is renamed to. A staged table whose constraint name the
target already uses carries a temporary name until the old tables are gone; a staged table's
reference to a table that is not restored points at the target's table from the start; and in a
selective restore the target's constraints that followed a replaced table to its old name are
pointed back at the restored table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveError, ArchiveReader, MemberInfo, sha256_file
from backup_common.engine.database.dump import member_stem
from backup_common.engine.database.load import (
    BUFFERED_MEMBER_BYTES,
    DEFAULT_LIMITS,
    LoadError,
    MemberUnreadable,
    ProgressTracker,
    connect_loader,
    limits_breach,
    load_members_in_parallel,
    read_member,
    run_member,
    run_statements,
    split_statements,
)
from backup_common.engine.database.manifest import ManifestError, manifest_tables
from backup_common.engine.database.model import DatabaseRestoreProgress, DatabaseRestoreSummary
from backup_common.engine.database.schema import row_value
from backup_common.engine.database.sql import SqlConnection, SqlError, SqlServer, quote_identifier

__all__ = [
    "DamagedBackup",
    "DatabaseRestoreError",
    "DatabaseRestoreProgress",
    "DatabaseRestoreSummary",
    "TargetNotEmpty",
    "database_objects",
    "old_table_prefix",
    "restore_database",
    "unknown_tables",
]

log = logging.getLogger(__name__)

MAX_NAME = 64  # characters in a database, table or constraint name
SYSTEM_DATABASES = frozenset({"information_schema", "mysql", "performance_schema", "sys"})
# The swap and the DDL after it wait this long for a table a long transaction holds, then try again
# after a pause: a pending exclusive lock stalls every new query on the table, so it is never kept long.
LOCK_WAIT_SECONDS = 5
LOCK_ATTEMPTS = 12
LOCK_PAUSE_SECONDS = 1.0
LOCK_WAITS = {1205, 1213}
# A table created or dropped between the listing and the RENAME: list again and retry.
SWAP_RETRYABLE = LOCK_WAITS | {1050, 1146}
CONTROL_SESSION = (
    f"SET SESSION autocommit = 1, foreign_key_checks = 0, lock_wait_timeout = {LOCK_WAIT_SECONDS}, time_zone = '+00:00'"
)
OBJECT_MEMBERS = ("3-routines.sql", "4-views.sql", "5-triggers.sql", "6-events.sql")


class DatabaseRestoreError(LoadError):
    """The restore was refused or failed; the message is the reason shown to the operator."""


class TargetNotEmpty(DatabaseRestoreError):
    """The target database holds objects and replacing them was not asked for; nothing was touched."""


class DamagedBackup(DatabaseRestoreError):
    """The archive is not what the manifest describes, fails authentication, exceeds the restore
    limits, or loads other row counts than the manifest's; nothing in the target was touched."""


# --- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    index: int  # position in the manifest from 1, as in the names of its members
    name: str
    rows: int
    definition: str  # member
    data: tuple[str, ...]  # members


def unknown_tables(manifest: dict[str, Any], tables: Sequence[str]) -> list[str]:
    """Names in ``tables`` that the database part manifest (its "tables" list of
    {"name", "rows", "sql_bytes", "members"}) does not hold, each once, in the order given."""
    listed = manifest.get("tables")
    known = {entry.get("name") for entry in listed if isinstance(entry, dict)} if isinstance(listed, list) else set()
    unknown: list[str] = []
    for name in tables:
        if name not in known and name not in unknown:
            unknown.append(name)
    return unknown


def _manifest_tables(manifest: dict[str, Any]) -> list[_Table]:
    try:
        listed = manifest_tables(manifest)
    except ManifestError as exc:
        raise DamagedBackup(str(exc)) from exc
    return [
        _Table(
            table.index, table.name, table.rows, f"1-tables/{member_stem(table.index, table.name)}.sql", table.members
        )
        for table in listed
    ]


# --- statements of the backup --------------------------------------------------------------------

_IDENT = r"(?:`(?:[^`]|``)+`|\"(?:[^\"]|\"\")+\"|[0-9A-Za-z_$\u0080-\uffff]+)"
_ACCOUNT_PART = r"(?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'|[^\s@]+)"
_CREATE_OBJECT = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:ALGORITHM\s*=\s*\w+\s+)?"
    rf"(?:DEFINER\s*=\s*(?:CURRENT_USER(?:\s*\(\s*\))?|{_ACCOUNT_PART}(?:\s*@\s*{_ACCOUNT_PART})?)\s+)?"
    r"(?:SQL\s+SECURITY\s+\w+\s+)?(?:AGGREGATE\s+)?"
    r"(?P<kind>PROCEDURE|FUNCTION|VIEW|TRIGGER|EVENT)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:{_IDENT}\s*\.\s*)?(?P<name>{_IDENT})",
    re.IGNORECASE,
)
_TRIGGER_TABLE = re.compile(
    r"\s*(?:BEFORE|AFTER)\s+(?:INSERT|UPDATE|DELETE)(?:\s+OR\s+(?:INSERT|UPDATE|DELETE))*\s+ON\s+"
    rf"(?:{_IDENT}\s*\.\s*)?(?P<table>{_IDENT})",
    re.IGNORECASE,
)
_OR_REPLACE = re.compile(rb"\s*CREATE\s+(?!OR\s+REPLACE\b)", re.IGNORECASE)
_CHARSET = re.compile(rb"ALTER DATABASE CHARACTER SET (\w+) COLLATE (\w+)", re.IGNORECASE)

_QUOTED = r"`(?:[^`]|``)+`"
# A foreign key as SHOW CREATE TABLE writes it, one per line.
_FOREIGN_KEY = re.compile(
    rf"^(?P<indent>\s*)CONSTRAINT (?P<name>{_QUOTED}) (?P<keys>FOREIGN KEY \((?:{_QUOTED}(?:, ?)?)+\)) REFERENCES "
    rf"(?P<ref>{_QUOTED}(?:\.{_QUOTED})?)(?P<rest> \(.*?)(?P<comma>,?)$"
)


def _text(value: Any) -> str:
    """A name or definition as the driver returned it (bytes for some binary-collated columns)."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _unquote(identifier: str) -> str:
    if identifier[:1] in ("`", '"') and identifier[-1:] == identifier[:1]:
        quote = identifier[0]
        return identifier[1:-1].replace(quote * 2, quote)
    return identifier


@dataclass(frozen=True)
class _Object:
    kind: str  # PROCEDURE, FUNCTION, VIEW, TRIGGER or EVENT
    name: str
    table: str | None = None  # a trigger's


def parse_object(statement: bytes) -> _Object | None:
    """The object a CREATE statement of members 3-6 creates; None for any other statement.
    Raises ValueError for a CREATE statement it cannot read."""
    text = statement.decode("utf-8", errors="replace").lstrip()
    if text[:6].upper() != "CREATE":
        return None
    found = _CREATE_OBJECT.match(text)
    if found is None:
        raise ValueError(f"cannot tell what this statement creates: {text[:120]}…")
    kind, name = found["kind"].upper(), _unquote(found["name"])
    if kind != "TRIGGER":
        return _Object(kind, name)
    on = _TRIGGER_TABLE.match(text, found.end())
    if on is None:
        raise ValueError(f"cannot tell which table trigger {name} is on: {text[:120]}…")
    return _Object(kind, name, _unquote(on["table"]))


@dataclass(frozen=True)
class _ConstraintRename:
    temporary: str
    name: str
    clause: str  # FOREIGN KEY (...) REFERENCES `db`.`table` (...) [ON ...]


def stage_foreign_keys(
    create: str, *, target: str, staged: set[str], taken: set[str], fresh: Callable[[], str]
) -> tuple[str, list[_ConstraintRename]]:
    """A CREATE TABLE statement fit for the staging database, and the constraints it renamed.

    A reference to an unqualified table that is not staged points at the target's table (the rename
    into the target would not move it); a constraint whose name the target uses (``taken``, lower
    case) gets a temporary name from ``fresh``, since the swap would otherwise collide with the old table's.
    """
    lines = create.split("\n")
    renames: list[_ConstraintRename] = []
    for number, line in enumerate(lines):
        found = _FOREIGN_KEY.match(line)
        if found is None:
            continue
        parts = [_unquote(part) for part in re.findall(_QUOTED, found["ref"])]
        # After the swap every unqualified reference means the target's table.
        final_ref = found["ref"] if len(parts) == 2 else f"{quote_identifier(target)}.{quote_identifier(parts[0])}"
        staged_ref = found["ref"] if len(parts) == 2 or parts[0] in staged else final_ref
        name = _unquote(found["name"])
        quoted_name = found["name"]
        if name.lower() in taken:
            temporary = fresh()
            quoted_name = quote_identifier(temporary)
            renames.append(_ConstraintRename(temporary, name, f"{found['keys']} REFERENCES {final_ref}{found['rest']}"))
        lines[number] = (
            f"{found['indent']}CONSTRAINT {quoted_name} {found['keys']} REFERENCES {staged_ref}"
            f"{found['rest']}{found['comma']}"
        )
    return "\n".join(lines), renames


def _foreign_key_clauses(create: str) -> dict[str, tuple[str, list[str], str]]:
    """constraint name -> (keys, referenced table parts, rest) of each foreign key of a CREATE TABLE."""
    clauses = {}
    for line in create.split("\n"):
        if found := _FOREIGN_KEY.match(line):
            parts = [_unquote(part) for part in re.findall(_QUOTED, found["ref"])]
            clauses[_unquote(found["name"])] = (found["keys"], parts, found["rest"])
    return clauses


@dataclass
class _Statement:
    sql: bytes
    creates: _Object | None


def _read_objects(
    reader: ArchiveReader, infos: dict[str, MemberInfo], names: Iterable[str]
) -> dict[str, list[_Statement]]:
    """The statements of members 3-6, read now so that they are authenticated before anything is touched."""
    members: dict[str, list[_Statement]] = {}
    for name in names:
        if name not in infos:
            continue
        if infos[name].size > BUFFERED_MEMBER_BYTES:
            raise DatabaseRestoreError(
                f"member {name} declares {infos[name].size} bytes of definitions, more than the"
                f" {BUFFERED_MEMBER_BYTES} bytes a restore holds in memory"
            )
        statements = []
        for sql in split_statements(read_member(reader, name)):
            try:
                creates = parse_object(sql)
            except ValueError as exc:
                raise DatabaseRestoreError(f"member {name}: {exc}") from None
            statements.append(_Statement(sql, creates))
        members[name] = statements
    return members


def _database_defaults(reader: ArchiveReader, infos: dict[str, MemberInfo]) -> tuple[str, str | None]:
    """The backup's default character set and collation (from 0-database.sql), else utf8mb4."""
    if "0-database.sql" in infos:
        found = _CHARSET.search(bytes(read_member(reader, "0-database.sql")))
        if found:
            return found[1].decode(), found[2].decode()
    return "utf8mb4", None


# --- the target ----------------------------------------------------------------------------------


@dataclass
class _Target:
    exists: bool
    tables: dict[str, str] = field(default_factory=dict)  # name -> TABLE_TYPE, views included
    routines: list[tuple[str, str]] = field(default_factory=list)  # (PROCEDURE or FUNCTION, name)
    triggers: dict[str, str] = field(default_factory=dict)  # name -> table
    events: list[str] = field(default_factory=list)
    constraints: set[str] = field(default_factory=set)  # foreign key names, lower case

    def held(self) -> dict[str, int]:
        views = sum(1 for kind in self.tables.values() if kind == "VIEW")
        counts = {
            "tables": len(self.tables) - views,
            "views": views,
            "routines": len(self.routines),
            "triggers": len(self.triggers),
            "events": len(self.events),
        }
        return {name: count for name, count in counts.items() if count}


async def _read_target(conn: SqlConnection, database: str) -> _Target:
    exists = await conn.fetch_one(
        "SELECT 1 AS found FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,)
    )
    if not exists:
        return _Target(exists=False)
    return _Target(
        exists=True,
        tables=await _tables_of(conn, database),
        routines=[
            (_text(row["kind"]), _text(row["name"]))
            for row in await conn.fetch_all(
                "SELECT ROUTINE_TYPE AS kind, ROUTINE_NAME AS name FROM information_schema.ROUTINES"
                " WHERE ROUTINE_SCHEMA = %s AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION')",
                (database,),
            )
        ],
        triggers={
            _text(row["name"]): _text(row["tbl"])
            for row in await conn.fetch_all(
                "SELECT TRIGGER_NAME AS name, EVENT_OBJECT_TABLE AS tbl FROM information_schema.TRIGGERS"
                " WHERE TRIGGER_SCHEMA = %s",
                (database,),
            )
        },
        events=[
            _text(row["name"])
            for row in await conn.fetch_all(
                "SELECT EVENT_NAME AS name FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", (database,)
            )
        ],
        constraints={
            _text(row["name"]).lower()
            for row in await conn.fetch_all(
                "SELECT CONSTRAINT_NAME AS name FROM information_schema.REFERENTIAL_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = %s",
                (database,),
            )
        },
    )


async def _tables_of(conn: SqlConnection, database: str) -> dict[str, str]:
    rows = await conn.fetch_all(
        "SELECT TABLE_NAME AS name, TABLE_TYPE AS kind FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
        (database,),
    )
    return {_text(row["name"]): _text(row["kind"]) for row in rows}


async def database_objects(server: SqlServer, database: str) -> dict[str, int]:
    """What ``database`` holds by kind ("tables", "views", "routines", "triggers", "events"), leaving
    out the kinds it has none of: empty when the database is empty or missing."""
    conn = await server.connect(None)
    try:
        return (await _read_target(conn, database)).held()
    finally:
        conn.close()


def old_table_prefix(staging: str) -> str:
    """The prefix of the names the restore with this staging database gives, within the target, the
    tables it replaces until it drops them: short, and the same for every attempt of the restore."""
    return f"bkold_{hashlib.sha256(staging.encode()).hexdigest()[:12]}_"


def _check_names(database: str, staging: str) -> None:
    for role, name in (("target", database), ("staging", staging)):
        if not name or len(name) > MAX_NAME:
            raise DatabaseRestoreError(f"the {role} database name {name!r} must have 1 to {MAX_NAME} characters")
        if name.lower() in SYSTEM_DATABASES:
            raise DatabaseRestoreError(f"the {role} database cannot be the system database {name}")
    if database == staging:
        raise DatabaseRestoreError(f"the staging database must not be the target database {database}")


# --- the restore -------------------------------------------------------------------------------


class _Restore:
    """One restore's state, step by step; ``step`` names what is being done, for the failure reason."""

    def __init__(
        self,
        archive: Path,
        manifest: dict[str, Any],
        server: SqlServer,
        database: str,
        password: str | None,
        staging: str,
        tables: Sequence[str] | None,
        replace: bool,
        limits: RestoreLimits,
        parallelism: int,
        tracker: ProgressTracker,
    ) -> None:
        self.archive = archive
        self.manifest = manifest
        self.server = server
        self.database = database
        self.password = password
        self.staging = staging
        if isinstance(tables, str):  # one name, not its letters
            tables = [tables]
        self.full = tables is None
        self.replace = replace
        self.limits = limits
        self.parallelism = parallelism
        self.tracker = tracker
        self.step = "checking the backup"
        # Temporary constraint names, like the old tables' names, derive from the staging name.
        self.tag = hashlib.sha256(staging.encode()).hexdigest()[:12]
        self.entries = _manifest_tables(manifest)
        if tables is None:
            self.chosen = self.entries
        else:
            if unknown := unknown_tables(manifest, tables):
                raise DatabaseRestoreError(f"the backup holds no table named {', '.join(map(repr, unknown))}")
            if not tables:
                raise DatabaseRestoreError("no table was chosen to restore")
            wanted = set(tables)
            self.chosen = [entry for entry in self.entries if entry.name in wanted]
        self.conn: SqlConnection | None = None
        self.mariadb = True
        self.target = _Target(exists=False)
        self.defaults: tuple[str, str | None] = ("utf8mb4", None)
        self.objects: dict[str, list[_Statement]] = {}
        self.renames: dict[str, list[_ConstraintRename]] = {}
        self.old_names: dict[str, str] = {}  # old name in the target -> the restored table's name
        self.created_target = False
        self.swapped = False
        self.rows = 0
        self.dropped_tables: list[str] = []
        self.created: dict[str, int] = {"views": 0, "routines": 0, "triggers": 0, "events": 0}

    @property
    def control(self) -> SqlConnection:
        assert self.conn is not None
        return self.conn

    def old_name(self, table: _Table) -> str:
        return f"{old_table_prefix(self.staging)}{table.index}"

    # --- 1. checks -----------------------------------------------------------------------------

    async def check_target(self) -> None:
        self.step = "reading the target database"
        self.conn = await self.server.connect(None)
        await self.control.execute(CONTROL_SESSION)
        version = await self.control.fetch_one("SELECT VERSION() AS v")
        self.mariadb = "mariadb" in str((version or {}).get("v", "")).lower()
        self.target = await _read_target(self.control, self.database)
        held = self.target.held()
        if held and not self.replace:
            listed = ", ".join(f"{count} {kind}" for kind, count in held.items())
            raise TargetNotEmpty(
                f"database {self.database} is not empty ({listed}); restore into an empty or new database,"
                " or confirm that its contents are to be replaced"
            )

    async def check_archive(self) -> None:
        self.step = "checking the archive"
        expected_size = self.manifest.get("size_bytes")
        actual_size = (await asyncio.to_thread(self.archive.stat)).st_size
        if isinstance(expected_size, int) and expected_size != actual_size:
            raise DamagedBackup(
                f"the archive {self.archive.name} is {actual_size} bytes, the manifest says {expected_size}:"
                " it is damaged or is not this backup's"
            )
        expected = self.manifest.get("sha256")
        actual = await asyncio.to_thread(sha256_file, self.archive)
        if actual != expected:
            raise DamagedBackup(
                f"the archive's SHA-256 is {actual}, the manifest says {expected}:"
                " the archive is damaged or was replaced"
            )

    # --- 2. staging ----------------------------------------------------------------------------

    async def stage(self) -> None:
        reader = await asyncio.to_thread(ArchiveReader, self.archive, password=self.password)
        try:
            infos = {info.name: info for info in reader.infos()}
            if breach := limits_breach(list(infos.values()), self.limits):
                raise DamagedBackup(f"the archive is refused: {breach}")
            for table in self.chosen:
                for member in (table.definition, *table.data):
                    if member not in infos:
                        raise DamagedBackup(f"member {member} of table {table.name} is missing from the archive")
            self.tracker.plan(
                {table.name: [infos[name] for name in (table.definition, *table.data)] for table in self.chosen}
            )
            # Everything the swap and what follows need is read, and so authenticated, before the swap.
            self.defaults = await asyncio.to_thread(_database_defaults, reader, infos)
            wanted = OBJECT_MEMBERS if self.full else ("5-triggers.sql",)
            self.objects = await asyncio.to_thread(_read_objects, reader, infos, wanted)

            await self.tracker.enter("loading")
            self.step = f"creating the staging database {self.staging}"
            await self._drop_staging()
            charset, collation = self.defaults
            await self.control.execute(
                f"CREATE DATABASE {quote_identifier(self.staging)} CHARACTER SET {charset}"
                + (f" COLLATE {collation}" if collation else "")
            )
            self.step = f"loading the tables into the staging database {self.staging}"
            await self._load_definitions(reader, infos)
        finally:
            await asyncio.to_thread(reader.close)
        data = [infos[name] for table in self.chosen for name in table.data]
        await load_members_in_parallel(
            self.server, self.staging, self.archive, self.password, data, self.parallelism, self.tracker.loaded
        )

    async def _load_definitions(self, reader: ArchiveReader, infos: dict[str, MemberInfo]) -> None:
        staged = {table.name for table in self.chosen}
        taken = set(self.target.constraints)
        counter = 0

        def fresh() -> str:
            nonlocal counter
            while True:
                counter += 1
                name = f"bkfk_{self.tag}_{counter}"
                if name not in taken:
                    taken.add(name)
                    return name

        conn = await connect_loader(self.server, self.staging)
        try:
            for table in self.chosen:
                renames: list[_ConstraintRename] = []

                def rewrite(statement: bytes, renames: list[_ConstraintRename] = renames) -> list[bytes]:
                    if not statement[:12].upper().startswith(b"CREATE TABLE"):
                        return [statement]
                    text, renamed = stage_foreign_keys(
                        statement.decode("utf-8", errors="surrogateescape"),
                        target=self.database, staged=staged, taken=taken, fresh=fresh,
                    )  # fmt: skip
                    renames.extend(renamed)
                    return [text.encode("utf-8", errors="surrogateescape")]

                await run_member(conn, reader, infos[table.definition], rewrite)
                if renames:
                    self.renames[table.name] = renames
                await self.tracker.loaded(infos[table.definition], 0)
        finally:
            conn.close()
        found = set(await _tables_of(self.control, self.staging))
        if found != staged:
            raise DamagedBackup(
                f"the table definitions created {sorted(found)} in the staging database, not {sorted(staged)}"
            )

    # --- 3. row counts -------------------------------------------------------------------------

    async def verify_rows(self) -> None:
        self.step = "counting the rows of the staged tables"
        for table in self.chosen:
            row = await self.control.fetch_one(
                f"SELECT COUNT(*) AS n FROM {quote_identifier(self.staging)}.{quote_identifier(table.name)}"
            )
            count = int((row or {}).get("n", -1))
            if count != table.rows:
                raise DamagedBackup(
                    f"table {table.name} holds {count} rows once loaded, the manifest says {table.rows}:"
                    " the backup is damaged"
                )
            self.rows += count

    # --- 4. the swap ---------------------------------------------------------------------------

    async def swap(self) -> None:
        self.step = f"creating the database {self.database}"
        if not self.target.exists:
            charset, collation = self.defaults
            await self.control.execute(
                f"CREATE DATABASE IF NOT EXISTS {quote_identifier(self.database)} CHARACTER SET {charset}"
                + (f" COLLATE {collation}" if collation else "")
            )
            self.created_target = True
        self.step = "swapping the restored tables in"
        db = quote_identifier(self.database)
        staging = quote_identifier(self.staging)
        await self._drop_old_tables(await _tables_of(self.control, self.database))
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            current = await _tables_of(self.control, self.database)
            old = {self.old_name(table): table.name for table in self.chosen if table.name in current}
            pairs = [
                f"{db}.{quote_identifier(name)} TO {db}.{quote_identifier(old_name)}" for old_name, name in old.items()
            ]
            pairs += [
                f"{staging}.{quote_identifier(table.name)} TO {db}.{quote_identifier(table.name)}"
                for table in self.chosen
            ]
            try:
                # One statement: every table is renamed at once, under locks taken on all of them first.
                await self.control.execute("RENAME TABLE " + ", ".join(pairs))
            except SqlError as exc:
                if exc.code in SWAP_RETRYABLE and attempt < LOCK_ATTEMPTS:
                    log.warning("swap into %s: %s; trying again", self.database, exc.message)
                    await asyncio.sleep(LOCK_PAUSE_SECONDS)
                    continue
                raise
            self.swapped = True
            self.old_names = old
            return

    # --- 5. settling ---------------------------------------------------------------------------

    async def settle(self) -> None:
        db = quote_identifier(self.database)
        await self.control.execute(f"USE {db}")
        current = await _tables_of(self.control, self.database)
        restored = {table.name for table in self.chosen}
        extra = (
            sorted(
                name
                for name, kind in current.items()
                if kind != "VIEW" and name not in restored and name not in self.old_names
            )
            if self.full
            else []
        )
        self.step = "pointing foreign keys back at the restored tables"
        await self._repoint_foreign_keys(skip=set(extra) | restored)
        if self.full:
            self.step = "dropping the views, routines, triggers and events the backup does not have"
            await self._drop_absent_objects(current, ignore=set(extra) | set(self.old_names))
        self.step = "dropping the replaced tables"
        await self._drop_old_tables(current)
        self.step = "dropping the tables the backup does not have"
        for name in extra:
            await self._ddl(f"DROP TABLE IF EXISTS {db}.{quote_identifier(name)}")
            self.dropped_tables.append(name)
        self.step = "giving foreign keys their names back"
        for table, renames in self.renames.items():
            changes = [
                f"DROP FOREIGN KEY {quote_identifier(rename.temporary)},"
                f" ADD CONSTRAINT {quote_identifier(rename.name)} {rename.clause}"
                for rename in renames
            ]
            await self._ddl(f"ALTER TABLE {db}.{quote_identifier(table)} " + ", ".join(changes))
        if self.full:
            charset, collation = self.defaults
            self.step = "setting the database's default character set"
            await self._ddl(
                f"ALTER DATABASE {db} CHARACTER SET {charset}" + (f" COLLATE {collation}" if collation else "")
            )
        self.step = "recreating the views, routines, triggers and events" if self.full else "recreating the triggers"
        for name in OBJECT_MEMBERS:
            if name in self.objects:
                await run_statements(self.control, self._object_statements(self.objects[name]), name)

    async def _repoint_foreign_keys(self, skip: set[str]) -> None:
        """Foreign keys that referenced a replaced table followed it to its old name, in this database or
        another: point them at the restored table again, except those of tables about to be dropped
        (in two statements: a constraint name cannot be dropped and added in one)."""
        if not self.old_names:
            return
        db = quote_identifier(self.database)
        rows = await self.control.fetch_all(
            "SELECT CONSTRAINT_SCHEMA AS db, TABLE_NAME AS tbl, CONSTRAINT_NAME AS name, REFERENCED_TABLE_NAME AS ref"
            " FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE UNIQUE_CONSTRAINT_SCHEMA = %s",
            (self.database,),
        )
        followed: dict[tuple[str, str], dict[str, str]] = {}
        for row in rows:
            schema, table, name, ref = (_text(row[key]) for key in ("db", "tbl", "name", "ref"))
            if ref not in self.old_names or schema == self.staging:
                continue
            if schema == self.database and (table in skip or table in self.old_names):
                continue
            followed.setdefault((schema, table), {})[name] = self.old_names[ref]
        for (schema, table), constraints in followed.items():
            quoted = f"{quote_identifier(schema)}.{quote_identifier(table)}"
            create = row_value(await self.control.fetch_one(f"SHOW CREATE TABLE {quoted}") or {}, "Create Table")
            clauses = _foreign_key_clauses(_text(create))
            additions = []
            for name, parent in constraints.items():
                if name not in clauses:
                    raise DatabaseRestoreError(
                        f"cannot read foreign key {name} of table {schema}.{table} to point it back at {parent}"
                    )
                keys, _, rest = clauses[name]
                additions.append(
                    f"ADD CONSTRAINT {quote_identifier(name)} {keys} REFERENCES {db}.{quote_identifier(parent)}{rest}"
                )
            await self._ddl(
                f"ALTER TABLE {quoted} " + ", ".join(f"DROP FOREIGN KEY {quote_identifier(n)}" for n in constraints)
            )
            await self._ddl(f"ALTER TABLE {quoted} " + ", ".join(additions))

    async def _drop_absent_objects(self, current: dict[str, str], ignore: set[str]) -> None:
        db = quote_identifier(self.database)
        backup = {
            (statement.creates.kind, statement.creates.name)
            for statements in self.objects.values()
            for statement in statements
            if statement.creates is not None
        }
        triggers = await self.control.fetch_all(
            "SELECT TRIGGER_NAME AS name, EVENT_OBJECT_TABLE AS tbl FROM information_schema.TRIGGERS"
            " WHERE TRIGGER_SCHEMA = %s",
            (self.database,),
        )
        for row in triggers:
            trigger, table = _text(row["name"]), _text(row["tbl"])
            # Those on the tables about to be dropped go with them.
            if ("TRIGGER", trigger) not in backup and table not in ignore:
                await self._ddl(f"DROP TRIGGER IF EXISTS {db}.{quote_identifier(trigger)}")
        for name, kind in current.items():
            if kind == "VIEW" and ("VIEW", name) not in backup and name not in ignore:
                await self._ddl(f"DROP VIEW IF EXISTS {db}.{quote_identifier(name)}")
        for kind, name in self.target.routines:
            if (kind, name) not in backup:
                await self._ddl(f"DROP {kind} IF EXISTS {db}.{quote_identifier(name)}")
        for name in self.target.events:
            if ("EVENT", name) not in backup:
                await self._ddl(f"DROP EVENT IF EXISTS {db}.{quote_identifier(name)}")

    def _object_statements(self, statements: list[_Statement]) -> list[bytes]:
        """The statements that (re)create a member's objects: a trigger after dropping any of its name
        (the replaced table's went with it, but not one on another table); on MariaDB the others
        with CREATE OR REPLACE, so they are never missing; on MySQL, which has that for views only,
        after a DROP."""
        restored = {table.name for table in self.chosen}
        out: list[bytes] = []
        for statement in statements:
            obj = statement.creates
            if obj is None:
                out.append(statement.sql)
                continue
            name = quote_identifier(obj.name).encode()
            if obj.kind == "TRIGGER":
                if not self.full and obj.table not in restored:
                    continue
                out += [b"DROP TRIGGER IF EXISTS " + name, statement.sql]
                self.created["triggers"] += 1
                continue
            if self.mariadb or obj.kind == "VIEW":
                out.append(_OR_REPLACE.sub(b"CREATE OR REPLACE ", statement.sql, count=1))
            else:
                out += [f"DROP {obj.kind} IF EXISTS ".encode() + name, statement.sql]
            self.created["routines" if obj.kind in ("PROCEDURE", "FUNCTION") else obj.kind.lower() + "s"] += 1
        return out

    # --- helpers -------------------------------------------------------------------------------

    async def _ddl(self, sql: str) -> None:
        """A statement on the live database: a lock wait gives way, then tries again."""
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            try:
                await self.control.execute(sql)
                return
            except SqlError as exc:
                if exc.code in LOCK_WAITS and attempt < LOCK_ATTEMPTS:
                    await asyncio.sleep(LOCK_PAUSE_SECONDS)
                    continue
                raise

    async def _drop_old_tables(self, current: dict[str, str]) -> None:
        """Drops the tables (or views) this restore, or an earlier attempt of it, renamed out of the way."""
        db = quote_identifier(self.database)
        prefix = old_table_prefix(self.staging)
        for name, kind in current.items():
            if name.startswith(prefix):
                what = "VIEW" if kind == "VIEW" else "TABLE"
                await self._ddl(f"DROP {what} IF EXISTS {db}.{quote_identifier(name)}")

    async def _drop_staging(self) -> None:
        await self.control.execute(f"DROP DATABASE IF EXISTS {quote_identifier(self.staging)}")

    async def cleanup(self) -> None:
        """Best effort, on a connection of its own (the control one may be the one that broke): drops the
        staging database, and before the swap a target database this restore created."""
        try:
            conn = await self.server.connect(None)
        except Exception:
            log.warning("could not connect to drop the staging database %s", self.staging, exc_info=True)
            return
        try:
            await conn.execute(CONTROL_SESSION)
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_identifier(self.staging)}")
            if self.created_target and not self.swapped and not await _tables_of(conn, self.database):
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_identifier(self.database)}")
        except Exception:
            log.warning("could not drop the staging database %s", self.staging, exc_info=True)
        finally:
            conn.close()

    def failure(self, exc: Exception) -> DatabaseRestoreError:
        """The error to raise for ``exc``: its reason in an operator's words."""
        if isinstance(exc, DatabaseRestoreError) and not self.swapped:
            return exc
        if isinstance(exc, MemberUnreadable):
            error: DatabaseRestoreError = DamagedBackup(str(exc))
        elif isinstance(exc, ArchiveError):
            error = DamagedBackup(f"the archive cannot be read: {exc}")
        elif isinstance(exc, SqlError):
            error = DatabaseRestoreError(f"{self.step} failed: {exc.message} (server error {exc.code})")
        elif isinstance(exc, LoadError | OSError):
            error = DatabaseRestoreError(f"{self.step} failed: {exc}")
        else:
            error = DatabaseRestoreError(f"{self.step} failed: {exc!r}")
        if self.swapped:
            return DatabaseRestoreError(
                f"the backup's tables are in place in {self.database}, but {error}; run the restore again to finish it"
            )
        return error


async def restore_database(
    archive: Path,
    manifest: dict[str, Any],
    server: SqlServer,
    database: str,
    *,
    password: str | None,
    staging: str,
    tables: Sequence[str] | None = None,
    replace: bool = False,
    limits: RestoreLimits = DEFAULT_LIMITS,
    parallelism: int = 2,
    progress: Callable[[DatabaseRestoreProgress], Awaitable[None]] | None = None,
) -> DatabaseRestoreSummary:
    """Restores the database part ``archive`` (described by its part ``manifest``) into ``database`` on
    ``server``: every table of the backup, or only ``tables``, through the staging database ``staging``
    (dropped first if an earlier attempt left it). See the module's description for the steps."""
    started = time.monotonic()
    _check_names(database, staging)
    tracker = ProgressTracker(progress)
    job = _Restore(
        archive, manifest, server, database, password, staging, tables, replace, limits, parallelism, tracker
    )
    await tracker.enter("checking")
    try:
        await job.check_target()
        await job.check_archive()
        await job.stage()
        await job.verify_rows()
        await tracker.enter("swapping")
        await job.swap()
        await job.settle()
    except Exception as exc:
        error = job.failure(exc)
        if error is exc:
            raise
        raise error from exc
    finally:
        if job.conn is not None:
            job.conn.close()
        await job.cleanup()
    await tracker.enter("done")
    return DatabaseRestoreSummary(
        database=database,
        tables=len(job.chosen),
        rows=job.rows,
        views=job.created["views"],
        routines=job.created["routines"],
        triggers=job.created["triggers"],
        events=job.created["events"],
        dropped_tables=job.dropped_tables,
        seconds=time.monotonic() - started,
    )
