"""What a dump, a load and a restore take and give: options, progress and results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DumpOptions:
    parallelism: int = 2
    keep_definers: bool = True
    compression_level: int = 3  # isal level, 0-3: 3 compresses prose and JSON 5% better at nearly the same speed
    member_bytes: int = 16 << 20  # SQL text per archive member; also the size of a large table's key ranges
    statement_bytes: int = 1 << 20  # SQL text per INSERT statement


@dataclass(frozen=True)
class DumpProgress:
    bytes_done: int
    rows_done: int
    tables_done: int
    tables_total: int


@dataclass
class TableSummary:
    name: str
    rows: int
    sql_bytes: int
    members: list[str] = field(default_factory=list)
    digest: str = ""  # of the rows read, as DumpResult.row_digest says; empty when not computed


@dataclass
class DumpResult:
    """What the manifest records of a database part."""

    archive_bytes: int
    sha256: str
    tables: list[TableSummary]
    server_version: str
    consistency: str  # "shared-snapshot" or "single-connection"
    consistency_note: str
    binlog: dict[str, Any] | None  # {"file", "position", "gtid"} or None when binary logging is off
    members: list[str]
    row_digest: str | None = None  # the algorithm of the tables' digests (dump.ROW_DIGEST); None: none

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)


@dataclass(frozen=True)
class LoadSummary:
    database: str
    tables: int
    rows: int
    views: int
    routines: int
    triggers: int
    events: int
    seconds: float


@dataclass(frozen=True)
class DatabaseRestoreProgress:
    """Where a load or a restore is; a load reports the phases "checking", "loading" and "done", a
    restore also "swapping" (moving the loaded tables in and recreating the other objects)."""

    phase: str
    bytes_done: int  # uncompressed SQL bytes of the members loaded so far
    bytes_total: int
    tables_done: int
    tables_total: int
    rows_done: int


@dataclass(frozen=True)
class DatabaseRestoreSummary:
    """What a restore put in place: the tables it swapped in and the rows they hold, the views,
    routines, triggers and events it (re)created, and the tables of the target it removed."""

    database: str
    tables: int
    rows: int
    views: int
    routines: int
    triggers: int
    events: int
    dropped_tables: list[str]  # tables the target had and the backup does not (full restore only)
    seconds: float


ProgressCallback = Callable[[DumpProgress], Awaitable[None]]
RestoreProgressCallback = Callable[[DatabaseRestoreProgress], Awaitable[None]]
