"""The scanner: exclude globs, absent and empty trees, names, links, special files, modes and times."""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_common.engine.files.model import Entry, Skipped
from backup_common.engine.files.scan import compile_excludes, scan, scan_trees

NOTHING = compile_excludes([])


def make_trees(tmp_path: Path, *names: str) -> dict[str, Path]:
    roots = {}
    for name in names:
        root = tmp_path / name
        root.mkdir()
        roots[name] = root
    return roots


def paths(entries: list[Entry]) -> list[str]:
    return [entry.path for entry in entries]


def by_path(entries: list[Entry]) -> dict[str, Entry]:
    return {entry.path: entry for entry in entries}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a UNIX socket's path is limited to about 100 bytes."""
    with tempfile.TemporaryDirectory(prefix="scan", dir="/tmp") as name:
        yield Path(name)


# --- exclude globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("**/cache/**", "uploads/cache", True),
        ("**/cache/**", "uploads/a/b/cache", True),
        ("**/cache/**", "uploads/a/cache/x/y.bin", True),
        ("**/cache/**", "uploads/cached", False),
        ("logs/*.tmp", "logs/a.tmp", True),
        ("logs/*.tmp", "logs/sub/a.tmp", False),
        ("logs/*.tmp", "configs/a.tmp", False),
        ("*.tmp", "uploads/a.tmp", True),
        ("*.tmp", "uploads/dir/a.tmp", False),
        ("**/*.tmp", "uploads/a.tmp", True),
        ("**/*.tmp", "uploads/x/y/z/a.tmp", True),
        ("**/*.tmp", "uploads/a.tmpx", False),
        ("a/**/b", "uploads/a/b", True),
        ("a/**/b", "uploads/a/x/y/b", True),
        ("a/**/b", "uploads/a/xb", False),
        ("?.log", "logs/1.log", True),
        ("?.log", "logs/12.log", False),
        ("?", "uploads/a/b", False),
        ("[ab]*.txt", "configs/b1.txt", True),
        ("[ab]*.txt", "configs/c1.txt", False),
        ("[!ab]*.txt", "configs/c1.txt", True),
        ("[!ab]*.txt", "configs/a1.txt", False),
        ("[0-9].txt", "configs/7.txt", True),
        ("**", "uploads/anything/at/all", True),
        ("a[", "uploads/a[", True),
        ("uploads/private", "uploads/private", True),
        ("uploads/private", "configs/uploads/private", True),
    ],
)
def test_an_exclude_glob_matches_the_path_relative_to_its_tree_or_with_the_tree_name(
    pattern: str, path: str, excluded: bool
) -> None:
    assert compile_excludes([pattern])(path) is excluded


def test_a_star_does_not_cross_a_slash() -> None:
    exclude = compile_excludes(["uploads/*"])

    assert exclude("uploads/a")
    assert not exclude("uploads/a/b")


def test_no_exclude_patterns_exclude_nothing() -> None:
    assert not NOTHING("uploads/a")


def test_an_excluded_directory_is_left_out_with_everything_below_it(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "logs")
    (roots["uploads"] / "a" / "cache" / "deep").mkdir(parents=True)
    (roots["uploads"] / "a" / "cache" / "deep" / "x.bin").write_bytes(b"x")
    (roots["uploads"] / "a" / "keep.txt").write_text("k")
    (roots["uploads"] / "a" / "edit.swp").write_text("s")
    (roots["logs"] / "app.log").write_text("l")
    (roots["logs"] / "app.tmp").write_text("t")

    entries, skipped = scan_trees(roots, compile_excludes(["**/cache/**", "logs/*.tmp", "**/*.swp"]))

    assert paths(entries) == ["uploads/a", "uploads/a/keep.txt", "logs/app.log"]
    assert skipped == []


def test_an_excluded_directory_is_not_descended_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = make_trees(tmp_path, "uploads")
    (roots["uploads"] / "cache" / "sub").mkdir(parents=True)
    (roots["uploads"] / "other").mkdir()
    listed: list[str] = []
    real_scandir = os.scandir

    def spying_scandir(path: str) -> object:
        listed.append(os.path.relpath(path, roots["uploads"]))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spying_scandir)

    entries, _ = scan_trees(roots, compile_excludes(["cache"]))

    assert paths(entries) == ["uploads/other"]
    assert sorted(listed) == [".", "other"]


# --- trees -----------------------------------------------------------------------------------------


