"""The gateway's admin API as `backupctl`'s commands that need the running services reach it: where it
is (``BACKUP_API_URL``, ``--api-url``/``--gateway``, or the gateway's own host and port), the token
(``BACKUP_API_TOKEN`` as is, or one signed with the local secret), the calls, and the wait for a job
to end.

Exit statuses, the same for every such command: 0 done (completed, verified; or, without
``--wait``, accepted); 1 the job failed (its reason printed); 2 nothing was done: a usage error, a
request the gateway refused (4xx), a gateway that cannot be reached or is failing (5xx), or no
token to call it with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from backup_common.adapters.settings import ENV_PREFIX, SettingsError, load_settings
from backup_common.adapters.tokens import ADMIN_ROLE, issue_token
from backup_common.cli.local import operator, use_local_secrets
from backup_common.cli.progress import Display, progress_display

API_URL_VARIABLE = f"{ENV_PREFIX}API_URL"
API_TOKEN_VARIABLE = f"{ENV_PREFIX}API_TOKEN"
API_PATH = "/api/admin/backup"

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran and failed
EXIT_REFUSED = 2  # nothing was done: usage, refused, unreachable

POLL_SECONDS = 1.0
REQUEST_SECONDS = 60.0
TOKEN_SECONDS = 24 * 3600


class ApiError(Exception):
    """A call that did not get the gateway's answer; the message is one line."""


class ApiRefused(ApiError):
    """The gateway refused the request (4xx)."""


class ApiUnavailable(ApiError):
    """The gateway cannot be reached, did not answer in time, failed (5xx), or is not the gateway."""


class ApiSetupError(Exception):
    """No usable address or token for the gateway; the message names the variable."""


@dataclass(frozen=True)
class ApiTarget:
    url: str  # the gateway's base URL, without a trailing slash
    url_from: str  # where the URL came from, named in every error about reaching it
    token: str
    token_from: str  # where the token came from ("token from BACKUP_API_TOKEN"), named when it is refused


def add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url", "--gateway", dest="api_url", metavar="URL",
        help=f"the gateway's URL (default: {API_URL_VARIABLE}, else http://BACKUP_GATEWAY_HOST:BACKUP_GATEWAY_PORT)",
    )  # fmt: skip


def resolve_api(option_url: str | None, env: Mapping[str, str] | None = None) -> ApiTarget:
    """The gateway to call and the token to call it with.

    The URL: ``--api-url`` (or its alias ``--gateway``), else ``BACKUP_API_URL``, else the gateway's
    own ``BACKUP_GATEWAY_HOST`` and ``BACKUP_GATEWAY_PORT``. The token: ``BACKUP_API_TOKEN`` as is,
    else an admin token signed here with the configured (or `make run`'s local) secret.
    """
    env = os.environ if env is None else env
    url, url_from = option_url, "--api-url"
    if not url and env.get(API_URL_VARIABLE, "").strip():
        url, url_from = env[API_URL_VARIABLE].strip(), API_URL_VARIABLE
    token = env.get(API_TOKEN_VARIABLE, "").strip()
    token_from = f"token from {API_TOKEN_VARIABLE}"
    if not url or not token:
        use_local_secrets(os.environ, create=False)
        settings = load_settings()
        if not url:
            url = f"http://{settings.gateway_host}:{settings.gateway_port}"
            url_from = f"{API_URL_VARIABLE} unset: BACKUP_GATEWAY_HOST and BACKUP_GATEWAY_PORT"
        if not token:
            try:
                token = issue_token(settings, subject=operator(), roles=[ADMIN_ROLE], ttl_seconds=TOKEN_SECONDS)
            except (SettingsError, ValueError) as exc:
                raise ApiSetupError(
                    f"no token for the gateway: set {API_TOKEN_VARIABLE}, or configure the key to sign one ({exc})"
                ) from None
            token_from = f"token signed with {ENV_PREFIX}JWT_SECRET"  # RS* keys are not at hand here
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value itself is not repeated: it might hold credentials.
        raise ApiSetupError(f"{url_from}: must be an http:// or https:// URL, such as http://127.0.0.1:8080")
    return ApiTarget(url.rstrip("/"), url_from, token, token_from)


class ApiClient:
    """Calls to the admin API under /api/admin/backup, each answered with its JSON object or an
    ApiError saying in one line what went wrong."""

    def __init__(self, target: ApiTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.target.token}"},
            timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path: str) -> str:
        return f"{self.target.url}{API_PATH}{path}"

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self.call("POST", path, body=body, headers=headers)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self._session is not None, "use the client in `async with`"
        where = f"the gateway at {self.target.url} ({self.target.url_from})"
        try:
            async with self._session.request(
                method, self.url(path), json=body, params=params, headers=headers
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                status, reason = response.status, response.reason
        except TimeoutError:
            raise ApiUnavailable(f"{where} did not answer within {REQUEST_SECONDS:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise ApiUnavailable(f"cannot reach {where}: {_connect_reason(exc)}") from None
        except aiohttp.ClientError as exc:
            raise ApiUnavailable(f"cannot reach {where}: {exc or type(exc).__name__}") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if status >= 400 and not message:
            raise ApiUnavailable(f"{where} answered {status} {reason}, not as the gateway does: is that its address?")
        if status >= 500:
            raise ApiUnavailable(f"{where} failed: {message} (HTTP {status})")
        if status in (401, 403):
            raise ApiRefused(f"{message} (HTTP {status}; {self.target.token_from})")
        if status >= 400:
            raise ApiRefused(f"{message} (HTTP {status})")
        if not isinstance(answer, dict):
            raise ApiUnavailable(f"{where} answered {status} without a JSON object: is that its address?")
        return answer


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return str(error.strerror or error)


def fail(command: str, message: str, code: int) -> int:
    """Says why the command ends, in one line on stderr, and returns its exit status."""
    print(f"backupctl {command}: {message}", file=sys.stderr, flush=True)
    return code


def print_json(record: Any, stream: TextIO | None = None) -> None:
    stream = stream if stream is not None else sys.stdout
    stream.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


async def follow(
    client: ApiClient,
    path: str,
    key: str,
    record: dict[str, Any],
    *,
    finished: Callable[[dict[str, Any]], bool],
    show: Callable[[Display, dict[str, Any]], None],
    display: Display | None = None,
    poll_seconds: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """Reads ``path`` (its ``key``) until ``finished`` holds, showing each state read on ``display``,
    and returns the last. While the gateway does not answer, says so and keeps asking: the job goes on
    without us. A refusal (ApiRefused) ends the wait."""
    display = display if display is not None else progress_display()
    interval = POLL_SECONDS if poll_seconds is None else poll_seconds
    try:
        while True:
            show(display, record)
            if finished(record):
                return record
            await sleep(interval)
            try:
                record = (await client.get(path))[key]
            except ApiUnavailable as exc:
                display.note(f"{exc}; asking again")
    finally:
        display.close()
