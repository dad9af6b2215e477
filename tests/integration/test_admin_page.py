"""The admin page served by the gateway from a directory laid out as `next build`'s static export:
public, with its security headers, its files and nothing outside the directory; the API stays
guarded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backup_common.adapters.settings import Settings
from tests.integration.gateway_support import Gateway, running_gateway

pytestmark = pytest.mark.integration

INLINE_SCRIPT = 'self.__next_f=self.__next_f||[];self.__next_f.push([0,"hi"])'
PAGE_HTML = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"/>'
    '<link rel="stylesheet" href="/_next/static/css/app.css"/>'
    '<script src="/_next/static/chunks/x.js" async=""></script></head>'
    f'<body><div id="root">Backup &amp; Recovery</div><script>{INLINE_SCRIPT}</script></body></html>'
)
SCRIPT = b"console.log('the page');\n"
SECRET = "not for the web"


def layout_export(root: Path) -> Path:
    """A directory as `next build` with `output: "export"` leaves it, with a secret beside it."""
    out = root / "out"
    (out / "admin").mkdir(parents=True)
    (out / "admin" / "backup-recovery.html").write_text(PAGE_HTML)
    (out / "admin" / "backup-recovery.txt").write_text('0:{"b":"build"}\n')
    (out / "admin" / "backup-recovery").mkdir()
    (out / "admin" / "backup-recovery" / "__next._tree.txt").write_text("tree")
    (out / "_not-found").mkdir()
    (out / "_not-found" / "__next._full.txt").write_text("full")
    (out / "_next" / "static" / "chunks").mkdir(parents=True)
    (out / "_next" / "static" / "css").mkdir(parents=True)
    (out / "_next" / "static" / "x.js").write_bytes(SCRIPT)
    (out / "_next" / "static" / "css" / "app.css").write_text("body{margin:0}")
    (out / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    (out / "404.html").write_text("<!DOCTYPE html><html><body>not here</body></html>")
    (out / ".built").write_text("stamp")
    (root / "secret.txt").write_text(SECRET)
    (out / "_next" / "static" / "out-link.txt").symlink_to(root / "secret.txt")
    (out / "_next" / "static" / "in-link.js").symlink_to(out / "_next" / "static" / "x.js")
    return out


async def ready(gateway: Gateway) -> Gateway:
    """Once /readyz answers: a gateway stopped while its broker link still connects can leave the
    robust connection's tasks behind, and these tests are over in milliseconds."""
    async with asyncio.timeout(30):
        while True:
            response = await gateway.client.get("/readyz")
            if response.status == 200:
                return gateway
            await asyncio.sleep(0.05)


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(settings, admin_page_dir=layout_export(tmp_path)) as running:
        yield await ready(running)


async def get(gateway: Gateway, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    response = await gateway.client.request(method, path, allow_redirects=False)
    return response.status, dict(response.headers), await response.read()


async def raw_get(gateway: Gateway, raw_path: str) -> tuple[int, bytes]:
    """A request line sent as written: no client normalises `..` or decodes `%2e` on the way."""
    port = gateway.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.mark.parametrize("path", ["/admin/backup-recovery", "/admin/backup-recovery/"])
async def test_the_page_is_served_without_a_token_with_its_security_headers(served: Gateway, path: str) -> None:
    status, headers, body = await get(served, path)

    assert status == 200
    assert body.decode() == PAGE_HTML
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = dict(directive.split(" ", 1) for directive in headers["Content-Security-Policy"].split("; "))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == f"'self' {sha256_source(INLINE_SCRIPT)}"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'self'"
    assert policy["object-src"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]


async def test_a_head_request_gets_the_page_headers_without_its_body(served: Gateway) -> None:
    status, headers, body = await get(served, "/admin/backup-recovery", method="HEAD")

    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(PAGE_HTML))
    assert "Content-Security-Policy" in headers


