"""Restores the trees of a files backup over the live ones, or into a directory, each swapped in whole
once it is complete.

The whole chain is checked first, nothing written. Then each swap unit (a tree, or each path a
selective restore names) is rebuilt beside its live version, in a hidden staging directory of the
same parent (``.<name>.restore-<tag>``), by restore.py's :func:`~restore.rebuild`: every file written
under a temporary name and checked against its SHA-256, the staged paths verified against the
backup's recorded state, modes and times set, the tree root's included. Only when every unit is
staged are they swapped in, one after another: Linux's ``renameat2(RENAME_EXCHANGE)`` trades the
staged and the live version atomically, so the application sees the old tree or the new, never a
mix; the old one, now under the staging name, is then removed. Where the system has no exchange,
two renames do it, with the live path absent for an instant between them.

A live version that is a mount point (a container volume, typically) cannot be renamed. Its unit is
then staged inside it (``<mount>/.restore-<tag>``) and its entries are swapped one by one, each
atomically, but not the tree as a whole: a reader may see some entries old and others new while
they are swapped (see :func:`_swap_entries`). This is checked before anything is written.

A failure before the swaps (a damaged archive, content that does not match its checksum) leaves the
live trees exactly as they were, and the staging directories are removed. The staging names derive
from the caller's ``staging_tag``, so a retry removes what an attempt that never finished left.

Everything below a live tree root is reached through descriptors opened with ``O_NOFOLLOW``, and
renames act on names within them, so nothing is created, swapped or removed through a symbolic link.
The roots themselves are the operator's configuration: a root that is a link is resolved first.

:func:`restore_chain` restores into one directory (``backupctl files-restore``) the same way: its
trees are staged beside where they go and moved in only once every file checked out, so a restore
that finds damage half-way leaves the directory as it was.

Synchronous and I/O-heavy: callers run it in a worker thread.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.files.chain_check import (
    ChainLink,
    Plan,
    RestoreError,
    TargetNotEmpty,
    UnsafeArchive,
    backup_trees,
    check_chain,
)
from backup_common.engine.files.dirfd import DIRECTORY_FLAGS, open_below
from backup_common.engine.files.model import TREES, FilesRestoreProgress, RestoreSummary
from backup_common.engine.files.restore import (
    ProgressReporter,
    Selection,
    rebuild,
    select,
    summarize,
    unknown_paths,
)
from backup_common.engine.files.target_writer import WriteProgress, directory, lstat_in, remove, temp_name

__all__ = ["FilesRestoreProgress", "non_empty_trees", "restore_chain", "restore_trees", "unknown_paths"]

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NAME_MAX = 255
MOUNTINFO = Path("/proc/self/mountinfo")
# Where an entries swap puts the live entries the backup does not have, inside the staging directory
# (which otherwise holds only tree names).
_DISCARDED = "discarded"


def _load_renameat2() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    call: Callable[..., int] = function
    return call


_renameat2 = _load_renameat2()


def restore_trees(
    chain: list[ChainLink],
    roots: Mapping[str, Path],
    limits: RestoreLimits,
    *,
    staging_tag: str,
    paths: Sequence[str] | None = None,
    replace: bool = True,
    progress: Callable[[FilesRestoreProgress], None] | None = None,
) -> RestoreSummary:
    """Restores the trees of the chain's last backup (base first) into ``roots`` (tree -> its directory).

    With ``paths`` (tree-relative prefixes, see :func:`unknown_paths`) only those are restored, each
    swapped on its own; their siblings are left as they are. Trees the backup does not have, or that
    ``roots`` does not map, are left alone. With ``replace`` false, a tree root that exists and holds
    anything is refused (TargetNotEmpty) instead. ``staging_tag`` names the staging directories: the
    same for every attempt of one restore. ``progress`` is called from worker threads.

    Raises RestoreError (and its UnsafeArchive, IntegrityError, TargetNotEmpty; the file system's
    refusals too) or ArchiveError (WrongPassword, CorruptArchive); any raised before the swaps leaves
    the live trees as they were.
    """
    if not chain:
        raise RestoreError("nothing to restore: the chain is empty")
    _check_tag(staging_tag)
    report = ProgressReporter(progress)
    selection = select(chain[-1].manifest, paths)
    plans = check_chain(chain, limits)
    units = _plan_units(plans[-1], selection, roots, replace=replace)
    written = report.writing(plans, selection, limits)
    staged = [_Staged(unit, staging_tag) for unit in units]
    deleted = 0
    try:
        # Every parent is looked at before a staging directory changes any.
        for item in staged:
            with _staging_failure(item):
                item.open()
        for item in staged:
            with _staging_failure(item):
                deleted += item.build(plans, written)
        report.phase("swapping")
        for item in staged:
            _swap(item, staged)
    except BaseException:
        _close(staged, failed=True)
        raise
    _close(staged, failed=False)
    where = ", ".join(dict.fromkeys(str(unit.root) for unit in units)) or "(no tree)"
    summary = summarize(where, plans, selection, written, deleted)
    report.phase("done")
    log.info(
        "restored backup %s into %s (chain of %d, %s): %d files, %d directories, %d links, %d bytes",
        chain[-1].backup_id,
        where,
        len(chain),
        "every path" if selection.prefixes is None else f"paths {', '.join(selection.prefixes)}",
        summary.files,
        summary.directories,
        summary.symlinks,
        summary.bytes_written,
    )
    return summary


# The staging tag of restores into a directory: fixed, so that the next restore into the same directory
# removes what one that was killed left.
DIRECTORY_TAG = "files-restore"


def restore_chain(
    chain: list[ChainLink],
    target: Path,
    limits: RestoreLimits,
    *,
    force: bool = False,
    paths: Sequence[str] | None = None,
    progress: Callable[[FilesRestoreProgress], None] | None = None,
) -> RestoreSummary:
    """Rebuilds the trees of the chain's last backup into ``target`` (as ``<target>/<tree>``) and says
    what it wrote.

    ``target`` is created when absent; an existing directory must be empty unless ``force``, and then
    each tree the backup has replaces the one there (other entries of ``target`` are left alone). With
    ``paths`` (see :func:`unknown_paths`), only those are restored. Raises what :func:`restore_trees`
    raises, TargetNotEmpty too; whatever it raises, ``target`` is left as it was.
    """
    if not chain:
        raise RestoreError("nothing to restore: the chain is empty")
    existed = _check_target(target, force=force)
    try:
        summary = restore_trees(
            chain,
            {tree: target / tree for tree in TREES},
            limits,
            staging_tag=DIRECTORY_TAG,
            paths=paths,
            progress=progress,
        )
    except BaseException:
        if not existed:
            with suppress(OSError):
                target.rmdir()  # made for this restore, and empty again
        raise
    return dataclasses.replace(summary, target=str(target))


def _check_target(target: Path, *, force: bool) -> bool:
    """Whether ``target`` exists; raises when it cannot be restored into. What an earlier restore into
    it left (its staging directories) does not count: this one removes them."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise RestoreError(f"the target {target} is a symbolic link; give the directory it points to instead")
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreError(f"the target {target} exists and is not a directory")
    for tree in TREES:
        # Resolving a tree root that is a link, as for the live trees, would write where it leads.
        if (target / tree).is_symlink():
            raise UnsafeArchive(f"{tree!r} in the target is a symbolic link: refusing to write or delete through it")
    leftovers = {_staging_name(tree, DIRECTORY_TAG) for tree in TREES}
    with os.scandir(target) as listing:
        empty = all(entry.name in leftovers for entry in listing)
    if not empty and not force:
        raise TargetNotEmpty(
            f"the target {target} is not empty; restore into a new or empty directory, or force it"
            " (--force) to replace the trees it holds"
        )
    return True


