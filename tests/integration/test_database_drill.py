"""Restore drills against a real server (engine/database/drill.py).

The proof that the drill tells a restorable backup from a damaged one: a dump of the feature database
passes it, every table matching the dump's digest, and the digests do not depend on how the dump split
its reading; a changed row, a changed count, a view that cannot be created, a damaged member, a wrong
key each fail it, naming what failed; an old manifest without digests passes on row counts and says
so; the scratch database is gone afterwards whatever happened; and the sweep drops only the leftovers
it is allowed to.
"""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.domain.verification import Check
from backup_common.engine.archive import ArchiveReader, ArchiveWriter
from backup_common.engine.database.drill import DRILL_PREFIX, restore_drill, sweep_scratch_databases
from backup_common.engine.database.dump import dump_database
from backup_common.engine.database.manifest import database_part_manifest
from backup_common.engine.database.model import DumpOptions
from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.source_db import BIG_TABLE
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.integration

PASSWORD = "drill; 'key' \\ 9"
# Small pieces, so the big table is split over several members.
SMALL_PIECES = DumpOptions(member_bytes=1 << 20, statement_bytes=64 << 10)
HEX_DIGEST = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: dict[str, Any]


async def dumped(source: MysqlTarget, path: Path, options: DumpOptions) -> Backup:
    started = time.time()
    result = await dump_database(AsyncmySqlServer(source), path, password=PASSWORD, options=options)
    manifest = database_part_manifest(
        result, file_name=path.name, source=source, options=options, encryption={}, started_at=started,
        finished_at=time.time(),
    )  # fmt: skip
    return Backup(path, manifest)


@pytest.fixture(scope="module")
async def backup(feature_source: MysqlTarget, tmp_path_factory: pytest.TempPathFactory) -> Backup:
    """The feature database dumped once, encrypted, with its part manifest."""
    return await dumped(feature_source, tmp_path_factory.mktemp("drill-dump") / "database.zip", SMALL_PIECES)


@pytest.fixture
async def scratch(servers: ServiceEndpoints) -> AsyncIterator[str]:
    """A scratch database name as the verification service makes one; dropped at the end should a
    test leave it."""
    name = f"{DRILL_PREFIX}{secrets.token_hex(6)}"
    yield name
    await drop_quietly(MysqlTarget(servers.mysql_url(name)))


@pytest.fixture
def server(servers: ServiceEndpoints) -> AsyncmySqlServer:
    """The test server, through the engine's port; its own database is never touched by a drill."""
    return AsyncmySqlServer(MysqlTarget(servers.mysql_url(f"backup_unused_{secrets.token_hex(5)}")))


async def drop_quietly(target: MysqlTarget) -> None:
    conn = await source_db.connect(target, database=False)
    try:
        await source_db.run(
            conn, "SET SESSION foreign_key_checks = 0", f"DROP DATABASE IF EXISTS {quote_identifier(target.database)}"
        )
    finally:
        await conn.ensure_closed()


