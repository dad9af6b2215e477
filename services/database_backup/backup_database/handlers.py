"""What the database_backup service does with each event it consumes.

A BackupRequested with a database part is claimed and dumped into the backup's `database.zip` (the
job outlives the message: see ``adapters.runtime.jobs``). A RestoreRequested is not carried out by
this version: the restore fails at once with a reason saying how to load the backup by hand, rather
than being acknowledged and forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from backup_common.adapters.runtime.jobs import PartFailure, PartJob, PartWorker, fail_restore
from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.events import BackupPart, BackupRequested, RestoreRequested
from backup_common.domain.model import PartResult
from backup_common.domain.ports import Ports
from backup_common.engine.database.dump import DumpError, dump_database
from backup_common.engine.database.manifest import database_part_manifest, dump_progress
from backup_common.engine.database.model import DumpOptions, DumpProgress, DumpResult
from backup_common.engine.database.sql import SqlServer


@dataclass(frozen=True)
class Dependencies:
    ports: Ports
    worker: PartWorker  # the database part's jobs


async def back_up_database(event: BackupRequested, deps: Dependencies) -> None:
    await deps.worker.start(event)


async def refuse_restore(event: RestoreRequested, deps: Dependencies) -> None:
    if BackupPart.DATABASE not in event.parts:
        return
    await fail_restore(
        deps.ports,
        str(event.restore_id),
        "restores are not carried out by the service yet; load the backup by hand with"
        f" `backupctl db-load {event.backup_id} --into <database>`",
    )


HANDLERS: Handlers[Dependencies] = {
    BackupRequested: back_up_database,
    RestoreRequested: refuse_restore,
}


Dump = Callable[..., Awaitable[DumpResult]]  # the signature of engine.database.dump.dump_database


async def dump_part(job: PartJob, source: SqlServer, dump: Dump = dump_database) -> PartResult:
    """Dumps the source database into the part's archive and writes its part manifest."""
    options = DumpOptions(
        keep_definers=job.settings.database.keep_definers, compression_level=job.settings.compression.level
    )

    async def report(progress: DumpProgress) -> None:
        await job.progress(asdict(progress))

    started = time.time()
    try:
        result = await dump(source, job.archive, password=job.password, options=options, progress=report)
    except DumpError as exc:
        raise PartFailure(str(exc)) from exc
    manifest = database_part_manifest(
        result,
        file_name=job.archive.name,
        source=source.target,
        options=options,
        encryption=job.encryption,
        started_at=started,
        finished_at=time.time(),
    )
    await job.write_manifest(manifest)
    return PartResult(job.archive.name, result.archive_bytes, result.sha256, result.rows, dump_progress(result))
