"""Writes the entries found by the scanner into a files archive, and says what it holds.

A file larger than PACK_FILE_BYTES gets a member of its own, ``<path>`` (or a pack of its own when
a member cannot have that name); smaller files, directories, symbolic and hard links go into packs
(see packs.py). Already-compressed content is stored, the rest
deflated. Given the parent backup's versions (``bases``), a file that starts with its parent's
version is archived from there on only (``appended/<path>``).

Files are read through file descriptors opened without following links, at every path component,
so a file or directory swapped for a link since the scan is never followed out of its tree.

Synchronous and CPU-heavy: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from isal import isal_zlib

from backup_common.engine.archive import ArchiveWriter, check_member_name
from backup_common.engine.files.dirfd import FILE_FLAGS, NotADirectoryOnPath, ParentDirectories, open_below
from backup_common.engine.files.model import APPENDED_PREFIX, TREES, ArchiveResult, Base, Entry, FileRecord, Skipped
from backup_common.engine.files.packs import PACK_FILE_BYTES, BoundedWriter, Packer

CHUNK_BYTES = 1 << 20
# Files up to this size are read whole into memory before their member is written, so one that
# changes while it is read can be read again; larger ones are streamed (see _archive_large).
IN_MEMORY_BYTES = 8 << 20
PROBE_BYTES = 64 << 10
PROBE_MIN_BYTES = 512
PROBE_RATIO = 0.95
PROGRESS_INTERVAL_S = 0.5

PRECOMPRESSED_EXTENSIONS = frozenset(
    {
        # images
        "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "heic", "heif", "avif", "jxl", "jp2",
        # video
        "mp4", "m4v", "mov", "mkv", "webm", "avi", "wmv", "flv", "mpg", "mpeg", "m2ts", "mts", "3gp", "ogv",
        # audio
        "mp3", "aac", "m4a", "ogg", "oga", "opus", "flac", "wma",
        # archives and compressed streams
        "zip", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "zst", "zstd", "lz4", "lzma", "lz", "7z", "rar",
        "cab", "br", "jar", "war", "apk", "whl", "deb", "rpm", "dmg",
        # documents that are ZIP or otherwise compressed inside
        "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "pdf",
        # fonts
        "woff", "woff2",
    }
)  # fmt: skip


def is_precompressed_name(path: str) -> bool:
    """Whether the file name's extension is that of an already-compressed format."""
    name = path.rsplit("/", 1)[-1]
    _, dot, extension = name.rpartition(".")
    return bool(dot) and extension.lower() in PRECOMPRESSED_EXTENSIONS


def probe_incompressible(first_chunk: bytes) -> bool:
    """Whether deflate (isal, level 1) cannot shrink the first 64 KiB below 95 %.

    Under 512 bytes there is too little to tell, and deflating costs next to nothing: compress.
    """
    sample = first_chunk[:PROBE_BYTES]
    if len(sample) < PROBE_MIN_BYTES:
        return False
    return len(isal_zlib.compress(sample, 1, -15)) > PROBE_RATIO * len(sample)


class _Unavailable(Exception):
    """The entry cannot be archived; its reason goes to the skipped list."""


@dataclass
class _Progress:
    callback: Callable[[int, int], None] | None
    bytes_done: int = 0
    entries_done: int = 0
    last_report: float = 0.0

    def advance(self, count: int = 0, *, entry_done: bool = False) -> None:
        self.bytes_done += count
        if entry_done:
            self.entries_done += 1
        if self.callback is None:
            return
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_INTERVAL_S:
            self.last_report = now
            self.callback(self.bytes_done, self.entries_done)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.bytes_done, self.entries_done)


