"""The files archiver: round trips, packs and members of their own, stored or deflated content, streaming,
files that change or move."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from backup_common.engine.archive import ArchiveReader, ArchiveWriter
from backup_common.engine.files import archiver, packs
from backup_common.engine.files.archiver import is_precompressed_name, probe_incompressible, write_files_archive
from backup_common.engine.files.model import ArchiveResult, Entry, FileRecord, Skipped
from backup_common.engine.files.packs import PACK_FILE_BYTES
from backup_common.engine.files.scan import compile_excludes, scan_trees

PASSWORD = "ZmlsZXMtYXJjaGl2ZXItdGVzdC1wYXNzd29yZA"
MIB = 1 << 20


def text_bytes(size: int, seed: int = 0) -> bytes:
    words = [b"backup", b"restore", b"archive", b"uploads", b"config", b"log", b"line", b"\n"]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def make_roots(tmp_path: Path) -> dict[str, Path]:
    roots = {name: tmp_path / "data" / name for name in ("uploads", "configs", "logs")}
    for root in roots.values():
        root.mkdir(parents=True)
    return roots


def archive(
    tmp_path: Path, roots: dict[str, Path], entries: list[Entry] | None = None, **kwargs: object
) -> tuple[ArchiveResult, Path]:
    if entries is None:
        entries, _ = scan_trees(roots, compile_excludes([]))
    final = tmp_path / f"files-{time.monotonic_ns()}.zip"
    with ArchiveWriter(final, password=PASSWORD) as writer:
        result = write_files_archive(writer, entries, roots, **kwargs)  # type: ignore[arg-type]
        writer.commit()
    return result, final


def read_member(path: Path, name: str) -> bytes:
    with ArchiveReader(path, password=PASSWORD) as reader, reader.open_member(name) as stream:
        return stream.read()


def read_content(path: Path, record: FileRecord) -> bytes:
    """A file's archived bytes, from its own member or from its pack."""
    if record.pack is None:
        return read_member(path, record.path)
    assert record.offset is not None
    return read_member(path, record.pack)[record.offset : record.offset + record.size]


def pack_entries(path: Path, pack: str) -> dict[str, tarfile.TarInfo]:
    """The entries of a pack, read as the tar it is."""
    with tarfile.open(fileobj=io.BytesIO(read_member(path, pack))) as tar:
        return {info.name: info for info in tar.getmembers()}


def records_by_path(result: ArchiveResult) -> dict[str, FileRecord]:
    return {record.path: record for record in result.records}


# --- round trip ------------------------------------------------------------------------------------


