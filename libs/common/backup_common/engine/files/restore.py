"""Rebuilds the trees of a files backup into a directory, replaying an incremental's chain from its base.

The chain is checked first without writing anything (chain_check.py). Then :func:`rebuild` replays it
into a directory, backup by backup: deletions, directories, symbolic links, then files, each streamed
to a temporary name from its own member or from its pack, checked against its SHA-256 and renamed
into place (target_writer.py); hard links are made last, as names of the files they share; the
directory is then compared with the last backup's recorded state, and modes and times are set last,
directories deepest first, the tree roots after them all. in_place.py builds each tree this way in a
staging directory and moves it into place only once it is complete, for a restore over the live trees
as for one into a directory.

A restore may take some paths only (a tree, or a path of the backup's state, with everything below
it): those alone are written and verified, with the directories above them. A hard link selected
without the path it shares its file with gets that file's content itself.

Every path is reached through directory file descriptors opened with ``O_NOFOLLOW`` from the target
down, so nothing is ever created, replaced or removed through a symbolic link, whatever the archive or
the target already holds. Symbolic links are restored as they were, wherever they point: as data,
never followed.

Synchronous and I/O-heavy: callers run it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader
from backup_common.engine.files.chain_check import (
    ChainLink,
    IntegrityError,
    Plan,
    RestoreError,
    TargetNotEmpty,
    UnsafeArchive,
    backup_trees,
    check_path,
    without_unlisted_roots,
)
from backup_common.engine.files.dirfd import FILE_FLAGS
from backup_common.engine.files.model import KINDS, TREES, FileRecord, FilesRestoreProgress, RestoreSummary
from backup_common.engine.files.target_writer import (
    WriteProgress,
    directory,
    lstat_in,
    make_directory,
    parent_directories,
    put_in_place,
    remove,
    set_mode_and_time,
    temp_name,
    write_hard_link,
    write_link,
    write_member,
)

__all__ = ["ChainLink", "IntegrityError", "RestoreError", "TargetNotEmpty", "UnsafeArchive", "unknown_paths"]

log = logging.getLogger(__name__)

RESTORE_THREADS = min(4, os.cpu_count() or 1)  # reading, inflating, hashing and writing release the GIL
REPORT_SECONDS = 0.25  # the least time between two reports of bytes written
# The mode of a tree root a restore created when its backup recorded none (manifests written before
# roots were): a web server must be able to read the tree, which the 0700 of new directories forbids.
DEFAULT_ROOT_MODE = 0o755


def rebuild(root: int, target: Path, plans: list[Plan], selection: Selection, written: WriteProgress) -> int:
    """Replays the checked chain's selected paths into the empty directory ``root`` (``target``, for
    messages), verifies them against the last backup's state (nothing else may be there) and sets
    their modes and times, the tree roots' last. Returns the deletions replayed."""
    last = plans[-1]
    trees = selection.trees(last.link.manifest)
    created = {tree for tree in trees if lstat_in(tree, root) is None}
    for tree in trees:
        # Even a tree without paths: the backup found its root.
        with directory(root, tree, create=True):
            pass
    deleted = 0
    for plan in plans:
        deleted += _replay(root, plan, written, selection)
    final = [item for item in last.state if selection.covers(item.path)]
    _link_hard_links(root, plans, final, selection, written)
    _verify(root, target, final, selection)
    _set_attributes(root, final, written.attributes)
    _set_root_attributes(root, trees, final, last.roots, created)
    return deleted


def summarize(
    target: str, plans: list[Plan], selection: Selection, written: WriteProgress, deleted: int
) -> RestoreSummary:
    final = [item for item in plans[-1].state if selection.covers(item.path)]
    counts = {kind: sum(1 for item in final if item.kind == kind) for kind in KINDS}
    return RestoreSummary(
        target=target,
        files=counts["file"],
        directories=counts["dir"],
        symlinks=counts["symlink"],
        deleted=deleted,
        bytes_written=written.bytes_written,
        backups_applied=[plan.link.backup_id for plan in plans],
        hard_links=counts["hardlink"],
    )


# --- selected paths ------------------------------------------------------------------------------


def unknown_paths(manifest: dict[str, Any], paths: Sequence[str]) -> list[str]:
    """The ``paths`` a restore of this backup cannot take: those that are not a relative path inside
    one of the trees (empty, absolute, with a '..' or an empty component...), and those naming
    neither a path of the backup's final state nor a tree the backup has."""
    state = manifest.get("state")
    known = {item.get("path") for item in state if isinstance(item, dict)} if isinstance(state, list) else set()
    known.update(backup_trees(manifest))
    unknown = []
    for path in paths:
        try:
            check_path(path, "path")
        except UnsafeArchive:
            unknown.append(path)
            continue
        if path not in known:
            unknown.append(path)
    return unknown


