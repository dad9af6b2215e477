"""A backup's local copy, fetched back from its off-site copy when it is missing or damaged: what
downloads, restores and verification read from."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from backup_common.domain.model import Backup
from backup_common.domain.ports import OffsiteError, Ports
from backup_common.engine.storage import MANIFEST, part_manifest_name

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class LocalCopyMissing(Exception):
    """Neither storage nor the off-site copy gives the backup's files intact; the message says which."""


def local_problems(directory: Path, backup: Backup, *, checksums: bool) -> dict[str, str]:
    """What is wrong with the backup's local files, by file name: missing, or not the size (or, with
    ``checksums``, the SHA-256) the catalog recorded. Blocking."""
    problems: dict[str, str] = {}
    for part in backup.parts:
        if not part.file_name:
            continue
        manifest = part_manifest_name(part.part)
        if not (directory / manifest).is_file():
            problems[manifest] = "missing"
        archive = directory / part.file_name
        try:
            size = archive.stat().st_size
        except FileNotFoundError:
            problems[part.file_name] = "missing"
            continue
        if size != part.size_bytes:
            problems[part.file_name] = f"{size} bytes, not the {part.size_bytes} recorded"
        elif checksums and part.sha256 is not None and (found := file_sha256(archive)) != part.sha256:
            problems[part.file_name] = f"SHA-256 {found}, not the {part.sha256} recorded"
    if not (directory / MANIFEST).is_file():
        problems[MANIFEST] = "missing"
    return problems


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def local_copy(ports: Ports, backup: Backup, *, checksums: bool = True) -> Path:
    """The backup's local directory with every recorded archive intact (``checksums``: SHA-256 as
    well as size) and its manifests; whatever is missing or damaged is fetched from the off-site copy
    first. Raises LocalCopyMissing when that cannot be done. Without an off-site store, the directory
    as it is: what reads it then says precisely what is wrong."""
    directory = ports.storage.directory(backup)
    store = ports.offsite
    if store is None:
        return directory
    problems = await asyncio.to_thread(local_problems, directory, backup, checksums=checksums)
    if not problems:
        return directory
    described = "; ".join(f"{name}: {problem}" for name, problem in sorted(problems.items()))
    try:
        await store.download(backup.storage_path, sorted(problems), directory)
    except OffsiteError as exc:
        raise LocalCopyMissing(
            f"backup {backup.id} is not intact in storage ({described}), and its off-site copy failed: {exc}"
        ) from exc
    left = await asyncio.to_thread(local_problems, directory, backup, checksums=checksums)
    if left:
        still = "; ".join(f"{name}: {problem}" for name, problem in sorted(left.items()))
        raise LocalCopyMissing(
            f"backup {backup.id}: the files fetched from {store.location(backup.storage_path)} "
            f"are not the ones recorded either ({still})"
        )
    log.warning(
        "backup %s: fetched %s from %s (%s)",
        backup.id,
        ", ".join(sorted(problems)),
        store.location(backup.storage_path),
        described,
    )
    # Fetched back: the local-expiry round may remove it again, once it is old enough (by its files).
    async with ports.uow() as uow:
        copy = await uow.offsite.get(backup.id, for_update=True)
        if copy is not None and copy.local_removed_at is not None:
            copy.local_removed_at = None
            await uow.offsite.save(copy)
            await uow.commit()
    return directory