def test_absent_trees_yield_nothing_and_are_no_error(tmp_path: Path) -> None:
    roots = {"uploads": tmp_path / "missing", "configs": tmp_path / "also-missing"}

    assert scan_trees(roots, NOTHING) == ([], [])


def test_empty_trees_yield_no_entries_and_the_root_is_never_an_entry(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "configs", "logs")

    assert scan_trees(roots, NOTHING) == ([], [])


def test_trees_come_in_their_fixed_order_and_are_sorted_by_path_within(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "configs", "logs")
    for name in ("b.txt", "a", "a/z.txt", "a-b.txt"):
        target = roots["uploads"] / name
        if name == "a":
            target.mkdir()
        else:
            target.write_text(name)
    (roots["logs"] / "x.log").write_text("x")
    (roots["configs"] / "app.ini").write_text("c")

    entries, _ = scan_trees(roots, NOTHING)

    assert paths(entries) == [
        "uploads/a",
        "uploads/a-b.txt",
        "uploads/a/z.txt",
        "uploads/b.txt",
        "configs/app.ini",
        "logs/x.log",
    ]


def test_a_tree_left_out_of_the_roots_is_not_scanned(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "logs")
    (roots["logs"] / "x.log").write_text("x")

    entries, _ = scan_trees({"uploads": roots["uploads"]}, NOTHING)

    assert entries == []


# --- names, directories, links, special files ------------------------------------------------------


