"""Restoring files over the live trees: staged beside them, verified, swapped in whole (or path by path)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from backup_common.engine.archive import CorruptArchive
from backup_common.engine.files import in_place
from backup_common.engine.files import restore as restore_module
from backup_common.engine.files.in_place import (
    FilesRestoreProgress,
    non_empty_trees,
    restore_chain,
    restore_trees,
    unknown_paths,
)
from backup_common.engine.files.model import TREES
from backup_common.engine.files.restore import ChainLink, IntegrityError, RestoreError, TargetNotEmpty
from backup_common.engine.files.target_writer import unlock
from tests.unit.files_support import (
    LIMITS,
    MIB,
    T0,
    Dir,
    File,
    Link,
    Tree,
    everything,
    full,
    incremental,
    root_of,
    snapshot,
    write_tree,
)

BACKUP: Tree = {
    "uploads/a.txt": File(b"hello\n", 0o644, T0 + 1),
    "uploads/big.bin": File(os.urandom(2 * MIB + 5), 0o640, T0 + 2),
    "uploads/photos": Dir(0o750, T0 + 3),
    "uploads/photos/2024": Dir(0o755, T0 + 4),
    "uploads/photos/2024/cat.jpg": File(b"\xff\xd8cat", 0o444, T0 + 5),
    "uploads/photos/2024/dog.jpg": File(b"\xff\xd8dog", 0o644, T0 + 6),
    "uploads/photos/latest": Link("2024/cat.jpg", T0 + 7),
    "uploads/settings": Link("../configs", T0 + 8),
    "configs/app.ini": File(b"[app]\nkey = 1\n", 0o600, T0 + 9),
    "configs/locked": Dir(0o555, T0 + 10),
    "configs/locked/secret": File(b"s", 0o400, T0 + 11),
    "logs/app.log": File(b"line\n" * 1000, 0o644, T0 + 12),
}
ROOTS = {"uploads": Dir(0o751, T0 + 100), "configs": Dir(0o750, T0 + 101), "logs": Dir(0o755, T0 + 102)}
LAYOUTS = pytest.mark.parametrize("packed", [True, False], ids=["packs", "a member per path"])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The live trees, as the backup has them."""
    directory = tmp_path / "app"
    write_tree(directory, BACKUP, ROOTS)
    return directory


def roots_in(directory: Path) -> dict[str, Path]:
    return {tree: directory / tree for tree in TREES}


def restore(chain: list[ChainLink], directory: Path, **options: Any) -> None:
    options.setdefault("staging_tag", "r1")
    restore_trees(chain, roots_in(directory), LIMITS, **options)


def live_roots(directory: Path) -> dict[str, Dir]:
    return {tree: root_of(directory / tree) for tree in TREES if (directory / tree).exists()}


def state_of(directory: Path) -> tuple[Tree, dict[str, tuple[int, int, int]]]:
    """Every byte, mode and time below ``directory``: what must not change."""
    return snapshot(directory), everything(directory)


def backup(archives: Path, tree: Tree = BACKUP, **options: Any) -> ChainLink:
    options.setdefault("roots", ROOTS)
    return full(archives, "b1", tree, **options)


# --- whole trees -------------------------------------------------------------------------------------


@LAYOUTS
def test_the_live_trees_become_the_backup_again_after_files_were_deleted_modified_and_added(
    app: Path, archives: Path, packed: bool
) -> None:
    chain = [backup(archives, packed=packed)]
    (app / "uploads/a.txt").write_bytes(b"changed")
    (app / "uploads/photos/2024/dog.jpg").unlink()
    (app / "uploads/photos/new.jpg").write_bytes(b"new")
    (app / "uploads/extra").mkdir()
    (app / "uploads/extra/deep.txt").write_bytes(b"deep")
    (app / "uploads/photos/latest").unlink()
    (app / "uploads/photos/latest").symlink_to("2024")
    (app / "configs/app.ini").chmod(0o666)
    (app / "configs/new.ini").write_bytes(b"n")
    (app / "uploads").chmod(0o700)
    os.utime(app / "configs", ns=(T0, T0))

    restore(chain, app)

    assert snapshot(app) == BACKUP
    assert live_roots(app) == ROOTS
    assert sorted(os.listdir(app)) == sorted(TREES)  # no staging directory left


