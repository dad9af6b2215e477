"""Proving a files chain restorable without writing anything: the chain checked as a restore checks it,
then every file's bytes hashed from the archives and compared with the records."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest

from backup_common.domain.documents import RestoreLimits
from backup_common.domain.verification import Check
from backup_common.engine.archive import sha256_file
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.incremental import APPEND_MIN_BYTES
from backup_common.engine.files.restore import ChainLink
from backup_common.engine.files.verify import check_files_chain
from backup_common.engine.verify import check_archive_members
from tests.unit.files_support import (
    LIMITS,
    MIB,
    PASSWORD,
    Dir,
    File,
    Link,
    Tree,
    back_up_trees,
    everything,
    flip_bit,
    full,
    incremental,
    snapshot,
)


def log_lines(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"%d GET /page/%d 200 %d\n" % (len(out), rng.randrange(10_000), rng.randrange(100_000))
    return bytes(out[:size])


def checks(chain: list[ChainLink], limits: RestoreLimits = LIMITS) -> dict[str, Check]:
    found = check_files_chain(chain, limits)
    assert [check.name for check in found] == ["chain_consistent", "files_content"]
    return {check.name: check for check in found}


def state_record(link: ChainLink, path: str) -> dict[str, object]:
    return next(item for item in link.manifest["state"] if item["path"] == path)


def entry_record(link: ChainLink, path: str) -> dict[str, object]:
    return next(item for item in link.manifest["entries"] if item["path"] == path)


def rehash(link: ChainLink) -> None:
    """The manifest made to describe the archive as it now is, as if it had been damaged before it was hashed."""
    link.manifest["size_bytes"] = link.archive.stat().st_size
    link.manifest["sha256"] = sha256_file(link.archive)


class App:
    """Trees on disk and the chain backed up from them by the real scanner and archiver."""

    def __init__(self, tmp_path: Path) -> None:
        self.trees = tmp_path / "app"
        self.archives = tmp_path / "archives"
        self.archives.mkdir(parents=True, exist_ok=True)
        for tree in ("uploads", "configs", "logs"):
            (self.trees / tree).mkdir(parents=True)
        self.chain: list[ChainLink] = []

    def write(self, path: str, data: bytes, *, append: bool = False) -> None:
        target = self.trees / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("ab" if append else "wb") as out:
            out.write(data)

    def back_up(self) -> ChainLink:
        link = back_up_trees(
            self.trees, self.archives / f"b{len(self.chain)}.zip", self.chain[-1] if self.chain else None
        )
        self.chain.append(link)
        return link


@pytest.fixture
def app(tmp_path: Path) -> App:
    """A chain of three: a complete backup with packs, a large file and a log; an incremental with
    the log grown by a packed tail, deletions and new links; another with the log grown by a member."""
    app = App(tmp_path)
    for number in range(40):
        app.write(f"uploads/docs/{number:02d}.txt", b"document %d\n" % number * (50 + number * 20))
    app.write("uploads/old/a.txt", b"old a\n")
    app.write("uploads/old/b.txt", b"old b\n")
    app.write("uploads/video.bin", os.urandom(3 * MIB))  # a member of its own, stored
    app.write("configs/app.ini", b"[app]\nkey = 1\n")
    app.write("logs/access.log", log_lines(2 * MIB, 1))
    os.symlink("docs/00.txt", app.trees / "uploads/first")
    app.back_up()

    app.write("logs/access.log", log_lines(200_000, 2), append=True)
    shutil.rmtree(app.trees / "uploads/old")
    (app.trees / "uploads/docs/05.txt").unlink()
    app.write("uploads/docs/new.txt", b"new\n")
    app.write("configs/app.ini", b"[app]\nkey = 2\n")
    os.symlink("../configs/app.ini", app.trees / "uploads/settings")
    app.back_up()

    app.write("logs/access.log", log_lines(2 * MIB, 3), append=True)
    app.write("uploads/docs/07.txt", b"rewritten\n")
    (app.trees / "uploads/first").unlink()
    app.back_up()
    return app


def test_a_good_chain_passes_every_check_and_writes_nothing(tmp_path: Path, app: App) -> None:
    b0, b1, b2 = app.chain
    grown = entry_record(b1, "logs/access.log")
    assert grown["base_size"] == 2 * MIB
    assert grown["pack"] is not None
    assert entry_record(b2, "logs/access.log")["base_size"] == 2 * MIB + 200_000
    assert entry_record(b2, "logs/access.log")["pack"] is None  # appended/logs/access.log
    assert entry_record(b0, "uploads/video.bin")["pack"] is None
    assert "uploads/old" in b1.manifest["deleted"]
    before = everything(tmp_path)

    found = checks(app.chain)

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert found["files_content"].ok, found["files_content"].detail
    files = [item for item in b2.manifest["state"] if item["kind"] == "file"]
    assert len(files) == 43  # 40 documents less 05.txt plus new.txt, the video, app.ini and the log
    total = sum(item["size"] for item in files)
    assert total == sum(
        len(path.read_bytes()) for path in app.trees.rglob("*") if path.is_file() and not path.is_symlink()
    )
    assert found["files_content"].detail == f"43 files, {total} bytes, every SHA-256 as recorded (chain of 3 backups)"
    for link in app.chain:
        members = check_archive_members(link.archive, password=PASSWORD, limits=LIMITS)
        assert members.ok, members.detail
    assert everything(tmp_path) == before


def test_each_shorter_chain_passes_too(app: App) -> None:
    for count in (1, 2):
        found = checks(app.chain[:count])
        assert found["files_content"].ok, found["files_content"].detail
        assert found["files_content"].detail.endswith(f"(chain of {count} backup{'s' if count > 1 else ''})")


@pytest.mark.parametrize("packed", [True, False], ids=["packs", "a member per path"])
def test_a_hand_made_chain_with_links_directories_and_deletions_passes(
    tmp_path: Path, archives: Path, packed: bool
) -> None:
    first: Tree = {
        "uploads/photos": Dir(0o750),
        "uploads/photos/cat.jpg": File(b"\xff\xd8cat"),
        "uploads/photos/latest": Link("cat.jpg"),
        "uploads/big.bin": File(os.urandom(MIB + 5)),
        "configs/app.ini": File(b"[app]\n"),
        "logs/app.log": File(b"line\n" * 1000),
    }
    second: Tree = {**first, "configs/app.ini": File(b"[app]\nx = 1\n"), "uploads/new": File(b"new")}
    del second["uploads/photos/latest"]
    chain = [full(archives, "b0", first, packed=packed), incremental(archives, "b1", first, second, packed=packed)]
    before = everything(tmp_path)

    found = checks(chain)

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert found["files_content"].ok, found["files_content"].detail
    assert found["files_content"].detail.startswith("5 files, ")
    assert everything(tmp_path) == before


def test_a_state_whose_recorded_sha256_was_edited_fails_naming_the_path_and_its_backup(app: App) -> None:
    b2 = app.chain[-1]
    state_record(b2, "uploads/video.bin")["sha256"] = "0" * 64

    found = checks(app.chain)

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith(
        "backup b2: 'uploads/video.bin' (archived by backup b0) has SHA-256 "
    )
    assert f"the recorded state says {'0' * 64}" in found["files_content"].detail


def test_an_entry_whose_bytes_are_not_its_record_fails_even_when_a_later_backup_replaced_it(app: App) -> None:
    # configs/app.ini of b0 was replaced in b1: the last state never reads it, but each backup's
    # records must match what it archived.
    b0 = app.chain[0]
    entry_record(b0, "configs/app.ini")["sha256"] = hashlib.sha256(b"something else").hexdigest()

    found = checks(app.chain)

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith("backup b0: 'configs/app.ini' does not match its manifest")


def test_a_grown_file_is_hashed_from_the_version_it_extends(tmp_path: Path) -> None:
    # Two sources with logs of the same size but other bytes: the first one's complete backup and the
    # second one's incremental line up by paths and sizes, and each backup matches its own records;
    # only the grown log, its earlier bytes followed by the appended ones, does not.
    one, other = App(tmp_path / "one"), App(tmp_path / "other")
    for seed, app in enumerate((one, other)):
        app.write("logs/access.log", log_lines(APPEND_MIN_BYTES + 500, 10 + seed))
        app.back_up()
    other.write("logs/access.log", log_lines(1000, 20), append=True)
    grown = other.back_up()
    del grown.manifest["parent_id"]  # past the parent check, to the content
    assert entry_record(grown, "logs/access.log")["base_size"] == APPEND_MIN_BYTES + 500

    found = checks([one.chain[0], grown])

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith("backup b1: 'logs/access.log' does not match its manifest")
    # The same incremental on its own base passes.
    assert checks(other.chain)["files_content"].ok


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ([0, 2], "backup b2 is an incremental made on backup b1, but follows backup b0 in the chain"),
        ([1, 2], "backup b1 is an incremental made on backup b0, which the chain lacks"),
        ([0, 2, 1], "backup b2 is an incremental made on backup b1, but follows backup b0 in the chain"),
    ],
)
def test_an_incremental_whose_parent_is_not_before_it_fails_the_chain(app: App, links: list[int], message: str) -> None:
    found = checks([app.chain[index] for index in links])

    assert (found["chain_consistent"].ok, found["chain_consistent"].detail) == (False, message)
    assert (found["files_content"].ok, found["files_content"].detail) == (
        False,
        "not checked: the chain is not consistent",
    )


def test_a_chain_missing_a_link_fails_its_dry_run_when_manifests_name_no_parent(archives: Path) -> None:
    first: Tree = {"uploads/a": File(b"a"), "uploads/b": File(b"b")}
    second: Tree = {"uploads/a": File(b"a")}
    third: Tree = {"uploads/a": File(b"a"), "uploads/c": File(b"c")}
    b0, b2 = full(archives, "b0", first), incremental(archives, "b2", second, third)
    incremental(archives, "b1", first, second)  # made, but left out of the chain

    found = checks([b0, b2])

    assert not found["chain_consistent"].ok
    assert "backup b2: replaying the chain does not reproduce the backup's recorded state" in (
        found["chain_consistent"].detail
    )
    assert not found["files_content"].ok


def test_a_damaged_pack_of_an_earlier_backup_fails_the_content(tmp_path: Path, app: App) -> None:
    b0 = app.chain[0]
    pack = entry_record(b0, "uploads/docs/10.txt")["pack"]
    assert isinstance(pack, str)
    flip_bit(b0.archive, pack)
    rehash(b0)  # past the archive's digest, to its members
    before = everything(tmp_path)

    found = checks(app.chain)

    assert found["chain_consistent"].ok, found["chain_consistent"].detail
    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith("backup b0")
    assert everything(tmp_path) == before


def test_a_damaged_member_of_its_own_fails_the_content_naming_it(app: App) -> None:
    b0 = app.chain[0]
    flip_bit(b0.archive, "uploads/video.bin")
    rehash(b0)

    found = checks(app.chain)

    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith("backup b0: ")
    # Its HMAC, checked as the last chunk is read, fails before its SHA-256 is compared.
    assert "'uploads/video.bin'" in found["files_content"].detail


def test_a_damaged_archive_fails_the_chain_on_its_digest(app: App) -> None:
    pack = entry_record(app.chain[1], "logs/access.log")["pack"]
    assert isinstance(pack, str)
    flip_bit(app.chain[1].archive, pack)

    found = checks(app.chain)

    assert not found["chain_consistent"].ok
    assert found["chain_consistent"].detail.startswith("backup b1: the archive's SHA-256 is ")


def test_a_missing_archive_fails_the_chain(app: App) -> None:
    app.chain[1].archive.unlink()

    found = checks(app.chain)

    assert (found["chain_consistent"].ok, found["chain_consistent"].detail) == (
        False,
        f"{app.chain[1].archive} is missing",
    )


def test_a_wrong_password_fails_saying_so(app: App) -> None:
    chain = [dataclasses.replace(link, password="not-it") for link in app.chain]

    found = checks(chain)

    assert not found["files_content"].ok
    assert found["files_content"].detail.startswith("backup b0: ")
    assert found["files_content"].detail.endswith(": wrong password")


def test_a_chain_over_the_limits_fails_the_chain(app: App) -> None:
    found = checks(app.chain, RestoreLimits(max_total_bytes=4 * MIB))

    assert not found["chain_consistent"].ok
    assert "over the limit of 4194304 bytes" in found["chain_consistent"].detail


def test_an_empty_chain_fails(tmp_path: Path) -> None:
    found = checks([])

    assert (found["chain_consistent"].ok, found["chain_consistent"].detail) == (False, "the chain is empty")
    assert not found["files_content"].ok


def test_what_passes_restores_to_the_trees_it_was_made_from(tmp_path: Path, app: App) -> None:
    # The checks and the restore agree: the chain they pass rebuilds the trees as they are.
    assert all(check.ok for check in check_files_chain(app.chain, LIMITS))
    restore_chain(app.chain, tmp_path / "restored", LIMITS)
    restored = snapshot(tmp_path / "restored")
    assert {path: node.content for path, node in restored.items() if isinstance(node, File)} == {
        path.relative_to(app.trees).as_posix(): path.read_bytes()
        for path in app.trees.rglob("*")
        if path.is_file() and not path.is_symlink()
    }
