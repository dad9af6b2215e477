"""Database dumps and loads against a real server.

The proof that a dump is a faithful, consistent copy: the feature database (tests/integration/source_db.py)
survives a dump and a load, by the loader and by the stock client, with equal checksums, counters,
definitions and definers; a dump taken while transfers commit loads balances that agree with the
ledger, with and without the RELOAD privilege; every table carries the digest of the rows it read;
and the failure paths leave nothing half-done.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import subprocess
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pyzipper

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.engine.database.dump import ROW_DIGEST, dump_database
from backup_common.engine.database.load import load_database
from backup_common.engine.database.manifest import database_part_manifest
from backup_common.engine.database.model import DumpOptions, DumpProgress, DumpResult
from backup_common.engine.database.sql import quote_identifier
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.bank_db import bank_inconsistencies, build_bank, ledger_count, transfer_storm
from tests.integration.conftest import NewDatabase
from tests.integration.source_db import BIG_TABLE, CHECKED_VIEW, FIXTURE_DEFINER, FIXTURE_DEFINER_USER
from tests.integration.source_snapshot import behaviour, object_definers, objects, snapshot, snapshot_differences
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.integration

PASSWORD = "correct horse; battery 'staple' \\ 42"
# Small pieces, so the big table is split over several members and one long value exceeds a statement.
SMALL_PIECES = DumpOptions(member_bytes=1 << 20, statement_bytes=64 << 10)
ACCOUNTS = 200
BALANCE = 1000


@dataclass(frozen=True)
class Dumped:
    path: Path
    result: DumpResult


@pytest.fixture(scope="module")
async def feature_dump(feature_source: MysqlTarget, tmp_path_factory: pytest.TempPathFactory) -> Dumped:
    """The feature database dumped once, with a password and small members."""
    path = tmp_path_factory.mktemp("feature-dump") / "database.zip"
    result = await dump_database(AsyncmySqlServer(feature_source), path, password=PASSWORD, options=SMALL_PIECES)
    return Dumped(path, result)


def read_members(path: Path, password: str | None) -> dict[str, bytes]:
    with pyzipper.AESZipFile(path) as archive:
        if password is not None:
            archive.setpassword(password.encode())
        return {name: archive.read(name) for name in archive.namelist()}


def stock_client() -> str | None:
    return shutil.which("mariadb") or shutil.which("mysql")


def replay_with_stock_client(client: str, target: MysqlTarget, member: str, sql: bytes) -> None:
    """Pipes one member into the stock command-line client, as an administrator restoring by hand would."""
    env = dict(os.environ)
    if target.password:
        env["MYSQL_PWD"] = target.password
    command = [client, f"--host={target.host}", f"--port={target.port}", f"--user={target.user}", target.database]
    finished = subprocess.run(command, input=sql, capture_output=True, env=env, timeout=300, check=False)
    stderr = finished.stderr.decode(errors="replace")
    assert finished.returncode == 0, f"{client} failed on member {member}: {stderr}"


@asynccontextmanager
async def limited_account(server: MysqlTarget, privileges: str) -> AsyncIterator[MysqlTarget]:
    """A new account holding only ``privileges`` on the target's database; dropped at the end."""
    user = f"backup_limited_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    conn = await source_db.connect(server, database=False)
    try:
        await source_db.run(
            conn,
            f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
            f"GRANT {privileges} ON {quote_identifier(server.database)}.* TO '{user}'@'%'",
        )
    finally:
        await conn.ensure_closed()
    try:
        yield MysqlTarget(f"mysql://{user}:{password}@{server.host}:{server.port}/{quote(server.database)}")
    finally:
        conn = await source_db.connect(server, database=False)
        try:
            await source_db.run(conn, f"DROP USER IF EXISTS '{user}'@'%'")
        finally:
            await conn.ensure_closed()


@dataclass(frozen=True)
class Transfers:
    before_dump: int  # committed when the dump started
    during_dump: int  # the most seen committed while the dump was still running
    after_dump: int  # committed when the dump returned
    committed: int  # committed in all, when the storm stopped


class HoldUntilTransfersCommit:
    """A progress callback that, called before the dump has returned, waits until more transfers commit.

    It proves that transfers go on while a dump is in progress: a dump that blocks writers for its
    whole length never lets them. It waits at most ``patience`` seconds in all, so such a dump fails
    the test rather than hanging it.
    """

    def __init__(self, bank: MysqlTarget, before: int, *, wanted: int = 25, patience: float = 15.0) -> None:
        self.bank = bank
        self.before = before
        self.seen = before
        self.wanted = wanted
        self.patience = patience
        self.calls: list[DumpProgress] = []

    async def __call__(self, progress: DumpProgress) -> None:
        self.calls.append(progress)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self.seen < self.before + self.wanted and loop.time() - started < self.patience:
            self.seen = max(self.seen, await ledger_count(self.bank))
            if self.seen < self.before + self.wanted:
                await asyncio.sleep(0.05)
        self.patience -= loop.time() - started


