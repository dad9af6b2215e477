"""Restoring the trees of a files backup: exact rebuilds, chains replayed, hostile archives refused."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import pyzipper

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveReader, ArchiveWriter, MemberInfo, WrongPassword
from backup_common.engine.files.backup import Parent, files_part_manifest, plan_files, write_files_part
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.model import TREES, FileRecord
from backup_common.engine.files.restore import ChainLink, IntegrityError, RestoreError, TargetNotEmpty, UnsafeArchive
from tests.unit.files_support import (
    LIMITS,
    MIB,
    PASSWORD,
    T0,
    Dir,
    File,
    Link,
    Tree,
    assert_refused_without_writing,
    everything,
    full,
    incremental,
    members,
    record,
    root_of,
    snapshot,
    write_link,
    write_raw_link,
    write_tree,
)

SAMPLE: Tree = {
    "uploads/a.txt": File(b"hello\n", 0o644, T0 + 1),
    "uploads/empty": File(b"", 0o600, T0 + 2),
    "uploads/big.bin": File(os.urandom(3 * MIB + 17), 0o640, T0 + 3),
    "uploads/run.sh": File(b"#!/bin/sh\necho hi\n", 0o755, T0 + 4),
    "uploads/photos": Dir(0o750, T0 + 5),
    "uploads/photos/2024": Dir(0o755, T0 + 6),
    "uploads/photos/2024/cat.jpg": File(b"\xff\xd8" + os.urandom(5000), 0o444, T0 + 7),
    "uploads/nothing-here": Dir(0o700, T0 + 8),
    "uploads/latest": Link("photos/2024/cat.jpg", T0 + 9),
    "uploads/settings": Link("../configs", T0 + 10),
    "configs/locked": Dir(0o555, T0 + 11),
    "configs/locked/app.ini": File(b"[app]\nkey = 1\n", 0o400, T0 + 12),
    "logs/app.log": File(b"line\n" * 10_000, 0o644, T0 + 13),
}


LAYOUTS = pytest.mark.parametrize("packed", [True, False], ids=["packs", "a member per path"])


@LAYOUTS
def test_a_complete_backup_restores_every_byte_mode_time_link_and_empty_directory(
    tmp_path: Path, archives: Path, packed: bool
) -> None:
    target = tmp_path / "restored"
    summary = restore_chain([full(archives, "b1", SAMPLE, packed=packed)], target, LIMITS)

    assert snapshot(target) == SAMPLE
    assert os.readlink(target / "uploads/settings") == "../configs"
    assert (summary.files, summary.directories, summary.symlinks) == (7, 4, 2)
    assert summary.bytes_written == sum(len(n.content) for n in SAMPLE.values() if isinstance(n, File))
    assert summary.backups_applied == ["b1"]
    assert summary.target == str(target)


@LAYOUTS
def test_a_base_and_two_incrementals_reproduce_the_state_of_each_backup(
    tmp_path: Path, archives: Path, packed: bool
) -> None:
    s0 = dict(SAMPLE)
    s0.update({"uploads/old": Dir(), "uploads/old/x.txt": File(b"x"), "uploads/old/y.txt": File(b"y")})
    s1 = dict(s0)
    s1["uploads/a.txt"] = File(b"hello, again\n", 0o644, T0 + 100)  # modified
    s1["uploads/new.txt"] = File(b"new\n", 0o600, T0 + 101)  # added
    del s1["uploads/empty"]  # deleted file
    for path in ("uploads/old", "uploads/old/x.txt", "uploads/old/y.txt"):  # deleted directory
        del s1[path]
    s1["uploads/renamed.sh"] = s1.pop("uploads/run.sh")  # renamed: deleted and added
    s1["logs/app.log"] = File(b"line\n" * 10_000, 0o600, T0 + 13)  # mode changed
    s1["uploads/to-cat"] = Link("photos/2024/cat.jpg", T0 + 102)  # new link
    s1["uploads/inbox"] = Dir(0o770, T0 + 103)  # new empty directory
    s1["uploads"] = Dir(0o755, T0 + 104)  # a tree root in the state is restored too
    s2 = dict(s1)
    s2["uploads/new.txt"] = Dir(0o755, T0 + 200)  # a file became a directory
    s2["uploads/new.txt/inside"] = File(b"inside\n", 0o644, T0 + 201)
    s2["uploads/photos/2024"] = Link("../nothing-here", T0 + 202)  # a directory became a link
    del s2["uploads/photos/2024/cat.jpg"]
    del s2["uploads/latest"]
    del s2["uploads/to-cat"]
    s2["uploads/settings"] = Link("../logs", T0 + 203)  # link retargeted
    s2["uploads/photos"] = Dir(0o750, T0 + 204)
    chain = [
        full(archives, "b0", s0, packed=packed),
        incremental(archives, "b1", s0, s1, packed=packed),
        incremental(archives, "b2", s1, s2, packed=packed),
    ]

    for count, state in enumerate((s0, s1, s2), start=1):
        target = tmp_path / f"restored-{count}"
        summary = restore_chain(chain[:count], target, LIMITS)
        restored = snapshot(target)
        if "uploads" in state:
            assert restored == {path: node for path, node in state.items() if path != "uploads"}
            root = os.lstat(target / "uploads")
            assert (stat.S_IMODE(root.st_mode), root.st_mtime_ns) == (0o755, T0 + 104)
        else:
            assert restored == state
        assert summary.backups_applied == ["b0", "b1", "b2"][:count]
    assert summary.deleted == len(chain[1].manifest["deleted"]) + len(chain[2].manifest["deleted"])


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../evil", "'..' component"),
        ("/etc/x", "absolute"),
        ("uploads/../../x", "'..' component"),
        ("uploads\\..\\..\\evil", "not inside one of the trees"),
        ("uploads/a\\b", "contains a backslash"),
        ("C:/evil", "drive letter"),
        ("etc/passwd", "not inside one of the trees"),
        ("uploads//x", "empty or '.' component"),
    ],
)
def test_a_member_named_to_leave_the_target_is_refused_and_nothing_is_written(
    tmp_path: Path, archives: Path, name: str, rule: str
) -> None:
    chain = [write_raw_link(archives, "b1", [("uploads/fine.txt", File(b"ok")), (name, File(b"evil"))])]

    assert_refused_without_writing(tmp_path, chain, rule)


@pytest.mark.parametrize(
    ("path", "target"),
    [("uploads/etc", "/etc"), ("uploads/a", "../../.."), ("uploads/a/b", "../../.."), ("uploads/a/c", "b/../../..")],
)
def test_a_link_pointing_anywhere_is_restored_as_it_was_and_never_followed(
    tmp_path: Path, archives: Path, path: str, target: str
) -> None:
    tree: Tree = {"uploads/a": Dir(), "uploads/file": File(b"x"), path: Link(target)}

    restore_chain([full(archives, "b1", tree)], tmp_path / "restored", LIMITS)

    assert snapshot(tmp_path / "restored") == tree
    assert os.readlink(tmp_path / "restored" / path) == target


def test_a_file_written_through_an_absolute_link_is_refused_before_anything_is_written(
    tmp_path: Path, archives: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    s0: Tree = {"uploads/x": Link(str(outside))}
    s1: Tree = {**s0, "uploads/x/passwd": File(b"root::0:0::/:/bin/sh\n")}
    chain = [full(archives, "b0", s0), incremental(archives, "b1", s0, s1)]

    assert_refused_without_writing(tmp_path, chain, "through the symbolic link 'uploads/x'")
    assert list(outside.iterdir()) == []


def test_a_link_leading_elsewhere_inside_the_target_is_restored(tmp_path: Path, archives: Path) -> None:
    tree: Tree = {"uploads/a": Dir(), "uploads/a/up": Link("../../logs"), "uploads/a/root": Link("../..")}
    restore_chain([full(archives, "b1", tree)], tmp_path / "restored", LIMITS)

    assert snapshot(tmp_path / "restored") == tree


def test_a_file_written_through_a_link_made_by_an_earlier_backup_is_refused_before_anything_is_written(
    tmp_path: Path, archives: Path
) -> None:
    s0: Tree = {"uploads/x": Link("../configs"), "configs/app.ini": File(b"ok")}
    s1: Tree = {**s0, "uploads/x/passwd": File(b"root::0:0::/:/bin/sh\n")}
    chain = [full(archives, "b0", s0), incremental(archives, "b1", s0, s1)]

    assert_refused_without_writing(tmp_path, chain, "through the symbolic link 'uploads/x'")


def test_a_deletion_through_a_link_is_refused_before_anything_is_written(tmp_path: Path, archives: Path) -> None:
    s0: Tree = {"uploads/x": Link("../configs"), "configs/app.ini": File(b"ok")}
    s1 = write_link(archives, "b1", {}, state=s0, deleted=["uploads/x/app.ini"])

    assert_refused_without_writing(tmp_path, [full(archives, "b0", s0), s1], "delete through the symbolic link")


def test_a_link_already_in_a_forced_target_is_never_written_through(tmp_path: Path, archives: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "restored"
    target.mkdir()
    (target / "uploads").symlink_to(outside)
    chain = [full(archives, "b1", {"uploads/a.txt": File(b"a")})]

    with pytest.raises(UnsafeArchive, match="'uploads' in the target is a symbolic link"):
        restore_chain(chain, target, LIMITS, force=True)
    assert list(outside.iterdir()) == []


def test_a_character_device_member_is_refused_and_nothing_is_written(tmp_path: Path, archives: Path) -> None:
    archive = archives / "b1.zip"
    with ArchiveWriter(archive, password=PASSWORD) as writer:
        writer.write_member("uploads/tty", b"", mode=stat.S_IFCHR | 0o644)
        writer.commit()
    entry = record("uploads/tty", File(b""))
    chain = [ChainLink("b1", archive, PASSWORD, {"entries": [entry], "deleted": [], "state": [entry]})]

    assert_refused_without_writing(tmp_path, chain, "'uploads/tty' is refused: it is a character device")


def test_files_and_links_written_by_archive_writer_are_restored(tmp_path: Path, archives: Path) -> None:
    tree: Tree = {"uploads/a.txt": File(b"a" * 5000, 0o640), "uploads/l": Link("a.txt"), "logs/x": File(b"")}
    archive = archives / "b1.zip"
    with ArchiveWriter(archive, password=PASSWORD) as writer:
        for name, data, mode in members(sorted(tree.items())):
            writer.write_member(name, data, mode=mode, compress=not stat.S_ISLNK(mode))
        writer.commit()
    records = [record(path, node) for path, node in tree.items()]
    link = ChainLink("b1", archive, PASSWORD, {"entries": records, "deleted": [], "state": records})

    restore_chain([link], tmp_path / "restored", LIMITS)
    assert snapshot(tmp_path / "restored") == tree


def test_a_manifest_mode_with_fifo_bits_is_refused(tmp_path: Path, archives: Path) -> None:
    link = full(archives, "b1", {"uploads/pipe": File(b"")})
    link.manifest["entries"][0]["mode"] = stat.S_IFIFO | 0o644

    assert_refused_without_writing(tmp_path, [link], "it is a FIFO")


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> ChainLink:
    """200 MiB of zeros deflated (zlib level 9) to about 200 KiB."""
    archive = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(MIB)
    digest = hashlib.sha256()
    with pyzipper.AESZipFile(archive, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zip_file:
        zip_file.setpassword(PASSWORD.encode())
        info = zip_file.zipinfo_cls("uploads/zeros.bin", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = pyzipper.ZIP_DEFLATED
        info._compresslevel = 9
        with zip_file.open(info, "w", force_zip64=True) as stream:
            for _ in range(200):
                stream.write(zeros)
                digest.update(zeros)
    entry = asdict(FileRecord("uploads/zeros.bin", "file", 0o644, T0, 200 * MIB, digest.hexdigest()))
    return ChainLink("bomb", archive, PASSWORD, {"entries": [entry], "deleted": [], "state": [entry]})


def test_a_zip_bomb_is_refused_by_the_compression_ratio_limit(tmp_path: Path, zip_bomb: ChainLink) -> None:
    with ArchiveReader(zip_bomb.archive, password=PASSWORD) as reader:
        (info,) = reader.infos()
    assert info.size / info.compressed_size > 1000

    limits = RestoreLimits(max_compression_ratio=100)
    assert_refused_without_writing(tmp_path, [zip_bomb], "over the compression ratio limit of 100", limits)


def test_a_zip_bomb_is_refused_by_the_total_size_limit(tmp_path: Path, zip_bomb: ChainLink) -> None:
    limits = RestoreLimits(max_total_bytes=10 * MIB, max_compression_ratio=1 << 30)
    assert_refused_without_writing(tmp_path, [zip_bomb], f"over the limit of {10 * MIB} bytes", limits)


def test_the_total_size_limit_counts_every_backup_of_the_chain(tmp_path: Path, archives: Path) -> None:
    s0: Tree = {"uploads/a": File(b"a" * 600)}
    s1: Tree = {"uploads/a": File(b"b" * 600)}
    chain = [full(archives, "b0", s0), incremental(archives, "b1", s0, s1)]
    limits = RestoreLimits(max_total_bytes=1000)

    assert_refused_without_writing(tmp_path, chain, "backup b1: member 'uploads/a' takes the chain to 1200", limits)


def test_more_entries_than_the_limit_are_refused(tmp_path: Path, archives: Path) -> None:
    tree: Tree = {f"uploads/{i}.txt": File(b"%d" % i) for i in range(5)}
    limits = RestoreLimits(max_entries=3)

    assert_refused_without_writing(tmp_path, [full(archives, "b1", tree)], "limit of 3 entries", limits)


def test_a_member_larger_than_its_central_directory_says_stops_the_restore_and_leaves_no_partial_file(
    tmp_path: Path, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [full(archives, "b1", {"uploads/big.bin": File(os.urandom(2 * MIB))})]
    honest = ArchiveReader.infos

    def lying(self: ArchiveReader) -> list[MemberInfo]:
        return [replace(info, size=100, compressed_size=100) for info in honest(self)]

    monkeypatch.setattr(ArchiveReader, "infos", lying)
    target = tmp_path / "restored"

    with pytest.raises(UnsafeArchive, match="holds more than the 100 bytes its archive declares"):
        restore_chain(chain, target, LIMITS)
    assert not target.exists()


def test_content_that_does_not_match_its_manifest_checksum_is_an_integrity_error(
    tmp_path: Path, archives: Path
) -> None:
    link = full(archives, "b1", {"uploads/ok.txt": File(b"ok"), "uploads/tampered.txt": File(b"original")})
    entry = next(e for e in link.manifest["entries"] if e["path"] == "uploads/tampered.txt")
    entry["sha256"] = hashlib.sha256(b"something else").hexdigest()
    target = tmp_path / "restored"

    with pytest.raises(IntegrityError, match=re.escape("'uploads/tampered.txt' does not match its manifest")):
        restore_chain([link], target, LIMITS)
    # ok.txt may have been written, but in the staging directory: nothing reached the target.
    assert not target.exists()


def test_damage_found_half_way_leaves_a_target_that_held_trees_as_it_was(tmp_path: Path, archives: Path) -> None:
    target = tmp_path / "restored"
    write_tree(target, {"uploads/old.txt": File(b"old")})
    (target / "notes.txt").write_text("mine")
    before = everything(target)
    link = full(archives, "b1", {"uploads/ok.txt": File(b"ok"), "uploads/tampered.txt": File(b"original")})
    entry = next(e for e in link.manifest["entries"] if e["path"] == "uploads/tampered.txt")
    entry["sha256"] = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(IntegrityError):
        restore_chain([link], target, LIMITS, force=True)
    assert everything(target) == before


def test_a_link_member_that_differs_from_its_manifest_target_is_refused(tmp_path: Path, archives: Path) -> None:
    link = full(archives, "b1", {"uploads/l": Link("inside")})
    link.manifest["entries"][0]["target"] = "elsewhere"

    assert_refused_without_writing(tmp_path, [link], "its link target differs from the manifest's")


def test_a_member_the_manifest_does_not_list_is_refused(tmp_path: Path, archives: Path) -> None:
    link = full(archives, "b1", {"uploads/a": File(b"a"), "uploads/hidden": File(b"h")})
    link.manifest["entries"] = [e for e in link.manifest["entries"] if e["path"] == "uploads/a"]

    assert_refused_without_writing(tmp_path, [link], "member 'uploads/hidden' is not listed in the manifest")


def test_a_manifest_entry_without_its_member_is_refused(tmp_path: Path, archives: Path) -> None:
    link = full(archives, "b1", {"uploads/a": File(b"a")})
    link.manifest["entries"].append(record("uploads/ghost", File(b"g")))

    assert_refused_without_writing(tmp_path, [link], "'uploads/ghost' (file) has no member")


def test_a_chain_missing_a_backup_is_refused_before_anything_is_written(tmp_path: Path, archives: Path) -> None:
    s0: Tree = {"uploads/a": File(b"a")}
    s1: Tree = {**s0, "uploads/b": File(b"b")}
    s2: Tree = {**s1, "uploads/c": File(b"c")}
    chain = [full(archives, "b0", s0), incremental(archives, "b1", s0, s1), incremental(archives, "b2", s1, s2)]
    before = everything(tmp_path)

    with pytest.raises(IntegrityError, match="backup b2: replaying the chain does not reproduce"):
        restore_chain([chain[0], chain[2]], tmp_path / "restored", LIMITS)
    assert everything(tmp_path) == before


def test_a_non_empty_target_is_refused_unless_forced(tmp_path: Path, archives: Path) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"mine")
    chain = [full(archives, "b1", {"uploads/a.txt": File(b"a")})]

    with pytest.raises(TargetNotEmpty, match=r"is not empty.*\(--force\)"):
        restore_chain(chain, target, LIMITS)
    assert sorted(path.name for path in target.iterdir()) == ["keep.txt"]

    restore_chain(chain, target, LIMITS, force=True)
    assert (target / "uploads/a.txt").read_bytes() == b"a"
    assert (target / "keep.txt").read_bytes() == b"mine"


def test_an_empty_existing_target_is_restored_into(tmp_path: Path, archives: Path) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    restore_chain([full(archives, "b1", SAMPLE)], target, LIMITS)

    assert snapshot(target) == SAMPLE


def test_a_target_that_is_a_symbolic_link_is_refused(tmp_path: Path, archives: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "restored").symlink_to(real)

    with pytest.raises(RestoreError, match="is a symbolic link"):
        restore_chain([full(archives, "b1", {"uploads/a": File(b"a")})], tmp_path / "restored", LIMITS)
    assert list(real.iterdir()) == []


def test_a_wrong_password_is_reported_before_anything_is_written(tmp_path: Path, archives: Path) -> None:
    link = replace(full(archives, "b1", {"uploads/l": Link("x")}), password="not-it")

    with pytest.raises(WrongPassword):
        restore_chain([link], tmp_path / "restored", LIMITS)
    assert not (tmp_path / "restored").exists()


# --- tree roots ----------------------------------------------------------------------------------------


def back_up_files(trees: Path, archive: Path, parent: ChainLink | None = None) -> ChainLink:
    """A files part made as the files worker makes it."""
    roots = {tree: trees / tree for tree in TREES}
    plan = plan_files(roots, [], Parent(parent.backup_id, parent.manifest) if parent else None)
    result, info = write_files_part(archive, plan, password=PASSWORD, compression_level=1, progress=lambda *_: None)
    manifest = files_part_manifest(
        plan, result, info, file_name=archive.name, incremental_requested=parent is not None, encryption={}
    )
    return ChainLink(archive.stem, archive, PASSWORD, manifest)


def test_a_backup_records_its_tree_roots_and_a_restore_gives_them_back_last(tmp_path: Path, archives: Path) -> None:
    trees = tmp_path / "app"
    roots = {"uploads": Dir(0o751, T0 + 1), "configs": Dir(0o750, T0 + 2)}  # no logs tree
    tree: Tree = {"uploads/a.txt": File(b"a"), "uploads/d": Dir(0o700, T0 + 3), "configs/app.ini": File(b"c")}
    write_tree(trees, tree, roots)
    base = back_up_files(trees, archives / "b0.zip")
    (trees / "uploads").chmod(0o755)  # an incremental records the roots it found
    os.utime(trees / "uploads", ns=(T0, T0 + 10))
    later = back_up_files(trees, archives / "b1.zip", base)

    assert base.manifest["roots"] == {
        "uploads": {"mode": 0o751, "mtime_ns": T0 + 1},
        "configs": {"mode": 0o750, "mtime_ns": T0 + 2},
    }
    assert later.manifest["roots"]["uploads"] == {"mode": 0o755, "mtime_ns": T0 + 10}
    restore_chain([base], tmp_path / "first", LIMITS)
    restore_chain([base, later], tmp_path / "second", LIMITS)
    assert {name: root_of(tmp_path / "first" / name) for name in roots} == roots
    assert root_of(tmp_path / "second" / "uploads") == Dir(0o755, T0 + 10)
    assert snapshot(tmp_path / "second") == tree


def test_an_empty_tree_root_the_backup_found_is_restored(tmp_path: Path, archives: Path) -> None:
    link = full(archives, "b1", {"uploads/a.txt": File(b"a")}, roots={"uploads": Dir(), "logs": Dir(0o750, T0 + 7)})

    restore_chain([link], tmp_path / "restored", LIMITS)

    assert sorted(os.listdir(tmp_path / "restored")) == ["logs", "uploads"]
    assert root_of(tmp_path / "restored" / "logs") == Dir(0o750, T0 + 7)


def test_a_root_of_a_backup_that_recorded_none_is_left_readable_not_0700(tmp_path: Path, archives: Path) -> None:
    restore_chain([full(archives, "b1", SAMPLE)], tmp_path / "restored", LIMITS)

    for tree in TREES:
        assert stat.S_IMODE(os.stat(tmp_path / "restored" / tree).st_mode) == 0o755


@pytest.mark.parametrize(
    ("roots", "rule"),
    [
        ({"etc": {"mode": 0o755, "mtime_ns": T0}}, "manifest root 'etc' is refused"),
        ({"uploads": {"mode": stat.S_IFIFO | 0o755, "mtime_ns": T0}}, "it is a FIFO"),
        ({"uploads": {"mode": 0o755}}, "its mode and mtime_ns must be integers"),
        ({"uploads": 0o755}, "manifest root 'uploads' is refused"),
        ([], "the manifest roots are not an object"),
    ],
)
def test_manifest_roots_that_make_no_sense_are_refused(
    tmp_path: Path, archives: Path, roots: object, rule: str
) -> None:
    link = full(archives, "b1", {"uploads/a.txt": File(b"a")})
    link.manifest["roots"] = roots

    assert_refused_without_writing(tmp_path, [link], rule)
