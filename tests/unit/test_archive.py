"""ZIP64 archives with WinZip AES-256: round trips, atomic commit, tamper detection, 7-Zip compatibility."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from isal import isal_zlib

from backup_common.engine.archive import (
    ArchiveReader,
    ArchiveWriter,
    CorruptArchive,
    WrongPassword,
    sha256_file,
)

PASSWORD = "Qm9vdHN0cmFwLXBhc3N3b3JkLWZvci10ZXN0cy0x"
MIB = 1 << 20
ZIP64_EXTRA_TAG = 0x0001


def sql_chunk(index: int) -> bytes:
    """One MiB of compressible, dump-like text."""
    line = b"INSERT INTO `orders` VALUES (%d,'customer-%d','2024-01-%02d 12:00:00',%d.99);\n"
    out = bytearray()
    row = index * 20_000
    while len(out) < MIB:
        out += line % (row, row % 977, row % 28 + 1, row % 500)
        row += 1
    return bytes(out[:MIB])


@pytest.fixture(scope="module")
def big_text() -> list[bytes]:
    return [sql_chunk(i) for i in range(20)]


def partial_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.name.endswith(".partial"))


def write_sample(path: Path, *, password: str | None, chunks: list[bytes], random_data: bytes) -> None:
    with ArchiveWriter(path, password=password) as writer:
        writer.write_member("empty.txt", b"")
        with writer.open_member("db/dump.sql") as stream:
            for chunk in chunks:
                stream.write(chunk)
        writer.write_member("media/photo.jpg", random_data, compress=False)
        writer.commit()


def read_member(reader: ArchiveReader, name: str) -> bytes:
    with reader.open_member(name) as stream:
        return stream.read()


def test_members_of_an_encrypted_archive_read_back_unchanged_in_archive_order(
    tmp_path: Path, big_text: list[bytes]
) -> None:
    path = tmp_path / "database.zip"
    random_data = os.urandom(3 * MIB + 17)

    write_sample(path, password=PASSWORD, chunks=big_text, random_data=random_data)

    with ArchiveReader(path, password=PASSWORD) as reader:
        assert reader.names() == ["empty.txt", "db/dump.sql", "media/photo.jpg"]
        assert read_member(reader, "empty.txt") == b""
        with reader.open_member("db/dump.sql") as stream:
            digest = hashlib.sha256()
            while chunk := stream.read(MIB):
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(b"".join(big_text)).digest()
        assert read_member(reader, "media/photo.jpg") == random_data


def test_member_infos_give_sizes_and_how_each_member_is_stored(tmp_path: Path, big_text: list[bytes]) -> None:
    path = tmp_path / "database.zip"
    random_data = os.urandom(MIB)
    write_sample(path, password=PASSWORD, chunks=big_text, random_data=random_data)

    with ArchiveReader(path, password=PASSWORD) as reader:
        infos = {info.name: info for info in reader.infos()}

    assert [info.name for info in reader.infos()] == reader.names()
    dump = infos["db/dump.sql"]
    assert dump.size == 20 * MIB
    assert dump.compressed
    assert dump.compressed_size < dump.size / 5
    photo = infos["media/photo.jpg"]
    assert not photo.compressed
    assert photo.size == MIB
    # Stored as is, plus the AES salt, password verifier and authentication code.
    assert photo.compressed_size == MIB + 16 + 2 + 10
    assert all(info.encrypted for info in infos.values())


def test_members_keep_their_modification_time_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "files.zip"
    mtime = 1_700_000_000.0
    with ArchiveWriter(path, password=PASSWORD) as writer:
        with writer.open_member("configs/app.ini", mtime=mtime, mode=0o100640) as stream:
            stream.write(b"[app]\n")
        writer.write_member("logs/app.log", b"started\n", mtime=1.0)
        writer.commit()

    with ArchiveReader(path, password=PASSWORD) as reader:
        config, log_file = reader.infos()

    assert config.mode == 0o640
    assert abs(config.mtime - mtime) <= 2  # ZIP keeps times to 2 seconds
    assert log_file.mode == 0o600
    assert log_file.mtime > 315_000_000  # before 1980 is not expressible; clamped, not refused


def test_an_unencrypted_archive_with_zip64_members_opens_with_the_standard_zipfile_module(
    tmp_path: Path, big_text: list[bytes]
) -> None:
    path = tmp_path / "files.zip"
    random_data = os.urandom(MIB)

    write_sample(path, password=None, chunks=big_text[:3], random_data=random_data)

    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["empty.txt", "db/dump.sql", "media/photo.jpg"]
        assert archive.read("db/dump.sql") == b"".join(big_text[:3])
        assert archive.read("media/photo.jpg") == random_data
        dump = archive.getinfo("db/dump.sql")
        assert dump.compress_type == zipfile.ZIP_DEFLATED
        assert archive.getinfo("media/photo.jpg").compress_type == zipfile.ZIP_STORED
        # Streamed members carry ZIP64 fields although they are small: their size was unknown up front.
        assert ZIP64_EXTRA_TAG in local_header_extra_tags(path, dump)


def local_header_extra_tags(path: Path, info: zipfile.ZipInfo) -> list[int]:
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        header = file.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        file.seek(name_length, os.SEEK_CUR)
        extra = file.read(extra_length)
    tags = []
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        tags.append(tag)
        extra = extra[4 + size :]
    return tags


def test_deflated_members_are_compressed_by_isal_at_the_configured_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    real = isal_zlib.compressobj

    def spy(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(isal_zlib, "compressobj", spy)
    path = tmp_path / "a.zip"
    with ArchiveWriter(path, password=PASSWORD, compression_level=3) as writer:
        writer.write_member("a.sql", sql_chunk(0))
        writer.write_member("b.bin", b"stored", compress=False)
        writer.commit()

    assert calls == [(3, isal_zlib.DEFLATED, -15)]
    with ArchiveReader(path, password=PASSWORD) as reader:
        assert read_member(reader, "a.sql") == sql_chunk(0)


@pytest.mark.parametrize("password", [None, "not the password"])
def test_an_encrypted_archive_cannot_be_read_without_its_password(tmp_path: Path, password: str | None) -> None:
    path = tmp_path / "database.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", b"secret rows")
        writer.commit()

    with ArchiveReader(path, password=password) as reader, pytest.raises(WrongPassword, match=r"dump\.sql"):
        reader.open_member("dump.sql")


def test_reading_a_missing_member_raises_key_error(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with ArchiveWriter(path, password=None) as writer:
        writer.write_member("a", b"a")
        writer.commit()

    with ArchiveReader(path, password=None) as reader, pytest.raises(KeyError):
        reader.open_member("b")


def test_the_final_name_does_not_exist_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"

    with ArchiveWriter(path, password=PASSWORD) as writer:
        with writer.open_member("dump.sql") as stream:
            stream.write(sql_chunk(0))
            assert not path.exists()
            assert partial_files(tmp_path) == [writer.temp_path]
            assert writer.temp_path.name.startswith(".database.zip.")
        assert not path.exists()
        info = writer.commit()

    assert path.exists()
    assert partial_files(tmp_path) == []
    assert info.path == path


def test_abort_removes_the_partial_file_and_leaves_no_final_file(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"
    writer = ArchiveWriter(path, password=PASSWORD)
    with writer.open_member("dump.sql") as stream:
        stream.write(sql_chunk(0))

    writer.abort()

    assert list(tmp_path.iterdir()) == []


def test_an_exception_inside_the_with_block_discards_the_archive_even_with_a_member_open(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"

    def dump_that_fails_midway() -> None:
        with ArchiveWriter(path, password=PASSWORD) as writer:
            writer.write_member("first.sql", b"complete member")
            stream = writer.open_member("dump.sql")
            stream.write(sql_chunk(0))
            raise OSError("dump failed")

    with pytest.raises(OSError, match="dump failed"):
        dump_that_fails_midway()

    assert list(tmp_path.iterdir()) == []


def test_leaving_the_with_block_without_commit_discards_the_archive(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path / "a.zip", password=None) as writer:
        writer.write_member("a", b"a")

    assert list(tmp_path.iterdir()) == []


def test_an_existing_archive_is_never_replaced_even_when_it_appears_during_writing(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", b"the second archive")
        path.write_bytes(b"the first archive")

        with pytest.raises(FileExistsError, match="refusing to replace"):
            writer.commit()

    assert path.read_bytes() == b"the first archive"
    assert partial_files(tmp_path) == []


def test_writing_over_an_existing_archive_is_refused_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"
    path.write_bytes(b"the first archive")

    with pytest.raises(FileExistsError, match="refusing to replace"):
        ArchiveWriter(path, password=PASSWORD)

    assert partial_files(tmp_path) == []


def test_commit_reports_the_size_and_sha256_of_the_final_file(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", sql_chunk(1) * 3)
        info = writer.commit()

    content = path.read_bytes()
    assert info.size == len(content) == path.stat().st_size
    assert info.sha256 == hashlib.sha256(content).hexdigest() == sha256_file(path)


def test_an_archive_is_committed_only_once_and_abort_after_commit_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with ArchiveWriter(path, password=None) as writer:
        writer.write_member("a", b"a")
        writer.commit()
        with pytest.raises(RuntimeError, match="already committed"):
            writer.commit()
        with pytest.raises(RuntimeError, match="already committed"):
            writer.write_member("b", b"b")
        writer.abort()

    assert path.exists()


def test_the_sha256_helper_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(2 * MIB + 3)
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def member_data_offset(path: Path, name: str) -> tuple[int, int]:
    """Where an encrypted member's ciphertext starts, and its length (without AES salt, verifier, HMAC)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    start = info.header_offset + 30 + name_length + extra_length + 16 + 2
    return start, info.compress_size - 16 - 2 - 10


