"""The dispatcher: merging agents' status reports, batching them into writes, and marking silent nodes down."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import cast

import pytest
from aiohttp import WSMsgType, web

from shoal.manager import dispatcher as dispatcher_module
from shoal.manager.applier import Applier
from shoal.manager.controlapi.node import node_view
from shoal.manager.dispatcher import (
    ELECTION_EXTRA_PERIODS,
    GRACE_MULTIPLIER,
    JOIN_GRACE,
    MAX_LAG_ALLOWANCE,
    RECONNECT_ALLOWANCE,
    RESTART_GRACE,
    WAVE_SESSIONS,
    Attempt,
    Dispatcher,
    NodeSession,
    agent_should_know,
    merge_status,
)
from shoal.manager.keys import new_data_key, seal_secret
from shoal.manager.manager import heartbeat_period
from shoal.manager.orchestrator.loop import OrchestratorLoop
from shoal.manager.store.base import Batch
from shoal.protocol import ATTEMPT_HEADER
from shoal.spec import BACKEND_PORTS, DATA_PATH_PORT, DOWN_SINCE, SEALED_DATA
from shoal.timefmt import to_rfc3339
from shoal.types import (
    CONFIGS,
    NODES,
    SECRETS,
    TASKS,
    Doc,
    NodeState,
    TaskState,
    desired_state,
    node_state,
    task_state,
)
from tests.unit.manager_fixtures import (
    CountingStore,
    Harness,
    make_node,
    make_service,
    make_task,
    running_harness,
)
from tests.unit.waiting import wait_until

NOW = 1_800_000_000.0
PERIOD = 5.0
GRACE = PERIOD * GRACE_MULTIPLIER
# What a node known at the leader's activation gets: time to notice the old leader's silence and reconnect.
ELECTION_GRACE = GRACE + PERIOD * ELECTION_EXTRA_PERIODS


def status(state: str, message: str = "", err: str = "", at: float = NOW + 1, **extra: object) -> Doc:
    return {"Timestamp": to_rfc3339(at), "State": state, "Message": message, "Err": err, **extra}


def running_task(task_id: str = "t1", node_id: str = "n1") -> Doc:
    return make_task(task_id, "web", node_id=node_id, state=TaskState.RUNNING, at=NOW)


# ---- merge_status ------------------------------------------------------------------------------------------


def test_a_report_that_moves_forward_is_merged() -> None:
    task = make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED, at=NOW)
    report = status("running", "started", ContainerStatus={"ContainerID": "c1", "PID": 42})

    merged = merge_status(task, report, NOW + 2)

    assert merged is not None
    # The dispatcher stamps when the task started running, for the rolling update's monitor window.
    assert merged["Status"] == {**report, "ShoalRunningSince": to_rfc3339(NOW + 2)}
    assert merged["UpdatedAt"] == to_rfc3339(NOW + 2)
    assert task["Status"]["State"] == "assigned"  # the input is not modified
    assert merged["DesiredState"] == task["DesiredState"] and merged["NodeID"] == "n1"


def test_a_report_keeps_the_fields_it_does_not_carry_and_drops_foreign_ones() -> None:
    task = make_task("t1", "web", node_id="n1", state=TaskState.RUNNING, at=NOW)
    task["Status"]["ContainerStatus"] = {"ContainerID": "c1"}

    merged = merge_status(task, {"State": "failed", "Err": "exit 1", "Bogus": "x"}, NOW + 2)

    assert merged is not None
    assert merged["Status"]["ContainerStatus"] == {"ContainerID": "c1"}
    assert merged["Status"]["Err"] == "exit 1"
    assert "Bogus" not in merged["Status"]


@pytest.mark.parametrize("reported", ["new", "pending", "assigned", "starting"])
def test_a_report_that_would_move_backwards_is_dropped(reported: str) -> None:
    assert merge_status(running_task(), status(reported), NOW + 2) is None


def test_a_terminal_task_does_not_come_back_to_running() -> None:
    task = make_task("t1", "web", node_id="n1", state=TaskState.FAILED, at=NOW)
    assert merge_status(task, status("running"), NOW + 2) is None


def test_a_report_of_the_same_state_with_nothing_new_is_dropped() -> None:
    task = running_task()
    same = {k: task["Status"][k] for k in ("State", "Message", "Err")}
    assert merge_status(task, {**same, "Timestamp": to_rfc3339(NOW + 5)}, NOW + 5) is None


def test_a_report_of_the_same_state_with_a_new_err_is_applied() -> None:
    task = make_task("t1", "web", node_id="n1", state=TaskState.PREPARING, at=NOW)

    merged = merge_status(task, status("preparing", err="pull access denied"), NOW + 2)

    assert merged is not None
    assert merged["Status"]["State"] == "preparing"
    assert merged["Status"]["Err"] == "pull access denied"


@pytest.mark.parametrize("garbage", [{"State": "sleeping"}, {"State": ""}, {}, {"Err": "no state"}])
def test_a_report_with_an_unknown_state_is_ignored(garbage: Doc) -> None:
    assert merge_status(running_task(), garbage, NOW + 2) is None


@pytest.mark.parametrize("garbage", [None, 3, ["running"]])
def test_a_report_whose_state_is_not_a_string_is_ignored(garbage: object) -> None:
    assert merge_status(running_task(), {"State": garbage}, NOW + 2) is None


# ---- agent_should_know -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "desired", "known"),
    [
        (TaskState.NEW, TaskState.RUNNING, False),
        (TaskState.PENDING, TaskState.RUNNING, False),
        (TaskState.PENDING, TaskState.SHUTDOWN, False),
        (TaskState.ASSIGNED, TaskState.RUNNING, True),
        (TaskState.RUNNING, TaskState.RUNNING, True),
        (TaskState.RUNNING, TaskState.SHUTDOWN, True),  # the agent must hear it has to stop
        (TaskState.FAILED, TaskState.RUNNING, True),  # ended, the manager has not answered yet
        (TaskState.COMPLETE, TaskState.SHUTDOWN, False),  # both sides agree it is over
        (TaskState.COMPLETE, TaskState.RUNNING, True),  # a job's task: the manager has not answered yet
        (TaskState.COMPLETE, TaskState.COMPLETE, False),  # a job's task, done for good
        (TaskState.FAILED, TaskState.COMPLETE, False),  # a job's task its restart policy gave up on
        (TaskState.SHUTDOWN, TaskState.SHUTDOWN, False),
        (TaskState.REJECTED, TaskState.REMOVE, False),
    ],
)
def test_agent_should_know(state: TaskState, desired: TaskState, known: bool) -> None:
    task = make_task("t1", "web", node_id="n1", state=state, desired=desired)
    assert agent_should_know(task) is known


# ---- the harness -------------------------------------------------------------------------------------------


@pytest.fixture
async def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
async def harness(store: CountingStore) -> AsyncIterator[Harness]:
    async with running_harness(store) as running:
        yield running


async def no_certificates(node_id: str, csr: bytes, port: int, held_role: str) -> Doc:
    raise AssertionError("no role change is asked for in these tests")


def make_dispatcher(h: Harness, period: float = PERIOD) -> Dispatcher:
    dispatcher = Dispatcher(h.cache, h.store, Applier(h.store, fence=lambda: None), h.clock,
                            heartbeat_period=lambda: period, managers=lambda: ["10.0.0.1:4242"],
                            issue_certificate=no_certificates)
    dispatcher.activate()
    return dispatcher


async def stored(h: Harness, kind: str, obj_id: str) -> Doc:
    doc = await h.store.get(kind, obj_id)
    assert doc is not None
    return doc


# ---- flush_status ------------------------------------------------------------------------------------------


async def test_flush_status_writes_several_reports_in_one_batch(harness: Harness, store: CountingStore) -> None:
    await harness.add_tasks(*(make_task(f"t{i}", "web", node_id="n1", state=TaskState.ASSIGNED) for i in (1, 2, 3)))
    dispatcher = make_dispatcher(harness)
    dispatcher.pending_status = {"t1": status("running"), "t2": status("starting"), "t3": status("rejected")}
    store.commit_sizes.clear()

    await dispatcher.flush_status()

    assert store.commit_sizes == [3]
    assert dispatcher.pending_status == {}
    states = {t["ID"]: task_state(t) for t in await store.list_kind(TASKS)}
    assert states == {"t1": TaskState.RUNNING, "t2": TaskState.STARTING, "t3": TaskState.REJECTED}
    assert (await stored(harness, TASKS, "t1"))["UpdatedAt"] == to_rfc3339(NOW)


async def test_flush_status_writes_nothing_for_reports_that_change_nothing(
    harness: Harness, store: CountingStore
) -> None:
    await harness.add_tasks(running_task("t1"))
    dispatcher = make_dispatcher(harness)
    dispatcher.pending_status = {"t1": status("assigned"), "gone": status("running"), "t2": {"State": "zzz"}}
    store.commit_sizes.clear()

    await dispatcher.flush_status()

    assert store.commit_sizes == []
    assert dispatcher.pending_status == {}
    assert task_state(await stored(harness, TASKS, "t1")) == TaskState.RUNNING


async def test_flush_status_requeues_a_report_that_met_a_stale_version(harness: Harness) -> None:
    await harness.add_tasks(*(make_task(f"t{i}", "web", node_id="n1", state=TaskState.ASSIGNED) for i in (1, 2, 3)))
    dispatcher = make_dispatcher(harness)
    # The manager changes t2 and the cache has not seen it yet when the reports are merged.
    t2 = await stored(harness, TASKS, "t2")
    revision = await harness.store.commit(Batch().update(TASKS, dict(t2, DesiredState="shutdown")))
    dispatcher.pending_status = {"t1": status("running"), "t2": status("running"), "t3": status("running")}

    await dispatcher.flush_status()

    assert set(dispatcher.pending_status) == {"t2"}
    assert task_state(await stored(harness, TASKS, "t1")) == TaskState.RUNNING
    assert task_state(await stored(harness, TASKS, "t3")) == TaskState.RUNNING
    assert task_state(await stored(harness, TASKS, "t2")) == TaskState.ASSIGNED

    # Next round, against the fresh cache: merged onto the manager's change, which is kept.
    await harness.cache.wait_for_revision(revision)
    await dispatcher.flush_status()
    t2 = await stored(harness, TASKS, "t2")
    assert task_state(t2) == TaskState.RUNNING and t2["DesiredState"] == "shutdown"
    assert dispatcher.pending_status == {}


async def test_a_newer_report_wins_over_the_requeued_one(harness: Harness, store: CountingStore) -> None:
    await harness.add_tasks(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED))
    dispatcher = make_dispatcher(harness)
    t1 = await stored(harness, TASKS, "t1")
    await harness.store.commit(Batch().update(TASKS, dict(t1, Labels={"x": "y"})))  # the cache lags behind
    dispatcher.pending_status = {"t1": status("starting")}
    # While the write is in flight the agent reports again.
    store.before_commit = lambda: dispatcher.pending_status.update({"t1": status("running", at=NOW + 3)})

    await dispatcher.flush_status()

    assert dispatcher.pending_status["t1"]["State"] == "running"


async def test_an_unparseable_timestamp_from_an_agent_does_not_break_the_orchestrator(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    await harness.add_service(make_service("web", "web", replicas=1))
    await harness.add_tasks(running_task("t1"))
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    await orchestrator.run_once()
    dispatcher = make_dispatcher(harness)
    dispatcher.pending_status = {"t1": {"State": "failed", "Err": "exit 1", "Timestamp": "yesterday"}}
    await dispatcher.flush_status()
    await harness.cache.wait_for_revision(harness.store.revision)

    await orchestrator.run_once()

    assert "slot 1: task t1 failed" in orchestrator.last_decision


# ---- check_nodes -------------------------------------------------------------------------------------------


async def test_a_silent_node_is_marked_down_only_after_the_grace_period(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)

    harness.clock.advance(ELECTION_GRACE - 0.5)
    assert await dispatcher.check_nodes() == []
    assert node_state(await stored(harness, NODES, "n1")) == NodeState.READY

    harness.clock.advance(1.0)
    assert await dispatcher.check_nodes() == ["n1"]
    node = await stored(harness, NODES, "n1")
    assert node_state(node) == NodeState.DOWN
    assert node["Status"]["Message"] == "heartbeat failure"
    assert node["Status"]["Addr"] == "127.0.0.2"  # the rest of the status is kept
    assert node["UpdatedAt"] == to_rfc3339(harness.clock.now())

    # Already down: not written again.
    await harness.cache.wait_for_revision(harness.store.revision)
    revision = harness.store.revision
    harness.clock.advance(GRACE)
    assert await dispatcher.check_nodes() == []
    assert harness.store.revision == revision


async def test_a_node_with_fresh_heartbeats_stays_ready(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    dispatcher = make_dispatcher(harness)

    down: list[str] = []
    for _ in range(2 * (GRACE_MULTIPLIER + ELECTION_EXTRA_PERIODS)):
        harness.clock.advance(PERIOD)
        dispatcher.last_heartbeat["n1"] = harness.clock.monotonic()  # what each message on n1's session does
        down += await dispatcher.check_nodes()
        await harness.cache.wait_for_revision(harness.store.revision)

    assert down == ["n2"]
    assert node_state(await stored(harness, NODES, "n1")) == NodeState.READY
    assert node_state(await stored(harness, NODES, "n2")) == NodeState.DOWN


async def test_a_node_that_joins_after_activation_gets_time_to_start(harness: Harness) -> None:
    # A joining manager starts its etcd member and loads its cache before its agent connects.
    dispatcher = make_dispatcher(harness)
    harness.clock.advance(10 * GRACE)
    await harness.add_nodes(make_node("late"))

    assert await dispatcher.check_nodes() == []
    harness.clock.advance(JOIN_GRACE + GRACE - 0.1)
    assert await dispatcher.check_nodes() == []
    harness.clock.advance(0.2)
    assert await dispatcher.check_nodes() == ["late"]


async def test_activation_gives_every_node_a_fresh_grace(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)
    harness.clock.advance(ELECTION_GRACE - 1)
    await dispatcher.deactivate()

    dispatcher.activate()  # leadership came back: heartbeats during the gap went to another manager
    harness.clock.advance(ELECTION_GRACE - 1)

    assert await dispatcher.check_nodes() == []


async def test_a_new_leader_waits_for_agents_to_leave_the_old_one_before_counting_silence(
        harness: Harness) -> None:
    # The agents notice the old leader's silence only after their own deadline, then reconnect: the usual
    # grace alone would declare every node down although none has failed.
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)

    harness.clock.advance(GRACE + 0.5)
    assert await dispatcher.check_nodes() == []
    harness.clock.advance(ELECTION_GRACE - GRACE)
    assert await dispatcher.check_nodes() == ["n1"]


async def test_silence_counts_only_once_the_reconnection_wave_after_an_election_is_over(
        harness: Harness) -> None:
    # A thousand agents reconnecting to a busy new leader take longer than the grace; while sessions keep
    # opening, a node not back yet is waiting its turn, not dead. Once they stop, the grace runs out.
    await harness.add_nodes(*(make_node(f"n{i}") for i in range(5)))
    dispatcher = make_dispatcher(harness)
    for i in range(4):
        harness.clock.advance(ELECTION_GRACE - 1)
        dispatcher.session_opened(f"n{i}")
        for back in range(i):  # the nodes back already keep beating
            dispatcher.last_heartbeat[f"n{back}"] = harness.clock.monotonic()
        assert await dispatcher.check_nodes() == []

    harness.clock.advance(GRACE + 0.5)  # no session opened for a grace: n4 is not coming back
    dispatcher.last_heartbeat.update({f"n{i}": harness.clock.monotonic() for i in range(4)})
    assert await dispatcher.check_nodes() == ["n4"]


async def test_a_new_leader_waits_longer_for_a_large_swarm_to_come_back(harness: Harness) -> None:
    # No session opened at all yet (a leader that busy takes a thousand agents in slowly): nodes not back are
    # given time in proportion to how many are still out, then the grace.
    await harness.add_nodes(*(make_node(f"n{i}") for i in range(400)))
    dispatcher = make_dispatcher(harness)
    patience = 400 * RECONNECT_ALLOWANCE  # 20 s on top of the grace
    harness.clock.advance(patience + GRACE - 1)
    assert await dispatcher.check_nodes() == []
    harness.clock.advance(2)
    assert len(await dispatcher.check_nodes()) == 400


async def test_a_heartbeat_that_arrives_while_other_nodes_are_marked_down_counts(
        harness: Harness, store: CountingStore) -> None:
    # Marking hundreds of nodes down takes a while; each is asked again right before its write.
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    dispatcher = make_dispatcher(harness)
    for node_id in ("n1", "n2"):
        dispatcher.session_opened(node_id)
    harness.clock.advance(GRACE + 1)

    def n2_beats() -> None:
        dispatcher.last_heartbeat["n2"] = harness.clock.monotonic()

    store.before_commit = n2_beats  # n2's heartbeat comes in while n1 is being written down
    assert await dispatcher.check_nodes() == ["n1"]
    assert node_state(await stored(harness, NODES, "n2")) == NodeState.READY


async def test_a_node_reporting_loop_lag_gets_that_much_longer(harness: Harness) -> None:
    await harness.add_nodes(make_node("busy"), make_node("idle"))
    dispatcher = make_dispatcher(harness)
    dispatcher.node_lag["busy"] = 4.0
    dispatcher.node_lag["idle"] = 0.01

    harness.clock.advance(ELECTION_GRACE + 2)
    assert await dispatcher.check_nodes() == ["idle"]
    await harness.cache.wait_for_revision(harness.store.revision)
    harness.clock.advance(2.5)
    assert await dispatcher.check_nodes() == ["busy"]


def test_the_lag_allowance_is_capped(harness: Harness) -> None:
    dispatcher = make_dispatcher(harness)
    dispatcher.node_lag["n1"] = 1e5
    assert dispatcher.grace("n1") == GRACE + MAX_LAG_ALLOWANCE


async def test_silence_is_timed_on_the_liveness_clock(harness: Harness) -> None:
    # While this manager's own loop was stalled, it could not read heartbeats: that time does not count.
    await harness.add_nodes(make_node("n1"))
    stalled = 0.0

    def liveness() -> float:
        return harness.clock.monotonic() - stalled

    dispatcher = Dispatcher(harness.cache, harness.store, Applier(harness.store, fence=lambda: None),
                            harness.clock, heartbeat_period=lambda: PERIOD, managers=lambda: [],
                            issue_certificate=no_certificates, liveness=liveness)
    dispatcher.activate()
    harness.clock.advance(ELECTION_GRACE + 30)
    stalled = 31.0  # the loop stood still for 31 of those seconds
    assert await dispatcher.check_nodes() == []


# ---- a session, driven by a fake socket ------------------------------------------------------------------


class FakeSocket:
    """Plays a list of agent messages into a session and records what the dispatcher sends back."""

    def __init__(self, messages: list[Doc]) -> None:
        self.incoming = [SimpleNamespace(type=WSMsgType.TEXT, data=json.dumps(m)) for m in messages]
        self.sent: list[Doc] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[SimpleNamespace]:
        return self._play()

    async def _play(self) -> AsyncIterator[SimpleNamespace]:
        for message in self.incoming:
            yield message


async def serve(dispatcher: Dispatcher, node_id: str, messages: list[Doc]) -> FakeSocket:
    socket = FakeSocket(messages)
    session = NodeSession(node_id, cast(web.WebSocketResponse, socket), "worker")
    await dispatcher._serve(session, "10.0.0.9")
    # Registration (after "hello") and heartbeat answers run beside the message loop; let them finish.
    await asyncio.gather(*session.background, *([session.answerer] if session.answerer else []))
    return socket


async def test_a_session_registers_its_node_and_refreshes_its_heartbeat(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1", state="down"))
    await harness.add_tasks(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED),
                            make_task("t2", "web", node_id="n1", state=TaskState.COMPLETE,
                                      desired=TaskState.SHUTDOWN))
    dispatcher = make_dispatcher(harness)
    harness.clock.advance(GRACE + 1)

    socket = await serve(dispatcher, "n1", [{"type": "hello", "description": {"Platform": {"OS": "linux"}}},
                                            {"type": "status", "updates": []}])

    assert dispatcher.last_heartbeat["n1"] == harness.clock.monotonic()
    node = await stored(harness, NODES, "n1")
    assert node_state(node) == NodeState.READY
    assert node["Description"] == {"Hostname": "host-n1", "Platform": {"OS": "linux"}}
    welcome, assignments, endpoints, names = socket.sent
    assert welcome == {"type": "welcome", "node_id": "n1", "heartbeat_period": PERIOD,
                       "managers": ["10.0.0.1:4242"]}
    assert assignments["full"] is True
    assert [t["ID"] for t in assignments["tasks"]] == ["t1"]
    assert endpoints == {"type": "endpoints", "listeners": []}
    assert names == {"type": "names", "entries": []}  # told once, even of nothing (a new leader's view)
    assert await dispatcher.check_nodes() == []


async def test_a_returning_node_is_ready_only_once_its_first_report_is_in_the_store(harness: Harness) -> None:
    # Back after a reboot, its task is gone: the store must say so before the node counts as ready, or the
    # orchestrator would keep that task and stop its running replacement.
    await harness.add_nodes(make_node("n1", state="down"))
    await harness.add_tasks(running_task("t1", "n1"))
    dispatcher = make_dispatcher(harness)
    order: list[str] = []
    harness.cache.subscribe(lambda event, prev: order.append(
        f"{event.kind}:{(event.doc or {}).get('Status', {}).get('State')}"))

    await serve(dispatcher, "n1", [
        {"type": "hello", "description": {}},
        {"type": "status", "updates": [{"TaskID": "t1", "Status": status("failed", err="exit status unknown")}]}])
    await harness.cache.wait_for_revision(harness.store.revision)

    assert order == ["tasks:failed", "nodes:ready"]


async def test_a_node_marked_down_remembers_when(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)

    await dispatcher.set_node_down("n1", "heartbeat failure")

    assert (await stored(harness, NODES, "n1"))[DOWN_SINCE] == harness.clock.now()
    await serve(dispatcher, "n1", [{"type": "hello", "description": {}}, {"type": "status", "updates": []}])
    assert DOWN_SINCE not in await stored(harness, NODES, "n1")


@pytest.mark.parametrize("reported, recorded", [(0.7, 0.7), ("junk", 0.0), (-3, 0.0), (None, 0.0)])
async def test_every_heartbeat_is_answered_and_its_lag_recorded(harness: Harness, reported: object,
                                                                recorded: float) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = Dispatcher(harness.cache, harness.store, Applier(harness.store, fence=lambda: None),
                            harness.clock, heartbeat_period=lambda: PERIOD, managers=lambda: [],
                            issue_certificate=no_certificates, loop_lag=lambda: 0.25)
    dispatcher.activate()

    socket = await serve(dispatcher, "n1", [{"type": "heartbeat", "lag": reported}, {"type": "heartbeat"}])

    assert socket.sent[1:] == [{"type": "heartbeat", "lag": 0.25, "period": PERIOD}] * 2
    assert dispatcher.node_lag["n1"] == 0.0  # the last heartbeat carried none
    socket = await serve(dispatcher, "n1", [{"type": "heartbeat", "lag": reported}])
    assert dispatcher.node_lag["n1"] == recorded


async def test_an_agent_slow_to_read_answers_does_not_stop_its_heartbeats_being_read(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)
    socket = FakeSocket([{"type": "heartbeat", "lag": 1}, {"type": "heartbeat", "lag": 2},
                         {"type": "heartbeat", "lag": 3}])
    stuck = asyncio.Event()

    async def never_drains(text: str) -> None:
        if '"heartbeat"' in text:
            await stuck.wait()  # the agent's receive buffer is full by now

    socket.send_str = never_drains  # type: ignore[method-assign]
    session = NodeSession("n1", cast(web.WebSocketResponse, socket), "worker")

    await asyncio.wait_for(dispatcher._serve(session, "10.0.0.9"), 5)

    assert dispatcher.node_lag["n1"] == 3.0, "every heartbeat was read"
    assert session.answers_owed == 2 and session.answerer is not None and not session.answerer.done()
    session.answerer.cancel()


async def test_a_session_queues_status_reports_for_the_next_flush(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    await harness.add_tasks(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED))
    dispatcher = make_dispatcher(harness)

    await serve(dispatcher, "n1", [{"type": "status", "updates": [{"TaskID": "t1", "Status": status("starting")}]},
                                   {"type": "status", "updates": [{"TaskID": "t1", "Status": status("running")}]}])

    assert dispatcher.pending_status == {"t1": status("running")}
    await dispatcher.flush_status()
    assert task_state(await stored(harness, TASKS, "t1")) == TaskState.RUNNING


async def test_a_node_cannot_report_the_status_of_another_nodes_task(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    await harness.add_tasks(running_task("t1", node_id="n1"))
    dispatcher = make_dispatcher(harness)

    await serve(dispatcher, "n2", [{"type": "status", "updates": [{"TaskID": "t1", "Status": status("failed")}]}])
    await dispatcher.flush_status()

    assert task_state(await stored(harness, TASKS, "t1")) == TaskState.RUNNING


def test_the_same_state_reported_again_keeps_the_time_it_was_entered() -> None:
    """An agent that restarts re-reports its running tasks: they have been running since the first report."""
    task = make_task("t1", "web", node_id="n1", state=TaskState.RUNNING, at=NOW)
    again = dict(status("running", "re-adopted after an agent restart"), Timestamp=to_rfc3339(NOW + 600))
    merged = merge_status(task, again, NOW + 600)
    assert merged is not None and merged["Status"]["Timestamp"] == task["Status"]["Timestamp"]
    assert merged["Status"]["Message"] == "re-adopted after an agent restart"


# ---- the routing mesh's endpoint table ---------------------------------------------------------------------


def serving(task: Doc, node_port: int) -> Doc:
    task["Status"][BACKEND_PORTS] = [{"Protocol": "tcp", "TargetPort": 80, "Port": node_port}]
    return task


async def published_service(harness: Harness, replicas: int, port: Doc) -> None:
    """Node n1 and a service "web" publishing `port` in ingress mode."""
    service = make_service("web", "web", replicas=replicas)
    service["Endpoint"] = {"Ports": [{**port, "PublishMode": "ingress"}]}
    await harness.add_nodes(make_node("n1"))
    await harness.add_service(service)


async def test_the_endpoint_table_follows_the_store(harness: Harness) -> None:
    await published_service(harness, 2, {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080})
    await harness.add_tasks(serving(running_task("t1"), 41001), serving(running_task("t2"), 41002))
    dispatcher = make_dispatcher(harness)

    [listener] = dispatcher.endpoints()
    assert listener["PublishedPort"] == 8080
    assert listener["Backends"] == [["t1", "127.0.0.2", 41001], ["t2", "127.0.0.2", 41002]]

    # The manager stops t2 (scale down): it leaves the table before the agent even hears of it.
    task = await stored(harness, TASKS, "t2")
    task["DesiredState"] = TaskState.SHUTDOWN.wire
    await harness.commit(Batch().update(TASKS, task))
    assert dispatcher.endpoints()[0]["Backends"] == [["t1", "127.0.0.2", 41001]]


async def test_a_session_gets_the_table_after_its_assignments(harness: Harness) -> None:
    await published_service(harness, 1, {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353})
    dispatcher = make_dispatcher(harness)

    socket = await serve(dispatcher, "n1", [{"type": "hello", "description": {}}, {"type": "status", "updates": []}])

    assert [m["type"] for m in socket.sent] == ["welcome", "assignments", "endpoints", "names"]
    assert [(x["PublishedPort"], x["Protocol"], x["Backends"]) for x in socket.sent[2]["listeners"]] == [
        (5353, "udp", [])]


async def test_ports_a_node_cannot_listen_on_show_in_its_status_message(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)

    await serve(dispatcher, "n1", [{"type": "mesh", "errors": ["port 8080/tcp is in use on this node"]}])
    node = await stored(harness, NODES, "n1")
    assert node_view(node, None, True)["Status"]["Message"] == "routing mesh: port 8080/tcp is in use on this node"
    # A re-registration (the agent reconnecting) rewrites Status but leaves the mesh's report alone.
    await serve(dispatcher, "n1", [{"type": "hello", "description": {}}, {"type": "status", "updates": []}])
    node = await stored(harness, NODES, "n1")
    assert node_view(node, None, True)["Status"]["Message"] == "routing mesh: port 8080/tcp is in use on this node"

    await serve(dispatcher, "n1", [{"type": "mesh", "errors": []}])
    assert node_view(await stored(harness, NODES, "n1"), None, True)["Status"]["Message"] == ""


def test_a_running_task_can_withdraw_its_ports_from_the_mesh() -> None:
    """An unhealthy task is still running while it is stopped: its agent reports no ports, explicitly."""
    task = serving(running_task(), 41001)
    merged = merge_status(task, {**task["Status"], BACKEND_PORTS: []}, NOW + 2)
    assert merged is not None and merged["Status"][BACKEND_PORTS] == []
    assert merged["Status"]["State"] == "running"


@pytest.mark.parametrize("bye, grace_left", [
    (None, PERIOD),  # closed unannounced: a hint the node died, one period to come back
    ({"type": "bye", "restarting": True}, RESTART_GRACE),  # a daemon restart: its tasks run on meanwhile
    ({"type": "bye", "silent": True}, GRACE),  # left a manager it found too slow: the usual grace
])
async def test_a_closed_session_leaves_its_node_the_time_its_goodbye_says(
        harness: Harness, bye: Doc | None, grace_left: float) -> None:
    await harness.add_nodes(make_node("n1"))
    dispatcher = make_dispatcher(harness)
    socket = FakeSocket([bye] if bye else [])
    session = NodeSession("n1", cast(web.WebSocketResponse, socket), "worker")
    dispatcher.session_opened("n1")

    await dispatcher._serve(session, "10.0.0.9")
    dispatcher.session_ended(session)

    harness.clock.advance(grace_left - 0.1)
    assert await dispatcher.check_nodes() == []
    harness.clock.advance(0.2)
    assert await dispatcher.check_nodes() == ["n1"]


@pytest.mark.parametrize("configured, nodes, period", [
    (None, 3, 1.0),  # shoal's default
    (5_000_000_000, 3, 5.0),  # swarm update --dispatcher-heartbeat 5s
    (None, 1000, 5.0),  # a thousand nodes: the leader reads at most 200 heartbeats a second
    (10_000_000_000, 1000, 10.0),
])
def test_the_heartbeat_period_grows_with_the_swarm(configured: int | None, nodes: int, period: float) -> None:
    cluster = {"Spec": {"Dispatcher": {"HeartbeatPeriod": configured}}}
    assert heartbeat_period(cluster, nodes) == period


async def test_a_node_back_with_its_task_running_stops_the_replacement_in_the_same_write(harness: Harness) -> None:
    # Its daemon restarted within the grace: the task it never stopped stays, and no store revision shows the
    # slot running on two ready nodes.
    service = make_service("web", "web", replicas=1)
    await harness.add_service(service)
    back = make_node("back", state="down")
    back[DOWN_SINCE] = harness.clock.now() - 2
    await harness.add_nodes(back, make_node("other"))
    original = make_task("orig", "web", node_id="back", state=TaskState.RUNNING, at=NOW - 100)
    replacement = make_task("repl", "web", node_id="other", state=TaskState.RUNNING, at=NOW - 1)
    await harness.add_tasks(original, replacement)
    dispatcher = make_dispatcher(harness)
    seen: list[tuple[str, str]] = []
    harness.cache.subscribe(lambda event, prev: seen.append((event.obj_id, str(event.revision))))

    await serve(dispatcher, "back", [{"type": "hello", "description": {}}, {"type": "status", "updates": []}])

    assert desired_state(await stored(harness, TASKS, "repl")) == TaskState.SHUTDOWN
    assert desired_state(await stored(harness, TASKS, "orig")) == TaskState.RUNNING
    revisions = {obj: rev for obj, rev in seen}
    assert revisions["back"] == revisions["repl"]  # one transaction


# ---- secrets and configs: least-privilege delivery ------------------------------------------------------

DATA_KEY = new_data_key()
SECRET_VALUE = b"hunter2-the-db-password"


def using(task: Doc, secrets: Sequence[str] = (), configs: Sequence[str] = ()) -> Doc:
    container = task["Spec"]["ContainerSpec"]
    container["Secrets"] = [{"SecretID": s, "SecretName": s, "File": {"Name": s, "UID": "0", "GID": "0",
                                                                     "Mode": 0o400}} for s in secrets]
    container["Configs"] = [{"ConfigID": c, "ConfigName": c, "File": {"Name": f"/etc/{c}", "UID": "0", "GID": "0",
                                                                     "Mode": 0o444}} for c in configs]
    return task


async def secrets_harness(harness: Harness) -> Dispatcher:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    secret = {"ID": "s1", "Spec": {"Name": "s1", "Labels": {}},
              SEALED_DATA: seal_secret(DATA_KEY, "s1", SECRET_VALUE)}
    config = {"ID": "c1", "Spec": {"Name": "c1", "Labels": {}, "Data": base64.b64encode(b"port=80").decode()}}
    await harness.commit(Batch().create(SECRETS, secret).create(CONFIGS, config))

    async def data_key() -> bytes:
        return DATA_KEY

    dispatcher = Dispatcher(harness.cache, harness.store, Applier(harness.store, fence=lambda: None), harness.clock,
                            heartbeat_period=lambda: PERIOD, managers=lambda: ["10.0.0.1:4242"],
                            issue_certificate=no_certificates, data_key=data_key)
    dispatcher.activate()
    return dispatcher


def delivered(message: Doc) -> dict[str, list[tuple[str, bytes]]]:
    return {kind: [(item["ID"], base64.b64decode(item["Data"])) for item in message.get(kind) or []]
            for kind in ("secrets", "configs")}


async def test_a_node_is_sent_only_the_secrets_of_the_tasks_it_runs(harness: Harness) -> None:
    dispatcher = await secrets_harness(harness)
    await harness.add_tasks(using(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED), ["s1"], ["c1"]),
                            make_task("t2", "web", node_id="n2", state=TaskState.ASSIGNED, slot=2))
    hello = [{"type": "hello", "description": {}}, {"type": "status", "updates": []}]

    first = (await serve(dispatcher, "n1", hello)).sent[1]
    second = (await serve(dispatcher, "n2", hello)).sent[1]

    assert delivered(first) == {"secrets": [("s1", SECRET_VALUE)], "configs": [("c1", b"port=80")]}
    assert delivered(second) == {"secrets": [], "configs": []}
    assert SECRET_VALUE.decode() not in json.dumps(second)
    # The task document itself refers to the secret by ID only.
    assert SECRET_VALUE.decode() not in json.dumps(first["tasks"])


async def test_a_secret_comes_with_the_first_task_using_it_and_goes_after_the_last(harness: Harness) -> None:
    dispatcher = await secrets_harness(harness)
    socket = FakeSocket([])
    session = NodeSession("n1", cast(web.WebSocketResponse, socket), "worker")
    dispatcher.sessions["n1"] = session
    sender = asyncio.create_task(dispatcher._send_assignments(session))

    async def next_assignment(change: Batch) -> Doc:
        count = len(socket.sent)
        await harness.commit(change)
        await wait_until(lambda: len(socket.sent) > count)
        return socket.sent[-1]

    try:
        t1 = using(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED), ["s1"])
        t2 = using(make_task("t2", "web", node_id="n1", state=TaskState.ASSIGNED, slot=2), ["s1"])
        first = await next_assignment(Batch().create(TASKS, t1))
        assert delivered(first)["secrets"] == [("s1", SECRET_VALUE)] and "forget" not in first
        second = await next_assignment(Batch().create(TASKS, t2))
        assert delivered(second)["secrets"] == [], "the node holds it already"
        assert session.dependencies.held() == {("secret", "s1")}

        ended = await stored(harness, TASKS, "t1")
        ended["Status"] = {**ended["Status"], "State": "failed"}
        third = await next_assignment(Batch().update(TASKS, ended))
        assert "forget" not in third, "t2 still needs it"

        gone = await stored(harness, TASKS, "t2")
        fourth = await next_assignment(Batch().delete(TASKS, gone))
        assert fourth["remove"] == ["t2"] and fourth["forget"] == {"secrets": ["s1"]}
        assert session.dependencies.held() == set()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def test_a_removed_secret_is_not_sent(harness: Harness) -> None:
    dispatcher = await secrets_harness(harness)
    await harness.add_tasks(using(make_task("t1", "web", node_id="n1", state=TaskState.ASSIGNED), ["gone"]))

    first = (await serve(dispatcher, "n1", [{"type": "hello", "description": {}},
                                            {"type": "status", "updates": []}])).sent[1]

    assert delivered(first)["secrets"] == []  # the agent rejects the task for want of it


# ---- session attempts: one answered late never replaces a later one ---------------------------------------


@pytest.mark.parametrize(("first", "second", "earlier"), [
    ("agent1:3", "agent1:5", True), ("agent1:5", "agent1:3", False), ("agent1:3", "agent2:5", False),
    ("", "agent1:5", False), ("agent1:x", "agent1:5", False),
])
def test_attempts_are_ordered_within_one_agent_process(first: str, second: str, earlier: bool) -> None:
    assert Attempt.parse(first).earlier_than(Attempt.parse(second)) is earlier


async def test_an_attempt_served_after_a_later_one_is_refused_and_the_open_session_kept(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher = make_dispatcher(harness)
    dispatcher.activate()
    monkeypatch.setattr(dispatcher_module, "identity_from_peercert",
                        lambda _cert: SimpleNamespace(node_id="n1", role="worker"))
    dropped: list[str] = []
    open_session = NodeSession("n1", cast(web.WebSocketResponse, FakeSocket([])), "worker",
                               attempt=Attempt("agent1", 5))
    monkeypatch.setattr(open_session, "drop", lambda: dropped.append("n1"))
    dispatcher.sessions["n1"] = open_session
    late = SimpleNamespace(transport=SimpleNamespace(get_extra_info=lambda _key: {"subject": ()}),
                           headers={ATTEMPT_HEADER: "agent1:4"})

    with pytest.raises(web.HTTPConflict):
        await dispatcher.handle_session(cast(web.Request, late), None)

    assert dispatcher.sessions["n1"] is open_session and dropped == []


async def test_a_session_closed_during_a_reconnection_wave_waits_for_the_wave_like_a_node_not_back(
        harness: Harness) -> None:
    # A leader taking many agents in at once is slow; a session that ends then was more likely given up on by
    # its agent than ended by a dead node. Outside a wave, the close is a hint of death (tested above).
    await harness.add_nodes(*(make_node(f"n{i}") for i in range(WAVE_SESSIONS + 1)))
    dispatcher = make_dispatcher(harness)
    harness.clock.advance(ELECTION_GRACE + 60)
    for i in range(WAVE_SESSIONS + 1):
        dispatcher.session_opened(f"n{i}")
    session = NodeSession("n0", cast(web.WebSocketResponse, FakeSocket([])), "worker")
    await dispatcher._serve(session, "10.0.0.9")
    dispatcher.session_ended(session)

    for _ in range(3):  # sessions keep opening for longer than the grace: n0 waits its turn
        harness.clock.advance(GRACE / 2)
        dispatcher.session_opened("n1")
        dispatcher.last_heartbeat.update({f"n{i}": harness.clock.monotonic() for i in range(1, WAVE_SESSIONS + 1)})
        assert await dispatcher.check_nodes() == []

    harness.clock.advance(GRACE + 0.5)  # the wave is over and n0 never came back
    dispatcher.last_heartbeat.update({f"n{i}": harness.clock.monotonic() for i in range(1, WAVE_SESSIONS + 1)})
    assert await dispatcher.check_nodes() == ["n0"]


# ---- the name table: each node gets its networks' names, and only when they change -----------------------


def networked(service_id: str, name: str, network: str, vip: str) -> Doc:
    service = make_service(service_id, name)
    service["Spec"]["TaskTemplate"]["Networks"] = [{"Target": network, "Aliases": [name]}]
    service["Endpoint"] = {"VirtualIPs": [{"NetworkID": network, "Addr": vip}]}
    return service


def attached_task(task_id: str, service_id: str, node_id: str, network: str, address: str) -> Doc:
    task = make_task(task_id, service_id, node_id=node_id, state=TaskState.RUNNING)
    task["Spec"]["Networks"] = [{"Target": network}]
    task["NetworksAttachments"] = [{"Network": {"ID": network}, "Addresses": [address]}]
    return task


async def test_a_node_is_told_the_names_of_its_networks_only_and_again_only_when_they_change(
        harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    await harness.add_service(networked("s-api", "api", "back", "10.0.1.2/24"))
    await harness.add_service(networked("s-web", "web", "front", "10.0.2.2/24"))
    await harness.add_tasks(attached_task("t1", "s-api", "n1", "back", "10.0.1.5/24"),
                            attached_task("t2", "s-web", "n2", "front", "10.0.2.5/24"))
    dispatcher = make_dispatcher(harness)
    socket = FakeSocket([])
    session = NodeSession("n1", cast(web.WebSocketResponse, socket), "worker")

    await dispatcher._send_names(session)
    assert [e["Name"] for e in socket.sent[-1]["entries"]] == ["api"]  # not "web": n1 runs nothing on front
    assert socket.sent[-1]["entries"][0]["Tasks"] == ["10.0.1.5"]

    # A change on another network: n1 is not told anything.
    await harness.add_tasks(attached_task("t3", "s-web", "n2", "front", "10.0.2.6/24"))
    await dispatcher._send_names(session)
    assert len(socket.sent) == 1

    # A second api task: n1 is told.
    await harness.add_tasks(attached_task("t4", "s-api", "n2", "back", "10.0.1.6/24"))
    await dispatcher._send_names(session)
    assert len(socket.sent) == 2 and socket.sent[-1]["entries"][0]["Tasks"] == ["10.0.1.5", "10.0.1.6"]


async def test_overlay_peers_follow_a_task_from_its_assignment_to_its_end_and_a_node_changing_its_port(
        harness: Harness) -> None:
    n1, n2 = make_node("n1"), make_node("n2")
    for node, port in ((n1, 4790), (n2, 4791)):
        node["Description"][DATA_PATH_PORT] = port
    await harness.add_nodes(n1, n2)
    await harness.add_service(networked("s-api", "api", "back", "10.0.1.2/24"))
    await harness.add_tasks(attached_task("t1", "s-api", "n1", "back", "10.0.1.5/24"))
    dispatcher = make_dispatcher(harness)
    socket = FakeSocket([])
    session = NodeSession("n1", cast(web.WebSocketResponse, socket), "worker")

    def peers() -> list[list[str]]:
        return cast(list[list[str]], socket.sent[-1]["entries"][0]["Peers"])

    await dispatcher._send_names(session)
    assert peers() == [["10.0.1.5", "127.0.0.2:4790"]]
    # A task only assigned on n2 is a peer already (its frames must reach it from its first packet)…
    starting = attached_task("t2", "s-api", "n2", "back", "10.0.1.6/24")
    starting["Status"]["State"] = TaskState.ASSIGNED.wire
    await harness.add_tasks(starting)
    await dispatcher._send_names(session)
    assert peers()[1] == ["10.0.1.6", "127.0.0.2:4791"] and socket.sent[-1]["entries"][0]["Tasks"] == ["10.0.1.5"]
    # …n2 restarting with another data-path port is followed…
    node = await harness.store.get(NODES, "n2")
    assert node is not None
    node["Description"][DATA_PATH_PORT] = 4799
    await harness.commit(Batch().update(NODES, node))
    await dispatcher._send_names(session)
    assert peers()[1] == ["10.0.1.6", "127.0.0.2:4799"]
    # …and a task that has ended is a peer no more.
    await harness.report("t2", TaskState.FAILED, "exit 1")
    await dispatcher._send_names(session)
    assert peers() == [["10.0.1.5", "127.0.0.2:4790"]]
