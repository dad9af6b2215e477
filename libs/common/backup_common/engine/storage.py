"""The storage layout and the manifests that make each backup's directory self-describing.

`<root>/YYYY-MM-DD/<backup id>/` holds one archive per part (`database.zip`, `files.zip`), a part
manifest beside each (`database.json`, `files.json`) and, once the backup is complete,
`manifest.json`, which describes it fully: the catalog can be rebuilt from storage alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_common import __version__
from backup_common.domain.events import BackupPart
from backup_common.domain.model import Backup
from backup_common.domain.ports import WrappedKey
from backup_common.engine.archive import PARTIAL_SUFFIX
from backup_common.engine.crypto import MANIFEST_MAC_ALGORITHM, manifest_mac

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "backup-system/manifest"
MANIFEST_VERSION = 1


def archive_name(part: BackupPart) -> str:
    return f"{part.value}.zip"


def part_manifest_name(part: BackupPart) -> str:
    return f"{part.value}.json"


def tool_info() -> dict[str, str]:
    return {"name": "backup-system", "version": __version__}


def encryption_info(key: WrappedKey | None, *, mac_key: WrappedKey | None = None) -> dict[str, Any]:
    """The manifest's `encryption` entry: how to open the archives given the master key. Archives
    that are not encrypted carry ``mac_key``, the wrapped key the backup manifest's MAC is made
    with, when given: storage and the master key alone can then authenticate that manifest too."""
    if key is None:
        if mac_key is None:
            return {"scheme": "none"}
        wrapped = base64.b64encode(mac_key.wrapped).decode()
        return {"scheme": "none", "mac_key_id": mac_key.key_id, "mac_wrapped_key": wrapped}
    return {
        "scheme": "winzip-aes-256",
        "key_id": key.key_id,
        "wrapped_key": base64.b64encode(key.wrapped).decode(),
        "key_wrap": "AES-256-GCM, associated data: the backup id",
    }


def write_json_durably(path: Path, document: dict[str, Any]) -> None:
    """Writes to a temporary name, fsyncs, renames and fsyncs the directory: all or nothing (the
    temporary file is removed when writing fails, e.g. for want of space)."""
    temporary = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    data = (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def is_partial(name: str) -> bool:
    """Whether ``name`` is a file being written (an archive's or a JSON document's temporary name)."""
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def part_partials(directory: Path, part: BackupPart) -> list[Path]:
    """The temporary files an attempt at the part may leave in its backup's directory: its archive's
    (``.<part>.zip.<random>.partial``), its part manifest's, and the backup manifest's (written by the
    attempt that completes the backup)."""
    if not directory.is_dir():
        return []
    owned = (f".{archive_name(part)}.", f".{part_manifest_name(part)}{PARTIAL_SUFFIX}", f".{MANIFEST}{PARTIAL_SUFFIX}")
    return sorted(path for path in directory.iterdir() if is_partial(path.name) and path.name.startswith(owned))


def remove_part_partials(directory: Path, part: BackupPart) -> list[Path]:
    """Removes what :func:`part_partials` finds; returns what it removed. Blocking. The caller holds
    the part's lease, or the part is over: no attempt is writing them."""
    removed = []
    for path in part_partials(directory, part):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def remove_failed_part(directory: Path, part: BackupPart) -> list[Path]:
    """Removes everything an attempt at a part that failed for good left: its temporary files, and an
    archive and part manifest it may have finished before the failure (no backup lists them as
    usable). Frees the space at once, which matters most when the failure was a full disk."""
    removed = remove_part_partials(directory, part)
    for path in (directory / archive_name(part), directory / part_manifest_name(part)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def sweep_partials(root: Path, keep: Callable[[str], bool], modified_before: float) -> list[Path]:
    """Removes the temporary files under the storage root (``<root>/<day>/<backup id>/.*.partial``)
    of every backup ``keep(backup_id)`` is false for, last modified before ``modified_before`` (a
    ``time.time()``); returns what it removed. Blocking.

    ``keep`` says which backups a live worker is writing now; the time guards against an attempt that
    started after the caller asked: its files are newer.
    """
    removed: list[Path] = []
    for day in _subdirectories(root):
        for backup in _subdirectories(day):
            if keep(backup.name):
                continue
            for path in backup.iterdir():
                if not is_partial(path.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and path.stat().st_mtime < modified_before:
                        path.unlink()
                        removed.append(path)
    return removed


def _subdirectories(directory: Path) -> list[Path]:
    """The directories in ``directory``, not hidden ones (a backup being removed is renamed to one)."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
    )


def fsync_directory(path: Path) -> None:
    """Makes the renames and removals of entries in ``path`` durable."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def backup_manifest(backup: Backup, parts: dict[str, dict[str, Any]], encryption: dict[str, Any]) -> dict[str, Any]:
    created = backup.created_at if backup.created_at.tzinfo else backup.created_at.replace(tzinfo=UTC)
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "backup": {
            "id": backup.id,
            "type": backup.type.value,
            "description": backup.description,
            "requested_by": backup.requested_by,
            "trigger": backup.trigger.value,
            "schedule": backup.schedule,
            "archive": backup.archive,
            "parent_id": backup.parent_id,
            "created_at": created.isoformat(),
            "completed_at": datetime.now(UTC).isoformat(),
        },
        "encryption": encryption,
        "parts": parts,
        "tool": tool_info(),
    }


MAC_FIELD = "mac"


def _canonical(document: dict[str, Any]) -> bytes:
    """The bytes a manifest's MAC covers: its JSON without the MAC, keys sorted, no spacing."""
    unsigned = {key: value for key, value in document.items() if key != MAC_FIELD}
    # surrogatepass: a file name that is not UTF-8 is held as lone surrogates (see engine.files.model).
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def sign_manifest(document: dict[str, Any], data_key: bytes) -> dict[str, Any]:
    """The manifest with its MAC (see engine.crypto.manifest_mac)."""
    mac = {"algorithm": MANIFEST_MAC_ALGORITHM, "value": manifest_mac(data_key, _canonical(document))}
    return {**document, MAC_FIELD: mac}


def manifest_problem(document: dict[str, Any], backup_id: str, data_key: bytes) -> str | None:
    """Why the manifest is not the authentic one of this backup; None when it is."""
    mac = document.get(MAC_FIELD)
    if not isinstance(mac, dict) or not isinstance(mac.get("value"), str):
        return "the manifest carries no MAC (written before manifests were signed, or stripped): it cannot be trusted"
    if mac.get("algorithm") != MANIFEST_MAC_ALGORITHM:
        return f"the manifest's MAC algorithm {mac.get('algorithm')!r} is unknown"
    if not hmac.compare_digest(mac["value"], manifest_mac(data_key, _canonical(document))):
        return "the manifest's MAC does not match: it was edited, or belongs to another backup"
    described = document.get("backup")
    if not isinstance(described, dict) or described.get("id") != backup_id:
        return f"the manifest describes backup {described.get('id') if isinstance(described, dict) else None}"
    return None


def find_backup_directory(root: Path, backup_id: str) -> Path | None:
    """The backup's directory below the storage root, whatever day it was made."""
    matches = sorted(root.glob(f"*/{backup_id}"))
    return matches[-1] if matches else None


def filesystem_usage(directory: Path) -> tuple[int, int] | None:
    """Total and free bytes of the filesystem ``directory`` is (or will be) on."""
    # The storage root may not exist before the first backup: measure the filesystem it will be on.
    for candidate in (directory, *directory.resolve().parents):
        if candidate.exists():
            usage = shutil.disk_usage(candidate)
            return usage.total, usage.free
    return None


def directory_inside(root: Path, requested: str) -> Path:
    """``requested``, an absolute path, resolved (symbolic links followed) when it lies inside ``root``
    (resolved too); ValueError, saying why, otherwise. Blocking: it reads the filesystem."""
    if "\x00" in requested:
        raise ValueError("the directory contains a NUL character")
    path = Path(requested)
    if not path.is_absolute():
        raise ValueError(f"the directory {requested!r} must be an absolute path")
    base = root.resolve()
    resolved = path.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ValueError(f"the directory {requested!r} must be below the restore directory {base} (BACKUP_RESTORE_DIR)")
    return resolved


class LocalStorage:
    """``BackupStorage`` on a local directory (or a mounted volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, backup: Backup) -> Path:
        return self.root / backup.storage_path

    async def prepare_part(self, backup: Backup, part: BackupPart) -> Path:
        directory = self.directory(backup)
        archive = directory / archive_name(part)

        def prepare() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            # An archive left by an attempt whose worker died after the rename was never recorded as
            # usable; the caller holds the part's lease now, so it replaces it, and removes the
            # temporary files earlier attempts left (killed ones leave a partial archive each).
            archive.unlink(missing_ok=True)
            remove_part_partials(directory, part)

        await asyncio.to_thread(prepare)
        return archive

    async def write_part_manifest(self, backup: Backup, part: BackupPart, manifest: dict[str, Any]) -> None:
        await asyncio.to_thread(write_json_durably, self.directory(backup) / part_manifest_name(part), manifest)

    async def read_part_manifest(self, backup: Backup, part: BackupPart) -> dict[str, Any]:
        return await asyncio.to_thread(read_json, self.directory(backup) / part_manifest_name(part))

    async def write_manifest(self, backup: Backup, encryption: dict[str, Any], *, data_key: bytes) -> None:
        directory = self.directory(backup)

        def write() -> None:
            described = {p.part.value: read_json(directory / part_manifest_name(p.part)) for p in backup.parts}
            manifest = sign_manifest(backup_manifest(backup, described, encryption), data_key)
            write_json_durably(directory / MANIFEST, manifest)

        await asyncio.to_thread(write)

    async def read_manifest(self, backup: Backup) -> dict[str, Any]:
        return await asyncio.to_thread(read_json, self.directory(backup) / MANIFEST)

    async def usage(self) -> tuple[int, int] | None:
        return await asyncio.to_thread(filesystem_usage, self.root)

    async def remove(self, backup: Backup) -> bool:
        return await asyncio.to_thread(remove_directory, self.directory(backup))


def remove_directory(directory: Path) -> bool:
    """Removes a backup's directory; False when it was gone already. It is renamed away first, so a
    removal interrupted half-way never leaves a directory that still looks like the backup; the
    next call finishes it. The day's directory stays: a backup of that day may be creating it."""
    doomed = directory.with_name(f".{directory.name}.deleting")
    existed = False
    try:
        directory.rename(doomed)
        existed = True
    except FileNotFoundError:
        pass
    if doomed.exists():
        shutil.rmtree(doomed)
        existed = True
    if existed:
        fsync_directory(directory.parent)
    return existed
