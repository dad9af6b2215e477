"""Checks a files backup chain before a restore writes anything.

Every link of the chain is checked: the archive's size and SHA-256 against its manifest, member and
manifest names, the limits on entries, size and compression ratio, member types (no device, FIFO or
socket), symbolic link targets, where each packed file sits in its pack, and a dry run of the whole
replay on an in-memory tree, which must reproduce each backup's recorded ``state``, never put
anything below a link or a file, and leave every hard link naming a file of its tree.

A symbolic link's target is data, restored as it was (absolute, or climbing out of the trees): the
restore never follows a link, so where it points cannot make it write anywhere else.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import pyzipper

from backup_common.domain.documents import RestoreLimits
from backup_common.domain.errors import DomainError
from backup_common.engine.archive import ArchiveReader, MemberInfo, check_member_name, sha256_file
from backup_common.engine.files.model import APPENDED_PREFIX, KINDS, TREES, FileRecord, Kind
from backup_common.engine.files.packs import PACK_NAME

SMALL_MEMBER_BYTES = 1024  # below this, the compression ratio is not looked at
MAX_LINK_TARGET_BYTES = 4095  # PATH_MAX less the terminating NUL

_SHA256 = re.compile(r"[0-9a-f]{64}")
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


@dataclass
class Plan:
    """One link, checked."""

    link: ChainLink
    deleted: list[str]
    entries: list[FileRecord]  # parents before children
    sizes: dict[str, int]  # member name -> uncompressed size its archive declares
    state: list[FileRecord]
    roots: dict[str, FileRecord] = field(default_factory=dict)  # tree -> its root's mode and time


def check_chain(chain: list[ChainLink], limits: RestoreLimits) -> list[Plan]:
    """The plan of each link, once the whole chain passed every check; raises UnsafeArchive or
    IntegrityError otherwise, and ArchiveError when an archive cannot be read."""
    plans: list[Plan] = []
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
        tree.check_hard_links(plan.state, where)
        plans.append(plan)
    return plans


def _check_link(link: ChainLink, limits: RestoreLimits, totals: dict[str, int]) -> Plan:
    where = f"backup {link.backup_id}"
    manifest = link.manifest
    if not isinstance(manifest, dict):
        raise UnsafeArchive(f"{where}: the manifest is not an object")
    entries = [_parse_record(raw, f"{where} manifest entry", entry=True) for raw in _list(manifest, "entries", where)]
    state = [_parse_record(raw, f"{where} manifest state", entry=False) for raw in _list(manifest, "state", where)]
    deleted = [check_path(path, f"{where} manifest deleted path") for path in _list(manifest, "deleted", where)]
    roots = _parse_roots(manifest.get("roots", {}), where)
    for items, what in ((entries, "entries"), (state, "state")):
        paths = [item.path for item in items]
        if len(set(paths)) != len(paths):
            raise UnsafeArchive(f"{where}: the manifest {what} list a path twice")
    if len(state) > limits.max_entries:
        raise UnsafeArchive(
            f"{where}: the backup holds {len(state)} paths, more than the limit of {limits.max_entries} entries"
        )

    _check_archive_digest(link, where)
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
        abandoned = _abandoned_members(manifest)
        for name in by_name:
            if name not in expected and name not in abandoned:
                raise UnsafeArchive(f"{where}: member {name!r} is not listed in the manifest entries")
        for name, item in expected.items():
            member = by_name.get(name)
            if member is None:
                raise UnsafeArchive(f"{where}: manifest entry {item.path!r} ({item.kind}) has no member {name!r}")
            if item.pack is not None:
                _check_pack_member(member, types[name], where)
                continue
            _check_member_kind(member, types[name], item, where)
            if item.kind == "symlink":
                check_link_member(reader, item, where)
    sizes = {name: info.size for name, info in by_name.items()}
    _check_spans(entries, sizes, where)
    ordered = sorted(entries, key=lambda item: item.path.split("/"))
    return Plan(link, deleted, ordered, sizes, state, roots)


def _parse_roots(raw: object, where: str) -> dict[str, FileRecord]:
    """The manifest's ``roots``: tree name -> {"mode", "mtime_ns"}, checked as a state's directory is."""
    if not isinstance(raw, dict):
        raise UnsafeArchive(f"{where}: the manifest roots are not an object")
    roots: dict[str, FileRecord] = {}
    for tree, attributes in raw.items():
        if tree not in TREES or not isinstance(attributes, dict):
            raise UnsafeArchive(f"{where}: manifest root {tree!r} is refused: not a tree with its mode and time")
        record = {"mode": attributes.get("mode"), "mtime_ns": attributes.get("mtime_ns")}
        roots[tree] = _parse_record({**record, "path": tree, "kind": "dir"}, f"{where} manifest root", entry=False)
    return roots


def backup_trees(manifest: Mapping[str, Any]) -> list[str]:
    """The trees a backup has, in TREES order: those its state has paths in, and those it found (its
    ``roots``; a manifest written before roots were recorded has its configured ``trees`` instead).

    A tree configured but absent when the backup ran is not one of them: a restore leaves it alone.
    """
    found = manifest.get("roots")
    if not isinstance(found, dict):
        found = manifest.get("trees")
    names = set(found) if isinstance(found, dict) else set()
    state = manifest.get("state")
    for item in state if isinstance(state, list) else []:
        path = item.get("path") if isinstance(item, dict) else None
        if isinstance(path, str):
            names.add(path.partition("/")[0])
    return [tree for tree in TREES if tree in names]


def _check_archive_digest(link: ChainLink, where: str) -> None:
    """The archive is the one its manifest describes (size, then SHA-256), when the manifest says;
    anything else is damage, or an archive replaced since the backup."""
    size, expected = link.manifest.get("size_bytes"), link.manifest.get("sha256")
    if isinstance(size, int) and (actual_size := link.archive.stat().st_size) != size:
        raise IntegrityError(
            f"{where}: the archive holds {actual_size} bytes, the manifest says {size}: it is damaged or was replaced"
        )
    if isinstance(expected, str) and (actual := sha256_file(link.archive)) != expected:
        raise IntegrityError(
            f"{where}: the archive's SHA-256 is {actual}, the manifest says {expected}: it is damaged or was replaced"
        )


def _abandoned_members(manifest: dict[str, Any]) -> set[str]:
    """Members left behind by files the backup skipped: a file that failed while it was streamed
    leaves the bytes it had read in a member of its own, or a pack of its own (a ZIP archive cannot
    take one back), but no entry. They are never restored."""
    skipped = manifest.get("skipped")
    paths = [item.get("path") for item in skipped if isinstance(item, dict)] if isinstance(skipped, list) else []
    members = {name for path in paths if isinstance(path, str) for name in (path, APPENDED_PREFIX + path)}
    packs = manifest.get("abandoned")
    if isinstance(packs, list):
        members.update(name for name in packs if isinstance(name, str) and PACK_NAME.fullmatch(name))
    return members


def _list(manifest: dict[str, Any], key: str, where: str) -> list[Any]:
    value = manifest.get(key, [] if key == "deleted" else None)
    if not isinstance(value, list):
        raise UnsafeArchive(f"{where}: the manifest has no {key!r} list")
    return value


def check_path(path: object, where: str) -> str:
    """``path`` when it is a safe relative path inside one of the trees; raises UnsafeArchive otherwise."""
    if not isinstance(path, str):
        raise UnsafeArchive(f"{where} {path!r} is not a string")
    rule: str | None = None
    parts = path.split("/")
    if not path:
        rule = "it is empty"
    elif "\x00" in path:
        rule = "it contains a NUL character"
    elif not _is_file_name(path):
        rule = "it is not a file name (text, or undecodable bytes as lone surrogates)"
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


def _is_file_name(text: str) -> bool:
    """Whether ``text`` turns back into bytes, as a name the os module gave does."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def _parse_record(raw: object, where: str, *, entry: bool) -> FileRecord:
    if not isinstance(raw, dict):
        raise UnsafeArchive(f"{where} {raw!r} is not an object")
    path = check_path(raw.get("path"), where)
    where = f"{where} {path!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise UnsafeArchive(f"{where} is refused: kind {kind!r} is none of {', '.join(KINDS)}")
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
        _check_link_target(link_target, where)
    elif kind == "hardlink":
        _check_hard_link(path, link_target, where)
    size = raw.get("size", 0)
    if not _is_int(size) or size < 0:
        raise UnsafeArchive(f"{where} is refused: its size must be a non-negative integer")
    pack, offset = _parse_placement(raw, kind, where) if entry else (None, None)
    base_size = _parse_base_size(raw, kind, size, where) if entry else None
    return FileRecord(
        path,
        kind,
        mode,
        mtime_ns,
        size,
        sha256 if isinstance(sha256, str) else None,
        target=link_target if kind in ("symlink", "hardlink") else None,
        # Not checked: nothing a restore does depends on them.
        stored=raw.get("stored") is True,
        changed_while_read=raw.get("changed_while_read") is True,
        pack=pack,
        offset=offset,
        base_size=base_size,
    )


