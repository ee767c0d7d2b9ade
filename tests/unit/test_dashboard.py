"""The dashboard: the managers serve its page at /ui; `shoal dashboard`'s bridge lets only the holder of its
one-time link in, only from its own address and origin, and passes the page's requests (and the event stream)
on to the daemon over the CLI's own connection."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.api.client import Endpoint
from shoal.api.server import make_app as make_daemon_app
from shoal.cli.common import CliContext
from shoal.cli.main import run
from shoal.ui import assets
from shoal.ui.bridge import BridgeAuth, loopback_socket, make_app, passed_on, serve
from tests.unit.test_events import EventsDaemon, no_engine, wait_until  # noqa: F401 (a fixture)

PORT = 48123
HOST = f"127.0.0.1:{PORT}"
ORIGIN = f"http://{HOST}"
DEADLINE = 5.0


# ---- the decisions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "allowed"), [
    (HOST, True), (f"localhost:{PORT}", True), (f"LocalHost:{PORT}", True), (f"[::1]:{PORT}", True),
    ("127.0.0.1", False),  # no port: not what a browser at the link sends
    (f"127.0.0.1:{PORT + 1}", False),
    (f"evil.example:{PORT}", False),  # a rebound name: the page is another site's
    (f"127.0.0.1.evil.example:{PORT}", False),
    ("", False), (None, False),
])
def test_only_the_bridges_own_address_is_answered(host: str | None, allowed: bool) -> None:
    assert BridgeAuth(PORT).host_allowed(host) is allowed


def test_a_write_must_come_from_the_bridges_own_origin() -> None:
    auth = BridgeAuth(PORT)
    assert auth.origin_allowed(ORIGIN, HOST)
    assert auth.origin_allowed(f"http://localhost:{PORT}", f"localhost:{PORT}")
    for origin in (None, "null", "http://evil.example", f"https://{HOST}", f"http://localhost:{PORT}"):
        assert not auth.origin_allowed(origin, HOST)


def test_the_links_token_buys_the_session_once() -> None:
    auth = BridgeAuth(PORT)
    assert auth.url == f"http://127.0.0.1:{PORT}/ui/#token={auth.token}"  # in the fragment: never sent
    assert auth.exchange("guess") is None and not auth.token_spent
    assert auth.exchange(None) is None
    assert auth.exchange(auth.token) == auth.session
    assert auth.exchange(auth.token) is None  # spent
    assert auth.authorized(f"Bearer {auth.session}") and auth.authorized(f"bearer {auth.session}")
    for header in (None, "", auth.session, f"Basic {auth.session}", f"Bearer {auth.token}", "Bearer "):
        assert not auth.authorized(header)
    assert len({auth.token, auth.session, BridgeAuth(PORT).token}) == 3


@pytest.mark.parametrize(("method", "path", "passes"), [
    ("GET", "/ui/", True), ("GET", "/ui/dashboard.js", True), ("GET", "/ui", True),
    ("GET", "/nodes", True), ("GET", "/nodes/abc", True), ("GET", "/services", True),
    ("GET", "/services/web", True), ("GET", "/tasks", True), ("GET", "/events", True), ("GET", "/_ping", True),
    ("POST", "/services/web/update", True), ("POST", "/nodes/n1/update", True),
    # nothing the page does not use
    ("GET", "/secrets", False), ("GET", "/swarm/unlockkey", False), ("GET", "/swarm", False),
    ("DELETE", "/services/web", False), ("POST", "/services/create", False), ("POST", "/swarm/leave", False),
    ("GET", "/containers/json", False), ("GET", "/services/web/logs", False),
    ("POST", "/services/../swarm/update", False), ("GET", "/nodes/..", False), ("GET", "/ui/../swarm", False),
])
def test_only_the_routes_the_page_uses_are_passed_on(method: str, path: str, passes: bool) -> None:
    assert passed_on(method, path) is passes


# ---- the daemon serves the page ----------------------------------------------------------------------------

async def test_managers_serve_the_page_at_ui(no_engine: None) -> None:  # noqa: F811
    app = make_daemon_app(EventsDaemon(None), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/ui", allow_redirects=False)
        assert response.status == 302 and response.headers["Location"] == "/ui/"
        page = await client.get("/ui/")
        assert page.status == 200 and page.content_type == "text/html"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        assert '<script src="dashboard.js"' in html and "http" not in html.split("<body>")[0]  # nothing fetched from elsewhere
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            asset = await client.get(f"/ui/{name}")
            assert asset.status == 200 and asset.content_type == kind
        script = await (await client.get("/ui/dashboard.js")).text()
        assert "setInterval" not in script  # live from the event stream, no polling loop
        missing = await client.get("/ui/config.json")
        assert missing.status == 404 and "no file 'config.json'" in (await missing.json())["message"]


def test_the_page_ships_with_the_package() -> None:
    # Read as the daemon reads them: from the installed package, not from the source tree.
    for name in assets.ASSETS:
        assert assets._read(name)


# ---- the bridge over HTTP ----------------------------------------------------------------------------------

@dataclass
class FakeDaemon:
    """A daemon on a unix socket: a few routes of the API, recording what reached it."""

    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    events: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    streams: list[web.Request] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ui", assets.serve)
        app.router.add_get("/ui/{name:[^/]*}", assets.serve)
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, await request.read()))
        if request.path == "/events":
            self.streams.append(request)
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            while True:
                await response.write(await self.events.get())
        if request.path == "/nodes":
            return web.json_response([{"ID": "n1"}])
        if request.path.endswith("/update"):
            return web.json_response({"Warnings": None})
        return web.json_response({"message": "no such thing"}, status=404)


@dataclass
class Bridge:
    """`shoal dashboard`'s bridge as the command runs it (`serve`), on a free loopback port."""

    client: aiohttp.ClientSession
    url: str
    daemon: FakeDaemon

    @property
    def host(self) -> str:
        return str(yarl.URL(self.url).raw_authority)

    @property
    def origin(self) -> str:
        return f"http://{self.host}"

    @property
    def token(self) -> str:
        return self.url.split("#token=", 1)[1]

    async def session(self) -> str:
        response = await self.client.post("/dashboard/session", json={"token": self.token},
                                          headers={"Origin": self.origin})
        assert response.status == 200
        return str((await response.json())["session"])


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    daemon = FakeDaemon()
    runner = web.AppRunner(daemon.app(), shutdown_timeout=0.5)
    await runner.setup()
    socket_path = tmp_path / "shoal.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    announced: asyncio.Queue[str] = asyncio.Queue()
    sock = loopback_socket(0)
    serving = asyncio.create_task(serve(Endpoint.of(f"unix://{socket_path}", None), f"unix://{socket_path}", sock,
                                        announced.put_nowait))
    try:
        url = await asyncio.wait_for(announced.get(), DEADLINE)
        assert url.startswith(f"http://127.0.0.1:{sock.getsockname()[1]}/ui/#token=")
        async with aiohttp.ClientSession(base_url=url.split("/ui/")[0]) as client:
            yield Bridge(client, url, daemon)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        sock.close()
        await runner.cleanup()