class Selection:
    """The paths a restore writes: all of them, or those equal to or below some prefixes.

    The directories above a prefix are written too (as directories only), so that it has somewhere
    to be; they are "above" the selection, not in it.
    """

    def __init__(self, prefixes: Sequence[str] | None = None) -> None:
        # The outermost prefixes only: one below another adds nothing.
        self.prefixes: list[str] | None = None
        if prefixes is not None:
            unique = set(prefixes)
            ordered = sorted(unique, key=lambda path: path.split("/"))
            self.prefixes = [path for path in ordered if not self._below(path, unique)]
        self._set = set(self.prefixes or ())
        self._above = {prefix[:index] for prefix in self._set for index, char in enumerate(prefix) if char == "/"}

    @staticmethod
    def _below(path: str, prefixes: set[str]) -> bool:
        """Whether a directory ``path`` lies in is one of ``prefixes``."""
        index = path.find("/")
        while index >= 0:
            if path[:index] in prefixes:
                return True
            index = path.find("/", index + 1)
        return False

    def selected(self, path: str) -> bool:
        """Whether ``path`` is a prefix or below one."""
        return self.prefixes is None or path in self._set or self._below(path, self._set)

    def above(self, path: str) -> bool:
        """Whether ``path`` is a directory some prefix lies in."""
        return path in self._above

    def covers(self, path: str) -> bool:
        return self.selected(path) or self.above(path)

    def trees(self, manifest: Mapping[str, Any]) -> list[str]:
        """The trees whose roots the restore makes: those the backup has, or those of the prefixes."""
        if self.prefixes is None:
            return backup_trees(manifest)
        wanted = {prefix.partition("/")[0] for prefix in self.prefixes}
        return [tree for tree in TREES if tree in wanted]


def select(manifest: dict[str, Any], paths: Sequence[str] | None) -> Selection:
    """The selection of ``paths`` (all paths for None); RestoreError when one names nothing."""
    if paths is None:
        return Selection()
    if not paths:
        raise RestoreError("nothing to restore: no paths were given")
    unknown = unknown_paths(manifest, paths)
    if unknown:
        raise RestoreError(f"the backup has no such paths: {', '.join(repr(path) for path in unknown[:10])}")
    return Selection(paths)


# --- progress ----------------------------------------------------------------------------------------