def _parse_base_size(raw: dict[str, Any], kind: Kind, size: int, where: str) -> int | None:
    base_size = raw.get("base_size")
    if base_size is None:
        return None
    if kind != "file" or not _is_int(base_size) or not 0 < base_size <= size:
        raise UnsafeArchive(
            f"{where} is refused: base_size {base_size!r} is not the size of an earlier version of this file"
        )
    return base_size


def _parse_placement(raw: dict[str, Any], kind: Kind, where: str) -> tuple[str | None, int | None]:
    """The pack holding an entry, and where a packed file's content starts in it."""
    pack = raw.get("pack")
    offset = raw.get("offset")
    if kind == "hardlink" and pack is None:
        raise UnsafeArchive(f"{where} is refused: a hard link travels in a pack")
    if pack is None:
        if offset is not None:
            raise UnsafeArchive(f"{where} is refused: it has an offset but no pack")
        return None, None
    if not isinstance(pack, str) or not PACK_NAME.fullmatch(pack):
        raise UnsafeArchive(f"{where} is refused: {pack!r} is not the name of a pack")
    if kind == "file":
        if not _is_int(offset) or offset < 0:
            raise UnsafeArchive(f"{where} is refused: a packed file needs the offset of its content in {pack!r}")
    elif offset is not None:
        raise UnsafeArchive(f"{where} is refused: only a file's content has an offset in a pack")
    return pack, offset


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_link_target(link_target: object, where: str) -> None:
    """Refuses what no symbolic link can hold; where it leads is the link's own business."""
    if not isinstance(link_target, str) or not link_target:
        raise UnsafeArchive(f"{where} is refused: a symbolic link needs a non-empty target")
    if "\x00" in link_target or not _is_file_name(link_target) or len(os.fsencode(link_target)) > MAX_LINK_TARGET_BYTES:
        raise UnsafeArchive(f"{where} is refused: its link target is not a valid path")


