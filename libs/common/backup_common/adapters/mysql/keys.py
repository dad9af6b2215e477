"""``KeyStore`` on the catalog's ``data_keys`` table: each backup's data key, wrapped by the master key."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from asyncmy.errors import OperationalError

from backup_common.adapters.mysql import db
from backup_common.domain.ports import WrappedKey
from backup_common.engine.crypto import MasterKey, new_data_key

log = logging.getLogger(__name__)

MAX_BACKUP_ID_LENGTH = 36  # data_keys.backup_id is CHAR(36)
# Concurrent first calls for one backup may collide in InnoDB; the transaction was rolled back whole,
# so running it again is safe (the same rule as job leases).
_RETRYABLE_ERRORS = frozenset({1205, 1213})  # ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK
_TRIES = 5


class MysqlKeyStore:
    """``master`` is called when a key is first needed, so a service without a master key configured
    starts, and fails only the jobs that need one, with the reason."""

    def __init__(self, pool: db.Pool, master: Callable[[], MasterKey]) -> None:
        self._pool = pool
        self._master = master

    async def data_key(self, backup_id: str) -> bytes:
        """The backup's data key, created on first use.

        The database and files parts of one backup call this at the same time: both get the same key,
        whichever inserted it.
        """
        _check_backup_id(backup_id)
        master = self._master()
        for attempt in range(1, _TRIES + 1):
            try:
                stored = await self._insert_or_read(backup_id, master)
            except OperationalError as exc:
                if exc.args[0] not in _RETRYABLE_ERRORS or attempt == _TRIES:
                    raise
                log.debug("data key creation for %s collided (%s); retrying", backup_id, exc.args[0])
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
                continue
            return master.unwrap_stored(stored.key_id, stored.wrapped, backup_id)
        raise AssertionError("unreachable")

    async def _insert_or_read(self, backup_id: str, master: MasterKey) -> WrappedKey:
        candidate = master.wrap(new_data_key(), backup_id)
        async with db.transaction(self._pool) as conn:
            # ON DUPLICATE KEY rather than INSERT IGNORE: the duplicate check then takes an exclusive
            # lock, so concurrent callers queue instead of deadlocking, and IGNORE's silent truncation
            # of bad values cannot happen. Either way the row is locked by this transaction below.
            await db.execute(
                conn,
                "INSERT INTO data_keys (backup_id, key_id, wrapped_key, created_at) VALUES (%s, %s, %s, NOW(6))"
                " ON DUPLICATE KEY UPDATE backup_id = backup_id",
                (backup_id, master.key_id, candidate),
            )
            row = await db.fetch_one(
                conn, "SELECT key_id, wrapped_key FROM data_keys WHERE backup_id = %s FOR UPDATE", (backup_id,)
            )
        assert row is not None  # inserted or locked just above
        return WrappedKey(str(row["key_id"]), bytes(row["wrapped_key"]))

    async def existing_key(self, backup_id: str) -> bytes | None:
        """The backup's data key; None when it has none (never created, or destroyed)."""
        stored = await self.wrapped(backup_id)
        if stored is None:
            return None
        return self._master().unwrap_stored(stored.key_id, stored.wrapped, backup_id)

    async def wrapped(self, backup_id: str) -> WrappedKey | None:
        """The master key id and the wrapped key, as written into the backup's manifest."""
        async with db.transaction(self._pool) as conn:
            row = await db.fetch_one(
                conn, "SELECT key_id, wrapped_key FROM data_keys WHERE backup_id = %s", (backup_id,)
            )
        if row is None:
            return None
        return WrappedKey(str(row["key_id"]), bytes(row["wrapped_key"]))

    async def destroy(self, backup_id: str) -> bool:
        """Crypto-erases the backup: without its wrapped key its archives cannot be decrypted.

        Returns whether a key was there to destroy (False on a repeated call).
        """
        async with db.transaction(self._pool) as conn:
            deleted = await db.execute(conn, "DELETE FROM data_keys WHERE backup_id = %s", (backup_id,))
        if deleted:
            log.info("destroyed the data key of backup %s", backup_id)
        return deleted > 0


def _check_backup_id(backup_id: str) -> None:
    if not backup_id or len(backup_id) > MAX_BACKUP_ID_LENGTH:
        raise ValueError(f"backup_id must be 1 to {MAX_BACKUP_ID_LENGTH} characters")
