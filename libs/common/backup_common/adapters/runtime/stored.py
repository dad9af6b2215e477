"""Where a backup's parts are in storage, with their manifests and the passwords of their archives,
as restores and verification read them: through the ports, from the catalog and storage (fetched
back from the off-site copy when the local one is missing or damaged)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_common.adapters.runtime.fetch import LocalCopyMissing, local_copy
from backup_common.adapters.runtime.jobs import PartFailure
from backup_common.domain.events import BackupPart
from backup_common.domain.model import Backup, BackupStatus
from backup_common.domain.ports import Ports
from backup_common.engine.crypto import archive_password
from backup_common.engine.locate import MAX_CHAIN


@dataclass(frozen=True)
class StoredPart:
    """A backup's part as storage holds it, with the password of its archive."""

    backup_id: str
    archive: Path
    manifest: dict[str, Any]
    password: str | None


class StoredParts:
    def __init__(self, ports: Ports, *, checksums: bool = True) -> None:
        """``checksums``: hash each archive before it is used, to fetch a damaged one from off-site
        (False when the caller has just done so, or hashes it itself)."""
        self._ports = ports
        self._checksums = checksums

    async def part(self, backup: Backup, part: BackupPart) -> StoredPart:
        """Where the part's archive is, its manifest, and the password its data key gives."""
        record = backup.part(part)
        if record.file_name is None:
            raise PartFailure(f"backup {backup.id} records no archive for its {part.value} part")
        try:
            directory = await local_copy(self._ports, backup, checksums=self._checksums)
        except LocalCopyMissing as exc:
            raise PartFailure(str(exc)) from exc
        try:
            manifest = await self._ports.storage.read_part_manifest(backup, part)
        except OSError as exc:
            raise PartFailure(
                f"backup {backup.id}: the {part.value} part manifest is unreadable ({exc.strerror or exc})"
            ) from exc
        password = None
        if (manifest.get("encryption") or {}).get("scheme", "none") != "none":
            key = await self._ports.keys.existing_key(backup.id)
            if key is None:
                raise PartFailure(f"backup {backup.id} has no data key any more (it was crypto-erased)")
            password = archive_password(key)
        return StoredPart(backup.id, directory / record.file_name, manifest, password)

    async def files_chain(self, backup: Backup) -> list[StoredPart]:
        """The files parts a restore of ``backup`` replays: its complete base first, then each
        incremental up to ``backup``."""
        chain = [await self.part(backup, BackupPart.FILES)]
        while (parent_id := chain[-1].manifest.get("parent_id")) is not None:
            if len(chain) > MAX_CHAIN:
                raise PartFailure(f"the chain of backup {backup.id} is longer than {MAX_CHAIN} backups")
            async with self._ports.uow() as uow:
                parent = await uow.backups.get(str(parent_id))
            if parent is None or parent.status is not BackupStatus.COMPLETED:
                state = "gone from the catalog" if parent is None else parent.status.value
                raise PartFailure(f"backup {chain[-1].backup_id} is an incremental on {parent_id}, which is {state}")
            chain.append(await self.part(parent, BackupPart.FILES))
        return chain[::-1]
