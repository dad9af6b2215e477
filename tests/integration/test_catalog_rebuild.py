"""`backupctl catalog rebuild`, run as an operator runs it (a process of its own), against backups the
real services made with MariaDB, RabbitMQ and files: a dropped catalog comes back whole (the API lists
the backups with their parts, downloads and restores work again), a second run changes nothing, a
deleted backup stays deleted, a manifest edited or an archive removed by hand is never `completed`,
and an off-site copy (an S3 endpoint: moto_server) rebuilds a backup whose local copy is gone, while a
tombstone keeps a deleted one out."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.offsite.s3 import s3_offsite
from backup_common.adapters.settings import Settings
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)
from tests.integration.s3_support import make_bucket, remove_bucket
from tests.integration.test_restores import build_trees, write
from tests.integration.trees import trees

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
BACKUPCTL = str(Path(sys.executable).parent / "backupctl")
# What the rebuild gives back exactly as the services recorded it (the times of the attempts are the
# manifests' own, a few milliseconds off the catalog's).
SAME_FIELDS = ("id", "type", "status", "description", "requested_by", "parent_id", "storage_path", "size_bytes",
               "created_at", "error", "warning_count")  # fmt: skip
SAME_PART_FIELDS = ("part", "status", "file_name", "size_bytes", "sha256", "item_count", "progress", "error")


@dataclass(frozen=True)
class Rebuilt:
    """What one run of the command printed, and its exit status."""

    code: int
    lines: list[str]
    errors: list[str]

    def about(self, backup_id: str) -> str:
        """The one line the run printed about the backup."""
        (line,) = [line for line in self.lines if line.startswith(f"backup {backup_id}")]
        return line

    @property
    def summary(self) -> str:
        return self.lines[-1]


def environment(settings: Settings, **variables: str) -> dict[str, str]:
    """The system's catalog, storage, master key and off-site store, and no BACKUP_* of the outer shell."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BACKUP_")}
    env["BACKUP_MYSQL_URL"] = settings.mysql_url.get_secret_value()
    env["BACKUP_STORAGE_DIR"] = str(settings.storage_dir)
    if settings.master_key is not None:
        env["BACKUP_MASTER_KEY"] = settings.master_key.get_secret_value()
    if settings.offsite_url is not None and settings.offsite_endpoint_url is not None:
        env["BACKUP_OFFSITE_URL"] = settings.offsite_url
        env["BACKUP_OFFSITE_ENDPOINT_URL"] = settings.offsite_endpoint_url
    return env | variables


