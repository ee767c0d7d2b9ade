"""Cluster events: which change is which event (tables, no I/O), Docker's filters, the journal's buffer and
per-client queues, the cache feeding it, `GET /events` over HTTP and `shoal events`' output."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import proxy as proxy_module
from shoal.api.client import Client
from shoal.api.server import make_app
from shoal.cli.common import CliContext
from shoal.cli.events import event_line, time_param
from shoal.cli.main import run
from shoal.clock import FakeClock
from shoal.errors import InvalidArgument, NotAManager
from shoal.manager.events import (
    ClusterEvent,
    EventJournal,
    buffered_events,
    derive_event,
    event_matches,
    parse_event_filters,
    reload_events,
)
from shoal.manager.store.base import Batch
from shoal.timefmt import SECOND, format_event_time, parse_timestamp_ns
from shoal.types import CLUSTERS, CONFIGS, NETWORKS, NODES, SECRETS, SERVICES, TASKS, Doc
from tests.unit.manager_fixtures import make_node, make_service, make_task, running_harness

T = 1_800_000_000 * SECOND


def versioned(doc: Doc, index: int) -> Doc:
    return {**copy.deepcopy(doc), "Version": {"Index": index}}


def changed(doc: Doc, **paths: Any) -> Doc:
    """A copy of `doc` with dotted paths set (`Spec.Availability="drain"`), as a later write of it."""
    out = copy.deepcopy(doc)
    for path, value in paths.items():
        *parents, last = path.split("__")
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    out["Version"] = {"Index": int((doc.get("Version") or {}).get("Index") or 0) + 1}
    return out


WEB = versioned(make_service("s1", "web", replicas=1), 5)
NODE = versioned(make_node("n1"), 3)


# ---- deciding ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "before", "after", "expected"), [
    # created, removed: the name only
    (SERVICES, None, WEB, ("service", "create", "s1", {"name": "web"})),
    (SERVICES, WEB, None, ("service", "remove", "s1", {"name": "web"})),
    # `service scale web=3`
    (SERVICES, WEB, changed(WEB, Spec__Mode__Replicated__Replicas=3),
     ("service", "update", "s1", {"name": "web", "replicas.old": "1", "replicas.new": "3"})),
    # `service update --image`
    (SERVICES, WEB, changed(WEB, Spec__TaskTemplate__ContainerSpec__Image="busybox:2"),
     ("service", "update", "s1", {"name": "web", "image.old": "busybox", "image.new": "busybox:2"})),
    # a rolling update starts: Docker names no old state
    (SERVICES, WEB, changed(WEB, UpdateStatus={"State": "updating"}),
     ("service", "update", "s1", {"name": "web", "updatestate.new": "updating"})),
    (SERVICES, changed(WEB, UpdateStatus={"State": "updating"}),
     changed(WEB, UpdateStatus={"State": "rollback_started"}),
     ("service", "update", "s1", {"name": "web", "updatestate.old": "updating",
                                  "updatestate.new": "rollback_started"})),
    # a label: an update with nothing more to say
    (SERVICES, WEB, changed(WEB, Spec__Labels={"a": "b"}), ("service", "update", "s1", {"name": "web"})),
    # `node update --availability drain worker1`, then the node goes down
    (NODES, NODE, changed(NODE, Spec__Availability="drain"),
     ("node", "update", "n1", {"name": "host-n1", "availability.old": "active", "availability.new": "drain"})),
    (NODES, NODE, changed(NODE, Status__State="down"),
     ("node", "update", "n1", {"name": "host-n1", "state.old": "ready", "state.new": "down"})),
    (NODES, NODE, changed(NODE, Spec__Role="manager"),
     ("node", "update", "n1", {"name": "host-n1", "role.old": "worker", "role.new": "manager"})),
    # a node's Spec.Name wins over its hostname
    (NODES, None, changed(NODE, Spec__Name="edge"), ("node", "create", "n1", {"name": "edge"})),
    (SECRETS, None, {"ID": "x1", "Spec": {"Name": "db_password"}}, ("secret", "create", "x1", {"name": "db_password"})),
    (CONFIGS, {"ID": "c1", "Spec": {"Name": "app.conf"}}, None, ("config", "remove", "c1", {"name": "app.conf"})),
    (NETWORKS, None, {"ID": "w1", "Spec": {"Name": "back"}}, ("network", "create", "w1", {"name": "back"})),
])
def test_each_change_is_the_event_docker_logs(kind: str, before: Doc | None, after: Doc | None,
                                              expected: tuple[str, str, str, dict[str, str]]) -> None:
    event = derive_event(kind, before, after, T)
    assert event is not None
    assert (event.type, event.action, event.actor_id, dict(event.attributes)) == expected
    assert event.scope == "swarm" and event.time_nano == T


@pytest.mark.parametrize(("kind", "before", "after"), [
    (TASKS, None, make_task("t1", "s1")),  # tasks make no events (Docker's swarm events have none)
    (TASKS, make_task("t1", "s1"), None),
    (CLUSTERS, None, {"ID": "c", "Spec": {"Name": "default"}}),
    # a write of shoal's own bookkeeping only: nothing a client reads changed
    (NODES, NODE, changed(NODE, ShoalDownSince=12.5)),
    (SERVICES, WEB, changed(WEB, ShoalSpecDigest="abc")),
    (SERVICES, None, None),
])
def test_changes_docker_would_not_show_make_no_event(kind: str, before: Doc | None, after: Doc | None) -> None:
    assert derive_event(kind, before, after, T) is None


def test_replicas_are_compared_only_between_replicated_modes() -> None:
    job = versioned({"ID": "j", "Spec": {"Name": "batch", "Mode": {"ReplicatedJob": {"TotalCompletions": 2}}}}, 1)
    event = derive_event(SERVICES, job, changed(job, Spec__Mode__ReplicatedJob__TotalCompletions=5), T)
    assert event is not None and dict(event.attributes) == {"name": "batch"}


def test_the_wire_shape_is_dockers_message() -> None:
    event = derive_event(SERVICES, WEB, changed(WEB, Spec__Mode__Replicated__Replicas=3), T + 123)
    assert event is not None
    assert json.loads(event.line) == {
        "Type": "service", "Action": "update",
        "Actor": {"ID": "s1", "Attributes": {"name": "web", "replicas.new": "3", "replicas.old": "1"}},
        "scope": "swarm", "time": T // SECOND, "timeNano": T + 123}
    assert event.line.endswith(b"\n") and event.line.count(b"\n") == 1
    # Attributes in Go's order (sorted), as Docker's encoder writes a map.
    assert list(json.loads(event.line)["Actor"]["Attributes"]) == ["name", "replicas.new", "replicas.old"]


def test_a_reload_reports_what_changed_while_the_watch_was_down() -> None:
    gone = versioned({"ID": "x1", "Spec": {"Name": "old_secret"}}, 2)
    scaled = changed(WEB, Spec__Mode__Replicated__Replicas=2)
    scaled["Version"] = {"Index": 40}
    newcomer = versioned(make_service("s2", "api"), 30)
    previous = {SERVICES: {"s1": WEB}, NODES: {"n1": NODE}, SECRETS: {"x1": gone},
                TASKS: {"t1": make_task("t1", "s1")}}
    current = {SERVICES: {"s1": scaled, "s2": newcomer}, NODES: {"n1": NODE}, SECRETS: {}, TASKS: {}}
    events = reload_events(previous, current, T)
    assert [(e.type, e.action, e.actor_id) for e in events] == [
        ("service", "create", "s2"),  # written at 30
        ("service", "update", "s1"),  # written at 40
        ("secret", "remove", "x1"),  # removes come last: when they happened is not known
    ]
    assert events[1].attributes["replicas.new"] == "2"


# ---- filters -----------------------------------------------------------------------------------------------

SERVICE_EVENT = ClusterEvent("service", "update", "s1abc", {"name": "web", "replicas.new": "3"}, T)
NODE_EVENT = ClusterEvent("node", "update", "n1xyz", {"name": "worker1"}, T)


@pytest.mark.parametrize(("filters", "service_passes", "node_passes"), [
    ({}, True, True),
    ({"type": ["service"]}, True, False),
    ({"type": ["service", "node"]}, True, True),
    ({"event": ["update"]}, True, True),
    ({"event": ["create"]}, False, False),
    ({"scope": ["swarm"]}, True, True),
    ({"scope": ["local"]}, False, False),
    # object filters match the ID or the name by prefix, and apply to every event, as moby's do
    ({"service": ["we"]}, True, False),
    ({"service": ["s1a"]}, True, False),
    ({"service": ["api"]}, False, False),
    ({"node": ["worker"]}, False, True),
    ({"container": ["x"]}, False, False),
    ({"label": ["replicas.new=3"]}, True, False),
    ({"label": ["name"]}, True, True),
    ({"image": ["busybox"]}, False, False),
    ({"type": ["service"], "event": ["update"], "service": ["web"]}, True, False),
])
def test_filters_match_as_mobys(filters: dict[str, list[str]], service_passes: bool, node_passes: bool) -> None:
    assert event_matches(filters, SERVICE_EVENT) is service_passes
    assert event_matches(filters, NODE_EVENT) is node_passes


def test_filters_parse_both_encodings_and_refuse_unknown_keys() -> None:
    assert parse_event_filters('{"type":{"service":true}}') == {"type": ["service"]}
    assert parse_event_filters('{"type":["service","node"]}') == {"type": ["service", "node"]}
    with pytest.raises(InvalidArgument, match="invalid filter 'typ'"):
        parse_event_filters('{"typ":["service"]}')
    with pytest.raises(InvalidArgument):
        parse_event_filters("{not json")


def test_kept_events_are_replayed_from_since_to_until_only() -> None:
    kept = [ClusterEvent("service", "create", f"s{i}", {"name": f"svc{i}"}, T + i * SECOND) for i in range(5)]
    ids = lambda events: [e.actor_id for e in events]  # noqa: E731
    assert buffered_events(kept, None, None, {}) == []  # as Docker: no replay unless asked
    assert ids(buffered_events(kept, T + 2 * SECOND, None, {})) == ["s2", "s3", "s4"]
    assert ids(buffered_events(kept, T + SECOND, T + 3 * SECOND, {})) == ["s1", "s2", "s3"]
    assert ids(buffered_events(kept, None, T + SECOND, {})) == ["s0", "s1"]
    assert ids(buffered_events(kept, T, None, {"service": ["svc4"]})) == ["s4"]


# ---- the journal -------------------------------------------------------------------------------------------

async def test_the_journal_stamps_keeps_and_fans_out() -> None:
    clock = FakeClock()
    journal = EventJournal(clock, keep=3)
    for index in range(5):
        journal.publish_change(SERVICES, None, versioned(make_service(f"s{index}", f"svc{index}"), index + 1))
    times = [event.time_nano for event in journal.kept]
    assert len(times) == 3 and times == sorted(times) and len(set(times)) == 3  # strictly increasing
    assert [e.actor_id for e in journal.kept] == ["s2", "s3", "s4"]  # the oldest go first

    buffered, subscription = journal.subscribe({"type": ["service"]}, since=0, until=None)
    assert [e.actor_id for e in buffered] == ["s2", "s3", "s4"]
    journal.publish_change(NODES, None, NODE)  # filtered out
    journal.publish_change(SERVICES, WEB, None)
    lines = await subscription.next_lines(1.0)
    assert [json.loads(line)["Actor"]["ID"] for line in lines] == ["s1"]
    assert await subscription.next_lines(0.01) == []
    journal.unsubscribe(subscription)
    journal.publish_change(SERVICES, None, WEB)
    assert subscription.pending == type(subscription.pending)()


async def test_a_client_that_falls_behind_is_dropped_and_the_rest_go_on() -> None:
    journal = EventJournal(FakeClock(), client_queue=3)
    _, slow = journal.subscribe({}, None, None)
    _, fast = journal.subscribe({}, None, None)
    for index in range(3):
        journal.publish_change(SECRETS, None, {"ID": f"x{index}", "Spec": {"Name": f"s{index}"}})
    assert len(await fast.next_lines(0.1)) == 3  # the fast client keeps up
    journal.publish_change(SECRETS, None, {"ID": "x3", "Spec": {"Name": "s3"}})
    assert slow.dropped and not slow.pending and slow not in journal.subscriptions
    assert not fast.dropped and len(fast.pending) == 1
    assert journal.stats() == {"Subscribers": 1, "TaskSubscribers": 0, "Kept": 4, "DroppedClients": 1}


async def test_the_cache_feeds_the_journal_and_a_reload_fills_the_gap() -> None:
    async with running_harness() as h:
        journal = EventJournal(h.clock)
        h.cache.subscribe(journal.on_change, on_reload=journal.reload)
        await h.add_nodes(make_node("n1"))
        await h.add_service(make_service("s1", "web", replicas=1))
        await h.add_tasks(make_task("t1", "s1"))
        service = await h.store.get(SERVICES, "s1")
        assert service is not None
        service["Spec"]["Mode"]["Replicated"]["Replicas"] = 4
        await h.commit(Batch().update(SERVICES, service))
        await h.set_node_state("n1", "down")
        await h.remove_service("s1")
        assert [(e.type, e.action, e.actor_id) for e in journal.kept] == [
            ("node", "create", "n1"), ("service", "create", "s1"), ("service", "update", "s1"),
            ("node", "update", "n1"), ("service", "remove", "s1")]
        assert journal.kept[2].attributes["replicas.new"] == "4"
        assert journal.kept[3].attributes["state.new"] == "down"

        # A later snapshot (the watch failed meanwhile): what changed in between is reported once.
        await h.store.commit(Batch().create(SECRETS, {"ID": "x1", "Spec": {"Name": "db"}}))
        h.cache.load(await h.store.snapshot())
        assert [(e.type, e.action) for e in list(journal.kept)[5:]] == [("secret", "create")]


async def test_the_first_load_is_no_event() -> None:
    async with running_harness() as h:
        await h.add_nodes(make_node("n1"))
        journal = EventJournal(h.clock)
        fresh = type(h.cache)()
        fresh.subscribe(journal.on_change, on_reload=journal.reload)
        fresh.load(await h.store.snapshot())
        assert not journal.kept


# ---- times -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("1800000000", T),
    ("1800000000.5", T + SECOND // 2),
    ("1800000000.123456789123", T + 123456789),  # more than nine digits: cut, as Docker
    ("2027-01-15T08:00:00Z", 1800000000 * SECOND),
    ("2027-01-15T08:00:00.25Z", 1800000000 * SECOND + SECOND // 4),
    ("2027-01-15T10:00:00+02:00", 1800000000 * SECOND),
    ("2027-01-15Z", int(datetime.datetime(2027, 1, 15, tzinfo=datetime.UTC).timestamp()) * SECOND),
])
def test_since_and_until_read_as_docker(text: str, expected: int) -> None:
    assert parse_timestamp_ns(text) == expected


def test_durations_count_back_from_now_on_the_client_only() -> None:
    assert parse_timestamp_ns("10m", now=1800000000.0) == T - 600 * SECOND
    with pytest.raises(InvalidArgument):
        parse_timestamp_ns("10m")
    with pytest.raises(InvalidArgument):
        parse_timestamp_ns("yesterday")
    with pytest.raises(InvalidArgument):
        parse_timestamp_ns("2027-02-30T00:00:00Z")
    assert time_param("--since", "1800000000.5", 0.0) == "1800000000.500000000"


def test_the_cli_prints_dockers_line() -> None:
    event = json.loads(ClusterEvent("service", "update", "s1", {"replicas.old": "1", "name": "web",
                                                                "replicas.new": "3"}, T + 5).line)
    assert event_line(event, datetime.UTC) == (
        "2027-01-15T08:00:00.000000005Z service update s1 (name=web, replicas.new=3, replicas.old=1)")
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert format_event_time(T, plus_two) == "2027-01-15T10:00:00.000000000+02:00"
    assert event_line({"Type": "node", "Action": "create", "Actor": {"ID": "n1"}, "time": 1800000000},
                      datetime.UTC) == "2027-01-15T08:00:00.000000000Z node create n1"


def test_shoal_events_sends_dockers_query_and_prints_each_event() -> None:
    lines = [ClusterEvent("service", "create", "s1", {"name": "web"}, T).line,
             ClusterEvent("node", "update", "n1", {"name": "w1", "availability.new": "drain"}, T + 1).line]
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"".join(lines), headers={"Content-Type": "application/json"})

    def cli(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        ctx = CliContext(out=out, err=err, now=lambda: 1800000000.0)
        ctx.set_client(Client("http://shoal", transport=httpx.MockTransport(handle)))
        return run(list(argv), ctx), out.getvalue(), err.getvalue()

    code, out, err = cli("events", "--since", "10m", "--until", "1800000000", "-f", "type=service",
                         "--filter", "event=create")
    assert (code, err) == (0, "")
    assert dict(seen[0].url.params) == {"since": "1799999400.000000000", "until": "1800000000.000000000",
                                        "filters": '{"type":{"service":true},"event":{"create":true}}'}
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
        "service create s1 (name=web)", "node update n1 (availability.new=drain, name=w1)"]
    code, out, _ = cli("events", "--format", "json")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [json.loads(x) for x in lines]
    code, _, err = cli("events", "--since", "last tuesday")
    assert code == 1 and err.startswith("invalid value for --since: invalid timestamp") and len(seen) == 2
    code, out, err = cli("events", "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Scope}}")
    assert (code, err) == (0, "") and out.splitlines() == ["service create web swarm", "node update w1 swarm"]
    code, _, err = cli("events", "--format", "{{.Type")
    assert code == 1 and err.startswith("template parsing error:")


# ---- GET /events over HTTP ---------------------------------------------------------------------------------

class EventsDaemon:
    """Just enough of a Daemon for `/events`: a manager's journal, or none."""

    hostname = "node1"
    state_dir = Path("/nonexistent")
    record = None

    def __init__(self, journal: EventJournal | None, executor: str = "process") -> None:
        self.journal = journal
        self.control = object() if journal is not None else None
        self.clock = journal.clock if journal is not None else FakeClock()
        self.config = type("Config", (), {"executor": executor})()

    def event_journal(self) -> EventJournal:
        if self.journal is None:
            raise NotAManager(worker=True)
        return self.journal


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(proxy_module.ENGINE_SOCKET_ENV, str(tmp_path / "absent.sock"))


