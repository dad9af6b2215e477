"""``WebhookSender`` over aiohttp's client: one session per process, a short timeout, no redirects
followed (a 3xx is an answer that is not a 2xx, so the delivery is retried, never re-posted
elsewhere). Its errors never quote the URL: it may carry credentials or a token in its query."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from backup_common.domain.ports import WebhookError

USER_AGENT = "backup-system-webhooks/1"
ANSWER_PREVIEW_BYTES = 300


class AiohttpWebhooks:
    def __init__(self, timeout_seconds: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._timeout_seconds = timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"User-Agent": USER_AGENT})
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        try:
            async with self._client().post(url, data=body, headers=dict(headers), allow_redirects=False) as answer:
                preview = await answer.content.read(ANSWER_PREVIEW_BYTES)
                return answer.status, preview.decode(errors="replace")
        except TimeoutError:
            raise WebhookError(f"no answer within {self._timeout_seconds:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise WebhookError(f"cannot connect: {reason}") from None
        except aiohttp.InvalidURL:
            raise WebhookError("invalid URL") from None
        except (aiohttp.ClientError, OSError) as exc:
            # Not str(exc): several of aiohttp's errors quote the request's URL.
            raise WebhookError(f"no answer: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)  # lets the connector close its transports