@contextmanager
def _staging_failure(item: _Staged) -> Iterator[None]:
    """Says which tree could not be rebuilt beside the live one when the file system refuses."""
    try:
        yield
    except OSError as exc:
        raise RestoreError(
            f"could not rebuild {item.unit.live} beside it: {exc} (the live trees are unchanged)"
        ) from exc


def _swap(item: _Staged, staged: list[_Staged]) -> None:
    try:
        item.swap()
    except OSError as exc:
        done = [str(other.unit.live) for other in staged if other.swapped]
        state = f"already restored: {', '.join(done)}" if done else "the live trees are unchanged"
        raise RestoreError(f"could not swap the restored {item.unit.live} in: {exc.strerror} ({state})") from exc


def _close(staged: list[_Staged], *, failed: bool) -> None:
    """Removes every staging directory. One that cannot be removed fails a restore that succeeded
    otherwise (its retry removes it first), and is only logged after another error."""
    leftovers: list[str] = []
    for item in staged:
        try:
            item.close()
        except OSError as exc:
            log.warning("could not remove the staging directory of %s: %s", item.unit.live, exc)
            leftovers.append(f"{item.unit.live} ({exc.strerror})")
    if leftovers and not failed:
        raise RestoreError(
            f"the trees are restored, but the staging directories beside {', '.join(leftovers)} could not be removed"
        )


