"""Envelope encryption: a random data key per backup, stored only wrapped by the master key.

The data key never leaves memory unwrapped; the catalog (``data_keys``) and each backup's manifest hold
it wrapped with AES-256-GCM under the master key, bound to the backup's id. The archives of a backup
are WinZip AES-256 archives whose password is derived from the data key, so an administrator who is
given that password can open them with 7-Zip. Deleting the wrapped key makes the archives unreadable
(crypto-erase). The master key is rotated by re-wrapping every data key (:func:`rewrap`); ``key_id``
names the master key a wrapped key belongs to.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
from typing import TYPE_CHECKING

from asyncmy.errors import OperationalError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backup_common.adapters.mysql import db

if TYPE_CHECKING:
    from backup_common.adapters.settings import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAP_VERSION = 1
WRAPPED_KEY_BYTES = 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES
MAX_BACKUP_ID_LENGTH = 36  # data_keys.backup_id is CHAR(36)

# Domain separation: the same secret never serves two purposes under the same derivation.
_KEY_ID_PREFIX = b"backup-system master key id v1\x00"
_ARCHIVE_PASSWORD_LABEL = b"backup-system archive password v1"

# Concurrent first calls for one backup may collide in InnoDB; the transaction was rolled back whole,
# so running it again is safe (the same rule as job leases).
_RETRYABLE_ERRORS = frozenset({1205, 1213})  # ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK
_TRIES = 5


class KeyUnwrapError(Exception):
    """A wrapped data key cannot be opened: wrong master key, another backup's key, or tampered data."""


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def archive_password(data_key: bytes) -> str:
    """The WinZip AES password of a backup's archives: 43 ASCII characters (base64url, no padding).

    Derived with HMAC rather than encoding the key itself, so handing the password to an administrator
    does not hand out the data key, which may protect more than the archives.
    """
    _check_data_key(data_key)
    digest = hmac.new(data_key, _ARCHIVE_PASSWORD_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class MasterKey:
    """The 32-byte key that wraps every data key; ``key_id`` names it without revealing it."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id: str = hashlib.sha256(_KEY_ID_PREFIX + key).hexdigest()[:16]

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKey:
        """Raises SettingsError (naming the variable) when no valid master key is configured."""
        return cls(settings.load_master_key())

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def wrap(self, data_key: bytes, backup_id: str) -> bytes:
        """``version | nonce | ciphertext+tag``, bound to ``backup_id``."""
        _check_data_key(data_key)
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = bytes([WRAP_VERSION])
        return header + nonce + self._aead.encrypt(nonce, data_key, _associated_data(header, backup_id))

    def unwrap(self, wrapped: bytes, backup_id: str) -> bytes:
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise KeyUnwrapError(
                f"the wrapped data key of backup {backup_id} is {len(wrapped)} bytes, not {WRAPPED_KEY_BYTES}:"
                " it is damaged or not a wrapped key"
            )
        if wrapped[0] != WRAP_VERSION:
            raise KeyUnwrapError(
                f"the wrapped data key of backup {backup_id} has format version {wrapped[0]}, expected {WRAP_VERSION}"
            )
        nonce = wrapped[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[1 + NONCE_BYTES :], _associated_data(wrapped[:1], backup_id))
        except InvalidTag:
            raise KeyUnwrapError(
                f"cannot unwrap the data key of backup {backup_id} with master key {self.key_id}: the key was"
                " wrapped by another master key, belongs to another backup, or was tampered with"
            ) from None


def rewrap(wrapped: bytes, backup_id: str, old: MasterKey, new: MasterKey) -> bytes:
    """The same data key wrapped by ``new`` instead of ``old`` (master key rotation)."""
    return new.wrap(old.unwrap(wrapped, backup_id), backup_id)


def _associated_data(header: bytes, backup_id: str) -> bytes:
    # The format byte is authenticated too, so a future format cannot be confused with this one.
    return header + backup_id.encode("utf-8")


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != KEY_BYTES:
        raise ValueError(f"a data key is {KEY_BYTES} bytes, got {len(data_key)}")


def _check_backup_id(backup_id: str) -> None:
    if not backup_id or len(backup_id) > MAX_BACKUP_ID_LENGTH:
        raise ValueError(f"backup_id must be 1 to {MAX_BACKUP_ID_LENGTH} characters")


class DataKeys:
    """The wrapped data keys in the catalog's ``data_keys`` table."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def get_or_create(self, backup_id: str, master: MasterKey) -> bytes:
        """The backup's data key, created on first use.

        The database and files parts of one backup call this at the same time: both get the same key,
        whichever inserted it.
        """
        _check_backup_id(backup_id)
        for attempt in range(1, _TRIES + 1):
            try:
                key_id, wrapped = await self._insert_or_read(backup_id, master)
            except OperationalError as exc:
                if exc.args[0] not in _RETRYABLE_ERRORS or attempt == _TRIES:
                    raise
                log.debug("data key creation for %s collided (%s); retrying", backup_id, exc.args[0])
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
                continue
            return _unwrap_row(backup_id, key_id, wrapped, master)
        raise AssertionError("unreachable")

    async def _insert_or_read(self, backup_id: str, master: MasterKey) -> tuple[str, bytes]:
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
        return str(row["key_id"]), bytes(row["wrapped_key"])

    async def get(self, backup_id: str, master: MasterKey) -> bytes | None:
        """The backup's data key; None when it has none (never created, or destroyed)."""
        stored = await self.wrapped(backup_id)
        if stored is None:
            return None
        key_id, wrapped = stored
        return _unwrap_row(backup_id, key_id, wrapped, master)

    async def wrapped(self, backup_id: str) -> tuple[str, bytes] | None:
        """The master key id and the wrapped key, as written into the backup's manifest."""
        async with db.transaction(self._pool) as conn:
            row = await db.fetch_one(
                conn, "SELECT key_id, wrapped_key FROM data_keys WHERE backup_id = %s", (backup_id,)
            )
        if row is None:
            return None
        return str(row["key_id"]), bytes(row["wrapped_key"])

    async def destroy(self, backup_id: str) -> bool:
        """Crypto-erases the backup: without its wrapped key its archives cannot be decrypted.

        Returns whether a key was there to destroy (False on a repeated call).
        """
        async with db.transaction(self._pool) as conn:
            deleted = await db.execute(conn, "DELETE FROM data_keys WHERE backup_id = %s", (backup_id,))
        if deleted:
            log.info("destroyed the data key of backup %s", backup_id)
        return deleted > 0


def _unwrap_row(backup_id: str, key_id: str, wrapped: bytes, master: MasterKey) -> bytes:
    if key_id != master.key_id:
        raise KeyUnwrapError(
            f"the data key of backup {backup_id} is wrapped by master key {key_id}, but the configured"
            f" master key is {master.key_id}: configure that key, or re-wrap the data keys after rotation"
        )
    return master.unwrap(wrapped, backup_id)
