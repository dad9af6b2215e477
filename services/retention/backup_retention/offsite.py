"""Off-site copies, kept by the retention service when BACKUP_OFFSITE_URL is set.

Each completed backup is copied to the object store, its archives and part manifests first and
``manifest.json`` last. The catalog holds the state (``offsite_copies``): a backup without a row
is still to copy, so nothing is forgotten when the service restarts, and enabling off-site storage
copies the backups made before. A copy the store fails is tried again later, the delay doubling up
to an hour; the local backup is never touched by a failed copy. One replica copies a backup at a
time (a named lock, which also keeps a deletion from racing an upload).

The same rounds remove again what Object Lock kept when a backup was deleted, once the lock ends,
and remove local copies older than BACKUP_LOCAL_KEEP_DAYS that are safe off-site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from backup_common.adapters.waiting import wait_event
from backup_common.domain.jobs import VERIFY_JOB_PREFIX
from backup_common.domain.model import Backup, BackupStatus
from backup_common.domain.offsite import OffsiteCopy, OffsiteStatus, lock_days
from backup_common.domain.ports import OffsiteError, OffsiteLocked, OffsiteStore, Ports, read_settings
from backup_common.engine.storage import MANIFEST, archive_name, part_manifest_name

log = logging.getLogger(__name__)

POLL_SECONDS = 10.0
PROGRESS_SECONDS = 1.0
BATCH = 20


def copy_lock(backup_id: str) -> str:
    """The named lock held while a backup's off-site objects are written or removed."""
    return f"offsite:{backup_id}"


def backup_files(backup: Backup) -> list[str]:
    """The files of a completed backup's directory, ``manifest.json`` last."""
    names = []
    for part in backup.parts:
        if part.file_name:
            names += [archive_name(part.part), part_manifest_name(part.part)]
    return [*names, MANIFEST]


class OffsiteMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.copies = Counter(
            "backup_offsite_copies", "Off-site copy attempts, by outcome.", ["outcome"], registry=registry
        )
        self.bytes = Counter("backup_offsite_copied_bytes", "Bytes sent to the object store.", registry=registry)
        self.local_removed = Counter(
            "backup_offsite_local_removed",
            "Local copies removed after BACKUP_LOCAL_KEEP_DAYS, the off-site copy kept.",
            registry=registry,
        )


@dataclass(frozen=True)
class OffsitePolicy:
    retry: timedelta  # the delay after a first failed copy
    lock_days: int | None  # BACKUP_OFFSITE_LOCK_DAYS
    local_keep: timedelta | None  # BACKUP_LOCAL_KEEP_DAYS