def _check_hard_link(path: str, link_target: object, where: str) -> None:
    """A hard link names another path of its own tree: the file it is a name of."""
    check_path(link_target, f"{where}: its hard link target")
    assert isinstance(link_target, str)
    if link_target == path or link_target.partition("/")[0] != path.partition("/")[0]:
        raise UnsafeArchive(f"{where} is refused: a hard link names another path of its own tree")


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
    if not PACK_NAME.fullmatch(name):
        path = name[:-1] if is_dir else name.removeprefix(APPENDED_PREFIX)
        check_path(path, f"{where}: member")
        try:
            # Stricter than a path: a name ZIP readers may take apart (a backslash...) travels in a pack.
            check_member_name(name)
        except ValueError as exc:
            raise UnsafeArchive(f"{where}: member {name!r} is refused: {exc}") from None
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


def _check_pack_member(info: MemberInfo, file_type: int, where: str) -> None:
    if file_type not in _MEMBER_TYPES["file"]:
        raise UnsafeArchive(f"{where}: pack {info.name!r} is refused: its mode ({file_type:#o}) is not that of a file")


def _check_spans(entries: list[FileRecord], sizes: dict[str, int], where: str) -> None:
    """Packed files lie inside their pack, one after the other, without overlapping."""
    spans: dict[str, list[FileRecord]] = {}
    for item in entries:
        if item.pack is not None and item.kind == "file":
            spans.setdefault(item.pack, []).append(item)
    for pack, items in spans.items():
        end = 0
        for item in sorted(items, key=lambda item: item.offset or 0):
            assert item.offset is not None
            if item.offset < end:
                raise UnsafeArchive(f"{where}: {item.path!r} is refused: its content overlaps another in {pack!r}")
            end = item.offset + item.archived_size
            if end > sizes[pack]:
                raise UnsafeArchive(
                    f"{where}: {item.path!r} is refused: its content ends at {end}, past the {sizes[pack]} bytes"
                    f" of {pack!r}"
                )