@pytest.mark.parametrize("compress", [True, False], ids=["deflated", "stored"])
def test_a_tampered_byte_in_an_encrypted_member_is_detected_when_reading_it(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "database.zip"
    data = sql_chunk(2) if compress else os.urandom(MIB)
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", data, compress=compress)
        writer.commit()
    start, length = member_data_offset(path, "dump.sql")
    content = bytearray(path.read_bytes())
    content[start + length // 2] ^= 0x40
    path.write_bytes(content)

    with ArchiveReader(path, password=PASSWORD) as reader, pytest.raises(CorruptArchive, match=r"dump\.sql"):
        read_in_chunks(reader, "dump.sql")


def read_in_chunks(reader: ArchiveReader, name: str) -> None:
    with reader.open_member(name) as stream:
        while stream.read(64 * 1024):
            pass


def test_a_file_that_is_not_an_archive_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "database.zip"
    path.write_bytes(b"not a zip" * 100)

    with pytest.raises(CorruptArchive, match=r"database\.zip"):
        ArchiveReader(path, password=PASSWORD)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a/..",
        "dir\\file",
        "a\x00b",
        "a//b",
        "./a",
        "a//",
        "/",
        "C:/x",
        "\udcff",
    ],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    with ArchiveWriter(tmp_path / "a.zip", password=None) as writer:
        with pytest.raises(ValueError, match="member name"):
            writer.write_member(name, b"x")
        with pytest.raises(ValueError, match="member name"):
            writer.open_member(name)
        writer.write_member("still/usable.txt", b"x")
        writer.commit()


def test_a_member_name_cannot_be_used_twice(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path / "a.zip", password=None) as writer:
        writer.write_member("a.txt", b"x")

        with pytest.raises(ValueError, match="already in the archive"):
            writer.write_member("a.txt", b"y")


def test_only_one_member_can_be_open_at_a_time(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path / "a.zip", password=PASSWORD) as writer:
        stream = writer.open_member("first")
        with pytest.raises(RuntimeError, match="'first' is still open"):
            writer.open_member("second")
        with pytest.raises(RuntimeError, match="'first' is still open"):
            writer.write_member("second", b"x")
        with pytest.raises(RuntimeError, match="'first' is still open"):
            writer.commit()
        stream.close()
        writer.write_member("second", b"x")
        writer.commit()

    with ArchiveReader(tmp_path / "a.zip", password=PASSWORD) as reader:
        assert reader.names() == ["first", "second"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"password": PASSWORD, "compression_level": 4}, "compression_level"),
        ({"password": PASSWORD, "compression_level": -1}, "compression_level"),
        ({"password": "pässwort"}, "ASCII"),
        ({"password": ""}, "ASCII"),
    ],
)
def test_invalid_writer_options_are_refused(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArchiveWriter(tmp_path / "a.zip", **options)

    assert list(tmp_path.iterdir()) == []


def seven_zip() -> str | None:
    return shutil.which("7zz") or shutil.which("7z")


needs_7zip = pytest.mark.skipif(
    seven_zip() is None, reason="7-Zip is not installed (Debian package 7zip provides 7zz): `apt-get install 7zip`"
)


@needs_7zip
def test_7zip_tests_and_extracts_an_encrypted_archive_given_its_password(tmp_path: Path, big_text: list[bytes]) -> None:
    path = tmp_path / "database.zip"
    random_data = os.urandom(MIB)
    write_sample(path, password=PASSWORD, chunks=big_text[:5], random_data=random_data)

    def run_7zip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(seven_zip()), *args], capture_output=True, text=True, timeout=60, check=False)

    tested = run_7zip("t", f"-p{PASSWORD}", str(path))
    extracted = run_7zip("x", f"-p{PASSWORD}", f"-o{tmp_path / 'out'}", str(path))
    wrong = run_7zip("t", "-pwrong", str(path))

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Everything is Ok" in tested.stdout
    assert extracted.returncode == 0, extracted.stdout + extracted.stderr
    assert (tmp_path / "out" / "empty.txt").read_bytes() == b""
    assert (tmp_path / "out" / "db" / "dump.sql").read_bytes() == b"".join(big_text[:5])
    assert (tmp_path / "out" / "media" / "photo.jpg").read_bytes() == random_data
    assert wrong.returncode != 0
    assert "Wrong password" in wrong.stdout + wrong.stderr


