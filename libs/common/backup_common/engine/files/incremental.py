"""What an incremental backup must carry: paths new or changed since its parent, and those deleted."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from backup_common.engine.files.model import Base, Entry, FileRecord

# What tells a path apart from its previous backup without reading it (as rsync and restic do).
_COMPARED = ("kind", "size", "mtime_ns", "mode", "target")
# Where a record's content sits in its own backup's archive: not part of the tree's state.
_PLACEMENT = ("pack", "offset", "base_size")
# A file smaller than this is archived whole when it grows: its delta would save next to nothing,
# and restoring it would mean copying the previous version.
APPEND_MIN_BYTES = 1 << 20


def plan_incremental(parent_state: list[dict[str, Any]], entries: list[Entry]) -> tuple[list[Entry], list[str]]:
    """The entries to archive (new, or changed in kind, size, time, mode or link target) and the
    paths of the parent's state that no longer exist, parents before children."""
    previous = {item["path"]: item for item in parent_state}
    changed = [
        entry
        for entry in entries
        if (before := previous.get(entry.path)) is None
        or any(before.get(name) != getattr(entry, name) for name in _COMPARED)
        # A file whose bytes were torn last time is read again.
        or before.get("changed_while_read")
    ]
    present = {entry.path for entry in entries}
    deleted = sorted(path for path in previous if path not in present)
    return changed, deleted


def next_state(
    parent_state: list[dict[str, Any]], records: list[FileRecord], entries: list[Entry]
) -> list[dict[str, Any]]:
    """The complete tree at this backup: what it archived now, and the rest as the parent had it.

    A changed path that could not be archived (vanished, unreadable; listed as skipped) keeps the
    version its parent had, which is what replaying the chain restores.
    """
    archived = {record.path: _without_placement(asdict(record)) for record in records}
    previous = {item["path"]: item for item in parent_state}
    state = []
    for entry in entries:
        if entry.path in archived:
            state.append(archived[entry.path])
        elif entry.path in previous:
            state.append(previous[entry.path])
    return state


def _without_placement(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in item.items() if name not in _PLACEMENT}


def append_bases(parent_state: list[dict[str, Any]]) -> dict[str, Base]:
    """The parent's versions a grown file may extend: files of APPEND_MIN_BYTES or more whose bytes
    were read consistently."""
    return {
        item["path"]: Base(item["size"], item["sha256"])
        for item in parent_state
        if item.get("kind") == "file"
        and isinstance(item.get("sha256"), str)
        and isinstance(item.get("size"), int)
        and item["size"] >= APPEND_MIN_BYTES
        and not item.get("changed_while_read")
    }
