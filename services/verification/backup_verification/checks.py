"""The checks one verification runs on a backup, in order, each recorded as a :class:`Check`:

- ``manifest_authentic``: ``manifest.json`` is there, parses, carries a MAC keyed from the backup's
  data key that matches, describes this backup, and each part manifest beside it says the same;
- per part, ``<part>.archive_digest``: the archive exists with the size and SHA-256 of the signed
  manifest and of the catalog; then ``<part>.members_authentic``: every member decrypts,
  authenticates (WinZip AES HMAC) and keeps its CRC, within the restore limits;
- files parts: ``files.chain_consistent`` and ``files.files_content``: the incremental chain is
  complete and replays to each recorded state, and every file hashes to its recorded SHA-256,
  without writing anything;
- database parts: ``restore_drill``: the archive loaded into a scratch database reproduces every
  table's row count and row digest as the dump read them, and every view, routine, trigger and event.

An archive that is not the one its manifest describes skips the checks that would read it: they
could only fail again, more slowly. What verification cannot prove is that the source was right
when it was read: it proves the backup is what was written, and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from backup_common.adapters.runtime.fetch import LocalCopyMissing, local_copy
from backup_common.adapters.runtime.jobs import PartFailure
from backup_common.adapters.runtime.stored import StoredPart, StoredParts
from backup_common.domain.documents import RestoreLimits
from backup_common.domain.events import BackupPart
from backup_common.domain.model import Backup
from backup_common.domain.ports import Ports
from backup_common.domain.verification import Check
from backup_common.engine.files.chain_check import ChainLink
from backup_common.engine.files.verify import check_files_chain
from backup_common.engine.storage import manifest_problem
from backup_common.engine.verify import check_archive_file, check_archive_members

# Loads a database part into a scratch database and compares it with what the dump read.
Drill = Callable[[StoredPart], Awaitable[Check]]


async def verify_backup(ports: Ports, backup: Backup, limits: RestoreLimits, drill: Drill) -> list[Check]:
    # What is missing or damaged locally is fetched from the off-site copy first, and that is what
    # the checks prove; without one, the checks below say what is wrong.
    with contextlib.suppress(LocalCopyMissing):
        await local_copy(ports, backup)
    check, signed = await _manifest_check(ports, backup)
    checks = [check]
    stored = StoredParts(ports, checksums=False)
    for record in backup.parts:
        part = record.part
        try:
            located = await stored.part(backup, part)
        except PartFailure as exc:
            checks.append(Check(f"{part.value}.archive_digest", False, str(exc)))
            continue
        described = signed.get(part.value) or located.manifest
        digest = await asyncio.to_thread(
            check_archive_file,
            located.archive,
            size_bytes=_int(described.get("size_bytes")),
            sha256=_str(described.get("sha256")),
            catalog_size=record.size_bytes,
            catalog_sha256=record.sha256,
        )
        checks.append(_named(digest, f"{part.value}.archive_digest"))
        if not digest.ok:
            continue
        members = await asyncio.to_thread(
            check_archive_members, located.archive, password=located.password, limits=limits
        )
        checks.append(_named(members, f"{part.value}.members_authentic"))
        if not members.ok:
            continue
        if part is BackupPart.FILES:
            checks.extend(await _files_checks(stored, backup, limits))
        else:
            checks.append(await drill(located))
    return checks


async def _manifest_check(ports: Ports, backup: Backup) -> tuple[Check, dict[str, dict[str, Any]]]:
    """The check, and the part descriptions of manifest.json when it reads (authentic or not: the
    archive checks compare with what it says, the check above says whether to believe it)."""
    started = time.monotonic()
    parts: dict[str, dict[str, Any]] = {}

    def result(ok: bool, detail: str) -> tuple[Check, dict[str, dict[str, Any]]]:
        return Check("manifest_authentic", ok, detail, time.monotonic() - started), parts

    try:
        manifest = await ports.storage.read_manifest(backup)
    except OSError as exc:
        return result(False, f"manifest.json is unreadable: {exc.strerror or exc}")
    except ValueError as exc:
        return result(False, f"manifest.json does not parse: {exc}")
    described = manifest.get("parts")
    if isinstance(described, dict):
        parts.update({name: value for name, value in described.items() if isinstance(value, dict)})
    key = await ports.keys.existing_key(backup.id)
    if key is None:
        return result(False, "the backup has no data key any more (crypto-erased): its manifest cannot be checked")
    # Canonical JSON of a manifest listing every file of the trees: CPU work, off the event loop.
    problem = await asyncio.to_thread(manifest_problem, manifest, backup.id, key)
    if problem is not None:
        return result(False, problem)
    for record in backup.parts:
        try:
            beside = await ports.storage.read_part_manifest(backup, record.part)
        except (OSError, ValueError) as exc:
            return result(False, f"{record.part.value}.json is unreadable: {exc}")
        if beside != parts.get(record.part.value):
            return result(False, f"{record.part.value}.json differs from what the signed manifest says of that part")
    return result(True, f"signed with the backup's key; {len(backup.parts)} part manifest(s) agree with it")


async def _files_checks(stored: StoredParts, backup: Backup, limits: RestoreLimits) -> list[Check]:
    try:
        chain = await stored.files_chain(backup)
    except PartFailure as exc:
        return [Check("files.chain_consistent", False, str(exc))]
    links = [ChainLink(part.backup_id, part.archive, part.password, part.manifest) for part in chain]
    found = await asyncio.to_thread(check_files_chain, links, limits)
    return [_named(check, f"files.{check.name}") for check in found]


def _named(check: Check, name: str) -> Check:
    return Check(name, check.ok, check.detail, check.seconds)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
