"""Rebuilds the trees of a files backup into a directory, replaying an incremental's chain from its base.

Two phases. First the whole chain is checked without writing anything (chain_check.py). Only then
is it replayed into the target, backup by backup: deletions, directories, links, then files, each
streamed to a temporary name from its own member or from its pack, checked against its SHA-256 and
renamed into place; modes and times are set last, directories deepest first.

Every path is reached through directory file descriptors opened with ``O_NOFOLLOW`` from the target
down, so nothing is ever created, replaced or removed through a symbolic link, whatever the archive or
the target already holds. Symbolic links are restored as links; a target may only lead back into the
restored trees (relative, with its ``..`` components first and not climbing above the target).

Synchronous and I/O-heavy: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from backup_common.engine.archive import ArchiveReader
from backup_common.engine.files.chain_check import (
    KINDS,
    ChainLink,
    IntegrityError,
    Item,
    Plan,
    RestoreError,
    TargetNotEmpty,
    UnsafeArchive,
    check_chain,
    check_link_member,
)
from backup_common.engine.files.dirfd import DIRECTORY_FLAGS, NotADirectoryOnPath, open_below
from backup_common.engine.files.model import TREES, RestoreLimits, RestoreSummary
from backup_common.engine.files.packs import PackReader

__all__ = [
    "ChainLink",
    "IntegrityError",
    "RestoreError",
    "TargetNotEmpty",
    "UnsafeArchive",
    "restore_chain",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
RESTORE_THREADS = min(4, os.cpu_count() or 1)  # reading, inflating, hashing and writing release the GIL
TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".partial"


@dataclass
class _Progress:
    """What the replay has done so far; file writers in several threads add to it."""

    limits: RestoreLimits
    bytes_written: int = 0
    deleted: int = 0
    applied: list[str] = field(default_factory=list)
    # path -> (mode, mtime_ns) a file was written with: only those that differ are set again at the end
    attributes: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrote(self, item: Item, count: int, *, settled: bool) -> None:
        with self.lock:
            self.bytes_written += count
            if settled:
                self.attributes[item.path] = (item.mode, item.mtime_ns)
            else:
                self.attributes.pop(item.path, None)


def restore_chain(
    chain: list[ChainLink], target: Path, limits: RestoreLimits, *, force: bool = False
) -> RestoreSummary:
    """Rebuilds the trees of the chain's last backup into ``target`` and says what it wrote.

    ``target`` is created when absent; an existing directory must be empty unless ``force``. Raises
    UnsafeArchive (nothing written) for a hostile or oversized chain, IntegrityError when content does
    not match its manifest, TargetNotEmpty, and ArchiveError (WrongPassword, CorruptArchive) from the
    archives. After an error raised while writing, the target holds a partial restore.
    """
    if not chain:
        raise RestoreError("nothing to restore: the chain is empty")
    target_was_empty = _check_target(target, force=force)
    plans = check_chain(chain, limits)
    created = _open_target(target)
    progress = _Progress(limits)
    try:
        for plan in plans:
            _replay(created, plan, progress)
            progress.applied.append(plan.link.backup_id)
        final = plans[-1].state
        _verify(created, target, final, exact=target_was_empty)
        _set_attributes(created, final, progress.attributes)
    finally:
        os.close(created)
    counts = {kind: sum(1 for item in final if item.kind == kind) for kind in KINDS}
    summary = RestoreSummary(
        target=str(target),
        files=counts["file"],
        directories=counts["dir"],
        symlinks=counts["symlink"],
        deleted=progress.deleted,
        bytes_written=progress.bytes_written,
        backups_applied=progress.applied,
    )
    log.info(
        "restored backup %s into %s (chain of %d): %d files, %d directories, %d links, %d bytes",
        chain[-1].backup_id,
        target,
        len(chain),
        summary.files,
        summary.directories,
        summary.symlinks,
        summary.bytes_written,
    )
    return summary


# --- the target ---------------------------------------------------------------------------------


def _check_target(target: Path, *, force: bool) -> bool:
    """Whether ``target`` is absent or empty; raises when it cannot be restored into."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return True
    if stat.S_ISLNK(st.st_mode):
        raise RestoreError(f"the target {target} is a symbolic link; give the directory it points to instead")
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreError(f"the target {target} exists and is not a directory")
    with os.scandir(target) as listing:
        empty = next(listing, None) is None
    if not empty and not force:
        raise TargetNotEmpty(
            f"the target {target} is not empty; restore into a new or empty directory, or force it"
            " (--force) to write over what it holds"
        )
    return empty


