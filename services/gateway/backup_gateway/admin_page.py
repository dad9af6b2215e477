"""The admin page: the static export of client/ (`npm run build`), served from one directory.

`/admin/backup-recovery` is the page; `/_next/…` its scripts, styles and fonts; anything else the
export emits (`favicon.ico`, `404.html`, the route's RSC payload `admin/backup-recovery.txt` and its
segment files `admin/backup-recovery/__next.*.txt`) is served from the same directory.

No route here needs a token: the page holds no data, and every API call it makes carries the
administrator's token (admin_auth's default deny covers /api/admin/, which none of these paths is
under). None of these routes is part of the API, so none is in the OpenAPI document (ROUTE_NAMES
lets the test that compares the two leave them out).

Only regular files inside the directory are served: a path with a NUL, a `..` or a hidden segment,
or one that resolves (through a symbolic link, say) outside the directory, is a 404 like a missing
file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from backup_gateway.middleware import error_response

log = logging.getLogger(__name__)

PAGE_PATH = "/admin/backup-recovery"
PAGE_FILE = "admin/backup-recovery.html"

# Names of the routes below; they are served, not documented (see the module's docstring).
PAGE = "admin_page"
PAGE_SLASH = "admin_page.slash"
REDIRECT = "admin_page.redirect"
REDIRECT_SLASH = "admin_page.redirect_slash"
ADMIN_FILE = "admin_page.file"
NEXT_ASSET = "admin_page.asset"
EXPORT_FILE = "admin_page.export_file"
ROUTE_NAMES = frozenset({PAGE, PAGE_SLASH, REDIRECT, REDIRECT_SLASH, ADMIN_FILE, NEXT_ASSET, EXPORT_FILE})

NO_CACHE = "no-cache"
# Next.js names everything under _next/static/ by its content's hash: it never changes.
IMMUTABLE = "public, max-age=31536000, immutable"

COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# The types of what an export holds, whatever the host's mime.types says (with nosniff, a script or
# a style sheet of another type is refused); any other file gets aiohttp's guess.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",  # the RSC payloads, which Next's router reads as text/plain
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
}

# The page's Content-Security-Policy: everything from this origin only. A static export inlines
# small scripts in its HTML (the bootstrap and the React Server Components payload,
# `self.__next_f.push(…)`), which a nonce cannot cover (there is no server rendering to set one), so
# script-src allows exactly those scripts by their SHA-256, computed from the served file itself:
# never 'unsafe-inline' or 'unsafe-eval'. style-src likewise allows the file's inline <style>
# elements by hash, and its style="…" attributes (React's style props, rendered into the HTML) by
# hash with 'unsafe-hashes', which admits those exact declarations and no other. Chunks the page
# loads later come from /_next/ ('self'); React changes styles afterwards through the CSSOM, which
# CSP does not restrict.
_CSP_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'{scripts}",
    "style-src 'self'{styles}",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'self'",
)


def _source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class _InlineCode(HTMLParser):
    """The inline scripts, <style> elements and style attributes of one document, as a browser
    reads them (an attribute's entities decoded, a script's text as it stands)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.style_attributes: list[str] = []
        self._inside: tuple[str, list[str]] | None = None  # an inline script or style being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if named.get("style"):
            self.style_attributes.append(named["style"] or "")
        if tag == "style" or (tag == "script" and "src" not in named):
            self._inside = (tag, [])

    def handle_data(self, data: str) -> None:
        if self._inside is not None:
            self._inside[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._inside is not None and self._inside[0] == tag:
            (self.scripts if tag == "script" else self.styles).append("".join(self._inside[1]))
            self._inside = None


def content_security_policy(html: str) -> str:
    """The policy of one HTML document: 'self' plus the hash of each of its inline scripts and styles."""
    found = _InlineCode()
    found.feed(html)
    found.close()
    scripts = list(dict.fromkeys(_source(script) for script in found.scripts))
    styles = list(dict.fromkeys(_source(style) for style in found.styles))
    if found.style_attributes:
        styles += ["'unsafe-hashes'", *dict.fromkeys(_source(style) for style in found.style_attributes)]
    joined = {"scripts": "".join(" " + s for s in scripts), "styles": "".join(" " + s for s in styles)}
    return "; ".join(directive.format(**joined) for directive in _CSP_DIRECTIVES)


@dataclass
class _Document:
    stamp: tuple[int, int]  # mtime_ns and size of the file it was read from
    body: bytes
    policy: str


@dataclass
class AdminPage:
    """The directory of the static export; HTML documents are read once per change of the file."""

    root: Path
    _documents: dict[Path, _Document] = field(default_factory=dict)

    @classmethod
    def at(cls, directory: Path) -> AdminPage:
        return cls(Path(os.path.abspath(directory)))

    def resolve(self, relative: str) -> Path | None:
        """The regular file at `relative` inside the directory, or None (missing, hidden, or outside)."""
        parts = relative.split("/")
        if "\x00" in relative or "\\" in relative or any(part.startswith(".") for part in parts if part):
            return None
        root = self.root.resolve()
        try:
            candidate = root.joinpath(*parts).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def document(self, path: Path) -> _Document:
        status = path.stat()
        stamp = (status.st_mtime_ns, status.st_size)
        known = self._documents.get(path)
        if known is None or known.stamp != stamp:
            body = path.read_bytes()
            known = _Document(stamp, body, content_security_policy(body.decode("utf-8", "replace")))
            self._documents[path] = known
        return known


ADMIN_PAGE = web.AppKey("admin_page", AdminPage)


def _not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found", f"no route {request.path}", headers=COMMON_HEADERS)


async def _resolve(request: web.Request, relative: str) -> Path | None:
    # Resolving walks the filesystem: off the event loop.
    return await asyncio.to_thread(request.app[ADMIN_PAGE].resolve, relative)


async def _serve(request: web.Request, path: Path, cache_control: str) -> web.StreamResponse:
    headers = {**COMMON_HEADERS, "Cache-Control": cache_control}
    if path.suffix in CONTENT_TYPES:
        headers["Content-Type"] = CONTENT_TYPES[path.suffix]
    if path.suffix == ".html":
        document = await asyncio.to_thread(request.app[ADMIN_PAGE].document, path)
        headers["Content-Security-Policy"] = document.policy
        return web.Response(body=document.body, content_type="text/html", charset="utf-8", headers=headers)
    return web.FileResponse(path, headers=headers)


async def page(request: web.Request) -> web.StreamResponse:
    admin_page = request.app[ADMIN_PAGE]
    path = await _resolve(request, PAGE_FILE)
    if path is None:
        return error_response(
            503,
            "admin_page_not_built",
            f"the admin page is not built: {admin_page.root / PAGE_FILE} is missing; run `make setup` "
            "(it needs Node.js 20 and npm), or point BACKUP_ADMIN_PAGE_DIR at a built page",
            headers=COMMON_HEADERS,
        )
    return await _serve(request, path, NO_CACHE)


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(PAGE_PATH)


def _file_under(prefix: str) -> Handler:
    async def serve_file(request: web.Request) -> web.StreamResponse:
        relative = prefix + request.match_info["path"]
        path = await _resolve(request, relative)
        if path is None:
            return _not_found(request)
        immutable = relative.startswith("_next/static/")
        return await _serve(request, path, IMMUTABLE if immutable else NO_CACHE)

    return serve_file


def add_admin_page(app: web.Application, directory: Path) -> None:
    """The page's routes (GET, and HEAD with it), after the API's: a file's name has a dot
    (`favicon.ico`, `404.html`), so it never shadows /metrics, /healthz or /readyz, which have none,
    and nothing under /api/ is looked for here."""
    app[ADMIN_PAGE] = AdminPage.at(directory)
    if app[ADMIN_PAGE].resolve(PAGE_FILE) is None:
        log.warning("the admin page is not built (no %s); /admin/backup-recovery answers 503", directory / PAGE_FILE)
    router = app.router
    router.add_get("/admin", redirect, name=REDIRECT)
    router.add_get("/admin/", redirect, name=REDIRECT_SLASH)
    router.add_get(PAGE_PATH, page, name=PAGE)
    router.add_get(PAGE_PATH + "/", page, name=PAGE_SLASH)
    router.add_get("/admin/{path:.+}", _file_under("admin/"), name=ADMIN_FILE)
    router.add_get("/_next/{path:.+}", _file_under("_next/"), name=NEXT_ASSET)
    # Any other file of the export: `favicon.ico`, `404.html`, another route's RSC segments
    # (`_not-found/__next._tree.txt`); never under /api/.
    router.add_get(r"/{path:(?!api/)(?:[^/]+/)*[^/]+\.[^/]+}", _file_under(""), name=EXPORT_FILE)