def test_a_tree_the_backup_does_not_have_is_left_alone(app: Path, archives: Path) -> None:
    tree = {path: node for path, node in BACKUP.items() if not path.startswith("logs/")}
    chain = [backup(archives, tree, roots={name: ROOTS[name] for name in ("uploads", "configs")})]
    (app / "logs/today.log").write_bytes(b"today\n")
    (app / "uploads/a.txt").write_bytes(b"changed")
    logs = {path: node for path, node in snapshot(app).items() if path.startswith("logs/")}
    logs_before = everything(app / "logs"), root_of(app / "logs")

    restore(chain, app)

    assert (everything(app / "logs"), root_of(app / "logs")) == logs_before
    assert snapshot(app) == {**tree, **logs}


def test_a_backup_that_found_none_of_the_trees_restores_nothing_and_leaves_them_alone(
    app: Path, archives: Path
) -> None:
    chain = [backup(archives, {}, roots={})]
    before = {tree: (everything(app / tree), root_of(app / tree)) for tree in TREES}

    restore(chain, app)

    assert {tree: (everything(app / tree), root_of(app / tree)) for tree in TREES} == before
    assert sorted(os.listdir(app)) == sorted(TREES)


def test_an_empty_tree_the_backup_found_is_restored_empty(app: Path, archives: Path) -> None:
    tree = {path: node for path, node in BACKUP.items() if not path.startswith("logs/")}
    chain = [backup(archives, tree)]

    restore(chain, app)

    assert snapshot(app) == tree
    assert os.listdir(app / "logs") == []
    assert live_roots(app) == ROOTS


@LAYOUTS
def test_an_incremental_restores_its_whole_chain_in_place(app: Path, archives: Path, packed: bool) -> None:
    s0 = BACKUP
    s1 = dict(s0)
    s1["uploads/a.txt"] = File(b"hello, again\n", 0o644, T0 + 200)
    s1["uploads/new"] = Dir(0o770, T0 + 201)
    s1["uploads/new/one.txt"] = File(b"one", 0o644, T0 + 202)
    del s1["uploads/photos/2024/dog.jpg"]
    s1["uploads/photos/latest"] = Link("2024", T0 + 203)
    roots1 = {**ROOTS, "uploads": Dir(0o755, T0 + 204)}
    chain = [
        full(archives, "b0", s0, packed=packed, roots=ROOTS),
        incremental(archives, "b1", s0, s1, packed=packed, roots=roots1),
    ]
    (app / "uploads/photos/2024/cat.jpg").unlink()
    (app / "logs/app.log").write_bytes(b"rotated\n")

    restore(chain, app)

    assert snapshot(app) == s1
    assert live_roots(app) == roots1


def test_into_another_directory_that_does_not_exist_yet(tmp_path: Path, archives: Path) -> None:
    into = tmp_path / "elsewhere" / "restored"

    restore([backup(archives)], into, replace=False)

    assert snapshot(into) == BACKUP
    assert live_roots(into) == ROOTS


def test_into_another_directory_whose_roots_are_empty(tmp_path: Path, archives: Path) -> None:
    into = tmp_path / "restored"
    for tree in TREES:
        (into / tree).mkdir(parents=True)

    restore([backup(archives)], into, replace=False)

    assert snapshot(into) == BACKUP


def test_into_another_directory_whose_root_holds_anything_is_refused_and_nothing_is_written(
    tmp_path: Path, archives: Path
) -> None:
    into = tmp_path / "restored"
    (into / "configs").mkdir(parents=True)
    (into / "configs" / "mine.ini").write_bytes(b"mine")
    chain = [backup(archives)]
    before = everything(tmp_path)

    with pytest.raises(TargetNotEmpty, match=re.escape(f"the configs directory {into / 'configs'} is not empty")):
        restore(chain, into, replace=False)
    assert everything(tmp_path) == before


def test_non_empty_trees_are_those_a_restore_without_replace_refuses(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "app.ini").write_bytes(b"x")
    (tmp_path / "logs").write_bytes(b"a file where a tree goes")

    assert non_empty_trees(tmp_path) == ["configs", "logs"]
    assert non_empty_trees(tmp_path / "missing") == []


def test_an_old_manifest_without_roots_leaves_a_new_root_readable(tmp_path: Path, archives: Path) -> None:
    into = tmp_path / "restored"

    restore([full(archives, "b1", BACKUP)], into, replace=False)

    assert snapshot(into) == BACKUP
    for tree in TREES:
        assert stat.S_IMODE(os.stat(into / tree).st_mode) == 0o755


