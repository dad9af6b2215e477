"""The asyncmy side of the database engine's SQL port (engine/database/sql.py) against a real server."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import pytest

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.engine.database.sql import SqlError, SqlServer
from backup_common.engine.database.target import MysqlTarget
from tests.integration import source_db
from tests.integration.conftest import NewDatabase

pytestmark = pytest.mark.integration


async def test_the_asyncmy_server_reports_every_driver_error_as_an_sql_error_with_the_server_code(
    new_database: NewDatabase,
) -> None:
    target = new_database("src")
    await source_db.recreate_database(target, charset="utf8mb4", collation="utf8mb4_bin")
    user = quote(target.user)
    unreachable: SqlServer = AsyncmySqlServer(MysqlTarget(f"mysql://{user}@{target.host}:1/{target.database}"))
    denied = AsyncmySqlServer(
        MysqlTarget(f"mysql://{user}:wrong-{secrets.token_hex(4)}@{target.host}:{target.port}/{target.database}")
    )

    with pytest.raises(SqlError) as caught:
        await unreachable.connect(target.database)
    assert caught.value.code == 2003
    with pytest.raises(SqlError) as caught:
        await denied.connect(target.database)
    assert caught.value.code == 1045
    assert "denied" in caught.value.message.lower()

    conn = await AsyncmySqlServer(target).connect(target.database)
    try:
        for sql, code in (("SELEKT 1", 1064), ("SELECT * FROM no_such_table", 1146)):
            with pytest.raises(SqlError) as caught:
                await conn.fetch_one(sql)
            assert caught.value.code == code, sql
        with pytest.raises(SqlError) as caught:
            async for _ in conn.stream("SELECT * FROM no_such_table", 10):
                pass
        assert caught.value.code == 1146
    finally:
        conn.close()


async def test_an_asyncmy_connection_starts_in_utc_without_autocommit_and_streams_rows_in_batches(
    new_database: NewDatabase,
) -> None:
    target = new_database("src")
    await source_db.recreate_database(target, charset="utf8mb4", collation="utf8mb4_bin")
    digits = "(" + " UNION ALL ".join(f"SELECT {d} AS d" for d in range(10)) + ")"
    numbers = f"SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d AS n FROM {digits} a, {digits} b, {digits} c, {digits} e"

    conn = await AsyncmySqlServer(target).connect(target.database)
    try:
        session = await conn.fetch_one(
            "SELECT @@session.time_zone AS tz, @@autocommit AS autocommit, @@character_set_client AS charset,"
            " DATABASE() AS db"
        )
        assert session == {"tz": "+00:00", "autocommit": 0, "charset": "utf8mb4", "db": target.database}
        assert await conn.execute("CREATE TABLE t (n INT NOT NULL PRIMARY KEY)") == 0
        assert await conn.execute(f"INSERT INTO t (n) {numbers}") == 10_000
        await conn.rollback()  # DDL committed on its own; the insert is undone
        assert await conn.fetch_all("SELECT COUNT(*) AS rows_left FROM t") == [{"rows_left": 0}]
        assert await conn.execute(b"INSERT INTO t (n) " + numbers.encode()) == 10_000
        await conn.commit()

        batches = [list(batch) async for batch in conn.stream("SELECT n FROM t ORDER BY n", 3000)]
        assert [len(batch) for batch in batches] == [3000, 3000, 3000, 1000]
        assert [row for batch in batches for row in batch] == [(n,) for n in range(10_000)]
        assert await conn.fetch_one("SELECT 1 AS still_usable") == {"still_usable": 1}
    finally:
        conn.close()
