"""The temporary files attempts at a part leave in storage, and who removes them: the next attempt,
the failure, the start-up sweep, and a JSON write that runs out of space."""

from __future__ import annotations

import errno
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_common.domain.events import BackupPart, BackupType
from backup_common.domain.model import Backup
from backup_common.engine.storage import (
    LocalStorage,
    part_partials,
    remove_failed_part,
    sweep_partials,
    write_json_durably,
)

DATABASE_LEFTOVERS = (".database.zip.k1ll3d.partial", ".database.json.partial", ".manifest.json.partial")
FILES_LEFTOVERS = (".files.zip.0th3r.partial", ".files.json.partial")


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def touch(directory: Path, *names: str, mtime: float | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"x")
        if mtime is not None:
            os.utime(directory / name, (mtime, mtime))


def test_a_parts_partials_are_its_archives_its_manifests_and_the_backup_manifests(tmp_path: Path) -> None:
    touch(tmp_path, *DATABASE_LEFTOVERS, *FILES_LEFTOVERS, "database.zip", ".database.zip")

    found = [path.name for path in part_partials(tmp_path, BackupPart.DATABASE)]

    assert found == sorted(DATABASE_LEFTOVERS)


def test_a_missing_directory_has_no_partials(tmp_path: Path) -> None:
    assert part_partials(tmp_path / "never-made", BackupPart.FILES) == []


async def test_preparing_a_part_again_removes_its_stale_archive_and_partials_but_not_another_parts(
    tmp_path: Path,
) -> None:
    local = LocalStorage(tmp_path)
    backup = Backup.request(BackupType.FULL, requested_by="alice", now=datetime(2026, 1, 2, tzinfo=UTC))
    directory = local.directory(backup)
    touch(directory, *DATABASE_LEFTOVERS, *FILES_LEFTOVERS, "database.zip", "files.zip")

    archive = await local.prepare_part(backup, BackupPart.DATABASE)

    assert archive == directory / "database.zip"
    assert names(directory) == sorted([*FILES_LEFTOVERS, "files.zip"])


def test_a_failed_part_loses_its_archive_manifest_and_partials_and_nothing_else(tmp_path: Path) -> None:
    touch(tmp_path, *DATABASE_LEFTOVERS, *FILES_LEFTOVERS, "database.zip", "database.json", "files.zip")

    removed = remove_failed_part(tmp_path, BackupPart.DATABASE)

    assert sorted(path.name for path in removed) == sorted([*DATABASE_LEFTOVERS, "database.zip", "database.json"])
    assert names(tmp_path) == sorted([*FILES_LEFTOVERS, "files.zip"])


def test_the_sweep_removes_old_partials_of_backups_not_kept_and_nothing_else(tmp_path: Path) -> None:
    old = time.time() - 3600
    touch(tmp_path / "2026-01-01" / "abandoned", *DATABASE_LEFTOVERS, "database.zip", mtime=old)
    touch(tmp_path / "2026-01-01" / "running", *DATABASE_LEFTOVERS, mtime=old)
    touch(tmp_path / "2026-01-02" / "fresh", ".database.zip.n3w.partial")  # written after the sweep began
    touch(tmp_path / "2026-01-02" / ".gone.deleting", ".files.json.partial", mtime=old)  # being removed
    (tmp_path / "stray-file").write_bytes(b"")

    removed = sweep_partials(tmp_path, lambda backup_id: backup_id == "running", time.time() - 60)

    assert sorted(path.name for path in removed) == sorted(DATABASE_LEFTOVERS)
    assert names(tmp_path / "2026-01-01" / "abandoned") == ["database.zip"]
    assert names(tmp_path / "2026-01-01" / "running") == sorted(DATABASE_LEFTOVERS)
    assert names(tmp_path / "2026-01-02" / "fresh") == [".database.zip.n3w.partial"]
    assert names(tmp_path / "2026-01-02" / ".gone.deleting") == [".files.json.partial"]


def test_the_sweep_of_a_storage_root_not_made_yet_finds_nothing(tmp_path: Path) -> None:
    assert sweep_partials(tmp_path / "not-yet", lambda _: False, time.time()) == []


def test_a_json_write_that_runs_out_of_space_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)

    with pytest.raises(OSError, match="No space left"):
        write_json_durably(tmp_path / "manifest.json", {"parts": {}})

    assert names(tmp_path) == []
