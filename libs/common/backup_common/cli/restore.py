"""`backupctl restore`: asks the gateway for a restore, exactly as the page and the API do, and with
``--wait`` follows it to its end. The offline tools (`db-load`, `files-restore`) are for when the
services are down; this one needs them running, and gets their checks, safety backup and audit.
Where the gateway is, the token and the exit statuses: see api_client."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from backup_common.cli.api_client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    ApiClient,
    ApiError,
    ApiSetupError,
    fail,
    follow,
    print_json,
    resolve_api,
)
from backup_common.cli.progress import Display, describe
from backup_common.cli.render import part_progress

FINISHED = ("completed", "failed")


def restore_body(args: argparse.Namespace) -> dict[str, Any]:
    """The API request body of the command line's restore."""
    body: dict[str, Any] = {"confirm": args.backup}
    if args.parts:
        body["parts"] = args.parts
    if args.target_database:
        body["target"] = {"database": args.target_database, "replace": args.replace}
    elif args.target_directory:
        body["target"] = {"directory": args.target_directory, "replace": args.replace}
    if args.tables:
        body["tables"] = args.tables
    if args.paths:
        body["paths"] = args.paths
    if args.no_safety_backup:
        body["safety_backup"] = False
    return body


def _status_line(restore: dict[str, Any]) -> str:
    parts = "; ".join(f"{part['part']} {describe(part.get('progress'))}" for part in restore["parts"])
    waiting = ""
    if restore["status"] == "pending" and restore.get("safety_backup_id"):
        waiting = f", safety backup {restore['safety_backup_id']} first"
    return f"restore {restore['id']}: {restore['status']}{waiting} [{parts}]"


def show_restore_progress(display: Display, restore: dict[str, Any]) -> None:
    if restore["status"] == "pending" and restore.get("safety_backup_id"):
        display.note(f"restore {restore['id']}: waiting for its safety backup {restore['safety_backup_id']}")
    for part in restore["parts"]:
        text, phase, done = part_progress(part)
        display.show(part["part"], text, phase=phase, done=done)


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        target = resolve_api(args.api_url)
    except ApiSetupError as exc:
        return fail("restore", str(exc), EXIT_REFUSED)
    return asyncio.run(run_restore(ApiClient(target), args))


async def run_restore(client: ApiClient, args: argparse.Namespace) -> int:
    """Requests the restore; with ``args.wait``, follows it. Returns the exit status."""
    out = sys.stderr if args.json else sys.stdout
    async with client:
        try:
            restore = (await client.post(f"/{args.backup}/restore", restore_body(args)))["restore"]
            print(f"restore {restore['id']} of backup {args.backup} requested ({restore['status']})", file=out)
            if not args.wait:
                print(f"follow it with: GET {client.url('/restores/' + restore['id'])}", file=out)
            else:
                restore = await follow(
                    client, f"/restores/{restore['id']}", "restore", restore,
                    finished=lambda record: record["status"] in FINISHED, show=show_restore_progress,
                )  # fmt: skip
        except ApiError as exc:
            return fail("restore", str(exc), EXIT_REFUSED)
    if args.json:
        print_json(restore)
    if restore["status"] == "failed":
        return fail("restore", f"restore {restore['id']} failed: {restore['error']}", EXIT_FAILED)
    if args.wait:
        print(_status_line(restore), file=out)
    return EXIT_OK