def test_progress_goes_through_its_phases_and_counts_every_file(app: Path, archives: Path) -> None:
    reports: list[FilesRestoreProgress] = []
    (app / "uploads/a.txt").write_bytes(b"changed")

    restore([backup(archives)], app, progress=reports.append)

    phases = [report.phase for report in reports]
    assert phases[0] == "checking"
    assert [phase for index, phase in enumerate(phases) if phase != phases[index - 1] or index == 0] == [
        "checking",
        "writing",
        "swapping",
        "done",
    ]
    files = [node for node in BACKUP.values() if isinstance(node, File)]
    last = reports[-1]
    assert (last.files_done, last.files_total) == (len(files), len(files))
    assert last.bytes_done == last.bytes_total == sum(len(node.content) for node in files)
    assert all(a.bytes_done <= b.bytes_done for a, b in itertools.pairwise(reports))


# --- selected paths ----------------------------------------------------------------------------------


def test_a_selected_directory_alone_is_restored_and_its_siblings_are_untouched(app: Path, archives: Path) -> None:
    chain = [backup(archives)]
    (app / "uploads/a.txt").write_bytes(b"a sibling, modified")
    (app / "uploads/new.txt").write_bytes(b"a sibling, added")
    (app / "uploads/photos/2024/dog.jpg").unlink()
    (app / "uploads/photos/2024/cat.jpg").write_bytes(b"not a cat")
    (app / "uploads/photos/extra.jpg").write_bytes(b"extra")
    (app / "uploads/photos").chmod(0o777)
    before = snapshot(app)
    untouched = {path: st for path, st in everything(app).items() if not path.startswith("uploads/photos")}
    uploads_root = root_of(app / "uploads")

    restore(chain, app, paths=["uploads/photos"])

    photos = {path: node for path, node in BACKUP.items() if path.startswith("uploads/photos")}
    others = {path: node for path, node in before.items() if not path.startswith("uploads/photos")}
    assert snapshot(app) == {**others, **photos}
    assert {path: st for path, st in everything(app).items() if not path.startswith("uploads/photos")} == untouched
    assert root_of(app / "uploads") == uploads_root


def test_a_selected_file_alone_is_restored(app: Path, archives: Path) -> None:
    chain = [backup(archives)]
    (app / "configs/app.ini").write_bytes(b"broken")
    (app / "configs/other.ini").write_bytes(b"other")
    configs_root = root_of(app / "configs")

    restore(chain, app, paths=["configs/app.ini"])

    assert (app / "configs/app.ini").read_bytes() == b"[app]\nkey = 1\n"
    assert snapshot(app)["configs/app.ini"] == BACKUP["configs/app.ini"]
    assert (app / "configs/other.ini").read_bytes() == b"other"
    assert root_of(app / "configs") == configs_root


def test_the_directories_above_a_selected_path_are_made_when_the_live_tree_lacks_them(
    app: Path, archives: Path
) -> None:
    chain = [backup(archives)]
    before = snapshot(app)
    for path in ("uploads/photos/2024/cat.jpg", "uploads/photos/2024/dog.jpg", "uploads/photos/latest"):
        (app / path).unlink()
    (app / "uploads/photos/2024").rmdir()
    (app / "uploads/photos").rmdir()

    restore(chain, app, paths=["uploads/photos/2024"])

    expected = {path: node for path, node in before.items() if path != "uploads/photos/latest"}
    assert snapshot(app) == expected  # uploads/photos is back with its recorded mode and time


def test_a_link_where_a_selected_path_has_a_directory_is_replaced_and_never_followed(
    app: Path, archives: Path, tmp_path: Path
) -> None:
    chain = [backup(archives)]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    for path in ("uploads/photos/2024/cat.jpg", "uploads/photos/2024/dog.jpg", "uploads/photos/latest"):
        (app / path).unlink()
    (app / "uploads/photos/2024").rmdir()
    (app / "uploads/photos").rmdir()
    (app / "uploads/photos").symlink_to(outside)

    restore(chain, app, paths=["uploads/photos/2024"])

    assert os.listdir(outside) == ["keep"]
    assert not (app / "uploads/photos").is_symlink()
    restored = snapshot(app)
    assert {path: restored[path] for path in restored if path.startswith("uploads/photos")} == {
        path: node
        for path, node in BACKUP.items()
        if path.startswith("uploads/photos") and path != "uploads/photos/latest"
    }