def test_a_directory_member_ends_with_a_slash(tmp_path: Path) -> None:
    path = tmp_path / "dirs.zip"
    with ArchiveWriter(path, password=None) as writer:
        writer.write_member("uploads/empty/", b"", mode=stat.S_IFDIR | 0o750)
        writer.commit()
    with zipfile.ZipFile(path) as archive:
        [info] = archive.infolist()
    assert info.is_dir()
    assert stat.S_ISDIR(info.external_attr >> 16)


def test_every_encrypted_member_has_its_own_salt(tmp_path: Path) -> None:
    path = tmp_path / "salts.zip"
    with ArchiveWriter(path, password="pw") as writer:
        for index in range(20):
            writer.write_member(f"m{index}", b"same content", compress=False)
        writer.commit()
    salts = set()
    with path.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            handle.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", handle.read(4))
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            salts.add(handle.read(16))
    assert len(salts) == 20


def _refuse_pyzipper_key_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes sure members are decrypted through our OpenSSL decrypter, not pyzipper's own."""

    def refuse(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("pyzipper derived a key itself")

    monkeypatch.setattr("pyzipper.zipfile_aes.PBKDF2", refuse)


def test_keys_derived_by_openssl_read_every_member_back_unchanged(
    tmp_path: Path, big_text: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "files.zip"
    random_data = os.urandom(3 * MIB)
    write_sample(path, password=PASSWORD, chunks=big_text, random_data=random_data)
    _refuse_pyzipper_key_derivation(monkeypatch)

    with ArchiveReader(path, password=PASSWORD) as reader:
        assert read_member(reader, "media/photo.jpg") == random_data
        assert read_member(reader, "db/dump.sql") == b"".join(big_text)
        assert read_member(reader, "empty.txt") == b""
        assert read_member(reader, "media/photo.jpg") == random_data  # opened a second time
    with ArchiveReader(path, password=PASSWORD) as reader:
        assert read_member(reader, "db/dump.sql") == b"".join(big_text)


def test_keys_derived_by_openssl_still_refuse_a_wrong_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "database.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", b"secret rows")
        writer.commit()
    _refuse_pyzipper_key_derivation(monkeypatch)

    with ArchiveReader(path, password="not the password") as reader, pytest.raises(WrongPassword, match=r"dump\.sql"):
        reader.open_member("dump.sql")


@pytest.mark.parametrize("where", ["ciphertext", "hmac", "salt"])
@pytest.mark.parametrize("compress", [True, False], ids=["deflated", "stored"])
def test_keys_derived_by_openssl_still_detect_a_tampered_member(
    tmp_path: Path, compress: bool, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "database.zip"
    data = sql_chunk(3) if compress else os.urandom(MIB)
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", data, compress=compress)
        writer.commit()
    start, length = member_data_offset(path, "dump.sql")
    offset = {"ciphertext": start + length // 2, "hmac": start + length + 3, "salt": start - 2 - 16 + 5}[where]
    content = bytearray(path.read_bytes())
    content[offset] ^= 0x40
    path.write_bytes(content)
    _refuse_pyzipper_key_derivation(monkeypatch)

    with ArchiveReader(path, password=PASSWORD) as reader:
        with pytest.raises((CorruptArchive, WrongPassword), match=r"dump\.sql"):
            read_in_chunks(reader, "dump.sql")
        if where != "salt":
            with pytest.raises(CorruptArchive, match=r"dump\.sql"):
                read_in_chunks(reader, "dump.sql")


def test_a_damaged_deflate_stream_in_an_unencrypted_member_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "plain.zip"
    with ArchiveWriter(path, password=None) as writer:
        writer.write_member("dump.sql", sql_chunk(4))
        writer.commit()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("dump.sql")
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    start = info.header_offset + 30 + name_length + extra_length
    content = bytearray(path.read_bytes())
    for offset in range(start, start + info.compress_size, 97):
        content[offset] ^= 0xFF
    path.write_bytes(content)

    with ArchiveReader(path, password=None) as reader, pytest.raises(CorruptArchive, match=r"dump\.sql"):
        read_in_chunks(reader, "dump.sql")
