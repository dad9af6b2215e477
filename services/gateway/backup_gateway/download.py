"""Streaming a completed backup to the administrator without reading it into memory, and never a
damaged archive as if it were whole: each archive is checked against its recorded size and SHA-256
while it is sent, and the transfer is cut short when it differs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from zipstream import ZIP_STORED, ZipStream

from backup_common.adapters.runtime.fetch import LocalCopyMissing, local_copy
from backup_common.domain.errors import Conflict, Gone
from backup_common.domain.model import Backup, BackupStatus, Part
from backup_common.engine.storage import MANIFEST
from backup_gateway import handlers
from backup_gateway.app_keys import HTTP_METRICS, TRANSFER_ABORTED
from backup_gateway.views import backup_id_of, ports

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DamagedArchive(Exception):
    """An archive's bytes differ from the size or SHA-256 the catalog recorded of it."""


def checked_chunks(path: Path, size: int, sha256: str | None) -> Iterator[bytes]:
    """The file's bytes in chunks, the last one held back until all of them matched ``size`` and
    ``sha256`` (when recorded): a damaged file raises DamagedArchive before its end is given out, so
    that what was sent of it can never pass for the whole file."""
    digest = hashlib.sha256()
    read = 0
    held = b""
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            read += len(chunk)
            if read > size:
                raise DamagedArchive(f"{path.name} is longer than the {size} bytes recorded")
            digest.update(chunk)
            if held:
                yield held
            held = chunk
    if read != size:
        raise DamagedArchive(f"{path.name} is {read} bytes, not the {size} bytes recorded")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DamagedArchive(f"{path.name} has SHA-256 {digest.hexdigest()}, not the {sha256} recorded")
    if held:
        yield held


def repr_digest(sha256: str) -> str:
    """The Repr-Digest header's value (RFC 9530) for a hex SHA-256."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"


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
    # Sizes only here: the stream itself checks each archive's SHA-256 before its last chunk goes out.
    try:
        directory = await local_copy(ports(request), backup, checksums=False)
    except LocalCopyMissing as exc:
        raise Gone(str(exc)) from exc
    paths = await asyncio.to_thread(_archive_paths, directory, backup)
    stem = f"backup-{backup.created_at:%Y%m%d-%H%M%S}-{backup.id}"
    if len(paths) == 1:
        return await _stream_archive(request, backup, backup.parts[0], paths[0], f"{stem}-{paths[0].name}")
    return await _stream_bundle(request, backup, paths, f"{stem}.zip")


async def _stream_archive(
    request: web.Request, backup: Backup, part: Part, path: Path, file_name: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "application/zip", "Content-Disposition": f'attachment; filename="{file_name}"'}
    )
    if part.sha256 is not None:
        response.headers["Repr-Digest"] = repr_digest(part.sha256)
    # The recorded size, not the file's: a client counts a shorter transfer as a failed one.
    response.content_length = part.size_bytes
    await response.prepare(request)
    return await _send(request, response, backup, checked_chunks(path, part.size_bytes, part.sha256))


async def _stream_bundle(request: web.Request, backup: Backup, paths: list[Path], file_name: str) -> web.StreamResponse:
    """One zip holding the part archives, each checked as it goes, and the manifest, stored as they
    are (already compressed)."""
    recorded = {part.file_name: part for part in backup.parts}
    bundle = ZipStream(compress_type=ZIP_STORED, sized=True)
    for path in paths:
        part = recorded.get(path.name)
        if part is None:
            bundle.add_path(str(path), path.name)
        else:
            bundle.add(checked_chunks(path, part.size_bytes, part.sha256), path.name, size=part.size_bytes)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{file_name}"',
        }
    )
    response.content_length = len(bundle)
    await response.prepare(request)
    return await _send(request, response, backup, iter(bundle))


async def _send(
    request: web.Request, response: web.StreamResponse, backup: Backup, chunks: Iterator[bytes]
) -> web.StreamResponse:
    """Writes ``chunks`` out, or on a DamagedArchive cuts the connection short of the promised length."""
    try:
        # Each step reads a file: it runs in a worker thread, never on the event loop.
        while (chunk := await asyncio.to_thread(next, chunks, b"")) != b"":
            await response.write(chunk)
    except DamagedArchive as exc:
        log.error("download of backup %s aborted: %s", backup.id, exc)
        request.app[HTTP_METRICS].download_integrity_failures.inc()
        request[TRANSFER_ABORTED] = str(exc)
        # The status line has gone out already: closing the connection short of Content-Length is the
        # one way left to tell the client that the body is not the archive. Without keep-alive, aiohttp
        # closes it once the middlewares (the audit record) are done with the response.
        response.force_close()
        return response
    await response.write_eof()
    return response
