"""Database restores against a real server (engine/database/restore.py).

The proof that a restore is safe: in place or into another database, a full restore makes the target
equal, object by object, to the database the backup was taken of (source_snapshot.snapshot); a
selective one replaces the chosen tables and their triggers and nothing else; a damaged backup, a
tampered manifest, an archive over the limits or a non-empty target fails with the target exactly as
it was and no staging database left; a leftover staging database is no obstacle; and a reader
querying a table while the restore swaps it never finds it missing.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import pyzipper

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.domain.documents import RestoreLimits
from backup_common.engine.database import load
from backup_common.engine.database.dump import dump_database
from backup_common.engine.database.load import LoadError, load_database
from backup_common.engine.database.manifest import database_part_manifest
from backup_common.engine.database.model import DumpOptions
from backup_common.engine.database.restore import (
    DamagedBackup,
    DatabaseRestoreError,
    DatabaseRestoreProgress,
    DatabaseRestoreSummary,
    TargetNotEmpty,
    database_objects,
    old_table_prefix,
    restore_database,
    unknown_tables,
)
from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.conftest import NewDatabase
from tests.integration.source_db import BIG_TABLE, BIG_TABLE_ROWS
from tests.integration.source_snapshot import behaviour, snapshot, snapshot_differences
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.integration

PASSWORD = "restore; 'key' \\ 7"
# Small pieces, so the big table is split over several members.
SMALL_PIECES = DumpOptions(member_bytes=1 << 20, statement_bytes=64 << 10)


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
async def backup(feature_source: MysqlTarget, tmp_path_factory: pytest.TempPathFactory) -> Backup:
    """The feature database dumped once, encrypted, with its part manifest."""
    path = tmp_path_factory.mktemp("restore-dump") / "database.zip"
    started = time.time()
    result = await dump_database(AsyncmySqlServer(feature_source), path, password=PASSWORD, options=SMALL_PIECES)
    manifest = database_part_manifest(
        result,
        file_name=path.name,
        source=feature_source,
        options=SMALL_PIECES,
        encryption={},
        started_at=started,
        finished_at=time.time(),
    )
    return Backup(path, manifest)


@pytest.fixture
async def staging(servers: ServiceEndpoints) -> AsyncIterator[str]:
    """A staging database name as the services derive one from a restore id; dropped at the end
    should a test leave it."""
    name = f"bk_restore_{secrets.token_hex(6)}"
    yield name
    await drop_quietly(MysqlTarget(servers.mysql_url(name)))


async def drop_quietly(target: MysqlTarget) -> None:
    """Drops a database whatever foreign keys other databases hold on it."""
    conn = await source_db.connect(target, database=False)
    try:
        await source_db.run(
            conn, "SET SESSION foreign_key_checks = 0", f"DROP DATABASE IF EXISTS {quote_identifier(target.database)}"
        )
    finally:
        await conn.ensure_closed()


def assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    differences = snapshot_differences(expected, actual)
    assert not differences, "the database differs from the expected one:\n" + "\n".join(differences)


async def database_exists(target: MysqlTarget, name: str) -> bool:
    conn = await source_db.connect(target, database=False)
    try:
        found = await source_db.rows(
            conn, "SELECT 1 AS found FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        )
        return bool(found)
    finally:
        await conn.ensure_closed()


async def copy_of_feature_database(backup: Backup, target: MysqlTarget) -> None:
    """The target made a copy of the feature database, as a live database to restore over."""
    await load_database(backup.path, AsyncmySqlServer(target), password=PASSWORD)


async def small_live_database(target: MysqlTarget) -> None:
    """A cheap non-empty target: a table named like one of the backup's, a view and a routine."""
    await source_db.recreate_database(target, charset="latin1", collation="latin1_swedish_ci")
    await source_db.run_on(
        target,
        "CREATE TABLE `order` (id INT NOT NULL PRIMARY KEY, note VARCHAR(20) NOT NULL)",
        "INSERT INTO `order` (id, note) VALUES (1, 'live'), (2, 'data')",
        "CREATE VIEW live_view AS SELECT id FROM `order`",
        "CREATE PROCEDURE live_procedure() SELECT 1",
    )


async def restore_into(
    backup: Backup, target: MysqlTarget, staging: str, *, manifest: dict[str, Any] | None = None, **options: Any
) -> DatabaseRestoreSummary:
    return await restore_database(
        backup.path,
        backup.manifest if manifest is None else manifest,
        AsyncmySqlServer(target),
        target.database,
        password=PASSWORD,
        staging=staging,
        **options,
    )