def test_an_encrypted_archive_round_trips_bytes_hashes_modes_and_mtimes(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    files = {
        "uploads/photos/cat.jpg": text_bytes(5000, 1),
        "uploads/日本語/ファイル.txt": "こんにちは".encode() * 100,
        "uploads/empty.txt": b"",
        "configs/app.ini": b"[app]\nkey = value\n",
        "logs/app.log": text_bytes(3 * MIB, 2),
        "logs/noise.bin": os.urandom(200_000),
    }
    for path, data in files.items():
        tree, rel = path.split("/", 1)
        target = roots[tree] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (roots["configs"] / "app.ini").chmod(0o640)
    (roots["uploads"] / "empty-dir").mkdir()
    (roots["uploads"] / "empty-dir").chmod(0o750)
    os.utime(roots["configs"] / "app.ini", ns=(0, 1_600_000_000_123_456_789))
    os.symlink("photos/cat.jpg", roots["uploads"] / "latest")

    result, final = archive(tmp_path, roots)

    assert result.skipped == []
    records = records_by_path(result)
    with ArchiveReader(final, password=PASSWORD) as reader:
        infos = {info.name: info for info in reader.infos()}
    assert all(info.encrypted for info in infos.values())
    # Only the file above the pack limit has a member of its own; the rest share one deflated and
    # one stored pack (noise.bin is incompressible).
    assert sorted(infos) == ["logs/app.log", "packs/000001.tar", "packs/000002.tar"]
    assert {record.path for record in result.records if record.pack is None} == {"logs/app.log"}
    for path, data in files.items():
        tree, rel = path.split("/", 1)
        on_disk = os.stat(roots[tree] / rel)
        record = records[path]
        assert read_content(final, record) == data
        assert (record.kind, record.size, record.sha256) == ("file", len(data), hashlib.sha256(data).hexdigest())
        assert (record.mode, record.mtime_ns) == (stat.S_IMODE(on_disk.st_mode), on_disk.st_mtime_ns)
        if record.pack is None:
            assert infos[path].mode == record.mode
            assert abs(infos[path].mtime - on_disk.st_mtime) <= 2  # DOS times have 2-second steps
        else:
            entry = pack_entries(final, record.pack)[path]
            assert (entry.isreg(), entry.size, entry.mode) == (True, len(data), record.mode)
            assert entry.mtime == on_disk.st_mtime_ns // 1_000_000_000
        assert not record.changed_while_read
    assert records["configs/app.ini"].mode == 0o640
    assert records["configs/app.ini"].mtime_ns == 1_600_000_000_123_456_789

    empty_dir = records["uploads/empty-dir"]
    assert empty_dir == FileRecord(
        "uploads/empty-dir",
        "dir",
        0o750,
        os.stat(roots["uploads"] / "empty-dir").st_mtime_ns,
        0,
        None,
        pack=empty_dir.pack,
    )
    assert empty_dir.pack is not None
    directories = pack_entries(final, empty_dir.pack)
    assert directories["uploads/empty-dir"].isdir()
    assert directories["uploads/empty-dir"].mode == 0o750
    assert directories["uploads/photos"].isdir()


def test_a_symlink_is_packed_as_a_link_to_its_target(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "real.txt").write_text("real")
    os.symlink("real.txt", roots["uploads"] / "link")

    result, final = archive(tmp_path, roots)

    record = records_by_path(result)["uploads/link"]
    assert (record.kind, record.target, record.size, record.sha256) == ("symlink", "real.txt", 8, None)
    assert (record.pack, record.offset) == ("packs/000001.tar", None)
    entry = pack_entries(final, "packs/000001.tar")["uploads/link"]
    assert entry.issym()
    assert entry.linkname == "real.txt"


def test_packs_are_file_members_that_7zip_and_tar_extract_into_the_trees(tmp_path: Path) -> None:
    seven_zip = shutil.which("7zz") or shutil.which("7z")
    if seven_zip is None:
        pytest.skip("7-Zip is not installed (Debian package 7zip provides 7zz): `apt-get install 7zip`")
    roots = make_roots(tmp_path)
    files = {
        "uploads/docs/a.txt": text_bytes(3000, 1),
        "uploads/docs/ünïcødé name.md": text_bytes(200, 2),
        "uploads/photos/p.jpg": os.urandom(5000),
        "configs/app.ini": b"[app]\n",
        "logs/big.log": text_bytes(PACK_FILE_BYTES + 1, 3),
    }
    for path, data in files.items():
        tree, rel = path.split("/", 1)
        (roots[tree] / rel).parent.mkdir(parents=True, exist_ok=True)
        (roots[tree] / rel).write_bytes(data)
    (roots["uploads"] / "empty").mkdir()
    os.symlink("docs/a.txt", roots["uploads"] / "latest")

    _, final = archive(tmp_path, roots)
    with zipfile.ZipFile(final) as plain:
        modes = {info.filename: info.external_attr >> 16 for info in plain.infolist()}
    assert all(stat.S_ISREG(mode) for mode in modes.values())

    out = tmp_path / "out"
    extracted = subprocess.run(
        [seven_zip, "x", f"-p{PASSWORD}", f"-o{out}", str(final)], capture_output=True, text=True, check=False
    )
    assert extracted.returncode == 0, extracted.stdout + extracted.stderr
    for pack in sorted((out / "packs").iterdir()):
        subprocess.run(["tar", "-xf", str(pack), "-C", str(out)], check=True)
    for path, data in files.items():
        assert (out / path).read_bytes() == data
    assert (out / "uploads" / "empty").is_dir()
    assert os.readlink(out / "uploads" / "latest") == "docs/a.txt"


# --- stored or deflated ----------------------------------------------------------------------------


def test_jpegs_and_random_bytes_are_stored_and_text_is_deflated(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "photo.JPG").write_bytes(text_bytes(100_000))  # by its name, whatever it holds
    (roots["uploads"] / "blob.bin").write_bytes(os.urandom(100_000))  # by the probe
    (roots["uploads"] / "notes.txt").write_bytes(text_bytes(100_000))
    (roots["uploads"] / "tiny.bin").write_bytes(os.urandom(100))  # too small to probe: deflated

    result, final = archive(tmp_path, roots)

    with ArchiveReader(final, password=PASSWORD) as reader:
        compressed = {info.name: info.compressed for info in reader.infos()}
    stored = {record.path: record.stored for record in result.records if record.kind == "file"}
    assert stored == {
        "uploads/blob.bin": True,
        "uploads/notes.txt": False,
        "uploads/photo.JPG": True,
        "uploads/tiny.bin": False,
    }
    # Each kind of content goes to a pack of its kind.
    for record in result.records:
        if record.kind == "file":
            assert record.pack is not None
            assert compressed[record.pack] is not record.stored


def test_a_file_above_the_pack_limit_has_a_member_of_its_own(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "notes.txt").write_bytes(text_bytes(PACK_FILE_BYTES + 1))
    (roots["uploads"] / "small.txt").write_bytes(text_bytes(PACK_FILE_BYTES))

    result, final = archive(tmp_path, roots)

    records = records_by_path(result)
    assert (records["uploads/notes.txt"].pack, records["uploads/notes.txt"].offset) == (None, None)
    assert records["uploads/small.txt"].pack == "packs/000001.tar"
    with ArchiveReader(final, password=PASSWORD) as reader:
        compressed = {info.name: info.compressed for info in reader.infos()}
    assert compressed == {"uploads/notes.txt": True, "packs/000001.tar": True}


def test_a_full_pack_is_written_and_the_next_one_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_BYTES", 10_000)
    roots = make_roots(tmp_path)
    contents = {f"uploads/doc-{index}.txt": text_bytes(3000, index) for index in range(8)}
    for path, data in contents.items():
        (roots["uploads"] / path.split("/", 1)[1]).write_bytes(data)

    result, final = archive(tmp_path, roots)

    records = [record for record in result.records if record.kind == "file"]
    used = sorted({record.pack for record in records if record.pack is not None})
    assert len(used) >= 3
    for record in records:
        assert read_content(final, record) == contents[record.path]


def test_a_large_random_file_is_stored_after_the_probe_of_its_first_chunk(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "video.raw").write_bytes(os.urandom(9 * MIB))

    result, _ = archive(tmp_path, roots)

    assert result.records[0].stored


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("uploads/a/photo.jpg", True),
        ("uploads/a/photo.JPEG", True),
        ("uploads/backup.tar.gz", True),
        ("uploads/clip.mp4", True),
        ("uploads/report.docx", True),
        ("uploads/font.woff2", True),
        ("uploads/notes.txt", False),
        ("uploads/jpg", False),
        ("uploads/archive.zip/readme", False),
        ("configs/.gz", True),
    ],
)
def test_already_compressed_formats_are_known_by_their_extension(path: str, expected: bool) -> None:
    assert is_precompressed_name(path) is expected