def test_two_paths_below_a_missing_directory_share_its_swap(app: Path, archives: Path) -> None:
    chain = [backup(archives)]
    for path in ("uploads/photos/2024/cat.jpg", "uploads/photos/2024/dog.jpg", "uploads/photos/latest"):
        (app / path).unlink()
    (app / "uploads/photos/2024").rmdir()
    (app / "uploads/photos").rmdir()

    restore(chain, app, paths=["uploads/photos/latest", "uploads/photos/2024/dog.jpg"])

    restored = snapshot(app)
    assert {path for path in restored if path.startswith("uploads/photos")} == {
        "uploads/photos",
        "uploads/photos/2024",
        "uploads/photos/2024/dog.jpg",
        "uploads/photos/latest",
    }
    assert restored["uploads/photos"] == BACKUP["uploads/photos"]


def test_an_unknown_path_is_refused_before_anything_is_written(app: Path, archives: Path) -> None:
    chain = [backup(archives)]
    before = state_of(app)

    with pytest.raises(RestoreError, match=re.escape("the backup has no such paths: 'uploads/nope', '../etc'")):
        restore(chain, app, paths=["uploads/a.txt", "uploads/nope", "../etc"])
    assert state_of(app) == before


def test_restore_chain_takes_selected_paths_too(tmp_path: Path, archives: Path) -> None:
    target = tmp_path / "restored"

    restore_chain([backup(archives)], target, LIMITS, paths=["uploads/photos/2024", "configs"])

    assert snapshot(target) == {
        path: node
        for path, node in BACKUP.items()
        if path.startswith(("uploads/photos/2024", "configs/")) or path == "uploads/photos"
    }
    assert live_roots(target) == {"uploads": ROOTS["uploads"], "configs": ROOTS["configs"]}


MANIFEST: dict[str, Any] = {
    "trees": {"uploads": "/srv/uploads", "configs": "/srv/configs", "logs": "/srv/logs"},
    "roots": {"uploads": {"mode": 0o755, "mtime_ns": T0}, "logs": {"mode": 0o755, "mtime_ns": T0}},
    "state": [{"path": "uploads/2025", "kind": "dir"}, {"path": "uploads/2025/a.jpg", "kind": "file"}],
}


@pytest.mark.parametrize(
    ("paths", "unknown"),
    [
        (["uploads", "uploads/2025", "uploads/2025/a.jpg", "logs"], []),
        (["configs"], ["configs"]),  # configured, but the backup did not find it
        (["uploads/2024", "uploads/2025/b.jpg", "etc"], ["uploads/2024", "uploads/2025/b.jpg", "etc"]),
        (["/uploads", "uploads/../logs", "", "uploads/", "uploads//2025", "./uploads"], None),
    ],
)
def test_unknown_paths_are_those_naming_nothing_the_backup_has_or_no_path_at_all(
    paths: list[str], unknown: list[str] | None
) -> None:
    assert unknown_paths(MANIFEST, paths) == (paths if unknown is None else unknown)


def test_unknown_paths_of_a_manifest_without_roots_go_by_its_configured_trees() -> None:
    manifest = {key: value for key, value in MANIFEST.items() if key != "roots"}

    assert unknown_paths(manifest, ["configs", "logs", "uploads/2025"]) == []


# --- failures and retries ----------------------------------------------------------------------------


def damage(archive: Path, member: str) -> None:
    """Flips a byte in the middle of a member's stored data."""
    with pyzipper.AESZipFile(archive) as zip_file:
        info = zip_file.getinfo(member)
    data = bytearray(archive.read_bytes())
    header = info.header_offset
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


@LAYOUTS
def test_a_damaged_archive_leaves_the_live_trees_exactly_as_they_were_and_no_staging(
    app: Path, archives: Path, packed: bool
) -> None:
    chain = [backup(archives, packed=packed)]
    damage(chain[0].archive, "uploads/big.bin")
    (app / "uploads/a.txt").write_bytes(b"changed since")
    (app / "logs/new.log").write_bytes(b"new")
    before = state_of(app)

    with pytest.raises(CorruptArchive, match=re.escape("'uploads/big.bin' is damaged or was tampered with")):
        restore(chain, app)
    assert state_of(app) == before
    assert sorted(os.listdir(app)) == sorted(TREES)