def _check_tag(tag: str) -> None:
    if not tag or "/" in tag or "\x00" in tag or tag in (".", "..") or len(tag) > 64:
        raise RestoreError(f"the staging tag {tag!r} is not a short file name")


# --- what is swapped ---------------------------------------------------------------------------------


@dataclass
class _Unit:
    """One thing swapped: ``top``, with the selected paths at or below it, in the tree living at ``root``."""

    top: str  # "<tree>" or "<tree>/<relative path>"
    prefixes: list[str]
    root: Path  # the live tree root, links resolved
    entries: bool = False  # the live top is a mount point: its entries are swapped, not itself

    @property
    def live(self) -> Path:
        """The live version of ``top``, for messages."""
        return self.root.joinpath(*self.top.split("/")[1:])


def _plan_units(last: Plan, selection: Selection, roots: Mapping[str, Path], *, replace: bool) -> list[_Unit]:
    """The swap units, once every live tree involved was looked at (nothing written)."""
    if selection.prefixes is None:
        have = backup_trees(last.link.manifest)
        prefixes = [tree for tree in have if tree in roots]
        if not prefixes:
            # A backup taken while none of the trees existed: it restores to nothing, and a tree the
            # backup does not have is left alone, as for any other backup.
            log.warning("the backup holds none of the trees %s: nothing to restore", ", ".join(roots) or "(none)")
        for tree in have:
            if tree not in roots:
                log.warning("the backup has the tree %s, but no directory was given for it: left out", tree)
    else:
        prefixes = selection.prefixes
        unmapped = sorted({prefix.partition("/")[0] for prefix in prefixes} - set(roots))
        if unmapped:
            raise RestoreError(f"no directory was given for the trees {', '.join(unmapped)}")
    resolved = {tree: Path(os.path.realpath(roots[tree])) for tree in {path.partition("/")[0] for path in prefixes}}
    for tree, root in resolved.items():
        _check_root(tree, root, replace=replace)
    tops = [(_live_top(prefix, resolved[prefix.partition("/")[0]]), prefix) for prefix in prefixes]
    units: list[_Unit] = []
    for top, prefix in sorted(tops, key=lambda pair: pair[0].count("/")):
        # Prefixes whose tops coincide or nest (below a directory the live tree lacks) share one.
        owner = next((unit for unit in units if top == unit.top or top.startswith(unit.top + "/")), None)
        if owner is not None:
            owner.prefixes.append(prefix)
            continue
        unit = _Unit(top, [prefix], resolved[top.partition("/")[0]])
        unit.entries = _is_mount_point(unit.live)
        units.append(unit)
    directories = {item.path for item in last.state if item.kind == "dir"}
    for unit in units:
        if unit.entries and "/" in unit.top and unit.top not in directories:
            raise RestoreError(f"{unit.live} is a mount point, where the backup has no directory to restore")
    return units


def non_empty_trees(directory: Path) -> list[str]:
    """The trees whose root below ``directory`` (``<directory>/<tree>``) exists and is not an empty
    directory: those a restore into it without ``replace`` refuses."""
    return [tree for tree in TREES if _holds_anything(directory / tree)]


