"""What the file_backup service does with each event it consumes.

A BackupRequested with a files part is claimed and the uploads, configs and logs trees archived into
the backup's `files.zip`: all of them, or for an incremental what changed since the newest completed
backup with a files part. A RestoreRequested is not carried out by this version: the restore fails at
once with a reason saying how to rebuild the trees by hand, rather than being acknowledged and
forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from backup_common.adapters.runtime.jobs import PartFailure, PartJob, PartWorker, fail_restore
from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.events import BackupPart, BackupRequested, BackupType, RestoreRequested
from backup_common.domain.model import PartResult
from backup_common.domain.ports import Ports
from backup_common.engine.files.backup import Parent, files_part_manifest, files_progress, plan_files, write_files_part

PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class Dependencies:
    ports: Ports
    worker: PartWorker  # the files part's jobs


async def back_up_files(event: BackupRequested, deps: Dependencies) -> None:
    await deps.worker.start(event)


async def refuse_restore(event: RestoreRequested, deps: Dependencies) -> None:
    if BackupPart.FILES not in event.parts:
        return
    await fail_restore(
        deps.ports,
        str(event.restore_id),
        "restores are not carried out by the service yet; rebuild the trees by hand with"
        f" `backupctl files-restore {event.backup_id} --into <directory>`",
    )


HANDLERS: Handlers[Dependencies] = {
    BackupRequested: back_up_files,
    RestoreRequested: refuse_restore,
}


async def archive_part(job: PartJob, roots: dict[str, Path]) -> PartResult:
    """Archives the trees (or what changed in them) and writes the part manifest."""
    parent = await _parent(job)
    plan = await asyncio.to_thread(plan_files, roots, list(job.settings.exclude), parent)
    await job.set_parent(parent.backup_id if parent else None)

    done = {"bytes_done": 0, "entries_done": 0}

    def progress(bytes_done: int, entries_done: int) -> None:
        done.update(bytes_done=bytes_done, entries_done=entries_done)

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            await job.progress({**done, "entries_total": len(plan.planned)})

    reporter = asyncio.create_task(report())
    try:
        result, info = await asyncio.to_thread(
            write_files_part,
            job.archive,
            plan,
            password=job.password,
            compression_level=job.settings.compression.level,
            progress=progress,
        )
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
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
    return PartResult(job.archive.name, info.size, info.sha256, len(result.records), files_progress(plan, result))


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
