"""Chains of files parts made by the real scanner and archiver, restored: grown files, of which an
incremental carries only what was appended, and files that fail while they are read."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from backup_common.engine.archive import ArchiveReader, ArchiveWriter
from backup_common.engine.files import archiver
from backup_common.engine.files.archiver import write_files_archive
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.incremental import APPEND_MIN_BYTES, append_bases, next_state, plan_incremental
from backup_common.engine.files.model import Base, FileRecord, Skipped
from backup_common.engine.files.restore import ChainLink, IntegrityError
from backup_common.engine.files.scan import compile_excludes, scan_trees
from tests.unit.files_support import LIMITS, PASSWORD, everything

MIB = 1 << 20


def log_lines(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"%d GET /page/%d 200 %d\n" % (len(out), rng.randrange(10_000), rng.randrange(100_000))
    return bytes(out[:size])


class Source:
    """Trees on disk and the chain of files parts backed up from them, the way the files worker does it."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        tmp_path.mkdir(exist_ok=True)
        self.roots = {name: tmp_path / "data" / name for name in ("uploads", "configs", "logs")}
        for root in self.roots.values():
            root.mkdir(parents=True)
        self.chain: list[ChainLink] = []
        self.state: list[dict[str, Any]] = []
        self.skipped: list[Skipped] = []

    def write(self, path: str, data: bytes, *, append: bool = False) -> None:
        tree, rel = path.split("/", 1)
        target = self.roots[tree] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("ab" if append else "wb") as out:
            out.write(data)

    def back_up(self) -> dict[str, FileRecord]:
        entries, _ = scan_trees(self.roots, compile_excludes([]))
        planned, deleted = plan_incremental(self.state, entries) if self.chain else (entries, [])
        archive = self.base / f"b{len(self.chain)}.zip"
        with ArchiveWriter(archive, password=PASSWORD) as writer:
            result = write_files_archive(writer, planned, self.roots, bases=append_bases(self.state))
            writer.commit()
        self.state = next_state(self.state, result.records, entries)
        manifest = {
            "entries": [asdict(r) for r in result.records],
            "deleted": deleted,
            "state": self.state,
            "skipped": [asdict(s) for s in result.skipped],
        }
        self.skipped = result.skipped
        self.chain.append(ChainLink(f"b{len(self.chain)}", archive, PASSWORD, manifest))
        return {record.path: record for record in result.records}

    def restored(self, count: int | None = None) -> dict[str, bytes]:
        target = self.base / f"restored-{count}-{len(os.listdir(self.base))}"
        restore_chain(self.chain[:count], target, LIMITS)
        return {
            path.relative_to(target).as_posix(): path.read_bytes()
            for path in sorted(target.rglob("*"))
            if path.is_file()
        }

    def files(self) -> dict[str, bytes]:
        data = self.base / "data"
        return {
            path.relative_to(data).as_posix(): path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()
        }


def contents(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def member(chain_link: ChainLink, name: str) -> bytes:
    with ArchiveReader(chain_link.archive, password=PASSWORD) as reader, reader.open_member(name) as stream:
        return stream.read()


def test_a_grown_log_is_archived_from_its_previous_end_and_restored_whole(tmp_path: Path) -> None:
    source = Source(tmp_path)
    first = log_lines(2 * MIB, 1)
    source.write("logs/access.log", first)
    source.write("configs/app.ini", b"[app]\n")
    source.back_up()
    versions = [source.files()]

    grown = log_lines(300_000, 2)
    source.write("logs/access.log", grown, append=True)
    records = source.back_up()
    versions.append(source.files())

    record = records["logs/access.log"]
    assert record.base_size == len(first)
    assert (record.size, record.sha256) == (len(first) + len(grown), hashlib.sha256(first + grown).hexdigest())
    # A small tail is packed.
    assert record.pack is not None
    assert record.offset is not None
    tail = member(source.chain[1], record.pack)[record.offset : record.offset + len(grown)]
    assert tail == grown
    assert "base_size" not in next(item for item in source.state if item["path"] == "logs/access.log")

    more = log_lines(2 * MIB, 3)  # above the pack limit: a member of its own
    source.write("logs/access.log", more, append=True)
    records = source.back_up()
    versions.append(source.files())

    assert records["logs/access.log"].base_size == len(first) + len(grown)
    assert member(source.chain[2], "appended/logs/access.log") == more
    for count, expected in enumerate(versions, start=1):
        assert source.restored(count) == expected


def test_a_streamed_file_that_grew_is_archived_from_its_previous_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiver, "IN_MEMORY_BYTES", 64 * 1024)
    monkeypatch.setattr(archiver, "CHUNK_BYTES", 100_000)  # the base ends inside a chunk
    source = Source(tmp_path)
    source.write("logs/big.log", log_lines(APPEND_MIN_BYTES + 12_345, 4))
    source.back_up()
    source.write("logs/big.log", log_lines(50_000, 5), append=True)

    records = source.back_up()

    assert records["logs/big.log"].base_size == APPEND_MIN_BYTES + 12_345
    assert source.restored() == source.files()


