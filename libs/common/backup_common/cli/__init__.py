"""`backupctl`: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.mysql.migrations import migrate
from backup_common.adapters.mysql.outbox import parked_events, retry_parked
from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.mysql.uow import unit_of_work_factory
from backup_common.adapters.runtime.service import (
    CATALOG_ERRORS,
    CATALOG_VARIABLE,
    StartupError,
    check_broker,
    mysql_problem,
)
from backup_common.adapters.settings import Settings, SettingsError, load_settings
from backup_common.adapters.tokens import ADMIN_ROLE, issue_token
from backup_common.cli.api_client import EXIT_FAILED, add_api_options
from backup_common.cli.backups import add_backup_commands
from backup_common.cli.fetch import locate_or_fetch
from backup_common.cli.local import operator, use_local_secrets
from backup_common.cli.progress import describe, progress_display, share
from backup_common.cli.rebuild import rebuild_catalog
from backup_common.cli.restore import cmd_restore
from backup_common.cli.supervise import run_services
from backup_common.domain.commands import message_schemas
from backup_common.domain.documents import RestoreLimits
from backup_common.domain.events import BackupPart
from backup_common.domain.model import AuditEntry, Backup, BackupStatus
from backup_common.domain.ports import UnitOfWorkFactory, read_settings
from backup_common.engine.archive import ArchiveError
from backup_common.engine.crypto import KeyUnwrapError
from backup_common.engine.database.load import LoadError, LoadProgress, load_database
from backup_common.engine.database.target import MysqlTarget
from backup_common.engine.files.in_place import FilesRestoreProgress, restore_chain
from backup_common.engine.files.restore import ChainLink, RestoreError
from backup_common.engine.locate import MAX_CHAIN, BackupNotFound, LocatedPart, backup_id_of

log = logging.getLogger(__name__)

# Every service package, in start order; `run` starts those that exist in this installation.
# Each service by the name operators use (as in its queue and metrics), and its package.
SERVICES = {
    "gateway": "backup_gateway",
    "database_backup": "backup_database",
    "file_backup": "backup_files",
    "verification": "backup_verification",
    "retention": "backup_retention",
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' or plain seconds, as seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 30m, 1h or 7d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def cmd_token(args: argparse.Namespace) -> int:
    use_local_secrets(os.environ, create=False)
    settings = load_settings()
    private_key = Path(args.private_key_file).read_text() if args.private_key_file else ""
    try:
        token = issue_token(
            settings,
            subject=args.subject,
            roles=args.role or [ADMIN_ROLE],
            ttl_seconds=args.ttl,
            private_key=private_key,
        )
    except (SettingsError, ValueError) as exc:
        print(f"backupctl token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


async def _migrate_catalog(settings: Settings) -> list[str]:
    """Applies the catalog's migrations; raises StartupError, one line naming the variable, when
    MySQL cannot be reached or the migration fails."""
    try:
        return await migrate(settings.catalog)
    except CATALOG_ERRORS as exc:
        raise StartupError(mysql_problem(settings.catalog, CATALOG_VARIABLE, exc)) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        applied = asyncio.run(_migrate_catalog(settings))
    except StartupError as exc:
        print(f"backupctl migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    target = settings.catalog
    print(f"catalog {target.database} on {target.host}:{target.port}: " + (", ".join(applied) or "up to date"))
    return 0


def cmd_export_schemas(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in message_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(path)
    return 0


async def _prepare(settings: Settings) -> list[str]:
    """Checks that RabbitMQ answers and migrates the catalog, both at once; raises StartupError with
    a line for each server that cannot be used."""
    checked = await asyncio.gather(check_broker(settings), _migrate_catalog(settings), return_exceptions=True)
    problems = [str(result) for result in checked if isinstance(result, StartupError)]
    for result in checked:
        if isinstance(result, BaseException) and not isinstance(result, StartupError):
            raise result
    if problems:
        raise StartupError("\n".join(problems))
    applied = checked[1]
    assert isinstance(applied, list)
    return applied


def cmd_run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    local = use_local_secrets(env, create=True)
    os.environ.update(env)
    settings = load_settings()
    for note in local.notes:
        print(f"backupctl run: {note}", file=sys.stderr)
    # Nothing starts while MySQL or RabbitMQ does not answer: one line says which, naming its variable.
    try:
        applied = asyncio.run(_prepare(settings))
    except StartupError as exc:
        for line in str(exc).splitlines():
            print(f"backupctl run: {line}", file=sys.stderr)
        return EXIT_FAILED
    if applied:
        print(f"backupctl run: catalog migrated: {', '.join(applied)}", file=sys.stderr)
    services = {name: package for name, package in SERVICES.items() if _runnable(package)}
    if args.services:
        services = {name: services[name] for name in args.services if name in services}
    if not services:
        print(f"backupctl run: none of {', '.join(args.services)} is installed here", file=sys.stderr)
        return 2
    # A token only for the secret this run just generated, for a first local try: never one signed
    # with an operator's secret, which would put a working admin credential in the output and its logs.
    if "gateway" in services and local.made_jwt_secret:
        token = issue_token(settings, subject="local-admin", roles=[ADMIN_ROLE], ttl_seconds=12 * 3600)
        base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        print(
            f"\nGateway: {base}/api/admin/backup/list\nAdmin token (12 h):\n{token}\n\n"
            f'Try: curl -H "Authorization: Bearer $TOKEN" {base}/api/admin/backup/stats\n',
            flush=True,
        )
    return asyncio.run(run_services(services, env))


def service_name(text: str) -> str:
    if text not in SERVICES:
        raise argparse.ArgumentTypeError(f"unknown service {text!r}; the services are {', '.join(SERVICES)}")
    return text


def _runnable(package: str) -> bool:
    """A service package that exists in this installation and has a __main__ to run."""
    try:
        return importlib.util.find_spec(f"{package}.__main__") is not None
    except ModuleNotFoundError:
        return False


@asynccontextmanager
async def _catalog(settings: Settings) -> AsyncIterator[UnitOfWorkFactory | None]:
    """The catalog if it answers within 5 s, else None: commands that read backups work from storage alone."""
    try:
        async with asyncio.timeout(5):
            pool = await db.create_pool(settings.catalog, minsize=1, maxsize=1)
    except Exception as exc:
        log.warning("catalog unreachable (%s); looking in storage alone", type(exc).__name__)
        yield None
        return
    try:
        yield unit_of_work_factory(pool, LeaseStore(pool, settings.lease_seconds))
    finally:
        await db.close_pool(pool)


async def _catalogued(uow: UnitOfWorkFactory | None, reference: str) -> Backup | None:
    """The backup as the catalog has it, or None when it does not know or does not answer."""
    backup_id = backup_id_of(reference)
    if uow is None or backup_id is None:
        return None
    try:
        async with uow() as work:
            return await work.backups.get(backup_id)
    except Exception as exc:
        log.warning("catalog unusable (%s); looking in storage alone", type(exc).__name__)
        return None


def _erased(backup: Backup) -> str | None:
    """Why nothing of the backup can be read any more, if so."""
    when = f" on {backup.erased_at:%Y-%m-%d %H:%M} UTC" if backup.erased_at else ""
    if backup.status is BackupStatus.DELETED:
        return (
            f"backup {backup.id} was deleted{when}: its files were removed and its data key destroyed"
            " (crypto-erase), so its archives cannot be decrypted any more"
        )
    if backup.status is BackupStatus.DELETING:
        return f"backup {backup.id} is being deleted: its files and data key are being destroyed"
    if backup.erased_at is not None:
        return f"backup {backup.id} failed, and its files and data key were erased{when}"
    return None


async def _locate(settings: Settings, uow: UnitOfWorkFactory | None, reference: str, part: BackupPart) -> LocatedPart:
    backup = await _catalogued(uow, reference)
    if backup is not None and (reason := _erased(backup)) is not None:
        raise BackupNotFound(reason)
    return await locate_or_fetch(settings, reference, part, backup)


async def _audit(uow: UnitOfWorkFactory | None, action: str, target: str, outcome: str, detail: dict[str, Any]) -> None:
    """Records an offline tool's use of a backup's key in the audit log, as the gateway does for the
    API; without a catalog (the tools work without one) the record goes to the log instead."""
    entry = AuditEntry(actor=f"cli:{operator()}", action=action, outcome=outcome, target=target, detail=detail)
    if uow is not None:
        try:
            async with uow() as work:
                await work.audit.add(entry)
                await work.commit()
            return
        except Exception as exc:
            log.warning("could not write the audit record (%s)", type(exc).__name__)
    log.warning("audit (catalog unreachable): %s by %s on %s: %s %s", action, entry.actor, target, outcome, detail)


def cmd_db_load(args: argparse.Namespace) -> int:
    use_local_secrets(os.environ, create=False)
    settings = load_settings()
    server = args.server or settings.source_mysql_url.get_secret_value()
    target = MysqlTarget(server.rsplit("/", 1)[0] + "/" + args.into)

    async def load() -> int:
        async with _catalog(settings) as uow:
            detail: dict[str, Any] = {"into": args.into, "host": target.host, "port": target.port}
            display = progress_display()

            async def report(progress: LoadProgress) -> None:
                state = asdict(progress)
                text = f"loading backup {args.backup}: {describe(state)}"
                display.show("load", text, phase=progress.phase, done=share(state))

            try:
                located = await _locate(settings, uow, args.backup, BackupPart.DATABASE)
                limits = await _restore_limits(uow)
                summary = await load_database(
                    located.archive,
                    AsyncmySqlServer(target),
                    password=located.password,
                    force=args.force,
                    parallelism=args.parallel,
                    limits=limits,
                    progress=report,
                )
            except (BackupNotFound, LoadError, KeyUnwrapError, ArchiveError, SettingsError) as exc:
                display.close()
                await _audit(uow, "cli.db-load", args.backup, "failed", detail | {"reason": str(exc)})
                print(f"backupctl db-load: {exc}", file=sys.stderr)
                return 1
            display.close()
            await _audit(uow, "cli.db-load", located.backup_id, "allowed", detail | {"rows": summary.rows})
        print(
            f"loaded backup {located.backup_id} into {summary.database} on {target.host}:{target.port} in"
            f" {summary.seconds:.1f} s: {summary.tables} tables, {summary.rows} rows, {summary.views} views,"
            f" {summary.routines} routines, {summary.triggers} triggers, {summary.events} events"
        )
        return 0

    return asyncio.run(load())


async def _restore_limits(uow: UnitOfWorkFactory | None) -> RestoreLimits:
    """The settings document's restore limits; the defaults when the catalog does not answer."""
    if uow is None:
        return RestoreLimits()
    try:
        return (await read_settings(uow)).restore_limits
    except Exception as exc:
        log.warning("catalog unusable (%s); using the default restore limits", type(exc).__name__)
        return RestoreLimits()


