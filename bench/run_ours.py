"""Runs our dump or load engine in a process of its own, so the harness measures it as it measures the other tools.

    python -m bench.run_ours dump --mysql-url mysql://root@127.0.0.1:3306/backup_bench --out var/bench/ours.archive
    python -m bench.run_ours load --archive var/bench/ours.archive --mysql-url mysql://root@127.0.0.1:3306/target

The archive password is read from ``BENCH_ARCHIVE_PASSWORD`` (a fixed benchmark value by default), so
encryption is always on. Prints one JSON line describing the result. While the engine is not there
yet (not importable, or raising NotImplementedError), prints ``not available: <reason>`` on stderr
and exits with status 3, which the harness reports instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from backup_common.engine.database.target import MysqlTarget

NOT_AVAILABLE = 3
PASSWORD_VARIABLE = "BENCH_ARCHIVE_PASSWORD"  # noqa: S105 -- the name of the variable, not a password
DEFAULT_PASSWORD = "bench-archive-password"  # noqa: S105 -- not a secret: protects throwaway benchmark archives


class NotAvailable(Exception):
    pass


def _engine(module: str, name: str) -> Callable[..., Any]:
    """Looked up at run time: the engine is written in parallel and may not exist when this runs."""
    try:
        loaded = importlib.import_module(f"backup_common.engine.database.{module}")
    except ImportError as exc:
        raise NotAvailable(f"backup_common.engine.database.{module} cannot be imported ({exc})") from exc
    function = getattr(loaded, name, None)
    if not callable(function):
        raise NotAvailable(f"backup_common.engine.database.{module}.{name} does not exist yet")
    return function  # type: ignore[no-any-return]  # whatever the module holds; called, not inspected


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a sync or async entry point alike."""
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_wait(result))
    except NotImplementedError as exc:
        raise NotAvailable(f"{function.__module__}.{function.__name__} is not implemented yet ({exc})") from exc
    return result


def _describe(result: Any) -> Any:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return repr(result)


def dump(url: str, out: Path, password: str, parallelism: int) -> dict[str, Any]:
    dump_database = _engine("dump", "dump_database")
    from backup_common.engine.database.model import DumpOptions

    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = _call(
        dump_database, MysqlTarget(url), out, password=password, options=DumpOptions(parallelism=parallelism)
    )
    return {"seconds": time.monotonic() - started, "result": _describe(result)}


def load(archive: Path, url: str, password: str, parallelism: int) -> dict[str, Any]:
    load_database = _engine("load", "load_database")
    started = time.monotonic()
    result = _call(load_database, archive, MysqlTarget(url), password=password, parallelism=parallelism)
    return {"seconds": time.monotonic() - started, "result": _describe(result)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_ours", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dump_parser = commands.add_parser("dump", help="dump a database into an encrypted archive")
    dump_parser.add_argument("--mysql-url", required=True, help="mysql://user:password@host:port/database to dump")
    dump_parser.add_argument("--out", type=Path, required=True, help="archive to write")
    load_parser = commands.add_parser("load", help="load an archive into a database")
    load_parser.add_argument("--archive", type=Path, required=True)
    load_parser.add_argument("--mysql-url", required=True, help="mysql://user:password@host:port/database to load into")
    for sub in (dump_parser, load_parser):
        sub.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_VARIABLE, DEFAULT_PASSWORD)
    try:
        if args.command == "dump":
            report = dump(args.mysql_url, args.out, password, args.parallelism)
        else:
            report = load(args.archive, args.mysql_url, password, args.parallelism)
    except NotAvailable as exc:
        print(f"not available: {exc}", file=sys.stderr)
        return NOT_AVAILABLE
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
