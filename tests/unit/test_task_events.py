"""Task events, shoal's extension of Docker's events for viewers such as the dashboard: which task change is
which event (no I/O), that only a client asking for them (`type=task`) gets any, that they are never kept,
and that the cache and `GET /events` carry them."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.api.events import wants_local_events
from shoal.api.server import make_app
from shoal.clock import FakeClock, SystemClock
from shoal.manager.events import (
    ClusterEvent,
    EventJournal,
    derive_task_event,
    event_matches,
    reload_task_events,
)
from shoal.manager.store.base import Batch, Event
from shoal.types import SERVICES, TASKS, Doc, TaskState
from tests.unit.manager_fixtures import make_service, make_task, running_harness
from tests.unit.test_events import EventsDaemon, no_engine, wait_until  # noqa: F401 (a fixture)

T = 1_800_000_000_000_000_000


def task(task_id: str = "t1", **changes: Any) -> Doc:
    """A task of service `web` in slot 2, as the orchestrator writes one; `Status__State="running"` etc."""
    doc = make_task(task_id, "s1", slot=2)
    doc["ServiceAnnotations"] = {"Name": "web"}
    doc["Version"] = {"Index": 1}
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return doc


def later(doc: Doc, **changes: Any) -> Doc:
    out = copy.deepcopy(doc)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    out["Version"] = {"Index": doc["Version"]["Index"] + 1}
    return out


PENDING = task()
ASSIGNED = later(PENDING, NodeID="n1", Status__State="assigned")
RUNNING = later(ASSIGNED, Status__State="running")
WHERE = {"name": "web.2", "service.id": "s1", "service.name": "web", "slot": "2", "image": "busybox"}


# ---- deciding ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "expected"), [
    (None, PENDING, ("create", {**WHERE, "node.id": "", "state": "pending", "desiredstate": "running"})),
    # the scheduler places it: node and state at once, each with its old value
    (PENDING, ASSIGNED, ("update", {**WHERE, "node.id": "n1", "node.id.old": "", "state": "assigned",
                                    "state.old": "pending", "desiredstate": "running"})),
    (ASSIGNED, RUNNING, ("update", {**WHERE, "node.id": "n1", "state": "running", "state.old": "assigned",
                                    "desiredstate": "running"})),
    # the orchestrator stops it (a scale down, its node went down)
    (RUNNING, later(RUNNING, DesiredState="shutdown"),
     ("update", {**WHERE, "node.id": "n1", "state": "running", "desiredstate": "shutdown",
                 "desiredstate.old": "running"})),
    # the scheduler says why it waits: the reason is shown, as it is now
    (PENDING, later(PENDING, Status__Err="no suitable node (2 nodes not ready)"),
     ("update", {**WHERE, "node.id": "", "state": "pending", "desiredstate": "running",
                 "err": "no suitable node (2 nodes not ready)"})),
    (RUNNING, None, ("remove", {**WHERE, "node.id": "n1", "state": "running", "desiredstate": "running"})),
])
def test_each_task_change_a_viewer_follows_is_one_event(before: Doc | None, after: Doc | None,
                                                        expected: tuple[str, dict[str, str]]) -> None:
    event = derive_task_event(before, after, T)
    assert event is not None
    assert (event.type, event.actor_id, event.scope, event.time_nano) == ("task", "t1", "swarm", T)
    assert (event.action, dict(event.attributes)) == expected


@pytest.mark.parametrize(("before", "after"), [
    # an agent's report that only moves the timestamp, a message, bookkeeping
    (RUNNING, later(RUNNING, Status__Timestamp="2027-01-15T08:00:05Z")),
    (RUNNING, later(RUNNING, Status__Message="started", ShoalRunningSince=12.0)),
    (None, None),
])
def test_task_writes_a_viewer_cannot_see_make_no_event(before: Doc | None, after: Doc | None) -> None:
    assert derive_task_event(before, after, T) is None


def test_a_global_task_is_named_by_its_node_as_docker_names_it() -> None:
    event = derive_task_event(None, task(Slot=0, NodeID="nodeabc"), T)
    assert event is not None and event.attributes["name"] == "web.nodeabc"


def test_a_reload_reports_the_task_changes_missed_meanwhile() -> None:
    gone = task("t9")
    events = reload_task_events({"t1": PENDING, "t9": gone, "t5": task("t5")},
                                {"t1": RUNNING, "t5": task("t5"), "t7": task("t7")}, T)
    assert [(e.action, e.actor_id) for e in events] == [("update", "t1"), ("create", "t7"), ("remove", "t9")]


TASK_EVENT = ClusterEvent("task", "update", "t1abc", {"name": "web.2", "service.id": "s1xyz", "node.id": "n1def",
                                                      "image": "busybox"}, T)


@pytest.mark.parametrize(("filters", "passes"), [
    ({"type": ["task"]}, True),
    ({"type": ["service", "task"]}, True),
    ({"type": ["service"]}, False),
    ({"type": ["task"], "service": ["web"]}, True),  # by name
    ({"type": ["task"], "service": ["s1x"]}, True),  # by the service's ID
    ({"type": ["task"], "service": ["api"]}, False),
    ({"type": ["task"], "node": ["n1d"]}, True),
    ({"type": ["task"], "node": ["n2"]}, False),
    ({"type": ["task"], "image": ["busybox"]}, True),
])
def test_task_events_filter_by_service_node_and_image(filters: dict[str, list[str]], passes: bool) -> None:
    assert event_matches(filters, TASK_EVENT) is passes


def test_asking_for_task_events_alone_leaves_out_an_engines_own() -> None:
    assert not wants_local_events({"type": ["task"]})
    assert not wants_local_events({"type": ["task", "service"]})
    assert wants_local_events({"type": ["task", "container"]})


# ---- the journal: only those who ask, never kept -----------------------------------------------------------

def change(after: Doc | None, before: Doc | None = None) -> Event:
    doc = after if after is not None else before
    assert doc is not None
    return Event("put" if after is not None else "delete", TASKS, doc["ID"], after, doc["Version"]["Index"])


async def test_only_clients_that_ask_get_task_events_and_none_are_kept() -> None:
    journal = EventJournal(FakeClock(), keep=5, client_queue=10_000)
    _, docker_client = journal.subscribe({}, None, None)  # what `docker events` asks for
    _, by_service = journal.subscribe({"service": ["web"]}, None, None)
    _, viewer = journal.subscribe({"type": ["service", "task"]}, None, None)
    journal.publish_change(SERVICES, None, make_service("s1", "web"))
    for index in range(1_000):  # many more task changes than the buffer keeps
        journal.on_change(change(task(f"t{index}")), None)
    journal.publish_change(SERVICES, make_service("s1", "web"), None)
    assert [(e.type, e.action) for e in journal.kept] == [("service", "create"), ("service", "remove")]
    for unasked in (docker_client, by_service):
        assert [json.loads(line)["Type"] for line in await unasked.next_lines(0)] == ["service", "service"]
    seen = [json.loads(line) for line in await viewer.next_lines(0)]
    assert len(seen) == 1_002 and {m["Type"] for m in seen[1:-1]} == {"task"}
    assert journal.stats()["TaskSubscribers"] == 1


async def test_task_changes_cost_nothing_while_no_client_asks() -> None:
    journal = EventJournal(FakeClock())
    _, plain = journal.subscribe({"type": ["service"]}, None, None)
    journal.on_change(change(task()), None)
    assert not journal.kept and not plain.pending
    # The clock is read only for an event made: none was.
    assert journal._last_nano == 0


async def test_a_viewer_that_falls_behind_on_tasks_is_dropped_alone() -> None:
    journal = EventJournal(FakeClock(), client_queue=3)
    _, plain = journal.subscribe({}, None, None)
    _, viewer = journal.subscribe({"type": ["task"]}, None, None)
    for index in range(4):
        journal.on_change(change(task(f"t{index}")), None)
    assert viewer.dropped and viewer not in journal.subscriptions and not journal.task_subscriptions
    assert not plain.dropped and plain in journal.subscriptions


async def test_the_cache_feeds_task_events_and_a_reload_fills_the_gap() -> None:
    async with running_harness() as h:
        journal = EventJournal(h.clock)
        h.cache.subscribe(journal.on_change, on_reload=journal.reload)
        _, viewer = journal.subscribe({"type": ["task"]}, None, None)
        await h.add_service(make_service("s1", "web", replicas=1))
        await h.add_tasks(task("t1"))
        await h.report("t1", TaskState.RUNNING)
        await h.report("t1", TaskState.RUNNING)  # the same state again: a heartbeat-like write, no event
        stored = await h.store.get(TASKS, "t1")
        assert stored is not None
        await h.commit(Batch().delete(TASKS, stored))
        seen = [json.loads(line) for line in await viewer.next_lines(0)]
        assert [(m["Action"], m["Actor"]["Attributes"]["state"]) for m in seen] == [
            ("create", "pending"), ("update", "running"), ("remove", "running")]

        await h.store.commit(Batch().create(TASKS, task("t2")))  # while the watch is down
        h.cache.load(await h.store.snapshot())
        assert [json.loads(line)["Actor"]["ID"] for line in await viewer.next_lines(0)] == ["t2"]
        assert [e.type for e in journal.kept] == ["service"]


# ---- over HTTP ---------------------------------------------------------------------------------------------

@pytest.fixture
async def served(no_engine: None) -> AsyncIterator[tuple[EventJournal, TestClient[web.Request, web.Application]]]:  # noqa: F811
    journal = EventJournal(SystemClock())
    app = make_app(EventsDaemon(journal), remote=False)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        yield journal, client


async def test_get_events_streams_task_events_only_to_a_client_that_asks(
        served: tuple[EventJournal, TestClient[web.Request, web.Application]]) -> None:
    journal, client = served
    plain = await client.get("/events")
    viewer = await client.get("/events", params={"filters": '{"type":["task","service"]}'})
    assert plain.status == viewer.status == 200
    await wait_until(lambda: len(journal.subscriptions) == 2)
    journal.on_change(change(task()), None)
    journal.publish_change(SERVICES, None, make_service("s1", "web"))
    first_plain = json.loads(await asyncio.wait_for(plain.content.readline(), 5))
    assert first_plain["Type"] == "service"  # the task event was never sent to it
    got = [json.loads(await asyncio.wait_for(viewer.content.readline(), 5)) for _ in range(2)]
    assert [(m["Type"], m["Action"]) for m in got] == [("task", "create"), ("service", "create")]
    assert got[0]["Actor"]["Attributes"]["name"] == "web.2"
    plain.close()
    viewer.close()
