"""Restores through the API with real MariaDB, RabbitMQ and files: in place after damage (with its
safety backup), into another database or directory, of one table or one path, of an incremental
chain, of a damaged backup (which must leave everything as it was), and after a worker was lost."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from backup_common.domain.events import BackupPart, RestoreRequested
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.gateway_support import Gateway, running_gateway, running_workers, wait_finished
from tests.integration.source_snapshot import snapshot, snapshot_differences
from tests.integration.trees import TREES, trees

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


@dataclass
class System:
    gateway: Gateway
    source: MysqlTarget
    app: Path  # holds the uploads, configs and logs trees
    restores: Path  # BACKUP_RESTORE_DIR

    def other_database(self, role: str) -> MysqlTarget:
        return MysqlTarget(self.source_server() + f"/backup_{role}_{secrets.token_hex(4)}")

    def source_server(self) -> str:
        return self.gateway.settings.source_mysql_url.get_secret_value().rsplit("/", 1)[0]


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[System]:
    async with running_system(settings, tmp_path, "database_backup", "file_backup") as running:
        yield running


@asynccontextmanager
async def running_system(settings: Settings, tmp_path: Path, *services: str, **extra: Any) -> AsyncIterator[System]:
    """A gateway and the named services sharing one catalog, storage and exchange, over a feature-rich
    source database and three small trees with modes, times and links; ``extra`` settings on top."""
    server = settings.mysql_url.get_secret_value().rsplit("/", 1)[0]
    source = MysqlTarget(f"{server}/backup_src_{secrets.token_hex(4)}")
    await source_db.build_feature_database(source)
    app = tmp_path / "app"
    build_trees(app)
    overrides: dict[str, Any] = {
        "source_mysql_url": f"{server}/{source.database}",
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": tmp_path / "storage",
        "uploads_dir": app / "uploads",
        "configs_dir": app / "configs",
        "logs_dir": app / "logs",
        "restore_dir": tmp_path / "restores",
        "lease_seconds": 5,
        **extra,
    }
    async with running_gateway(settings, **overrides) as gateway:
        try:
            async with running_workers(gateway, *services):
                yield System(gateway, source, app, tmp_path / "restores")
        finally:
            await db.drop_database(source)


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def build_trees(app: Path) -> None:
    write(app / "uploads" / "2025" / "cat.jpg", secrets.token_bytes(200_000), 0o640, 1_700_000_000_000_000_000)
    write(app / "uploads" / "2026" / "notes (final).txt", "naïve café ✓\n".encode() * 500)
    write(app / "configs" / "app.ini", b"[db]\nhost = localhost\n", 0o600)
    write(app / "logs" / "app.log", b"GET / 200\n" * 5000)
    os.symlink("2025/cat.jpg", app / "uploads" / "latest.jpg")
    (app / "uploads" / "empty").mkdir()
    (app / "uploads").chmod(0o755)
    (app / "configs").chmod(0o750)
    for tree, when in zip(TREES, (1_600_000_000, 1_600_000_100, 1_600_000_200), strict=True):
        os.utime(app / tree, (when, when))


async def backup(system: System, backup_type: str) -> dict[str, Any]:
    made = await wait_finished(system.gateway, (await system.gateway.create(backup_type))["id"])
    assert made["status"] == "completed", made["error"]
    return made


async def restore(system: System, backup_id: str, **body: Any) -> dict[str, Any]:
    """Requests the restore and waits until it finished; returns it as the API shows it."""
    status, answer = await system.gateway.call("POST", f"{API}/{backup_id}/restore", {"confirm": backup_id, **body})
    assert status == 202, answer
    return await wait_restored(system, answer["restore"]["id"])


async def wait_restored(system: System, restore_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            status, read = await system.gateway.call("GET", f"{API}/restores/{restore_id}")
            assert status == 200, read
            if read["restore"]["status"] in ("completed", "failed"):
                return dict(read["restore"])
            await asyncio.sleep(0.2)


def assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    differences = snapshot_differences(expected, actual)
    assert not differences, "\n".join(differences[:20])


async def test_a_restore_in_place_brings_back_the_database_and_trees_after_a_safety_backup(system: System) -> None:
    database_before, trees_before = await snapshot(system.source), trees(system.app)
    made = await backup(system, "full")
    await source_db.run_on(
        system.source,
        "DELETE FROM employees WHERE id > 2",
        "DROP TABLE line_items",
        "DROP VIEW a_first_view",
        "CREATE TABLE stray (id INT PRIMARY KEY)",
        "CREATE VIEW v_stray AS SELECT 1 AS one",
    )
    (system.app / "uploads" / "2025" / "cat.jpg").unlink()
    write(system.app / "configs" / "app.ini", b"[db]\nhost = wrong\n", 0o644)
    write(system.app / "uploads" / "intruder.php", b"<?php evil();")
    damaged = await snapshot(system.source)

    restored = await restore(system, made["id"])

    assert restored["status"] == "completed", restored["error"]
    assert_same(database_before, await snapshot(system.source))
    assert trees(system.app) == trees_before
    assert restored["target"] == {"kind": "in_place", "database": None, "directory": None, "replace": False}
    safety = await wait_finished(system.gateway, restored["safety_backup_id"])
    assert (safety["status"], safety["trigger"], safety["type"]) == ("completed", "pre-restore", "full")
    parts = {part["part"]: part for part in restored["parts"]}
    assert parts["database"]["progress"]["dropped_tables"] == ["stray"]
    assert parts["database"]["progress"]["phase"] == parts["files"]["progress"]["phase"] == "done"
    # The safety backup holds what was replaced: restoring it brings the damage back.
    again = await restore(system, safety["id"], safety_backup=False)
    assert again["status"] == "completed", again["error"]
    assert_same(damaged, await snapshot(system.source))
    assert (system.app / "uploads" / "intruder.php").exists()
    audit = await system.gateway.rows(
        "SELECT target, detail FROM audit_log WHERE action = 'backup.restore' AND outcome = 'allowed'"
    )
    assert [row["target"] for row in audit] == [made["id"], safety["id"]]
    assert restored["id"] in audit[0]["detail"]


async def test_a_restore_into_another_database_or_directory_leaves_the_live_ones_alone(system: System) -> None:
    made = await backup(system, "full")
    database_before = await snapshot(system.source)
    trees_before = trees(system.app)
    await source_db.run_on(system.source, "DELETE FROM employees")
    copy = system.other_database("copy")
    directory = system.restores / "copy"
    try:
        into_database = await restore(system, made["id"], parts=["database"], target={"database": copy.database})
        into_directory = await restore(system, made["id"], parts=["files"], target={"directory": str(directory)})

        assert into_database["status"] == "completed", into_database["error"]
        assert into_database["safety_backup"] is False
        assert into_database["safety_backup_id"] is None
        assert_same(database_before, await snapshot(copy))
        assert into_directory["status"] == "completed", into_directory["error"]
        assert trees(directory) == trees_before
        assert (await snapshot(system.source))["tables"]["employees"]["rows"] == 0

        status, body = await system.gateway.call(
            "POST", f"{API}/{made['id']}/restore", {"confirm": made["id"], "target": {"database": copy.database}}
        )
        assert (status, body["error"]["code"]) == (409, "target_not_empty"), body
        status, body = await system.gateway.call(
            "POST", f"{API}/{made['id']}/restore", {"confirm": made["id"], "target": {"directory": str(directory)}}
        )
        assert (status, body["error"]["code"]) == (409, "target_not_empty"), body
        replaced = await restore(
            system, made["id"], parts=["database"], target={"database": copy.database, "replace": True}
        )
        assert replaced["status"] == "completed", replaced["error"]
    finally:
        await db.drop_database(copy)


async def test_one_table_or_one_path_is_restored_and_nothing_else(system: System) -> None:
    made = await backup(system, "full")
    before = await snapshot(system.source)
    await source_db.run_on(system.source, "DELETE FROM employees WHERE id > 1", "DELETE FROM departments WHERE id > 1")
    write(system.app / "configs" / "app.ini", b"changed", 0o644)
    write(system.app / "uploads" / "2026" / "notes (final).txt", b"changed too")
    departments_changed = (await snapshot(system.source))["tables"]["departments"]

    one_table = await restore(system, made["id"], parts=["database"], tables=["employees"])
    one_path = await restore(system, made["id"], parts=["files"], paths=["configs"])

    assert one_table["status"] == "completed", one_table["error"]
    after = await snapshot(system.source)
    assert after["tables"]["employees"] == before["tables"]["employees"]
    assert after["tables"]["departments"] == departments_changed
    assert one_path["status"] == "completed", one_path["error"]
    assert (system.app / "configs" / "app.ini").read_bytes() == b"[db]\nhost = localhost\n"
    assert stat.S_IMODE((system.app / "configs" / "app.ini").stat().st_mode) == 0o600
    assert (system.app / "uploads" / "2026" / "notes (final).txt").read_bytes() == b"changed too"


async def test_an_incremental_restores_its_whole_chain_in_place(system: System) -> None:
    await backup(system, "full")
    write(system.app / "uploads" / "2026" / "added.txt", b"added\n")
    (system.app / "logs" / "app.log").unlink()
    with (system.app / "configs" / "app.ini").open("ab") as out:
        out.write(b"port = 3306\n")
    expected = trees(system.app)
    made = await backup(system, "incremental")
    assert made["parent_id"] is not None
    write(system.app / "logs" / "app.log", b"later\n")
    (system.app / "uploads" / "2026" / "added.txt").unlink()

    restored = await restore(system, made["id"])

    assert restored["status"] == "completed", restored["error"]
    assert trees(system.app) == expected
    assert restored["parts"][0]["part"] == "files"


def inode_groups(root: Path) -> list[list[str]]:
    """The paths below ``root`` that are names of one file, for each file with several."""
    names: dict[int, list[str]] = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                names.setdefault(info.st_ino, []).append(path.relative_to(root).as_posix())
    return sorted(sorted(paths) for paths in names.values() if len(paths) > 1)


async def test_every_name_and_link_comes_back_in_place_and_through_backupctl(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = system.app / "uploads"
    latin1 = os.fsdecode(b"caf\xe9")  # not UTF-8
    write(uploads / f"{latin1}.txt", b"Latin-1 name")
    write(uploads / latin1 / "big.bin", secrets.token_bytes(2 << 20))
    write(uploads / "a\\b.txt", b"backslash")
    os.symlink("/etc", uploads / "etc")
    os.symlink("../../../../..", uploads / "up")
    write(uploads / "shared.txt", b"one file, three names")
    os.link(uploads / "shared.txt", uploads / "2026" / "also.txt")
    os.link(uploads / "shared.txt", uploads / "too.txt")
    expected, groups = trees(system.app), inode_groups(system.app)
    assert groups == [["uploads/2026/also.txt", "uploads/shared.txt", "uploads/too.txt"]]
    made = await backup(system, "files")
    (uploads / "shared.txt").unlink()
    (uploads / "etc").unlink()
    (uploads / latin1 / "big.bin").write_bytes(b"damaged")

    restored = await restore(system, made["id"])

    assert restored["status"] == "completed", restored["error"]
    assert trees(system.app) == expected
    assert inode_groups(system.app) == groups
    settings = system.gateway.settings
    monkeypatch.setenv("BACKUP_MYSQL_URL", settings.mysql_url.get_secret_value())
    monkeypatch.setenv("BACKUP_STORAGE_DIR", str(settings.storage_dir))
    assert settings.master_key is not None
    monkeypatch.setenv("BACKUP_MASTER_KEY", settings.master_key.get_secret_value())
    into = tmp_path / "offline"
    assert await asyncio.to_thread(backupctl, ["files-restore", made["id"], "--into", str(into)]) == 0
    assert trees(into) == expected
    assert inode_groups(into) == groups


async def test_a_damaged_backup_fails_the_restore_and_leaves_everything_as_it_was(system: System) -> None:
    made = await backup(system, "full")
    directory = system.gateway.settings.storage_dir / made["storage_path"]
    for name in ("database.zip", "files.zip"):
        archive = directory / name
        data = bytearray(archive.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(16)
        archive.write_bytes(bytes(data))
    await source_db.run_on(system.source, "DELETE FROM employees WHERE id > 2")
    (system.app / "configs" / "app.ini").unlink()
    database_before, trees_before = await snapshot(system.source), trees(system.app)

    restored = await restore(system, made["id"], safety_backup=False)

    assert restored["status"] == "failed"
    assert "SHA-256" in restored["error"] or "damaged" in restored["error"], restored["error"]
    assert_same(database_before, await snapshot(system.source))
    assert trees(system.app) == trees_before
    staging = f"bk_restore_{restored['id'].replace('-', '')[:16]}"
    leftovers = await system.gateway.rows(
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (staging,)
    )
    assert leftovers == []
    assert sorted(p.name for p in system.app.iterdir()) == sorted(TREES)


async def test_a_restore_whose_worker_died_is_taken_up_again_by_the_reaper_and_completed(system: System) -> None:
    made = await backup(system, "database")
    await source_db.run_on(system.source, "DELETE FROM employees")
    restore_id = str(uuid.uuid4())
    event = RestoreRequested(
        restore_id=uuid.UUID(restore_id), backup_id=uuid.UUID(made["id"]), parts=(BackupPart.DATABASE,),
        requested_by="alice",
    )  # fmt: skip
    # A restore a now-dead worker claimed, killed while loading: its lease expired, no message is
    # left, and its staging database holds half a table.
    staging = MysqlTarget(f"{system.source_server()}/bk_restore_{restore_id.replace('-', '')[:16]}")
    await db.ensure_database(staging)
    await source_db.run_on(staging, "CREATE TABLE employees (id INT)", "INSERT INTO employees VALUES (1)")
    async with db.transaction(system.gateway.pool) as conn:
        await db.execute(
            conn,
            "INSERT INTO restores (id, backup_id, status, parts, requested_by, target, created_at, updated_at)"
            " VALUES (%s, %s, 'running', '[\"database\"]', 'alice', '{\"kind\": \"in_place\"}', NOW(6), NOW(6))",
            (restore_id, made["id"]),
        )
        await db.execute(
            conn,
            "INSERT INTO restore_parts (restore_id, part, status, attempts, updated_at)"
            " VALUES (%s, 'database', 'running', 1, NOW(6))",
            (restore_id,),
        )
        await db.execute(
            conn,
            "INSERT INTO job_leases (job_key, holder, version, state, attempts, payload, claimed_at, expires_at,"
            " updated_at) VALUES (%s, 'database_backup@gone:1', 1, 'held', 1, %s, NOW(6), NOW(6), NOW(6))",
            (f"restore:{restore_id}:database", event.to_json()),
        )

    restored = await wait_restored(system, restore_id)

    assert restored["status"] == "completed", restored["error"]
    assert restored["parts"][0]["attempts"] == 2
    assert (await snapshot(system.source))["tables"]["employees"]["rows"] > 0
    left = await system.gateway.rows(
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (staging.database,)
    )
    assert left == []


async def test_backupctl_restores_through_the_gateway_and_its_offline_loader_is_audited(
    system: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made = await backup(system, "database")
    settings = system.gateway.settings
    assert settings.jwt_secret is not None
    assert settings.master_key is not None
    for name, value in {
        "BACKUP_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "BACKUP_MYSQL_URL": settings.mysql_url.get_secret_value(),
        "BACKUP_SOURCE_MYSQL_URL": settings.source_mysql_url.get_secret_value(),
        "BACKUP_STORAGE_DIR": str(settings.storage_dir),
        "BACKUP_MASTER_KEY": settings.master_key.get_secret_value(),
    }.items():
        monkeypatch.setenv(name, value)
    gateway = str(system.gateway.client.make_url("/"))
    online, offline = system.other_database("online"), system.other_database("offline")
    expected = await snapshot(system.source)
    try:
        argv = ["restore", made["id"], "--target-database", online.database, "--wait", "--gateway", gateway]
        assert await asyncio.to_thread(backupctl, argv) == 0
        argv = ["db-load", made["id"], "--into", offline.database, "--parallel", "1"]
        assert await asyncio.to_thread(backupctl, argv) == 0

        out = capsys.readouterr().out
        assert f"of backup {made['id']} requested (pending)" in out
        assert ": completed [database done 100%" in out
        assert_same(expected, await snapshot(online))
        assert_same(expected, await snapshot(offline))
        audit = await system.gateway.rows("SELECT action, actor, target FROM audit_log WHERE action LIKE 'cli.%%'")
        assert [(row["action"], row["target"]) for row in audit] == [("cli.db-load", made["id"])]
        assert audit[0]["actor"].startswith("cli:")
        restored = await system.gateway.rows(
            "SELECT actor FROM audit_log WHERE action = 'backup.restore' AND target = %s", (made["id"],)
        )
        assert restored[0]["actor"] == audit[0]["actor"].removeprefix("cli:")
    finally:
        await db.drop_database(online)
        await db.drop_database(offline)
