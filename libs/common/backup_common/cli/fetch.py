"""The offline tools' way to a backup part: local storage first, else (or when the local archive is
not the one its manifest describes) the off-site copy, fetched into local storage."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from backup_common.adapters.offsite.s3 import s3_offsite
from backup_common.adapters.runtime.fetch import file_sha256
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.model import Backup
from backup_common.domain.ports import OffsiteError, OffsiteStore
from backup_common.engine.crypto import MasterKey
from backup_common.engine.locate import BackupNotFound, LocatedPart, backup_id_of, locate_part

log = logging.getLogger(__name__)


def archive_problem(located: LocatedPart) -> str | None:
    """How the part's archive differs from the size and SHA-256 its manifest records; None when it
    matches. Blocking."""
    recorded_size, recorded_sha256 = located.manifest.get("size_bytes"), located.manifest.get("sha256")
    size = located.archive.stat().st_size
    if isinstance(recorded_size, int) and size != recorded_size:
        return f"{located.archive} is {size} bytes, not the {recorded_size} its manifest records"
    if isinstance(recorded_sha256, str) and (found := file_sha256(located.archive)) != recorded_sha256:
        return f"{located.archive} has SHA-256 {found}, not the {recorded_sha256} its manifest records"
    return None


async def locate_or_fetch(settings: Settings, reference: str, part: BackupPart, backup: Backup | None) -> LocatedPart:
    """``reference`` (a backup id or directory) located in local storage and checked against its
    manifest; with off-site storage configured, fetched from there when missing or damaged.
    ``backup`` is the catalog's record, when it answered."""

    def master() -> MasterKey:
        return MasterKey(settings.load_master_key())

    recorded = settings.storage_dir / backup.storage_path if backup is not None else None
    try:
        located = await asyncio.to_thread(locate_part, settings.storage_dir, reference, part, master, recorded=recorded)
        problem = await asyncio.to_thread(archive_problem, located)
    except BackupNotFound as exc:
        problem = str(exc)
    else:
        if problem is None:
            return located
    backup_id = backup_id_of(reference) or (backup.id if backup is not None else None)
    store = s3_offsite(settings)
    if store is None or backup_id is None:
        raise BackupNotFound(problem)
    try:
        directory = await _fetch(settings, store, backup_id, backup)
    finally:
        await store.close()
    log.warning("%s; fetched the backup from its off-site copy into %s", problem, directory)
    return await asyncio.to_thread(locate_part, settings.storage_dir, str(directory), part, master)


async def _fetch(settings: Settings, store: OffsiteStore, backup_id: str, backup: Backup | None) -> Path:
    storage_path = backup.storage_path if backup is not None else await _find(store, backup_id)
    try:
        names = sorted(await store.listing(storage_path))
        if not names:
            raise BackupNotFound(f"no backup {backup_id} at {store.location(storage_path)} either")
        directory = settings.storage_dir / storage_path
        await store.download(storage_path, names, directory)
    except OffsiteError as exc:
        raise BackupNotFound(f"backup {backup_id}: the off-site copy cannot be read: {exc}") from exc
    return directory


async def _find(store: OffsiteStore, backup_id: str) -> str:
    """The storage path of the backup in the store, found by its id (the catalog did not say)."""
    wanted = str(uuid.UUID(backup_id))
    try:
        paths = await store.backups()
    except OffsiteError as exc:
        raise BackupNotFound(f"no backup {backup_id} in local storage, and the off-site store fails: {exc}") from exc
    for path in paths:
        if path.rsplit("/", 1)[-1] == wanted:
            return path
    raise BackupNotFound(f"no backup {backup_id} in local storage nor at {store.location('')}")
