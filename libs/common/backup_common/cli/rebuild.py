"""`backupctl catalog rebuild`: the catalog recreated from what storage holds.

The catalog is an index; each backup's directory (local storage, and its off-site copy when one is
configured) holds a signed ``manifest.json`` that describes it fully. A backup the catalog has no
row for, and that no tombstone marks deleted, is checked — its manifest is this system's, its data
key unwraps with the master key, its MAC is authentic, its archives and part manifests are there
with the sizes recorded — and written back: ``completed`` when all of that was confirmed, ``failed``
with the reason otherwise, never ``completed`` on trust. Backups the catalog knows, whatever their
status, are left alone, so a rebuild can run any number of times and never brings back a deleted one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.migrations import migrate
from backup_common.adapters.mysql.rebuild import (
    UNKNOWN_DATABASE,
    UNKNOWN_TABLE,
    add_rebuilt,
    catalogued,
    record_rebuild,
)
from backup_common.adapters.offsite.s3 import s3_offsite
from backup_common.adapters.runtime.service import CATALOG_ERRORS, CATALOG_VARIABLE, mysql_problem
from backup_common.adapters.settings import ENV_PREFIX, Settings, SettingsError
from backup_common.cli.api_client import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from backup_common.cli.local import operator
from backup_common.domain.events import BackupPart, BackupType
from backup_common.domain.model import (
    MAX_ERROR_TEXT,
    MAX_PART_WARNINGS,
    REBUILT_UNCONFIRMED,
    AuditEntry,
    Backup,
    BackupStatus,
    Part,
    PartStatus,
    PartWarning,
    Trigger,
)
from backup_common.domain.offsite import OffsiteCopy, OffsiteStatus
from backup_common.domain.ports import OffsiteError, OffsiteStore, WrappedKey
from backup_common.engine.crypto import KeyUnwrapError, MasterKey
from backup_common.engine.locate import backup_id_of
from backup_common.engine.storage import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    archive_name,
    is_partial,
    manifest_problem,
    part_manifest_name,
    read_json,
)

log = logging.getLogger(__name__)

COMMAND = "backupctl catalog rebuild"
# Every error of a backup added as failed starts so: the operator (and housekeeping) can tell.
REASON_PREFIX = REBUILT_UNCONFIRMED
OFFSITE_VARIABLE = f"{ENV_PREFIX}OFFSITE_URL"
LOCAL = "local storage"
OFFSITE = "off-site"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# The catalog's column widths (infra/mysql/0001 and 0005): a longer value is no manifest of ours.
_MAX_DESCRIPTION = 500
_MAX_REQUESTED_BY = 255
_MAX_SCHEDULE = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What this run makes of a backup it could not add, as an incremental made on it sees its parent.
_NOT_ADDED = "not added"


class Unusable(Exception):
    """The copy's manifest cannot describe the backup (unreadable, not this system's, or its key is
    wrapped by another master key): nothing is written, so a later run, set up right, adds it."""


class Abort(Exception):
    """The rebuild cannot go on (a store or the catalog failed); the message is one line."""


@dataclass
class StoredCopy:
    """One copy of a backup's directory: in local storage, or off-site."""

    where: str  # LOCAL or OFFSITE
    storage_path: str  # YYYY-MM-DD/<id>
    manifest: Any = None  # the parsed manifest.json; None when unreadable
    unreadable: str | None = None  # why manifest.json could not be read
    sizes: dict[str, int] = field(default_factory=dict)  # every file's size, by name
    # Each part manifest present: its document, or why it could not be read.
    part_manifests: dict[BackupPart, dict[str, Any] | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Described:
    """What a manifest says of its backup, each field checked to be what the catalog can hold."""

    document: dict[str, Any]
    type: BackupType
    description: str
    requested_by: str
    parent_id: str | None
    created_at: datetime
    completed_at: datetime | None
    trigger: Trigger
    schedule: str | None
    archive: bool
    parts: dict[BackupPart, dict[str, Any]]
    key: WrappedKey | None  # the data key (of the archives, or of the MAC alone); None: the manifest has none


@dataclass(frozen=True)
class Reading:
    """One copy's manifest, described and authenticated (``problems`` empty: authentic)."""

    copy: StoredCopy
    described: Described
    problems: list[str]
    key_unwrapped: bool


@dataclass
class Tally:
    added: int = 0
    already: int = 0
    deleted: int = 0
    unconfirmed: int = 0

    def line(self, dry_run: bool) -> str:
        found = self.added + self.already + self.deleted + self.unconfirmed
        added = "would be added" if dry_run else "added"
        text = (
            f"catalog rebuild: {found} backups found in storage: {self.added} {added}, {self.already} already in"
            f" the catalog, {self.deleted} deleted (tombstone), {self.unconfirmed} unconfirmed"
        )
        return text + (" (dry run: nothing was written)" if dry_run else "")


# Reading the stores.


def local_backups(root: Path) -> dict[str, str]:
    """The storage path of every backup directory under ``root`` holding a ``manifest.json``, by id.
    Blocking."""
    found: dict[str, str] = {}
    for day in _directories(root):
        if not _DAY.fullmatch(day.name):
            continue
        for directory in _directories(day):
            # The name is the id, canonical; anything else (a backup being removed is renamed to a
            # hidden name) is no backup.
            if backup_id_of(directory.name) == directory.name and (directory / MANIFEST).is_file():
                found[directory.name] = f"{day.name}/{directory.name}"
    return found


def _directories(directory: Path) -> list[Path]:
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def read_local(root: Path, storage_path: str) -> StoredCopy:
    """The backup's local copy as it is now. Blocking."""
    directory = root / storage_path
    copy = StoredCopy(LOCAL, storage_path)
    try:
        copy.sizes = {
            entry.name: entry.stat().st_size
            for entry in os.scandir(directory)
            if entry.is_file() and not is_partial(entry.name)
        }
    except OSError as exc:
        copy.unreadable = f"its directory cannot be read: {exc.strerror or exc}"
        return copy
    try:
        copy.manifest = read_json(directory / MANIFEST)
    except (OSError, ValueError) as exc:
        copy.unreadable = f"manifest.json cannot be read: {_os_reason(exc)}"
    for part in BackupPart:
        name = part_manifest_name(part)
        if name in copy.sizes:
            try:
                copy.part_manifests[part] = read_json(directory / name)
            except (OSError, ValueError) as exc:
                copy.part_manifests[part] = f"{name} cannot be read: {_os_reason(exc)}"
    return copy


async def read_offsite(store: OffsiteStore, storage_path: str) -> StoredCopy:
    """The backup's off-site copy as the store holds it; Abort when the store cannot list it."""
    copy = StoredCopy(OFFSITE, storage_path)
    try:
        listing = await store.listing(storage_path)
    except OffsiteError as exc:
        raise Abort(f"the off-site store failed listing {store.location(storage_path)}: {exc}") from exc
    copy.sizes = {name: found.size for name, found in listing.items()}
    if MANIFEST not in copy.sizes:
        copy.unreadable = "manifest.json is missing"
        return copy
    try:
        copy.manifest = await store.read_json(storage_path, MANIFEST)
    except OffsiteError as exc:
        copy.unreadable = f"manifest.json cannot be read: {exc}"
    for part in BackupPart:
        name = part_manifest_name(part)
        if name in copy.sizes:
            try:
                copy.part_manifests[part] = await store.read_json(storage_path, name)
            except OffsiteError as exc:
                copy.part_manifests[part] = f"{name} cannot be read: {exc}"
    return copy


def _os_reason(exc: BaseException) -> str:
    return str(exc.strerror) if isinstance(exc, OSError) and exc.strerror else str(exc)


# Checking a manifest.


def describe(document: Any, backup_id: str) -> Described:
    """The manifest's backup, every field checked; Unusable, saying why, when it cannot be one."""
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise Unusable(f"manifest.json is not a manifest of this system (format {found!r})")
    if document.get("version") != MANIFEST_VERSION:
        raise Unusable(f"manifest.json is version {document.get('version')!r}; this tool reads {MANIFEST_VERSION}")
    backup = document.get("backup")
    if not isinstance(backup, dict):
        raise Unusable("manifest.json has no backup section")
    if backup.get("id") != backup_id:
        raise Unusable(f"manifest.json describes backup {backup.get('id')!r}, not the one its directory names")
    try:
        backup_type = BackupType(str(backup.get("type")))
        # Manifests written before they carried the trigger, schedule entry and archive flag give a
        # backup that is `api`, of no schedule, and no archive.
        trigger = Trigger(str(backup.get("trigger", Trigger.API.value)))
    except ValueError as exc:
        raise Unusable(f"manifest.json: {exc}") from None
    parent_id = backup.get("parent_id")
    if parent_id is not None and (not isinstance(parent_id, str) or backup_id_of(parent_id) != parent_id):
        raise Unusable(f"manifest.json names the parent {parent_id!r}, which is no backup id")
    schedule = backup.get("schedule")
    archive = backup.get("archive", False)
    if schedule is not None and not _text(schedule, _MAX_SCHEDULE):
        raise Unusable("manifest.json's schedule is not a schedule entry's name")
    if not isinstance(archive, bool):
        raise Unusable("manifest.json's archive flag is not true or false")
    return Described(
        document=document,
        type=backup_type,
        description=_field(backup, "description", _MAX_DESCRIPTION),
        requested_by=_field(backup, "requested_by", _MAX_REQUESTED_BY),
        parent_id=parent_id,
        created_at=_time(backup.get("created_at"), "created_at"),
        completed_at=_time(backup["completed_at"], "completed_at") if backup.get("completed_at") else None,
        trigger=trigger,
        schedule=schedule,
        archive=archive,
        parts=_parts(document.get("parts"), backup_type),
        key=_wrapped_key(document.get("encryption")),
    )


def _text(value: Any, longest: int) -> bool:
    """Whether ``value`` is text the catalog can hold in a column ``longest`` characters wide."""
    if not isinstance(value, str) or len(value) > longest:
        return False
    try:
        value.encode("utf-8")  # a lone surrogate (valid JSON) is no utf8mb4
    except UnicodeEncodeError:
        return False
    return True


def _field(backup: dict[str, Any], name: str, longest: int) -> str:
    value = backup.get(name, "")
    if not _text(value, longest):
        raise Unusable(f"manifest.json's {name} is not text of at most {longest} characters")
    text: str = value
    return text


def _time(value: Any, name: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise Unusable(f"manifest.json's {name} {value!r} is not a time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parts(described: Any, backup_type: BackupType) -> dict[BackupPart, dict[str, Any]]:
    if not isinstance(described, dict) or set(described) != {part.value for part in backup_type.parts}:
        listed = sorted(described) if isinstance(described, dict) else []
        raise Unusable(f"manifest.json lists the parts {listed}, not those of a {backup_type.value} backup")
    parts: dict[BackupPart, dict[str, Any]] = {}
    for part in backup_type.parts:
        recorded = described[part.value]
        if not isinstance(recorded, dict):
            raise Unusable(f"manifest.json's {part.value} part is not described")
        size, sha256 = recorded.get("size_bytes"), recorded.get("sha256")
        # The file name is joined to the directory: only the one name the workers write is taken.
        if recorded.get("file") != archive_name(part):
            raise Unusable(f"manifest.json names the {part.value} archive {recorded.get('file')!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Unusable(f"manifest.json's {part.value} part has no size")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise Unusable(f"manifest.json's {part.value} part has no SHA-256")
        parts[part] = recorded
    return parts


def _wrapped_key(encryption: Any) -> WrappedKey | None:
    if not isinstance(encryption, dict):
        raise Unusable("manifest.json has no encryption section")
    scheme = encryption.get("scheme")
    if scheme == "none":
        # Archives not encrypted: the key of the manifest's MAC alone, in manifests that carry it.
        if "mac_key_id" not in encryption:
            return None
        key_id, wrapped = encryption.get("mac_key_id"), encryption.get("mac_wrapped_key")
    elif scheme == "winzip-aes-256":
        key_id, wrapped = encryption.get("key_id"), encryption.get("wrapped_key")
    else:
        raise Unusable(f"manifest.json's encryption scheme {scheme!r} is unknown")
    if not isinstance(key_id, str) or not key_id or not isinstance(wrapped, str):
        raise Unusable("manifest.json's encryption section has no wrapped data key")
    try:
        return WrappedKey(key_id, base64.b64decode(wrapped, validate=True))
    except (binascii.Error, ValueError):
        raise Unusable("manifest.json's wrapped data key is not base64") from None


def authenticate(described: Described, backup_id: str, master: MasterKey) -> tuple[list[str], bool]:
    """Why the manifest cannot be trusted (empty: its MAC is authentic), and whether its data key
    unwrapped: AES-GCM bound to the backup id proves the key the backup's own even when the rest of the
    manifest was edited. Unusable when the key is wrapped by another master key: that says the
    configuration is wrong, not the backup. Blocking (the MAC covers every file a files manifest lists)."""
    key = described.key
    if key is None:
        return [
            "its archives are not encrypted and manifest.json (written before it carried the key of its MAC)"
            " holds no data key: the manifest cannot be authenticated"
        ], False
    if key.key_id != master.key_id:
        raise Unusable(
            f"its data key is wrapped by master key {key.key_id}, but the configured master key is"
            f" {master.key_id}: configure that key and run the rebuild again"
        )
    try:
        data_key = master.unwrap(key.wrapped, backup_id)
    except KeyUnwrapError as exc:
        return [str(exc)], False
    problem = manifest_problem(described.document, backup_id, data_key)
    return ([problem] if problem else []), True


def read_copy(copy: StoredCopy, backup_id: str, master: MasterKey) -> Reading:
    """The copy's manifest described and authenticated; Unusable when it cannot be. Blocking."""
    if copy.unreadable is not None:
        raise Unusable(copy.unreadable)
    described = describe(copy.manifest, backup_id)
    return Reading(copy, described, *authenticate(described, backup_id, master))


def part_issue(copy: StoredCopy, part: BackupPart, recorded: dict[str, Any]) -> str | None:
    """What keeps the copy's part from being the one the manifest records; None when nothing does."""
    name = archive_name(part)
    size = copy.sizes.get(name)
    if size is None:
        return f"{name} is missing"
    if size != recorded["size_bytes"]:
        return f"{name} is {size} bytes, not the {recorded['size_bytes']} the manifest records"
    beside = copy.part_manifests.get(part)
    if beside is None:
        return f"{part_manifest_name(part)} is missing"
    if isinstance(beside, str):
        return beside
    if beside != recorded:
        return f"{part_manifest_name(part)} differs from what manifest.json says of that part"
    return None


# Building what the catalog records.


def _epoch(value: Any) -> datetime | None:
    """A part manifest's time (seconds since the epoch), when it is one."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _shown(text: Any) -> str:
    """A path as the catalog can hold it: a name that is not UTF-8 (lone surrogates) shows its bytes
    as \\xNN, as the file_backup worker records its warnings."""
    value = str(text)
    try:
        return os.fsencode(value).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _warnings(recorded: dict[str, Any]) -> list[PartWarning]:
    skipped = recorded.get("skipped")
    if not isinstance(skipped, list):
        return []
    return [
        PartWarning(_shown(item.get("path", "")), _shown(item.get("reason", "")))
        for item in skipped
        if isinstance(item, dict)
    ]


def _item_count(recorded: dict[str, Any]) -> int:
    """What the worker counted: a database part's rows, a files part's entries."""
    rows = recorded.get("rows")
    if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0:
        return rows
    entries = recorded.get("entries")
    return len(entries) if isinstance(entries, list) else 0


def rebuilt_part(part: BackupPart, recorded: dict[str, Any], issue: str | None, now: datetime) -> Part:
    warnings = _warnings(recorded)
    progress = recorded.get("progress")
    return Part(
        part=part,
        status=PartStatus.COMPLETED if issue is None else PartStatus.FAILED,
        file_name=archive_name(part),
        size_bytes=recorded["size_bytes"],
        sha256=recorded["sha256"],
        item_count=_item_count(recorded),
        progress=progress if isinstance(progress, dict) else None,
        warnings=warnings[:MAX_PART_WARNINGS],
        warning_count=len(warnings),
        error=(REASON_PREFIX + issue)[:MAX_ERROR_TEXT] if issue else None,
        attempts=1,
        started_at=_epoch(recorded.get("started_at")),
        completed_at=_epoch(recorded.get("finished_at")),
        updated_at=now,
    )


def rebuilt_backup(
    backup_id: str,
    storage_path: str,
    described: Described,
    issues: dict[BackupPart, str],
    problems: list[str],
    now: datetime,
) -> Backup:
    parts = [rebuilt_part(part, described.parts[part], issues.get(part), now) for part in described.type.parts]
    started = [part.started_at for part in parts if part.started_at is not None]
    return Backup(
        id=backup_id,
        type=described.type,
        status=BackupStatus.FAILED if problems else BackupStatus.COMPLETED,
        storage_path=storage_path,
        created_at=described.created_at,
        # Now, not the manifest's time: housekeeping erases a failed backup a day after its last
        # change, which gives the operator that day to look at one that could not be confirmed.
        updated_at=now,
        description=described.description,
        requested_by=described.requested_by,
        trigger=described.trigger,
        schedule=described.schedule,
        archive=described.archive,
        parent_id=described.parent_id,
        size_bytes=sum(part.size_bytes for part in parts),
        error=(REASON_PREFIX + "; ".join(problems))[:MAX_ERROR_TEXT] if problems else None,
        started_at=min(started) if started else None,
        completed_at=described.completed_at,
        parts=parts,
    )


# The rebuild.


@dataclass(frozen=True)
class Survey:
    """Every backup the stores hold, by id: its storage path locally and off-site; and the tombstones."""

    local: dict[str, str]
    offsite: dict[str, str]
    tombstones: set[str]


async def survey(settings: Settings, store: OffsiteStore | None) -> Survey:
    """Lists both stores before anything is written: Abort when the off-site store cannot be read,
    for without its tombstones a deleted backup could come back."""
    local = await asyncio.to_thread(local_backups, settings.storage_dir)
    if store is None:
        return Survey(local, {}, set())
    try:
        paths = await store.backups()
        tombstones = await store.deleted()
    except OffsiteError as exc:
        raise Abort(f"cannot read the off-site store ({OFFSITE_VARIABLE}): {exc}") from exc
    offsite = {}
    for path in paths:
        day, _, name = path.partition("/")
        if _DAY.fullmatch(day) and backup_id_of(name) == name:
            offsite[name] = path
    return Survey(local, offsite, tombstones)


@dataclass
class Rebuild:
    """One run: what the catalog knows, what the stores hold, and what became of each backup."""

    settings: Settings
    master: MasterKey
    store: OffsiteStore | None
    pool: db.Pool | None  # None: a dry run on a catalog that does not exist yet
    dry_run: bool
    statuses: dict[str, BackupStatus | str] = field(default_factory=dict)  # the catalog's, then this run's
    tally: Tally = field(default_factory=Tally)

    def say(self, line: str) -> None:
        print(line, flush=True)

    async def run(self, found: Survey) -> None:
        if self.pool is not None:
            try:
                self.statuses.update(await catalogued(self.pool))
            except CATALOG_ERRORS as exc:
                raise Abort(mysql_problem(self.settings.catalog, CATALOG_VARIABLE, exc)) from exc
        local, offsite, tombstones = found.local, found.offsite, found.tombstones
        # Day by day, and by creation time within a day: a parent is settled before its incrementals.
        days: dict[str, list[str]] = {}
        for backup_id in sorted(local.keys() | offsite.keys()):
            path = local.get(backup_id) or offsite[backup_id]
            days.setdefault(path.partition("/")[0], []).append(backup_id)
        for day in sorted(days):
            waiting: list[tuple[datetime, str, list[StoredCopy]]] = []
            for backup_id in days[day]:
                known = self.statuses.get(backup_id)
                if known is not None:
                    self.tally.already += 1
                    self.say(f"backup {backup_id}: already in the catalog ({known})")
                elif backup_id in tombstones:
                    self.tally.deleted += 1
                    self.statuses[backup_id] = BackupStatus.DELETED
                    self.say(f"backup {backup_id}: deleted (tombstone in the off-site store); not added")
                else:
                    copies = await self._copies(local.get(backup_id), offsite.get(backup_id))
                    waiting.append((_created(copies), backup_id, copies))
            for _, backup_id, copies in sorted(waiting, key=lambda entry: (entry[0], entry[1])):
                await self._settle(backup_id, copies)

    async def _copies(self, local_path: str | None, offsite_path: str | None) -> list[StoredCopy]:
        copies = []
        if local_path is not None:
            copies.append(await asyncio.to_thread(read_local, self.settings.storage_dir, local_path))
        if offsite_path is not None and self.store is not None:
            copies.append(await read_offsite(self.store, offsite_path))
        return copies

    async def _settle(self, backup_id: str, copies: list[StoredCopy]) -> None:
        """Checks the backup and adds it (or says what it would add)."""
        readings: list[Reading] = []
        unusable: list[str] = []
        for copy in copies:
            try:
                readings.append(await asyncio.to_thread(read_copy, copy, backup_id, self.master))
            except Unusable as exc:
                unusable.append(f"{exc} ({copy.where})")
        if not readings:
            self.tally.unconfirmed += 1
            self.statuses[backup_id] = _NOT_ADDED
            self.say(f"backup {backup_id}: unconfirmed: {'; '.join(unusable)}; not added")
            return
        # An authentic manifest wins over one that is not (local storage first when both are).
        chosen = next((reading for reading in readings if not reading.problems), readings[0])
        described = chosen.described
        problems = list(chosen.problems)
        notes = [
            f"the {reading.copy.where} manifest.json differs from the authentic one"
            for reading in readings
            if reading is not chosen and reading.described.document != described.document
        ]
        issues: dict[BackupPart, str] = {}
        for part, recorded in described.parts.items():
            found = [(copy.where, part_issue(copy, part, recorded)) for copy in copies]
            if not any(issue is None for _, issue in found):
                issues[part] = "; ".join(f"{issue} ({where})" for where, issue in found)
        problems.extend(issues.values())
        if (parent := self._parent_problem(described.parent_id)) is not None:
            problems.append(parent)
        whole = [copy.where for copy in copies if self._whole(copy, described)]
        storage_path = copies[0].storage_path
        now = datetime.now(UTC)
        backup = rebuilt_backup(backup_id, storage_path, described, issues, problems, now)
        key = described.key if chosen.key_unwrapped else None  # never one the master key did not open
        offsite = self._offsite_copy(backup, copies, whole, now)
        head = f"backup {backup_id} ({described.type.value}, {described.created_at:%Y-%m-%d %H:%M:%S} UTC)"
        if not self.dry_run:
            assert self.pool is not None
            try:
                added = await add_rebuilt(self.pool, backup, key, offsite)
            except CATALOG_ERRORS as exc:
                if isinstance(exc, TimeoutError) or db.unreachable(exc):
                    raise Abort(mysql_problem(self.settings.catalog, CATALOG_VARIABLE, exc)) from exc
                self.tally.unconfirmed += 1
                self.statuses[backup_id] = _NOT_ADDED
                self.say(f"{head}: unconfirmed: the catalog refused it: {exc}; not added")
                return
            if not added:
                self.tally.already += 1
                self.say(f"backup {backup_id}: already in the catalog (added meanwhile)")
                return
        self.statuses[backup_id] = backup.status
        held = " and ".join(whole) if whole else f"its parts split between {LOCAL} and {OFFSITE}"
        tail = f"; note: {'; '.join(notes)}" if notes else ""
        if problems:
            self.tally.unconfirmed += 1
            added_as = "would be added as failed" if self.dry_run else "added as failed"
            self.say(f"{head}: unconfirmed: {'; '.join(problems)}; {added_as}{tail}")
        else:
            self.tally.added += 1
            self.say(f"{head}: {'would be added' if self.dry_run else 'added'} ({held}){tail}")

    def _parent_problem(self, parent_id: str | None) -> str | None:
        """Why an incremental's chain cannot be confirmed; None when its parent is a completed backup."""
        if parent_id is None:
            return None
        status = self.statuses.get(parent_id)
        if status is BackupStatus.COMPLETED:
            return None
        if status is None:
            return f"its parent backup {parent_id} is neither in the catalog nor in storage"
        if status == _NOT_ADDED:
            return f"its parent backup {parent_id} could not be confirmed"
        return f"its parent backup {parent_id} is {status}"

    @staticmethod
    def _whole(copy: StoredCopy, described: Described) -> bool:
        """Whether the copy holds the whole backup: the manifest chosen, every archive and part manifest."""
        return copy.manifest == described.document and all(
            part_issue(copy, part, recorded) is None for part, recorded in described.parts.items()
        )

    def _offsite_copy(
        self, backup: Backup, copies: list[StoredCopy], whole: list[str], now: datetime
    ) -> OffsiteCopy | None:
        """The off-site copy's row when the store holds the whole backup."""
        if self.store is None or OFFSITE not in whole:
            return None
        remote = next(copy for copy in copies if copy.where == OFFSITE)
        return OffsiteCopy(
            backup_id=backup.id,
            status=OffsiteStatus.COPIED,
            attempts=1,
            bytes_copied=sum(remote.sizes.values()),
            location=self.store.location(remote.storage_path),
            copied_at=now,
            # No local copy: the local-expiry housekeeping has nothing to remove.
            local_removed_at=None if any(copy.where == LOCAL for copy in copies) else now,
        )


def _created(copies: Sequence[StoredCopy]) -> datetime:
    """When the backup was made, as a manifest says; the end of time when none says (checked last)."""
    for copy in copies:
        backup = copy.manifest.get("backup") if isinstance(copy.manifest, dict) else None
        if isinstance(backup, dict) and isinstance(backup.get("created_at"), str):
            try:
                created = datetime.fromisoformat(backup["created_at"])
            except ValueError:
                continue
            return created if created.tzinfo else created.replace(tzinfo=UTC)
    return datetime.max.replace(tzinfo=UTC)


async def _catalog_pool(settings: Settings, dry_run: bool) -> db.Pool | None:
    """The catalog, migrated first (a brand-new database is the disaster-recovery case); a dry run
    writes nothing, so it migrates nothing and takes a catalog that does not exist yet as empty.
    Abort when MySQL cannot be reached or refuses."""
    try:
        if not dry_run:
            await migrate(settings.catalog)
        pool = await db.create_pool(settings.catalog, minsize=1, maxsize=1)
    except CATALOG_ERRORS as exc:
        if dry_run and _missing_catalog(exc):
            return None
        raise Abort(mysql_problem(settings.catalog, CATALOG_VARIABLE, exc)) from exc
    if dry_run:
        try:
            await catalogued(pool)
        except CATALOG_ERRORS as exc:
            await db.close_pool(pool)
            if _missing_catalog(exc):
                return None
            raise Abort(mysql_problem(settings.catalog, CATALOG_VARIABLE, exc)) from exc
    return pool


def _missing_catalog(exc: BaseException) -> bool:
    code = exc.args[0] if exc.args else None
    return code in (UNKNOWN_DATABASE, UNKNOWN_TABLE)


async def rebuild_catalog(settings: Settings, *, dry_run: bool = False) -> int:
    """Runs the command; its exit status: 0 every backup found is in the catalog (or deleted), 1 some
    could not be confirmed (each says why), 2 nothing could be done (configuration, catalog or
    off-site store)."""
    try:
        master = MasterKey(await asyncio.to_thread(settings.load_master_key))  # it may be read from a file
    except SettingsError as exc:
        print(f"{COMMAND}: {exc} to check the backups' manifests", file=sys.stderr)
        return EXIT_REFUSED
    try:
        store: OffsiteStore | None = s3_offsite(settings)
    except (OffsiteError, ValueError) as exc:
        print(f"{COMMAND}: cannot use the off-site store ({OFFSITE_VARIABLE}): {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        if store is None and not await asyncio.to_thread(settings.storage_dir.is_dir):
            print(
                f"{COMMAND}: {settings.storage_dir} ({ENV_PREFIX}STORAGE_DIR) is not a directory, and no off-site"
                f" store is configured ({OFFSITE_VARIABLE}): there is nothing to rebuild from",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        try:
            found = await survey(settings, store)
            pool = await _catalog_pool(settings, dry_run)
        except Abort as exc:
            print(f"{COMMAND}: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if dry_run and pool is None:
            print(f"{COMMAND}: the catalog {settings.catalog.database} does not exist yet: it is taken as empty")
        rebuild = Rebuild(settings, master, store, pool, dry_run)
        try:
            await rebuild.run(found)
        except Abort as exc:
            print(rebuild.tally.line(dry_run), flush=True)
            kept = (
                "; the backups added so far stay, and running the rebuild again goes on" if rebuild.tally.added else ""
            )
            print(f"{COMMAND}: stopped: {exc}{kept}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            if pool is not None:
                if not dry_run:
                    await _audit(pool, rebuild.tally)
                await db.close_pool(pool)
    finally:
        if store is not None:
            await store.close()
    print(rebuild.tally.line(dry_run), flush=True)
    return EXIT_FAILED if rebuild.tally.unconfirmed else EXIT_OK


async def _audit(pool: db.Pool, tally: Tally) -> None:
    """Records the rebuild in the audit log, as the other offline tools record their use."""
    detail = {
        "added": tally.added,
        "already": tally.already,
        "deleted": tally.deleted,
        "unconfirmed": tally.unconfirmed,
    }
    entry = AuditEntry(actor=f"cli:{operator()}", action="cli.catalog-rebuild", outcome="allowed", detail=detail)
    try:
        await record_rebuild(pool, entry)
    except CATALOG_ERRORS as exc:
        log.warning("could not write the audit record (%s)", type(exc).__name__)
