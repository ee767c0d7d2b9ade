"""Docker Engine API compatibility at the HTTP seam: errors as the docker CLI reads them, version checks,
the local engine proxy (against a small fake engine on a unix socket), image digests, and the request
shapes docker-py sends."""

from __future__ import annotations

import json
import platform
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import proxy as proxy_module
from shoal.api.proxy import engine_path, is_swarm_path, repo_digest, repository_of
from shoal.api.server import make_app
from shoal.errors import InvalidArgument
from shoal.manager.controlapi.service import go_field_names, validate_service_spec
from shoal.spec import ImageReference, go_architecture


class FakeDaemon:
    """Just enough of a Daemon for the routes that do not need a swarm."""

    record = None
    control = None
    manager = None
    hostname = "node1"
    state_dir = Path("/nonexistent")
    error = ""

    def swarm_info(self) -> dict[str, Any]:
        return {"NodeID": "", "LocalNodeState": "inactive", "ControlAvailable": False}

    def require_control(self) -> Any:
        from shoal.errors import NotAManager

        raise NotAManager()


class FakeEngine:
    """A Docker Engine stand-in on a unix socket that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.images: dict[str, dict[str, Any]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, body))
        if request.path == "/_ping":
            return web.Response(text="OK", headers={"Api-Version": "1.41"})
        if request.path.startswith("/images/") and request.path.endswith("/json"):
            name = request.path[len("/images/"):-len("/json")]
            if name in self.images:
                return web.json_response(self.images[name])
            return web.json_response({"message": f"No such image: {name}"}, status=404)
        if request.path.endswith("/events"):
            response = web.StreamResponse()
            await response.prepare(request)
            for index in range(3):
                await response.write(json.dumps({"n": index}).encode() + b"\n")
            return response
        return web.json_response({"echo": body.decode()}, status=201)


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    socket_path = tmp_path / "docker.sock"
    site = web.UnixSite(runner, str(socket_path))
    await site.start()
    monkeypatch.setenv(proxy_module.ENGINE_SOCKET_ENV, str(socket_path))
    yield fake
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The local-socket app; request `engine` or `no_engine` before it, as the proxy reads the socket path."""
    app = make_app(FakeDaemon(), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(proxy_module.ENGINE_SOCKET_ENV, str(tmp_path / "absent.sock"))


# ---- protocol basics ----------------------------------------------------------------------------------

async def test_errors_are_exactly_application_json(client: TestClient[web.Request, web.Application]) -> None:
    # The docker CLI shows an error's message only when Content-Type is exactly "application/json".
    response = await client.get("/v1.47/services")
    assert response.status == 503
    assert response.headers["Content-Type"] == "application/json"
    assert (await response.json())["message"].startswith("This node is not a swarm manager.")


async def test_ping_and_version_negotiation(client: TestClient[web.Request, web.Application]) -> None:
    head = await client.head("/_ping")
    assert head.status == 200 and head.headers["Api-Version"] == "1.47" and head.headers["Swarm"] == "inactive"
    version = await (await client.get("/version")).json()  # docker-py's unversioned negotiation
    assert version["ApiVersion"] == "1.47" and version["MinAPIVersion"] == "1.24"
    assert version["Arch"] == go_architecture(platform.machine())  # "amd64", not "x86_64"
    assert (await client.get("/v1.41/version")).status == 200


async def test_api_versions_outside_the_supported_range_are_refused(
        client: TestClient[web.Request, web.Application]) -> None:
    too_new = await client.get("/v1.48/services")
    assert too_new.status == 400
    assert "client version 1.48 is too new. Maximum supported API version is 1.47" in (await too_new.json())["message"]
    too_old = await client.get("/v1.12/version")
    assert too_old.status == 400 and "too old" in (await too_old.json())["message"]


# ---- the engine proxy ---------------------------------------------------------------------------------

@pytest.mark.usefixtures("no_engine")
async def test_without_an_engine_other_routes_get_a_clear_501(
        client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/v1.47/containers/json?all=1")
    assert response.status == 501 and response.headers["Content-Type"] == "application/json"
    assert (await response.json()) == {
        "message": "GET /containers/json is not served by shoal: no Docker Engine on this node"}


async def test_swarm_routes_shoal_lacks_are_never_sent_to_the_engine(
        engine: FakeEngine, client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/v1.47/swarm/nothing-here")
    assert response.status == 501
    assert (await response.json())["message"] == "GET /swarm/nothing-here is not implemented by shoal"
    # Secrets are shoal's own: on a node that is no manager, refused here, never asked of the engine.
    secrets = await client.get("/v1.47/secrets")
    assert secrets.status == 503
    assert not [seen for seen in engine.seen if "secrets" in seen[1] or "swarm" in seen[1]]


async def test_requests_reach_the_engine_with_the_version_lowered_to_its_own(
        engine: FakeEngine, client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/v1.47/containers/create?name=x%20y", data=b'{"Image":"busybox"}',
                                 headers={"Content-Type": "application/json"})
    assert response.status == 201
    assert (await response.json()) == {"echo": '{"Image":"busybox"}'}
    assert ("POST", "/v1.41/containers/create?name=x%20y", b'{"Image":"busybox"}') in engine.seen


async def test_streamed_answers_are_passed_on(
        engine: FakeEngine, client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/v1.40/events")
    lines = (await response.read()).decode().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]
    assert ("GET", "/v1.40/events", b"") in engine.seen  # below the engine's maximum: unchanged


def test_engine_path_and_swarm_paths() -> None:
    assert engine_path("/v1.47/images/json", "1.41") == "/v1.41/images/json"
    assert engine_path("/v1.30/images/json", "1.41") == "/v1.30/images/json"
    assert engine_path("/images/json", "1.41") == "/images/json"
    assert is_swarm_path("/v1.47/configs/abc") and is_swarm_path("/swarm/unlock")
    assert not is_swarm_path("/v1.47/containers/json") and not is_swarm_path("/servicesx")


# ---- image digests (GET /distribution/{name}/json) ----------------------------------------------------

DIGEST = "sha256:" + "b" * 64


async def test_distribution_answers_with_the_local_registry_digest(
        engine: FakeEngine, client: TestClient[web.Request, web.Application]) -> None:
    engine.images["busybox:1.36"] = {"RepoDigests": ["other@sha256:" + "c" * 64, f"busybox@{DIGEST}"],
                                     "Architecture": "amd64", "Os": "linux"}
    response = await client.get("/v1.47/distribution/busybox:1.36/json")
    assert response.status == 200
    assert await response.json() == {
        "Descriptor": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": DIGEST,
                       "size": 0},
        "Platforms": [{"architecture": "amd64", "os": "linux"}],
    }


async def test_distribution_is_not_found_for_local_only_or_missing_images(
        engine: FakeEngine, client: TestClient[web.Request, web.Application]) -> None:
    engine.images["team/app:1"] = {"RepoDigests": [], "Architecture": "amd64", "Os": "linux"}
    imported = await client.get("/v1.47/distribution/team/app:1/json")
    assert imported.status == 404 and "no registry digest" in (await imported.json())["message"]
    missing = await client.get("/v1.47/distribution/nosuch:latest/json")
    assert missing.status == 404 and "No such image: nosuch:latest" in (await missing.json())["message"]


def test_repository_names_compare_as_docker_familiar_names() -> None:
    assert repository_of("docker.io/library/busybox:1.36") == "busybox"
    assert repository_of("registry.local:5000/team/app@" + DIGEST) == "registry.local:5000/team/app"
    assert repo_digest("busybox", [f"docker.io/library/busybox@{DIGEST}"]) == DIGEST
    assert repo_digest("team/app", [f"busybox@{DIGEST}"]) is None


# ---- request bodies as docker-py and the Go decoder treat them ----------------------------------------

def test_field_names_match_case_insensitively_like_go() -> None:
    # docker-py's Service.scale sends ServiceMode("replicated", 3) = {"replicated": {"Replicas": 3}}.
    spec = validate_service_spec({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                                  "Mode": {"replicated": {"Replicas": 3}}, "Labels": {"tier": "x"}})
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    converted = go_field_names({"labels": {"lowercase.key": "v"}, "taskTemplate": {"containerSpec": {"image": "a"}},
                                "Mode": {"global": {}}})
    assert converted == {"Labels": {"lowercase.key": "v"}, "TaskTemplate": {"ContainerSpec": {"Image": "a"}},
                         "Mode": {"Global": {}}}


@pytest.mark.parametrize("image", ["busybox", "busybox:1.36", "localhost:5000/team/app:v2",
                                   f"nginx:1.25@{DIGEST}", "shoaltest/busybox:1"])
def test_valid_image_references(image: str) -> None:
    assert str(ImageReference.parse(image)) == image


@pytest.mark.parametrize("image", ["BusyBox", "busy box", "busybox:", "-busybox", "busybox@sha256:xyz"])
def test_invalid_image_references_are_refused(image: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a valid repository/tag"):
        validate_service_spec({"TaskTemplate": {"ContainerSpec": {"Image": image}}})


async def test_unversioned_and_unknown_paths_without_engine_never_trace(
        no_engine: None, client: TestClient[web.Request, web.Application]) -> None:
    for method, path in (("DELETE", "/images/x"), ("PUT", "/containers/x/archive"), ("GET", "/plugins")):
        response = await client.request(method, path)
        assert response.status == 501
        body = await response.json()
        assert "Traceback" not in body["message"] and "not served by shoal" in body["message"]
