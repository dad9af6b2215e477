"""Runs our files backup, incremental or restore in a process of its own, measured as tar and restic are.

    python -m bench.run_ours_files files --root var/bench/tree --out var/bench/ours-files.archive
    python -m bench.run_ours_files incremental --root var/bench/tree --parent var/bench/ours-files.json \\
        --out var/bench/ours-incremental.archive
    python -m bench.run_ours_files restore --archive var/bench/ours-files.archive [--archive …] --target DIR
    python -m bench.run_ours_files verify --archive var/bench/ours-files.archive [--archive …]

A backup scans the tree root's three subtrees (uploads, configs, logs), writes an encrypted archive
and its manifest (``<archive without suffix>.json``: ``entries``, ``deleted``, ``state``, as the files
part records them) next to it. ``restore`` takes the archives of a chain, oldest first, and finds
each one's manifest the same way. The password comes from ``BENCH_ARCHIVE_PASSWORD`` (as for
bench.run_ours), so encryption is always on. Prints one JSON line describing the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backup_common.domain.documents import RestoreLimits
from backup_common.engine.files.backup import Parent, files_part_manifest, plan_files, write_files_part
from backup_common.engine.files.in_place import restore_chain
from backup_common.engine.files.model import TREES
from backup_common.engine.files.restore import ChainLink
from backup_common.engine.files.verify import check_files_chain
from backup_common.engine.verify import check_archive_file, check_archive_members
from bench.run_ours import DEFAULT_PASSWORD, PASSWORD_VARIABLE

COMPRESSION_LEVEL = 3


def manifest_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


def _backup(root: Path, out: Path, password: str, parent: Path | None) -> dict[str, Any]:
    """As the file_backup service does it (engine.files.backup), minus the catalog and the broker."""
    parent_link = None if parent is None else Parent(parent.stem, json.loads(parent.read_text()))
    started = time.monotonic()
    plan = plan_files({tree: root / tree for tree in TREES}, [], parent_link)
    scanned = time.monotonic() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    result, info = write_files_part(
        out, plan, password=password, compression_level=COMPRESSION_LEVEL, progress=lambda _bytes, _entries: None
    )
    manifest = files_part_manifest(
        plan, result, info, file_name=out.name, incremental_requested=parent is not None, encryption={}
    )
    manifest_path(out).write_text(json.dumps(manifest) + "\n")
    return {
        "seconds": time.monotonic() - started,
        "scan_seconds": scanned,
        "entries": len(plan.entries),
        "archived": len(result.records),
        "deleted": len(plan.deleted),
        "skipped": len(manifest["skipped"]),
        "skipped_first": manifest["skipped"][:3],
        "bytes_read": result.bytes_read,
        "archive_bytes": info.size,
        "manifest_bytes": manifest_path(out).stat().st_size,
    }


def backup(root: Path, out: Path, password: str) -> dict[str, Any]:
    return _backup(root, out, password, None)


def incremental(root: Path, parent: Path, out: Path, password: str) -> dict[str, Any]:
    return _backup(root, out, password, parent)


def restore(archives: Sequence[Path], target: Path, password: str) -> dict[str, Any]:
    started = time.monotonic()
    chain = _chain(archives, password)
    target.mkdir(parents=True, exist_ok=True)
    summary = restore_chain(chain, target, RestoreLimits())
    return {"seconds": time.monotonic() - started, "result": asdict(summary)}


def _chain(archives: Sequence[Path], password: str) -> list[ChainLink]:
    return [
        ChainLink(archive.stem, archive, password, json.loads(manifest_path(archive).read_text()))
        for archive in archives
    ]


def verify(archives: Sequence[Path], password: str) -> dict[str, Any]:
    """What the verification service checks of a files part, without writing anything: every archive's
    digest and members, then the chain and every file's content."""
    started = time.monotonic()
    limits = RestoreLimits()
    checks = []
    for archive in archives:
        described = json.loads(manifest_path(archive).read_text())
        checks.append(check_archive_file(archive, size_bytes=described["size_bytes"], sha256=described["sha256"]))
        checks.append(check_archive_members(archive, password=password, limits=limits))
    checks.extend(check_files_chain(_chain(archives, password), limits))
    return {"seconds": time.monotonic() - started, "ok": all(check.ok for check in checks), "checks": checks}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_ours_files", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    files_parser = commands.add_parser("files", help="back up the tree's uploads, configs and logs completely")
    incremental_parser = commands.add_parser("incremental", help="back up what changed since a previous backup")
    incremental_parser.add_argument("--parent", type=Path, required=True, help="the previous backup's manifest")
    for sub in (files_parser, incremental_parser):
        sub.add_argument("--root", type=Path, required=True, help="directory holding uploads/, configs/, logs/")
        sub.add_argument("--out", type=Path, required=True, help="archive to write (its manifest goes next to it)")
    restore_parser = commands.add_parser("restore", help="restore a chain of backups into a directory")
    restore_parser.add_argument(
        "--archive", type=Path, action="append", required=True, help="repeat for a chain, oldest (complete) first"
    )
    restore_parser.add_argument("--target", type=Path, required=True)
    verify_parser = commands.add_parser("verify", help="verify a chain of backups without writing anything")
    verify_parser.add_argument(
        "--archive", type=Path, action="append", required=True, help="repeat for a chain, oldest (complete) first"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_VARIABLE, DEFAULT_PASSWORD)
    if args.command == "files":
        report = backup(args.root, args.out, password)
    elif args.command == "incremental":
        report = incremental(args.root, args.parent, args.out, password)
    elif args.command == "restore":
        report = restore(args.archive, args.target, password)
    else:
        report = verify(args.archive, password)
    print(
        json.dumps(
            report, default=lambda value: asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)
        )
    )
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