class Copier:
    def __init__(
        self,
        ports: Ports,
        store: OffsiteStore,
        metrics: OffsiteMetrics,
        policy: OffsitePolicy,
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._ports = ports
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._poll_seconds = poll_seconds
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """A backup completed: look for work now rather than at the next poll."""
        self._woken.set()

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("off-site round failed; trying again")
            await wait_event(self._woken, self._poll_seconds)
            self._woken.clear()

    async def round(self) -> None:
        """Copies what is due, removes what a lock kept once it ends, expires old local copies."""
        while True:
            async with self._ports.uow() as uow:
                due = await uow.offsite.due(self._ports.clock(), BATCH)
            copied = [await self.copy(backup_id) for backup_id in due]
            # Another replica holds the rest, or they failed and wait for their retry time.
            if len(due) < BATCH or not any(copied):
                break
        async with self._ports.uow() as uow:
            locked = await uow.offsite.locked_due(self._ports.clock(), BATCH)
        for backup_id in locked:
            await self.remove_kept(backup_id)
        if self._policy.local_keep is not None:
            await self.expire_local(self._policy.local_keep)

    async def copy(self, backup_id: str) -> OffsiteCopy | None:
        """Copies one backup, unless another replica is at it or it is not due (None then)."""
        async with self._ports.locks.hold(copy_lock(backup_id)) as held:
            if not held:
                return None
            now = self._ports.clock()
            async with self._ports.uow() as uow:
                backup = await uow.backups.get(backup_id)
                copy = await uow.offsite.get(backup_id) or OffsiteCopy(backup_id)
            if backup is None or backup.status is not BackupStatus.COMPLETED:
                return None
            # Looked at again under the lock: another replica may have copied it meanwhile.
            if copy.status is OffsiteStatus.COPIED or (
                copy.status is OffsiteStatus.FAILED and copy.next_attempt_at is not None and copy.next_attempt_at > now
            ):
                return None
            retain_until = None
            try:
                if await self._store.lock_enabled():
                    policy = (await read_settings(self._ports.uow)).retention
                    retain_until = backup.created_at + timedelta(days=lock_days(policy, self._policy.lock_days))
                size = await self._upload(backup, copy, retain_until)
            except (OffsiteError, OSError) as exc:
                reason = str(exc) if isinstance(exc, OffsiteError) else f"reading the local copy: {exc}"
                copy.failed(reason, self._ports.clock(), self._policy.retry)
                log.warning(
                    "off-site copy of backup %s failed (attempt %d; next at %s): %s",
                    backup_id,
                    copy.attempts,
                    copy.next_attempt_at,
                    copy.error,
                )
                self._metrics.copies.labels("failed").inc()
            else:
                copy.copied(self._store.location(backup.storage_path), size, retain_until, self._ports.clock())
                log.info("backup %s copied to %s (%d bytes)", backup_id, copy.location, size)
                self._metrics.copies.labels("copied").inc()
            async with self._ports.uow() as uow:
                await uow.offsite.save(copy)
                await uow.commit()
            return copy

    async def _upload(self, backup: Backup, copy: OffsiteCopy, retain_until: datetime | None) -> int:
        """Sends the backup's files; the bytes the store holds, checked against the catalog. The bytes
        sent so far are shown as the copy's progress, at most once every PROGRESS_SECONDS."""
        sent = 0
        shown = time.monotonic()

        async def progress(total: int) -> None:
            nonlocal sent, shown
            self._metrics.bytes.inc(max(total - sent, 0))
            sent = max(sent, total)
            if time.monotonic() - shown >= PROGRESS_SECONDS:
                shown = time.monotonic()
                progressed = dataclasses.replace(copy, status=OffsiteStatus.PENDING, bytes_copied=sent)
                async with self._ports.uow() as uow:
                    await uow.offsite.save(progressed)
                    await uow.commit()

        names = backup_files(backup)
        directory = self._ports.storage.directory(backup)
        recorded = {part.file_name: part.sha256 for part in backup.parts if part.file_name and part.sha256}
        held = await self._store.upload(
            backup.storage_path, directory, names, retain_until=retain_until, progress=progress, expected=recorded
        )
        by_name = {item.name: item for item in held}
        for part in backup.parts:
            if not part.file_name:
                continue
            stored = by_name.get(part.file_name)
            if stored is None or stored.size != part.size_bytes or (stored.sha256 and stored.sha256 != part.sha256):
                found = "missing" if stored is None else f"{stored.size} bytes, SHA-256 {stored.sha256}"
                raise OffsiteError(
                    f"{self._store.location(backup.storage_path)}{part.file_name} is {found}; the catalog records"
                    f" {part.size_bytes} bytes, SHA-256 {part.sha256}"
                )
        if MANIFEST not in by_name:
            raise OffsiteError(f"{self._store.location(backup.storage_path)} holds no {MANIFEST} after the copy")
        return sum(by_name[name].size for name in names if name in by_name)

    async def remove_kept(self, backup_id: str) -> None:
        """Removes the objects of a deleted backup that Object Lock kept, if the lock has ended."""
        async with self._ports.locks.hold(copy_lock(backup_id)) as held:
            if not held:
                return
            async with self._ports.uow() as uow:
                backup = await uow.backups.get(backup_id)
                copy = await uow.offsite.get(backup_id)
            if backup is None or copy is None or copy.status is not OffsiteStatus.LOCKED:
                return
            await remove_offsite(self._ports, self._store, backup, copy, self._policy.retry)

    async def expire_local(self, keep: timedelta) -> list[str]:
        """Removes the local copies of backups older than ``keep`` that are copied off-site; the
        catalog keeps listing them and reads fetch them back from the store."""
        now = self._ports.clock()
        async with self._ports.uow() as uow:
            candidates = await uow.offsite.local_expiry(now - keep, BATCH)
        reading = set(await self._ports.leases.held(VERIFY_JOB_PREFIX))
        removed = []
        for backup_id in candidates:
            if f"{VERIFY_JOB_PREFIX}{backup_id}" in reading:
                continue
            async with self._ports.locks.hold(copy_lock(backup_id)) as held:
                if not held:
                    continue
                async with self._ports.uow() as uow:
                    backup = await uow.backups.get(backup_id)
                    copy = await uow.offsite.get(backup_id)
                    restoring = await uow.restores.unfinished_of(backup_id)
                if backup is None or copy is None or copy.status is not OffsiteStatus.COPIED or restoring:
                    continue
                directory = self._ports.storage.directory(backup)
                # A copy fetched back from the store for a restore is fresh: it stays another window.
                if await asyncio.to_thread(_modified_after, directory / MANIFEST, now - keep):
                    continue
                await self._ports.storage.remove(backup)
                copy.local_removed_at = now
                async with self._ports.uow() as uow:
                    await uow.offsite.save(copy)
                    await uow.commit()
            log.info("backup %s: local copy removed after %s; kept at %s", backup_id, keep, copy.location)
            self._metrics.local_removed.inc()
            removed.append(backup_id)
        return removed


def _modified_after(path: Path, moment: datetime) -> bool:
    try:
        return path.stat().st_mtime > moment.timestamp()
    except FileNotFoundError:
        return False


async def remove_offsite(
    ports: Ports, store: OffsiteStore, backup: Backup, copy: OffsiteCopy | None, retry: timedelta
) -> bool:
    """Removes a deleted backup's objects from the store; the caller holds its copy lock. True when
    none are left; False when Object Lock keeps them, which is recorded (with a tombstone in the store,
    so a catalog rebuilt from it leaves the backup out) and tried again when the lock ends. Raises
    OffsiteError when the store fails: the deletion is then asked again later."""
    copy = copy or OffsiteCopy(backup.id)
    try:
        removed = await store.remove(backup.storage_path)
    except OffsiteLocked as exc:
        await store.mark_deleted(backup.id)
        copy.locked(str(exc), exc.until, ports.clock(), retry)
        log.warning("backup %s: Object Lock keeps its off-site copy until %s", backup.id, copy.retain_until)
        kept = True
    else:
        copy.removed()
        kept = False
        if removed:
            log.info("backup %s: %d off-site objects removed", backup.id, removed)
    async with ports.uow() as uow:
        await uow.offsite.save(copy)
        await uow.commit()
    return not kept
