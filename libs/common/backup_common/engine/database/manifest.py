"""The part manifest of a database part (`database.json`): what the dump holds and how it was made."""

from __future__ import annotations

from dataclasses import asdict
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
