"""A backup's manifest is signed with a MAC keyed from its data key: edits, another backup's manifest
and a stripped MAC are all told apart from the authentic one."""

from __future__ import annotations

import copy
from typing import Any

from backup_common.engine.crypto import new_data_key
from backup_common.engine.storage import manifest_problem, sign_manifest

BACKUP_ID = "6f1c0d7e-3b52-4c8e-9a51-2f0d5c3e8b11"


def manifest(backup_id: str = BACKUP_ID) -> dict[str, Any]:
    return {
        "format": "backup-system/manifest",
        "backup": {"id": backup_id, "type": "full"},
        "parts": {"database": {"sha256": "ab" * 32, "size_bytes": 1234, "tables": [{"name": "zoë", "rows": 3}]}},
    }


def test_a_signed_manifest_is_authentic_whatever_the_order_of_its_keys() -> None:
    key = new_data_key()
    signed = sign_manifest(manifest(), key)
    reordered = dict(reversed(list(signed.items())))

    assert signed["mac"]["algorithm"] == "HMAC-SHA256"
    assert manifest_problem(signed, BACKUP_ID, key) is None
    assert manifest_problem(reordered, BACKUP_ID, key) is None


def test_an_edit_another_key_another_backup_or_no_mac_is_caught() -> None:
    key = new_data_key()
    signed = sign_manifest(manifest(), key)
    edited = copy.deepcopy(signed)
    edited["parts"]["database"]["size_bytes"] += 1
    other = sign_manifest(manifest("0b6c2a64-1d7f-4e3b-8c25-9f8e7d6c5b4a"), key)
    stripped = {name: value for name, value in signed.items() if name != "mac"}

    assert "does not match" in (manifest_problem(edited, BACKUP_ID, key) or "")
    assert "does not match" in (manifest_problem(signed, BACKUP_ID, new_data_key()) or "")
    assert "describes backup 0b6c2a64" in (manifest_problem(other, BACKUP_ID, key) or "")
    assert "carries no MAC" in (manifest_problem(stripped, BACKUP_ID, key) or "")
