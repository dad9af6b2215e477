"""What the database_backup service does with each event it consumes.

A BackupRequested with a database part is claimed and dumped into the backup's `database.zip` (the
job outlives the message: see ``adapters.runtime.jobs``). A RestoreRequested with a database part is
claimed the same way and loaded into a staging database, checked, and swapped into its target (the
source database in place, or another one): see ``engine.database.restore``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from backup_common.adapters.runtime.jobs import PartFailure, PartJob, PartRetry, PartWorker
from backup_common.adapters.runtime.restores import RestoreJob, RestoreWorker
from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.events import BackupRequested, RestoreRequested
from backup_common.domain.model import PartResult
from backup_common.domain.ports import Ports
from backup_common.engine.database.dump import DumpError, SourceConnectionLost, dump_database
from backup_common.engine.database.load import LoadError
from backup_common.engine.database.manifest import database_part_manifest, dump_progress
from backup_common.engine.database.model import DumpOptions, DumpProgress, DumpResult
from backup_common.engine.database.restore import DatabaseRestoreProgress, DatabaseRestoreSummary, restore_database
from backup_common.engine.database.sql import SqlServer


@dataclass(frozen=True)
class Dependencies:
    ports: Ports
    worker: PartWorker  # the database part's backup jobs
    restorer: RestoreWorker  # the database part's restore jobs


async def start_backup(event: BackupRequested, deps: Dependencies) -> None:
    await deps.worker.start(event)


async def start_restore(event: RestoreRequested, deps: Dependencies) -> None:
    await deps.restorer.start(event)


HANDLERS: Handlers[Dependencies] = {
    BackupRequested: start_backup,
    RestoreRequested: start_restore,
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
    except SourceConnectionLost as exc:
        # Passing (a killed session, a restarted server): another attempt, as for a lost worker.
        raise PartRetry(str(exc)) from exc
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


RestoreDatabase = Callable[..., Awaitable[DatabaseRestoreSummary]]  # engine.database.restore.restore_database


async def restore_part(
    job: RestoreJob, server: SqlServer, restore: RestoreDatabase = restore_database
) -> dict[str, Any]:
    """Restores the backup's database part into its target database on ``server``; returns its final
    progress."""
    stored = await job.stored_part()
    target = job.restore.target
    database = target.database or server.target.database

    latest: dict[str, Any] = {}

    async def report(progress: DatabaseRestoreProgress) -> None:
        latest.update(asdict(progress))
        await job.progress(latest)

    try:
        summary = await restore(
            stored.archive,
            stored.manifest,
            server,
            database,
            password=stored.password,
            staging=job.staging_name,
            tables=job.restore.tables or None,
            replace=target.in_place or target.replace,
            limits=job.settings.restore_limits,
            progress=report,
        )
    except LoadError as exc:
        raise PartFailure(str(exc)) from exc
    return {**latest, "phase": "done", **asdict(summary)}
