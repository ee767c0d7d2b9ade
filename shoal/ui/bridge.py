"""`shoal dashboard`'s bridge: the dashboard in a browser for whoever may use the CLI, and for nobody else.

A browser can neither open a manager's unix socket nor present a node's TLS certificate. The bridge listens
on a loopback port and passes the page's requests to the daemon the CLI's own way (the socket, or mutual TLS
with the CLI's certificates), so the dashboard can do what the CLI's user can. Every user of the machine can
reach a loopback port, so:

- The page's files (`/ui/…`) are served to anyone: they are the package's. Anything else needs the session.
- The session is had once. `shoal dashboard` prints a link carrying a random token in its fragment (never
  sent in a request, so never in a log or a Referer); the page trades it for a session key
  (`POST /dashboard/session`), after which the token is spent. The page keeps the key in its own tab
  (sessionStorage: this origin only, port included) and sends it as `Authorization: Bearer`. Not a cookie:
  a browser sends 127.0.0.1's cookies to every port of 127.0.0.1, so any other local web server it visits
  would receive one.
- A request whose Host is not the bridge's own address is refused (DNS rebinding).
- A write must come from the bridge's own origin (no cross-site form or fetch).
- Only what the page uses is passed on: reads of nodes, services and tasks, the events stream, and the
  updates of a service or a node.

The decisions (`BridgeAuth`, `passed_on`) are pure; `make_app` is the aiohttp application around them and
`serve` runs it until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
from aiohttp import web

from shoal.api.client import Endpoint

log = logging.getLogger(__name__)

SESSION_PATH = "/dashboard/session"
MAX_BODY = 1024 * 1024  # a spec; the daemon reads no more either
CONNECT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 2.0  # open streams are cut on Ctrl-C rather than waited for
PAGE = re.compile(r"/ui(/[^/]*)?")
# (method, path) the page uses, and nothing else: no secrets, no removals, no swarm settings.
PASSED_ON: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile(r"/_ping")),
    ("GET", re.compile(r"/(nodes|services|tasks)(/[^/]+)?")),
    ("GET", re.compile(r"/events")),
    ("POST", re.compile(r"/(services|nodes)/[^/]+/update")),
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Passed back from the daemon; the rest (its Server line, …) is not the browser's business.
RESPONSE_HEADERS = ("Content-Type", "Content-Security-Policy", "Location", "Api-Version", "Cache-Control",
                    "X-Frame-Options")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class BridgeAuth:
    """Who may use the bridge on `port`: decisions only, no I/O."""

    port: int
    token: str = field(default_factory=new_secret)
    session: str = field(default_factory=new_secret)
    token_spent: bool = False

    @property
    def url(self) -> str:
        """The link `shoal dashboard` prints: the token in the fragment, which a browser never sends."""
        return f"http://127.0.0.1:{self.port}/ui/#token={self.token}"

    def host_allowed(self, host: str | None) -> bool:
        """The Host header names this bridge (a page of another site rebound to 127.0.0.1 names its own)."""
        return (host or "").lower() in {f"{name}:{self.port}" for name in LOOPBACK_NAMES}

    def origin_allowed(self, origin: str | None, host: str) -> bool:
        """A write comes from the bridge's own page (`host` already checked by `host_allowed`)."""
        return origin is not None and origin.lower() == f"http://{host.lower()}"

    def exchange(self, token: object) -> str | None:
        """The session key for the link's token, once; None for a wrong or spent token."""
        if self.token_spent or not isinstance(token, str) or not hmac.compare_digest(token, self.token):
            return None
        self.token_spent = True
        return self.session

    def authorized(self, authorization: str | None) -> bool:
        scheme, _, key = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip(), self.session)


def passed_on(method: str, path: str) -> bool:
    """Whether the bridge passes `method path` (decoded) on to the daemon."""
    if ".." in path.split("/"):
        return False
    if method == "GET" and PAGE.fullmatch(path):
        return True
    return any(method == allowed and pattern.fullmatch(path) for allowed, pattern in PASSED_ON)


