"""The part manifest of a database part (`database.json`): what the dump holds and how it was made."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from backup_common.domain.events import BackupPart
from backup_common.engine.database.model import DumpOptions, DumpResult
from backup_common.engine.database.target import MysqlTarget
from backup_common.engine.storage import tool_info


def dump_progress(result: DumpResult) -> dict[str, int]:
    """The progress of a finished dump, as the catalog shows it."""
    return {
        "bytes_done": sum(table.sql_bytes for table in result.tables),
        "rows_done": result.rows,
        "tables_done": len(result.tables),
        "tables_total": len(result.tables),
    }


def database_part_manifest(
    result: DumpResult,
    *,
    file_name: str,
    source: MysqlTarget,
    options: DumpOptions,
    encryption: dict[str, Any],
    started_at: float,
    finished_at: float,
) -> dict[str, Any]:
    return {
        "part": BackupPart.DATABASE.value,
        "file": file_name,
        "size_bytes": result.archive_bytes,
        "sha256": result.sha256,
        "rows": result.rows,
        "tables": [asdict(table) for table in result.tables],
        "row_digest": result.row_digest,
        "members": result.members,
        "server_version": result.server_version,
        "consistency": result.consistency,
        "consistency_note": result.consistency_note,
        "binlog": result.binlog,
        "source": {"host": source.host, "port": source.port, "database": source.database},
        "options": asdict(options),
        "encryption": encryption,
        "started_at": started_at,
        "finished_at": finished_at,
        "tool": tool_info(),
        "progress": dump_progress(result),
    }


_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")


class ManifestError(ValueError):
    """The part manifest does not describe its tables as the dump writes them; the message says how."""


@dataclass(frozen=True)
class ManifestTable:
    """One table as the part manifest records it."""

    index: int  # position in the manifest from 1, as in the names of its members
    name: str
    rows: int
    members: tuple[str, ...]  # its data members
    digest: str | None  # the dump's row digest; None when it computed none


def manifest_tables(manifest: dict[str, Any]) -> list[ManifestTable]:
    """The manifest's tables, each checked: a name met once, a row count, data members, a digest."""
    listed = manifest.get("tables")
    if not isinstance(listed, list):
        raise ManifestError("the part manifest has no list of tables")
    tables: list[ManifestTable] = []
    seen: set[str] = set()
    for index, entry in enumerate(listed, start=1):
        found = entry if isinstance(entry, dict) else {}
        name, rows, members = found.get("name"), found.get("rows"), found.get("members")
        digest = found.get("digest") or None  # empty: a table the dump did not digest
        if (
            not isinstance(name, str)
            or not name
            or not isinstance(rows, int)
            or isinstance(rows, bool)
            or rows < 0
            or not isinstance(members, list)
            or not all(isinstance(member, str) and member.startswith("2-data/") for member in members)
            or (digest is not None and not (isinstance(digest, str) and _HEX_DIGEST.fullmatch(digest)))
        ):
            raise ManifestError(f"the part manifest's table entry {index} is malformed")
        if name in seen:
            raise ManifestError(f"the part manifest lists table {name} twice")
        seen.add(name)
        tables.append(ManifestTable(index, name, rows, tuple(members), digest))
    return tables