async def _chain(settings: Settings, uow: UnitOfWorkFactory | None, reference: str) -> list[ChainLink]:
    """The files parts a restore of ``reference`` replays, complete base first."""
    links: list[ChainLink] = []
    current: str | None = reference
    while current is not None:
        located = await _locate(settings, uow, current, BackupPart.FILES)
        links.append(ChainLink(located.backup_id, located.archive, located.password, located.manifest))
        parent = located.manifest.get("parent_id")
        current = parent if isinstance(parent, str) else None
        if len(links) > MAX_CHAIN:
            raise BackupNotFound(f"the chain of {reference} is longer than {MAX_CHAIN} backups")
    return links[::-1]


def cmd_files_restore(args: argparse.Namespace) -> int:
    use_local_secrets(os.environ, create=False)
    settings = load_settings()
    into = Path(args.into).absolute()

    async def rebuild() -> int:
        async with _catalog(settings) as uow:
            detail: dict[str, Any] = {"into": str(into)}
            display = progress_display()
            loop = asyncio.get_running_loop()

            def report(progress: FilesRestoreProgress) -> None:
                state = asdict(progress)
                text = f"restoring backup {args.backup}: {describe(state)}"
                show = functools.partial(display.show, "restore", text, phase=progress.phase, done=share(state))
                loop.call_soon_threadsafe(show)

            try:
                links = await _chain(settings, uow, args.backup)
                limits = await _restore_limits(uow)
                summary = await asyncio.to_thread(restore_chain, links, into, limits, force=args.force, progress=report)
            except (BackupNotFound, KeyUnwrapError, ArchiveError, SettingsError, RestoreError, OSError) as exc:
                display.close()
                await _audit(uow, "cli.files-restore", args.backup, "failed", detail | {"reason": str(exc)})
                print(f"backupctl files-restore: {exc}", file=sys.stderr)
                return 1
            display.close()
            await _audit(uow, "cli.files-restore", links[-1].backup_id, "allowed", detail | {"files": summary.files})
        print(
            f"restored backup {links[-1].backup_id} into {summary.target} (chain of {len(links)}):"
            f" {summary.files} files, {summary.directories} directories, {summary.symlinks} symbolic links,"
            f" {summary.hard_links} hard links,"
            f" {summary.bytes_written} bytes, {summary.deleted} deletions replayed"
        )
        return 0

    return asyncio.run(rebuild())


