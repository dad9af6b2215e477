"""A files part from start to end: the trees scanned, an incremental planned against its parent's
state, the archive written, and the part manifest (`files.json`) that describes it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backup_common.domain.events import BackupPart
from backup_common.engine.archive import ArchiveInfo, ArchiveWriter
from backup_common.engine.files.archiver import write_files_archive
from backup_common.engine.files.incremental import append_bases, next_state, plan_incremental
from backup_common.engine.files.model import ArchiveResult, Entry, Skipped
from backup_common.engine.files.scan import compile_excludes, scan
from backup_common.engine.storage import tool_info


@dataclass(frozen=True)
class Parent:
    """The backup an incremental is made on, and its files manifest."""

    backup_id: str
    manifest: dict[str, Any]

    @property
    def state(self) -> list[dict[str, Any]]:
        state: list[dict[str, Any]] = self.manifest["state"]
        return state


@dataclass
class FilesPlan:
    """What to archive: the trees as scanned and, for an incremental, only what changed."""

    roots: dict[str, Path]
    exclude: list[str]
    entries: list[Entry]  # every path found
    planned: list[Entry]  # the paths to archive
    skipped: list[Skipped]
    parent: Parent | None
    deleted: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    tree_roots: dict[str, Entry] = field(default_factory=dict)  # each tree root as the scan found it


def plan_files(roots: dict[str, Path], exclude: list[str], parent: Parent | None) -> FilesPlan:
    """Scans the trees (blocking: run it in a worker thread)."""
    started = time.time()
    found = scan(roots, compile_excludes(exclude))
    entries = found.entries
    if parent is None:
        return FilesPlan(roots, exclude, entries, entries, found.skipped, None, [], started, found.roots)
    planned, deleted = plan_incremental(parent.state, entries)
    return FilesPlan(roots, exclude, entries, planned, found.skipped, parent, deleted, started, found.roots)


def write_files_part(
    archive: Path,
    plan: FilesPlan,
    *,
    password: str | None,
    compression_level: int,
    progress: Callable[[int, int], None],
) -> tuple[ArchiveResult, ArchiveInfo]:
    """Writes the planned entries into the archive (blocking: run it in a worker thread)."""
    bases = append_bases(plan.parent.state if plan.parent else [])
    with ArchiveWriter(archive, password=password, compression_level=compression_level) as writer:
        result = write_files_archive(writer, plan.planned, plan.roots, progress=progress, bases=bases)
        info = writer.commit()
    return result, info


def files_part_manifest(
    plan: FilesPlan,
    result: ArchiveResult,
    info: ArchiveInfo,
    *,
    file_name: str,
    incremental_requested: bool,
    encryption: dict[str, Any],
) -> dict[str, Any]:
    """The part manifest (blocking: thousands of records; build it in a worker thread)."""
    parent = plan.parent
    note = ""
    if incremental_requested and parent is None:
        note = "no earlier backup has a files part: this incremental is a complete files backup"
    return {
        "part": BackupPart.FILES.value,
        "file": file_name,
        "size_bytes": info.size,
        "sha256": info.sha256,
        "kind": "incremental" if parent else "complete",
        "parent_id": parent.backup_id if parent else None,
        "note": note,
        "trees": {name: str(path) for name, path in plan.roots.items()},
        # The roots found, each with its own mode and time (an incremental records those it found):
        # a restore gives them back, where it would otherwise leave its own.
        "roots": {name: {"mode": root.mode, "mtime_ns": root.mtime_ns} for name, root in plan.tree_roots.items()},
        "exclude": plan.exclude,
        "entries": [asdict(record) for record in result.records],
        "deleted": plan.deleted,
        "state": next_state(parent.state if parent else [], result.records, plan.entries),
        "skipped": [asdict(skipped) for skipped in [*plan.skipped, *result.skipped]],
        "changed_while_read": [record.path for record in result.records if record.changed_while_read],
        "abandoned": result.abandoned,
        "encryption": encryption,
        "started_at": plan.started_at,
        "finished_at": time.time(),
        "tool": tool_info(),
        "progress": files_progress(plan, result),
    }


def files_progress(plan: FilesPlan, result: ArchiveResult) -> dict[str, int]:
    return {"bytes_done": result.bytes_read, "entries_done": len(result.records), "entries_total": len(plan.planned)}