class ProgressReporter:
    """Passes a restore's progress on: each phase as it starts, and the bytes and files written at
    most every REPORT_SECONDS (they are counted by the writing threads, whichever reports)."""

    def __init__(self, callback: Callable[[FilesRestoreProgress], None] | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._progress = FilesRestoreProgress("checking", 0, 0, 0, 0)
        self._emit()

    def writing(self, plans: list[Plan], selection: Selection, limits: RestoreLimits) -> WriteProgress:
        """Enters the "writing" phase; the WriteProgress its writers report through."""
        files = [
            item for plan in plans for item in plan.entries if item.kind == "file" and selection.selected(item.path)
        ]
        with self._lock:
            self._progress = FilesRestoreProgress("writing", 0, sum(item.size for item in files), 0, len(files))
            self._emit()
        return WriteProgress(limits, listener=self._wrote)

    def phase(self, phase: str) -> None:
        with self._lock:
            self._progress = dataclasses.replace(self._progress, phase=phase)
            self._emit()

    def _wrote(self, bytes_done: int, files_done: int) -> None:
        with self._lock:
            if bytes_done < self._progress.bytes_done:
                return  # a later count was reported already
            self._progress = dataclasses.replace(self._progress, bytes_done=bytes_done, files_done=files_done)
            if time.monotonic() - self._last >= REPORT_SECONDS:
                self._emit()

    def _emit(self) -> None:
        self._last = time.monotonic()
        if self._callback is not None:
            self._callback(self._progress)


# --- replaying one backup ----------------------------------------------------------------------------


def _replay(root: int, plan: Plan, progress: WriteProgress, selection: Selection) -> int:
    """Deletions, then directories (parents first), symbolic links, and files; returns the deletions
    replayed. What was where a hard link goes is removed: the links are made once every backup is
    replayed (:func:`_link_hard_links`), when the files they name are complete.

    Files never lie below a link or a file of the same backup (the chain check saw to it), so they
    are written in any order: each pack and each file of its own is a unit of work, and units are
    shared among a few threads, each reading the archive through its own reader.

    Only selected paths are written, and directories above them. Whatever else a backup puts where
    such a directory is (a file, a link) is not written, but removes what was there, as writing it
    would have.
    """
    where = f"backup {plan.link.backup_id}"
    removed = [path for path in plan.deleted if selection.covers(path)]
    replaced = [item.path for item in plan.entries if item.kind != "dir" and selection.above(item.path)]
    linked = [item.path for item in plan.entries if item.kind == "hardlink" and selection.selected(item.path)]
    for path in [*removed, *replaced, *linked]:
        parent_path, _, name = path.rpartition("/")
        try:
            with directory(root, parent_path, create=False) as parent:
                remove(parent, name)
        except FileNotFoundError:
            pass  # gone with a deleted directory above it
    with parent_directories(root, create=True) as parents:
        for item in plan.entries:
            if item.kind == "dir" and selection.covers(item.path):
                make_directory(*parents.of(item.path))
    units: dict[str, list[FileRecord]] = {}
    for item in plan.entries:
        if item.kind == "file" and selection.selected(item.path):
            units.setdefault(item.member, []).append(item)
    # Largest first, so that the threads finish together.
    queue = sorted(units, key=lambda member: -plan.sizes[member])
    links = [item for item in plan.entries if item.kind == "symlink" and selection.selected(item.path)]
    workers = max(1, min(RESTORE_THREADS, len(queue)))
    if links:
        with _reader(plan) as reader, parent_directories(root, create=True) as parents:
            for item in links:
                write_link(reader, *parents.of(item.path), item, where)
    if not queue:
        return len(removed)
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
    return len(removed)


def _reader(plan: Plan) -> ArchiveReader:
    return ArchiveReader(plan.link.archive, password=plan.link.password)


# --- finishing -------------------------------------------------------------------------------------


def _link_hard_links(
    root: int, plans: list[Plan], state: list[FileRecord], selection: Selection, written: WriteProgress
) -> None:
    """Makes each selected hard link of ``state`` a name of the file it shares. Where that file is not
    selected, its content is restored (in a scratch directory) to the first of its links instead,
    and the others link to that one."""
    links = sorted(
        (item for item in state if item.kind == "hardlink" and selection.selected(item.path)),
        key=lambda item: item.path.split("/"),
    )
    if not links:
        return
    holders: dict[str, str] = {}  # the file's path -> the link holding its content instead
    for item in links:
        assert item.target is not None
        if not selection.selected(item.target):
            holders.setdefault(item.target, item.path)
    if holders:
        _restore_to_links(root, plans, holders, written)
    where = f"backup {plans[-1].link.backup_id}"
    with parent_directories(root, create=True) as parents:
        for item in links:
            assert item.target is not None
            source = holders.get(item.target, item.target)
            if source == item.path:
                continue
            source_parent, _, source_name = source.rpartition("/")
            with directory(root, source_parent, create=False) as source_fd:
                write_hard_link(source_fd, source_name, *parents.of(item.path), item, where)


def _restore_to_links(root: int, plans: list[Plan], holders: dict[str, str], written: WriteProgress) -> None:
    """Restores the files ``holders`` names into a scratch directory of ``root``, then moves each to
    the link that holds it."""
    scratch = temp_name()
    os.mkdir(scratch, 0o700, dir_fd=root)
    try:
        with directory(root, scratch, create=False) as fd:
            chosen = Selection(list(holders))
            for plan in plans:
                _replay(fd, plan, written, chosen)
            for path, holder in holders.items():
                path_parent, _, name = path.rpartition("/")
                holder_parent, _, holder_name = holder.rpartition("/")
                with (
                    directory(fd, path_parent, create=False) as source,
                    directory(root, holder_parent, create=True) as destination,
                ):
                    put_in_place(source, name, destination, holder_name)
    finally:
        remove(root, scratch)


def _verify(root: int, target: Path, state: list[FileRecord], selection: Selection) -> None:
    """The target holds the paths of ``state``, each of its kind (a hard link is a file), and nothing
    else (of the selected paths and the directories above them).

    Tree roots are not part of a state: they are left out of the comparison unless the state has them.
    """
    expected = {item.path: "file" if item.kind == "hardlink" else item.kind for item in state}
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
                    pending.append(child)
                elif entry.is_file(follow_symlinks=False):
                    actual[child] = "file"
                else:
                    actual[child] = "other"
    actual = without_unlisted_roots({path: kind for path, kind in actual.items() if selection.covers(path)}, expected)
    if actual != expected:
        differing = sorted(set(actual.items()) ^ set(expected.items()))
        raise IntegrityError(
            f"the restore into {target} does not match the recorded state of the backup: {differing[:10]}"
        )


def _set_attributes(root: int, state: list[FileRecord], written: dict[str, tuple[int, int]]) -> None:
    """Modes and times not set yet: links, files not written with the state's (by an earlier backup of
    the chain, say, or unreadable to their owner) and directories last, deepest first, so that nothing
    bumps a time already set. A hard link's are its file's, set again through it: its file may be one
    the restore did not select."""
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


def _set_root_attributes(
    root: int, trees: list[str], state: list[FileRecord], recorded: dict[str, FileRecord], created: set[str]
) -> None:
    """The mode and time of each tree root the state does not list (it never does, unless written by
    hand), as its backup found it; a root this restore created, of a backup that recorded none, gets
    DEFAULT_ROOT_MODE. After everything below them: writing there changes a directory's time."""
    listed = {item.path for item in state}
    for tree in trees:
        record = recorded.get(tree)
        if tree in listed or (record is None and tree not in created):
            continue
        with directory(root, tree, create=False) as fd:
            if record is None:
                os.fchmod(fd, DEFAULT_ROOT_MODE)
            else:
                set_mode_and_time(fd, record)