def _open_tree_directory(roots: dict[str, Path], directory: str) -> int:
    """A new descriptor of ``directory`` ("<tree>/<dirs>"), reached from its tree's root one component
    at a time; raises _Unavailable."""
    tree, *below = directory.split("/")
    try:
        # The tree root may be a link (a mounted volume): the scanner followed it too.
        root = os.open(roots[tree], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _unavailable(exc) from None
    try:
        return open_below(root, below)
    except NotADirectoryOnPath as exc:
        raise _Unavailable(f"a parent directory changed into a link or file: {exc.component}") from None
    except OSError as exc:
        raise _unavailable(exc) from None
    finally:
        os.close(root)


def write_files_archive(
    writer: ArchiveWriter,
    entries: list[Entry],
    roots: dict[str, Path],
    *,
    progress: Callable[[int, int], None] | None = None,
    attempts: int = 3,
    bases: Mapping[str, Base] | None = None,
) -> ArchiveResult:
    """Archives the entries, in order, and returns the records of what was archived.

    ``roots`` maps each tree name to its directory. An entry that cannot be archived (vanished,
    unreadable, changed into a link or a special file since the scan) goes to ``skipped``.
    ``progress(bytes_done, entries_done)`` is called at most every 0.5 s, and once at the end;
    ``bytes_done`` counts bytes archived, ``ArchiveResult.bytes_read`` every byte read, re-reads
    included. ``bases`` maps paths to their parent's version (incremental.append_bases): a file that
    grew from it is archived from the end of that version on. Errors of the archive itself (a full
    disk, say) propagate: the archive is then unusable.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for entry in entries:
        tree = entry.path.split("/", 1)[0]
        if tree not in TREES or tree not in roots:
            raise ValueError(f"entry {entry.path!r} is not in any of the trees given: {sorted(roots)}")
    result = ArchiveResult()
    tracker = _Progress(progress)
    packer = Packer(writer)
    skipped_files: set[str] = set()
    with ParentDirectories(partial(_open_tree_directory, roots)) as directories:
        for entry in entries:
            if entry.kind == "hardlink" and entry.target in skipped_files:
                # Its first name could not be read: this name of the same file is archived instead.
                entry = Entry(entry.path, "file", entry.mode, entry.mtime_ns, entry.size)
            try:
                if entry.kind == "dir":
                    record = _archive_directory(packer, entry)
                elif entry.kind == "symlink":
                    record = _archive_link(packer, entry)
                elif entry.kind == "hardlink":
                    record = _archive_hard_link(packer, entry)
                else:
                    base = bases.get(entry.path) if bases else None
                    record = _archive_file(writer, packer, entry, base, directories, attempts, result, tracker)
            except _Unavailable as exc:
                result.skipped.append(Skipped(entry.path, str(exc)))
                skipped_files.add(entry.path)
            else:
                result.records.append(record)
            tracker.advance(entry_done=True)
        packer.close()
    tracker.finish()
    return result


def _archive_directory(packer: Packer, entry: Entry) -> FileRecord:
    pack = packer.add_directory(entry.path, mode=entry.mode, mtime_ns=entry.mtime_ns)
    return FileRecord(entry.path, "dir", entry.mode, entry.mtime_ns, 0, None, pack=pack)


def _archive_link(packer: Packer, entry: Entry) -> FileRecord:
    if entry.target is None:
        raise _Unavailable("symbolic link without a target")
    pack = packer.add_link(entry.path, entry.target, mode=entry.mode, mtime_ns=entry.mtime_ns)
    size = len(os.fsencode(entry.target))
    return FileRecord(entry.path, "symlink", entry.mode, entry.mtime_ns, size, None, target=entry.target, pack=pack)


def _archive_hard_link(packer: Packer, entry: Entry) -> FileRecord:
    if entry.target is None:
        raise _Unavailable("hard link without the path it shares its file with")
    pack = packer.add_link(entry.path, entry.target, mode=entry.mode, mtime_ns=entry.mtime_ns, hard=True)
    return FileRecord(
        entry.path, "hardlink", entry.mode, entry.mtime_ns, entry.size, None, target=entry.target, pack=pack
    )


def _archive_file(
    writer: ArchiveWriter,
    packer: Packer,
    entry: Entry,
    base: Base | None,
    directories: ParentDirectories,
    attempts: int,
    result: ArchiveResult,
    tracker: _Progress,
) -> FileRecord:
    parent_fd, name = directories.of(entry.path)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unavailable("changed into a link") from None
        raise _unavailable(exc) from None
    try:
        before = _regular_stat(fd)
        if base is not None and before.st_size < base.size:
            base = None  # shrunk: it cannot have grown from that version
        if before.st_size <= IN_MEMORY_BYTES:
            return _archive_small(writer, packer, entry.path, fd, before, base, attempts, result, tracker)
        return _archive_large(writer, packer, entry.path, fd, before, base, result, tracker)
    finally:
        os.close(fd)


def _archive_small(
    writer: ArchiveWriter,
    packer: Packer,
    path: str,
    fd: int,
    before: os.stat_result,
    base: Base | None,
    attempts: int,
    result: ArchiveResult,
    tracker: _Progress,
) -> FileRecord:
    # Read whole, then written: a file that changed while it was read is simply read again, and
    # only the last, hopefully consistent, reading goes into the archive.
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            os.lseek(fd, 0, os.SEEK_SET)
        data = _read_up_to(fd, before.st_size, result)
        after = _regular_stat(fd)
        stable = _same(before, after) and len(data) == before.st_size
        if stable or attempt == attempts:
            break
        before = after
    digest = hashlib.sha256()
    base_size: int | None = None
    if base is not None and len(data) >= base.size:
        digest.update(memoryview(data)[: base.size])
        if digest.hexdigest() == base.sha256:
            base_size = base.size
        else:
            digest = hashlib.sha256()
    content = data[base_size:] if base_size else data
    digest.update(content)
    stored, pack, offset = _put(writer, packer, path, content, before, appended=base_size is not None)
    tracker.advance(len(content))
    return _file_record(
        path, before, len(data), digest.hexdigest(), stored, not stable, pack=pack, offset=offset, base_size=base_size
    )


def _archive_large(
    writer: ArchiveWriter,
    packer: Packer,
    path: str,
    fd: int,
    before: os.stat_result,
    base: Base | None,
    result: ArchiveResult,
    tracker: _Progress,
) -> FileRecord:
    # Trade-off: an ArchiveWriter cannot take a member back, and holding a file of any size in memory
    # (or spooling it to disk) to make a re-read possible is not affordable. So a large file is
    # streamed straight into its member and read once; when its size or mtime moved during the read,
    # or it ended early, the record says changed_while_read=True: the archived bytes (whatever was
    # read, at most the size it had when opened) may be torn, and the manifest says so.
    digest = hashlib.sha256()
    base_size: int | None = None
    if base is not None:
        if _starts_with(fd, base, digest, result):
            base_size = base.size
        else:
            digest = hashlib.sha256()
            os.lseek(fd, 0, os.SEEK_SET)
    start = base_size or 0
    left = before.st_size - start
    pack: str | None = None
    offset: int | None = None
    if base_size is not None and left <= PACK_FILE_BYTES:
        tail = _read_up_to(fd, left, result)
        digest.update(tail)
        stored, pack, offset = _put(writer, packer, path, tail, before, appended=True)
        count = len(tail)
        tracker.advance(count)
    else:
        name = APPENDED_PREFIX + path if base_size is not None else path
        stored, count, pack, offset = _stream(writer, packer, name, fd, before, left, digest, result, tracker)
    after = _regular_stat(fd)
    changed = not _same(before, after) or count != left
    return _file_record(
        path, before, start + count, digest.hexdigest(), stored, changed, pack=pack, offset=offset, base_size=base_size
    )


def _starts_with(fd: int, base: Base, digest: hashlib._Hash, result: ArchiveResult) -> bool:
    """Whether the file's first bytes are the base version; reads them into ``digest``."""
    count = 0
    while count < base.size:
        chunk = _read_chunk(fd, min(CHUNK_BYTES, base.size - count), result)
        if not chunk:
            return False
        digest.update(chunk)
        count += len(chunk)
    return digest.hexdigest() == base.sha256


def _stream(
    writer: ArchiveWriter,
    packer: Packer,
    name: str,
    fd: int,
    before: os.stat_result,
    size: int,
    digest: hashlib._Hash,
    result: ArchiveResult,
    tracker: _Progress,
) -> tuple[bool, int, str | None, int | None]:
    """Streams the next ``size`` bytes of the file into a member of its own, or a pack of its own
    when a member cannot be so named; returns (stored, bytes archived, pack, offset in the pack)."""
    first = _read_chunk(fd, min(CHUNK_BYTES, size), result)
    stored = _keep_stored(name, first)
    count = 0
    pack: str | None = None
    offset: int | None = None
    out: IO[bytes] | BoundedWriter
    with ExitStack() as stack:
        if member_name_allowed(name):
            out = stack.enter_context(
                writer.open_member(name, compress=not stored, mtime=before.st_mtime_ns / 1e9, mode=_file_mode(before))
            )
        else:
            pack, offset, out = stack.enter_context(
                packer.own_pack(
                    name, size, stored=stored, mode=stat.S_IMODE(before.st_mode), mtime_ns=before.st_mtime_ns
                )
            )
        chunk = first
        while chunk:
            out.write(chunk)
            digest.update(chunk)
            count += len(chunk)
            tracker.advance(len(chunk))
            if count >= size:
                break  # a file that keeps growing (a busy log) is not chased
            try:
                chunk = _read_chunk(fd, min(CHUNK_BYTES, size - count), result)
            except _Unavailable as exc:
                # The member cannot be taken back; having no record, it is not part of the backup.
                if pack is not None:
                    result.abandoned.append(pack)
                raise _Unavailable(f"{exc} (after {count} bytes; the partial member has no record)") from None
    return stored, count, pack, offset


def _put(
    writer: ArchiveWriter,
    packer: Packer,
    path: str,
    content: bytes,
    before: os.stat_result,
    *,
    appended: bool,
) -> tuple[bool, str | None, int | None]:
    """Packs ``content``, or writes it into a member of its own when too large; returns whether it is
    stored, and (pack, offset) or (None, None)."""
    name = APPENDED_PREFIX + path if appended else path
    stored = _keep_stored(name, content)
    mode = stat.S_IMODE(before.st_mode)
    if len(content) <= PACK_FILE_BYTES:
        pack, offset = packer.add_file(name, content, stored=stored, mode=mode, mtime_ns=before.st_mtime_ns)
        return stored, pack, offset
    if not member_name_allowed(name):
        with packer.own_pack(name, len(content), stored=stored, mode=mode, mtime_ns=before.st_mtime_ns) as placed:
            own, offset, out = placed
            out.write(content)
        return stored, own, offset
    writer.write_member(name, content, compress=not stored, mtime=before.st_mtime_ns / 1e9, mode=_file_mode(before))
    return stored, None, None


def member_name_allowed(name: str) -> bool:
    """Whether a ZIP member can be named ``name`` (UTF-8, no backslash...)."""
    try:
        check_member_name(name)
    except ValueError:
        return False
    return True


def _keep_stored(name: str, first_bytes: bytes) -> bool:
    """Whether content is stored rather than deflated: its name or its first bytes say it is compressed already."""
    return is_precompressed_name(name) or probe_incompressible(first_bytes)


def _read_chunk(fd: int, size: int, result: ArchiveResult) -> bytes:
    try:
        data = os.read(fd, size) if size > 0 else b""
    except OSError as exc:
        raise _unavailable(exc) from None
    result.bytes_read += len(data)
    return data


def _read_up_to(fd: int, size: int, result: ArchiveResult) -> bytes:
    parts: list[bytes] = []
    count = 0
    while count < size:
        chunk = _read_chunk(fd, min(CHUNK_BYTES, size - count), result)
        if not chunk:
            break
        parts.append(chunk)
        count += len(chunk)
    return b"".join(parts)


def _regular_stat(fd: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "special file"
        raise _Unavailable(f"changed into a {kind}")
    return st


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def _file_mode(st: os.stat_result) -> int:
    return stat.S_IFREG | stat.S_IMODE(st.st_mode)


def _file_record(
    path: str,
    before: os.stat_result,
    size: int,
    sha256: str,
    stored: bool,
    changed: bool,
    *,
    pack: str | None = None,
    offset: int | None = None,
    base_size: int | None = None,
) -> FileRecord:
    # The mtime is the one from before the last reading: should the file have changed during it,
    # the next incremental backup sees a newer mtime and archives the file again.
    return FileRecord(
        path,
        "file",
        stat.S_IMODE(before.st_mode),
        before.st_mtime_ns,
        size,
        sha256,
        stored=stored,
        changed_while_read=changed,
        pack=pack,
        offset=offset,
        base_size=base_size,
    )


def _unavailable(exc: OSError) -> _Unavailable:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return _Unavailable("vanished")
    return _Unavailable(f"unreadable: {exc.strerror}")
