"""Proves a files part and its incremental chain restorable without writing anything anywhere.

``chain_consistent`` is the check every restore makes first (chain_check.py): each archive is the
one its manifest describes, names, kinds and link targets are safe, the chain keeps the restore
limits, packed files lie inside their packs, and a dry run of the replay reproduces each backup's
recorded state, path by path and kind by kind. Each incremental must follow the backup it was made
on, when its manifest names it.

``files_content`` then proves the bytes: every file each backup archived is read from its member, or
from its pack at its offset, exactly as a restore reads it (target_writer.read_contents), and its
SHA-256 compared with that backup's record; a grown file is hashed as its earlier version followed
by the appended bytes, which is what a restore writes. The earlier version is not read again: the
SHA-256 state reached at its end, when the backup holding it was read, is carried on (hashlib's
``copy``), which hashes exactly the same bytes. Every file of the last backup's recorded state must
then have the SHA-256 and size of the version the chain holds for it, so restoring the chain rebuilds
each file as recorded. Encrypted members are read to their end, which authenticates them.

Not proven: modes, times and ownership (a restore sets them from the manifest, which nothing here can
check against the source), that the source trees still look like the backup, or that a target has
room for them. Memory: the manifests' records, one chunk at a time, and the hash state of each file a
later backup grew.

Synchronous and CPU-bound (decryption, inflation, hashing; they release the GIL, so each backup's
members are shared among a few threads): callers run it in a worker thread. What it finds wrong is a
failed Check; it raises only for programming errors.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from backup_common.domain.documents import RestoreLimits
from backup_common.domain.verification import Check
from backup_common.engine.archive import ArchiveError, ArchiveReader
from backup_common.engine.files.chain_check import ChainLink, IntegrityError, Plan, RestoreError, check_chain
from backup_common.engine.files.model import FileRecord
from backup_common.engine.files.target_writer import check_content, read_contents
from backup_common.engine.verify import MEMBER_READ_ERRORS, member_failure

CHAIN_CONSISTENT = "chain_consistent"
FILES_CONTENT = "files_content"
VERIFY_THREADS = min(4, os.cpu_count() or 1)

# What a damaged, hostile or missing part raises on the way (chain_check too reads members, and
# pyzipper reads the listing); anything else is a bug.
_FOUND_WRONG = (RestoreError, ArchiveError, OSError, NotImplementedError, struct.error)


def check_files_chain(chain: list[ChainLink], limits: RestoreLimits) -> list[Check]:
    """``chain_consistent`` and ``files_content`` of the chain's last backup (``chain`` lists its
    complete base first, then each incremental in order). When the chain is not consistent, its
    content is not looked at, and ``files_content`` fails saying so."""
    started = time.monotonic()
    plans: list[Plan] | None = None
    try:
        _check_parents(chain)
        plans = check_chain(chain, limits)
    except _FOUND_WRONG as exc:
        detail = _describe(exc)
    else:
        entries = sum(len(plan.entries) for plan in plans)
        detail = (
            f"chain of {_backups(len(plans))}, {entries} entries: every archive as its manifest says, within the"
            " limits, each recorded state reproduced by a dry run"
        )
    consistent = Check(CHAIN_CONSISTENT, plans is not None, detail, time.monotonic() - started)
    if plans is None:
        return [consistent, Check(FILES_CONTENT, False, "not checked: the chain is not consistent")]
    started = time.monotonic()
    try:
        detail = _check_content(plans, limits)
    except _FOUND_WRONG as exc:
        return [consistent, Check(FILES_CONTENT, False, _describe(exc), time.monotonic() - started)]
    return [consistent, Check(FILES_CONTENT, True, detail, time.monotonic() - started)]


def _check_parents(chain: list[ChainLink]) -> None:
    """Each incremental follows the backup its manifest says it was made on (manifests without
    ``parent_id`` are taken as they come: the dry run still checks them)."""
    if not chain:
        raise RestoreError("the chain is empty")
    for index, link in enumerate(chain):
        parent = link.manifest.get("parent_id") if isinstance(link.manifest, dict) else None
        if parent is None:
            continue
        if index == 0:
            raise IntegrityError(
                f"backup {link.backup_id} is an incremental made on backup {parent}, which the chain lacks"
            )
        if str(parent) != chain[index - 1].backup_id:
            raise IntegrityError(
                f"backup {link.backup_id} is an incremental made on backup {parent}, but follows backup"
                f" {chain[index - 1].backup_id} in the chain"
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename} is missing"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'an archive'} cannot be read: {exc.strerror or exc}"
    return str(exc)


class _Content:
    """Hashes the files each backup archived, backup after backup, and keeps what later ones need."""

    def __init__(self, plans: list[Plan], limits: RestoreLimits) -> None:
        self.limits = limits
        # Only the versions a later backup grows need their hash state kept.
        self.extended = {item.path for plan in plans for item in plan.entries if item.base_size is not None}
        self.versions: dict[str, tuple[int, hashlib._Hash]] = {}  # path -> (size, SHA-256 state at its end)
        self.bytes_read = 0
        self.lock = threading.Lock()

    def check_backup(self, plan: Plan) -> None:
        """Every file the backup archived, each pack and each member of its own a unit shared among
        threads, each with its own reader. A path appears once in a backup, so no two units touch
        the same version."""
        where = f"backup {plan.link.backup_id}"
        units: dict[str, list[FileRecord]] = {}
        for item in plan.entries:
            if item.kind == "file":
                units.setdefault(item.member, []).append(item)
        # Largest first, so that the threads finish together.
        pending = iter(sorted(units, key=lambda member: -plan.sizes[member]))
        failed = threading.Event()

        def work() -> None:
            with ArchiveReader(plan.link.archive, password=plan.link.password) as reader:
                while not failed.is_set():
                    with self.lock:
                        member = next(pending, None)
                    if member is None:
                        return
                    try:
                        read_contents(reader, member, units[member], plan.sizes[member], where, self._hasher(where))
                    except MEMBER_READ_ERRORS as exc:
                        failed.set()
                        raise RestoreError(f"{where}: {member_failure(plan.link.archive, member, exc)}") from exc
                    except BaseException:
                        failed.set()
                        raise

        workers = max(1, min(VERIFY_THREADS, len(units)))
        with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
            futures = [pool.submit(work) for _ in range(workers)]
        for future in futures:
            future.result()

    def _hasher(self, where: str) -> Callable[[FileRecord, Iterable[bytes], int], None]:
        def take(item: FileRecord, chunks: Iterable[bytes], declared: int) -> None:
            done = 0
            digest = hashlib.sha256()
            if item.base_size is not None:
                with self.lock:
                    base = self.versions.get(item.path)
                if base is None or base[0] != item.base_size:
                    raise IntegrityError(
                        f"{where}: {item.path!r} extends a version of {item.base_size} bytes that the backups"
                        " before it in the chain do not hold"
                    )
                done, digest = base[0], base[1].copy()
            count = check_content(
                item, chunks, declared, digest, where, done=done, limits=self.limits, elsewhere=self._read
            )
            if count != item.size:
                raise IntegrityError(f"{where}: {item.path!r} holds {count} bytes, its manifest says {item.size}")
            with self.lock:
                self.bytes_read += count - done
                if item.path in self.extended:
                    self.versions[item.path] = (count, digest)

        return take

    def _read(self) -> int:
        return self.bytes_read


def _check_content(plans: list[Plan], limits: RestoreLimits) -> str:
    """Hashes every file of the chain; the success detail, or raises what was found wrong."""
    content = _Content(plans, limits)
    holders: dict[str, tuple[str, FileRecord]] = {}  # path -> (backup, entry) of the version last archived
    for plan in plans:
        try:
            content.check_backup(plan)
        except ArchiveError as exc:
            # Its message names the archive file; the backup's id reads better in a report.
            raise RestoreError(f"backup {plan.link.backup_id}: {exc}") from exc
        for item in plan.entries:
            holders[item.path] = (plan.link.backup_id, item)
    last = plans[-1]
    files = sorted((item for item in last.state if item.kind == "file"), key=lambda item: item.path)
    for item in files:
        held = holders.get(item.path)
        if held is None or held[1].kind != "file":
            # The dry run of chain_check rules this out; kept so that a gap there cannot pass here.
            raise IntegrityError(f"backup {last.link.backup_id}: no backup of the chain archived {item.path!r}")
        backup_id, entry = held
        if (entry.sha256, entry.size) != (item.sha256, item.size):
            raise IntegrityError(
                f"backup {last.link.backup_id}: {item.path!r} (archived by backup {backup_id}) has SHA-256"
                f" {entry.sha256} and {entry.size} bytes, the recorded state says {item.sha256} and {item.size} bytes"
            )
    total = sum(item.size for item in files)
    return f"{len(files)} files, {total} bytes, every SHA-256 as recorded (chain of {_backups(len(plans))})"


def _backups(count: int) -> str:
    return f"{count} backup" if count == 1 else f"{count} backups"
