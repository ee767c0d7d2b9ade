"""The dashboard page's files, as the managers serve them at `/ui/` (and a bridge passes them on).

They ship with the package (no CDN, nothing fetched from elsewhere): one HTML page, its stylesheet and its
script. Each is read once, on a thread, and kept.
"""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from shoal.errors import NotFound

# The only files served, with their types: nothing else under the package is reachable by name.
ASSETS = {"index.html": "text/html", "dashboard.css": "text/css", "dashboard.js": "text/javascript"}
INDEX = "index.html"
# The page runs its own script and style only and talks to its own origin only.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

_loaded: dict[str, bytes] = {}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


async def asset(name: str) -> bytes | None:
    """The file's content, or None when the page has no such file."""
    if name not in ASSETS:
        return None
    if name not in _loaded:
        _loaded[name] = await asyncio.to_thread(_read, name)
    return _loaded[name]


async def serve(request: web.Request) -> web.StreamResponse:
    """`GET /ui`, `/ui/` and `/ui/<file>` (a route of the API: whoever may use the API may load the page)."""
    name = request.match_info.get("name") or ""
    if request.path.rstrip("/").endswith("/ui") and not request.path.endswith("/"):
        raise web.HTTPFound(request.path + "/")  # so the page's relative links resolve under /ui/
    content = await asset(name or INDEX)
    if content is None:
        raise NotFound(f"the dashboard has no file {name!r}")
    return web.Response(body=content, content_type=ASSETS[name or INDEX], charset="utf-8", headers=PAGE_HEADERS)


__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "asset", "serve"]
