"""`backupctl backup`, `list`, `show` and `verify`: the admin API's backup calls, for scripts and cron
jobs, through the running gateway (see api_client for where it is, the token and the exit statuses)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from backup_common.cli.api_client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    ApiClient,
    ApiError,
    ApiSetupError,
    ApiTarget,
    add_api_options,
    fail,
    follow,
    print_json,
    resolve_api,
)
from backup_common.cli.progress import Display
from backup_common.cli.render import (
    backup_outcome,
    checks_table,
    emit,
    list_footer,
    list_table,
    part_progress,
    show_blocks,
    verification_line,
)
from backup_common.domain.events import BackupType
from backup_common.domain.model import BackupStatus
from backup_common.domain.verification import VerificationStatus

FINISHED = (BackupStatus.COMPLETED.value, BackupStatus.FAILED.value)


def _say(args: argparse.Namespace, text: str) -> None:
    """A line for the operator: on stdout, or on stderr when stdout carries --json."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def _run(command: str, args: argparse.Namespace, work: Callable[[ApiClient], Awaitable[int]]) -> int:
    try:
        target: ApiTarget = resolve_api(args.api_url)
    except ApiSetupError as exc:
        return fail(command, str(exc), EXIT_REFUSED)

    async def call() -> int:
        async with ApiClient(target) as client:
            try:
                return await work(client)
            except ApiError as exc:
                return fail(command, str(exc), EXIT_REFUSED)

    return asyncio.run(call())


def show_backup_progress(display: Display, backup: dict[str, Any]) -> None:
    for part in backup.get("parts", []):
        text, phase, done = part_progress(part)
        display.show(part["part"], text, phase=phase, done=done)


def cmd_backup(args: argparse.Namespace) -> int:
    async def work(client: ApiClient) -> int:
        body = {"type": args.type, "description": args.description}
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
        backup = (await client.post("/create", body, headers=headers))["backup"]
        _say(args, f"backup {backup['id']} ({backup['type']}) requested ({backup['status']})")
        if args.wait:
            backup = await follow(
                client, f"/{backup['id']}", "backup", backup,
                finished=lambda record: record["status"] in FINISHED, show=show_backup_progress,
            )  # fmt: skip
        elif not args.json:
            print(f"follow it with: backupctl show {backup['id']}  (or backupctl backup … --wait)")
        if args.json:
            print_json(backup)
        if args.wait and backup["status"] != BackupStatus.COMPLETED.value:
            return fail("backup", backup_outcome(backup), EXIT_FAILED)
        if args.wait and not args.json:
            print(backup_outcome(backup))
        return EXIT_OK

    return _run("backup", args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: ApiClient) -> int:
        params = {"limit": str(args.limit), "offset": str(args.offset)}
        for name in ("type", "status", "verification"):
            if getattr(args, name):
                params[name] = ",".join(getattr(args, name))
        page = await client.get("/list", params)
        if args.json:
            print_json(page)
            return EXIT_OK
        emit([list_table(page["backups"])], sys.stdout)
        footer = list_footer(page)
        if footer:
            print(footer, file=sys.stderr)
        return EXIT_OK

    return _run("list", args, work)


def cmd_show(args: argparse.Namespace) -> int:
    async def work(client: ApiClient) -> int:
        backup = (await client.get(f"/{args.backup}"))["backup"]
        if args.json:
            print_json(backup)
        else:
            emit(show_blocks(backup), sys.stdout)
        return EXIT_OK

    return _run("show", args, work)


def _verification(backup: dict[str, Any]) -> dict[str, Any]:
    verification = backup.get("verification")
    return verification if isinstance(verification, dict) else {}


