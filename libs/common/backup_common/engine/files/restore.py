"""Rebuilds the trees of a files backup into a directory, replaying an incremental's chain from its base.

Two phases. First the whole chain is checked without writing anything (chain_check.py). Only then
is it replayed into the target, backup by backup: deletions, directories, links, then files, each
streamed to a temporary name from its own member or from its pack, checked against its SHA-256 and
renamed into place (target_writer.py); the target is then compared with the last backup's recorded
state, and modes and times are set last, directories deepest first.

Every path is reached through directory file descriptors opened with ``O_NOFOLLOW`` from the target
down, so nothing is ever created, replaced or removed through a symbolic link, whatever the archive or
the target already holds. Symbolic links are restored as links; a target may only lead back into the
restored trees (relative, with its ``..`` components first and not climbing above the target).

Synchronous and I/O-heavy: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader
from backup_common.engine.files.chain_check import (
    ChainLink,
    IntegrityError,
    Plan,
    RestoreError,
    TargetNotEmpty,
    UnsafeArchive,
    check_chain,
    without_unlisted_roots,
)
from backup_common.engine.files.dirfd import DIRECTORY_FLAGS, FILE_FLAGS
from backup_common.engine.files.model import KINDS, TREES, FileRecord, RestoreSummary
from backup_common.engine.files.target_writer import (
    WriteProgress,
    directory,
    make_directory,
    parent_directories,
    remove,
    set_mode_and_time,
    write_link,
    write_member,
)

__all__ = [
    "ChainLink",
    "IntegrityError",
    "RestoreError",
    "TargetNotEmpty",
    "UnsafeArchive",
    "restore_chain",
]

log = logging.getLogger(__name__)

RESTORE_THREADS = min(4, os.cpu_count() or 1)  # reading, inflating, hashing and writing release the GIL


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
    progress = WriteProgress(limits)
    deleted = 0
    applied: list[str] = []
    try:
        for plan in plans:
            _replay(created, plan, progress)
            deleted += len(plan.deleted)
            applied.append(plan.link.backup_id)
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
        deleted=deleted,
        bytes_written=progress.bytes_written,
        backups_applied=applied,
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


# --- replaying one backup ----------------------------------------------------------------------------


def _replay(root: int, plan: Plan, progress: WriteProgress) -> None:
    """Deletions, then directories (parents first), links, and files.

    Files never lie below a link or a file of the same backup (the chain check saw to it), so they
    are written in any order: each pack and each file of its own is a unit of work, and units are
    shared among a few threads, each reading the archive through its own reader.
    """
    where = f"backup {plan.link.backup_id}"
    for path in plan.deleted:
        parent_path, _, name = path.rpartition("/")
        try:
            with directory(root, parent_path, create=False) as parent:
                remove(parent, name)
        except FileNotFoundError:
            pass  # gone with a deleted directory above it
    with parent_directories(root, create=True) as parents:
        for item in plan.entries:
            if item.kind == "dir":
                make_directory(*parents.of(item.path))
    units: dict[str, list[FileRecord]] = {}
    for item in plan.entries:
        if item.kind == "file":
            units.setdefault(item.member, []).append(item)
    # Largest first, so that the threads finish together.
    queue = sorted(units, key=lambda member: -plan.sizes[member])
    links = [item for item in plan.entries if item.kind == "symlink"]
    workers = max(1, min(RESTORE_THREADS, len(queue)))
    if links:
        with _reader(plan) as reader, parent_directories(root, create=True) as parents:
            for item in links:
                write_link(reader, *parents.of(item.path), item, where)
    if not queue:
        return
    pending = iter(queue)
    take = threading.Lock()
    failed = threading.Event()

    def work() -> None:
        with _reader(plan) as reader, parent_directories(root, create=True) as parents:
            while not failed.is_set():
                with take:
                    member = next(pending, None)
                if member is None:
                    return
                try:
                    write_member(reader, member, units[member], plan.sizes[member], parents, progress, where)
                except BaseException:
                    failed.set()
                    raise

    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
    for future in futures:
        future.result()


def _reader(plan: Plan) -> ArchiveReader:
    return ArchiveReader(plan.link.archive, password=plan.link.password)


# --- finishing -------------------------------------------------------------------------------------


def _verify(root: int, target: Path, state: list[FileRecord], *, exact: bool) -> None:
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
        with directory(root, path, create=False) as fd, os.scandir(fd) as listing:
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
    actual = without_unlisted_roots(actual, expected)
    if actual != expected:
        differing = sorted(set(actual.items()) ^ set(expected.items()))
        raise IntegrityError(
            f"the restore into {target} does not match the recorded state of the backup: {differing[:10]}"
        )


def _set_attributes(root: int, state: list[FileRecord], written: dict[str, tuple[int, int]]) -> None:
    """Modes and times not set yet: links, files not written with the state's (by an earlier backup of
    the chain, say, or unreadable to their owner) and directories last, deepest first, so that nothing
    bumps a time already set."""
    others = sorted((item for item in state if item.kind != "dir"), key=lambda item: item.path.split("/"))
    with parent_directories(root, create=False) as parents:
        for item in others:
            if item.kind == "file" and written.get(item.path) == (item.mode, item.mtime_ns):
                continue
            parent, name = parents.of(item.path)
            if item.kind == "symlink":
                # A link's own mode means nothing on Linux and cannot be set.
                os.utime(name, ns=(item.mtime_ns, item.mtime_ns), dir_fd=parent, follow_symlinks=False)
                continue
            fd = os.open(name, FILE_FLAGS, dir_fd=parent)
            try:
                set_mode_and_time(fd, item)
            finally:
                os.close(fd)
    directories = sorted((item for item in state if item.kind == "dir"), key=lambda item: -item.path.count("/"))
    for item in directories:
        with directory(root, item.path, create=False) as fd:
            set_mode_and_time(fd, item)