async def test_the_page_loads_without_a_session_the_api_needs_one(bridge: Bridge) -> None:
    page = await bridge.client.get("/ui/")
    assert page.status == 200 and "Content-Security-Policy" in page.headers
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {bridge.token}"}):
        response = await bridge.client.get("/nodes", headers=headers)
        assert response.status == 401
        assert "open the link `shoal dashboard` printed" in (await response.json())["message"]
    assert [seen for seen in bridge.daemon.seen if not seen[1].startswith("/ui")] == []


async def test_the_token_is_exchanged_once_for_a_session_that_reads_the_api(bridge: Bridge) -> None:
    wrong = await bridge.client.post("/dashboard/session", json={"token": "guess"},
                                     headers={"Origin": bridge.origin})
    assert wrong.status == 403
    session = await bridge.session()
    again = await bridge.client.post("/dashboard/session", json={"token": bridge.token},
                                     headers={"Origin": bridge.origin})
    assert again.status == 403 and "already used" in (await again.json())["message"]
    response = await bridge.client.get("/nodes", headers={"Authorization": f"Bearer {session}"})
    assert response.status == 200 and await response.json() == [{"ID": "n1"}]
    assert response.headers["Cache-Control"] == "no-store"


async def test_another_host_is_refused_even_with_the_session(bridge: Bridge) -> None:
    session = await bridge.session()
    for host in (f"evil.example:{bridge.host.split(':')[1]}", "127.0.0.1:1"):
        response = await bridge.client.get("/nodes", headers={"Host": host, "Authorization": f"Bearer {session}"})
        assert response.status == 403 and "answers only at" in (await response.json())["message"]
        page = await bridge.client.get("/ui/", headers={"Host": host})
        assert page.status == 403
    token = await bridge.client.post("/dashboard/session", json={"token": "x"},
                                     headers={"Host": "evil.example", "Origin": "http://evil.example"})
    assert token.status == 403
    assert not any(path.startswith("/nodes") for _, path, _ in bridge.daemon.seen)


