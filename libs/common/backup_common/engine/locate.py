"""Finding a backup part and its archive key, through the catalog or, without it, storage alone."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.engine.crypto import KeyUnwrapError, MasterKey, archive_password
from backup_common.engine.storage import MANIFEST, archive_name, part_manifest_name, read_json

log = logging.getLogger(__name__)


class BackupNotFound(Exception):
    pass


@dataclass(frozen=True)
class LocatedPart:
    backup_id: str
    directory: Path
    archive: Path
    manifest: dict[str, Any]
    password: str | None


def _find_directory(storage_dir: Path, backup_id: str) -> Path | None:
    matches = sorted(storage_dir.glob(f"*/{backup_id}"))
    return matches[-1] if matches else None


async def _catalog_directory(settings: Settings, backup_id: str) -> Path | None:
    """The directory the catalog records, or None when the catalog does not answer or know it."""
    try:
        pool = await asyncio.wait_for(db.create_pool(settings.catalog, minsize=1, maxsize=1), timeout=5)
    except Exception as exc:
        log.warning("catalog unreachable (%s); looking in storage alone", type(exc).__name__)
        return None
    try:
        async with db.transaction(pool) as conn:
            row = await db.fetch_one(conn, "SELECT storage_path FROM backups WHERE id = %s", (backup_id,))
    except Exception as exc:
        log.warning("catalog unusable (%s); looking in storage alone", type(exc).__name__)
        return None
    finally:
        await db.close_pool(pool)
    return settings.storage_dir / row["storage_path"] if row else None


async def locate_part(settings: Settings, reference: str, part: BackupPart) -> LocatedPart:
    """``reference`` is a backup id or a backup directory; the key comes from the part's manifest,
    unwrapped with the configured master key, so this works with the catalog gone."""
    try:
        backup_id: str | None = str(uuid.UUID(reference))
    except ValueError:
        backup_id = None
    recorded = await _catalog_directory(settings, backup_id) if backup_id else None
    return await asyncio.to_thread(_locate, settings, reference, backup_id, recorded, part)


def _locate(
    settings: Settings, reference: str, backup_id: str | None, recorded: Path | None, part: BackupPart
) -> LocatedPart:
    path = Path(reference)
    if path.is_dir():
        directory = path
    elif backup_id is None:
        raise BackupNotFound(f"{reference} is neither a backup directory nor a backup id")
    else:
        found = recorded if recorded is not None and recorded.is_dir() else None
        found = found or _find_directory(settings.storage_dir, backup_id)
        if found is None:
            raise BackupNotFound(f"no backup {backup_id} under {settings.storage_dir}")
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
    return LocatedPart(directory.name, directory, archive, manifest, _password(settings, directory.name, manifest))


def _password(settings: Settings, backup_id: str, manifest: dict[str, Any]) -> str | None:
    encryption = manifest.get("encryption") or {"scheme": "none"}
    if encryption.get("scheme") == "none":
        return None
    master = MasterKey.from_settings(settings)
    if encryption["key_id"] != master.key_id:
        raise KeyUnwrapError(
            f"backup {backup_id} was encrypted under master key {encryption['key_id']}; the configured master"
            f" key is {master.key_id}"
        )
    return archive_password(master.unwrap(base64.b64decode(encryption["wrapped_key"]), backup_id))
