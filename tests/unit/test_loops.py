"""The orchestrator and scheduler loops end to end over a MemoryStore, driven one `run_once` at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from shoal.clock import FakeClock
from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.controlapi.service import new_service, updated_service, validate_service_spec
from shoal.manager.orchestrator import loop as orchestrator_loop
from shoal.manager.orchestrator.jobs import JobSlots, SlotState
from shoal.manager.orchestrator.loop import OrchestratorLoop, reconcile_removed_service
from shoal.manager.orchestrator.update_progress import UpdateProgress
from shoal.manager.scheduler import loop as scheduler_loop
from shoal.manager.scheduler.loop import SchedulerLoop
from shoal.manager.scheduler.pipeline import NodeLoad
from shoal.manager.store.base import Batch
from shoal.manager.store.memory import MemoryStore
from shoal.timefmt import SECOND
from shoal.types import (
    NODES,
    SERVICES,
    TASKS,
    Doc,
    TaskState,
    desired_state,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)
from tests.unit.manager_fixtures import (
    Harness,
    live,
    make_node,
    make_service,
    make_task,
    per_node,
    running_harness,
)

NOW = 1_800_000_000.0


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness() as running:
        yield running


def loops(h: Harness) -> tuple[OrchestratorLoop, SchedulerLoop]:
    return OrchestratorLoop(h.cache, h.applier, h.clock), SchedulerLoop(h.cache, h.applier, h.clock)


async def start_web(h: Harness, orchestrator: OrchestratorLoop, scheduler: SchedulerLoop, replicas: int = 3,
                    restart_policy: Doc | None = None) -> list[Doc]:
    """Service "web" placed by the two loops and all its tasks reported running; nothing left to decide."""
    await h.add_service(make_service("web", "web", replicas, restart_policy))
    await orchestrator.run_once()
    await scheduler.run_once()
    for task in h.tasks_of("web"):
        await h.report(task["ID"], TaskState.RUNNING)
    assert await orchestrator.run_once() == ""
    return h.tasks_of("web")


# ---- the orchestrator creates, the scheduler places --------------------------------------------------------


async def test_a_replicated_service_of_three_gets_three_pending_tasks_in_slots_1_to_3(harness: Harness) -> None:
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    await harness.add_service(make_service("web", "web", replicas=3))

    decision = await orchestrator.run_once()

    tasks = harness.tasks_of("web")
    assert [task_slot(t) for t in tasks] == [1, 2, 3]
    assert all(task_state(t) == TaskState.PENDING and desired_state(t) == TaskState.RUNNING for t in tasks)
    assert all(task_node(t) == "" for t in tasks)
    assert len({t["ID"] for t in tasks}) == 3
    assert decision == orchestrator.last_decision
    assert decision.startswith("1 services: create=3 update=0 delete=0")
    assert decision.endswith("-> written=3 conflicts=0")
    # Our own writes are in the cache before the next decision, so nothing more is needed.
    assert await orchestrator.run_once() == ""
    assert orchestrator.last_decision == decision


async def test_the_orchestrator_resyncs_every_service_when_the_cache_loads() -> None:
    store = MemoryStore()
    await store.commit(Batch().create(SERVICES, make_service("web", "web", replicas=2), unique_name="web"))
    cache = Cache()
    orchestrator = OrchestratorLoop(cache, Applier(store, fence=lambda: None), FakeClock())
    feeder = asyncio.create_task(cache.run(store))
    try:
        await asyncio.wait_for(cache.ready.wait(), 5.0)
        assert orchestrator.dirty == {"web"}

        assert (await orchestrator.run_once()).startswith("1 services: create=2")
        assert len(await store.list_kind(TASKS)) == 2
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def test_the_scheduler_spreads_three_tasks_over_the_two_ready_active_nodes(harness: Harness) -> None:
    orchestrator, scheduler = loops(harness)
    await harness.add_nodes(make_node("n1"), make_node("n2"), make_node("n3", state="down"),
                            make_node("n4", availability="drain"))
    await harness.add_service(make_service("web", "web", replicas=3))
    await orchestrator.run_once()

    decision = await scheduler.run_once()

    tasks = harness.tasks_of("web")
    assert all(task_state(t) == TaskState.ASSIGNED for t in tasks)
    assert sorted(per_node(tasks).items()) in ([("n1", 2), ("n2", 1)], [("n1", 1), ("n2", 2)])
    assert decision == scheduler.last_decision == "3 assigned, 0 unplaceable -> written=3 conflicts=0"
    assert await scheduler.run_once() == ""


async def test_without_a_suitable_node_the_scheduler_says_why_once(harness: Harness) -> None:
    orchestrator, scheduler = loops(harness)
    await harness.add_nodes(make_node("n1", state="down"), make_node("n2", availability="pause"))
    await harness.add_service(make_service("web", "web", replicas=1))
    await orchestrator.run_once()

    decision = await scheduler.run_once()

    (task,) = harness.tasks_of("web")
    assert task_state(task) == TaskState.PENDING
    assert task["Status"]["Err"] == "no suitable node (2 nodes not available for new tasks)"
    assert decision == "0 assigned, 1 unplaceable -> written=1 conflicts=0"
    # The reason is unchanged: no second write.
    assert await scheduler.run_once() == ""

    # A node becomes ready: the task is placed there.
    await harness.set_node_state("n1", "ready")
    assert (await scheduler.run_once()).startswith("1 assigned")
    assert task_node(harness.tasks_of("web")[0]) == "n1"


async def test_a_node_going_down_gets_its_tasks_replaced_on_the_other_node(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    before = await start_web(harness, orchestrator, scheduler)
    on_n1 = {t["ID"] for t in before if task_node(t) == "n1"}
    assert on_n1

    await harness.set_node_state("n1", "down")
    decision = await orchestrator.run_once()

    tasks = {t["ID"]: t for t in harness.tasks_of("web")}
    for task_id in on_n1:
        # Asked to stop; the observed state stays the agent's to report.
        assert desired_state(tasks[task_id]) == TaskState.SHUTDOWN
        assert task_state(tasks[task_id]) == TaskState.RUNNING
    replacements = [t for t in tasks.values() if task_state(t) == TaskState.PENDING]
    assert sorted(task_slot(t) for t in replacements) == sorted(task_slot(tasks[i]) for i in on_n1)
    assert f"create={len(on_n1)} update={len(on_n1)} delete=0" in decision
    assert "node n1 down" in decision

    await scheduler.run_once()
    now_live = live(harness.tasks_of("web"))
    assert sorted(task_slot(t) for t in now_live) == [1, 2, 3]
    assert per_node(now_live) == {"n2": 3}


async def test_a_node_change_that_is_not_its_state_does_not_wake_the_orchestrator(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    await start_web(harness, orchestrator, scheduler, replicas=1)
    assert orchestrator.dirty == set()

    node = await harness.store.get(NODES, "n1")
    assert node is not None
    node["Description"] = {**node["Description"], "Hostname": "renamed"}
    await harness.commit(Batch().update(NODES, node))

    assert orchestrator.dirty == set()
    assert await orchestrator.run_once() == ""


# ---- a service removed -------------------------------------------------------------------------------------


async def test_a_removed_service_has_its_live_tasks_stopped_and_its_ended_tasks_deleted(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    running = await start_web(harness, orchestrator, scheduler)
    history = make_task("old", "web", node_id="n1", state=TaskState.FAILED, desired=TaskState.SHUTDOWN, slot=1)
    await harness.add_tasks(history)

    await harness.remove_service("web")
    decision = await orchestrator.run_once()

    tasks = {t["ID"]: t for t in harness.tasks_of("web")}
    assert "old" not in tasks
    assert set(tasks) == {t["ID"] for t in running}
    assert all(desired_state(t) == TaskState.SHUTDOWN for t in tasks.values())
    assert "service removed: 3 stopping, 1 deleted" in decision

    # The agents report the tasks stopped: they are deleted in turn.
    for task_id in tasks:
        await harness.report(task_id, TaskState.SHUTDOWN)
    assert "service removed: 0 stopping, 3 deleted" in await orchestrator.run_once()
    assert harness.tasks_of("web") == []
    assert await harness.store.list_kind(TASKS) == []


def test_reconcile_removed_service_deletes_what_cannot_stop_and_waits_for_what_is_stopping() -> None:
    nodes = {"up": make_node("up"), "down": make_node("down", state="down")}
    running = make_task("running", "web", node_id="up", state=TaskState.RUNNING)
    stopping = make_task("stopping", "web", node_id="up", state=TaskState.RUNNING, desired=TaskState.SHUTDOWN)
    on_down_node = make_task("on-down", "web", node_id="down", state=TaskState.RUNNING)
    on_removed_node = make_task("on-removed", "web", node_id="gone", state=TaskState.RUNNING)
    unplaced = make_task("unplaced", "web")
    complete = make_task("complete", "web", node_id="up", state=TaskState.COMPLETE, desired=TaskState.SHUTDOWN)

    plan = reconcile_removed_service(
        [running, stopping, on_down_node, on_removed_node, unplaced, complete], nodes, NOW)

    assert [t["ID"] for t in plan.update] == ["running"]
    assert desired_state(plan.update[0]) == TaskState.SHUTDOWN
    assert desired_state(running) == TaskState.RUNNING  # the input is not modified
    assert sorted(t["ID"] for t in plan.delete) == ["complete", "on-down", "on-removed", "unplaced"]
    assert plan.notes == ["service removed: 1 stopping, 4 deleted"]
    assert reconcile_removed_service([stopping], nodes, NOW).empty()


def test_a_removed_global_service_deletes_its_task_that_never_reached_an_agent() -> None:
    # A global task waits pending on its node (the node was paused before the scheduler confirmed it).
    # No agent has it, so nobody will ever report it stopped: it must be deleted, as the task reaper would.
    nodes = {"n1": make_node("n1", availability="pause")}
    waiting = make_task("waiting", "web", node_id="n1", slot=0)

    plan = reconcile_removed_service([waiting], nodes, NOW)

    assert [t["ID"] for t in plan.delete] == ["waiting"]


async def test_a_removed_global_service_leaves_no_task_behind(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    await harness.add_service(make_service("agent", "agent", replicas=None))
    await orchestrator.run_once()
    (task,) = harness.tasks_of("agent")
    assert task_node(task) == "n1" and task_slot(task) == 0
    node = await harness.store.get(NODES, "n1")
    assert node is not None
    node["Spec"] = {**node["Spec"], "Availability": "pause"}
    await harness.commit(Batch().update(NODES, node))
    await scheduler.run_once()  # refuses: the node is paused
    assert task_state(harness.tasks_of("agent")[0]) == TaskState.PENDING

    await harness.remove_service("agent")
    for _ in range(3):
        await orchestrator.run_once()

    assert harness.tasks_of("agent") == []


# ---- restart policy and time ------------------------------------------------------------------------------


async def test_a_failed_task_is_replaced_only_after_the_restart_delay(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    policy = {"Condition": "any", "Delay": 10 * SECOND}
    (first,) = await start_web(harness, orchestrator, scheduler, replicas=1, restart_policy=policy)

    await harness.report(first["ID"], TaskState.FAILED, err="exit 1")
    decision = await orchestrator.run_once()

    (task,) = harness.tasks_of("web")
    assert desired_state(task) == TaskState.SHUTDOWN  # the failed task becomes history
    assert "slot 1: restart in 10.0s" in decision
    assert "create=0 update=1" in decision

    harness.clock.advance(9)
    assert await orchestrator.run_once() == ""
    assert len(harness.tasks_of("web")) == 1

    harness.clock.advance(1.5)
    decision = await orchestrator.run_once()
    assert "create=1" in decision and "slot 1: new task" in decision
    replacement = [t for t in harness.tasks_of("web") if t["ID"] != first["ID"]]
    assert len(replacement) == 1
    assert task_slot(replacement[0]) == 1 and task_state(replacement[0]) == TaskState.PENDING

    assert (await scheduler.run_once()).startswith("1 assigned")


async def test_a_task_that_completes_under_restart_condition_none_is_not_replaced(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    (first,) = await start_web(harness, orchestrator, scheduler, replicas=1, restart_policy={"Condition": "none"})

    await harness.report(first["ID"], TaskState.COMPLETE)
    decision = await orchestrator.run_once()
    harness.clock.advance(3600)
    await orchestrator.run_once()

    assert [t["ID"] for t in harness.tasks_of("web")] == [first["ID"]]
    assert "not restarted (restart policy)" in decision


async def test_a_conflicting_write_makes_the_orchestrator_decide_again(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    (task,) = await start_web(harness, orchestrator, scheduler, replicas=1)
    await harness.remove_service("web")
    # Another writer changes the task; the orchestrator decides before its cache has seen that.
    touched = dict(task, Labels={"touched": "yes"})
    revision = await harness.store.commit(Batch().update(TASKS, touched))

    decision = await orchestrator.run_once()

    assert decision.endswith("-> written=0 conflicts=1")
    assert orchestrator.dirty == {"web"}
    await harness.cache.wait_for_revision(revision)
    assert (await orchestrator.run_once()).endswith("-> written=1 conflicts=0")
    (stopping,) = harness.tasks_of("web")
    assert desired_state(stopping) == TaskState.SHUTDOWN
    assert stopping["Labels"] == {"touched": "yes"}


# ---- decisions in proportion to what changed --------------------------------------------------------------


async def test_a_task_report_is_decided_over_its_slot_alone(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    tasks = await start_web(harness, orchestrator, scheduler, replicas=50)
    failed = next(t for t in tasks if task_slot(t) == 7)
    full_before = orchestrator.passes["full"]

    await harness.report(failed["ID"], TaskState.FAILED, err="exit 1")
    assert orchestrator.dirty == set() and orchestrator.dirty_slots == {"web": {7}}
    decision = await orchestrator.run_once()

    assert orchestrator.passes["full"] == full_before
    assert "slot 7: task" in decision and "slot 8" not in decision
    assert desired_state(next(t for t in harness.tasks_of("web") if t["ID"] == failed["ID"])) == TaskState.SHUTDOWN


async def test_a_task_report_during_a_rolling_update_reads_its_slot_into_the_kept_progress(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    await start_web(harness, orchestrator, scheduler, replicas=3)
    service = await harness.store.get(SERVICES, "web")
    assert service is not None
    service["PreviousSpec"] = service["Spec"]
    service["Spec"] = {**service["Spec"], "TaskTemplate": {"ContainerSpec": {"Image": "busybox:2"}}}
    await harness.commit(Batch().update(SERVICES, service))
    await orchestrator.run_once()  # the first batch: one slot replaced
    await scheduler.run_once()
    full_before = orchestrator.passes["full"]

    updates_before = orchestrator.passes["update"]

    new = next(t for t in harness.tasks_of("web") if t["Spec"]["ContainerSpec"]["Image"] == "busybox:2")
    old = next(t for t in harness.tasks_of("web") if task_slot(t) == task_slot(new) and t["ID"] != new["ID"])
    await harness.report(old["ID"], TaskState.SHUTDOWN)  # stop-first: the old task stops, then the new one runs
    assert orchestrator.dirty_slots == {"web": {task_slot(new)}}
    await orchestrator.run_once()
    await harness.report(new["ID"], TaskState.RUNNING)
    await orchestrator.run_once()

    assert orchestrator.passes["full"] == full_before and orchestrator.passes["update"] > updates_before
    # The next slot's batch followed from the progress alone: the old task of slot 1 stopped, slot 2 replaced.
    running = [t for t in harness.tasks_of("web") if task_is_live(t)]
    assert sorted(task_slot(t) for t in running if t["Spec"]["ContainerSpec"]["Image"] == "busybox:2") == [1, 2]


async def test_a_rolling_update_driven_to_its_end_keeps_a_progress_equal_to_a_fresh_build(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built a few slots per turn of the loop, refreshed from events: never different from a build from the
    cache, and the update completes with every slot replaced."""
    monkeypatch.setattr(orchestrator_loop, "SLOTS_PER_PIECE", 2)
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    await start_web(harness, orchestrator, scheduler, replicas=7)
    service = await harness.store.get(SERVICES, "web")
    assert service is not None
    service["PreviousSpec"] = service["Spec"]
    service["Spec"] = {**service["Spec"], "TaskTemplate": {"ContainerSpec": {"Image": "busybox:2"}},
                       "UpdateConfig": {"Parallelism": 3, "Monitor": 0}}
    await harness.commit(Batch().update(SERVICES, service))

    for _ in range(40):
        await orchestrator.run_once()
        await scheduler.run_once()
        kept = orchestrator._progress.get("web")
        current = harness.cache.get(SERVICES, "web")
        assert current is not None
        if kept is not None and kept.fits(current) and not kept.stale:
            fresh = UpdateProgress.build(current, harness.cache.tasks_of_service("web"), harness.cache.nodes())
            assert (kept.outdated, kept.in_flight, kept.finishing, kept.waiting, kept.waiting_busy,
                    kept.covered, kept.new_running) == (fresh.outdated, fresh.in_flight, fresh.finishing,
                                                         fresh.waiting, fresh.waiting_busy, fresh.covered,
                                                         fresh.new_running)
        for task in harness.tasks_of("web"):  # the agent: stops what it is told to stop, starts the rest
            if desired_state(task) >= TaskState.SHUTDOWN and not task_state(task).terminal:
                await harness.report(task["ID"], TaskState.SHUTDOWN)
            elif task_state(task) == TaskState.ASSIGNED and desired_state(task) == TaskState.RUNNING:
                await harness.report(task["ID"], TaskState.RUNNING)
        if (current.get("UpdateStatus") or {}).get("State") == "completed":
            break

    final = harness.cache.get(SERVICES, "web")
    assert final is not None and final["UpdateStatus"]["State"] == "completed"
    running = [t for t in harness.tasks_of("web") if task_is_live(t)]
    assert len(running) == 7 and all(t["Spec"]["ContainerSpec"]["Image"] == "busybox:2" for t in running)
    assert orchestrator.passes["update"] > 0