def cmd_verify(args: argparse.Namespace) -> int:
    async def work(client: ApiClient) -> int:
        backup = (await client.post(f"/{args.backup}/verify"))["backup"]
        # A verification changes checked_at when it ends: the first change after this request is the
        # verification that answers it (or the one already running, which the request joins).
        before = _verification(backup).get("checked_at")
        _say(args, f"verification of backup {backup['id']} requested (latest: {verification_line(backup)})")
        if not args.wait:
            if args.json:
                print_json(backup)
            return EXIT_OK

        def ended(record: dict[str, Any]) -> bool:
            checked_at = _verification(record).get("checked_at")
            return (checked_at is not None and checked_at != before) or str(record["status"]) != "completed"

        def show(display: Display, record: dict[str, Any]) -> None:
            if not ended(record):
                display.show("verification", f"verifying backup {record['id']}", phase="verifying")
            else:
                display.show("verification", f"verification of backup {record['id']} ended", phase="ended", done=(1, 1))

        backup = await follow(client, f"/{backup['id']}", "backup", backup, finished=ended, show=show)
        if args.json:
            print_json(backup)
        verification = _verification(backup)
        if backup["status"] != "completed":
            return fail("verify", f"backup {backup['id']} is {backup['status']}: it will not be verified", EXIT_FAILED)
        if not args.json:
            checks = checks_table(backup)
            emit([checks] if checks is not None else [], sys.stdout)
        if verification.get("status") != VerificationStatus.VERIFIED.value:
            reason = verification.get("error") or "no reason recorded"
            return fail("verify", f"backup {backup['id']} failed verification: {reason}", EXIT_FAILED)
        if not args.json:
            print(f"backup {backup['id']} {verification_line(backup)}")
        return EXIT_OK

    return _run("verify", args, work)


def add_backup_commands(commands: Any) -> None:
    """Adds backup, list, show and verify to `backupctl`'s subcommands."""
    exits = (
        "exit status: 0 done, 1 the backup or its verification failed (the reason on stderr), 2 nothing was done"
        " (usage error, request refused, gateway unreachable or failing, no token)"
    )
    backup = commands.add_parser(
        "backup", help="request a backup through the running services (for scripts and cron)", epilog=exits
    )
    backup.add_argument("--type", required=True, choices=[t.value for t in BackupType], help="what to back up")
    backup.add_argument("--description", default="", help="a note kept with the backup")
    backup.add_argument("--wait", action="store_true", help="follow it to its end, showing progress on stderr")
    backup.add_argument("--json", action="store_true", help="print the backup record (the final one with --wait)")
    backup.add_argument("--idempotency-key", metavar="KEY", help="a retry with the same key returns the same backup")
    add_api_options(backup)
    backup.set_defaults(func=cmd_backup)

    listing = commands.add_parser("list", help="list backups, newest first", epilog=exits)
    listing.add_argument("--type", nargs="+", choices=[t.value for t in BackupType], help="only these types")
    listing.add_argument("--status", nargs="+", choices=[s.value for s in BackupStatus], help="only these statuses")
    listing.add_argument(
        "--verification", nargs="+", choices=[v.value for v in VerificationStatus], help="only these verifications"
    )
    listing.add_argument("--limit", type=_page_size, default=50, help="backups shown at most (1 to 500, default 50)")
    listing.add_argument("--offset", type=_offset, default=0, help="skip this many (default 0)")
    listing.add_argument("--json", action="store_true", help="print the API's page of backups as JSON")
    add_api_options(listing)
    listing.set_defaults(func=cmd_list)

    show = commands.add_parser("show", help="one backup: parts, sizes, checksums, verification, warnings", epilog=exits)
    show.add_argument("backup", help="backup id")
    show.add_argument("--json", action="store_true", help="print the backup record as JSON")
    add_api_options(show)
    show.set_defaults(func=cmd_show)

    verify = commands.add_parser("verify", help="verify a completed backup again", epilog=exits)
    verify.add_argument("backup", help="backup id")
    verify.add_argument("--wait", action="store_true", help="follow the verification until verified or failed")
    verify.add_argument("--json", action="store_true", help="print the backup record (with its verification)")
    add_api_options(verify)
    verify.set_defaults(func=cmd_verify)


def _bounded(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
    return value


def _page_size(text: str) -> int:
    return _bounded(text, 1, 500)


def _offset(text: str) -> int:
    return _bounded(text, 0, 10**9)