def _holds_anything(root: Path) -> bool:
    try:
        with os.scandir(root) as listing:
            return next(listing, None) is not None
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def _check_root(tree: str, root: Path, *, replace: bool) -> None:
    if os.path.lexists(root) and not root.is_dir():
        raise RestoreError(f"the {tree} directory {root} exists and is not a directory")
    if not replace and _holds_anything(root):
        raise TargetNotEmpty(f"the {tree} directory {root} is not empty; restore into a new or empty directory")


def _live_top(prefix: str, root: Path) -> str:
    """What to swap for ``prefix``: itself, or the highest directory above it that the live tree
    lacks (or has as something else than a directory: a link, say)."""
    tree, _, relative = prefix.partition("/")
    if not os.path.lexists(root):
        return tree
    components = relative.split("/") if relative else []
    current = _open_in(root, [])
    try:
        for depth, name in enumerate(components[:-1], start=1):
            st = lstat_in(name, current)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return "/".join([tree, *components[:depth]])
            child = os.open(name, DIRECTORY_FLAGS, dir_fd=current)
            os.close(current)
            current = child
    finally:
        os.close(current)
    return prefix


def _open_in(root: Path, components: list[str]) -> int:
    """A descriptor of the directory ``components`` below a live root, reached without following links."""
    fd = os.open(root, DIRECTORY_FLAGS)
    try:
        return open_below(fd, components)
    finally:
        os.close(fd)


def _is_mount_point(path: Path) -> bool:
    """Whether ``path`` is where a file system is mounted, which rename refuses to move (EBUSY)."""
    try:
        st = os.lstat(path)
        parent = os.stat(path.parent)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if st.st_dev != parent.st_dev or st.st_ino == parent.st_ino:
        return True
    # A bind mount of a directory of the same file system has its parent's st_dev.
    return os.fspath(path) in _mount_points()


def _mount_points() -> set[str]:
    try:
        lines = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return set()
    # The fifth field, with space, tab, newline and backslash written as octal escapes.
    return {_unescape(line.split(" ")[4]) for line in lines if line.count(" ") >= 4}


def _unescape(text: str) -> str:
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


# --- staging and swapping ------------------------------------------------------------------------------


@dataclass
class _Staged:
    """A unit's staging directory, from its creation to its removal."""

    unit: _Unit
    tag: str
    parent: int = -1  # the directory holding the staging directory: the live top's parent, or the top
    staging: str = ""
    present: bool = False  # the staging directory exists
    # The times of a directory of the tree that holds the staging directory: put back once it is
    # removed, that directory being none of the selected paths.
    parent_times: tuple[int, int] | None = None
    staged_top: os.stat_result | None = None  # once complete
    swapped: bool = False

    def open(self) -> None:
        unit = self.unit
        relative = unit.top.split("/")[1:]
        if unit.entries:
            self.parent = _open_in(unit.root, relative)
            self.staging = f".restore-{self.tag}"
            return
        if relative:
            self.parent = _open_in(unit.root, relative[:-1])
            st = os.fstat(self.parent)
            self.parent_times = (st.st_atime_ns, st.st_mtime_ns)
        else:
            unit.root.parent.mkdir(parents=True, exist_ok=True)
            # The root's parent is the operator's, reached as configured.
            self.parent = os.open(unit.root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.staging = _staging_name(unit.top.rpartition("/")[2], self.tag)

    def build(self, plans: list[Plan], written: WriteProgress) -> int:
        """Rebuilds the unit's paths in its staging directory; returns the deletions replayed."""
        unit = self.unit
        remove(self.parent, self.staging)  # what an earlier attempt left
        os.mkdir(self.staging, 0o700, dir_fd=self.parent)
        self.present = True
        where = (unit.live if unit.entries else unit.live.parent) / self.staging
        with directory(self.parent, self.staging, create=False) as staging:
            deleted = rebuild(staging, where, plans, Selection(unit.prefixes), written)
            self.staged_top = lstat_in(unit.top, staging)
        if self.staged_top is None:
            raise RestoreError(f"the restore of {unit.live} staged nothing to put in its place")
        return deleted

    def swap(self) -> None:
        unit = self.unit
        top_parent, _, name = unit.top.rpartition("/")
        with (
            directory(self.parent, self.staging, create=False) as staging,
            directory(staging, top_parent, create=False) as staged_parent,
        ):
            if unit.entries:
                with directory(staged_parent, name, create=False) as staged_top:
                    _swap_entries(staged_top, self.parent, staging, self.staging)
            else:
                _swap_one(staged_parent, name, self.parent, name)
        self.swapped = True
        log.info("swapped the restored %s in", unit.live)

    def close(self) -> None:
        """Removes the staging directory (with the old version, once swapped) and closes the parent."""
        if self.parent < 0:
            return
        try:
            if self.present:
                remove(self.parent, self.staging)
                self.present = False
            if self.swapped and self.staged_top is not None:
                self._settle_top(self.staged_top)
            if self.parent_times is not None:
                os.utime(self.parent, ns=self.parent_times)
        finally:
            os.close(self.parent)
            self.parent = -1

    def _settle_top(self, staged: os.stat_result) -> None:
        """Gives the swapped-in top the mode and time it was staged with again where they changed:
        an entries swap renames and removes in it, and a file system may give a directory moved to
        another parent a new time."""
        if self.unit.entries:
            fd = os.dup(self.parent)
        elif stat.S_ISDIR(staged.st_mode):
            fd = os.open(self.unit.top.rpartition("/")[2], DIRECTORY_FLAGS, dir_fd=self.parent)
        else:
            return  # renaming a file or a link changes nothing of its own
        try:
            live = os.fstat(fd)
            if stat.S_IMODE(live.st_mode) != stat.S_IMODE(staged.st_mode):
                os.fchmod(fd, stat.S_IMODE(staged.st_mode))
            if live.st_mtime_ns != staged.st_mtime_ns:
                os.utime(fd, ns=(staged.st_atime_ns, staged.st_mtime_ns))
        finally:
            os.close(fd)


def _staging_name(name: str, tag: str) -> str:
    staging = f".{name}.restore-{tag}"
    if len(os.fsencode(staging)) > NAME_MAX:
        # A long name: its digest keeps the staging name deterministic and within the limit.
        staging = f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}.restore-{tag}"
    return staging


