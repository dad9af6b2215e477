"""Restoring from packs: the manifest places every file, and whatever the tar headers say is never trusted."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from backup_common.engine.archive import ArchiveWriter, CorruptArchive
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.model import FileRecord
from backup_common.engine.files.packs import PackReader
from backup_common.engine.files.restore import ChainLink, IntegrityError
from tests.unit.files_support import (
    LIMITS,
    PASSWORD,
    Dir,
    File,
    Link,
    Tree,
    assert_refused_without_writing,
    everything,
    full,
    snapshot,
)

TREE: Tree = {
    "uploads/docs": Dir(0o750),
    "uploads/docs/a.txt": File(b"alpha\n" * 100),
    "uploads/docs/b.txt": File(b"bravo\n" * 200, 0o600),
    "uploads/latest": Link("docs/a.txt"),
    "configs/app.ini": File(b"[app]\n"),
}


def packed(archives: Path) -> ChainLink:
    return full(archives, "b1", TREE, packed=True)


def entry(link: ChainLink, path: str) -> dict[str, Any]:
    return next(item for item in link.manifest["entries"] if item["path"] == path)


def test_a_packed_backup_has_a_single_member_and_restores_exactly(tmp_path: Path, archives: Path) -> None:
    link = packed(archives)
    assert {item["pack"] for item in link.manifest["entries"]} == {"packs/000001.tar"}

    restore_chain([link], tmp_path / "restored", LIMITS)

    assert snapshot(tmp_path / "restored") == TREE


def test_files_whose_content_overlaps_in_a_pack_are_refused(tmp_path: Path, archives: Path) -> None:
    link = packed(archives)
    entry(link, "uploads/docs/b.txt")["offset"] = entry(link, "uploads/docs/a.txt")["offset"] + 10

    assert_refused_without_writing(tmp_path, [link], "its content overlaps another in 'packs/000001.tar'")


def test_content_placed_past_the_end_of_its_pack_is_refused(tmp_path: Path, archives: Path) -> None:
    link = packed(archives)
    entry(link, "configs/app.ini")["offset"] = 1 << 30

    assert_refused_without_writing(tmp_path, [link], "past the")


@pytest.mark.parametrize("pack", ["../packs/000001.tar", "uploads/docs/a.txt", "packs/1.tar", 7])
def test_a_pack_name_that_is_not_one_is_refused(tmp_path: Path, archives: Path, pack: object) -> None:
    link = packed(archives)
    entry(link, "uploads/docs/a.txt")["pack"] = pack

    assert_refused_without_writing(tmp_path, [link], "is not the name of a pack")


def test_a_pack_missing_from_the_archive_is_refused(tmp_path: Path, archives: Path) -> None:
    link = packed(archives)
    entry(link, "configs/app.ini")["pack"] = "packs/000009.tar"

    assert_refused_without_writing(tmp_path, [link], "has no member 'packs/000009.tar'")


def test_a_pack_no_entry_names_is_refused(tmp_path: Path, archives: Path) -> None:
    link = packed(archives)
    for item in link.manifest["entries"]:
        if item["kind"] == "file":
            item["pack"] = item["offset"] = None
    link.manifest["entries"] = [item for item in link.manifest["entries"] if item["kind"] == "dir"]
    link.manifest["entries"][0]["pack"] = None

    assert_refused_without_writing(tmp_path, [link], "member 'packs/000001.tar' is not listed in the manifest")


@pytest.mark.parametrize(
    ("path", "change", "rule"),
    [
        ("uploads/docs/a.txt", {"offset": None}, "needs the offset of its content"),
        ("uploads/docs/a.txt", {"offset": -1}, "needs the offset of its content"),
        ("uploads/docs", {"offset": 0}, "only a file's content has an offset"),
        ("uploads/docs/a.txt", {"pack": None}, "has an offset but no pack"),
        ("uploads/docs/a.txt", {"size": -5}, "size must be a non-negative integer"),
    ],
)
def test_a_placement_that_makes_no_sense_is_refused(
    tmp_path: Path, archives: Path, path: str, change: dict[str, Any], rule: str
) -> None:
    link = packed(archives)
    entry(link, path).update(change)

    assert_refused_without_writing(tmp_path, [link], rule)


def test_a_pack_member_that_is_not_a_file_is_refused(tmp_path: Path, archives: Path) -> None:
    archive = archives / "b1.zip"
    with ArchiveWriter(archive, password=PASSWORD) as writer:
        writer.write_member("packs/000001.tar", b"\0" * 1024, mode=stat.S_IFLNK | 0o777)
        writer.commit()
    item = FileRecord("uploads/d", "dir", 0o755, 0, 0, None, pack="packs/000001.tar")
    manifest = {"entries": [vars(item)], "deleted": [], "state": [vars(item)]}

    assert_refused_without_writing(
        tmp_path, [ChainLink("b1", archive, PASSWORD, manifest)], "pack 'packs/000001.tar' is refused"
    )


def test_a_wrong_offset_is_an_integrity_error_and_leaves_nothing_under_the_file_name(
    tmp_path: Path, archives: Path
) -> None:
    link = packed(archives)
    entry(link, "uploads/docs/b.txt")["offset"] -= 512  # its tar header, not its content
    target = tmp_path / "restored"

    with pytest.raises(IntegrityError, match=re.escape("'uploads/docs/b.txt' does not match its manifest")):
        restore_chain([link], target, LIMITS)
    assert not target.exists()


def test_names_in_a_pack_are_never_used_only_the_manifest_paths(tmp_path: Path, archives: Path) -> None:
    """A pack whose tar entries are named to escape (and to be links out) restores only what the
    manifest places, under the manifest's paths."""
    content = b"what the manifest calls uploads/a.txt\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link_out = tarfile.TarInfo("../../escape-link")
        link_out.type = tarfile.SYMTYPE
        link_out.linkname = "/etc"
        tar.addfile(link_out)
        escaping = tarfile.TarInfo("../../escaped.txt")
        escaping.size = len(content)
        tar.addfile(escaping, io.BytesIO(content))
    data = buffer.getvalue()
    offset = data.index(content)
    archive = archives / "b1.zip"
    with ArchiveWriter(archive, password=PASSWORD) as writer:
        writer.write_member("packs/000001.tar", data)
        writer.commit()
    item = vars(FileRecord("uploads/a.txt", "file", 0o644, 0, len(content), hashlib.sha256(content).hexdigest()))
    item.update(pack="packs/000001.tar", offset=offset)
    state = {key: value for key, value in item.items() if key not in ("pack", "offset")}
    link = ChainLink("b1", archive, PASSWORD, {"entries": [item], "deleted": [], "state": [state]})
    before = everything(tmp_path)

    restore_chain([link], tmp_path / "restored", LIMITS)

    assert snapshot(tmp_path / "restored") == {"uploads/a.txt": File(content, 0o644, 0)}
    after = everything(tmp_path)
    assert {path for path in after if not path.startswith("restored")} == set(before)


def test_the_pack_reader_skips_headers_and_stops_at_a_short_pack() -> None:
    stream = io.BytesIO(b"HEADERaaaPADbbbb")
    reader = PackReader(stream, "pack")

    assert b"".join(reader.content(6, 3)) == b"aaa"
    assert b"".join(reader.content(12, 4)) == b"bbbb"
    with pytest.raises(ValueError, match="behind the position"):
        list(reader.content(0, 1))
    with pytest.raises(CorruptArchive, match="ends before the content its manifest places in it"):
        list(PackReader(io.BytesIO(b"short"), "pack").content(2, 10))
