"""`backupctl restore`: asks the gateway for a restore, exactly as the page and the API do, and with
``--wait`` follows it to its end. The offline tools (`db-load`, `files-restore`) are for when the
services are down; this one needs them running, and gets their checks, safety backup and audit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp

from backup_common.cli.progress import ProgressLine, describe

POLL_SECONDS = 1.0


class RestoreRefused(Exception):
    """The gateway refused or failed the request; the message is its answer."""


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


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> dict[str, Any]:
    async with session.request(method, url, json=body) as response:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = None
        if response.status >= 400 or not isinstance(answer, dict):
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            message = error.get("message") or f"the gateway answered {response.status} {response.reason}"
            raise RestoreRefused(f"{message} (HTTP {response.status})")
        return answer


def _status_line(restore: dict[str, Any]) -> str:
    parts = "; ".join(f"{part['part']} {describe(part.get('progress'))}" for part in restore["parts"])
    waiting = ""
    if restore["status"] == "pending" and restore.get("safety_backup_id"):
        waiting = f", safety backup {restore['safety_backup_id']} first"
    return f"restore {restore['id']}: {restore['status']}{waiting} [{parts}]"


async def run_restore(gateway: str, token: str, args: argparse.Namespace) -> int:
    """Requests the restore; with ``args.wait``, follows it. Returns the exit status."""
    base = gateway.rstrip("/") + "/api/admin/backup"
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        try:
            answer = await _call(session, "POST", f"{base}/{args.backup}/restore", restore_body(args))
        except (RestoreRefused, aiohttp.ClientError, TimeoutError) as exc:
            print(f"backupctl restore: {_reason(exc, gateway)}", file=sys.stderr)
            return 2
        restore = answer["restore"]
        print(f"restore {restore['id']} of backup {args.backup} requested ({restore['status']})")
        if not args.wait:
            print(f"follow it with: GET {base}/restores/{restore['id']}")
            return 0
        line = ProgressLine(sys.stderr)
        try:
            while restore["status"] not in ("completed", "failed"):
                line.update(_status_line(restore), phase=restore["status"])
                await asyncio.sleep(POLL_SECONDS)
                try:
                    restore = (await _call(session, "GET", f"{base}/restores/{restore['id']}"))["restore"]
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # The restore goes on without us; keep asking.
                    line.update(f"restore {restore['id']}: gateway unreachable ({_reason(exc, gateway)})")
        finally:
            line.close()
    if restore["status"] == "failed":
        print(f"restore {restore['id']} failed: {restore['error']}", file=sys.stderr)
        return 1
    print(_status_line(restore))
    return 0


def _reason(exc: BaseException, gateway: str) -> str:
    if isinstance(exc, RestoreRefused):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"the gateway at {gateway} did not answer in time"
    return f"cannot reach the gateway at {gateway}: {exc}"
