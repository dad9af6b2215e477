"""The admin page in real Chromium against `make run`: client/'s Playwright spec (`npm run e2e`) signs
in, sees the backups made through the API, creates one and watches it complete, opens the restore
dialog, edits the schedule, finds no error in the browser console, and writes the screenshots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from backup_common.adapters.settings import Settings
from tests.e2e.system_support import API, REPO, RunningSystem, running_system
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.e2e

CLIENT = REPO / "client"
SCREENSHOTS = REPO / "var" / "screenshots"
SHOTS = ("backup-list.png", "restore-dialog.png")
# What the spec expects to find when it starts: two completed backups made through the API.
SEEDED = (("database", "seeded database backup"), ("files", "seeded files backup"))
E2E_SECONDS = 600
TOKEN_SECONDS = 2 * E2E_SECONDS


def chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no Chromium at {path}: the admin page's end-to-end test drives Debian's chromium "
            "(`apt-get install chromium`, which `make setup` and .ci/run do as root) or the browser CHROMIUM_PATH names"
        )
    return path


def application_trees(root: Path) -> dict[str, str]:
    """Uploads, configs and logs with a few files, for the files backup and its restore dialog."""
    trees = {
        "uploads": {"avatars/zoë.png": b"\x89PNG fake", "report.pdf": b"%PDF-1.7 fake"},
        "configs": {"app.ini": b"[app]\nname = shop\n"},
        "logs": {"app.log": b"started\n" * 50},
    }
    for tree, files in trees.items():
        for name, content in files.items():
            path = root / tree / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    (root / "restores").mkdir()
    return {
        "BACKUP_UPLOADS_DIR": str(root / "uploads"),
        "BACKUP_CONFIGS_DIR": str(root / "configs"),
        "BACKUP_LOGS_DIR": str(root / "logs"),
        "BACKUP_RESTORE_DIR": str(root / "restores"),
    }


async def seed(system: RunningSystem, token: str) -> None:
    created = []
    for backup_type, description in SEEDED:
        status, body = await system.request(
            "POST", f"{API}/create", {"type": backup_type, "description": description}, token=token
        )
        assert status == 202, f"{body}\n{system.log_tail()}"
        created.append(body["backup"]["id"])
    for backup_id in created:
        backup = await system.wait_finished(backup_id, token)
        assert backup["status"] == "completed", f"{backup}\n{system.log_tail()}"


async def check_served_page(system: RunningSystem) -> None:
    """The built page, as `make run` serves it: public, under its policy, with its scripts."""
    async with aiohttp.ClientSession() as session:
        async with session.get(system.base_url + "/admin/backup-recovery") as response:
            html = await response.text()
            headers = response.headers
        assert response.status == 200, f"{html[:500]}\n{system.log_tail()}"
        policy = headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in policy
        assert "frame-ancestors 'self'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        scripts = re.findall(r'<script[^>]* src="(/_next/static/[^"]+)"', html)
        assert scripts, html[:500]
        for script in scripts:
            async with session.get(system.base_url + script) as response:
                assert response.status == 200, script
                assert response.headers["Content-Type"].startswith("text/javascript"), script


async def run_spec(env: dict[str, str]) -> tuple[int, str]:
    """`npm run e2e` in client/, its output streamed into the test's log as it comes; the whole
    process group (npm, Playwright, Chromium) is killed if it outlives E2E_SECONDS or the test."""
    process = await asyncio.create_subprocess_exec(
        "npm",
        "run",
        "e2e",
        cwd=CLIENT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(E2E_SECONDS):
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                lines.append(line)
                sys.stdout.write(f"[npm run e2e] {line}")
                sys.stdout.flush()
            code = await process.wait()
    except TimeoutError:
        lines.append(f"\n(stopped: npm run e2e ran longer than {E2E_SECONDS} s)\n")
        code = -1
    finally:
        # npm, or whatever it started in its group (a browser left behind), goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    return code, "".join(lines)


@pytest.mark.timeout(E2E_SECONDS + 300)
async def test_the_admin_page_works_in_chromium_against_make_run(
    settings: Settings, servers: ServiceEndpoints, jwt_secret: str, tmp_path: Path
) -> None:
    browser = chromium()
    assert (CLIENT / "package.json").is_file(), "client/package.json is missing"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in SHOTS:
        (SCREENSHOTS / name).unlink(missing_ok=True)

    async with running_system(settings, servers, jwt_secret, **application_trees(tmp_path / "app")) as system:
        admin = system.token("admin", ttl_seconds=TOKEN_SECONDS)
        restore_dir = tmp_path / "app" / "restores"
        await seed(system, admin)
        await check_served_page(system)
        env = {key: value for key, value in os.environ.items() if not key.startswith("BACKUP_")}
        env.update(
            {
                "BACKUP_E2E_BASE_URL": system.base_url,
                "BACKUP_E2E_TOKEN": admin,
                "BACKUP_E2E_VIEWER_TOKEN": system.token("viewer", ttl_seconds=TOKEN_SECONDS),
                "BACKUP_E2E_SCREENSHOTS": str(SCREENSHOTS),
                "BACKUP_E2E_RESTORE_DIR": str(restore_dir),
                "CHROMIUM_PATH": browser,
                "NEXT_TELEMETRY_DISABLED": "1",
                "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
            }
        )
        started = time.monotonic()
        code, output = await run_spec(env)
        took = time.monotonic() - started
        sys.stdout.write(f"npm run e2e exited with {code} after {took:.0f} s\n")
        assert code == 0, f"npm run e2e exited with {code}:\n{output[-6000:]}\n--- make run:\n{system.log_tail()}"

    # The restore the spec submitted from the dialog rebuilt the trees in a directory of its own.
    restored = [path for path in restore_dir.iterdir() if path.name.startswith("e2e-")]
    assert len(restored) == 1, f"the spec restored into {restored}, below {restore_dir}"
    assert (restored[0] / "configs" / "app.ini").read_bytes() == b"[app]\nname = shop\n"
    for name in SHOTS:
        shot = SCREENSHOTS / name
        assert shot.is_file(), f"the spec wrote no {shot}"
        assert shot.stat().st_size > 0, f"{shot} is empty"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