def test_the_probe_finds_random_bytes_incompressible_and_text_compressible() -> None:
    assert probe_incompressible(os.urandom(64 * 1024))
    assert not probe_incompressible(text_bytes(64 * 1024))
    assert not probe_incompressible(os.urandom(511))  # too little to tell


# --- streaming -------------------------------------------------------------------------------------


def test_a_64_mib_file_is_streamed_without_holding_it_in_memory(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    big = roots["uploads"] / "big.log"
    digest = hashlib.sha256()
    text = text_bytes(MIB)
    with big.open("wb") as out:
        for index in range(64):
            chunk = b"%08d" % index + text[8:] if index % 2 else os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    entries, _ = scan_trees(roots, compile_excludes([]))

    tracemalloc.start()
    try:
        result, final = archive(tmp_path, roots, entries)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 16 * MIB
    assert result.records[0].size == 64 * MIB
    assert result.records[0].sha256 == digest.hexdigest()
    with ArchiveReader(final, password=PASSWORD) as reader, reader.open_member("uploads/big.log") as stream:
        check = hashlib.sha256()
        while chunk := stream.read(MIB):
            check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()


def test_progress_is_reported_with_the_final_totals(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "a.txt").write_bytes(b"a" * 1000)
    (roots["logs"] / "b.txt").write_bytes(b"b" * 500)
    (roots["configs"] / "d").mkdir()
    calls: list[tuple[int, int]] = []

    archive(tmp_path, roots, progress=lambda done, count: calls.append((done, count)))

    assert calls[-1] == (1500, 3)
    assert len(calls) <= 2  # at most every half second, plus the final report


# --- files that change, vanish or move -------------------------------------------------------------


def append_while_read(monkeypatch: pytest.MonkeyPatch, target: Path, times: int) -> list[int]:
    """Makes the first `times` reads of `target` append to it, as a busy writer would."""
    real_read = os.read
    inode = os.stat(target).st_ino
    reads: list[int] = []

    def read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        if os.fstat(fd).st_ino == inode:
            reads.append(len(data))
            if len(reads) <= times:
                with target.open("ab") as out:
                    out.write(b"+more")
        return data

    monkeypatch.setattr(os, "read", read)
    return reads


def test_a_file_that_changes_while_it_is_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = make_roots(tmp_path)
    target = roots["logs"] / "app.log"
    target.write_bytes(b"start")
    entries, _ = scan_trees(roots, compile_excludes([]))
    append_while_read(monkeypatch, target, times=1)

    result, final = archive(tmp_path, roots, entries)

    record = result.records[0]
    assert read_content(final, record) == b"start+more"
    assert (record.size, record.sha256) == (10, hashlib.sha256(b"start+more").hexdigest())
    assert not record.changed_while_read
    assert result.bytes_read == 5 + 10


def test_a_file_that_keeps_changing_is_recorded_as_changed_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = make_roots(tmp_path)
    target = roots["logs"] / "app.log"
    target.write_bytes(b"start")
    entries, _ = scan_trees(roots, compile_excludes([]))
    reads = append_while_read(monkeypatch, target, times=100)

    result, final = archive(tmp_path, roots, entries, attempts=3)

    record = result.records[0]
    assert record.changed_while_read
    assert len(reads) == 3  # one read per attempt, each of the size the file had then
    archived = read_content(final, record)
    assert archived == b"start+more+more"
    assert (record.size, record.sha256) == (len(archived), hashlib.sha256(archived).hexdigest())


def test_a_large_file_that_changes_while_streamed_is_recorded_as_changed_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiver, "IN_MEMORY_BYTES", 1024)
    monkeypatch.setattr(archiver, "CHUNK_BYTES", 1024)
    roots = make_roots(tmp_path)
    target = roots["logs"] / "big.log"
    original = text_bytes(4096)
    target.write_bytes(original)
    entries, _ = scan_trees(roots, compile_excludes([]))
    append_while_read(monkeypatch, target, times=100)

    result, final = archive(tmp_path, roots, entries)

    record = result.records[0]
    assert record.changed_while_read
    # The size it had when opened, not chased while it grows.
    assert read_member(final, "logs/big.log") == original
    assert (record.size, record.sha256) == (4096, hashlib.sha256(original).hexdigest())


