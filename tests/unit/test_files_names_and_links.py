"""Every name and every link of the trees comes back: names that are not UTF-8 or hold a backslash,
symbolic links leading anywhere, and hard links, through a real scan, archive and restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backup_common.engine.archive import ArchiveReader
from backup_common.engine.files.backup import FilesPlan, Parent, plan_files
from backup_common.engine.files.chain_check import IntegrityError, UnsafeArchive, check_chain
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.restore import ChainLink
from backup_common.engine.files.verify import check_files_chain
from tests.unit.files_support import LIMITS, MIB, back_up_trees

LATIN1 = os.fsdecode(b"caf\xe9")  # é in Latin-1: not UTF-8


def raw_tree(root: Path) -> dict[bytes, tuple[str, bytes | None]]:
    """Every path below ``root`` as bytes, with its kind and its content or link target."""
    out: dict[bytes, tuple[str, bytes | None]] = {}
    base = os.fsencode(root)
    for directory, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, base)
            if os.path.islink(full):
                out[relative] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[relative] = ("dir", None)
            else:
                with open(full, "rb") as file:
                    out[relative] = ("file", file.read())
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    trees = tmp_path / "source"
    for tree in ("uploads", "configs", "logs"):
        (trees / tree).mkdir(parents=True)
    return trees


def make(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_names_that_are_not_utf8_or_hold_a_backslash_come_back_byte_for_byte(source: Path, tmp_path: Path) -> None:
    uploads = source / "uploads"
    try:
        make(uploads / f"{LATIN1}.txt", b"small")
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    make(uploads / f"{LATIN1}-big.bin", os.urandom(2 * MIB))  # larger than a packed file: a pack of its own
    make(uploads / LATIN1 / "inside.txt", b"in a directory named in Latin-1")
    make(uploads / "back\\slash.txt", b"backslash")
    make(uploads / "big\\slash.bin", os.urandom(MIB + 1))
    (uploads / f"link-{LATIN1}").symlink_to(f"{LATIN1}.txt")

    link = back_up_trees(source, tmp_path / "b1.zip")
    restore_chain([link], tmp_path / "restored", LIMITS)

    assert link.manifest["skipped"] == []
    assert raw_tree(tmp_path / "restored") == raw_tree(source)
    assert all(check.ok for check in check_files_chain([link], LIMITS))
    with ArchiveReader(link.archive, password=link.password) as reader:
        # The names ZIP readers could misread are inside tar packs, never member names.
        assert all(info.name.startswith("packs/") for info in reader.infos())


def test_a_grown_log_with_a_backslash_in_its_name_keeps_only_its_appended_bytes(source: Path, tmp_path: Path) -> None:
    log = make(source / "logs" / "app\\1.log", b"line\n" * (300_000))
    first = back_up_trees(source, tmp_path / "b1.zip")
    with log.open("ab") as file:
        file.write(b"more\n" * 300_000)
    second = back_up_trees(source, tmp_path / "b2.zip", parent=first)

    (entry,) = second.manifest["entries"]
    assert (entry["path"], entry["base_size"]) == ("logs/app\\1.log", 1_500_000)
    restore_chain([first, second], tmp_path / "restored", LIMITS)
    assert raw_tree(tmp_path / "restored") == raw_tree(source)


@pytest.mark.parametrize("target", ["/etc", "../../..", "../../../../outside", "sub/../../..", "/nonexistent/x"])
def test_a_symbolic_link_leading_anywhere_is_backed_up_and_restored_verbatim(
    source: Path, tmp_path: Path, target: str
) -> None:
    (source / "uploads" / "sub").mkdir()
    (source / "uploads" / "sub" / "x").symlink_to(target)

    link = back_up_trees(source, tmp_path / "b1.zip")
    restore_chain([link], tmp_path / "restored", LIMITS)

    assert os.readlink(tmp_path / "restored" / "uploads" / "sub" / "x") == target
    assert all(check.ok for check in check_files_chain([link], LIMITS))


def inode(path: Path) -> int:
    return os.lstat(path).st_ino


def test_hard_links_come_back_as_one_file_with_several_names(source: Path, tmp_path: Path) -> None:
    uploads = source / "uploads"
    make(uploads / "a.txt", b"shared content")
    os.link(uploads / "a.txt", uploads / "b.txt")
    make(uploads / "sub" / "other.txt", b"not linked")
    os.link(uploads / "a.txt", uploads / "sub" / "c.txt")
    big = make(uploads / "big.bin", os.urandom(2 * MIB))
    os.link(big, uploads / "big-too.bin")
    restored = tmp_path / "restored" / "uploads"

    link = back_up_trees(source, tmp_path / "b1.zip")
    summary = restore_chain([link], tmp_path / "restored", LIMITS)

    assert raw_tree(tmp_path / "restored") == raw_tree(source)
    assert inode(restored / "a.txt") == inode(restored / "b.txt") == inode(restored / "sub" / "c.txt")
    assert os.lstat(restored / "a.txt").st_nlink == 3
    assert inode(restored / "big.bin") == inode(restored / "big-too.bin")
    assert inode(restored / "sub" / "other.txt") != inode(restored / "a.txt")
    assert (summary.files, summary.hard_links) == (3, 3)
    assert all(check.ok for check in check_files_chain([link], LIMITS))


def test_an_incremental_adds_breaks_and_rewrites_hard_links(source: Path, tmp_path: Path) -> None:
    uploads = source / "uploads"
    make(uploads / "a.txt", b"first")
    os.link(uploads / "a.txt", uploads / "b.txt")
    make(uploads / "kept.txt", b"kept")
    os.link(uploads / "kept.txt", uploads / "kept-too.txt")
    first = back_up_trees(source, tmp_path / "b1.zip")

    with (uploads / "a.txt").open("ab") as file:  # in place: every name of the file changes
        file.write(b" and more")
    os.link(uploads / "a.txt", uploads / "c.txt")
    (uploads / "kept-too.txt").unlink()
    make(uploads / "kept-too.txt", b"its own file now")
    second = back_up_trees(source, tmp_path / "b2.zip", parent=first)
    restored = tmp_path / "restored" / "uploads"

    restore_chain([first, second], tmp_path / "restored", LIMITS)

    assert raw_tree(tmp_path / "restored") == raw_tree(source)
    assert inode(restored / "a.txt") == inode(restored / "b.txt") == inode(restored / "c.txt")
    assert inode(restored / "kept.txt") != inode(restored / "kept-too.txt")
    assert all(check.ok for check in check_files_chain([first, second], LIMITS))


def test_hard_links_selected_without_their_file_get_its_content(source: Path, tmp_path: Path) -> None:
    uploads = source / "uploads"
    make(uploads / "a.txt", b"the file")
    make(uploads / "sub" / "unrelated.txt", b"u")
    os.link(uploads / "a.txt", uploads / "sub" / "c.txt")
    os.link(uploads / "a.txt", uploads / "sub" / "d.txt")
    link = back_up_trees(source, tmp_path / "b1.zip")
    restored = tmp_path / "restored" / "uploads"

    restore_chain([link], tmp_path / "restored", LIMITS, paths=["uploads/sub"])

    assert sorted(os.listdir(restored)) == ["sub"]
    assert sorted(os.listdir(restored / "sub")) == ["c.txt", "d.txt", "unrelated.txt"]
    assert (restored / "sub" / "c.txt").read_bytes() == b"the file"
    assert inode(restored / "sub" / "c.txt") == inode(restored / "sub" / "d.txt")


def test_a_hard_link_whose_file_vanished_before_it_was_read_is_archived_as_the_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = source / "uploads"
    make(uploads / "a.txt", b"content")
    os.link(uploads / "a.txt", uploads / "b.txt")

    def scan_then_remove(roots: dict[str, Path], exclude: list[str], parent: Parent | None) -> FilesPlan:
        plan = plan_files(roots, exclude, parent)
        (uploads / "a.txt").unlink()
        return plan

    monkeypatch.setattr("tests.unit.files_support.plan_files", scan_then_remove)
    link = back_up_trees(source, tmp_path / "b1.zip")

    assert [(item["path"], item["kind"]) for item in link.manifest["entries"]] == [("uploads/b.txt", "file")]
    restore_chain([link], tmp_path / "restored", LIMITS)
    assert (tmp_path / "restored" / "uploads" / "b.txt").read_bytes() == b"content"


def hard_linked(source: Path, tmp_path: Path) -> ChainLink:
    make(source / "uploads" / "a.txt", b"content")
    os.link(source / "uploads" / "a.txt", source / "uploads" / "b.txt")
    return back_up_trees(source, tmp_path / "b1.zip")


def entry(link: ChainLink, path: str) -> dict[str, object]:
    return next(item for item in link.manifest["entries"] if item["path"] == path)


def state(link: ChainLink, path: str) -> dict[str, object]:
    return next(item for item in link.manifest["state"] if item["path"] == path)


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("configs/a.txt", UnsafeArchive, "a hard link names another path of its own tree"),
        ("uploads/b.txt", UnsafeArchive, "a hard link names another path of its own tree"),
        ("../a.txt", UnsafeArchive, "'..' component"),
        ("uploads/missing.txt", IntegrityError, "which is not a file of the backup"),
    ],
)
def test_a_hard_link_to_anything_but_a_file_of_its_tree_is_refused(
    source: Path, tmp_path: Path, target: str, error: type[Exception], match: str
) -> None:
    link = hard_linked(source, tmp_path)
    entry(link, "uploads/b.txt")["target"] = target
    state(link, "uploads/b.txt")["target"] = target

    with pytest.raises(error, match=match):
        check_chain([link], LIMITS)


def test_a_hard_link_the_state_records_otherwise_is_an_integrity_error(source: Path, tmp_path: Path) -> None:
    link = hard_linked(source, tmp_path)
    state(link, "uploads/b.txt")["target"] = "uploads/c.txt"

    with pytest.raises(IntegrityError, match="hard links"):
        check_chain([link], LIMITS)


def test_a_hard_link_outside_a_pack_is_refused(source: Path, tmp_path: Path) -> None:
    link = hard_linked(source, tmp_path)
    entry(link, "uploads/b.txt")["pack"] = None

    with pytest.raises(UnsafeArchive, match="a hard link travels in a pack"):
        check_chain([link], LIMITS)