@pytest.fixture
async def journal() -> EventJournal:
    # The real clock: the handler compares `until` with now.
    from shoal.clock import SystemClock

    return EventJournal(SystemClock())


@pytest.fixture
async def client(journal: EventJournal, no_engine: None) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = make_app(EventsDaemon(journal), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def secret(index: int) -> Doc:
    return {"ID": f"x{index}", "Spec": {"Name": f"secret{index}"}}


async def test_until_in_the_past_replays_the_kept_events_and_ends(
        client: TestClient[web.Request, web.Application], journal: EventJournal) -> None:
    journal.publish_change(SERVICES, None, WEB)
    journal.publish_change(NODES, None, NODE)
    journal.publish_change(SECRETS, None, secret(1))
    until = journal.kept[-1].time_nano
    response = await client.get("/v1.47/events", params={
        "since": "0", "until": f"{until // SECOND}.{until % SECOND:09d}",
        "filters": json.dumps({"type": {"service": True, "secret": True}})})
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    body = await asyncio.wait_for(response.text(), 5)  # it ends by itself
    assert [(m["Type"], m["Action"], m["Actor"]["ID"]) for m in map(json.loads, body.splitlines())] == [
        ("service", "create", "s1"), ("secret", "create", "x1")]
    assert not journal.subscriptions


async def test_a_live_stream_gets_events_in_order_as_they_happen(
        client: TestClient[web.Request, web.Application], journal: EventJournal) -> None:
    journal.publish_change(SECRETS, None, secret(0))  # before the stream, and no `since`: not replayed
    response = await client.get("/events", params={"filters": '{"type":["secret"]}'})
    assert response.status == 200
    await wait_until(lambda: journal.subscriptions)
    for index in range(1, 4):
        journal.publish_change(SECRETS, None, secret(index))
    journal.publish_change(NODES, None, NODE)
    journal.publish_change(SECRETS, secret(2), None)
    got = [json.loads(await asyncio.wait_for(response.content.readline(), 5)) for _ in range(4)]
    assert [(m["Action"], m["Actor"]["ID"]) for m in got] == [
        ("create", "x1"), ("create", "x2"), ("create", "x3"), ("remove", "x2")]
    response.close()
    await wait_until(lambda: not journal.subscriptions)  # the client left: its subscription goes


async def test_bad_queries_are_refused_with_one_line(client: TestClient[web.Request, web.Application]) -> None:
    for params, message in [({"since": "soon"}, "invalid value for 'since'"),
                            ({"since": "20", "until": "10"}, "cannot be after `until` time"),
                            ({"filters": '{"colour":["red"]}'}, "invalid filter 'colour'")]:
        response = await client.get("/events", params=params)
        assert response.status == 400
        assert message in (await response.json())["message"]


async def test_a_node_that_is_no_manager_says_so_without_an_engine(no_engine: None) -> None:
    app = make_app(EventsDaemon(None), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get("/events")
        assert response.status == 503
        assert "Worker nodes can't be used" in (await response.json())["message"]


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ---- a node with a Docker Engine: its own events join, and `docker info` shows its figures ----------------

class FakeEngine:
    """A Docker Engine stand-in on a unix socket: `/events` streams its lines (and ends when asked about the
    past), `/info` answers its figures, slowly if told to."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.info_delay = 0.0
        self.closing = asyncio.Event()  # set at the end: a slow answer stops waiting

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path_qs)
        if request.path == "/_ping":
            return web.Response(text="OK", headers={"Api-Version": "1.45"})
        if request.path.endswith("/events"):
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(json.dumps({"Type": "container", "Action": "start", "Actor": {"ID": "c1"},
                                             "scope": "local", "time": 1, "timeNano": SECOND}).encode() + b"\n")
            if "until" not in request.query:
                await asyncio.sleep(3600)
            return response
        if request.path == "/info":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.info_delay)
            return web.json_response({"ID": "ENGINE", "Name": "enginehost", "ServerVersion": "26.1.0",
                                      "Containers": 7, "ContainersRunning": 3, "Images": 12,
                                      "Driver": "overlay2", "OperatingSystem": "Debian GNU/Linux 12",
                                      "Swarm": {"LocalNodeState": "inactive"}, "Warnings": ["engine says hi"]})
        return web.json_response({"message": "no"}, status=404)


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    socket_path = tmp_path / "docker.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    monkeypatch.setenv(proxy_module.ENGINE_SOCKET_ENV, str(socket_path))
    yield fake
    fake.closing.set()
    await runner.cleanup()


class InfoDaemon(EventsDaemon):
    def swarm_info(self) -> Doc:
        return {"NodeID": "n1", "LocalNodeState": "active", "ControlAvailable": True, "Nodes": 3, "Managers": 1,
                "Warnings": ["swarm says hi"]}


async def test_a_docker_executor_manager_streams_its_engines_events_too(engine: FakeEngine,
                                                                       journal: EventJournal) -> None:
    journal.publish_change(SERVICES, None, WEB)
    until = journal.kept[-1].time_nano
    app = make_app(EventsDaemon(journal, executor="docker"), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        query = {"since": "0", "until": f"{until // SECOND}.{until % SECOND:09d}"}
        body = await asyncio.wait_for((await test_client.get("/v1.47/events", params=query)).text(), 5)
        assert sorted((m["scope"], m["Type"]) for m in map(json.loads, body.splitlines())) == [
            ("local", "container"), ("swarm", "service")]
        assert any(path.startswith("/v1.45/events?since=0&until=") for path in engine.seen)  # its own version

        engine.seen.clear()  # only swarm events wanted: the engine is not asked
        body = await asyncio.wait_for((await test_client.get(
            "/events", params={**query, "filters": '{"scope":["swarm"]}'})).text(), 5)
        assert [json.loads(line)["Type"] for line in body.splitlines()] == ["service"]
        assert not [path for path in engine.seen if "events" in path]


async def test_a_node_that_is_no_manager_shows_its_engines_events(engine: FakeEngine) -> None:
    app = make_app(EventsDaemon(None, executor="docker"), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        body = await asyncio.wait_for((await test_client.get("/events", params={"until": "1"})).text(), 5)
        assert [json.loads(line)["Type"] for line in body.splitlines()] == ["container"]


async def test_a_process_executor_worker_does_not_pass_on_its_hosts_engine_events(engine: FakeEngine) -> None:
    # The host's engine runs nothing of this node's (another swarm's containers, maybe): not this node's events.
    worker = EventsDaemon(None, executor="process")
    worker.record = object()  # type: ignore[assignment]  # a node of a swarm
    app = make_app(worker, remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get("/events", params={"until": "1"})
        assert response.status == 503 and "Worker nodes can't be used" in (await response.json())["message"]
        assert not [path for path in engine.seen if "events" in path]


async def test_info_shows_the_engines_figures_with_shoals_identity_and_swarm(engine: FakeEngine) -> None:
    app = make_app(InfoDaemon(EventJournal(FakeClock()), executor="docker"), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        info = await (await test_client.get("/v1.47/info")).json()
    assert (info["Containers"], info["ContainersRunning"], info["Images"], info["Driver"]) == (7, 3, 12, "overlay2")
    assert info["OperatingSystem"] == "Debian GNU/Linux 12"
    assert info["Name"] == "node1" and info["ServerVersion"] != "26.1.0" and info["ID"] == ""
    assert info["Swarm"]["Nodes"] == 3 and info["Swarm"]["LocalNodeState"] == "active"
    assert info["Warnings"] == ["engine says hi", "swarm says hi"]


async def test_info_does_not_wait_long_for_a_slow_engine(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.api import info as info_module

    monkeypatch.setattr(info_module, "ENGINE_INFO_TIMEOUT", 0.2)
    engine.info_delay = 30
    app = make_app(InfoDaemon(EventJournal(FakeClock()), executor="docker"), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        info = await asyncio.wait_for((await test_client.get("/info")).json(), 10)
    assert info["Containers"] == 0 and info["Swarm"]["Managers"] == 1
    assert any("did not answer" in warning for warning in info["Warnings"])


async def test_info_of_a_process_executor_node_never_asks_an_engine(engine: FakeEngine) -> None:
    app = make_app(InfoDaemon(EventJournal(FakeClock())), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        info = await (await test_client.get("/info")).json()
    assert info["Containers"] == 0 and info["OperatingSystem"] == "shoal" and not engine.seen
    assert info["Warnings"] == ["swarm says hi"]


def test_remote_managers_carry_their_node_ids_where_known() -> None:
    from shoal.daemon import remote_managers

    manager = {**make_node("m1"), "Spec": {"Role": "manager"}, "ManagerAddr": "10.0.0.1:2377"}
    promoted = {**make_node("m2"), "Spec": {"Role": "manager"}, "Status": {"Addr": "10.0.0.2"}}
    nodes = {"m1": manager, "m2": promoted, "w1": make_node("w1")}
    assert remote_managers(["10.0.0.1:2377", "10.0.0.2:2377", "10.0.0.9:2377"], nodes) == [
        {"NodeID": "m1", "Addr": "10.0.0.1:2377"}, {"NodeID": "m2", "Addr": "10.0.0.2:2377"},
        {"NodeID": "", "Addr": "10.0.0.9:2377"}]
    assert remote_managers(["10.0.0.1:2377"], {}) == [{"NodeID": "", "Addr": "10.0.0.1:2377"}]


async def test_a_client_that_stops_reading_is_cut_off_and_nothing_waits_on_it(
        monkeypatch: pytest.MonkeyPatch, no_engine: None) -> None:
    from shoal.api import events as events_api
    from shoal.clock import SystemClock

    monkeypatch.setattr(events_api, "WRITE_TIMEOUT", 0.5)
    journal = EventJournal(SystemClock(), client_queue=4)
    app = make_app(EventsDaemon(journal), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as test_client:
        reader, writer = await asyncio.open_connection(test_client.host, test_client.port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: shoal\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: journal.subscriptions)
        big = "x" * (1 << 20)  # a few of these fill the socket buffers of a client that reads nothing
        for index in range(64):
            journal.publish_change(SECRETS, None, {"ID": f"x{index}", "Spec": {"Name": big}})
            await asyncio.sleep(0)
        assert journal.dropped_clients == 1 and not journal.subscriptions
        # The server cut the connection: reading on finds its end (or a reset) rather than waiting forever.
        async def to_the_end() -> None:
            with contextlib.suppress(ConnectionResetError):
                while await reader.read(1 << 20):
                    pass
        await asyncio.wait_for(to_the_end(), 10)
        writer.close()
