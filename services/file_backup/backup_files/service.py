"""The file_backup worker: the files part of full, files and incremental backups."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql.leases import Lease
from backup_common.adapters.mysql.parts import BackupRecord, PartResult
from backup_common.adapters.runtime.part_worker import PartFailure, PartWorker, prepare_directory
from backup_common.domain.events import BackupPart, BackupType
from backup_common.engine.archive import ArchiveInfo, ArchiveWriter
from backup_common.engine.files.archiver import write_files_archive
from backup_common.engine.files.incremental import append_bases, next_state, plan_incremental
from backup_common.engine.files.model import ArchiveResult, Entry
from backup_common.engine.files.scan import compile_excludes, scan_trees
from backup_common.engine.storage import archive_name, part_manifest_name, read_json, tool_info, write_json_durably

PROGRESS_SECONDS = 1.0


class FileBackupWorker(PartWorker):
    part = BackupPart.FILES

    def roots(self) -> dict[str, Path]:
        settings = self.context.settings
        return {"uploads": settings.uploads_dir, "configs": settings.configs_dir, "logs": settings.logs_dir}

    async def produce(self, record: BackupRecord, lease: Lease) -> PartResult:
        context = self.context
        document = await self.settings_document()
        password, encryption = await self.archive_key(record.id, bool(document["encryption"]["enabled"]))
        directory = self.directory(record)
        archive = directory / archive_name(self.part)
        await asyncio.to_thread(prepare_directory, directory, archive)
        roots = self.roots()
        exclude = compile_excludes(list(document["exclude"]))
        begun = time.time()
        entries, skipped = await asyncio.to_thread(scan_trees, roots, exclude)

        parent = await self._parent(record)
        deleted: list[str] = []
        parent_state: list[dict[str, Any]] = []
        if parent is None:
            planned = entries
        else:
            parent_state = parent[1]["state"]
            planned, deleted = await asyncio.to_thread(plan_incremental, parent_state, entries)
        await context.parts.set_parent(lease, record.id, parent[0] if parent else None)

        done = {"bytes_done": 0, "entries_done": 0}

        def progress(bytes_done: int, entries_done: int) -> None:
            done.update(bytes_done=bytes_done, entries_done=entries_done)

        async def report() -> None:
            while True:
                await asyncio.sleep(PROGRESS_SECONDS)
                await context.parts.progress(lease, record.id, self.part, {**done, "entries_total": len(planned)})

        level = int(document["compression"]["level"])
        reporter = asyncio.create_task(report())
        try:
            result, info = await asyncio.to_thread(
                _write_archive, archive, password, level, planned, roots, parent_state, progress
            )
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

        final_progress = {
            "bytes_done": result.bytes_read,
            "entries_done": len(result.records),
            "entries_total": len(planned),
        }

        def describe() -> dict[str, Any]:
            # Thousands of records: built off the event loop.
            return {
                "part": self.part.value,
                "file": archive.name,
                "size_bytes": info.size,
                "sha256": info.sha256,
                "kind": "incremental" if parent else "complete",
                "parent_id": parent[0] if parent else None,
                "note": _note(record, parent is not None),
                "trees": {name: str(path) for name, path in roots.items()},
                "exclude": list(document["exclude"]),
                "entries": [asdict(r) for r in result.records],
                "deleted": deleted,
                "state": next_state(parent_state, result.records, entries),
                "skipped": [asdict(s) for s in [*skipped, *result.skipped]],
                "changed_while_read": [r.path for r in result.records if r.changed_while_read],
                "encryption": encryption,
                "started_at": begun,
                "finished_at": time.time(),
                "tool": tool_info(),
                "progress": final_progress,
            }

        part_manifest = await asyncio.to_thread(describe)
        await asyncio.to_thread(write_json_durably, directory / part_manifest_name(self.part), part_manifest)
        return PartResult(archive.name, info.size, info.sha256, len(result.records), final_progress)

    async def _parent(self, record: BackupRecord) -> tuple[str, dict[str, Any]] | None:
        """An incremental's parent and its files manifest; None for a complete files part."""
        if record.type is not BackupType.INCREMENTAL:
            return None
        found = await self.context.catalog.previous_files_backup(record.id)
        if found is None:
            return None
        path = self.context.settings.storage_dir / found["storage_path"] / part_manifest_name(self.part)
        try:
            manifest = await asyncio.to_thread(read_json, path)
        except OSError as exc:
            raise PartFailure(
                f"the parent backup {found['id']} has no readable files manifest ({exc.strerror}); "
                "an incremental cannot be made on it"
            ) from exc
        return found["id"], manifest


def _note(record: BackupRecord, has_parent: bool) -> str:
    if record.type is BackupType.INCREMENTAL and not has_parent:
        return "no earlier backup has a files part: this incremental is a complete files backup"
    return ""


def _write_archive(
    archive: Path,
    password: str | None,
    level: int,
    entries: list[Entry],
    roots: dict[str, Path],
    parent_state: list[dict[str, Any]],
    progress: Callable[[int, int], None],
) -> tuple[ArchiveResult, ArchiveInfo]:
    bases = append_bases(parent_state)
    with ArchiveWriter(archive, password=password, compression_level=level) as writer:
        result = write_files_archive(writer, entries, roots, progress=progress, bases=bases)
        info = writer.commit()
    return result, info