async def test_writes_from_another_origin_are_refused_and_the_own_pages_are_passed_on(bridge: Bridge) -> None:
    session = await bridge.session()
    spec = {"Name": "web", "Mode": {"Replicated": {"Replicas": 5}}}
    for origin in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        response = await bridge.client.post("/services/web/update", params={"version": "7"}, json=spec,
                                            headers={"Authorization": f"Bearer {session}", **origin})
        assert response.status == 403 and "from its own page" in (await response.json())["message"]
    assert not any(method == "POST" for method, _, _ in bridge.daemon.seen)

    response = await bridge.client.post("/services/web/update", params={"version": "7"}, json=spec,
                                        headers={"Authorization": f"Bearer {session}",
                                                 "Origin": bridge.origin})
    assert response.status == 200
    method, path, body = bridge.daemon.seen[-1]
    assert (method, path, json.loads(body)) == ("POST", "/services/web/update?version=7", spec)


async def test_routes_the_page_does_not_use_are_not_passed_on(bridge: Bridge) -> None:
    session = await bridge.session()
    auth = {"Authorization": f"Bearer {session}", "Origin": bridge.origin}
    for method, path in (("GET", "/secrets"), ("DELETE", "/services/web"), ("POST", "/swarm/leave"),
                         ("GET", "/swarm/unlockkey")):
        response = await bridge.client.request(method, path, headers=auth)
        assert response.status == 404 and "does not pass on" in (await response.json())["message"]
    assert bridge.daemon.seen == []


async def test_the_event_stream_is_passed_on_as_it_comes(bridge: Bridge) -> None:
    session = await bridge.session()
    filters = json.dumps({"type": ["service", "task"]})
    response = await bridge.client.get("/events", params={"filters": filters},
                                       headers={"Authorization": f"Bearer {session}"})
    assert response.status == 200 and response.content_type == "application/json"
    for index in range(2):
        line = json.dumps({"Type": "task", "Action": "create", "Actor": {"ID": f"t{index}"}}).encode() + b"\n"
        await bridge.daemon.events.put(line)
        assert await asyncio.wait_for(response.content.readline(), DEADLINE) == line  # each as it happens
    method, path, _ = bridge.daemon.seen[-1]
    assert (method, yarl.URL(path).path, yarl.URL(path).query["filters"]) == ("GET", "/events", filters)
    assert all(r.transport is not None and not r.transport.is_closing() for r in bridge.daemon.streams)
    response.close()  # the tab closes: the bridge lets go of the daemon's stream
    await wait_until(lambda: all(r.transport is None or r.transport.is_closing() for r in bridge.daemon.streams))


async def test_a_daemon_that_does_not_answer_is_one_message(tmp_path: Path) -> None:
    auth = BridgeAuth(PORT)
    async with Endpoint.of(f"unix://{tmp_path}/absent.sock", None).async_client() as upstream:
        app = make_app(auth, upstream, f"unix://{tmp_path}/absent.sock")
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/nodes", headers={"Host": HOST, "Authorization": f"Bearer {auth.session}"})
            assert response.status == 502
            assert "Cannot connect to the shoal daemon at unix://" in (await response.json())["message"]


# ---- the command -------------------------------------------------------------------------------------------

def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return run(list(argv), CliContext(out=out, err=err)), out.getvalue(), err.getvalue()


def test_shoal_dashboard_says_in_one_line_what_is_wrong(tmp_path: Path) -> None:
    code, out, err = cli("-H", f"unix://{tmp_path}/absent.sock", "dashboard", "--no-browser")
    assert code == 1 and out == "" and err.startswith("Cannot connect to the shoal daemon") and err.count("\n") == 1
    code, _, err = cli("dashboard", "--port", "http")
    assert code == 2 and "invalid port 'http'" in err


async def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    runner = web.AppRunner(FakeDaemon().app())
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "shoal.sock")).start()
    taken = loopback_socket(0)
    try:
        port = taken.getsockname()[1]
        code, out, err = await asyncio.to_thread(cli, "-H", f"unix://{tmp_path}/shoal.sock", "dashboard",
                                                 "--no-browser", "--port", str(port))
        assert (code, out) == (1, "") and err == f"cannot listen on 127.0.0.1:{port}: Address already in use\n"
    finally:
        taken.close()
        await runner.cleanup()