@pytest.mark.parametrize("in_memory", [True, False], ids=["read whole", "streamed"])
def test_a_file_rewritten_rather_than_grown_is_archived_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    if not in_memory:
        monkeypatch.setattr(archiver, "IN_MEMORY_BYTES", 64 * 1024)
    source = Source(tmp_path)
    original = log_lines(APPEND_MIN_BYTES + 1000, 6)
    source.write("logs/app.log", original)
    source.back_up()
    rewritten = b"X" + original[1:] + b"more\n"  # longer, but its first byte changed
    source.write("logs/app.log", rewritten)

    records = source.back_up()

    record = records["logs/app.log"]
    assert record.base_size is None
    assert record.sha256 == hashlib.sha256(rewritten).hexdigest()
    assert source.restored() == source.files()


def test_a_file_that_shrank_is_archived_whole(tmp_path: Path) -> None:
    source = Source(tmp_path)
    source.write("logs/app.log", log_lines(APPEND_MIN_BYTES + 1000, 7))
    source.back_up()
    source.write("logs/app.log", log_lines(APPEND_MIN_BYTES, 7))

    assert source.back_up()["logs/app.log"].base_size is None
    assert source.restored() == source.files()


def test_only_large_files_read_consistently_are_bases() -> None:
    big = {"kind": "file", "size": APPEND_MIN_BYTES, "sha256": "a" * 64}
    state = [
        {**big, "path": "logs/a.log"},
        {**big, "path": "logs/small.log", "size": APPEND_MIN_BYTES - 1},
        {**big, "path": "logs/torn.log", "changed_while_read": True},
        {"path": "logs/dir", "kind": "dir", "size": 0, "sha256": None},
    ]

    assert append_bases(state) == {"logs/a.log": Base(APPEND_MIN_BYTES, "a" * 64)}


def test_an_incremental_restored_without_the_version_it_extends_is_refused(tmp_path: Path) -> None:
    source = Source(tmp_path)
    source.write("logs/access.log", log_lines(2 * MIB, 8))
    source.back_up()
    source.write("logs/access.log", log_lines(1000, 9), append=True)
    source.back_up()
    target = tmp_path / "restored"
    before = everything(tmp_path)

    with pytest.raises(IntegrityError, match=re.escape("'logs/access.log' extends a version of 2097152 bytes")):
        restore_chain(source.chain[1:], target, LIMITS)
    assert everything(tmp_path) == before


def test_a_base_that_does_not_match_the_restored_version_is_an_integrity_error(tmp_path: Path) -> None:
    # Two sources with a log of the same size but other bytes: the first one's base, followed by the
    # second one's incremental, line up by paths and sizes, but the rebuilt log cannot match.
    one, other = Source(tmp_path / "one"), Source(tmp_path / "other")
    for seed, source in enumerate((one, other)):
        source.write("logs/access.log", log_lines(2 * MIB, 20 + seed))
        source.back_up()
    other.write("logs/access.log", log_lines(1000, 30), append=True)
    other.back_up()
    target = tmp_path / "restored"

    with pytest.raises(IntegrityError, match=re.escape("'logs/access.log' does not match its manifest")):
        restore_chain([one.chain[0], other.chain[1]], target, LIMITS)
    # Nothing was moved into place: the directory the restore made is gone again, staging and all.
    assert not target.exists()


def test_a_file_that_fails_while_streamed_is_skipped_and_the_backup_still_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiver, "IN_MEMORY_BYTES", 64 * 1024)
    monkeypatch.setattr(archiver, "CHUNK_BYTES", 64 * 1024)
    source = Source(tmp_path)
    source.write("uploads/failing.bin", log_lines(300_000, 40))
    source.write("uploads/fine.txt", b"fine\n")
    real_read = os.read
    reads: dict[int, int] = {}

    def failing_read(fd: int, size: int) -> bytes:
        if os.fstat(fd).st_size == 300_000:
            reads[fd] = reads.get(fd, 0) + 1
            if reads[fd] == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", failing_read)
    source.back_up()
    monkeypatch.setattr(os, "read", real_read)

    assert [item.path for item in source.skipped] == ["uploads/failing.bin"]
    assert "partial member has no record" in source.skipped[0].reason
    with ArchiveReader(source.chain[0].archive, password=PASSWORD) as reader:
        assert "uploads/failing.bin" in reader.names()  # what was read before the error
    assert source.restored() == {"uploads/fine.txt": b"fine\n"}


def test_files_of_zeros_deflated_as_far_as_deflate_goes_restore_with_the_default_limits(tmp_path: Path) -> None:
    # isal at level 1 deflates zeros about 1015:1, close to deflate's ceiling of about 1032:1.
    source = Source(tmp_path)
    source.write("uploads/disk.img", bytes(4 * MIB))  # a member of its own
    source.write("uploads/sparse.db", bytes(MIB))  # in a pack, with the tar headers around it
    source.back_up()

    assert source.restored() == source.files()
