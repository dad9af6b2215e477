"""Runs our files backup, incremental or restore in a process of its own, measured as tar and restic are.

    python -m bench.run_ours_files files --root var/bench/tree --out var/bench/ours-files.archive
    python -m bench.run_ours_files incremental --root var/bench/tree --parent var/bench/ours-files.json \\
        --out var/bench/ours-incremental.archive
    python -m bench.run_ours_files restore --archive var/bench/ours-files.archive [--archive …] --target DIR

A backup scans the tree root's three subtrees (uploads, configs, logs), writes an encrypted archive
and its manifest (``<archive without suffix>.json``: ``entries``, ``deleted``, ``state``, as the files
part records them) next to it. ``restore`` takes the archives of a chain, oldest first, and finds
each one's manifest the same way. The password comes from ``BENCH_ARCHIVE_PASSWORD`` (as for
bench.run_ours), so encryption is always on. Prints one JSON line describing the result. While the
engine is not there yet (not importable, or raising NotImplementedError), prints ``not available:
<reason>`` on stderr and exits with status 3, which the harness reports instead of failing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.run_ours import DEFAULT_PASSWORD, NOT_AVAILABLE, PASSWORD_VARIABLE, NotAvailable, _call, _describe

TREES = ("uploads", "configs", "logs")  # as backup_common.engine.files.model.TREES, which may not import yet
COMPRESSION_LEVEL = 3


def _engine(module: str, name: str) -> Any:
    """Looked up at run time: the engine is written in parallel and may not exist when this runs."""
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(f"{module} cannot be imported ({exc})") from exc
    found = getattr(loaded, name, None)
    if found is None:
        raise NotAvailable(f"{module}.{name} does not exist yet")
    return found


def manifest_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


def _backup(root: Path, out: Path, password: str, parent: Path | None) -> dict[str, Any]:
    """As the files worker does it (services/file_backup/backup_files/service.py), minus the messaging."""
    scan_trees = _engine("backup_common.engine.files.scan", "scan_trees")
    compile_excludes = _engine("backup_common.engine.files.scan", "compile_excludes")
    write_files_archive = _engine("backup_common.engine.files.archiver", "write_files_archive")
    plan_incremental = _engine("backup_common.engine.files.incremental", "plan_incremental")
    next_state = _engine("backup_common.engine.files.incremental", "next_state")
    append_bases = _engine("backup_common.engine.files.incremental", "append_bases")
    archive_writer = _engine("backup_common.engine.archive", "ArchiveWriter")
    parent_state: list[dict[str, Any]] = [] if parent is None else json.loads(parent.read_text())["state"]

    started = time.monotonic()
    roots = {tree: root / tree for tree in TREES}
    entries, skipped = _call(scan_trees, roots, _call(compile_excludes, []))
    scanned = time.monotonic() - started
    planned, deleted = (entries, []) if parent is None else _call(plan_incremental, parent_state, entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    with archive_writer(out, password=password, compression_level=COMPRESSION_LEVEL) as writer:
        result = _call(write_files_archive, writer, planned, roots, bases=_call(append_bases, parent_state))
        info = writer.commit()
    records = [dataclasses.asdict(record) for record in result.records]
    values = {"parent_state": parent_state, "planned": planned, "records": result.records, "entries": entries}
    state = _call(next_state, **_bind(next_state, values))
    skipped_records = [dataclasses.asdict(item) for item in [*skipped, *result.skipped]]
    manifest = {
        "kind": "incremental" if parent is not None else "complete",
        "parent_id": parent.stem if parent is not None else None,
        "entries": records,
        "deleted": deleted,
        "state": state,
        "skipped": skipped_records,
    }
    manifest_path(out).write_text(json.dumps(manifest) + "\n")
    return {
        "seconds": time.monotonic() - started,
        "scan_seconds": scanned,
        "entries": len(entries),
        "archived": len(records),
        "deleted": len(deleted),
        "skipped": len(skipped_records),
        "skipped_first": skipped_records[:3],
        "bytes_read": result.bytes_read,
        "archive_bytes": getattr(info, "size", None),
        "manifest_bytes": manifest_path(out).stat().st_size,
    }


def _bind(function: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The values a function's parameters name: next_state's signature is still moving."""
    try:
        names = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return values
    return {name: value for name, value in values.items() if name in names}


def backup(root: Path, out: Path, password: str) -> dict[str, Any]:
    return _backup(root, out, password, None)


def incremental(root: Path, parent: Path, out: Path, password: str) -> dict[str, Any]:
    return _backup(root, out, password, parent)


def restore(archives: Sequence[Path], target: Path, password: str) -> dict[str, Any]:
    restore_chain = _engine("backup_common.engine.files.restore", "restore_chain")
    chain_link = _engine("backup_common.engine.files.restore", "ChainLink")
    restore_limits = _engine("backup_common.engine.files.model", "RestoreLimits")
    started = time.monotonic()
    chain = [
        chain_link(archive.stem, archive, password, json.loads(manifest_path(archive).read_text()))
        for archive in archives
    ]
    target.mkdir(parents=True, exist_ok=True)
    summary = _call(restore_chain, chain, target, restore_limits())
    return {"seconds": time.monotonic() - started, "result": _describe(summary)}


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_VARIABLE, DEFAULT_PASSWORD)
    try:
        if args.command == "files":
            report = backup(args.root, args.out, password)
        elif args.command == "incremental":
            report = incremental(args.root, args.parent, args.out, password)
        else:
            report = restore(args.archive, args.target, password)
    except NotAvailable as exc:
        print(f"not available: {exc}", file=sys.stderr)
        return NOT_AVAILABLE
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
