"""The admin page's Content-Security-Policy, its directory's default and its routes beside the API's."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from backup_common.adapters.settings import Settings
from backup_common.paths import REPO_ROOT
from backup_gateway.admin_page import ROUTE_NAMES, AdminPage, content_security_policy
from backup_gateway.bootstrap import create_app


def digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def directives(policy: str) -> dict[str, str]:
    return dict(item.split(" ", 1) for item in policy.split("; "))


def test_each_inline_script_and_style_is_allowed_by_its_hash_and_nothing_else_inline() -> None:
    first, second, style = 'self.__next_f.push([1,"a"])', "\n(self.__next_s=[]).push(1)\n", "body{margin:0}"
    html = (
        f'<html><head><style data-x="1">{style}</style><script src="/_next/static/a.js" async=""></script>'
        f"<SCRIPT>{first}</SCRIPT></head><body><script>{second}</script><script>{first}</script></body></html>"
    )

    policy = directives(content_security_policy(html))

    assert policy["script-src"] == f"'self' {digest(first)} {digest(second)}"
    assert policy["style-src"] == f"'self' {digest(style)}"
    assert policy["default-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'self'"
    assert policy["object-src"] == "'none'"
    assert "unsafe" not in content_security_policy(html)


def test_style_attributes_are_allowed_by_their_decoded_hash_with_unsafe_hashes() -> None:
    html = '<div style="font-family:&quot;Inter&quot;, sans-serif"></div><p style="width:0px"></p><i style="width:0px">'

    policy = directives(content_security_policy(html))

    font = 'font-family:"Inter", sans-serif'
    assert policy["style-src"] == f"'self' 'unsafe-hashes' {digest(font)} {digest('width:0px')}"
    assert policy["script-src"] == "'self'"


def test_a_page_without_inline_scripts_allows_only_its_own_origin() -> None:
    policy = directives(content_security_policy('<html><script src="/a.js"></script></html>'))

    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"


def test_the_default_directory_is_client_out_of_the_checkout_whatever_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BACKUP_ADMIN_PAGE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    assert Settings().admin_page_dir == REPO_ROOT / "client" / "out"
    assert (REPO_ROOT / "client" / "openapi.json").is_file()


def test_the_directory_is_read_from_backup_admin_page_dir_and_a_relative_one_from_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKUP_ADMIN_PAGE_DIR", "build/page")
    monkeypatch.chdir(tmp_path)

    page = AdminPage.at(Settings().admin_page_dir)

    assert page.root == Path(os.path.abspath(tmp_path / "build" / "page"))


@pytest.fixture(scope="module")
def app() -> web.Application:
    return create_app(Settings(jwt_secret="j" * 40))


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/admin", "admin_page.redirect"),
        ("/admin/backup-recovery", "admin_page"),
        ("/admin/backup-recovery/", "admin_page.slash"),
        ("/admin/backup-recovery.txt", "admin_page.file"),
        ("/_next/static/chunks/app.js", "admin_page.asset"),
        ("/favicon.ico", "admin_page.export_file"),
        ("/_not-found/__next._tree.txt", "admin_page.export_file"),
        ("/admin/backup-recovery/__next._tree.txt", "admin_page.file"),
        ("/healthz", "healthz"),
        ("/readyz", "readyz"),
        ("/metrics", "metrics"),
        ("/api/openapi.json", "openapi"),
        ("/api/admin/backup/list", "backup.list"),
        ("/api/admin/backup/6f1c0d7e-3b52-4c8e-9a51-2f0d5c3e8b11", "backup.read"),
    ],
)
async def test_the_page_routes_never_shadow_the_api_or_the_operational_endpoints(
    app: web.Application, path: str, name: str
) -> None:
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))

    assert match.route.name == name
    assert (name in ROUTE_NAMES) == (not path.startswith(("/api", "/healthz", "/readyz", "/metrics")))


@pytest.mark.parametrize("path", ["/api/admin/backup/x.json", "/api/nothing.txt"])
async def test_no_file_is_looked_for_under_api(app: web.Application, path: str) -> None:
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))

    assert match.route.name not in ROUTE_NAMES