async def wait_for_transfers(bank: MysqlTarget, storm: asyncio.Task[int], at_least: int) -> None:
    for _ in range(400):
        if storm.done():
            storm.result()  # raises what stopped the storm
            raise AssertionError("the transfer storm stopped on its own")
        if await ledger_count(bank) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} transfers committed within 20 s")


async def dump_during_transfers(bank: MysqlTarget, account: MysqlTarget, path: Path) -> tuple[DumpResult, Transfers]:
    """Dumps ``bank`` (connecting as ``account``) while concurrent transfers keep committing."""
    stop = asyncio.Event()
    storm = asyncio.create_task(transfer_storm(bank, stop))
    try:
        await wait_for_transfers(bank, storm, at_least=50)
        hold = HoldUntilTransfersCommit(bank, await ledger_count(bank))
        result = await dump_database(AsyncmySqlServer(account), path, password=PASSWORD, progress=hold)
        after = await ledger_count(bank)
    finally:
        stop.set()
        committed = await storm
    assert hold.calls, "the dump never reported progress"
    return result, Transfers(hold.before, hold.seen, after, committed)


async def assert_bank_copy_is_consistent(source: MysqlTarget, copy: MysqlTarget, transfers: Transfers) -> None:
    assert await bank_inconsistencies(source, accounts=ACCOUNTS, balance=BALANCE) == []
    assert await ledger_count(source) == transfers.committed
    assert transfers.during_dump > transfers.before_dump, "no transfer committed while the dump ran"
    assert await bank_inconsistencies(copy, accounts=ACCOUNTS, balance=BALANCE) == []
    copied = await ledger_count(copy)
    assert transfers.before_dump <= copied <= transfers.after_dump


def assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    differences = snapshot_differences(expected, actual)
    assert not differences, "the copy differs from the original:\n" + "\n".join(differences)


# --- the feature database --------------------------------------------------------------------------


async def test_the_dump_result_counts_every_table_and_describes_the_encrypted_archive_it_wrote(
    feature_source: MysqlTarget, feature_snapshot: dict[str, Any], feature_dump: Dumped
) -> None:
    result = feature_dump.result
    tables = feature_snapshot["tables"]

    assert {table.name: table.rows for table in result.tables} == {name: t["rows"] for name, t in tables.items()}
    assert result.rows == sum(t["rows"] for t in tables.values())
    assert result.consistency == "shared-snapshot"
    assert result.server_version == await source_db.server_version(feature_source)
    if await source_db.binary_logging_enabled(feature_source):
        assert result.binlog is not None
        assert {"file", "position"} <= set(result.binlog)
    else:
        assert result.binlog is None

    data = feature_dump.path.read_bytes()
    assert result.archive_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    with pyzipper.AESZipFile(feature_dump.path) as archive:
        infos = archive.infolist()
        assert sorted(info.filename for info in infos) == sorted(result.members)
        assert all(info.flag_bits & 0x1 and info.wz_aes_strength == 3 for info in infos), "not all AES-256"
        with pytest.raises(RuntimeError, match="password"):
            archive.read(infos[0].filename)
    for table in result.tables:
        assert set(table.members) <= set(result.members), table.name
        assert table.rows == 0 or table.sql_bytes > 0, table.name
    (big,) = [table for table in result.tables if table.name == BIG_TABLE]
    assert len(big.members) > 1, "the big table was not split over several members"


async def test_the_feature_database_loads_into_a_new_database_with_the_same_data_counters_and_definitions(
    feature_source: MysqlTarget, feature_snapshot: dict[str, Any], feature_dump: Dumped, new_database: NewDatabase
) -> None:
    target = new_database("dst")

    summary = await load_database(feature_dump.path, AsyncmySqlServer(target), password=PASSWORD)

    loaded = await snapshot(target)
    assert_same(feature_snapshot, loaded)
    assert await behaviour(target) == await behaviour(feature_source)
    definers = object_definers(loaded)
    assert definers[f"views {CHECKED_VIEW}"] == FIXTURE_DEFINER
    assert definers["routines PROCEDURE fixture_record"] == FIXTURE_DEFINER
    assert summary.database == target.database
    assert (summary.tables, summary.rows) == (
        len(feature_snapshot["tables"]),
        sum(t["rows"] for t in feature_snapshot["tables"].values()),
    )
    assert (summary.views, summary.routines, summary.triggers, summary.events) == (
        len(feature_snapshot["views"]),
        len(feature_snapshot["routines"]),
        len(feature_snapshot["triggers"]),
        len(feature_snapshot["events"]),
    )