def _open_target(target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.mkdir(target, 0o700)
    try:
        return os.open(target, DIRECTORY_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RestoreError(f"the target {target} is not a directory (or became a symbolic link)") from None
        raise


# --- writing ---------------------------------------------------------------------------------------


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
def _directory(root: int, path: str, *, create: bool) -> Iterator[int]:
    fd = _open_directory(root, path, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


class _Parents:
    """The directory of each path in turn, as :func:`_directory` reaches it, keeping the last one open:
    paths come sorted, so the entries of one directory follow each other.

    Only for a run of files or links, which never replace a directory another of them lies in.
    """

    def __init__(self, root: int, *, create: bool) -> None:
        self._root = root
        self._create = create
        self._path: str | None = None
        self._fd = -1

    def __enter__(self) -> _Parents:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._close()

    def of(self, path: str) -> tuple[int, str]:
        """(descriptor of the path's directory, the path's name)."""
        parent, _, name = path.rpartition("/")
        if parent != self._path:
            self._close()
            self._fd = _open_directory(self._root, parent, create=self._create)
            self._path = parent
        return self._fd, name

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._path = None


def _lstat(name: str, parent: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(parent: int, name: str) -> bool:
    st = _lstat(name, parent)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)  # never follows links: it works on descriptors too
    else:
        os.unlink(name, dir_fd=parent)
    return True


def _replay(root: int, plan: Plan, progress: _Progress) -> None:
    """Deletions, then directories (parents first), links, and files.

    Files never lie below a link or a file of the same backup (the chain check saw to it), so they
    are written in any order: each pack and each file of its own is a unit of work, and units are
    shared among a few threads, each reading the archive through its own reader.
    """
    where = f"backup {plan.link.backup_id}"
    for path in plan.deleted:
        parent_path, _, name = path.rpartition("/")
        try:
            with _directory(root, parent_path, create=False) as parent:
                _remove(parent, name)
        except FileNotFoundError:
            pass  # gone with a deleted directory above it
        progress.deleted += 1
    with _Parents(root, create=True) as parents:
        for item in plan.entries:
            if item.kind == "dir":
                _make_directory(*parents.of(item.path))
    units: dict[str, list[Item]] = {}
    for item in plan.entries:
        if item.kind == "file":
            units.setdefault(item.member, []).append(item)
    # Largest first, so that the threads finish together.
    queue = sorted(units, key=lambda member: -plan.sizes[member])
    links = [item for item in plan.entries if item.kind == "symlink"]
    workers = max(1, min(RESTORE_THREADS, len(queue)))
    if links:
        with _reader(plan) as reader, _Parents(root, create=True) as parents:
            for item in links:
                _write_link(reader, *parents.of(item.path), item, where)
    if not queue:
        return
    pending = iter(queue)
    take = threading.Lock()
    failed = threading.Event()

    def work() -> None:
        with _reader(plan) as reader, _Parents(root, create=True) as parents:
            while not failed.is_set():
                with take:
                    member = next(pending, None)
                if member is None:
                    return
                try:
                    _write_member(reader, member, units[member], plan.sizes[member], parents, progress, where)
                except BaseException:
                    failed.set()
                    raise

    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
    for future in futures:
        future.result()


def _reader(plan: Plan) -> ArchiveReader:
    return ArchiveReader(plan.link.archive, password=plan.link.password)


def _make_directory(parent: int, name: str) -> None:
    st = _lstat(name, parent)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        st = None
    if st is None:
        os.mkdir(name, 0o700, dir_fd=parent)


def _write_member(
    reader: ArchiveReader,
    member: str,
    items: list[Item],
    declared: int,
    parents: _Parents,
    progress: _Progress,
    where: str,
) -> None:
    """Writes the files of one member: a file's own, or a pack's in the order they lie in it."""
    with reader.open_member(member) as stream:
        if items[0].pack is None:
            chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
            _write_file(*parents.of(items[0].path), items[0], chunks, declared, progress, where)
            return
        contents = PackReader(stream, f"{where} pack {member!r}")
        for item in sorted(items, key=lambda item: item.offset or 0):
            assert item.offset is not None
            chunks = contents.content(item.offset, item.archived_size)
            _write_file(*parents.of(item.path), item, chunks, item.archived_size, progress, where)
        contents.finish()


def _copy_base(parent: int, name: str, item: Item, out: int, digest: hashlib._Hash, where: str) -> int:
    """Copies the version a grown file extends, restored by an earlier backup of the chain, into ``out``."""
    assert item.base_size is not None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
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


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _put_in_place(parent: int, temp: str, name: str) -> None:
    """Renames ``temp`` over ``name``; a directory there goes first (a rename replaces anything else,
    a link included, without following it)."""
    st = _lstat(name, parent)
    if st is not None and stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    os.replace(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _write_link(reader: ArchiveReader, parent: int, name: str, item: Item, where: str) -> None:
    assert item.target is not None
    if item.pack is None:
        # Read again rather than trusting the check: the archive is read a second time.
        check_link_member(reader, item, where)
    temp = _temp_name()
    os.symlink(item.target, temp, dir_fd=parent)
    try:
        _put_in_place(parent, temp, name)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def _write_file(
    parent: int,
    name: str,
    item: Item,
    chunks: Iterable[bytes],
    declared: int,
    progress: _Progress,
    where: str,
) -> None:
    """Writes the content ``chunks`` (at most ``declared`` bytes, as its archive says) under a
    temporary name, and renames it into place once its SHA-256 matches the manifest's.

    A grown file's chunks follow the version already restored under its name, which is copied first.
    """
    limits = progress.limits
    temp = _temp_name()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        written = 0
        if item.base_size is not None:
            written = _copy_base(parent, name, item, fd, digest, where)
            declared += written
        for chunk in chunks:
            written += len(chunk)
            if written > declared:
                raise UnsafeArchive(
                    f"{where}: member {item.member!r} holds more than the {declared} bytes its archive declares"
                )
            if progress.bytes_written + written > limits.max_total_bytes:
                raise UnsafeArchive(
                    f"{where}: member {item.member!r} takes the restore over the limit of"
                    f" {limits.max_total_bytes} bytes"
                )
            digest.update(chunk)
            _write_all(fd, chunk)
        if digest.hexdigest() != item.sha256:
            raise IntegrityError(
                f"{where}: {item.path!r} does not match its manifest: SHA-256 {digest.hexdigest()},"
                f" expected {item.sha256}"
            )
        # Set now, on the open file: nothing done later in its directory changes them. A mode its
        # owner cannot read waits for the end: a later backup of the chain may append to the file.
        settled = bool(item.mode & stat.S_IRUSR)
        if settled:
            os.fchmod(fd, item.mode)
            os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))
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


# --- finishing -------------------------------------------------------------------------------------


def _verify(root: int, target: Path, state: list[Item], *, exact: bool) -> None:
    """The target holds the paths of ``state``, each of its kind; nothing else when it started empty.

    Tree roots are not part of a state: they are left out of the comparison unless the state has them.
    """
    expected = {item.path: item.kind for item in state}
    actual: dict[str, str] = {}
    # Iterative, each directory reached from the target: trees may be deeper than the recursion
    # limit, or than the descriptors a process may hold open.
    pending = [""]
    while pending:
        path = pending.pop()
        with _directory(root, path, create=False) as fd, os.scandir(fd) as listing:
            for entry in listing:
                child = f"{path}/{entry.name}" if path else entry.name
                if entry.is_symlink():
                    actual[child] = "symlink"
                elif entry.is_dir(follow_symlinks=False):
                    actual[child] = "dir"
                    if exact or child.split("/")[0] in TREES:
                        pending.append(child)
                elif entry.is_file(follow_symlinks=False):
                    actual[child] = "file"
                else:
                    actual[child] = "other"
    if not exact:
        actual = {path: kind for path, kind in actual.items() if path in expected}
    actual = {path: kind for path, kind in actual.items() if "/" in path or path in expected}
    if actual != expected:
        differing = sorted(set(actual.items()) ^ set(expected.items()))
        raise IntegrityError(
            f"the restore into {target} does not match the recorded state of the backup: {differing[:10]}"
        )


def _set_attributes(root: int, state: list[Item], written: dict[str, tuple[int, int]]) -> None:
    """Modes and times not set yet: links, files not written with the state's (by an earlier backup of
    the chain, say, or unreadable to their owner) and directories last, deepest first, so that nothing
    bumps a time already set."""
    others = sorted((item for item in state if item.kind != "dir"), key=lambda item: item.path.split("/"))
    with _Parents(root, create=False) as parents:
        for item in others:
            times = (item.mtime_ns, item.mtime_ns)
            if item.kind == "file" and written.get(item.path) == (item.mode, item.mtime_ns):
                continue
            parent, name = parents.of(item.path)
            if item.kind == "symlink":
                # A link's own mode means nothing on Linux and cannot be set.
                os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.fchmod(fd, item.mode)
                os.utime(fd, ns=times)
            finally:
                os.close(fd)
    directories = sorted((item for item in state if item.kind == "dir"), key=lambda item: -item.path.count("/"))
    for item in directories:
        with _directory(root, item.path, create=False) as fd:
            os.fchmod(fd, item.mode)
            os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))