# --- full restores -----------------------------------------------------------------------------


async def test_a_full_restore_in_place_makes_a_changed_database_equal_to_the_backup_again(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    target = new_database("live")
    await copy_of_feature_database(backup, target)
    await source_db.run_on(
        target,
        "SET SESSION foreign_key_checks = 0",
        f"DELETE FROM {BIG_TABLE} WHERE id % 3 = 0",
        "DELETE FROM `order` WHERE customer = 'bob'",
        "DROP TABLE partitioned_log",
        "DROP VIEW v_top",
        "CREATE TABLE extra_table (id INT PRIMARY KEY, parent INT,"
        " CONSTRAINT extra_parent FOREIGN KEY (parent) REFERENCES employees (id))",
        "INSERT INTO extra_table VALUES (1, 1)",
        "CREATE VIEW extra_view AS SELECT id FROM extra_table",
        "CREATE PROCEDURE extra_procedure() SELECT 1",
        "CREATE EVENT extra_event ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1",
        "CREATE TRIGGER extra_trigger BEFORE INSERT ON audit_log FOR EACH ROW SET NEW.detail = 'x'",
    )

    summary = await restore_database(
        backup.path, backup.manifest, AsyncmySqlServer(target), target.database,
        password=PASSWORD, staging=staging, replace=True,
    )  # fmt: skip

    assert_same(feature_snapshot, await snapshot(target))
    assert summary.dropped_tables == ["extra_table"]
    assert summary.database == target.database
    assert (summary.tables, summary.rows) == (
        len(feature_snapshot["tables"]),
        sum(table["rows"] for table in feature_snapshot["tables"].values()),
    )
    assert (summary.views, summary.routines, summary.triggers, summary.events) == (
        len(feature_snapshot["views"]),
        len(feature_snapshot["routines"]),
        len(feature_snapshot["triggers"]),
        len(feature_snapshot["events"]),
    )
    assert not await database_exists(target, staging)


async def test_a_full_restore_into_a_new_database_rebuilds_it_and_reports_progress_in_order(
    backup: Backup, feature_source: MysqlTarget, feature_snapshot: dict[str, Any], new_database: NewDatabase,
    staging: str,
) -> None:  # fmt: skip
    target = new_database("copy")
    seen: list[DatabaseRestoreProgress] = []

    async def record(progress: DatabaseRestoreProgress) -> None:
        seen.append(progress)

    summary = await restore_into(backup, target, staging, progress=record)

    assert_same(feature_snapshot, await snapshot(target))
    assert await behaviour(target) == await behaviour(feature_source)
    assert summary.dropped_tables == []
    phases = [progress.phase for progress in seen]
    assert phases[0] == "checking"
    assert phases[-1] == "done"
    assert sorted(set(phases), key=phases.index) == ["checking", "loading", "swapping", "done"]
    for earlier, later in pairwise(seen):
        assert later.bytes_done >= earlier.bytes_done
        assert later.tables_done >= earlier.tables_done
        assert later.rows_done >= earlier.rows_done
    last = seen[-1]
    assert last.bytes_done == last.bytes_total > 0
    assert last.tables_done == last.tables_total == len(feature_snapshot["tables"])
    assert last.rows_done == summary.rows
    assert not await database_exists(target, staging)


async def test_a_non_empty_database_is_refused_untouched_unless_replacing_it_was_asked_for(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    target = new_database("busy")
    await small_live_database(target)
    before = await snapshot(target)

    assert await database_objects(AsyncmySqlServer(target), target.database) == {
        "tables": 1, "views": 1, "routines": 1,
    }  # fmt: skip
    with pytest.raises(TargetNotEmpty, match=r"is not empty \(1 tables, 1 views, 1 routines\)"):
        await restore_into(backup, target, staging)
    assert_same(before, await snapshot(target))
    assert not await database_exists(target, staging)

    await restore_into(backup, target, staging, replace=True)

    # The defaults of the database too: a full restore sets the backup's.
    assert_same(feature_snapshot, await snapshot(target))


async def test_a_leftover_staging_database_of_an_earlier_attempt_is_dropped_first(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    target = new_database("retry")
    conn = await source_db.connect(target, database=False)
    try:
        await source_db.run(
            conn,
            f"CREATE DATABASE {quote_identifier(staging)}",
            f"CREATE TABLE {quote_identifier(staging)}.`order` (id INT PRIMARY KEY)",
            f"CREATE TABLE {quote_identifier(staging)}.half_loaded (id INT PRIMARY KEY)",
        )
    finally:
        await conn.ensure_closed()

    await restore_into(backup, target, staging)

    assert_same(feature_snapshot, await snapshot(target))
    assert not await database_exists(target, staging)


async def test_tables_an_earlier_attempt_renamed_out_of_the_way_and_left_are_dropped_by_the_retry(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    # A worker that died after the swap leaves the replaced tables under their old names, with their
    # triggers, whose names are the backup's.
    target = new_database("died")
    await small_live_database(target)
    old = quote_identifier(f"{old_table_prefix(staging)}11")
    await source_db.run_on(
        target,
        f"CREATE TABLE {old} (id INT PRIMARY KEY, customer VARCHAR(100))",
        f"CREATE TRIGGER order_before_insert BEFORE INSERT ON {old} FOR EACH ROW SET NEW.customer = 'x'",
    )

    summary = await restore_into(backup, target, staging, replace=True)

    assert_same(feature_snapshot, await snapshot(target))
    assert summary.dropped_tables == []  # the earlier attempt's tables were its own, not the target's


async def test_a_failure_after_the_swap_says_the_tables_are_in_place_and_what_is_left_to_do(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    # Another table took the name of employees' constraint: restored, employees cannot have it back.
    target = new_database("clash")
    await copy_of_feature_database(backup, target)
    await source_db.run_on(
        target,
        "ALTER TABLE employees DROP FOREIGN KEY employees_department",
        "CREATE TABLE clash (id INT PRIMARY KEY, d INT,"
        " CONSTRAINT employees_department FOREIGN KEY (d) REFERENCES departments (id))",
    )

    with pytest.raises(
        DatabaseRestoreError,
        match=rf"^the backup's tables are in place in {target.database}, but giving foreign keys their names back"
        r" failed: .*employees_department.*; run the restore again to finish it$",
    ):
        await restore_into(backup, target, staging, tables=["employees"], replace=True)

    restored = await snapshot(target)
    assert restored["tables"]["employees"]["rows"] == feature_snapshot["tables"]["employees"]["rows"]
    assert not await database_exists(target, staging)


async def test_members_larger_than_the_memory_cap_are_authenticated_then_streamed(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(load, "BUFFERED_MEMBER_BYTES", 64 << 10)
    monkeypatch.setattr(load, "STREAM_BATCH_BYTES", 100 << 10)
    target = new_database("stream")

    await restore_into(backup, target, staging)

    assert_same(feature_snapshot, await snapshot(target))


# --- selective restores ------------------------------------------------------------------------


async def test_restoring_one_table_replaces_it_and_its_triggers_and_leaves_everything_else_as_it_was(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    target = new_database("one")
    await copy_of_feature_database(backup, target)
    await source_db.run_on(
        target,
        "DELETE FROM `order` WHERE customer = 'alice'",
        "UPDATE `order` SET status = 'shipped'",  # fires order_after_update: audit_log changes too
        "DROP TRIGGER order_before_insert_total",
        "INSERT INTO audit_log (action, detail) VALUES ('manual', 'kept after the restore')",
        "DROP VIEW v_top",
        "UPDATE employees SET name = 'Changed' WHERE id = 1",
    )
    changed = await snapshot(target)

    summary = await restore_into(backup, target, staging, tables=["order"], replace=True)

    restored = await snapshot(target)
    assert_same(feature_snapshot["tables"]["order"], restored["tables"]["order"])
    assert_same(feature_snapshot["triggers"], restored["triggers"])  # all three are on `order`
    expected = copy.deepcopy(changed)
    expected["tables"]["order"] = feature_snapshot["tables"]["order"]
    expected["triggers"] = feature_snapshot["triggers"]
    assert_same(expected, restored)
    assert "v_top" not in restored["views"]
    assert (summary.tables, summary.triggers, summary.views, summary.routines, summary.events) == (1, 3, 0, 0, 0)
    assert summary.rows == feature_snapshot["tables"]["order"]["rows"]
    assert summary.dropped_tables == []
    assert not await database_exists(target, staging)


async def test_restoring_a_table_in_a_foreign_key_cycle_keeps_every_constraint_pointing_at_live_tables(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    # employees references departments and itself; departments references employees. Renamed out of
    # the way, the old employees table takes departments' constraint with it, and the staged table's
    # constraint names are the old table's: the restore must sort both out.
    other = new_database("other")  # made first, so dropped first: it references the target
    target = new_database("cycle")
    await copy_of_feature_database(backup, target)
    await source_db.run_on(
        target,
        "SET SESSION foreign_key_checks = 0",
        "DELETE FROM employees WHERE id = 2",
        "UPDATE departments SET name = 'Renamed' WHERE id = 3",
    )
    await source_db.recreate_database(other, charset="utf8mb4", collation="utf8mb4_bin")
    employees = f"{quote_identifier(target.database)}.employees"
    await source_db.run_on(
        other,
        "CREATE TABLE badges (id INT PRIMARY KEY, employee INT NOT NULL,"
        f" CONSTRAINT badge_holder FOREIGN KEY (employee) REFERENCES {employees} (id))",
    )
    changed = await snapshot(target)

    await restore_into(backup, target, staging, tables=["employees"], replace=True)

    restored = await snapshot(target)
    expected = copy.deepcopy(changed)
    expected["tables"]["employees"] = feature_snapshot["tables"]["employees"]
    assert_same(expected, restored)
    # The constraints work on the live tables: a department that does not exist is refused, and
    # departments' head must be an employee of the restored table.
    conn = await source_db.connect(target)
    try:
        rows = await source_db.rows(
            conn,
            "SELECT CONSTRAINT_SCHEMA AS db, TABLE_NAME AS tbl, REFERENCED_TABLE_NAME AS ref"
            " FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE UNIQUE_CONSTRAINT_SCHEMA = %s"
            " ORDER BY CONSTRAINT_SCHEMA = %s, TABLE_NAME, CONSTRAINT_NAME",
            (target.database, target.database),
        )
        assert [tuple(source_db.text_of(r[key]) for key in ("db", "tbl", "ref")) for r in rows] == [
            (other.database, "badges", "employees"),
            (target.database, "departments", "employees"),
            (target.database, "employees", "departments"),
            (target.database, "employees", "employees"),
        ]
        with pytest.raises(Exception, match="foreign key constraint fails"):
            await source_db.run(conn, "INSERT INTO employees (id, name, department_id) VALUES (99, 'x', 42)")
        await source_db.run(conn, "UPDATE departments SET head_id = 2 WHERE id = 3")  # employee 2 is back
    finally:
        await conn.ensure_closed()


async def test_a_table_the_backup_does_not_hold_is_refused_by_name_before_anything_is_touched(
    backup: Backup, new_database: NewDatabase, staging: str
) -> None:
    target = new_database("unknown")

    assert unknown_tables(backup.manifest, ["order", "nope", "missing", "nope"]) == ["nope", "missing"]
    with pytest.raises(DatabaseRestoreError, match="no table named 'nope', 'missing'"):
        await restore_into(backup, target, staging, tables=["order", "nope", "missing"])
    assert not await database_exists(target, target.database)
    assert not await database_exists(target, staging)


# --- damaged backups and limits ----------------------------------------------------------------


def corrupted_copy(backup: Backup, directory: Path) -> Backup:
    """A copy of the archive with bytes flipped inside its largest member's data, and a manifest that
    vouches for the damaged file: only the member's own authentication can tell."""
    path = directory / "damaged.zip"
    shutil.copyfile(backup.path, path)
    with pyzipper.AESZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    middle = largest.header_offset + 200 + largest.compress_size // 2
    for offset in range(middle, middle + 16):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = copy.deepcopy(backup.manifest)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    return Backup(path, manifest)


@pytest.mark.parametrize("reading", ["buffered", "streamed"])
async def test_a_member_that_fails_authentication_fails_the_restore_with_the_target_as_it_was(
    reading: str, backup: Backup, new_database: NewDatabase, staging: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if reading == "streamed":
        monkeypatch.setattr(load, "BUFFERED_MEMBER_BYTES", 64 << 10)
    damaged = corrupted_copy(backup, tmp_path)
    target = new_database("damaged")
    await small_live_database(target)
    before = await snapshot(target)

    with pytest.raises(DamagedBackup, match=r"member 2-data/\S+ failed authentication: the archive is damaged"):
        await restore_into(damaged, target, staging, replace=True)

    assert_same(before, await snapshot(target))
    assert not await database_exists(target, staging)


async def test_an_archive_that_is_not_the_one_the_manifest_describes_is_refused_before_anything_is_touched(
    backup: Backup, new_database: NewDatabase, staging: str
) -> None:
    target = new_database("sha")
    await small_live_database(target)
    before = await snapshot(target)
    manifest = {**backup.manifest, "sha256": "0" * 64}

    with pytest.raises(
        DamagedBackup, match=r"SHA-256 .* the manifest says 0{64}: the archive is damaged or was replaced"
    ):
        await restore_into(backup, target, staging, replace=True, manifest=manifest)

    assert_same(before, await snapshot(target))
    assert not await database_exists(target, staging)


async def test_row_counts_that_differ_from_the_manifest_fail_the_restore_with_the_target_as_it_was(
    backup: Backup, new_database: NewDatabase, staging: str
) -> None:
    target = new_database("rows")
    await small_live_database(target)
    before = await snapshot(target)
    manifest = copy.deepcopy(backup.manifest)
    (entry,) = [table for table in manifest["tables"] if table["name"] == "order"]
    entry["rows"] += 1

    with pytest.raises(DamagedBackup, match=r"table order holds \d+ rows once loaded, the manifest says \d+"):
        await restore_into(backup, target, staging, replace=True, manifest=manifest)

    assert_same(before, await snapshot(target))
    assert not await database_exists(target, staging)


LIMITS = {
    "total bytes": (RestoreLimits(max_total_bytes=10), r"over the limit of 10 bytes"),
    "entries": (RestoreLimits(max_entries=3), r"more than the limit of 3 entries"),
    "ratio": (RestoreLimits(max_compression_ratio=1), r"over the compression ratio limit of 1"),
}


@pytest.mark.parametrize("limit", list(LIMITS))
async def test_an_archive_over_the_restore_limits_is_refused_before_anything_is_touched(
    limit: str, backup: Backup, new_database: NewDatabase, staging: str
) -> None:
    limits, message = LIMITS[limit]
    target, loaded = new_database("limits"), new_database("offline")
    await small_live_database(target)
    before = await snapshot(target)

    with pytest.raises(DamagedBackup, match=message):
        await restore_into(backup, target, staging, replace=True, limits=limits)
    assert_same(before, await snapshot(target))
    assert not await database_exists(target, staging)

    with pytest.raises(LoadError, match=message):
        await load_database(backup.path, AsyncmySqlServer(loaded), password=PASSWORD, limits=limits)
    assert not await database_exists(loaded, loaded.database)


async def test_the_offline_loader_reports_its_progress_through_the_same_phases_but_the_swap(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase
) -> None:
    target = new_database("offline")
    seen: list[DatabaseRestoreProgress] = []

    async def record(progress: DatabaseRestoreProgress) -> None:
        seen.append(progress)

    summary = await load_database(backup.path, AsyncmySqlServer(target), password=PASSWORD, progress=record)

    phases = [progress.phase for progress in seen]
    assert sorted(set(phases), key=phases.index) == ["checking", "loading", "done"]
    last = seen[-1]
    assert last.bytes_done == last.bytes_total > 0
    assert last.tables_done == last.tables_total == len(feature_snapshot["tables"])
    assert last.rows_done == summary.rows
    assert_same(feature_snapshot, await snapshot(target))


# --- the application's view ----------------------------------------------------------------------


async def test_a_reader_querying_the_tables_while_they_are_swapped_never_finds_one_missing(
    backup: Backup, feature_snapshot: dict[str, Any], new_database: NewDatabase, staging: str
) -> None:
    target = new_database("busy")
    await copy_of_feature_database(backup, target)
    await source_db.run_on(target, f"DELETE FROM {BIG_TABLE} WHERE id > {BIG_TABLE_ROWS // 2}")
    stop, started = asyncio.Event(), asyncio.Event()
    counts: list[int] = []
    failures: list[str] = []

    async def reader() -> None:
        conn = await source_db.connect(target)  # autocommit: no transaction holds the tables between reads
        try:
            while True:
                last = stop.is_set()
                for table in (BIG_TABLE, "order", "employees"):
                    try:
                        (row,) = await source_db.rows(conn, f"SELECT COUNT(*) AS n FROM {quote_identifier(table)}")
                        if table == BIG_TABLE:
                            counts.append(int(row["n"]))
                    except Exception as exc:
                        failures.append(f"{table}: {exc}")
                started.set()
                if last:
                    return
                await asyncio.sleep(0)
        finally:
            await conn.ensure_closed()

    task = asyncio.create_task(reader())
    await started.wait()
    try:
        await restore_into(backup, target, staging, replace=True)
    finally:
        stop.set()
        await task

    assert failures == []
    assert counts[0] == BIG_TABLE_ROWS // 2
    assert counts[-1] == BIG_TABLE_ROWS
    assert set(counts) == {BIG_TABLE_ROWS // 2, BIG_TABLE_ROWS}, "a reader saw something else than old or new"
    assert_same(feature_snapshot, await snapshot(target))