async def test_the_members_replayed_in_name_order_by_the_stock_client_rebuild_the_same_database(
    feature_snapshot: dict[str, Any], feature_dump: Dumped, new_database: NewDatabase
) -> None:
    client = stock_client()
    if client is None:
        pytest.skip("neither the mariadb nor the mysql command-line client is installed")
    target = new_database("dst")
    schema = feature_snapshot["schema"]
    await source_db.recreate_database(target, charset=schema["charset"], collation=schema["collation"])
    members = await asyncio.to_thread(read_members, feature_dump.path, PASSWORD)

    for name in sorted(members):
        await asyncio.to_thread(replay_with_stock_client, client, target, name, members[name])

    assert_same(feature_snapshot, await snapshot(target))


async def test_without_keep_definers_no_member_names_the_definer_and_the_loading_account_defines_every_object(
    feature_source: MysqlTarget, new_database: NewDatabase, tmp_path: Path
) -> None:
    path = tmp_path / "database.zip"
    target = new_database("dst")

    await dump_database(
        AsyncmySqlServer(feature_source), path, password=PASSWORD, options=DumpOptions(keep_definers=False)
    )
    members = await asyncio.to_thread(read_members, path, PASSWORD)
    await load_database(path, AsyncmySqlServer(target), password=PASSWORD)

    assert [name for name, sql in members.items() if FIXTURE_DEFINER_USER.encode() in sql] == []
    loading_account = await source_db.current_account(target)
    assert set(object_definers(await snapshot(target)).values()) == {loading_account}
    original = await snapshot(feature_source, ignore_definers=True)
    assert_same(original, await snapshot(target, ignore_definers=True))


async def test_progress_is_reported_with_growing_counts_and_ends_with_every_table_done(
    feature_source: MysqlTarget, tmp_path: Path
) -> None:
    path = tmp_path / "database.zip"
    seen: list[DumpProgress] = []

    async def record(progress: DumpProgress) -> None:
        seen.append(progress)

    result = await dump_database(
        AsyncmySqlServer(feature_source), path, password=None, options=SMALL_PIECES, progress=record
    )

    # How often progress is reported during a dump depends on its pace; every report counts up, and the
    # last one, when the dump is done, accounts for every table and row.
    assert seen, "the progress callback was never called"
    for earlier, later in pairwise(seen):
        assert later.bytes_done >= earlier.bytes_done
        assert later.rows_done >= earlier.rows_done
        assert later.tables_done >= earlier.tables_done
        assert later.tables_total == earlier.tables_total
    last = seen[-1]
    assert last.tables_done == last.tables_total == len(result.tables)
    assert last.rows_done == result.rows
    assert last.bytes_done > 0
    with zipfile.ZipFile(path) as archive:  # without a password, any zip tool opens it
        assert not any(info.flag_bits & 0x1 for info in archive.infolist())
        assert archive.testzip() is None


# --- row digests ------------------------------------------------------------------------------------

# The rows of no_primary_key (source_db.DATA) as the dump renders them: the same row three times, another
# twice, an empty blob apart from a NULL one.
NO_PRIMARY_KEY_ROWS = [b"(1,'dup',0x00)"] * 3 + [b"(NULL,NULL,NULL)"] * 2 + [b"(2,'x',NULL)", b"(2,'x','')"]


def row_digest_of(rows: list[bytes]) -> str:
    """ROW_DIGEST as documented: each row's SHA-256 as a big-endian integer, summed modulo 2**128."""
    total = sum(int.from_bytes(hashlib.sha256(row).digest(), "big") for row in rows)
    return f"{total % 2**128:032x}"


async def test_every_table_carries_the_digest_of_the_rows_it_read_and_the_manifest_records_them(
    feature_source: MysqlTarget, feature_dump: Dumped
) -> None:
    result = feature_dump.result
    digests = {table.name: table.digest for table in result.tables}
    members = await asyncio.to_thread(read_members, feature_dump.path, PASSWORD)
    (no_key,) = [table for table in result.tables if table.name == "no_primary_key"]
    (data,) = [members[name] for name in no_key.members]

    assert result.row_digest == ROW_DIGEST == "sha256-sum128"
    assert all(len(digest) == 32 and int(digest, 16) >= 0 for digest in digests.values()), digests
    assert digests["empty_table"] == "0" * 32
    # Rows read twice count twice: an XOR of the same rows would cancel out.
    assert b"VALUES " + b",".join(NO_PRIMARY_KEY_ROWS) + b";" in data
    assert digests["no_primary_key"] == row_digest_of(NO_PRIMARY_KEY_ROWS)
    assert row_digest_of(NO_PRIMARY_KEY_ROWS) != row_digest_of(list(dict.fromkeys(NO_PRIMARY_KEY_ROWS)))
    filled = [table.digest for table in result.tables if table.rows]
    assert len(set(filled)) == len(filled), "two tables with different rows share a digest"

    manifest = database_part_manifest(
        result, file_name=feature_dump.path.name, source=feature_source, options=SMALL_PIECES, encryption={},
        started_at=0.0, finished_at=0.0,
    )  # fmt: skip
    assert manifest["row_digest"] == ROW_DIGEST
    assert {entry["name"]: entry["digest"] for entry in manifest["tables"]} == digests


