"""Files parts built by hand for the restore tests: trees, their manifests and archives in either layout.

A tree maps paths to File, Dir or Link nodes. ``full`` and ``incremental`` write a files part the
way the archiver does: with ``packed``, small files, directories and links go into packs (through
the archiver's own Packer) and larger files get members of their own; without it, every path has a
member of its own, the layout of earlier versions, which restores must keep reading.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveWriter
from backup_common.engine.files.backup import Parent, files_part_manifest, plan_files, write_files_part
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.model import TREES, FileRecord
from backup_common.engine.files.packs import PACK_FILE_BYTES, Packer
from backup_common.engine.files.restore import ChainLink, UnsafeArchive

PASSWORD = "pw"
T0 = 1_700_000_000_123_456_789
MIB = 1 << 20
LIMITS = RestoreLimits()


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int = 0o644
    mtime_ns: int = T0


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    mtime_ns: int = T0


@dataclass(frozen=True)
class Link:
    target: str
    mtime_ns: int = T0


Node = File | Dir | Link
Tree = dict[str, Node]


def record(path: str, node: Node) -> dict[str, Any]:
    if isinstance(node, File):
        digest = hashlib.sha256(node.content).hexdigest()
        return asdict(FileRecord(path, "file", node.mode, node.mtime_ns, len(node.content), digest))
    if isinstance(node, Dir):
        return asdict(FileRecord(path, "dir", node.mode, node.mtime_ns, 0, None))
    return asdict(FileRecord(path, "symlink", 0o777, node.mtime_ns, len(node.target), None, target=node.target))


def members(items: list[tuple[str, Node]]) -> list[tuple[str, bytes, int]]:
    """The archive members of paths as the archiver writes them: name, content and mode."""
    out = []
    for path, node in items:
        if isinstance(node, File):
            out.append((path, node.content, stat.S_IFREG | node.mode))
        elif isinstance(node, Dir):
            out.append((path + "/", b"", stat.S_IFDIR | node.mode))
        else:
            out.append((path, node.target.encode(), stat.S_IFLNK | 0o777))
    return out


def write_archive(archive: Path, content: list[tuple[str, bytes, int]]) -> None:
    """An encrypted archive written with pyzipper directly: ArchiveWriter refuses directory members
    (``<path>/``) and the hostile names these tests need."""
    with pyzipper.AESZipFile(archive, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zip_file:
        zip_file.setpassword(PASSWORD.encode())
        for name, data, mode in content:
            info = zip_file.zipinfo_cls(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            info.compress_type = pyzipper.ZIP_DEFLATED
            zip_file.writestr(info, data)


def write_link(
    directory: Path,
    backup_id: str,
    carried: Tree,
    *,
    state: Tree,
    deleted: list[str],
    packed: bool = False,
    roots: dict[str, Dir] | None = None,
) -> ChainLink:
    """A files part and its manifest: every carried path in a member of its own, or ``packed``; with
    ``roots``, the manifest records the tree roots as the archiver does."""
    archive = directory / f"{backup_id}.zip"
    entries = [record(path, node) for path, node in carried.items()]
    if packed:
        placements = write_packed_archive(archive, sorted(carried.items()))
        for entry in entries:
            entry.update(placements.get(entry["path"], {}))
    else:
        write_archive(archive, members(sorted(carried.items())))
    manifest: dict[str, Any] = {
        "entries": entries,
        "deleted": deleted,
        "state": [record(path, node) for path, node in state.items()],
    }
    if roots is not None:
        manifest["roots"] = {tree: {"mode": root.mode, "mtime_ns": root.mtime_ns} for tree, root in roots.items()}
    return ChainLink(backup_id, archive, PASSWORD, manifest)


def write_packed_archive(archive: Path, items: list[tuple[str, Node]]) -> dict[str, dict[str, Any]]:
    """An archive laid out as the archiver lays it out; returns the pack and offset of each packed path."""
    placements: dict[str, dict[str, Any]] = {}
    with ArchiveWriter(archive, password=PASSWORD) as writer:
        packer = Packer(writer)
        for path, node in items:
            offset: int | None = None
            if isinstance(node, File) and len(node.content) > PACK_FILE_BYTES:
                writer.write_member(path, node.content, mode=stat.S_IFREG | node.mode)
                continue
            if isinstance(node, File):
                pack, offset = packer.add_file(path, node.content, stored=False, mode=node.mode, mtime_ns=node.mtime_ns)
            elif isinstance(node, Dir):
                pack = packer.add_directory(path, mode=node.mode, mtime_ns=node.mtime_ns)
            else:
                pack = packer.add_link(path, node.target, mode=0o777, mtime_ns=node.mtime_ns)
            placements[path] = {"pack": pack, "offset": offset}
        packer.close()
        writer.commit()
    return placements


def full(
    directory: Path, backup_id: str, tree: Tree, *, packed: bool = False, roots: dict[str, Dir] | None = None
) -> ChainLink:
    return write_link(directory, backup_id, tree, state=tree, deleted=[], packed=packed, roots=roots)


def incremental(
    directory: Path,
    backup_id: str,
    before: Tree,
    after: Tree,
    *,
    packed: bool = False,
    roots: dict[str, Dir] | None = None,
) -> ChainLink:
    carried = {path: node for path, node in after.items() if before.get(path) != node}
    deleted = sorted(path for path in before if path not in after)
    return write_link(directory, backup_id, carried, state=after, deleted=deleted, packed=packed, roots=roots)


def write_tree(target: Path, tree: Tree, roots: dict[str, Dir] | None = None) -> None:
    """Puts ``tree`` on disk below ``target`` (``<target>/<tree>/...``), modes and times included,
    and gives the tree roots in ``roots`` theirs."""
    for tree_name in roots or {}:
        (target / tree_name).mkdir(parents=True, exist_ok=True)
    for path, node in sorted(tree.items()):
        where = target / path
        where.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(node, Dir):
            where.mkdir(exist_ok=True)
        elif isinstance(node, File):
            where.write_bytes(node.content)
        else:
            where.symlink_to(node.target)
    nodes: list[tuple[str, Node]] = [*tree.items(), *(roots or {}).items()]
    # Deepest first: setting a directory's time must come after everything written in it.
    for path, node in sorted(nodes, key=lambda item: -item[0].count("/")):
        where = target / path
        if not isinstance(node, Link):
            where.chmod(node.mode)
        os.utime(where, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)


def root_of(directory: Path) -> Dir:
    """A tree root as it is on disk."""
    st = os.lstat(directory)
    return Dir(stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def write_raw_link(directory: Path, backup_id: str, items: list[tuple[str, Node]], *, type_bits: int = 0) -> ChainLink:
    """A files part whose members and manifest entries have the given paths, whatever they are;
    ``type_bits`` replaces the file type and mode of every member."""
    content = [(name, data, type_bits or mode) for name, data, mode in members(items)]
    archive = directory / f"{backup_id}.zip"
    write_archive(archive, content)
    records = [record(path, node) for path, node in items]
    return ChainLink(backup_id, archive, PASSWORD, {"entries": records, "deleted": [], "state": records})


def snapshot(target: Path) -> Tree:
    """What the target holds below its tree roots, read back without following links."""
    assert {entry.name for entry in target.iterdir()} <= set(TREES)
    out: Tree = {}
    pending = [(target / tree, tree) for tree in TREES if (target / tree).is_dir()]
    while pending:
        directory, path = pending.pop()
        for entry in os.scandir(directory):
            child = f"{path}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                out[child] = Link(os.readlink(entry.path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[child] = Dir(stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                pending.append((Path(entry.path), child))
            else:
                assert stat.S_ISREG(st.st_mode)
                out[child] = File(Path(entry.path).read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def everything(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its type, size and time, to tell whether anything was written."""
    out = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(directory, name))
            out[os.path.relpath(os.path.join(directory, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def assert_refused_without_writing(
    tmp_path: Path, chain: list[ChainLink], match: str, limits: RestoreLimits = LIMITS
) -> None:
    target = tmp_path / "restored"
    before = everything(tmp_path)
    with pytest.raises(UnsafeArchive, match=re.escape(match)):
        restore_chain(chain, target, limits)
    assert not target.exists()
    assert everything(tmp_path) == before


def back_up_trees(
    trees: Path, archive: Path, parent: ChainLink | None = None, password: str | None = PASSWORD
) -> ChainLink:
    """A files part of the trees below ``trees``, made as the files worker makes it (an incremental
    on ``parent`` when given), named after its archive."""
    roots = {tree: trees / tree for tree in TREES}
    plan = plan_files(roots, [], Parent(parent.backup_id, parent.manifest) if parent else None)
    result, info = write_files_part(archive, plan, password=password, compression_level=1, progress=lambda *_: None)
    manifest = files_part_manifest(
        plan, result, info, file_name=archive.name, incremental_requested=parent is not None, encryption={}
    )
    return ChainLink(archive.stem, archive, password, manifest)


def member_data(archive: Path, name: str) -> tuple[int, int]:
    """(offset, length) of a member's data in the archive file: for a WinZip AES member, of its
    ciphertext alone (without the salt, the password verifier and the HMAC)."""
    with zipfile.ZipFile(archive) as listing:
        info = listing.getinfo(name)
    with open(archive, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    start = info.header_offset + 30 + name_length + extra_length
    if info.compress_type == 99:  # WinZip AES: a 16-byte salt and 2-byte verifier first, a 10-byte HMAC last
        return start + 18, info.compress_size - 18 - 10
    return start, info.compress_size


def flip_bit(archive: Path, name: str) -> None:
    """Flips one bit in the middle of the data of member ``name``."""
    start, length = member_data(archive, name)
    assert length > 0
    with open(archive, "r+b") as file:
        file.seek(start + length // 2)
        byte = file.read(1)[0]
        file.seek(start + length // 2)
        file.write(bytes([byte ^ 0x10]))
