"""What the file_backup service does with each event it consumes.

A BackupRequested with a files part is claimed and the uploads, configs and logs trees archived into
the backup's `files.zip`: all of them, or for an incremental what changed since the newest completed
backup with a files part. A RestoreRequested with a files part is claimed the same way: the trees of
the backup (of its whole chain, for an incremental) are rebuilt beside the live ones, checked, and
swapped in by rename (see ``engine.files.in_place``), in place or below a directory of the restore
directory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backup_common.adapters.runtime.jobs import PartFailure, PartJob, PartWorker, reporting
from backup_common.adapters.runtime.restores import RestoreJob, RestoreWorker
from backup_common.adapters.runtime.service import Handlers
from backup_common.adapters.runtime.threads import in_thread
from backup_common.domain.events import BackupPart, BackupRequested, BackupType, RestoreRequested
from backup_common.domain.model import PartResult, PartWarning
from backup_common.domain.ports import Ports
from backup_common.engine.archive import ArchiveInfo
from backup_common.engine.files.backup import Parent, files_part_manifest, files_progress, plan_files, write_files_part
from backup_common.engine.files.chain_check import ChainLink, RestoreError
from backup_common.engine.files.in_place import FilesRestoreProgress, restore_trees
from backup_common.engine.files.model import TREES, ArchiveResult, RestoreSummary, Skipped
from backup_common.engine.storage import directory_inside


@dataclass(frozen=True)
class Dependencies:
    ports: Ports
    worker: PartWorker  # the files part's backup jobs
    restorer: RestoreWorker  # the files part's restore jobs


async def start_backup(event: BackupRequested, deps: Dependencies) -> None:
    await deps.worker.start(event)


async def start_restore(event: RestoreRequested, deps: Dependencies) -> None:
    await deps.restorer.start(event)


HANDLERS: Handlers[Dependencies] = {
    BackupRequested: start_backup,
    RestoreRequested: start_restore,
}


async def archive_part(job: PartJob, roots: dict[str, Path]) -> PartResult:
    """Archives the trees (or what changed in them) and writes the part manifest."""
    parent = await _parent(job)
    plan = await asyncio.to_thread(plan_files, roots, list(job.settings.exclude), parent)
    await job.set_parent(parent.backup_id if parent else None)

    done = {"bytes_done": 0, "entries_done": 0}

    def write(check: Callable[[], None]) -> tuple[ArchiveResult, ArchiveInfo]:
        def progress(bytes_done: int, entries_done: int) -> None:
            check()  # a stopped job's thread gives up here, its partial archive removed
            done.update(bytes_done=bytes_done, entries_done=entries_done)

        return write_files_part(
            job.archive,
            plan,
            password=job.password,
            compression_level=job.settings.compression.level,
            progress=progress,
        )

    async with reporting(job.progress, lambda: {**done, "entries_total": len(plan.planned)}):
        result, info = await in_thread(write)
    manifest = await asyncio.to_thread(
        files_part_manifest,
        plan,
        result,
        info,
        file_name=job.archive.name,
        incremental_requested=job.backup.type is BackupType.INCREMENTAL,
        encryption=job.encryption,
    )
    await job.write_manifest(manifest)
    return PartResult(
        job.archive.name,
        info.size,
        info.sha256,
        len(result.records),
        files_progress(plan, result),
        warnings=part_warnings([*plan.skipped, *result.skipped]),
    )


def part_warnings(skipped: Iterable[Skipped]) -> tuple[PartWarning, ...]:
    """What the scan and the archiver left out, as the backup shows it. A name that is not UTF-8 is held
    as lone surrogates, which neither utf8mb4 nor a JSON client can take: its bytes show as \\xNN."""
    return tuple(PartWarning(_shown(item.path), _shown(item.reason)) for item in skipped)


def _shown(text: str) -> str:
    return os.fsencode(text).decode("utf-8", "backslashreplace")


async def _parent(job: PartJob) -> Parent | None:
    """An incremental's parent and its files manifest; None for a complete files part."""
    if job.backup.type is not BackupType.INCREMENTAL:
        return None
    found = await job.previous_with_files()
    if found is None:
        return None
    try:
        manifest = await job.part_manifest(found, BackupPart.FILES)
    except OSError as exc:
        raise PartFailure(
            f"the parent backup {found.id} has no readable files manifest ({exc.strerror}); "
            "an incremental cannot be made on it"
        ) from exc
    return Parent(found.id, manifest)


async def restore_part(job: RestoreJob, roots: dict[str, Path], restore_dir: Path) -> dict[str, Any]:
    """Rebuilds the backup's trees (in place, or below the target directory) and swaps them in;
    returns the final progress."""
    chain = [ChainLink(part.backup_id, part.archive, part.password, part.manifest) for part in await job.files_chain()]
    target = job.restore.target
    if target.directory is not None:
        try:
            # Resolved again here: the gateway checked it, but links below the restore directory may
            # have changed since.
            base = await asyncio.to_thread(directory_inside, restore_dir, target.directory)
        except ValueError as exc:
            raise PartFailure(str(exc)) from exc
        roots = {tree: base / tree for tree in TREES}
    latest: dict[str, Any] = {"phase": "checking"}

    def restore(check: Callable[[], None]) -> RestoreSummary:
        def progress(update: FilesRestoreProgress) -> None:
            check()  # a stopped job's thread gives up here, before its staging is swapped in
            latest.update(asdict(update))

        return restore_trees(
            chain,
            roots,
            job.settings.restore_limits,
            staging_tag=job.staging_name,
            paths=job.restore.paths or None,
            replace=target.in_place or target.replace,
            progress=progress,
        )

    try:
        async with reporting(job.progress, lambda: dict(latest)):
            summary = await in_thread(restore)
    except RestoreError as exc:
        raise PartFailure(str(exc)) from exc
    return {**latest, "phase": "done", **asdict(summary)}
