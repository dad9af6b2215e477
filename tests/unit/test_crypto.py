"""Envelope encryption: wrapping data keys under the master key, key ids, rotation, archive passwords."""

from __future__ import annotations

import base64
import os

import pytest

from backup_common.adapters.settings import Settings, SettingsError
from backup_common.engine.crypto import (
    WRAPPED_KEY_BYTES,
    KeyUnwrapError,
    MasterKey,
    archive_password,
    new_data_key,
    rewrap,
)

BACKUP_ID = "0b7e1f0e-3c1a-4d57-9a53-0f8e9f0c2a11"
OTHER_BACKUP_ID = "5d1c2b3a-8e7f-4a6b-9c0d-1e2f3a4b5c6d"


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(os.urandom(32))


def test_a_wrapped_data_key_unwraps_to_the_same_key(master: MasterKey) -> None:
    data_key = new_data_key()

    wrapped = master.wrap(data_key, BACKUP_ID)

    assert master.unwrap(wrapped, BACKUP_ID) == data_key


def test_a_wrapped_key_is_a_version_byte_a_nonce_and_the_sealed_key(master: MasterKey) -> None:
    data_key = new_data_key()

    wrapped = master.wrap(data_key, BACKUP_ID)

    assert len(wrapped) == WRAPPED_KEY_BYTES == 1 + 12 + 32 + 16
    assert wrapped[0] == 1
    assert data_key not in wrapped


def test_wrapping_the_same_key_twice_gives_different_bytes_thanks_to_a_random_nonce(master: MasterKey) -> None:
    data_key = new_data_key()

    assert master.wrap(data_key, BACKUP_ID) != master.wrap(data_key, BACKUP_ID)


def test_another_master_key_cannot_unwrap_and_the_error_names_it(master: MasterKey) -> None:
    other = MasterKey(os.urandom(32))
    wrapped = master.wrap(new_data_key(), BACKUP_ID)

    with pytest.raises(KeyUnwrapError, match=other.key_id):
        other.unwrap(wrapped, BACKUP_ID)


def test_a_key_wrapped_for_one_backup_cannot_be_unwrapped_for_another(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), BACKUP_ID)

    with pytest.raises(KeyUnwrapError, match=OTHER_BACKUP_ID):
        master.unwrap(wrapped, OTHER_BACKUP_ID)


@pytest.mark.parametrize("position", range(WRAPPED_KEY_BYTES))
def test_flipping_any_byte_of_a_wrapped_key_is_detected(master: MasterKey, position: int) -> None:
    wrapped = bytearray(master.wrap(new_data_key(), BACKUP_ID))
    wrapped[position] ^= 0x01

    with pytest.raises(KeyUnwrapError):
        master.unwrap(bytes(wrapped), BACKUP_ID)


@pytest.mark.parametrize("length", [0, 1, WRAPPED_KEY_BYTES - 1, WRAPPED_KEY_BYTES + 1])
def test_a_wrapped_key_of_the_wrong_length_is_refused_with_a_clear_error(master: MasterKey, length: int) -> None:
    wrapped = master.wrap(new_data_key(), BACKUP_ID)
    damaged = (wrapped * 2)[:length]

    with pytest.raises(KeyUnwrapError, match="not a wrapped key"):
        master.unwrap(damaged, BACKUP_ID)


def test_only_32_byte_keys_are_accepted() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(os.urandom(16))
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(os.urandom(32)).wrap(os.urandom(16), BACKUP_ID)


def test_the_key_id_is_stable_for_a_key_and_differs_between_keys() -> None:
    key = os.urandom(32)

    assert MasterKey(key).key_id == MasterKey(key).key_id
    assert MasterKey(key).key_id != MasterKey(os.urandom(32)).key_id


def test_the_key_id_is_16_hex_characters_that_reveal_nothing_of_the_key() -> None:
    key = bytes(range(32))
    master = MasterKey(key)

    assert len(master.key_id) == 16
    assert all(char in "0123456789abcdef" for char in master.key_id)
    for encoded in (key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode()):
        assert master.key_id not in encoded
        assert encoded[:16] != master.key_id
    assert key.hex() not in repr(master)
    assert master.key_id in repr(master)


def test_rewrapping_moves_a_data_key_to_the_new_master_key(master: MasterKey) -> None:
    new = MasterKey(os.urandom(32))
    data_key = new_data_key()
    wrapped = master.wrap(data_key, BACKUP_ID)

    rewrapped = rewrap(wrapped, BACKUP_ID, master, new)

    assert new.unwrap(rewrapped, BACKUP_ID) == data_key
    with pytest.raises(KeyUnwrapError):
        master.unwrap(rewrapped, BACKUP_ID)


def test_rewrapping_with_the_wrong_old_key_fails_without_producing_anything(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), BACKUP_ID)

    with pytest.raises(KeyUnwrapError):
        rewrap(wrapped, BACKUP_ID, MasterKey(os.urandom(32)), MasterKey(os.urandom(32)))


def test_data_keys_are_32_random_bytes() -> None:
    keys = {new_data_key() for _ in range(100)}

    assert len(keys) == 100
    assert all(len(key) == 32 for key in keys)


def test_the_archive_password_is_43_ascii_characters_derived_deterministically_from_the_data_key() -> None:
    data_key = new_data_key()

    password = archive_password(data_key)

    assert password == archive_password(data_key)
    assert len(password) == 43
    assert password.isascii()
    assert all(char.isalnum() or char in "-_" for char in password)
    assert password != archive_password(new_data_key())


def test_the_archive_password_does_not_reveal_the_data_key() -> None:
    data_key = new_data_key()

    password = archive_password(data_key)

    assert password != base64.urlsafe_b64encode(data_key).rstrip(b"=").decode()
    assert password != base64.b64encode(data_key).decode()


def test_the_master_key_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUP_"):
            monkeypatch.delenv(name)
    key = os.urandom(32)

    master = MasterKey(Settings(master_key=base64.b64encode(key).decode()).load_master_key())

    assert master.key_id == MasterKey(key).key_id
    with pytest.raises(SettingsError, match="BACKUP_MASTER_KEY"):
        MasterKey(Settings().load_master_key())
