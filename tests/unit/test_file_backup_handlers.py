"""The file_backup service's handlers, run through its bootstrap with fakes of the ports, on real
(small) trees and the real file engine."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.service import Service
from backup_common.adapters.settings import Settings
from backup_common.domain.documents import RestoreLimits
from backup_common.domain.events import BackupPart, BackupRequested, BackupType
from backup_common.domain.jobs import part_job_key
from backup_common.domain.model import Backup, BackupStatus
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.restore import ChainLink
from backup_common.engine.locate import locate_part
from backup_files.bootstrap import bootstrap
from tests.unit.fakes import FakeSystem, fake_ports


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    for tree in ("uploads", "configs", "logs"):
        (root / tree).mkdir(parents=True)
    (root / "uploads" / "photo.jpg").write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)
    (root / "configs" / "app.ini").write_text("[app]\nname = shop\n")
    (root / "logs" / "app.log").write_text("started\n")
    return root


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def service_with(system: FakeSystem, trees: Path) -> Service:
    settings = Settings(uploads_dir=trees / "uploads", configs_dir=trees / "configs", logs_dir=trees / "logs")
    return bootstrap(settings, system.ports, CollectorRegistry())


async def back_up(system: FakeSystem, service: Service, backup_type: BackupType) -> Backup:
    backup = Backup.request(backup_type, requested_by="alice", now=system.ports.clock())
    async with system.ports.uow() as uow:
        await uow.backups.add(backup)
        await uow.commit()
    event = system.catalog.events(BackupRequested)[-1]
    await service.handlers[BackupRequested](event)
    await service.wait_idle()
    system.clock.advance(60)  # the fake clock: the next backup comes later
    return system.catalog.backups[backup.id]


def restored(system: FakeSystem, *backups: Backup, into: Path) -> dict[str, bytes]:
    links = []
    for backup in backups:
        located = locate_part(system.storage.root, backup.id, BackupPart.FILES, lambda: system.keys.master)
        links.append(ChainLink(located.backup_id, located.archive, located.password, located.manifest))
    restore_chain(links, into, RestoreLimits())
    return {str(path.relative_to(into)): path.read_bytes() for path in sorted(into.rglob("*")) if path.is_file()}


async def test_a_files_backup_archives_the_three_trees_and_restores_to_the_same_files(
    system: FakeSystem, trees: Path, tmp_path: Path
) -> None:
    service = service_with(system, trees)

    backup = await back_up(system, service, BackupType.FILES)

    assert backup.status is BackupStatus.COMPLETED, backup.error
    assert backup.part(BackupPart.FILES).item_count == 3
    assert restored(system, backup, into=tmp_path / "out") == {
        "configs/app.ini": b"[app]\nname = shop\n",
        "logs/app.log": b"started\n",
        "uploads/photo.jpg": (trees / "uploads" / "photo.jpg").read_bytes(),
    }


async def test_an_incremental_carries_what_changed_since_the_last_files_part_and_names_it_its_parent(
    system: FakeSystem, trees: Path, tmp_path: Path
) -> None:
    service = service_with(system, trees)
    full = await back_up(system, service, BackupType.FILES)
    (trees / "logs" / "app.log").write_text("started\nstopped\n")
    (trees / "configs" / "app.ini").unlink()

    incremental = await back_up(system, service, BackupType.INCREMENTAL)

    assert incremental.status is BackupStatus.COMPLETED, incremental.error
    assert incremental.parent_id == full.id
    directory = system.storage.root / incremental.storage_path
    manifest = json.loads((directory / "files.json").read_text())
    assert [entry["path"] for entry in manifest["entries"]] == ["logs/app.log"]
    assert manifest["deleted"] == ["configs/app.ini"]
    assert restored(system, full, incremental, into=tmp_path / "out")["logs/app.log"] == b"started\nstopped\n"


async def test_an_incremental_with_no_earlier_files_part_is_complete_and_says_so(
    system: FakeSystem, trees: Path
) -> None:
    service = service_with(system, trees)

    incremental = await back_up(system, service, BackupType.INCREMENTAL)

    assert incremental.parent_id is None
    manifest = json.loads((system.storage.root / incremental.storage_path / "files.json").read_text())
    assert manifest["kind"] == "complete"
    assert "this incremental is a complete files backup" in manifest["note"]


async def test_at_start_the_worker_sweeps_temporary_files_of_backups_no_live_worker_is_making(
    system: FakeSystem, trees: Path
) -> None:
    root = system.storage.root
    settings = Settings(storage_dir=root, uploads_dir=trees / "uploads", configs_dir=trees / "configs")
    service = bootstrap(settings, system.ports, CollectorRegistry())
    abandoned, running = str(uuid.uuid4()), str(uuid.uuid4())
    assert await system.ports.leases.claim(part_job_key(running, BackupPart.FILES), "another-worker")
    an_hour_ago = time.time() - 3600
    for backup_id in (abandoned, running):
        directory = root / "2026-01-01" / backup_id
        directory.mkdir(parents=True)
        for name in (".files.zip.k1ll3d.partial", ".manifest.json.partial", "files.zip"):
            (directory / name).write_bytes(b"x")
            os.utime(directory / name, (an_hour_ago, an_hour_ago))

    [sweep] = service.loops
    await sweep()

    assert sorted(path.name for path in (root / "2026-01-01" / abandoned).iterdir()) == ["files.zip"]
    assert len(list((root / "2026-01-01" / running).iterdir())) == 3