@pytest.mark.parametrize("manifest", [{"size_bytes": 1}, {"sha256": "0" * 64}])
def test_an_archive_other_than_its_manifest_describes_is_refused_before_anything_is_read_from_it(
    app: Path, archives: Path, manifest: dict[str, Any]
) -> None:
    link = backup(archives)
    chain = [dataclasses.replace(link, manifest={**link.manifest, **manifest})]
    (app / "uploads/a.txt").write_bytes(b"changed since")
    before = state_of(app)

    with pytest.raises(IntegrityError, match=r"the manifest says .*: it is damaged or was replaced"):
        restore(chain, app)
    assert state_of(app) == before
    assert sorted(os.listdir(app)) == sorted(TREES)


def test_content_that_does_not_match_its_checksum_leaves_the_live_trees_as_they_were(app: Path, archives: Path) -> None:
    chain = [backup(archives)]
    entry = next(item for item in chain[0].manifest["entries"] if item["path"] == "logs/app.log")
    entry["sha256"] = hashlib.sha256(b"other").hexdigest()
    (app / "uploads/photos/2024/dog.jpg").unlink()
    before = state_of(app)

    with pytest.raises(IntegrityError, match=re.escape("'logs/app.log' does not match its manifest")):
        restore(chain, app, paths=["uploads/photos", "logs"])
    assert state_of(app) == before