@pytest.mark.parametrize("path", ["/admin", "/admin/"])
async def test_admin_redirects_permanently_to_the_page(served: Gateway, path: str) -> None:
    status, headers, _ = await get(served, path)

    assert status == 308
    assert headers["Location"] == "/admin/backup-recovery"


async def test_hashed_assets_are_served_with_long_immutable_caching(served: Gateway) -> None:
    status, headers, body = await get(served, "/_next/static/x.js")

    assert (status, body) == (200, SCRIPT)
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, headers, _ = await get(served, "/_next/static/css/app.css")
    assert (status, headers["Content-Type"]) == (200, "text/css; charset=utf-8")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/admin/backup-recovery.txt", "text/plain"),
        ("/admin/backup-recovery/__next._tree.txt", "text/plain"),
        ("/_not-found/__next._full.txt", "text/plain"),
        ("/favicon.ico", "image/x-icon"),
        ("/404.html", "text/html"),
    ],
)
async def test_the_other_files_of_the_export_are_served_and_revalidated(
    served: Gateway, path: str, content_type: str
) -> None:
    status, headers, _ = await get(served, path)

    assert status == 200
    assert headers["Content-Type"].split(";")[0] == content_type
    assert headers["Cache-Control"] == "no-cache"


async def test_a_link_inside_the_directory_is_followed(served: Gateway) -> None:
    status, _, body = await get(served, "/_next/static/in-link.js")

    assert (status, body) == (200, SCRIPT)


@pytest.mark.parametrize(
    "raw_path",
    [
        "/_next/../../secret.txt",
        "/_next/static/../../../secret.txt",
        "/_next/%2e%2e/%2e%2e/secret.txt",
        "/_next/static/%2E%2E%2F%2E%2E%2F..%2Fsecret.txt",
        "/admin/..%2f..%2fsecret.txt",
        "/_next/static/out-link.txt",
        "/_next/static/x.js%00.txt",
        "/_next/static/%5c..%5c..%5csecret.txt",
        "/.built",
        "/_next/static",
        "/_next/static/missing.js",
        "/admin/elsewhere",
        "/nothing.txt",
    ],
)
async def test_nothing_outside_the_directory_nor_any_hidden_or_missing_file_is_served(
    served: Gateway, raw_path: str
) -> None:
    status, body = await raw_get(served, raw_path)

    assert status == 404, body
    assert SECRET.encode() not in body
    assert json.loads(body)["error"]["code"] == "not_found"


async def test_a_missing_build_answers_503_saying_to_run_make_setup(settings: Settings, tmp_path: Path) -> None:
    async with running_gateway(settings, admin_page_dir=tmp_path / "never-built") as gateway:
        await ready(gateway)
        status, headers, body = await get(gateway, "/admin/backup-recovery")
        asset_status, _, _ = await get(gateway, "/_next/static/x.js")

    assert status == 503
    error = json.loads(body)["error"]
    assert error["code"] == "admin_page_not_built"
    assert "make setup" in error["message"]
    assert "Node.js" in error["message"]
    assert str(tmp_path / "never-built") in error["message"]
    assert headers["Content-Type"].startswith("application/json")
    assert asset_status == 404


async def test_the_api_beside_the_page_still_needs_a_token(served: Gateway) -> None:
    status, _, body = await get(served, "/api/admin/backup/list")

    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"
    status, body_json = await served.call("GET", "/api/admin/backup/list")
    assert status == 200, body_json


async def test_the_page_and_its_files_are_not_in_the_api_document(served: Gateway) -> None:
    status, _, body = await get(served, "/api/openapi.json")
    document: dict[str, Any] = json.loads(body)

    assert status == 200
    assert not [path for path in document["paths"] if path.startswith(("/admin", "/_next", "/{path}"))]


async def test_the_operational_endpoints_are_not_shadowed_by_the_page_files(served: Gateway) -> None:
    for path in ("/healthz", "/metrics"):
        status, headers, _ = await get(served, path)
        assert status == 200, path
        assert "Content-Security-Policy" not in headers