def _swap_one(staged_dir: int, staged: str, live_dir: int, live: str) -> None:
    """Puts the staged version in place of the live one, which ends under the staged name."""
    if lstat_in(live, live_dir) is not None:
        exchange(staged_dir, staged, live_dir, live)
    else:
        move_in(staged_dir, staged, live_dir, live)


def _swap_entries(staged_top: int, live_top: int, staging: int, staging_name: str) -> None:
    """Swaps the entries of a live directory that cannot itself be renamed (a mount point) for those
    staged, each atomically; the live entries the backup does not have are moved into the staging
    directory. The directory's own mode and time are set once the staging directory is gone."""
    staged = set(os.listdir(staged_top))
    for name in sorted(staged):
        _swap_one(staged_top, name, live_top, name)
    os.mkdir(_DISCARDED, 0o700, dir_fd=staging)
    with directory(staging, _DISCARDED, create=False) as discarded:
        for name in os.listdir(live_top):
            if name not in staged and name != staging_name:
                os.rename(name, name, src_dir_fd=live_top, dst_dir_fd=discarded)


# --- renames -----------------------------------------------------------------------------------------


def _rename2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> bool:
    """renameat2; False when the system or the file system does not have it (or the flag)."""
    if _renameat2 is None:
        return False
    if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(error, os.strerror(error), src, None, dst)


def exchange(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Trades ``src`` and ``dst`` (both present) atomically, or by two renames where the system cannot."""
    if _rename2(src_dir, src, dst_dir, dst, RENAME_EXCHANGE):
        return
    # No exchange: the live one aside, beside the staged one, then the staged one in its place.
    aside = temp_name()
    os.rename(dst, aside, src_dir_fd=dst_dir, dst_dir_fd=src_dir)
    try:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    except BaseException:
        os.rename(aside, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        raise
    os.rename(aside, src, src_dir_fd=src_dir, dst_dir_fd=src_dir)


def move_in(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Renames ``src`` to ``dst``, which must not exist (FileExistsError if something appeared there)."""
    if _rename2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE):
        return
    if lstat_in(dst, dst_dir) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