async def rebuild(settings: Settings, cwd: Path, *options: str, **variables: str) -> Rebuilt:
    """`backupctl catalog rebuild`, in a process of its own (cwd: no var/secrets of a local `make run`)."""
    child = await asyncio.create_subprocess_exec(
        BACKUPCTL, "catalog", "rebuild", *options,
        cwd=cwd, env=environment(settings, **variables),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(90):  # only against a hang
        out, err = await child.communicate()
    assert child.returncode is not None
    return Rebuilt(child.returncode, out.decode().splitlines(), err.decode().splitlines())


async def completed(gateway: Gateway, backup_type: str, description: str = "") -> dict[str, Any]:
    made = await wait_finished(gateway, (await gateway.create(backup_type, description=description))["id"])
    assert made["status"] == "completed", made["error"]
    return made


async def read(gateway: Gateway, backup_id: str) -> dict[str, Any]:
    status, body = await gateway.call("GET", f"{API}/{backup_id}")
    assert status == 200, body
    return dict(body["backup"])


def same(backup: dict[str, Any]) -> dict[str, Any]:
    """What of a backup the rebuild must give back as it was."""
    return {key: backup[key] for key in SAME_FIELDS} | {
        "parts": [{key: part[key] for key in SAME_PART_FIELDS} for part in backup["parts"]]
    }


def seconds_apart(first: str, second: str) -> float:
    return abs((datetime.fromisoformat(first) - datetime.fromisoformat(second)).total_seconds())


async def download(gateway: Gateway, backup_id: str) -> bytes:
    response = await gateway.client.get(f"{API}/{backup_id}/download", headers=gateway.auth())
    assert response.status == 200, await response.text()
    return await response.read()


async def restore_into(gateway: Gateway, backup_id: str, directory: Path) -> dict[str, Any]:
    """A files restore through the API into ``directory``; the restore once it finished."""
    body = {"confirm": backup_id, "parts": ["files"], "target": {"directory": str(directory)}}
    status, answer = await gateway.call("POST", f"{API}/{backup_id}/restore", body)
    assert status == 202, answer
    async with asyncio.timeout(60):
        while True:
            status, found = await gateway.call("GET", f"{API}/restores/{answer['restore']['id']}")
            assert status == 200, found
            if found["restore"]["status"] in ("completed", "failed"):
                return dict(found["restore"])
            await asyncio.sleep(0.2)


@dataclass
class System:
    """A gateway and workers over a source database and three trees; ``overrides`` start another
    gateway on the same storage and master key (its catalog given with mysql_url)."""

    gateway: Gateway
    overrides: dict[str, Any]
    app: Path
    tmp: Path

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    def directory(self, backup: dict[str, Any]) -> Path:
        return self.settings.storage_dir / str(backup["storage_path"])

    async def forget(self, *backup_ids: str) -> None:
        """The catalog loses these backups' rows, their parts' and their off-site copies' (their data
        keys stay)."""
        marks = db.placeholders(backup_ids)
        async with db.transaction(self.gateway.pool) as conn:
            await db.execute(conn, f"DELETE FROM backups WHERE id IN ({marks})", backup_ids)
            await db.execute(conn, f"DELETE FROM offsite_copies WHERE backup_id IN ({marks})", backup_ids)


@pytest.fixture
async def source(settings: Settings) -> AsyncIterator[str]:
    """A small source database of the test's own (one table, three rows); its URL."""
    url = source_url(settings)
    target = await make_source(url)
    yield url
    await db.drop_database(target)


@pytest.fixture
async def system(settings: Settings, source: str, tmp_path: Path) -> AsyncIterator[System]:
    overrides = system_overrides(source, tmp_path) | {"lease_seconds": 5, "restore_dir": tmp_path / "restores"}
    build_trees(tmp_path / "app")
    async with (
        running_gateway(settings, **overrides) as gateway,
        running_workers(gateway, "database_backup", "file_backup"),
    ):
        yield System(gateway, overrides, tmp_path / "app", tmp_path)


async def test_a_dropped_catalog_is_rebuilt_so_that_the_api_lists_downloads_and_restores_the_backups_again(
    settings: Settings, tmp_path: Path
) -> None:
    server = settings.mysql_url.get_secret_value().rsplit("/", 1)[0]
    source = MysqlTarget(f"{server}/backup_src_{secrets.token_hex(4)}")
    await source_db.build_feature_database(source)
    app = tmp_path / "app"
    build_trees(app)
    overrides = system_overrides(f"{server}/{source.database}", tmp_path) | {
        "lease_seconds": 5,
        "restore_dir": tmp_path / "restores",
    }
    try:
        async with running_gateway(settings, **overrides) as first:
            async with running_workers(first, "database_backup", "file_backup"):
                database = await completed(first, "database", "before the upgrade")
                files = await completed(first, "files", "complete trees")
                write(app / "uploads" / "2026" / "added.txt", b"added\n")
                (app / "logs" / "app.log").unlink()
                with (app / "configs" / "app.ini").open("ab") as out:
                    out.write(b"port = 3306\n")
                expected = trees(app)
                incremental = await completed(first, "incremental", "after the changes")
            assert incremental["parent_id"] == files["id"]
            made = [database, files, incremental]
            before = {backup["id"]: await read(first, backup["id"]) for backup in made}
            catalog = first.settings
        # running_gateway dropped its catalog database on the way out: the catalog is entirely gone.
        assert await source_db.database_is_empty_or_absent(catalog.catalog)

        looked = await rebuild(catalog, tmp_path, "--dry-run")

        assert looked.code == 0, looked.errors
        assert all("would be added (local storage)" in looked.about(backup["id"]) for backup in made)
        assert looked.summary.startswith("catalog rebuild: 3 backups found in storage: 3 would be added, 0 already")
        assert looked.summary.endswith("(dry run: nothing was written)")
        assert await source_db.database_is_empty_or_absent(catalog.catalog), "a dry run writes nothing"

        rebuilt = await rebuild(catalog, tmp_path)

        assert rebuilt.code == 0, rebuilt.errors
        assert rebuilt.errors == []
        for backup in made:
            created = datetime.fromisoformat(backup["created_at"])
            assert rebuilt.about(backup["id"]) == (
                f"backup {backup['id']} ({backup['type']}, {created:%Y-%m-%d %H:%M:%S} UTC): added (local storage)"
            )
        assert rebuilt.summary == (
            "catalog rebuild: 3 backups found in storage: 3 added, 0 already in the catalog, 0 deleted (tombstone),"
            " 0 unconfirmed"
        )
        async with running_gateway(settings, **overrides, mysql_url=catalog.mysql_url.get_secret_value()) as second:
            status, page = await second.call("GET", f"{API}/list")
            assert status == 200, page
            assert [backup["id"] for backup in page["backups"]] == [incremental["id"], files["id"], database["id"]]
            for backup in made:
                back = await read(second, backup["id"])
                assert same(back) == same(before[backup["id"]])
                assert seconds_apart(back["completed_at"], before[backup["id"]]["completed_at"]) < 5
                archive = second.settings.storage_dir / backup["storage_path"] / backup["parts"][0]["file_name"]
                assert await download(second, backup["id"]) == archive.read_bytes()
            keys = await second.rows("SELECT backup_id, key_id FROM data_keys ORDER BY backup_id")
            assert sorted(row["backup_id"] for row in keys) == sorted(backup["id"] for backup in made)
            audit = await second.rows("SELECT actor, detail FROM audit_log WHERE action = 'cli.catalog-rebuild'")
            assert [json.loads(row["detail"])["added"] for row in audit] == [3]

            async with running_workers(second, "file_backup"):
                restored = await restore_into(second, incremental["id"], tmp_path / "restores" / "after")
            assert restored["status"] == "completed", restored["error"]
            assert trees(tmp_path / "restores" / "after") == expected

            listed = [await read(second, backup["id"]) for backup in made]
            again = await rebuild(catalog, tmp_path)

            assert again.code == 0, again.errors
            assert [again.about(backup["id"]) for backup in made] == [
                f"backup {backup['id']}: already in the catalog (completed)" for backup in made
            ]
            assert again.summary.startswith("catalog rebuild: 3 backups found in storage: 0 added, 3 already")
            assert [await read(second, backup["id"]) for backup in made] == listed, "a second run changes nothing"
    finally:
        await db.drop_database(source)


async def test_a_backup_deleted_through_the_api_stays_deleted_even_when_a_copy_of_its_directory_survived(
    settings: Settings, source: str, tmp_path: Path
) -> None:
    # No catch-up firing of the default schedule while the retention service runs.
    overrides = system_overrides(source, tmp_path) | {"lease_seconds": 5, "schedule_catch_up_minutes": 0}
    async with running_gateway(settings, **overrides) as gateway:
        async with running_workers(gateway, "database_backup", "retention"):
            doomed = await completed(gateway, "database")
            kept = await completed(gateway, "database")
            directory = gateway.settings.storage_dir / doomed["storage_path"]
            survivor = tmp_path / "survivor"
            shutil.copytree(directory, survivor)
            status, body = await gateway.call("DELETE", f"{API}/{doomed['id']}")
            assert status == 202, body
            async with asyncio.timeout(60):
                while True:
                    if (await read(gateway, doomed["id"]))["status"] == "deleted":
                        break
                    await asyncio.sleep(0.2)
        assert not directory.exists()
        shutil.copytree(survivor, directory)  # a copy that survived somewhere, put back
        async with db.transaction(gateway.pool) as conn:
            await db.execute(conn, "DELETE FROM backups WHERE id = %s", (kept["id"],))

        rebuilt = await rebuild(gateway.settings, tmp_path)

        assert rebuilt.code == 0, rebuilt.errors
        assert rebuilt.about(doomed["id"]) == f"backup {doomed['id']}: already in the catalog (deleted)"
        assert rebuilt.about(kept["id"]).endswith(": added (local storage)")
        assert (await read(gateway, doomed["id"]))["status"] == "deleted"
        assert (await read(gateway, kept["id"]))["status"] == "completed"
        assert await gateway.rows("SELECT backup_id FROM data_keys WHERE backup_id = %s", (doomed["id"],)) == []


async def test_a_manifest_edited_or_an_archive_removed_by_hand_is_reported_unconfirmed_and_never_completed(
    system: System,
) -> None:
    intact = await completed(system.gateway, "database", "intact")
    edited = await completed(system.gateway, "database", "edited")
    emptied = await completed(system.gateway, "database", "emptied")
    manifest = system.directory(edited) / "manifest.json"
    document = json.loads(manifest.read_text())
    document["backup"]["description"] = "nothing to see here"
    manifest.write_text(json.dumps(document))
    (system.directory(emptied) / "database.zip").unlink()
    await system.forget(intact["id"], edited["id"], emptied["id"])

    rebuilt = await rebuild(system.settings, system.tmp)

    assert rebuilt.code == 1, rebuilt.errors
    assert rebuilt.about(intact["id"]).endswith(": added (local storage)")
    assert rebuilt.about(edited["id"]).endswith(
        ": unconfirmed: the manifest's MAC does not match: it was edited, or belongs to another backup; added as failed"
    )
    assert rebuilt.about(emptied["id"]).endswith(
        ": unconfirmed: database.zip is missing (local storage); added as failed"
    )
    assert rebuilt.summary == (
        "catalog rebuild: 3 backups found in storage: 1 added, 0 already in the catalog, 0 deleted (tombstone),"
        " 2 unconfirmed"
    )
    assert (await read(system.gateway, intact["id"]))["status"] == "completed"
    for backup, reason in ((edited, "the manifest's MAC does not match"), (emptied, "database.zip is missing")):
        found = await read(system.gateway, backup["id"])
        assert found["status"] == "failed"
        assert found["error"].startswith("rebuilt from storage: ")
        assert reason in found["error"]
        status, body = await system.gateway.call("GET", f"{API}/{backup['id']}/download")
        assert (status, body["error"]["code"]) == (409, "backup_not_completed")
    (part,) = (await read(system.gateway, emptied["id"]))["parts"]
    assert (part["status"], part["error"]) == (
        "failed",
        "rebuilt from storage: database.zip is missing (local storage)",
    )


async def test_a_backup_whose_archives_are_not_encrypted_is_authenticated_and_rebuilt_too(system: System) -> None:
    status, body = await system.gateway.call("PATCH", f"{API}/settings", {"encryption": {"enabled": False}})
    assert status == 200, body
    plain = await completed(system.gateway, "database", "not encrypted")
    manifest = json.loads((system.directory(plain) / "manifest.json").read_text())
    assert manifest["encryption"]["scheme"] == "none"
    await system.forget(plain["id"])

    rebuilt = await rebuild(system.settings, system.tmp)

    assert rebuilt.code == 0, (rebuilt.lines, rebuilt.errors)
    assert rebuilt.about(plain["id"]).endswith(": added (local storage)")
    assert same(await read(system.gateway, plain["id"])) == same(plain)


async def test_an_incremental_whose_parent_cannot_be_confirmed_is_not_completed_either(system: System) -> None:
    base = await completed(system.gateway, "files")
    write(system.app / "configs" / "new.ini", b"new\n")
    incremental = await completed(system.gateway, "incremental")
    (system.directory(base) / "files.zip").write_bytes(b"not the archive")
    await system.forget(base["id"], incremental["id"])

    rebuilt = await rebuild(system.settings, system.tmp)

    assert rebuilt.code == 1
    assert "files.zip is 15 bytes, not the" in rebuilt.about(base["id"])
    assert rebuilt.about(incremental["id"]).endswith(
        f": unconfirmed: its parent backup {base['id']} is failed; added as failed"
    )
    found = await read(system.gateway, incremental["id"])
    assert (found["status"], found["parent_id"]) == ("failed", base["id"])


async def test_without_a_master_key_the_rebuild_does_nothing_and_says_so_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    catalog = settings.model_copy(update={"master_key": None})

    rebuilt = await rebuild(catalog, tmp_path)

    assert (rebuilt.code, rebuilt.lines) == (2, [])
    assert rebuilt.errors == [
        "backupctl catalog rebuild: BACKUP_MASTER_KEY or BACKUP_MASTER_KEY_FILE is required to check the backups'"
        " manifests"
    ]


@pytest.fixture
async def offsite_system(settings: Settings, source: str, tmp_path: Path, moto_endpoint: str) -> AsyncIterator[System]:
    """A system with an off-site store; no copier runs (no retention service): the test copies."""
    bucket = await make_bucket(moto_endpoint)
    overrides = system_overrides(source, tmp_path) | {
        "lease_seconds": 5,
        "offsite_url": f"s3://{bucket}/rebuild-test",
        "offsite_endpoint_url": moto_endpoint,
    }
    try:
        async with running_gateway(settings, **overrides) as gateway, running_workers(gateway, "database_backup"):
            yield System(gateway, overrides, tmp_path / "app", tmp_path)
    finally:
        await remove_bucket(moto_endpoint, bucket)


async def test_a_backup_only_the_off_site_store_holds_is_rebuilt_as_copied_and_a_tombstone_keeps_one_out(
    offsite_system: System,
) -> None:
    system = offsite_system
    away = await completed(system.gateway, "database", "only off-site now")
    deleted = await completed(system.gateway, "database", "deleted, its objects kept by Object Lock")
    both = await completed(system.gateway, "database", "in both places")
    edited = await completed(system.gateway, "database", "edited locally")
    store = s3_offsite(system.settings)
    assert store is not None
    try:
        for backup in (away, deleted, both, edited):
            directory = system.directory(backup)
            names = sorted(path.name for path in directory.iterdir())
            await store.upload(backup["storage_path"], directory, names)
        await store.mark_deleted(deleted["id"])
        location = store.location(away["storage_path"])
    finally:
        await store.close()
    archive = system.directory(away) / "database.zip"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    shutil.rmtree(system.directory(away))
    shutil.rmtree(system.directory(deleted))
    manifest = system.directory(edited) / "manifest.json"
    manifest.write_text(manifest.read_text().replace("edited locally", "edited by hand"))
    await system.forget(away["id"], deleted["id"], both["id"], edited["id"])

    rebuilt = await rebuild(system.settings, system.tmp)

    assert rebuilt.code == 0, rebuilt.errors
    assert rebuilt.about(away["id"]).endswith(": added (off-site)")
    assert rebuilt.about(both["id"]).endswith(": added (local storage and off-site)")
    assert rebuilt.about(deleted["id"]) == (
        f"backup {deleted['id']}: deleted (tombstone in the off-site store); not added"
    )
    assert rebuilt.about(edited["id"]).endswith(
        ": added (off-site); note: the local storage manifest.json differs from the authentic one"
    )
    found = await read(system.gateway, away["id"])
    assert (found["status"], found["parts"][0]["sha256"]) == ("completed", digest)
    found = await read(system.gateway, edited["id"])
    assert (found["status"], found["description"]) == ("completed", "edited locally"), "the authentic manifest's"
    status, _ = await system.gateway.call("GET", f"{API}/{deleted['id']}")
    assert status == 404
    copies = {
        row["backup_id"]: row
        for row in await system.gateway.rows(
            "SELECT backup_id, status, location, copied_at, local_removed_at FROM offsite_copies"
        )
    }
    assert set(copies) == {away["id"], both["id"], edited["id"]}
    assert (copies[away["id"]]["status"], copies[away["id"]]["location"]) == ("copied", location)
    assert copies[away["id"]]["copied_at"] is not None
    assert copies[away["id"]]["local_removed_at"] is not None, "no local copy for housekeeping to expire"
    assert copies[both["id"]]["local_removed_at"] is None


async def test_an_off_site_store_that_cannot_be_read_stops_the_rebuild_before_the_catalog_is_touched(
    settings: Settings, tmp_path: Path, moto_endpoint: str
) -> None:
    # moto_endpoint for its dummy credentials alone: no request is ever signed with real ones.
    server = settings.mysql_url.get_secret_value().rsplit("/", 1)[0]
    catalog = MysqlTarget(f"{server}/backup_rebuilt_{secrets.token_hex(4)}")

    rebuilt = await rebuild(
        settings,
        tmp_path,
        BACKUP_MYSQL_URL=f"{server}/{catalog.database}",
        BACKUP_STORAGE_DIR=str(tmp_path),
        BACKUP_MASTER_KEY=system_overrides("", tmp_path)["master_key"],
        BACKUP_OFFSITE_URL="s3://nowhere/backups",
        BACKUP_OFFSITE_ENDPOINT_URL="http://127.0.0.1:1",  # nothing listens on port 1
    )

    assert (rebuilt.code, rebuilt.lines) == (2, [])
    (line,) = rebuilt.errors
    assert line.startswith("backupctl catalog rebuild: cannot read the off-site store (BACKUP_OFFSITE_URL): listing")
    assert "could not connect to the endpoint http://127.0.0.1:1" in line
    assert await source_db.database_is_empty_or_absent(catalog), "not even migrated"