def _check_member_kind(info: MemberInfo, file_type: int, item: FileRecord, where: str) -> None:
    if file_type not in _MEMBER_TYPES[item.kind]:
        raise UnsafeArchive(
            f"{where}: member {info.name!r} is refused: its mode ({file_type:#o}) is not that of a {item.kind}"
            " as the manifest says"
        )
    if item.kind == "dir" and info.size != 0:
        raise UnsafeArchive(f"{where}: member {info.name!r} is refused: a directory member carries {info.size} bytes")
    if item.kind == "symlink" and info.size > MAX_LINK_TARGET_BYTES:
        raise UnsafeArchive(f"{where}: member {info.name!r} is refused: a link target of {info.size} bytes")


def _read_link_member(reader: ArchiveReader, item: FileRecord, where: str) -> bytes:
    with reader.open_member(item.member) as stream:
        data = stream.read(MAX_LINK_TARGET_BYTES + 1)
        # Read to the end: an encrypted member is authenticated only there.
        rest = stream.read()
    if len(data) > MAX_LINK_TARGET_BYTES or rest:
        raise UnsafeArchive(f"{where}: member {item.member!r} is refused: its link target is too long")
    return data


def check_link_member(reader: ArchiveReader, item: FileRecord, where: str) -> None:
    assert item.target is not None
    if _read_link_member(reader, item, where) != os.fsencode(item.target):
        raise UnsafeArchive(
            f"{where}: member {item.member!r} is refused: its link target differs from the manifest's {item.target!r}"
        )


def without_unlisted_roots(kinds: Mapping[str, str], listed: Mapping[str, str]) -> dict[str, str]:
    """``kinds`` (path -> kind) less the tree roots absent from ``listed``: a state need not list them
    (the scanner never does), so a root counts only where the state has it."""
    return {path: kind for path, kind in kinds.items() if "/" in path or path in listed}


class _Tree:
    """The restored tree as the replay will leave it, path by path, to check the chain beforehand."""

    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}
        self.children: dict[str, set[str]] = {}
        self.sizes: dict[str, int] = {}  # of files
        self.hard_links: dict[str, str] = {}  # path -> the path of the file it is another name of

    def delete(self, path: str, where: str) -> None:
        self._check_parents(path, where, "delete")
        if path in self.kinds:
            self._remove(path)

    def add(self, item: FileRecord, where: str) -> None:
        parents = self._check_parents(item.path, where, "write")
        if item.base_size is not None and (
            self.kinds.get(item.path) != "file" or self.sizes.get(item.path) != item.base_size
        ):
            raise IntegrityError(
                f"{where}: {item.path!r} extends a version of {item.base_size} bytes that the backups before it"
                " in the chain do not hold; is the chain complete and in order?"
            )
        if item.kind == "file":
            self.sizes[item.path] = item.size
        else:
            self.sizes.pop(item.path, None)
        if item.kind == "hardlink" and item.target is not None:
            self.hard_links[item.path] = item.target
        else:
            self.hard_links.pop(item.path, None)
        for parent in parents:
            if parent not in self.kinds:
                self._put(parent, "dir")
        if self.kinds.get(item.path) == "dir" and item.kind != "dir":
            self._remove(item.path)
        self._put(item.path, item.kind)

    def compare(self, state: list[FileRecord], where: str) -> None:
        expected = {item.path: item.kind for item in state}
        actual = without_unlisted_roots(self.kinds, expected)
        if actual != expected:
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            changed = sorted(path for path in set(actual) & set(expected) if actual[path] != expected[path])
            raise IntegrityError(
                f"{where}: replaying the chain does not reproduce the backup's recorded state"
                f" (missing {missing[:5]}, unexpected {extra[:5]}, of another kind {changed[:5]});"
                " is the chain complete and in order?"
            )

    def check_hard_links(self, state: list[FileRecord], where: str) -> None:
        """Each hard link names the file the recorded state says, and that path is a file."""
        recorded = {item.path: item.target for item in state if item.kind == "hardlink"}
        if recorded != self.hard_links:
            differing = sorted(set(recorded.items()) ^ set(self.hard_links.items()))
            raise IntegrityError(
                f"{where}: replaying the chain does not reproduce the backup's hard links {differing[:5]}"
            )
        for path, target in self.hard_links.items():
            if self.kinds.get(target) != "file":
                raise IntegrityError(
                    f"{where}: {path!r} is a hard link to {target!r}, which is not a file of the backup"
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
            self.sizes.pop(current, None)
            self.hard_links.pop(current, None)
            pending.extend(self.children.pop(current, ()))
        self.children[path.rpartition("/")[0]].discard(path)
