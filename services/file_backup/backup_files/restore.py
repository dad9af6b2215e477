"""Rebuilds the trees of a files backup into a directory, replaying an incremental's chain from its base.

Two phases. First every link of the chain is checked without writing anything: member and manifest
names, the limits on entries, size and compression ratio, member types (no device, FIFO or socket),
symbolic link targets, and a dry run of the whole replay on an in-memory tree, which must reproduce
each backup's recorded ``state`` and never put anything below a link or a file. Only then is the
chain replayed into the target, each file streamed to a temporary name, checked against its SHA-256
and renamed into place; modes and times are set last, directories deepest first.

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
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import pyzipper

from backup_common.archive import ArchiveReader, MemberInfo
from backup_common.errors import DomainError

from .api import TREES, Kind, RestoreLimits, RestoreSummary

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
SMALL_MEMBER_BYTES = 1024  # below this, the compression ratio is not looked at
MAX_LINK_TARGET_BYTES = 4095  # PATH_MAX less the terminating NUL
TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".partial"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS: tuple[Kind, ...] = ("file", "dir", "symlink")
_SPECIAL_TYPES = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}
# The file type bits a member of each kind may carry; 0 stands for tools that record none.
_MEMBER_TYPES: dict[Kind, frozenset[int]] = {
    "file": frozenset({0, stat.S_IFREG}),
    "dir": frozenset({0, stat.S_IFDIR, stat.S_IFREG}),
    "symlink": frozenset({stat.S_IFLNK}),
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreError(DomainError):
    """A restore was refused or failed."""

    code = "restore_failed"


class UnsafeArchive(RestoreError):
    """A member or manifest path would escape the target, or the chain exceeds a restore limit."""

    code = "unsafe_archive"


class IntegrityError(RestoreError):
    """Restored content does not match its manifest, or the chain does not reproduce its recorded state."""

    code = "integrity_error"


class TargetNotEmpty(RestoreError):
    code = "target_not_empty"


@dataclass(frozen=True)
class ChainLink:
    """One backup of a chain; a chain lists its full base first, then each incremental in order."""

    backup_id: str
    archive: Path
    password: str | None
    manifest: dict[str, Any]


@dataclass(frozen=True)
class _Item:
    path: str
    kind: Kind
    mode: int
    mtime_ns: int
    sha256: str | None = None
    target: str | None = None

    @property
    def member(self) -> str:
        return self.path + "/" if self.kind == "dir" else self.path


@dataclass
class _Plan:
    """One link, checked."""

    link: ChainLink
    deleted: list[str]
    entries: list[_Item]  # parents before children
    sizes: dict[str, int]  # member name -> uncompressed size its archive declares
    state: list[_Item]


@dataclass
class _Progress:
    limits: RestoreLimits
    bytes_written: int = 0
    deleted: int = 0
    applied: list[str] = field(default_factory=list)


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
    plans = _check_chain(chain, limits)
    created = _open_target(target)
    progress = _Progress(limits)
    try:
        for plan in plans:
            _replay(created, plan, progress)
            progress.applied.append(plan.link.backup_id)
        final = plans[-1].state
        _verify(created, target, final, exact=target_was_empty)
        _set_attributes(created, final)
    finally:
        os.close(created)
    counts = {kind: sum(1 for item in final if item.kind == kind) for kind in _KINDS}
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
        return os.open(target, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RestoreError(f"the target {target} is not a directory (or became a symbolic link)") from None
        raise


# --- checking the chain, before anything is written ----------------------------------------------


def _check_chain(chain: list[ChainLink], limits: RestoreLimits) -> list[_Plan]:
    plans: list[_Plan] = []
    tree = _Tree()
    totals = {"bytes": 0, "entries": 0}
    for link in chain:
        plan = _check_link(link, limits, totals)
        where = f"backup {link.backup_id}"
        for path in plan.deleted:
            tree.delete(path, where)
        for item in plan.entries:
            tree.add(item, where)
        tree.compare(plan.state, where)
        plans.append(plan)
    return plans


def _check_link(link: ChainLink, limits: RestoreLimits, totals: dict[str, int]) -> _Plan:
    where = f"backup {link.backup_id}"
    manifest = link.manifest
    if not isinstance(manifest, dict):
        raise UnsafeArchive(f"{where}: the manifest is not an object")
    entries = [_parse_item(raw, f"{where} manifest entry", entry=True) for raw in _list(manifest, "entries", where)]
    state = [_parse_item(raw, f"{where} manifest state", entry=False) for raw in _list(manifest, "state", where)]
    deleted = [_check_path(path, f"{where} manifest deleted path") for path in _list(manifest, "deleted", where)]
    for items, what in ((entries, "entries"), (state, "state")):
        paths = [item.path for item in items]
        if len(set(paths)) != len(paths):
            raise UnsafeArchive(f"{where}: the manifest {what} list a path twice")
    if len(state) > limits.max_entries:
        raise UnsafeArchive(
            f"{where}: the backup holds {len(state)} paths, more than the limit of {limits.max_entries} entries"
        )

    with ArchiveReader(link.archive, password=link.password) as reader:
        infos = reader.infos()
        totals["entries"] += len(infos)
        if totals["entries"] > limits.max_entries:
            raise UnsafeArchive(
                f"{where}: the chain holds more than the limit of {limits.max_entries} entries"
                f" ({totals['entries']} members so far)"
            )
        types = _member_types(link.archive, infos, where)
        by_name: dict[str, MemberInfo] = {}
        for info in infos:
            if info.name in by_name:
                raise UnsafeArchive(f"{where}: member {info.name!r} appears twice in the archive")
            by_name[info.name] = info
            _check_member(info, types[info.name], where, limits)
            totals["bytes"] += info.size
            if totals["bytes"] > limits.max_total_bytes:
                raise UnsafeArchive(
                    f"{where}: member {info.name!r} takes the chain to {totals['bytes']} bytes, over the limit of"
                    f" {limits.max_total_bytes} bytes"
                )
        expected = {item.member: item for item in entries}
        for name in by_name:
            if name not in expected:
                raise UnsafeArchive(f"{where}: member {name!r} is not listed in the manifest entries")
        for name, item in expected.items():
            member = by_name.get(name)
            if member is None:
                raise UnsafeArchive(f"{where}: manifest entry {item.path!r} ({item.kind}) has no member {name!r}")
            _check_member_kind(member, types[name], item, where)
            if item.kind == "symlink":
                _check_link_member(reader, item, where)
    ordered = sorted(entries, key=lambda item: item.path.split("/"))
    return _Plan(link, deleted, ordered, {name: info.size for name, info in by_name.items()}, state)


def _list(manifest: dict[str, Any], key: str, where: str) -> list[Any]:
    value = manifest.get(key, [] if key == "deleted" else None)
    if not isinstance(value, list):
        raise UnsafeArchive(f"{where}: the manifest has no {key!r} list")
    return value


def _check_path(path: object, where: str) -> str:
    """``path`` when it is a safe relative path inside one of the trees; raises UnsafeArchive otherwise."""
    if not isinstance(path, str):
        raise UnsafeArchive(f"{where} {path!r} is not a string")
    rule: str | None = None
    parts = path.split("/")
    if not path:
        rule = "it is empty"
    elif "\x00" in path:
        rule = "it contains a NUL character"
    elif "\\" in path:
        rule = "it contains a backslash (paths use '/' only)"
    elif path.startswith("/"):
        rule = "it is absolute (paths must be relative to the target)"
    elif len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        rule = "it starts with a drive letter"
    elif ".." in parts:
        rule = "it has a '..' component (it would leave the target)"
    elif any(part in ("", ".") for part in parts):
        rule = "it has an empty or '.' component"
    elif parts[0] not in TREES:
        rule = f"it is not inside one of the trees {', '.join(TREES)}"
    if rule is not None:
        raise UnsafeArchive(f"{where} {path!r} is refused: {rule}")
    return path


def _parse_item(raw: object, where: str, *, entry: bool) -> _Item:
    if not isinstance(raw, dict):
        raise UnsafeArchive(f"{where} {raw!r} is not an object")
    path = _check_path(raw.get("path"), where)
    where = f"{where} {path!r}"
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise UnsafeArchive(f"{where} is refused: kind {kind!r} is none of {', '.join(_KINDS)}")
    if kind != "dir" and "/" not in path:
        raise UnsafeArchive(f"{where} is refused: a tree root can only be a directory")
    mode = raw.get("mode")
    mtime_ns = raw.get("mtime_ns")
    if not _is_int(mode) or not _is_int(mtime_ns):
        raise UnsafeArchive(f"{where} is refused: its mode and mtime_ns must be integers")
    if mode < 0:
        raise UnsafeArchive(f"{where} is refused: mode {mode} is negative")
    special = _SPECIAL_TYPES.get(stat.S_IFMT(mode))
    if special is not None:
        raise UnsafeArchive(f"{where} is refused: its mode says it is {special} (only files, directories and links)")
    if not 0 <= mode <= 0o7777:
        raise UnsafeArchive(f"{where} is refused: mode {mode:#o} is not made of permission bits alone")
    sha256 = raw.get("sha256")
    if kind == "file" and entry and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise UnsafeArchive(f"{where} is refused: a file needs the SHA-256 of its content (64 lowercase hex digits)")
    link_target = raw.get("target")
    if kind == "symlink":
        _check_link_target(path, link_target, where)
    return _Item(
        path,
        kind,
        mode,
        mtime_ns,
        sha256 if isinstance(sha256, str) else None,
        link_target if kind == "symlink" else None,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_link_target(path: str, link_target: object, where: str) -> None:
    """Refuses a link that could lead out of the target.

    A relative target is resolved from the link's own directory, which the restore guarantees is a
    real directory at the path's depth. Its ``..`` components must all come first: after a name, which
    may be another link, a ``..`` would climb from wherever that link leads, which no lexical check can
    bound. With that rule, and every link checked alike, no path through restored links leaves the target.
    """
    if not isinstance(link_target, str) or not link_target:
        raise UnsafeArchive(f"{where} is refused: a symbolic link needs a non-empty target")
    if "\x00" in link_target or len(os.fsencode(link_target)) > MAX_LINK_TARGET_BYTES:
        raise UnsafeArchive(f"{where} is refused: its link target is not a valid path")
    if link_target.startswith("/"):
        raise UnsafeArchive(f"{where} is refused: it links to the absolute path {link_target!r}, outside the target")
    parts = [part for part in link_target.split("/") if part not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise UnsafeArchive(
            f"{where} is refused: its link target {link_target!r} has a '..' after a name"
            " (it could climb out of the target through another link)"
        )
    depth = path.count("/")  # of the link's directory below the target
    if ups > depth:
        raise UnsafeArchive(f"{where} is refused: its link target {link_target!r} leads out of the target")


def _member_types(archive: Path, infos: list[MemberInfo], where: str) -> dict[str, int]:
    """The file type bits of each member (MemberInfo keeps the permission bits only)."""
    with pyzipper.AESZipFile(archive, "r") as raw:
        listing = raw.infolist()
    if [info.filename for info in listing] != [info.name for info in infos]:
        raise UnsafeArchive(f"{where}: the archive changed while it was being read")
    return {info.filename: stat.S_IFMT(info.external_attr >> 16) for info in listing}


def _check_member(info: MemberInfo, file_type: int, where: str, limits: RestoreLimits) -> None:
    name = info.name
    is_dir = name.endswith("/")
    _check_path(name[:-1] if is_dir else name, f"{where}: member")
    special = _SPECIAL_TYPES.get(file_type)
    if special is not None:
        raise UnsafeArchive(f"{where}: member {name!r} is refused: it is {special}")
    if info.size >= SMALL_MEMBER_BYTES:
        ratio = info.size / info.compressed_size if info.compressed_size > 0 else float("inf")
        if ratio > limits.max_compression_ratio:
            raise UnsafeArchive(
                f"{where}: member {name!r} is refused: it expands {info.size} bytes from {info.compressed_size}"
                f" (ratio {ratio:.0f}), over the compression ratio limit of {limits.max_compression_ratio}"
            )


def _check_member_kind(info: MemberInfo, file_type: int, item: _Item, where: str) -> None:
    if file_type not in _MEMBER_TYPES[item.kind]:
        raise UnsafeArchive(
            f"{where}: member {info.name!r} is refused: its mode ({file_type:#o}) is not that of a {item.kind}"
            " as the manifest says"
        )
    if item.kind == "dir" and info.size != 0:
        raise UnsafeArchive(f"{where}: member {info.name!r} is refused: a directory member carries {info.size} bytes")
    if item.kind == "symlink" and info.size > MAX_LINK_TARGET_BYTES:
        raise UnsafeArchive(f"{where}: member {info.name!r} is refused: a link target of {info.size} bytes")


def _read_link_member(reader: ArchiveReader, item: _Item, where: str) -> bytes:
    with reader.open_member(item.member) as stream:
        data = stream.read(MAX_LINK_TARGET_BYTES + 1)
        # Read to the end: an encrypted member is authenticated only there.
        rest = stream.read()
    if len(data) > MAX_LINK_TARGET_BYTES or rest:
        raise UnsafeArchive(f"{where}: member {item.member!r} is refused: its link target is too long")
    return data


def _check_link_member(reader: ArchiveReader, item: _Item, where: str) -> None:
    assert item.target is not None
    if _read_link_member(reader, item, where) != os.fsencode(item.target):
        raise UnsafeArchive(
            f"{where}: member {item.member!r} is refused: its link target differs from the manifest's {item.target!r}"
        )


class _Tree:
    """The restored tree as the replay will leave it, path by path, to check the chain beforehand."""

    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}
        self.children: dict[str, set[str]] = {}

    def delete(self, path: str, where: str) -> None:
        self._check_parents(path, where, "delete")
        if path in self.kinds:
            self._remove(path)

    def add(self, item: _Item, where: str) -> None:
        parents = self._check_parents(item.path, where, "write")
        for parent in parents:
            if parent not in self.kinds:
                self._put(parent, "dir")
        if self.kinds.get(item.path) == "dir" and item.kind != "dir":
            self._remove(item.path)
        self._put(item.path, item.kind)

    def compare(self, state: list[_Item], where: str) -> None:
        expected = {item.path: item.kind for item in state}
        actual = {path: kind for path, kind in self.kinds.items() if "/" in path or path in expected}
        if actual != expected:
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            changed = sorted(path for path in set(actual) & set(expected) if actual[path] != expected[path])
            raise IntegrityError(
                f"{where}: replaying the chain does not reproduce the backup's recorded state"
                f" (missing {missing[:5]}, unexpected {extra[:5]}, of another kind {changed[:5]});"
                " is the chain complete and in order?"
            )

    def _check_parents(self, path: str, where: str, action: str) -> list[str]:
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        for parent in parents:
            kind = self.kinds.get(parent)
            if kind == "symlink":
                raise UnsafeArchive(
                    f"{where}: {path!r} is refused: it would {action} through the symbolic link {parent!r}"
                )
            if kind == "file":
                raise UnsafeArchive(f"{where}: {path!r} is refused: its parent {parent!r} is a file")
        return parents

    def _put(self, path: str, kind: Kind) -> None:
        if path not in self.kinds:
            parent = path.rpartition("/")[0]
            self.children.setdefault(parent, set()).add(path)
        self.kinds[path] = kind

    def _remove(self, path: str) -> None:
        pending = [path]
        while pending:
            current = pending.pop()
            del self.kinds[current]
            pending.extend(self.children.pop(current, ()))
        self.children[path.rpartition("/")[0]].discard(path)


# --- writing ---------------------------------------------------------------------------------------


@contextmanager
def _directory(root: int, path: str, *, create: bool) -> Iterator[int]:
    """A descriptor of the directory ``path`` (relative, "" for the target), reached without following
    any link; missing directories are created when ``create``, else FileNotFoundError."""
    fd = os.dup(root)
    try:
        if path:
            for depth, name in enumerate(path.split("/"), start=1):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o700, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        below = "/".join(path.split("/")[:depth])
                        raise UnsafeArchive(
                            f"{below!r} in the target is a symbolic link or not a directory:"
                            " refusing to write or delete through it"
                        ) from None
                    raise
                os.close(fd)
                fd = child
        yield fd
    finally:
        os.close(fd)


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


def _replay(root: int, plan: _Plan, progress: _Progress) -> None:
    where = f"backup {plan.link.backup_id}"
    for path in plan.deleted:
        parent_path, _, name = path.rpartition("/")
        try:
            with _directory(root, parent_path, create=False) as parent:
                _remove(parent, name)
        except FileNotFoundError:
            pass  # gone with a deleted directory above it
        progress.deleted += 1
    with ArchiveReader(plan.link.archive, password=plan.link.password) as reader:
        # Keys are derived ahead in worker threads while earlier members are written.
        reader.prefetch(item.member for item in plan.entries if item.kind != "dir")
        for item in plan.entries:
            parent_path, _, name = item.path.rpartition("/")
            with _directory(root, parent_path, create=True) as parent:
                if item.kind == "dir":
                    st = _lstat(name, parent)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        os.unlink(name, dir_fd=parent)
                        st = None
                    if st is None:
                        os.mkdir(name, 0o700, dir_fd=parent)
                elif item.kind == "symlink":
                    _write_link(reader, parent, name, item, where)
                else:
                    _write_file(reader, parent, name, item, plan.sizes[item.member], progress, where)


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _put_in_place(parent: int, temp: str, name: str) -> None:
    """Renames ``temp`` over ``name``; a directory there goes first (a rename replaces anything else,
    a link included, without following it)."""
    st = _lstat(name, parent)
    if st is not None and stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    os.replace(temp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _write_link(reader: ArchiveReader, parent: int, name: str, item: _Item, where: str) -> None:
    assert item.target is not None
    # Read again rather than trusting the check: the archive is read a second time.
    _check_link_member(reader, item, where)
    temp = _temp_name()
    os.symlink(item.target, temp, dir_fd=parent)
    try:
        _put_in_place(parent, temp, name)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def _write_file(
    reader: ArchiveReader, parent: int, name: str, item: _Item, declared: int, progress: _Progress, where: str
) -> None:
    limits = progress.limits
    temp = _temp_name()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        written = 0
        with open(fd, "wb", buffering=0, closefd=False) as out, reader.open_member(item.member) as stream:
            while chunk := stream.read(CHUNK_BYTES):
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
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) or 0 :]
        if digest.hexdigest() != item.sha256:
            raise IntegrityError(
                f"{where}: {item.path!r} does not match its manifest: SHA-256 {digest.hexdigest()},"
                f" expected {item.sha256}"
            )
        os.close(fd)
        fd = -1
        _put_in_place(parent, temp, name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise
    progress.bytes_written += written


# --- finishing -------------------------------------------------------------------------------------


def _verify(root: int, target: Path, state: list[_Item], *, exact: bool) -> None:
    """The target holds the paths of ``state``, each of its kind; nothing else when it started empty.

    Tree roots are not part of a state: they are left out of the comparison unless the state has them.
    """
    expected = {item.path: item.kind for item in state}
    actual: dict[str, str] = {}
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


def _set_attributes(root: int, state: list[_Item]) -> None:
    """Modes and times, directories last and deepest first, so that nothing bumps a time already set."""
    for item in state:
        if item.kind == "dir":
            continue
        parent_path, _, name = item.path.rpartition("/")
        times = (item.mtime_ns, item.mtime_ns)
        with _directory(root, parent_path, create=False) as parent:
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
