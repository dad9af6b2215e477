"""Finding a backup part in storage and its archive's password, with the master key alone."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_common.domain.events import BackupPart
from backup_common.engine.crypto import MasterKey, archive_password
from backup_common.engine.storage import (
    MANIFEST,
    archive_name,
    find_backup_directory,
    part_manifest_name,
    read_json,
)

# Incrementals on incrementals: a longer chain means the base is missing or the manifests loop.
MAX_CHAIN = 1000


class BackupNotFound(Exception):
    pass


@dataclass(frozen=True)
class LocatedPart:
    backup_id: str
    directory: Path
    archive: Path
    manifest: dict[str, Any]
    password: str | None


def backup_id_of(reference: str) -> str | None:
    """The canonical id when ``reference`` is a backup id, else None (it may be a directory)."""
    try:
        return str(uuid.UUID(reference))
    except ValueError:
        return None


def locate_part(
    storage_dir: Path,
    reference: str,
    part: BackupPart,
    master: Callable[[], MasterKey],
    *,
    recorded: Path | None = None,
) -> LocatedPart:
    """``reference`` is a backup id or a backup directory; ``recorded`` is where the catalog says the
    backup is, when it answered. The key comes from the part's manifest, unwrapped with ``master``
    (called only for an encrypted part), so this works with the catalog gone. Blocking: run it in a
    worker thread from async code."""
    path = Path(reference)
    backup_id = backup_id_of(reference)
    if path.is_dir():
        directory = path
    elif backup_id is None:
        raise BackupNotFound(f"{reference} is neither a backup directory nor a backup id")
    else:
        found = recorded if recorded is not None and recorded.is_dir() else None
        found = found or find_backup_directory(storage_dir, backup_id)
        if found is None:
            raise BackupNotFound(f"no backup {backup_id} under {storage_dir}")
        directory = found
    archive = directory / archive_name(part)
    manifest_path = directory / part_manifest_name(part)
    if not manifest_path.is_file():
        manifest_path = directory / MANIFEST
    if not archive.is_file() or not manifest_path.is_file():
        raise BackupNotFound(f"{directory} holds no complete {part.value} part")
    manifest = read_json(manifest_path)
    if manifest_path.name == MANIFEST:
        manifest = manifest["parts"][part.value]
    return LocatedPart(directory.name, directory, archive, manifest, _password(directory.name, manifest, master))


def _password(backup_id: str, manifest: dict[str, Any], master: Callable[[], MasterKey]) -> str | None:
    encryption = manifest.get("encryption") or {"scheme": "none"}
    if encryption.get("scheme") == "none":
        return None
    wrapped = base64.b64decode(encryption["wrapped_key"])
    return archive_password(master().unwrap_stored(encryption["key_id"], wrapped, backup_id))