# ---- the application ----------------------------------------------------------------------------------

AUTH = web.AppKey("auth", BridgeAuth)
UPSTREAM = web.AppKey("upstream", httpx.AsyncClient)
DAEMON = web.AppKey("daemon", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refuse(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=SECURITY_HEADERS)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    host = request.headers.get("Host")
    if not auth.host_allowed(host):
        return refuse(403, f"this dashboard answers only at 127.0.0.1:{auth.port} or localhost:{auth.port}, "
                           f"not at {host or '(no Host)'}")
    if request.method not in SAFE_METHODS and not auth.origin_allowed(request.headers.get("Origin"), host or ""):
        return refuse(403, "a write to the dashboard must come from its own page")
    public = request.path == SESSION_PATH or (request.method == "GET" and PAGE.fullmatch(request.path))
    if not public and request.path != "/" and not auth.authorized(request.headers.get("Authorization")):
        return refuse(401, "this dashboard session is missing or has ended: open the link `shoal dashboard` "
                           "printed (each link works once; run it again for a new one)")
    response = await handler(request)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


async def open_session(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return refuse(400, 'give the link\'s token: {"token": "..."}')
    session = request.app[AUTH].exchange(body.get("token") if isinstance(body, dict) else None)
    if session is None:
        return refuse(403, "this dashboard link is wrong or was already used: run `shoal dashboard` again "
                           "for a new one")
    return web.json_response({"session": session}, headers={"Cache-Control": "no-store"})


async def to_page(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/ui/"})


async def forward(request: web.Request) -> web.StreamResponse:
    """Pass the request on to the daemon and its answer back, streamed (the events stream never ends)."""
    if not passed_on(request.method, request.path):
        return refuse(404, f"the dashboard does not pass on {request.method} {request.path}")
    upstream = request.app[UPSTREAM]
    headers = {"Content-Type": request.headers["Content-Type"]} if "Content-Type" in request.headers else {}
    body = await request.read() if request.method == "POST" else None
    streaming = request.path == "/events"
    outgoing = upstream.build_request(
        request.method, request.rel_url.raw_path_qs, content=body, headers=headers,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT) if streaming else upstream.timeout)
    try:
        answer = await upstream.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        return refuse(502, f"Cannot connect to the shoal daemon at {request.app[DAEMON]}: {exc or type(exc).__name__}")
    response = web.StreamResponse(status=answer.status_code, reason=answer.reason_phrase)
    for name in RESPONSE_HEADERS:
        if name in answer.headers:
            response.headers[name] = answer.headers[name]
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    try:
        await response.prepare(request)
        try:
            async for chunk in answer.aiter_raw():
                await response.write(chunk)
        except httpx.HTTPError:
            # The daemon's stream broke (it stopped, say): break the browser's too, so the page reconnects.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return response  # the browser went away: nobody to answer
    finally:
        await answer.aclose()


def make_app(auth: BridgeAuth, upstream: httpx.AsyncClient, daemon: str) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[AUTH] = auth
    app[UPSTREAM] = upstream
    app[DAEMON] = daemon
    app.router.add_post(SESSION_PATH, open_session)
    app.router.add_get("/", to_page)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def loopback_socket(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (`port` 0: a free one); OSError when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(endpoint: Endpoint, daemon: str, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Run the bridge on `sock` (from `loopback_socket`) until cancelled; `announce` is given its link."""
    auth = BridgeAuth(port=sock.getsockname()[1])
    async with endpoint.async_client() as upstream:
        # Handlers are cancelled when their browser goes away, so a closed tab lets go of its event stream.
        runner = web.AppRunner(make_app(auth, upstream, daemon), handler_cancellation=True, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            announce(auth.url)
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()


__all__ = ["BridgeAuth", "loopback_socket", "make_app", "passed_on", "serve"]