def cmd_key(args: argparse.Namespace) -> int:
    use_local_secrets(os.environ, create=False)
    settings = load_settings()

    async def reveal() -> int:
        async with _catalog(settings) as uow:
            try:
                located = await _locate(settings, uow, args.backup, BackupPart(args.part))
            except (BackupNotFound, KeyUnwrapError, SettingsError) as exc:
                await _audit(uow, "cli.key", args.backup, "failed", {"part": args.part, "reason": str(exc)})
                print(f"backupctl key: {exc}", file=sys.stderr)
                return 1
            if located.password is None:
                print(f"backupctl key: backup {located.backup_id} is not encrypted", file=sys.stderr)
                return 1
            await _audit(uow, "cli.key", located.backup_id, "allowed", {"part": args.part})
        print(located.password)
        return 0

    return asyncio.run(reveal())


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    use_local_secrets(os.environ, create=False)
    return asyncio.run(rebuild_catalog(load_settings(), dry_run=args.dry_run))


def cmd_outbox(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run() -> int:
        try:
            pool = await db.create_pool(settings.catalog, maxsize=1)
        except CATALOG_ERRORS as exc:
            print(f"backupctl outbox: {mysql_problem(settings.catalog, CATALOG_VARIABLE, exc)}", file=sys.stderr)
            return EXIT_FAILED
        try:
            if args.action == "retry":
                count = await retry_parked(pool)
                print(f"{count} parked events are due again; a running service's relay sends them")
                return 0
            parked = await parked_events(pool, limit=args.limit)
        finally:
            await db.close_pool(pool)
        for event in parked:
            print(
                f"{event.parked_at:%Y-%m-%d %H:%M:%S} {event.event_type} {event.event_id} ({event.routing_key},"
                f" {event.attempts} attempts): {event.last_error}"
            )
        print(f"{len(parked)} parked events" + (" (more not shown)" if len(parked) == args.limit else ""))
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backupctl", description="Operate the backup system.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    token = commands.add_parser("token", help="print a bearer token signed with the configured key")
    token.add_argument("--role", action="append", help="role claim (repeatable; default: admin)")
    token.add_argument("--ttl", type=parse_duration, default=3600, help="lifetime, e.g. 30m, 1h, 7d (default 1h)")
    token.add_argument("--subject", default=os.environ.get("USER", "operator"), help="the token's sub claim")
    token.add_argument("--private-key-file", help="PEM private key, to sign RS* tokens")
    token.set_defaults(func=cmd_token)

    migrate = commands.add_parser("migrate", help="create the catalog database and apply its schema")
    migrate.set_defaults(func=cmd_migrate)

    run = commands.add_parser("run", help="run the services in the foreground (Ctrl-C stops them)")
    run.add_argument(
        "services", nargs="*", type=service_name, metavar="SERVICE",
        help=f"only these (default: all): {', '.join(SERVICES)}",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)

    db_load = commands.add_parser("db-load", help="load a backup's database part into a database")
    db_load.add_argument("backup", help="backup id, or a backup directory (works without the catalog)")
    db_load.add_argument("--into", required=True, help="database to load into (created if missing)")
    db_load.add_argument("--force", action="store_true", help="replace the contents of a non-empty database")
    db_load.add_argument(
        "--parallel", type=positive_int, default=2, help="connections loading data at once (default 2)"
    )
    db_load.add_argument("--server", help="mysql:// URL of the server (default: BACKUP_SOURCE_MYSQL_URL's server)")
    db_load.set_defaults(func=cmd_db_load)

    files = commands.add_parser("files-restore", help="rebuild the file trees of a backup into a directory")
    files.add_argument("backup", help="backup id, or a backup directory (works without the catalog)")
    files.add_argument("--into", required=True, help="directory to rebuild into (new, or empty)")
    files.add_argument("--force", action="store_true", help="allow a directory that is not empty")
    files.set_defaults(func=cmd_files_restore)

    restore = commands.add_parser(
        "restore",
        help="restore a backup through the running services (as the API does), with its checks",
        epilog="exit status: 0 completed (or, without --wait, accepted), 1 the restore failed (the reason on"
        " stderr), 2 nothing was done (usage error, request refused, gateway unreachable or failing, no token)",
    )
    restore.add_argument("backup", help="backup id")
    restore.add_argument("--parts", nargs="+", choices=[p.value for p in BackupPart], help="default: every part")
    where = restore.add_mutually_exclusive_group()
    where.add_argument("--target-database", metavar="NAME", help="load into this database instead of in place")
    where.add_argument("--target-directory", metavar="DIR", help="rebuild the trees below DIR (in the restore dir)")
    restore.add_argument("--replace", action="store_true", help="allow a target database or directory in use")
    restore.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables of the database part")
    restore.add_argument("--paths", nargs="+", metavar="PATH", help="only these paths, e.g. configs uploads/2025")
    restore.add_argument("--no-safety-backup", action="store_true", help="in place: do not back up what is replaced")
    restore.add_argument("--wait", action="store_true", help="follow the restore to its end, showing progress")
    restore.add_argument("--json", action="store_true", help="print the restore record (the final one with --wait)")
    add_api_options(restore)
    restore.set_defaults(func=cmd_restore)

    add_backup_commands(commands)

    key = commands.add_parser("key", help="print the password of a backup's archives (for 7-Zip or unzip)")
    key.add_argument("backup", help="backup id, or a backup directory")
    key.add_argument("--part", choices=[p.value for p in BackupPart], default=BackupPart.DATABASE.value)
    key.set_defaults(func=cmd_key)

    outbox = commands.add_parser("outbox", help="list the events the broker refused too often, or send them again")
    outbox.add_argument("action", choices=["list", "retry"], nargs="?", default="list")
    outbox.add_argument("--limit", type=int, default=100, help="parked events listed at most (default 100)")
    outbox.set_defaults(func=cmd_outbox)

    catalog = commands.add_parser("catalog", help="work on the catalog itself")
    catalog_actions = catalog.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = catalog_actions.add_parser(
        "rebuild",
        help="add the backups storage holds (local and off-site) that the catalog lacks, from their signed manifests",
        epilog="exit status: 0 every backup found is in the catalog, 1 some could not be confirmed (added as failed,"
        " or not added, each saying why), 2 it could not run, or stopped (configuration, master key, catalog or"
        " off-site store; what it added stays)",
    )
    rebuild.add_argument("--dry-run", action="store_true", help="print what would be added, and write nothing")
    rebuild.set_defaults(func=cmd_catalog_rebuild)

    schemas = commands.add_parser("export-schemas", help="write the events' and commands' JSON Schemas to a directory")
    schemas.add_argument("directory", nargs="?", default="infra/schemas")
    schemas.set_defaults(func=cmd_export_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="backupctl: %(message)s")
    logging.getLogger("asyncmy").setLevel(logging.ERROR)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        # A job the command was waiting for goes on; the command printed its id when it asked for it.
        print(f"backupctl {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


def run_main() -> None:
    sys.exit(main())
