"""What every part worker does around its own work: claim, lease, progress, completion, failure.

A subclass names its part and implements `produce`, which writes the part's archive and its part
manifest into the backup's directory and returns what the catalog records of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql.leases import Lease, LeaseLost
from backup_common.adapters.mysql.parts import BackupRecord, PartResult
from backup_common.adapters.runtime.worker import WorkerContext
from backup_common.adapters.settings import SettingsError
from backup_common.domain.events import BackupPart, BackupRequested, Event
from backup_common.engine.archive import ArchiveError
from backup_common.engine.crypto import DataKeys, KeyUnwrapError, MasterKey, archive_password
from backup_common.engine.storage import (
    MANIFEST,
    backup_manifest,
    encryption_info,
    part_manifest_name,
    read_json,
    write_json_durably,
)

log = logging.getLogger(__name__)


class PartFailure(Exception):
    """The part cannot be made; the message is the reason recorded for the operator."""


class PartWorker(ABC):
    part: BackupPart

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self._jobs: dict[str, tuple[asyncio.Task[None], Lease, BackupRequested]] = {}

    @abstractmethod
    async def produce(self, record: BackupRecord, lease: Lease) -> PartResult:
        """Writes the part's archive and part manifest durably; returns what the catalog records."""

    async def handle(self, event: Event) -> None:
        if not isinstance(event, BackupRequested) or self.part not in event.parts:
            return
        lease = await self.context.parts.claim(event, self.part)
        if lease is None:
            log.info("backup %s: %s part already done or in progress elsewhere", event.backup_id, self.part.value)
            return
        # Claim, then acknowledge: the job outlives the message, kept alive by its lease.
        task = asyncio.create_task(self._run(lease, event), name=f"{self.part.value}-{event.backup_id}")
        self._jobs[lease.job_key] = (task, lease, event)
        task.add_done_callback(lambda _: self._jobs.pop(lease.job_key, None))

    async def shutdown(self) -> None:
        for task, lease, event in list(self._jobs.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self.context.parts.release(lease, event, "the worker was stopped")

    async def _run(self, lease: Lease, event: BackupRequested) -> None:
        context = self.context
        backup_id = str(event.backup_id)
        part = self.part.value
        metrics = context.metrics
        metrics.running.labels(context.service).inc()
        started = time.monotonic()
        try:
            async with context.leases.keep_alive(lease) as keeper:
                record = await context.parts.backup(backup_id)
                if record is None:
                    raise PartFailure(f"backup {backup_id} is not in the catalog")
                result = await self.produce(record, keeper.lease)
                keeper.check()
                await context.parts.complete(keeper.lease, backup_id, self.part, result, self._write_manifest)
            metrics.jobs.labels(context.service, "completed").inc()
            log.info("backup %s: %s part completed in %.1f s", backup_id, part, time.monotonic() - started)
        except LeaseLost:
            metrics.jobs.labels(context.service, "lease_lost").inc()
            log.warning("backup %s: lost the lease; another worker owns the %s part now", backup_id, part)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.jobs.labels(context.service, "failed").inc()
            reason = failure_reason(exc)
            log.error("backup %s: %s part failed: %s", backup_id, part, reason)
            if not isinstance(exc, PartFailure | SettingsError | OSError | ArchiveError | KeyUnwrapError):
                log.exception("unexpected failure")
            with contextlib.suppress(LeaseLost):
                await context.parts.fail(lease, backup_id, self.part, reason)
        finally:
            metrics.running.labels(context.service).dec()

    async def settings_document(self) -> dict[str, Any]:
        document: dict[str, Any] = (await self.context.catalog.get_document("settings"))["document"]
        return document

    async def archive_key(self, backup_id: str, encrypted: bool) -> tuple[str | None, dict[str, Any]]:
        """The archive password (None when encryption is off) and the manifest's encryption entry."""
        if not encrypted:
            return None, encryption_info(None, None)
        keys = DataKeys(self.context.pool)
        data_key = await keys.get_or_create(backup_id, MasterKey.from_settings(self.context.settings))
        key_id, wrapped = await keys.wrapped(backup_id) or (None, None)
        return archive_password(data_key), encryption_info(key_id, wrapped)

    def directory(self, record: BackupRecord) -> Path:
        return self.context.settings.storage_dir / record.storage_path

    async def _write_manifest(self, record: BackupRecord, parts: list[dict[str, Any]]) -> None:
        directory = self.directory(record)
        wrapped = await DataKeys(self.context.pool).wrapped(record.id)
        encryption = encryption_info(*(wrapped or (None, None)))

        def write() -> None:
            described = {p["part"]: read_json(directory / part_manifest_name(BackupPart(p["part"]))) for p in parts}
            write_json_durably(directory / MANIFEST, backup_manifest(record, described, encryption))

        await asyncio.to_thread(write)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, PartFailure | SettingsError | KeyUnwrapError | ArchiveError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"storage error: {exc.strerror or exc}{where}"
    return f"{type(exc).__name__}: {exc}"


def prepare_directory(directory: Path, archive: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # An archive left by an attempt whose worker died after the rename was never recorded as usable;
    # this attempt holds the lease now, so it replaces it.
    archive.unlink(missing_ok=True)
