"""Strange requests against the real API routes and control API (over the in-memory store): whatever is sent,
the answer is a 2xx or a 4xx with a message, within a deadline, and a refused request changes nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.api.server import MAX_JSON_BODY, make_app
from shoal.clock import FakeClock
from shoal.manager.cache import Cache
from shoal.manager.control import ControlAPI
from shoal.manager.controlapi.service import MAX_REPLICAS
from shoal.manager.controlapi.swarm import default_swarm_spec
from shoal.manager.store.base import Batch
from shoal.manager.store.memory import MemoryStore
from shoal.types import CLUSTERS, NODES, SERVICES, Doc
from tests.unit.manager_fixtures import make_node

DEADLINE = 10.0
# The suite runs the same examples every time (deterministic); SHOAL_FUZZ_EXAMPLES=5000 searches further.
FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                max_examples=int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "150")))
NODE_ID = "node000000000000000000001"

VALID_SPEC: Doc = {
    "Name": "web",
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "600"], "Env": ["A=1"]},
                     "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0},
                     "Resources": {"Limits": {"NanoCPUs": 1_000_000_000}}, "Placement": {"Constraints": []}},
    "Mode": {"Replicated": {"Replicas": 2}},
    "UpdateConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "MaxFailureRatio": 0},
    "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "Protocol": "tcp"}]},
    "Labels": {"tier": "front"},
}
# Where a client may put something strange: every field of the valid spec, as a path of keys.
FIELDS: list[tuple[str | int, ...]] = [
    ("Name",), ("Labels",), ("Labels", "tier"), ("Mode",), ("Mode", "Replicated"), ("Mode", "Replicated", "Replicas"),
    ("TaskTemplate",), ("TaskTemplate", "ContainerSpec"), ("TaskTemplate", "ContainerSpec", "Image"),
    ("TaskTemplate", "ContainerSpec", "Args"), ("TaskTemplate", "ContainerSpec", "Env"),
    ("TaskTemplate", "ContainerSpec", "Env", 0), ("TaskTemplate", "RestartPolicy", "Condition"),
    ("TaskTemplate", "RestartPolicy", "Delay"), ("TaskTemplate", "RestartPolicy", "MaxAttempts"),
    ("TaskTemplate", "Resources", "Limits", "NanoCPUs"), ("TaskTemplate", "Placement", "Constraints"),
    ("UpdateConfig", "Parallelism"), ("UpdateConfig", "Delay"), ("UpdateConfig", "MaxFailureRatio"),
    ("UpdateConfig", "FailureAction"), ("EndpointSpec", "Ports"), ("EndpointSpec", "Ports", 0, "TargetPort"),
    ("EndpointSpec", "Ports", 0, "PublishedPort"), ("EndpointSpec", "Ports", 0, "Protocol"),
]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64, 10**30, MAX_REPLICAS, MAX_REPLICAS + 1, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 0.5, 5.0]),
    st.sampled_from(["5", "", "constraint==", "node.role==manager", "a" * 70, "any", "tcp"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@dataclass
class FakeManager:
    """What ControlAPI reads of a Manager, over the in-memory store."""

    store: MemoryStore
    cache: Cache
    node_id: str = NODE_ID
    leader_id: str = NODE_ID
    dispatcher: None = None
    external_etcd: None = None

    async def data_key(self) -> bytes:
        return b"k" * 32


@dataclass
class FakeDaemon:
    control: ControlAPI
    record: Any = None
    manager: Any = None
    hostname: str = "node1"
    state_dir: Path = Path("/nonexistent")
    error: str = ""
    seen: list[str] = field(default_factory=list)

    def require_control(self) -> ControlAPI:
        return self.control


@dataclass
class Swarm:
    client: TestClient[web.Request, web.Application]
    store: MemoryStore
    service_id: str

    async def post(self, path: str, body: bytes, **params: str) -> tuple[int, Any]:
        response = await asyncio.wait_for(
            self.client.post(path, data=body, params=params, headers={"Content-Type": "application/json"}), DEADLINE)
        return response.status, await response.json(content_type=None)

    async def contents(self) -> dict[str, bytes]:
        snapshot = await self.store.snapshot()
        return {f"{kind}/{doc_id}": json.dumps(doc, sort_keys=True).encode()
                for kind, docs in snapshot.docs.items() for doc_id, doc in docs.items()}


@contextlib.asynccontextmanager
async def swarm() -> AsyncIterator[Swarm]:
    store = MemoryStore()
    cluster = {"ID": "cluster00000000000000000001", "Spec": default_swarm_spec(), "JoinTokens": {}}
    node = make_node(NODE_ID)
    await store.commit(Batch().create(CLUSTERS, cluster).create(NODES, node))
    cache = Cache()
    feeder = asyncio.create_task(cache.run(store))
    try:
        await asyncio.wait_for(cache.ready.wait(), DEADLINE)
        control = ControlAPI(FakeManager(store, cache), FakeClock())  # type: ignore[arg-type]
        service_id = await control.create_service(copy.deepcopy(VALID_SPEC))
        app = make_app(FakeDaemon(control), remote=False)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            yield Swarm(client, store, service_id)
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


def with_value(spec: Doc, path: tuple[str | int, ...], value: Any) -> Doc:
    changed = copy.deepcopy(spec)
    holder: Any = changed
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return changed


def check_answer(status: int, body: Any, before: dict[str, bytes], after: dict[str, bytes]) -> None:
    assert status < 500, body
    if status >= 400:
        assert isinstance(body, dict) and body.get("message"), body
        assert "\n" not in body["message"].strip()
        assert after == before, "a refused request changed the store"


async def _create_and_update(spec: Any) -> None:
    async with swarm() as s:
        raw = json.dumps(spec).encode()
        before = await s.contents()
        status, body = await s.post("/services/create", raw)
        check_answer(status, body, before, await s.contents())

        service = (await s.store.snapshot()).docs[SERVICES][s.service_id]
        if isinstance(spec, dict):
            spec = {**spec, "Name": "web"}  # an update keeps the name, else it is refused for that alone
        before = await s.contents()
        status, body = await s.post(f"/services/{s.service_id}/update", json.dumps(spec).encode(),
                                    version=str(service["Version"]["Index"]))
        check_answer(status, body, before, await s.contents())


@FUZZ
@given(path=st.sampled_from(FIELDS), value=json_values)
def test_a_strange_value_in_any_field_of_a_service_spec(path: tuple[str | int, ...], value: Any) -> None:
    asyncio.run(_create_and_update(with_value(VALID_SPEC, path, value)))


@FUZZ
@given(body=json_values)
def test_any_json_as_a_service_spec(body: Any) -> None:
    asyncio.run(_create_and_update(body))


@FUZZ
@given(route=st.sampled_from(["/swarm/update", f"/nodes/{NODE_ID}/update"]), body=json_values,
       version=st.sampled_from(["", "x", "-1", "0", "1", "99999999999999999999999"]))
def test_strange_swarm_and_node_updates(route: str, body: Any, version: str) -> None:
    async def run() -> None:
        async with swarm() as s:
            before = await s.contents()
            status, answer = await s.post(route, json.dumps(body).encode(), version=version)
            check_answer(status, answer, before, await s.contents())

    asyncio.run(run())


@FUZZ
@given(kind=st.sampled_from(["secrets", "configs"]), body=json_values | st.fixed_dictionaries(
    {"Name": json_scalars, "Data": json_scalars | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())}))
def test_strange_secret_and_config_bodies(kind: str, body: Any) -> None:
    async def run() -> None:
        async with swarm() as s:
            before = await s.contents()
            status, answer = await s.post(f"/{kind}/create", json.dumps(body).encode())
            check_answer(status, answer, before, await s.contents())

    asyncio.run(run())


async def test_bodies_that_once_took_a_manager_down() -> None:
    async with swarm() as s:
        service = (await s.store.snapshot()).docs[SERVICES][s.service_id]
        version = str(service["Version"]["Index"])
        for replicas, why in ((10**30, "whole number from 0"), (2**64, "whole number from 0"),
                              (2**63, "whole number from 0"), (1e308, "whole number"), ("5", "whole number")):
            before = await s.contents()
            status, body = await s.post("/services/create",
                                        json.dumps(with_value(VALID_SPEC, ("Mode", "Replicated", "Replicas"),
                                                              replicas) | {"Name": "big"}).encode())
            assert (status, why in body["message"], "Mode.Replicated.Replicas" in body["message"]) == (400, True, True)
            assert await s.contents() == before

        deep = b"[" * 50_000 + b"]" * 50_000
        status, body = await s.post("/services/create", deep)
        assert status == 400 and "nested too deeply" in body["message"]

        huge_number = b'{"Name": "n", "Mode": {"Replicated": {"Replicas": 1' + b"0" * 5000 + b"}}}"
        status, body = await s.post("/services/create", huge_number)
        assert status == 400

        big_env = with_value(VALID_SPEC, ("TaskTemplate", "ContainerSpec", "Env"), ["X=" + "x" * 400_000])
        status, body = await s.post("/services/create", json.dumps(big_env | {"Name": "big"}).encode())
        assert status == 413 and "service spec is" in body["message"]

        status, body = await s.post("/services/create", b'{"Name": "' + b"x" * (MAX_JSON_BODY + 1) + b'"}')
        assert status == 413 and "request body too large" in body["message"]

        for version_param in ({}, {"version": ""}, {"version": "abc"}, {"version": "-3"}):
            status, body = await s.post(f"/services/{s.service_id}/update", json.dumps(VALID_SPEC).encode(),
                                        **version_param)
            assert status == 400 and "invalid service version" in body["message"]
        status, _ = await s.post(f"/services/{s.service_id}/update", json.dumps(VALID_SPEC).encode(), version=version)
        assert status == 200