async def test_a_node_going_down_marks_the_slots_of_its_tasks_only(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    tasks = await start_web(harness, orchestrator, scheduler, replicas=6)

    await harness.set_node_state("n1", "down")

    assert orchestrator.dirty == set()
    assert orchestrator.dirty_slots == {"web": {task_slot(t) for t in tasks if task_node(t) == "n1"}}


async def test_the_scheduler_keeps_what_each_node_runs_current_from_events(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    tasks = await start_web(harness, orchestrator, scheduler, replicas=5)
    await harness.report(tasks[0]["ID"], TaskState.FAILED)
    await harness.set_node_state("n2", "down")
    for _ in range(3):
        await orchestrator.run_once()
        await scheduler.run_once()

    recounted = NodeLoad.of({nid: harness.cache.tasks_on_node(nid) for nid in ("n1", "n2")})
    assert scheduler.load.total == recounted.total
    assert dict(scheduler.load.by_service) == {k: v for k, v in recounted.by_service.items() if v}
    assert sum(scheduler.load.total.values()) == len(live(harness.tasks_of("web")))


async def test_a_large_service_is_decided_in_pieces_of_slots(harness: Harness,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator_loop, "SLOTS_PER_PIECE", 10)
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    await harness.add_service(make_service("web", "web", replicas=25))

    await orchestrator.run_once()

    assert sorted(task_slot(t) for t in harness.tasks_of("web")) == list(range(1, 26))
    assert orchestrator.passes == {"full": 0, "slots": 3, "update": 0}  # 1-10, 11-20, 21-25: the loop turned in between


async def test_the_scheduler_places_a_tick_at_a_time_and_every_task_gets_its_turn(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_loop, "TASKS_PER_TICK", 4)
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    # Six tasks that fit nowhere come first; the ones that fit must not wait behind them for ever.
    stuck = make_service("stuck", "stuck", replicas=6)
    stuck["Spec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.hostname==nowhere"]}
    await harness.add_service(stuck)
    await orchestrator.run_once()
    await harness.add_service(make_service("web", "web", replicas=3))
    await orchestrator.run_once()

    for _ in range(5):
        await scheduler.run_once()

    assert all(task_state(t) == TaskState.ASSIGNED for t in harness.tasks_of("web"))
    assert all(task_state(t) == TaskState.PENDING for t in harness.tasks_of("stuck"))
    # Everything has been tried since the last change: no tick is asked for until something changes.
    scheduler._signal.clear()
    await scheduler.run_once()
    assert not scheduler._signal.is_set()


# ---- jobs ---------------------------------------------------------------------------------------------------


def make_job(service_id: str, mode: Doc) -> Doc:
    spec = validate_service_spec({"Name": service_id, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                                  "Mode": mode})
    return new_service(spec, service_id, NOW, set())


async def run_round(h: Harness, orchestrator: OrchestratorLoop, scheduler: SchedulerLoop,
                    outcome: TaskState = TaskState.COMPLETE) -> list[Doc]:
    """One turn of the swarm: the orchestrator decides, the scheduler places, and every placed task runs and
    ends as `outcome`. Returns the tasks that ran."""
    await orchestrator.run_once()
    await scheduler.run_once()
    ran = [t for t in h.cache.tasks().values() if task_state(t) == TaskState.ASSIGNED]
    for task in ran:
        await h.report(task["ID"], TaskState.RUNNING)
        await h.report(task["ID"], outcome)
    return ran


async def test_a_replicated_job_runs_max_concurrent_at_a_time_until_its_completions_are_done(
        harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    await harness.add_service(make_job("batch", {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}))

    rounds = [sorted(task_slot(t) for t in await run_round(harness, orchestrator, scheduler)) for _ in range(4)]

    assert rounds == [[0, 1], [2, 3], [4], []]
    tasks = harness.tasks_of("batch")
    assert [(task_slot(t), task_state(t), desired_state(t)) for t in tasks] == [
        (slot, TaskState.COMPLETE, TaskState.COMPLETE) for slot in range(5)]
    # Every report was decided over its own slot, with the job's counts kept between passes.
    assert orchestrator.passes["full"] == 0 and orchestrator.passes["update"] == 0
    kept = orchestrator._job_slots["batch"]
    fresh = JobSlots.of(harness.cache.get(SERVICES, "batch") or {}, tasks, harness.clock.now())
    assert kept.states == fresh.states and kept.states == dict.fromkeys(range(5), SlotState.DONE)
    harness.clock.advance(3600)
    assert await orchestrator.run_once() == ""


async def test_an_update_of_a_job_runs_it_again(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    job = make_job("batch", {"ReplicatedJob": {"MaxConcurrent": 3, "TotalCompletions": 3}})
    await harness.add_service(job)
    await run_round(harness, orchestrator, scheduler)
    await orchestrator.run_once()
    first_run = {t["ID"] for t in harness.tasks_of("batch")}

    current = harness.cache.get(SERVICES, "batch")
    assert current is not None
    forced = {**current["Spec"], "TaskTemplate": {**current["Spec"]["TaskTemplate"], "ForceUpdate": 1}}
    await harness.commit(Batch().update(SERVICES, updated_service(current, forced, NOW + 60, set())))
    ran = await run_round(harness, orchestrator, scheduler)

    assert sorted(task_slot(t) for t in ran) == [0, 1, 2]
    assert all(t["JobIteration"] == {"Index": 1} for t in ran)
    await orchestrator.run_once()
    # The first run's tasks are gone (swarmkit removes an older iteration's tasks).
    assert not first_run & {t["ID"] for t in harness.tasks_of("batch")}


async def test_a_global_job_runs_once_per_node_and_on_a_node_that_joins(harness: Harness) -> None:
    await harness.add_nodes(make_node("n1"), make_node("n2"))
    orchestrator, scheduler = loops(harness)
    await harness.add_service(make_job("sweep", {"GlobalJob": {}}))

    assert sorted(task_node(t) for t in await run_round(harness, orchestrator, scheduler)) == ["n1", "n2"]
    assert await run_round(harness, orchestrator, scheduler) == []  # done: not run again on either node
    await harness.add_nodes(make_node("n3"))
    assert [task_node(t) for t in await run_round(harness, orchestrator, scheduler)] == ["n3"]
    await orchestrator.run_once()
    assert [desired_state(t) for t in harness.tasks_of("sweep")] == [TaskState.COMPLETE] * 3


async def test_a_report_of_a_large_jobs_task_reads_its_own_slot_only(harness: Harness,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    await harness.add_nodes(make_node("n1"))
    orchestrator, scheduler = loops(harness)
    await harness.add_service(make_job("batch", {"ReplicatedJob": {"MaxConcurrent": 4, "TotalCompletions": 400}}))
    for _ in range(25):
        await run_round(harness, orchestrator, scheduler)
    while await orchestrator.run_once():
        pass  # as the loop's run() does: until a pass finds nothing more to write
    await scheduler.run_once()
    assert len(harness.tasks_of("batch")) == 104
    read: list[int] = []
    decide = orchestrator_loop.reconcile_replicated_job

    def counting(service: Doc, tasks: list[Doc], *args: object, **kwargs: object) -> object:
        read.append(len(tasks))
        return decide(service, tasks, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(orchestrator_loop, "reconcile_replicated_job", counting)
    running = [t for t in harness.tasks_of("batch") if task_state(t) == TaskState.ASSIGNED]
    await harness.report(running[0]["ID"], TaskState.COMPLETE)
    assert orchestrator.dirty == set() and orchestrator.dirty_slots == {"batch": {task_slot(running[0])}}

    decision = await orchestrator.run_once()

    assert "new task" in decision and read[0] == 1  # its slot's one task, not the job's 104


async def test_a_job_too_large_for_one_pass_is_started_over_several(harness: Harness,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.manager.orchestrator.jobs.MAX_STARTS_PER_PASS", 10)
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    await harness.add_service(make_job("batch", {"ReplicatedJob": {"MaxConcurrent": 25, "TotalCompletions": 40}}))

    created = []
    while await orchestrator.run_once():
        created.append(len(harness.tasks_of("batch")))

    assert created == [10, 20, 25]
    assert sorted(task_slot(t) for t in harness.tasks_of("batch")) == list(range(25))
