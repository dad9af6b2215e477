"""Proving an archive intact without writing anything: the file against its manifest, then every member."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.archive import ArchiveInfo, ArchiveWriter, sha256_file
from backup_common.engine.verify import check_archive_file, check_archive_members
from tests.unit.files_support import LIMITS, MIB, PASSWORD, everything, flip_bit, member_data


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"INSERT INTO t VALUES (%d, 'row %d');\n" % (len(out), rng.randrange(1 << 30))
    return bytes(out[:size])


def write(path: Path, *, password: str | None = PASSWORD, seed: int = 1) -> ArchiveInfo:
    """A database-like archive: a few deflated members (one streamed over several chunks), one stored."""
    with ArchiveWriter(path, password=password) as writer:
        writer.write_member("schema.sql", text(20_000, seed))
        with writer.open_member("data/t.sql") as stream:
            for part in range(3):
                stream.write(text(MIB, seed + part))
        writer.write_member("blob.bin", os.urandom(300_000), compress=False)
        writer.write_member("empty.sql", b"")
        return writer.commit()


@pytest.fixture
def archive(archives: Path) -> ArchiveInfo:
    return write(archives / "database.zip")


def digest_check(info: ArchiveInfo, **catalog: object) -> tuple[bool, str]:
    check = check_archive_file(info.path, size_bytes=info.size, sha256=info.sha256, **catalog)  # type: ignore[arg-type]
    assert check.name == "archive_digest"
    assert check.seconds >= 0
    return check.ok, check.detail


def members_check(path: Path, password: str | None = PASSWORD, limits: RestoreLimits = LIMITS) -> tuple[bool, str]:
    check = check_archive_members(path, password=password, limits=limits)
    assert check.name == "members_authentic"
    return check.ok, check.detail


def test_a_good_archive_passes_both_checks_and_nothing_is_written(tmp_path: Path, archive: ArchiveInfo) -> None:
    before = everything(tmp_path)

    ok, detail = digest_check(archive, catalog_size=archive.size, catalog_sha256=archive.sha256)
    assert ok, detail
    assert detail == f"{archive.size} bytes, SHA-256 {archive.sha256}, as the manifest and the catalog recorded"
    ok, detail = members_check(archive.path)
    assert ok, detail
    assert detail == f"4 members, {20_000 + 3 * MIB + 300_000} bytes read, all authentic"
    assert everything(tmp_path) == before


def test_one_flipped_bit_fails_the_digest_and_then_the_member_holding_it(archive: ArchiveInfo) -> None:
    flip_bit(archive.path, "data/t.sql")

    ok, detail = digest_check(archive)
    assert not ok
    assert "SHA-256 is " in detail
    assert f"the manifest says {archive.sha256}" in detail
    assert "the archive holds" not in detail  # same size

    # Were the manifest to carry the damaged file's digest, the HMAC still gives it away.
    damaged = check_archive_file(archive.path, size_bytes=archive.size, sha256=sha256_file(archive.path))
    assert damaged.ok, damaged.detail
    ok, detail = members_check(archive.path)
    assert not ok
    assert "member 'data/t.sql' is damaged or was tampered with" in detail
    assert "HMAC" in detail


def test_a_truncated_archive_fails_both_checks_saying_why(archive: ArchiveInfo) -> None:
    with open(archive.path, "r+b") as file:
        file.truncate(archive.size - 5000)

    ok, detail = digest_check(archive)
    assert not ok
    assert f"the archive holds {archive.size - 5000} bytes, the manifest says {archive.size}" in detail
    ok, detail = members_check(archive.path)
    assert not ok
    assert "is damaged or was tampered with" in detail


def test_bytes_cut_out_of_the_middle_of_an_archive_are_damage(archive: ArchiveInfo) -> None:
    # The central directory survives at the end, but every offset it gives is now off by 100 bytes.
    start, length = member_data(archive.path, "data/t.sql")
    content = archive.path.read_bytes()
    archive.path.write_bytes(content[: start + length // 2] + content[start + length // 2 + 100 :])

    ok, detail = members_check(archive.path)

    assert not ok
    assert "member 'schema.sql' is damaged or was tampered with: it lies outside the archive's bytes" in detail


def test_another_backups_valid_archive_put_in_its_place_is_a_sha256_mismatch(
    archives: Path, archive: ArchiveInfo
) -> None:
    other = write(archives / "other.zip", seed=2)
    shutil.copyfile(other.path, archive.path)

    ok, detail = digest_check(archive)

    assert not ok
    assert f"SHA-256 is {other.sha256}, the manifest says {archive.sha256}" in detail
    # The members of a valid archive are authentic: only the digest shows it is not this backup's.
    assert members_check(archive.path)[0]


def test_a_missing_archive_is_reported_missing(archives: Path) -> None:
    path = archives / "database.zip"

    check = check_archive_file(path, size_bytes=10, sha256="a" * 64)

    assert not check.ok
    assert check.detail == f"{path} is missing"
    assert members_check(path) == (False, f"{path} is missing")


def test_a_wrong_or_missing_password_fails_the_members_saying_so(archive: ArchiveInfo) -> None:
    ok, detail = members_check(archive.path, password="not-it")
    assert not ok
    assert detail.endswith("member 'schema.sql': wrong password")

    ok, detail = members_check(archive.path, password=None)
    assert not ok
    assert "the member is encrypted and no password was given" in detail


def test_a_member_claiming_more_than_the_compression_ratio_limit_is_refused_unread(archives: Path) -> None:
    path = archives / "bomb.zip"
    with ArchiveWriter(path, password=PASSWORD) as writer:
        writer.write_member("dump.sql", text(50_000, 3))
        writer.commit()
    # The central directory made to claim 4 GiB: reading it would fail (its data holds 50 kB), so a
    # refusal for its ratio shows nothing was decompressed first.
    with zipfile.ZipFile(path) as listing:
        directory = listing.start_dir
    with open(path, "r+b") as file:
        file.seek(directory + 24)
        file.write(struct.pack("<I", 0xFFFF_FFF0))

    ok, detail = members_check(path)

    assert not ok
    assert "member 'dump.sql' is refused: it expands 4294967280 bytes from" in detail
    assert "over the compression ratio limit of 1100" in detail


def test_members_over_the_count_or_size_limits_are_refused(archive: ArchiveInfo) -> None:
    ok, detail = members_check(archive.path, limits=RestoreLimits(max_entries=3))
    assert not ok
    assert "the archive holds 4 members, more than the limit of 3 entries" in detail

    ok, detail = members_check(archive.path, limits=RestoreLimits(max_total_bytes=MIB))
    assert not ok
    assert "over the limit of 1048576 bytes" in detail


def test_a_plain_archive_passes_on_its_crc_and_a_corrupted_member_fails_on_it(archives: Path) -> None:
    plain = write(archives / "plain.zip", password=None)
    ok, detail = members_check(plain.path, password=None)
    assert ok, detail
    assert "all intact by their CRC-32" in detail

    flip_bit(plain.path, "blob.bin")  # stored: the flipped bit reaches the content as it is

    ok, detail = members_check(plain.path, password=None)
    assert not ok
    assert "member 'blob.bin' is damaged or was tampered with: Bad CRC-32 for file 'blob.bin'" in detail


def test_a_plain_member_slipped_into_an_encrypted_archive_is_not_authentic(archive: ArchiveInfo) -> None:
    with zipfile.ZipFile(archive.path, "a") as appended:
        appended.writestr("extra.sql", b"DROP TABLE users;\n")

    ok, detail = members_check(archive.path)

    assert not ok
    assert "member 'extra.sql' is not encrypted, though the archive is: nothing authenticates it" in detail


def test_a_file_that_is_no_zip_fails_the_members(archives: Path) -> None:
    path = archives / "database.zip"
    path.write_bytes(b"not a zip at all" * 100)

    ok, detail = members_check(path)

    assert not ok
    assert re.search(r"database\.zip is damaged or was tampered with", detail)


def test_the_catalog_is_compared_too(archive: ArchiveInfo) -> None:
    ok, detail = digest_check(archive, catalog_size=archive.size + 1, catalog_sha256="0" * 64)

    assert not ok
    assert f"the archive holds {archive.size} bytes, the catalog says {archive.size + 1}" in detail
    assert f"SHA-256 is {archive.sha256}, the catalog says {'0' * 64}" in detail
    assert "the manifest says" not in detail


def test_without_a_recorded_sha256_nothing_is_proven(archive: ArchiveInfo) -> None:
    check = check_archive_file(archive.path, size_bytes=archive.size, sha256=None)

    assert not check.ok
    assert "records the archive's SHA-256" in check.detail

    only_catalog = check_archive_file(archive.path, size_bytes=None, sha256=None, catalog_sha256=archive.sha256)
    assert only_catalog.ok, only_catalog.detail


def test_a_directory_in_the_archives_place_fails(archives: Path) -> None:
    path = archives / "database.zip"
    path.mkdir()

    check = check_archive_file(path, size_bytes=1, sha256="a" * 64)

    assert (check.ok, check.detail) == (False, f"{path} is not a regular file")
    assert not members_check(path)[0]