async def database_exists(server: AsyncmySqlServer, name: str) -> bool:
    conn = await server.connect(None)
    try:
        found = await conn.fetch_one(
            "SELECT 1 AS found FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        )
        return found is not None
    finally:
        conn.close()


async def drill(
    backup: Backup, server: AsyncmySqlServer, scratch: str, *, manifest: dict[str, Any] | None = None, **options: Any
) -> Check:
    check = await restore_drill(
        backup.path, backup.manifest if manifest is None else manifest, server, scratch, password=PASSWORD, **options
    )
    assert check.name == "restore_drill"
    assert check.seconds > 0
    assert not await database_exists(server, scratch), f"the drill left {scratch} behind"
    return check


def rewrite_archive(backup: Backup, path: Path, change: Callable[[str, bytes], bytes]) -> Backup:
    """A copy of the archive, written and encrypted anew, with each member passed through ``change``;
    with the same manifest."""
    with ArchiveReader(backup.path, password=PASSWORD) as reader, ArchiveWriter(path, password=PASSWORD) as writer:
        for name in reader.names():
            with reader.open_member(name) as stream:
                data = stream.read()
            writer.write_member(name, change(name, data))
        writer.commit()
    return Backup(path, backup.manifest)


def entry_of(manifest: dict[str, Any], table: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = manifest["tables"]
    (entry,) = [entry for entry in entries if entry["name"] == table]
    return entry


# --- passing ---------------------------------------------------------------------------------------


async def test_a_dump_of_the_feature_database_passes_the_drill_with_every_digest_matching(
    backup: Backup, feature_snapshot: dict[str, Any], server: AsyncmySqlServer, scratch: str
) -> None:
    tables = feature_snapshot["tables"]

    check = await drill(backup, server, scratch)

    assert check.ok, check.detail
    assert all(HEX_DIGEST.fullmatch(entry["digest"]) for entry in backup.manifest["tables"])
    assert check.detail == (
        f"loaded {len(tables)} tables, {sum(t['rows'] for t in tables.values())} rows,"
        f" {len(feature_snapshot['views'])} views, {len(feature_snapshot['routines'])} routines,"
        f" {len(feature_snapshot['triggers'])} triggers, 1 event into a scratch database;"
        " every table's rows match the dump's digest"
    )


async def test_a_leftover_scratch_database_of_the_same_name_is_dropped_first(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    conn = await server.connect(None)
    try:
        await conn.execute(f"CREATE DATABASE {quote_identifier(scratch)}")
        await conn.execute(f"CREATE TABLE {quote_identifier(scratch)}.`order` (id INT PRIMARY KEY)")
        await conn.execute(f"CREATE TABLE {quote_identifier(scratch)}.stray (id INT PRIMARY KEY)")
    finally:
        conn.close()

    check = await drill(backup, server, scratch, parallelism=1)

    assert check.ok, check.detail


async def test_the_digests_do_not_depend_on_how_the_dump_split_its_reading(
    feature_source: MysqlTarget, tmp_path: Path
) -> None:
    # Each table read whole, by one connection.
    one = await dumped(feature_source, tmp_path / "one.zip", DumpOptions(parallelism=1, member_bytes=1 << 30))
    # Many small key ranges of the big table, read by two connections in whatever order they finish.
    split = await dumped(feature_source, tmp_path / "split.zip", DumpOptions(parallelism=2, member_bytes=64 << 10))

    assert len(entry_of(one.manifest, BIG_TABLE)["members"]) == 1
    assert len(entry_of(split.manifest, BIG_TABLE)["members"]) > 10
    digests = {entry["name"]: entry["digest"] for entry in one.manifest["tables"]}
    assert {entry["name"]: entry["digest"] for entry in split.manifest["tables"]} == digests


async def test_a_manifest_without_digests_passes_on_row_counts_and_says_so(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    # As a backup made before digests were recorded describes itself.
    manifest = copy.deepcopy(backup.manifest)
    del manifest["row_digest"]
    for entry in manifest["tables"]:
        del entry["digest"]

    check = await drill(backup, server, scratch, manifest=manifest)

    assert check.ok, check.detail
    assert check.detail.endswith(
        "; every table's row count matches the dump's; the manifest records no row digests"
        " (the backup was made before they were), so rows were not compared"
    )


# --- failing -----------------------------------------------------------------------------------------


async def test_a_changed_row_value_fails_the_drill_naming_the_table(
    backup: Backup, server: AsyncmySqlServer, scratch: str, tmp_path: Path
) -> None:
    members = set(entry_of(backup.manifest, "order")["members"])

    def change(name: str, data: bytes) -> bytes:
        if name not in members:
            return data
        assert data.count(b"'bob'") == 1
        return data.replace(b"'bob'", b"'bib'")  # same row count, one value changed

    changed = await asyncio.to_thread(rewrite_archive, backup, tmp_path / "changed.zip", change)

    check = await drill(changed, server, scratch)

    assert not check.ok
    assert re.fullmatch(
        rf"table order: rows differ from what the dump read \(digest [0-9a-f]{{32}},"
        rf" the dump's {entry_of(backup.manifest, 'order')['digest']}\)",
        check.detail,
    ), check.detail


async def test_a_tampered_digest_or_row_count_in_the_manifest_fails_the_drill_naming_the_tables(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    manifest = copy.deepcopy(backup.manifest)
    entry_of(manifest, "employees")["digest"] = "0" * 32
    rows = entry_of(manifest, "order")["rows"]
    entry_of(manifest, "order")["rows"] = rows + 1

    check = await drill(backup, server, scratch, manifest=manifest)

    assert not check.ok
    digest = entry_of(backup.manifest, "employees")["digest"]
    problems = check.detail.split("; ")
    assert sorted(problems) == sorted(
        [
            f"table employees: rows differ from what the dump read (digest {digest}, the dump's {'0' * 32})",
            f"table order: {rows} rows, the dump read {rows + 1}",
        ]
    ), check.detail


async def test_rows_that_differ_on_another_server_version_than_the_dumps_say_it_may_be_the_rendering(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    manifest = copy.deepcopy(backup.manifest)
    manifest["server_version"] = "5.5.0-older"
    entry_of(manifest, "employees")["digest"] = "0" * 32

    check = await drill(backup, server, scratch, manifest=manifest)

    assert not check.ok
    assert check.detail.startswith("table employees: rows differ from what the dump read"), check.detail
    note = r"; note: the dump was read by server 5\.5\.0-older, the drill by \S+, which may render values differently$"
    assert re.search(note, check.detail), check.detail


async def test_a_view_that_cannot_be_created_fails_the_drill_naming_it(
    backup: Backup, server: AsyncmySqlServer, scratch: str, tmp_path: Path
) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name != "4-views.sql":
            return data
        delimiter = re.search(rb"^DELIMITER (\S+)$", data, re.MULTILINE)
        assert delimiter is not None
        broken = b"CREATE VIEW `v_broken` AS SELECT nope FROM no_such_table" + delimiter[1] + b"\nDELIMITER ;\n"
        head, tail = data.rsplit(b"DELIMITER ;\n", 1)
        return head + broken + tail

    broken = await asyncio.to_thread(rewrite_archive, backup, tmp_path / "broken.zip", change)

    check = await drill(broken, server, scratch)

    assert not check.ok
    assert re.fullmatch(r"view v_broken could not be created: Table '\S+no_such_table' doesn't exist", check.detail), (
        check.detail
    )


async def test_a_member_that_fails_authentication_fails_the_drill_with_the_reason(
    backup: Backup, server: AsyncmySqlServer, scratch: str, tmp_path: Path
) -> None:
    path = tmp_path / "damaged.zip"
    shutil.copyfile(backup.path, path)
    with pyzipper.AESZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    middle = largest.header_offset + 200 + largest.compress_size // 2
    for offset in range(middle, middle + 16):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    check = await drill(Backup(path, backup.manifest), server, scratch)

    assert not check.ok
    assert check.detail.startswith(
        f"member {largest.filename} failed authentication: the archive is damaged or the key is wrong"
    ), check.detail


async def test_a_wrong_key_fails_the_drill_before_anything_is_loaded(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    check = await restore_drill(backup.path, backup.manifest, server, scratch, password="not the key")

    assert not check.ok
    assert re.fullmatch(r"member \S+ cannot be decrypted: the password is wrong or missing", check.detail)
    assert not await database_exists(server, scratch)


async def test_a_drill_cancelled_while_loading_drops_the_scratch_database(
    backup: Backup, server: AsyncmySqlServer, scratch: str
) -> None:
    task = asyncio.create_task(drill(backup, server, scratch))
    for _ in range(600):  # the scratch database appears at the start of the load
        if await database_exists(server, scratch) or task.done():
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "the drill ended before it could be cancelled"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not await database_exists(server, scratch)


async def test_a_scratch_name_without_the_prefix_is_refused(backup: Backup, server: AsyncmySqlServer) -> None:
    name = f"backup_live_{secrets.token_hex(5)}"
    for wrong in (name, DRILL_PREFIX, DRILL_PREFIX + "x" * 64):
        with pytest.raises(ValueError, match="must start with 'bk_drill_'"):
            await restore_drill(backup.path, backup.manifest, server, wrong, password=PASSWORD)
    assert not await database_exists(server, name)


# --- the sweep ---------------------------------------------------------------------------------------


async def test_the_sweep_drops_its_catalogs_leftover_scratch_databases_but_those_it_is_told_to_keep(
    server: AsyncmySqlServer, servers: ServiceEndpoints
) -> None:
    # The sweep takes only its own catalog's names: another catalog's drills may be running right now.
    run = f"{DRILL_PREFIX}{secrets.token_hex(4)}_"
    leftover, in_use = f"{run}left", f"{run}in_use"
    another_catalog, other = f"{DRILL_PREFIX}{secrets.token_hex(4)}_running", f"backup_other_{secrets.token_hex(4)}"
    names = (leftover, in_use, another_catalog, other)
    conn = await server.connect(None)
    try:
        for name in names:
            await conn.execute(f"CREATE DATABASE {quote_identifier(name)}")
        await conn.execute(f"CREATE TABLE {quote_identifier(leftover)}.half_loaded (id INT PRIMARY KEY)")
    finally:
        conn.close()
    try:
        dropped = await sweep_scratch_databases(server, prefix=run, keep=lambda name: name == in_use)

        assert dropped == [leftover]
        assert not await database_exists(server, leftover)
        assert await database_exists(server, in_use)
        assert await database_exists(server, another_catalog)
        assert await database_exists(server, other)
        assert await sweep_scratch_databases(server, prefix=run) == [in_use]
        assert await database_exists(server, another_catalog)
        with pytest.raises(ValueError, match="start with 'bk_drill_'"):
            await sweep_scratch_databases(server, prefix="backup_")
    finally:
        for name in names:
            await drop_quietly(MysqlTarget(servers.mysql_url(name)))