def test_unicode_names_keep_their_exact_text(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    names = ["café.txt", "日本語 ファイル.md", "emoji 🎉.png", "Ωmega", "spaces and\ttab"]
    for name in names:
        (roots["uploads"] / name).write_text(name)

    entries, skipped = scan_trees(roots, NOTHING)

    assert paths(entries) == sorted(f"uploads/{name}" for name in names)
    assert skipped == []


def test_a_name_that_is_not_utf8_is_an_entry_holding_its_bytes(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    name = os.fsdecode(b"caf\xe9.txt")
    try:
        (roots["uploads"] / name).write_bytes(b"x")
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses names that are not UTF-8")

    entries, skipped = scan_trees(roots, NOTHING)

    assert [os.fsencode(entry.path) for entry in entries] == [b"uploads/caf\xe9.txt"]
    assert skipped == []


def test_a_name_with_a_backslash_is_an_entry(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    (roots["uploads"] / "a\\b.txt").write_text("x")

    entries, skipped = scan_trees(roots, NOTHING)

    assert [entry.path for entry in entries] == ["uploads/a\\b.txt"]
    assert skipped == []


def test_names_of_one_file_are_a_file_then_hard_links_to_it_in_path_order(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "logs")
    (roots["uploads"] / "b.txt").write_text("shared")
    os.link(roots["uploads"] / "b.txt", roots["uploads"] / "a.txt")
    (roots["uploads"] / "sub").mkdir()
    os.link(roots["uploads"] / "b.txt", roots["uploads"] / "sub" / "c.txt")
    # Another tree is restored on its own: a name of the same file there is a file of its own.
    os.link(roots["uploads"] / "b.txt", roots["logs"] / "d.txt")

    entries, _ = scan_trees(roots, NOTHING)

    kinds = {entry.path: (entry.kind, entry.target) for entry in entries}
    assert kinds == {
        "uploads/a.txt": ("file", None),
        "uploads/b.txt": ("hardlink", "uploads/a.txt"),
        "uploads/sub": ("dir", None),
        "uploads/sub/c.txt": ("hardlink", "uploads/a.txt"),
        "logs/d.txt": ("file", None),
    }


def test_every_directory_is_an_entry_so_empty_ones_are_kept(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    (roots["uploads"] / "empty").mkdir()
    (roots["uploads"] / "full" / "nested-empty").mkdir(parents=True)
    (roots["uploads"] / "full" / "f.txt").write_text("abc")

    entries, _ = scan_trees(roots, NOTHING)

    found = by_path(entries)
    assert [(path, entry.kind, entry.size) for path, entry in found.items()] == [
        ("uploads/empty", "dir", 0),
        ("uploads/full", "dir", 0),
        ("uploads/full/f.txt", "file", 3),
        ("uploads/full/nested-empty", "dir", 0),
    ]


def test_a_link_to_a_directory_outside_the_tree_is_listed_as_a_link_and_not_followed(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, roots["uploads"] / "link-dir")
    os.symlink("missing-target", roots["uploads"] / "dangling")

    entries, skipped = scan_trees(roots, NOTHING)

    assert entries == [
        Entry(
            "uploads/dangling",
            "symlink",
            stat.S_IMODE(os.lstat(roots["uploads"] / "dangling").st_mode),
            os.lstat(roots["uploads"] / "dangling").st_mtime_ns,
            len(b"missing-target"),
            "missing-target",
        ),
        Entry(
            "uploads/link-dir",
            "symlink",
            stat.S_IMODE(os.lstat(roots["uploads"] / "link-dir").st_mode),
            os.lstat(roots["uploads"] / "link-dir").st_mtime_ns,
            len(os.fsencode(outside)),
            str(outside),
        ),
    ]
    assert skipped == []


def test_a_link_size_is_the_length_of_its_target_in_utf8_bytes(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads")
    os.symlink("répertoire/ü", roots["uploads"] / "l")

    entries, _ = scan_trees(roots, NOTHING)

    assert entries[0].size == len("répertoire/ü".encode())


def test_sockets_and_fifos_are_skipped_with_their_reasons(short_dir: Path) -> None:
    roots = make_trees(short_dir, "uploads")
    (roots["uploads"] / "f.txt").write_text("x")
    os.mkfifo(roots["uploads"] / "pipe")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(roots["uploads"] / "sock"))

        entries, skipped = scan_trees(roots, NOTHING)
    finally:
        server.close()

    assert paths(entries) == ["uploads/f.txt"]
    assert skipped == [Skipped("uploads/pipe", "fifo"), Skipped("uploads/sock", "socket")]


def test_an_unreadable_directory_is_skipped_with_the_reason_and_without_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = make_trees(tmp_path, "uploads")
    locked = roots["uploads"] / "locked"
    locked.mkdir()
    (locked / "inside.txt").write_text("x")
    real_scandir = os.scandir

    def refusing_scandir(path: str) -> object:
        # chmod 0 would do, but not for root, which the test container may run as.
        if path == str(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)

    entries, skipped = scan_trees(roots, NOTHING)

    assert entries == []
    assert skipped == [Skipped("uploads/locked", "unreadable: Permission denied")]


# --- modes and times -------------------------------------------------------------------------------


def test_modes_and_mtimes_are_exactly_those_on_disk(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "configs")
    secret = roots["configs"] / "secret.env"
    secret.write_text("K=V")
    secret.chmod(0o600)
    script = roots["configs"] / "run.sh"
    script.write_text("#!/bin/sh")
    script.chmod(0o4755)
    directory = roots["configs"] / "d"
    directory.mkdir()
    directory.chmod(0o2750)
    os.utime(secret, ns=(1_000_000_000, 1_234_567_890_123_456_789))
    os.utime(script, ns=(1_000_000_000, 987_654_321))
    os.utime(directory, ns=(1_000_000_000, 1_700_000_000_000_000_001))

    entries, _ = scan_trees(roots, NOTHING)

    found = by_path(entries)
    assert (found["configs/secret.env"].mode, found["configs/secret.env"].mtime_ns) == (
        0o600,
        1_234_567_890_123_456_789,
    )
    assert (found["configs/run.sh"].mode, found["configs/run.sh"].mtime_ns) == (0o4755, 987_654_321)
    assert (found["configs/d"].mode, found["configs/d"].mtime_ns) == (0o2750, 1_700_000_000_000_000_001)
    assert found["configs/secret.env"].size == 3


def test_each_tree_root_is_recorded_apart_from_the_entries_with_its_mode_and_time(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "configs", "logs")
    (roots["uploads"] / "a.txt").write_text("a")
    roots["uploads"].chmod(0o751)
    os.utime(roots["uploads"], ns=(1_000_000_000, 1_700_000_000_000_000_007))
    real_configs = tmp_path / "volume"
    real_configs.mkdir(mode=0o700)
    os.utime(real_configs, ns=(1_000_000_000, 1_600_000_000_000_000_003))
    roots["configs"].rmdir()
    roots["configs"].symlink_to(real_configs)  # a configured root may be a link: its directory counts

    found = scan({**roots, "logs": tmp_path / "missing"}, compile_excludes([]))

    assert paths(found.entries) == ["uploads/a.txt"]
    assert found.roots == {
        "uploads": Entry("uploads", "dir", 0o751, 1_700_000_000_000_000_007, 0),
        "configs": Entry("configs", "dir", 0o700, 1_600_000_000_000_000_003, 0),
    }


def test_an_excluded_tree_has_no_root_recorded(tmp_path: Path) -> None:
    roots = make_trees(tmp_path, "uploads", "logs")

    assert set(scan(roots, compile_excludes(["logs"])).roots) == {"uploads"}
