"""The storage layout and the manifests that make each backup's directory self-describing.

`<root>/YYYY-MM-DD/<backup id>/` holds one archive per part (`database.zip`, `files.zip`), a part
manifest beside each (`database.json`, `files.json`) and, once the backup is complete,
`manifest.json`, which describes it fully: the catalog can be rebuilt from storage alone.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_common import __version__
from backup_common.adapters.mysql.parts import BackupRecord
from backup_common.domain.events import BackupPart

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "backup-system/manifest"
MANIFEST_VERSION = 1


def archive_name(part: BackupPart) -> str:
    return f"{part.value}.zip"


def part_manifest_name(part: BackupPart) -> str:
    return f"{part.value}.json"


def tool_info() -> dict[str, str]:
    return {"name": "backup-system", "version": __version__}


def encryption_info(key_id: str | None, wrapped_key: bytes | None) -> dict[str, Any]:
    if key_id is None or wrapped_key is None:
        return {"scheme": "none"}
    return {
        "scheme": "winzip-aes-256",
        "key_id": key_id,
        "wrapped_key": base64.b64encode(wrapped_key).decode(),
        "key_wrap": "AES-256-GCM, associated data: the backup id",
    }


def write_json_durably(path: Path, document: dict[str, Any]) -> None:
    """Writes to a temporary name, fsyncs, renames and fsyncs the directory: all or nothing."""
    temporary = path.with_name(f".{path.name}.partial")
    data = (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def backup_manifest(
    record: BackupRecord, parts: dict[str, dict[str, Any]], encryption: dict[str, Any]
) -> dict[str, Any]:
    created = record.created_at
    if isinstance(created, datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "backup": {
            "id": record.id,
            "type": record.type.value,
            "description": record.description,
            "requested_by": record.requested_by,
            "parent_id": record.parent_id,
            "created_at": created.isoformat() if isinstance(created, datetime) else created,
            "completed_at": datetime.now(UTC).isoformat(),
        },
        "encryption": encryption,
        "parts": parts,
        "tool": tool_info(),
    }
