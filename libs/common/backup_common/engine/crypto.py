"""Envelope encryption: a random data key per backup, stored only wrapped by the master key.

The data key never leaves memory unwrapped; the catalog (``data_keys``) and each backup's manifest hold
it wrapped with AES-256-GCM under the master key, bound to the backup's id. The archives of a backup
are WinZip AES-256 archives whose password is derived from the data key, so an administrator who is
given that password can open them with 7-Zip. Deleting the wrapped key makes the archives unreadable
(crypto-erase). The master key is rotated by re-wrapping every data key (:func:`rewrap`); ``key_id``
names the master key a wrapped key belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAP_VERSION = 1
WRAPPED_KEY_BYTES = 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES

# Domain separation: the same secret never serves two purposes under the same derivation.
_KEY_ID_PREFIX = b"backup-system master key id v1\x00"
_ARCHIVE_PASSWORD_LABEL = b"backup-system archive password v1"
_MANIFEST_MAC_LABEL = b"backup-system manifest mac v1"
MANIFEST_MAC_ALGORITHM = "HMAC-SHA256"


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


def manifest_mac(data_key: bytes, document: bytes) -> str:
    """The MAC of a backup's manifest, keyed from its data key: who holds neither the data key nor
    the master key cannot forge a manifest, nor pass one backup's manifest off as another's."""
    _check_data_key(data_key)
    key = hmac.new(data_key, _MANIFEST_MAC_LABEL, hashlib.sha256).digest()
    return hmac.new(key, document, hashlib.sha256).hexdigest()


class MasterKey:
    """The 32-byte key that wraps every data key; ``key_id`` names it without revealing it."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id: str = hashlib.sha256(_KEY_ID_PREFIX + key).hexdigest()[:16]

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

    def unwrap_stored(self, key_id: str, wrapped: bytes, backup_id: str) -> bytes:
        """Unwraps a key stored with the id of the master key that wrapped it, naming a mismatch."""
        if key_id != self.key_id:
            raise KeyUnwrapError(
                f"the data key of backup {backup_id} is wrapped by master key {key_id}, but the configured"
                f" master key is {self.key_id}: configure that key, or re-wrap the data keys after rotation"
            )
        return self.unwrap(wrapped, backup_id)


def rewrap(wrapped: bytes, backup_id: str, old: MasterKey, new: MasterKey) -> bytes:
    """The same data key wrapped by ``new`` instead of ``old`` (master key rotation)."""
    return new.wrap(old.unwrap(wrapped, backup_id), backup_id)


def _associated_data(header: bytes, backup_id: str) -> bytes:
    # The format byte is authenticated too, so a future format cannot be confused with this one.
    return header + backup_id.encode("utf-8")


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != KEY_BYTES:
        raise ValueError(f"a data key is {KEY_BYTES} bytes, got {len(data_key)}")