def test_a_stable_large_file_is_not_recorded_as_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archiver, "IN_MEMORY_BYTES", 1024)
    roots = make_roots(tmp_path)
    (roots["logs"] / "big.log").write_bytes(text_bytes(5000))

    result, _ = archive(tmp_path, roots)

    assert not result.records[0].changed_while_read
    assert result.records[0].size == 5000


def test_a_file_replaced_by_a_symlink_after_the_scan_is_skipped_and_not_followed(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    victim = roots["uploads"] / "avatar.png"
    victim.write_bytes(b"png")
    entries, _ = scan_trees(roots, compile_excludes([]))
    victim.unlink()
    os.symlink(secret, victim)

    result, final = archive(tmp_path, roots, entries)

    assert result.records == []
    assert result.skipped == [Skipped("uploads/avatar.png", "changed into a link")]
    with ArchiveReader(final, password=PASSWORD) as reader:
        assert reader.names() == []


def test_a_directory_replaced_by_a_symlink_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside the tree")
    (roots["uploads"] / "d").mkdir()
    (roots["uploads"] / "d" / "f.txt").write_bytes(b"inside")
    entries, _ = scan_trees(roots, compile_excludes([]))
    (roots["uploads"] / "d" / "f.txt").unlink()
    (roots["uploads"] / "d").rmdir()
    os.symlink(outside, roots["uploads"] / "d")

    result, _ = archive(tmp_path, roots, entries)

    assert [record.path for record in result.records] == ["uploads/d"]  # the directory as scanned
    assert [item.path for item in result.skipped] == ["uploads/d/f.txt"]
    assert "changed into a link" in result.skipped[0].reason


def test_a_file_replaced_by_a_fifo_after_the_scan_is_skipped_without_blocking(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    victim = roots["uploads"] / "f.txt"
    victim.write_bytes(b"x")
    entries, _ = scan_trees(roots, compile_excludes([]))
    victim.unlink()
    os.mkfifo(victim)

    result, _ = archive(tmp_path, roots, entries)

    assert result.skipped == [Skipped("uploads/f.txt", "changed into a special file")]


def test_a_file_that_vanished_after_the_scan_is_skipped_as_vanished(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    (roots["uploads"] / "gone.txt").write_bytes(b"x")
    (roots["uploads"] / "kept.txt").write_bytes(b"y")
    entries, _ = scan_trees(roots, compile_excludes([]))
    (roots["uploads"] / "gone.txt").unlink()

    result, _ = archive(tmp_path, roots, entries)

    assert [record.path for record in result.records] == ["uploads/kept.txt"]
    assert result.skipped == [Skipped("uploads/gone.txt", "vanished")]


def test_an_unreadable_file_is_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = make_roots(tmp_path)
    (roots["configs"] / "locked.env").write_bytes(b"x")
    entries, _ = scan_trees(roots, compile_excludes([]))
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        # chmod 0 would do, but not for root, which the test container may run as.
        if path == "locked.env":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refusing_open)

    result, _ = archive(tmp_path, roots, entries)

    assert result.skipped == [Skipped("configs/locked.env", "unreadable: Permission denied")]


def test_an_entry_outside_the_given_trees_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    roots = make_roots(tmp_path)
    entries = [Entry("elsewhere/x", "file", 0o644, 0, 1)]

    with pytest.raises(ValueError, match="not in any of the trees"):
        archive(tmp_path, roots, entries)
