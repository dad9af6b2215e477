"""Writes single paths of a restore into its target: directories, links, and files from their member or pack.

Every path is reached through directory file descriptors opened with ``O_NOFOLLOW`` from the target
down, so nothing is ever created, replaced or removed through a symbolic link, whatever the archive or
the target already holds. Links and files are written under a temporary name and renamed into place;
a file only once its SHA-256 matches the manifest's.

restore.py decides what to write and in which order; this module writes one thing at a time. Its
readers (:func:`read_contents`, :func:`check_content`) serve files/verify.py too, which hashes the
same bytes without writing them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader
from backup_common.engine.files.chain_check import IntegrityError, UnsafeArchive, check_link_member
from backup_common.engine.files.dirfd import (
    DIRECTORY_FLAGS,
    FILE_FLAGS,
    NotADirectoryOnPath,
    ParentDirectories,
    open_below,
)
from backup_common.engine.files.model import FileRecord
from backup_common.engine.files.packs import PackReader

CHUNK_BYTES = 1 << 20
TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".partial"


@dataclass
class WriteProgress:
    """What the file writers, in several threads, have written so far."""

    limits: RestoreLimits
    bytes_written: int = 0
    files_written: int = 0
    # path -> (mode, mtime_ns) a file was written with: only those that differ are set again at the end
    attributes: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Told (bytes, files) written so far after each file, in the writer's thread.
    listener: Callable[[int, int], None] | None = None

    def wrote(self, item: FileRecord, count: int, *, settled: bool) -> None:
        with self.lock:
            self.bytes_written += count
            self.files_written += 1
            if settled:
                self.attributes[item.path] = (item.mode, item.mtime_ns)
            else:
                self.attributes.pop(item.path, None)
            done = (self.bytes_written, self.files_written)
        if self.listener is not None:
            self.listener(*done)


# --- reaching directories ----------------------------------------------------------------------------


def _open_directory(root: int, path: str, *, create: bool) -> int:
    """A new descriptor of the directory ``path`` (relative, "" for the target), reached without
    following any link; missing directories are created when ``create``, else FileNotFoundError."""
    try:
        return open_below(root, path.split("/") if path else [], create=create)
    except NotADirectoryOnPath as exc:
        raise UnsafeArchive(
            f"{exc.path!r} in the target is a symbolic link or not a directory: refusing to write or delete through it"
        ) from None


@contextmanager
def directory(root: int, path: str, *, create: bool) -> Iterator[int]:
    """The directory ``path`` below the target ``root``, as :func:`_open_directory` reaches it."""
    fd = _open_directory(root, path, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def parent_directories(root: int, *, create: bool) -> ParentDirectories:
    """The directory of each path in turn, below the target ``root``.

    Only for a run of files or links, which never replace a directory another of them lies in.
    """
    return ParentDirectories(partial(_open_directory, root, create=create))


# --- writing ---------------------------------------------------------------------------------------


def lstat_in(name: str, parent: int) -> os.stat_result | None:
    """What ``name`` in the directory ``parent`` is (a link itself, not what it leads to); None if nothing."""
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove(parent: int, name: str) -> bool:
    """Removes ``name``, whatever it is; whether there was anything to remove."""
    st = lstat_in(name, parent)
    if st is None:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return True
    try:
        shutil.rmtree(name, dir_fd=parent)  # never follows links: it works on descriptors too
    except PermissionError:
        # A directory its owner may not change (restored read-only, say) keeps what is in it.
        unlock(parent, name)
        shutil.rmtree(name, dir_fd=parent)
    return True


def unlock(parent: int, name: str) -> None:
    """Gives every directory of the tree ``name`` its owner's read, write and search permissions, so
    that everything in it can be removed; each is reached through descriptors, parents first."""
    pending = [[name]]
    while pending:
        components = pending.pop()
        try:
            holder = open_below(parent, components[:-1])
        except (FileNotFoundError, NotADirectoryOnPath):
            continue  # gone, or replaced, meanwhile
        try:
            fd = _open_for_owner(holder, components[-1])
        finally:
            os.close(holder)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as listing:
                pending.extend([*components, entry.name] for entry in listing if entry.is_dir(follow_symlinks=False))
        finally:
            os.close(fd)


def _open_for_owner(parent: int, name: str) -> int | None:
    """The directory ``name``, made readable, writable and searchable by its owner; None if it is not one."""
    st = lstat_in(name, parent)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    owner = stat.S_IRWXU
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent)
    except PermissionError:
        # Not even readable: changed by name, which lstat just found a directory (there is no
        # chmod that refuses to follow a link).
        os.chmod(name, stat.S_IMODE(st.st_mode) | owner, dir_fd=parent)
        return os.open(name, DIRECTORY_FLAGS, dir_fd=parent)
    if st.st_mode & owner != owner:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | owner)
    return fd


def make_directory(parent: int, name: str) -> None:
    """A directory ``name``, in place of anything else there."""
    st = lstat_in(name, parent)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        st = None
    if st is None:
        os.mkdir(name, 0o700, dir_fd=parent)


def set_mode_and_time(fd: int, item: FileRecord) -> None:
    os.fchmod(fd, item.mode)
    os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))


def write_member(
    reader: ArchiveReader,
    member: str,
    items: list[FileRecord],
    declared: int,
    parents: ParentDirectories,
    progress: WriteProgress,
    where: str,
) -> None:
    """Writes the files of one member: a file's own, or a pack's in the order they lie in it."""

    def write(item: FileRecord, chunks: Iterable[bytes], size: int) -> None:
        _write_file(*parents.of(item.path), item, chunks, size, progress, where)

    read_contents(reader, member, items, declared, where, write)


def read_contents(
    reader: ArchiveReader,
    member: str,
    items: list[FileRecord],
    declared: int,
    where: str,
    take: Callable[[FileRecord, Iterable[bytes], int], None],
) -> None:
    """Hands ``take`` the archived bytes of each file one member holds, as chunks, with the most
    it may hold: a file's own member (``declared`` bytes, as its archive says), or a pack's files in
    the order they lie in it, each its archived size. ``take`` consumes the chunks before it returns.

    The member is always read to its end, which authenticates an encrypted one: until then the
    bytes handed over may be forged, so an error raised here discredits all of them.
    """
    with reader.open_member(member) as stream:
        if items[0].pack is None:
            # ``take`` consumes the chunks, which end only at the member's end.
            take(items[0], iter(lambda: stream.read(CHUNK_BYTES), b""), declared)
            return
        contents = PackReader(stream, f"{where} pack {member!r}")
        for item in sorted(items, key=lambda item: item.offset or 0):
            assert item.offset is not None
            take(item, contents.content(item.offset, item.archived_size), item.archived_size)
        contents.finish()


def check_content(
    item: FileRecord,
    chunks: Iterable[bytes],
    declared: int,
    digest: hashlib._Hash,
    where: str,
    *,
    done: int = 0,
    limits: RestoreLimits,
    elsewhere: Callable[[], int] = lambda: 0,
    out: Callable[[bytes], None] | None = None,
) -> int:
    """Passes a file's archived ``chunks`` through ``digest`` (and ``out``), and returns how many bytes
    the file has in all, the ``done`` already in ``digest`` (a grown file's earlier version) included.

    Raises UnsafeArchive past ``done`` + ``declared`` bytes (what its archive says it holds) or when
    they and the ``elsewhere()`` bytes of other files exceed the limit of a restore, and
    IntegrityError when the SHA-256 is not the manifest's.
    """
    count = done
    declared += done
    for chunk in chunks:
        count += len(chunk)
        if count > declared:
            raise UnsafeArchive(
                f"{where}: member {item.member!r} holds more than the {declared} bytes its archive declares"
            )
        if elsewhere() + count > limits.max_total_bytes:
            raise UnsafeArchive(
                f"{where}: member {item.member!r} takes the restore over the limit of {limits.max_total_bytes} bytes"
            )
        digest.update(chunk)
        if out is not None:
            out(chunk)
    if digest.hexdigest() != item.sha256:
        raise IntegrityError(
            f"{where}: {item.path!r} does not match its manifest: SHA-256 {digest.hexdigest()}, expected {item.sha256}"
        )
    return count


def _copy_base(parent: int, name: str, item: FileRecord, out: int, digest: hashlib._Hash, where: str) -> int:
    """Copies the version a grown file extends, restored by an earlier backup of the chain, into ``out``."""
    assert item.base_size is not None
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise IntegrityError(
            f"{where}: {item.path!r} extends a version that is not in the target ({exc.strerror})"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != item.base_size:
            raise IntegrityError(
                f"{where}: {item.path!r} extends a version of {item.base_size} bytes; the target holds"
                f" {st.st_size} bytes there"
            )
        copied = 0
        while chunk := os.read(fd, CHUNK_BYTES):
            copied += len(chunk)
            if copied > item.base_size:
                raise IntegrityError(f"{where}: {item.path!r} grew while its earlier version was being copied")
            digest.update(chunk)
            _write_all(out, chunk)
    finally:
        os.close(fd)
    return copied


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def put_in_place(source_dir: int, source: str, parent: int, name: str) -> None:
    """Renames ``source`` over ``name``; a directory there goes first (a rename replaces anything else,
    a link included, without following it)."""
    st = lstat_in(name, parent)
    if st is not None and stat.S_ISDIR(st.st_mode):
        remove(parent, name)
    os.replace(source, name, src_dir_fd=source_dir, dst_dir_fd=parent)


def _put_in_place(parent: int, temp: str, name: str) -> None:
    put_in_place(parent, temp, parent, name)


def write_link(reader: ArchiveReader, parent: int, name: str, item: FileRecord, where: str) -> None:
    assert item.target is not None
    if item.pack is None:
        # Read again rather than trusting the check: the archive is read a second time.
        check_link_member(reader, item, where)
    temp = temp_name()
    os.symlink(item.target, temp, dir_fd=parent)
    _rename_in(parent, temp, name)


def _rename_in(parent: int, temp: str, name: str) -> None:
    """Puts ``temp`` in place of ``name``; removes it when that fails."""
    try:
        _put_in_place(parent, temp, name)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def write_hard_link(source_dir: int, source: str, parent: int, name: str, item: FileRecord, where: str) -> None:
    """Makes ``name`` another name of the file ``source``, in place of whatever is there."""
    st = lstat_in(source, source_dir)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise IntegrityError(
            f"{where}: {item.path!r} is a hard link to {item.target!r}, which was not restored as a file"
        )
    there = lstat_in(name, parent)
    if there is not None and (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
        return
    temp = temp_name()
    # linkat without AT_SYMLINK_FOLLOW: the name made is the file's, never a link's target.
    os.link(source, temp, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
    _rename_in(parent, temp, name)


def _write_file(
    parent: int,
    name: str,
    item: FileRecord,
    chunks: Iterable[bytes],
    declared: int,
    progress: WriteProgress,
    where: str,
) -> None:
    """Writes the content ``chunks`` (at most ``declared`` bytes, as its archive says) under a
    temporary name, and renames it into place once its SHA-256 matches the manifest's.

    A grown file's chunks follow the version already restored under its name, which is copied first.
    """
    temp = temp_name()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        done = 0
        if item.base_size is not None:
            done = _copy_base(parent, name, item, fd, digest, where)
        written = check_content(
            item,
            chunks,
            declared,
            digest,
            where,
            done=done,
            limits=progress.limits,
            elsewhere=lambda: progress.bytes_written,
            out=partial(_write_all, fd),
        )
        # Set now, on the open file: nothing done later in its directory changes them. A mode its
        # owner cannot read waits for the end: a later backup of the chain may append to the file.
        settled = bool(item.mode & stat.S_IRUSR)
        if settled:
            set_mode_and_time(fd, item)
        os.close(fd)
        fd = -1
        _put_in_place(parent, temp, name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise
    progress.wrote(item, written, settled=settled)