# --- consistency -------------------------------------------------------------------------------------


async def test_a_dump_taken_while_transfers_commit_loads_balances_that_agree_with_the_ledger(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    source, target = new_database("src"), new_database("dst")
    await build_bank(source, ACCOUNTS, BALANCE)
    path = tmp_path / "bank.zip"

    result, transfers = await dump_during_transfers(source, source, path)
    await load_database(path, AsyncmySqlServer(target), password=PASSWORD)

    assert result.consistency == "shared-snapshot"
    await assert_bank_copy_is_consistent(source, target, transfers)


async def test_an_account_without_the_reload_privilege_still_gets_a_consistent_dump_from_one_connection(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    source, target = new_database("src"), new_database("dst")
    await build_bank(source, ACCOUNTS, BALANCE)
    path = tmp_path / "bank.zip"

    async with limited_account(source, "SELECT, SHOW VIEW, TRIGGER, EVENT") as account:
        result, transfers = await dump_during_transfers(source, account, path)
    await load_database(path, AsyncmySqlServer(target), password=PASSWORD)

    assert result.consistency == "single-connection"
    assert result.consistency_note.strip()
    await assert_bank_copy_is_consistent(source, target, transfers)


# --- refusals and failures ---------------------------------------------------------------------------


async def test_the_loader_refuses_a_database_that_is_not_empty_unless_forced(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    source, target = new_database("src"), new_database("dst")
    await build_bank(source, accounts=20, balance=BALANCE)
    path = tmp_path / "bank.zip"
    await dump_database(AsyncmySqlServer(source), path, password=PASSWORD)
    await source_db.recreate_database(target, charset="utf8mb4", collation="utf8mb4_unicode_ci")
    conn = await source_db.connect(target)
    try:
        await source_db.run(
            conn,
            "CREATE TABLE accounts (id INT NOT NULL PRIMARY KEY, owner VARCHAR(20) NOT NULL)",
            "INSERT INTO accounts (id, owner) VALUES (1, 'someone else')",
        )
    finally:
        await conn.ensure_closed()
    existing = await snapshot(target)

    with pytest.raises(Exception, match="not empty"):
        await load_database(path, AsyncmySqlServer(target), password=PASSWORD)
    assert_same(existing, await snapshot(target))

    await load_database(path, AsyncmySqlServer(target), password=PASSWORD, force=True)
    original = objects(await snapshot(source))
    assert_same(original, objects(await snapshot(target)))
    assert await bank_inconsistencies(target, accounts=20, balance=BALANCE) == []


async def test_a_wrong_or_missing_password_fails_the_load_clearly_and_leaves_the_target_empty(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    source, target = new_database("src"), new_database("dst")
    await build_bank(source, accounts=20, balance=BALANCE)
    path = tmp_path / "bank.zip"
    await dump_database(AsyncmySqlServer(source), path, password=PASSWORD)

    for password in ("not the password", None):
        with pytest.raises(Exception, match=r"(?i)password"):
            await load_database(path, AsyncmySqlServer(target), password=password)
        assert await source_db.database_is_empty_or_absent(target), f"something was loaded with {password!r}"


@pytest.mark.parametrize("problem", ["unreachable", "denied"])
async def test_a_dump_from_a_source_it_cannot_reach_or_log_in_to_raises_and_leaves_no_file_behind(
    problem: str, servers: ServiceEndpoints, tmp_path: Path
) -> None:
    server = MysqlTarget(servers.mysql_url(f"backup_src_{secrets.token_hex(5)}"))
    wrong_password = f"wrong-{secrets.token_hex(8)}"
    user = quote(server.user)
    if problem == "unreachable":
        source = MysqlTarget(f"mysql://{user}@{server.host}:1/{server.database}")
        expected = r"(?i)connect|refused|unreachable"
    else:
        source = MysqlTarget(f"mysql://{user}:{wrong_password}@{server.host}:{server.port}/{server.database}")
        expected = r"(?i)denied|access|password|authenticat"
    directory = tmp_path / "out"
    directory.mkdir()

    with pytest.raises(Exception, match=expected) as caught:
        await dump_database(AsyncmySqlServer(source), directory / "database.zip", password=PASSWORD)

    assert list(directory.iterdir()) == []
    assert wrong_password not in str(caught.value)
    assert PASSWORD not in str(caught.value)
