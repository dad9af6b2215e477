"""The file_backup worker through the API: a chain of backups, each restored exactly, and full backups."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)
from tests.integration.trees import TREES, trees

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


@dataclass
class System:
    gateway: Gateway
    app: Path  # holds the uploads, configs and logs trees


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[System]:
    url = source_url(settings)
    source = await make_source(url)
    app = tmp_path / "app"
    for tree in TREES:
        (app / tree).mkdir(parents=True)
    async with running_gateway(settings, **system_overrides(url, tmp_path)) as gateway:
        try:
            async with running_workers(gateway, "file_backup", "database_backup"):
                yield System(gateway, app)
        finally:
            await db.drop_database(source)


async def backup(system: System, backup_type: str) -> dict[str, Any]:
    created = await system.gateway.create(backup_type)
    return await wait_finished(system.gateway, created["id"])


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


async def restore(system: System, backup_id: str, into: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`backupctl files-restore`, as an operator runs it (in a thread: it runs its own event loop)."""
    settings = system.gateway.settings
    monkeypatch.setenv("BACKUP_MYSQL_URL", settings.mysql_url.get_secret_value())
    monkeypatch.setenv("BACKUP_STORAGE_DIR", str(settings.storage_dir))
    assert settings.master_key is not None
    monkeypatch.setenv("BACKUP_MASTER_KEY", settings.master_key.get_secret_value())
    assert await asyncio.to_thread(backupctl, ["files-restore", backup_id, "--into", str(into)]) == 0


async def test_each_backup_of_a_chain_restores_its_tree_exactly(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = system.app
    write(app / "uploads" / "photos" / "cat.jpg", secrets.token_bytes(300_000))
    write(app / "uploads" / "docs" / "zoë résumé (final).txt", "naïve café ✓\n".encode() * 1000)
    write(app / "configs" / "app.ini", b"[db]\nhost = localhost\n", 0o600)
    write(app / "configs" / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(app / "logs" / "app.log", b"GET /index 200\n" * 20_000)
    access_log = app / "logs" / "access.log"
    write(access_log, b"GET /a 200\n" * 150_000)  # 1.6 MB: grows in each incremental
    (app / "uploads" / "empty").mkdir()
    os.symlink("photos/cat.jpg", app / "uploads" / "latest.jpg")
    states = [trees(app)]
    chain = [await backup(system, "files")]

    write(app / "configs" / "app.ini", b"[db]\nhost = db.internal\n", 0o600)  # modified
    write(app / "uploads" / "docs" / "new.txt", b"added\n")  # added
    (app / "logs" / "app.log").unlink()  # deleted
    (app / "uploads" / "photos" / "cat.jpg").rename(app / "uploads" / "photos" / "kitten.jpg")  # renamed
    (app / "configs" / "run.sh").chmod(0o700)  # mode changed
    os.symlink("../configs/app.ini", app / "uploads" / "settings")  # new link
    (app / "logs" / "archive" / "2026").mkdir(parents=True)  # new empty directories
    with access_log.open("ab") as out:  # grown
        out.write(b"GET /b 404\n" * 1000)
    states.append(trees(app))
    chain.append(await backup(system, "incremental"))

    write(app / "logs" / "app.log", b"restarted\n")
    (app / "uploads" / "latest.jpg").unlink()
    os.symlink("photos/kitten.jpg", app / "uploads" / "latest.jpg")
    (app / "uploads" / "empty").rmdir()
    with access_log.open("ab") as out:
        out.write(b"GET /c 500\n" * 1000)
    states.append(trees(app))
    chain.append(await backup(system, "incremental"))

    assert [b["status"] for b in chain] == ["completed"] * 3, [b["error"] for b in chain]
    assert chain[1]["parent_id"] == chain[0]["id"]
    assert chain[2]["parent_id"] == chain[1]["id"]
    storage = system.gateway.settings.storage_dir
    for made in chain[1:]:
        (manifest,) = storage.glob(f"*/{made['id']}/files.json")
        entries = {entry["path"]: entry for entry in json.loads(manifest.read_text())["entries"]}
        assert entries["logs/access.log"]["base_size"] is not None  # only the appended lines are archived
    for index, (made, state) in enumerate(zip(chain, states, strict=True)):
        into = tmp_path / f"restored-{index}"
        await restore(system, made["id"], into, monkeypatch)
        assert trees(into) == state, f"backup {index} of the chain"


async def test_an_incremental_without_an_earlier_files_backup_is_complete_and_says_so(system: System) -> None:
    write(system.app / "uploads" / "a.txt", b"a")
    made = await backup(system, "incremental")
    assert made["status"] == "completed", made["error"]
    assert made["parent_id"] is None
    manifest = (system.gateway.settings.storage_dir / made["storage_path"] / "files.json").read_text()
    assert '"kind": "complete"' in manifest
    assert "this incremental is a complete files backup" in manifest


async def test_a_full_backup_ends_with_both_parts_and_one_manifest(system: System) -> None:
    write(system.app / "logs" / "x.log", b"line\n" * 100)
    made = await backup(system, "full")
    assert made["status"] == "completed", made["error"]
    assert sorted((p["part"], p["status"]) for p in made["parts"]) == [
        ("database", "completed"),
        ("files", "completed"),
    ]
    manifest = (system.gateway.settings.storage_dir / made["storage_path"] / "manifest.json").read_text()
    assert '"database"' in manifest
    assert '"files"' in manifest


async def test_a_backup_that_skipped_a_fifo_and_a_socket_completes_and_shows_them_as_warnings(system: System) -> None:
    uploads = system.app / "uploads"
    write(uploads / "photo.jpg", b"\xff\xd8 not much of a photo")
    os.mkfifo(uploads / "queue")
    with contextlib.chdir(uploads), socket.socket(socket.AF_UNIX) as server:
        server.bind("app.sock")  # relative: a socket's absolute path may not exceed 107 bytes

    made = await backup(system, "files")

    assert made["status"] == "completed", made["error"]
    assert sorted(made["warnings"], key=lambda warning: warning["path"]) == [
        {"part": "files", "path": "uploads/app.sock", "reason": "socket"},
        {"part": "files", "path": "uploads/queue", "reason": "fifo"},
    ]
    assert made["warning_count"] == 2
    status, page = await system.gateway.call("GET", f"{API}/list")
    assert status == 200, page
    [listed] = [found for found in page["backups"] if found["id"] == made["id"]]
    assert listed["warning_count"] == 2
    assert "warnings" not in listed


async def test_a_backup_that_skipped_nothing_shows_no_warnings(system: System) -> None:
    write(system.app / "configs" / "app.ini", b"[db]\nhost = localhost\n")

    made = await backup(system, "full")

    assert made["status"] == "completed", made["error"]
    assert (made["warnings"], made["warning_count"]) == ([], 0)
    status, page = await system.gateway.call("GET", f"{API}/list")
    assert status == 200, page
    assert [found["warning_count"] for found in page["backups"] if found["id"] == made["id"]] == [0]


async def test_a_full_backup_fails_when_one_part_fails(settings: Settings, tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "uploads").mkdir(parents=True)
    overrides: dict[str, Any] = {
        "source_mysql_url": "mysql://root@127.0.0.1:1/app",
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
        "uploads_dir": app / "uploads",
    }
    async with (
        running_gateway(settings, **overrides) as gateway,
        running_workers(gateway, "file_backup", "database_backup"),
    ):
        made = await backup(System(gateway, app), "full")
    assert made["status"] == "failed"
    assert "database part failed" in made["error"]
    assert not (gateway.settings.storage_dir / made["storage_path"] / "manifest.json").exists()
