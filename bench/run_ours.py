"""Runs our dump or load engine in a process of its own, so the harness measures it as it measures the other tools.

    python -m bench.run_ours dump --mysql-url mysql://root@127.0.0.1:3306/backup_bench --out var/bench/ours.archive
    python -m bench.run_ours load --archive var/bench/ours.archive --mysql-url mysql://root@127.0.0.1:3306/target
    python -m bench.run_ours restore --archive var/bench/ours.archive --mysql-url mysql://root@127.0.0.1:3306/live
    python -m bench.run_ours drill --archive var/bench/ours.archive --mysql-url mysql://root@127.0.0.1:3306/mysql

`dump` writes the part manifest beside the archive (`ours.json`), as the service does; `restore`
restores in place over a live database with it (staging database, one RENAME TABLE), as a restore
requested through the API does.

The archive password is read from ``BENCH_ARCHIVE_PASSWORD`` (a fixed benchmark value by default), so
encryption is always on. Prints one JSON line describing the result.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.engine.database.drill import restore_drill
from backup_common.engine.database.dump import dump_database
from backup_common.engine.database.load import load_database
from backup_common.engine.database.manifest import database_part_manifest
from backup_common.engine.database.model import DumpOptions
from backup_common.engine.database.restore import restore_database
from backup_common.engine.database.target import MysqlTarget
from backup_common.engine.storage import read_json, write_json_durably

PASSWORD_VARIABLE = "BENCH_ARCHIVE_PASSWORD"  # noqa: S105 -- the name of the variable, not a password
DEFAULT_PASSWORD = "bench-archive-password"  # noqa: S105 -- not a secret: protects throwaway benchmark archives


def _describe(result: Any) -> Any:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return repr(result)


def dump(url: str, out: Path, password: str, parallelism: int) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    source = AsyncmySqlServer(MysqlTarget(url))
    options = DumpOptions(parallelism=parallelism)
    started = time.time()
    result = asyncio.run(dump_database(source, out, password=password, options=options))
    finished = time.time()
    manifest = database_part_manifest(
        result,
        file_name=out.name,
        source=source.target,
        options=options,
        encryption={"scheme": "winzip-aes-256", "key": f"${PASSWORD_VARIABLE}"},
        started_at=started,
        finished_at=finished,
    )
    write_json_durably(manifest_of(out), manifest)
    return {"seconds": finished - started, "result": _describe(result)}


def manifest_of(archive: Path) -> Path:
    return archive.with_suffix(".json")


def restore(archive: Path, url: str, password: str, parallelism: int) -> dict[str, Any]:
    live = AsyncmySqlServer(MysqlTarget(url))
    manifest = read_json(manifest_of(archive))
    started = time.monotonic()
    result = asyncio.run(
        restore_database(
            archive,
            manifest,
            live,
            live.target.database,
            password=password,
            staging="bk_restore_bench",
            replace=True,
            parallelism=parallelism,
        )
    )
    return {"seconds": time.monotonic() - started, "result": _describe(result)}


def load(archive: Path, url: str, password: str, parallelism: int) -> dict[str, Any]:
    target = AsyncmySqlServer(MysqlTarget(url))
    started = time.monotonic()
    result = asyncio.run(load_database(archive, target, password=password, parallelism=parallelism))
    return {"seconds": time.monotonic() - started, "result": _describe(result)}


def drill(archive: Path, url: str, password: str, parallelism: int) -> dict[str, Any]:
    """The verification service's restore drill: a scratch database on the URL's server, compared
    with the dump's row counts and digests, then dropped."""
    server = AsyncmySqlServer(MysqlTarget(url))
    manifest = read_json(manifest_of(archive))
    started = time.monotonic()
    check = asyncio.run(
        restore_drill(archive, manifest, server, "bk_drill_bench", password=password, parallelism=parallelism)
    )
    return {"seconds": time.monotonic() - started, "ok": check.ok, "result": _describe(check)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_ours", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dump_parser = commands.add_parser("dump", help="dump a database into an encrypted archive")
    dump_parser.add_argument("--mysql-url", required=True, help="mysql://user:password@host:port/database to dump")
    dump_parser.add_argument("--out", type=Path, required=True, help="archive to write")
    load_parser = commands.add_parser("load", help="load an archive into a database")
    load_parser.add_argument("--archive", type=Path, required=True)
    load_parser.add_argument("--mysql-url", required=True, help="mysql://user:password@host:port/database to load into")
    restore_parser = commands.add_parser("restore", help="restore an archive in place over a live database")
    restore_parser.add_argument("--archive", type=Path, required=True)
    restore_parser.add_argument(
        "--mysql-url", required=True, help="mysql://user:password@host:port/database to restore"
    )
    drill_parser = commands.add_parser("drill", help="restore drill: load into a scratch database and compare")
    drill_parser.add_argument("--archive", type=Path, required=True)
    drill_parser.add_argument("--mysql-url", required=True, help="mysql://user:password@host:port/any (the server)")
    for sub in (dump_parser, load_parser, restore_parser, drill_parser):
        sub.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_VARIABLE, DEFAULT_PASSWORD)
    if args.command == "dump":
        report = dump(args.mysql_url, args.out, password, args.parallelism)
    elif args.command == "load":
        report = load(args.archive, args.mysql_url, password, args.parallelism)
    elif args.command == "restore":
        report = restore(args.archive, args.mysql_url, password, args.parallelism)
    else:
        report = drill(args.archive, args.mysql_url, password, args.parallelism)
    print(json.dumps(report, default=str))
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