def test_a_file_system_error_while_staging_names_the_tree_and_leaves_everything_as_it_was(
    app: Path, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [backup(archives)]
    (app / "uploads/a.txt").write_bytes(b"changed")
    before = state_of(app)
    real_rebuild = restore_module.rebuild
    calls: list[str] = []

    def rebuild_until_the_disk_is_full(root: int, target: Path, *args: Any, **kwargs: Any) -> int:
        calls.append(target.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_rebuild(root, target, *args, **kwargs)

    monkeypatch.setattr(in_place, "rebuild", rebuild_until_the_disk_is_full)

    with pytest.raises(RestoreError, match=re.escape(f"could not rebuild {app / 'configs'} beside it: [Errno 28]")):
        restore(chain, app)
    assert calls == [".uploads.restore-r1", ".configs.restore-r1"]
    assert state_of(app) == before
    assert sorted(os.listdir(app)) == sorted(TREES)


def test_what_an_earlier_attempt_left_is_removed_and_the_restore_succeeds(app: Path, archives: Path) -> None:
    leftover = app / ".uploads.restore-r1"
    (leftover / "uploads" / "half").mkdir(parents=True)
    (leftover / "uploads" / "half" / "file.partial").write_bytes(b"half")
    (leftover / "uploads" / "half").chmod(0o500)
    inner = app / "uploads" / "photos" / ".2024.restore-r1"
    inner.mkdir()
    (app / "uploads/a.txt").write_bytes(b"changed")

    restore([backup(archives)], app)

    assert snapshot(app) == BACKUP
    assert sorted(os.listdir(app)) == sorted(TREES)


def test_without_renameat2_two_renames_swap_the_trees(
    app: Path, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(in_place, "_renameat2", None)
    (app / "uploads/extra").write_bytes(b"extra")
    (app / "configs").chmod(0o777)

    restore([backup(archives)], app)

    assert snapshot(app) == BACKUP
    assert live_roots(app) == ROOTS


@pytest.mark.parametrize("renameat2", [True, False], ids=["exchanged", "renamed twice"])
def test_a_root_that_is_a_mount_point_has_its_entries_swapped_instead(
    app: Path, archives: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    monkeypatch.setattr(in_place, "_is_mount_point", lambda path: path.name == "uploads")
    if not renameat2:
        monkeypatch.setattr(in_place, "_renameat2", None)
    inode = os.stat(app / "uploads").st_ino
    (app / "uploads/extra").mkdir()
    (app / "uploads/extra/x").write_bytes(b"x")
    (app / "uploads/a.txt").write_bytes(b"changed")
    (app / "uploads/photos/2024/dog.jpg").unlink()
    (app / "uploads").chmod(0o700)

    restore([backup(archives)], app)

    assert os.stat(app / "uploads").st_ino == inode  # the same directory: the mount stays
    assert snapshot(app) == BACKUP
    assert live_roots(app) == ROOTS


def test_a_mount_point_where_the_backup_has_a_file_is_refused_before_anything_is_written(
    app: Path, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(in_place, "_is_mount_point", lambda path: path.name == "a.txt")
    (app / "uploads/a.txt").unlink()
    (app / "uploads/a.txt").mkdir()
    before = state_of(app)

    with pytest.raises(RestoreError, match="is a mount point, where the backup has no directory"):
        restore([backup(archives)], app, paths=["uploads/a.txt"])
    assert state_of(app) == before


def test_a_reader_sees_the_complete_old_tree_or_the_complete_new_one_while_it_is_swapped(
    app: Path, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [backup(archives)]
    (app / "uploads/photos/2024/dog.jpg").unlink()
    (app / "uploads/photos/2024/cat.jpg").write_bytes(b"another cat")
    (app / "uploads/more").mkdir()
    (app / "uploads/more/file").write_bytes(b"more")
    live = app / "uploads"
    old = read_tree(live)
    seen: list[frozenset[tuple[str, bytes]]] = []
    listed = threading.Event()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
            try:
                seen.append(read_tree_at(fd))
            finally:
                os.close(fd)
            listed.set()

    thread = threading.Thread(target=reader)
    real_exchange = in_place.exchange

    def watched_exchange(*args: Any) -> None:
        assert listed.wait(60)  # the reader has read the old tree
        listed.clear()
        real_exchange(*args)
        assert listed.wait(60)  # and read once more since
        stop.set()
        thread.join()  # before the old tree is removed

    monkeypatch.setattr(in_place, "exchange", watched_exchange)
    thread.start()
    try:
        restore(chain, app, paths=["uploads"])
    finally:
        stop.set()
        thread.join()

    new = read_tree(live)
    assert old != new
    assert seen[0] == old
    assert set(seen) <= {old, new}
    assert snapshot(app)["uploads/photos/2024/dog.jpg"] == BACKUP["uploads/photos/2024/dog.jpg"]


def read_tree(directory: Path) -> frozenset[tuple[str, bytes]]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read_tree_at(fd)
    finally:
        os.close(fd)


def read_tree_at(fd: int) -> frozenset[tuple[str, bytes]]:
    """Every path below the directory ``fd``, with a file's content or a link's target."""
    out: set[tuple[str, bytes]] = set()
    for directory, directories, files, directory_fd in os.fwalk(".", dir_fd=fd):
        for name in directories:
            out.add((os.path.join(directory, name), b"<dir>"))
        for name in files:
            path = os.path.join(directory, name)
            if stat.S_ISLNK(os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode):
                out.add((path, os.readlink(name, dir_fd=directory_fd).encode()))
                continue
            file_fd = os.open(name, os.O_RDONLY, dir_fd=directory_fd)
            with os.fdopen(file_fd, "rb") as stream:
                out.add((path, stream.read()))
    return frozenset(out)


def test_unlock_opens_up_every_directory_of_a_tree_for_its_owner(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"f")
    (tree / "a" / "link").symlink_to(tmp_path)
    (tree / "a" / "b").chmod(0o500)
    (tree / "a").chmod(0o100)
    tmp_path.chmod(0o751)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        unlock(fd, "tree")
    finally:
        os.close(fd)

    for directory in (tree, tree / "a", tree / "a" / "b"):
        assert stat.S_IMODE(os.stat(directory).st_mode) & 0o700 == 0o700
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o751  # the link was not followed


def test_a_configured_root_that_is_a_link_stays_one_and_its_directory_is_restored(
    tmp_path: Path, archives: Path
) -> None:
    volume = tmp_path / "volume"
    write_tree(volume, BACKUP, ROOTS)
    app = tmp_path / "app"
    app.mkdir()
    for tree in TREES:
        (app / tree).symlink_to(volume / tree)
    (volume / "uploads/a.txt").write_bytes(b"changed")

    restore([backup(archives)], app)

    assert all((app / tree).is_symlink() for tree in TREES)
    assert snapshot(volume) == BACKUP
    assert live_roots(volume) == ROOTS


def test_mount_points_are_told_apart_from_plain_directories(tmp_path: Path) -> None:
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")

    assert in_place._is_mount_point(Path("/proc"))
    assert in_place._is_mount_point(Path("/"))
    assert not in_place._is_mount_point(tmp_path)
    assert not in_place._is_mount_point(tmp_path / "missing")
