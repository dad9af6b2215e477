"""Streaming a completed backup to the administrator without reading it into memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from zipstream import ZIP_STORED, ZipStream

from backup_common.domain.errors import Conflict, Gone
from backup_common.domain.model import Backup, BackupStatus
from backup_common.engine.storage import MANIFEST
from backup_gateway import handlers
from backup_gateway.views import backup_id_of, ports

CHUNK = 1 << 20


def _archive_paths(directory: Path, backup: Backup) -> list[Path]:
    paths = [directory / part.file_name for part in backup.parts if part.file_name]
    if len(paths) != len(backup.parts):
        raise Gone(f"backup {backup.id} has a part without an archive recorded")
    if len(paths) > 1:
        paths.append(directory / MANIFEST)
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise Gone(f"backup {backup.id} is missing from storage: {', '.join(missing)}")
    return paths


async def download_backup(request: web.Request) -> web.StreamResponse:
    backup = await handlers.read_backup(ports(request), backup_id_of(request))
    if backup.status is not BackupStatus.COMPLETED:
        raise Conflict(
            f"backup {backup.id} is {backup.status}; only a completed backup can be downloaded",
            code="backup_not_completed",
        )
    directory = ports(request).storage.directory(backup)
    paths = await asyncio.to_thread(_archive_paths, directory, backup)
    stem = f"backup-{backup.created_at:%Y%m%d-%H%M%S}-{backup.id}"
    if len(paths) == 1:
        response = web.FileResponse(paths[0], chunk_size=CHUNK)
        response.headers["Content-Disposition"] = f'attachment; filename="{stem}-{paths[0].name}"'
        response.content_type = "application/zip"
        return response
    return await _stream_bundle(request, paths, f"{stem}.zip")


async def _stream_bundle(request: web.Request, paths: list[Path], file_name: str) -> web.StreamResponse:
    """One zip holding the part archives and the manifest, stored as they are (already compressed)."""
    bundle = ZipStream(compress_type=ZIP_STORED, sized=True)
    for path in paths:
        bundle.add_path(str(path), path.name)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{file_name}"',
        }
    )
    response.content_length = len(bundle)
    await response.prepare(request)
    chunks: Iterator[bytes] = iter(bundle)
    # The zip generator reads files: each step runs in a worker thread, never on the event loop.
    while (chunk := await asyncio.to_thread(next, chunks, b"")) != b"":
        await response.write(chunk)
    await response.write_eof()
    return response
