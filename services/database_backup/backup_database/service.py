"""The database_backup worker: turns a BackupRequested with a database part into a durable archive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backup_common.crypto import DataKeys, MasterKey, archive_password
from backup_common.events import BackupPart, BackupRequested, Event
from backup_common.leases import Lease, LeaseLost
from backup_common.parts import BackupRecord, PartResult
from backup_common.runtime import WorkerContext
from backup_common.settings import SettingsError
from backup_common.storage import (
    MANIFEST,
    archive_name,
    backup_manifest,
    encryption_info,
    part_manifest_name,
    read_json,
    tool_info,
    write_json_durably,
)
from backup_database.api import DumpOptions, DumpProgress, DumpResult
from backup_database.dump import DumpError, dump_database

log = logging.getLogger(__name__)

PART = BackupPart.DATABASE


class DatabaseBackupWorker:
    def __init__(self, context: WorkerContext) -> None:
        self._context = context
        self._jobs: dict[str, tuple[asyncio.Task[None], Lease, BackupRequested]] = {}

    async def handle(self, event: Event) -> None:
        if not isinstance(event, BackupRequested) or PART not in event.parts:
            return
        lease = await self._context.parts.claim(event, PART)
        if lease is None:
            log.info("backup %s: database part already done or in progress elsewhere", event.backup_id)
            return
        # Claim, then acknowledge: the job outlives the message, kept alive by its lease.
        task = asyncio.create_task(self._run(lease, event), name=f"dump-{event.backup_id}")
        self._jobs[lease.job_key] = (task, lease, event)
        task.add_done_callback(lambda _: self._jobs.pop(lease.job_key, None))

    async def shutdown(self) -> None:
        for task, lease, event in list(self._jobs.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self._context.parts.release(lease, event, "the worker was stopped")

    async def _run(self, lease: Lease, event: BackupRequested) -> None:
        context = self._context
        backup_id = str(event.backup_id)
        metrics = context.metrics
        metrics.running.labels(context.service).inc()
        started = time.time()
        try:
            async with context.leases.keep_alive(lease) as keeper:
                record = await context.parts.backup(backup_id)
                if record is None:
                    raise LookupError(f"backup {backup_id} is not in the catalog")
                result, part_manifest = await self._dump(record, keeper.lease)
                keeper.check()
                await context.parts.complete(
                    keeper.lease,
                    backup_id,
                    PART,
                    PartResult(
                        file_name=archive_name(PART),
                        size_bytes=result.archive_bytes,
                        sha256=result.sha256,
                        item_count=result.rows,
                        progress=part_manifest["progress"],
                    ),
                    self._write_manifest,
                )
            metrics.jobs.labels(context.service, "completed").inc()
            log.info("backup %s: database part completed in %.1f s", backup_id, time.time() - started)
        except LeaseLost:
            metrics.jobs.labels(context.service, "lease_lost").inc()
            log.warning("backup %s: lost the lease; another worker owns the database part now", backup_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.jobs.labels(context.service, "failed").inc()
            reason = _reason(exc)
            log.error("backup %s: database part failed: %s", backup_id, reason)
            with contextlib.suppress(LeaseLost):
                await context.parts.fail(lease, backup_id, PART, reason)
        finally:
            metrics.running.labels(context.service).dec()

    async def _dump(self, record: BackupRecord, lease: Lease) -> tuple[DumpResult, dict[str, Any]]:
        context = self._context
        settings = context.settings
        document = (await context.catalog.get_document("settings"))["document"]
        encrypted = bool(document["encryption"]["enabled"])
        password = None
        key_id = wrapped = None
        if encrypted:
            master = MasterKey.from_settings(settings)
            data_key = await DataKeys(context.pool).get_or_create(record.id, master)
            password = archive_password(data_key)
            key_id, wrapped = (await DataKeys(context.pool).wrapped(record.id)) or (None, None)
        directory = settings.storage_dir / record.storage_path
        archive = directory / archive_name(PART)
        await asyncio.to_thread(_prepare_directory, directory, archive)
        options = DumpOptions(
            keep_definers=bool(document["database"]["keep_definers"]),
            compression_level=int(document["compression"]["level"]),
        )

        async def report(progress: DumpProgress) -> None:
            await context.parts.progress(lease, record.id, PART, asdict(progress))

        begun = time.time()
        result = await dump_database(settings.source, archive, password=password, options=options, progress=report)
        source = settings.source
        part_manifest: dict[str, Any] = {
            "part": PART.value,
            "file": archive.name,
            "size_bytes": result.archive_bytes,
            "sha256": result.sha256,
            "rows": result.rows,
            "tables": [asdict(table) for table in result.tables],
            "members": result.members,
            "server_version": result.server_version,
            "consistency": result.consistency,
            "consistency_note": result.consistency_note,
            "binlog": result.binlog,
            "source": {"host": source.host, "port": source.port, "database": source.database},
            "options": asdict(options),
            "encryption": encryption_info(key_id, wrapped),
            "started_at": begun,
            "finished_at": time.time(),
            "tool": tool_info(),
            "progress": {
                "bytes_done": sum(t.sql_bytes for t in result.tables),
                "rows_done": result.rows,
                "tables_done": len(result.tables),
                "tables_total": len(result.tables),
            },
        }
        await asyncio.to_thread(write_json_durably, directory / part_manifest_name(PART), part_manifest)
        return result, part_manifest

    async def _write_manifest(self, record: BackupRecord, parts: list[dict[str, Any]]) -> None:
        directory = self._context.settings.storage_dir / record.storage_path
        wrapped = await DataKeys(self._context.pool).wrapped(record.id)
        encryption = encryption_info(*(wrapped or (None, None)))

        def write() -> None:
            described = {p["part"]: read_json(directory / part_manifest_name(BackupPart(p["part"]))) for p in parts}
            write_json_durably(directory / MANIFEST, backup_manifest(record, described, encryption))

        await asyncio.to_thread(write)


def _prepare_directory(directory: Path, archive: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # An archive left by an attempt whose worker died after the rename was never recorded as usable;
    # this attempt holds the lease now, so it replaces it.
    archive.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DumpError | SettingsError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"storage error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})"
    return f"{type(exc).__name__}: {exc}"
