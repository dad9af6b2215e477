"""Wrapped data keys in a real catalog: one key per backup under concurrency, wrapped at rest, crypto-erase."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.keys import MysqlKeyStore
from backup_common.domain.ports import WrappedKey
from backup_common.engine.crypto import KeyUnwrapError, MasterKey

pytestmark = pytest.mark.integration


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(os.urandom(32))


def new_backup_id() -> str:
    return str(uuid.uuid4())


async def stored_rows(pool: db.Pool, backup_id: str) -> list[dict[str, object]]:
    async with db.transaction(pool) as conn:
        return await db.fetch_all(conn, "SELECT * FROM data_keys WHERE backup_id = %s", (backup_id,))


async def test_a_second_call_returns_the_key_created_by_the_first(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)
    backup_id = new_backup_id()

    first = await keys.data_key(backup_id)
    second = await keys.data_key(backup_id)

    assert len(first) == 32
    assert second == first
    assert await keys.existing_key(backup_id) == first


async def test_ten_concurrent_first_calls_for_one_backup_all_get_the_same_key(
    catalog_pool: db.Pool, master: MasterKey
) -> None:
    backup_id = new_backup_id()
    # Separate instances, as the database and files services would each have their own.
    results = await asyncio.gather(
        *(MysqlKeyStore(catalog_pool, lambda: master).data_key(backup_id) for _ in range(10))
    )

    assert len(set(results)) == 1
    assert len(await stored_rows(catalog_pool, backup_id)) == 1


async def test_different_backups_get_different_keys(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)

    assert await keys.data_key(new_backup_id()) != await keys.data_key(new_backup_id())


async def test_the_key_is_stored_only_wrapped_and_named_by_the_master_key_id(
    catalog_pool: db.Pool, master: MasterKey
) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)
    backup_id = new_backup_id()

    data_key = await keys.data_key(backup_id)

    (row,) = await stored_rows(catalog_pool, backup_id)
    assert row["key_id"] == master.key_id
    assert isinstance(row["wrapped_key"], bytes)
    assert data_key not in row["wrapped_key"]
    for value in row.values():
        assert data_key.hex() not in str(value)
    assert await keys.wrapped(backup_id) == WrappedKey(master.key_id, row["wrapped_key"])
    assert master.unwrap(row["wrapped_key"], backup_id) == data_key


async def test_destroying_the_key_makes_it_unrecoverable(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)
    backup_id = new_backup_id()
    await keys.data_key(backup_id)

    assert await keys.destroy(backup_id) is True

    assert await keys.existing_key(backup_id) is None
    assert await keys.wrapped(backup_id) is None
    assert await stored_rows(catalog_pool, backup_id) == []
    assert await keys.destroy(backup_id) is False


async def test_a_backup_without_a_key_has_none(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)

    assert await keys.existing_key(new_backup_id()) is None
    assert await keys.wrapped(new_backup_id()) is None


async def test_another_master_key_is_refused_naming_both_key_ids(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)
    backup_id = new_backup_id()
    await keys.data_key(backup_id)
    other = MasterKey(os.urandom(32))
    rotated = MysqlKeyStore(catalog_pool, lambda: other)

    for call in (rotated.existing_key, rotated.data_key):
        with pytest.raises(KeyUnwrapError) as raised:
            await call(backup_id)
        assert master.key_id in str(raised.value)
        assert other.key_id in str(raised.value)
    assert len(await stored_rows(catalog_pool, backup_id)) == 1


async def test_a_wrapped_key_moved_onto_another_backup_is_refused(catalog_pool: db.Pool, master: MasterKey) -> None:
    keys = MysqlKeyStore(catalog_pool, lambda: master)
    source, target = new_backup_id(), new_backup_id()
    await keys.data_key(source)
    await keys.data_key(target)
    async with db.transaction(catalog_pool) as conn:
        await db.execute(
            conn,
            "UPDATE data_keys SET wrapped_key = (SELECT wrapped_key FROM (SELECT * FROM data_keys) AS copy"
            " WHERE copy.backup_id = %s) WHERE backup_id = %s",
            (source, target),
        )

    with pytest.raises(KeyUnwrapError, match=target):
        await keys.existing_key(target)


async def test_an_invalid_backup_id_is_refused_before_touching_the_catalog(
    catalog_pool: db.Pool, master: MasterKey
) -> None:
    with pytest.raises(ValueError, match="backup_id"):
        await MysqlKeyStore(catalog_pool, lambda: master).data_key("x" * 37)
