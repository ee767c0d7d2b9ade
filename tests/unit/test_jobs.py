"""The job reconcilers: table tests per case, and hypothesis properties over whole runs of a job (never more
than MaxConcurrent running, never more completions than TotalCompletions, a completed task never run again,
slot-by-slot decisions equal to whole-job ones)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.manager.orchestrator.common import new_task
from shoal.manager.orchestrator.jobs import (
    JobSlots,
    SlotState,
    job_slot_state,
    reconcile_global_job,
    reconcile_replicated_job,
)
from shoal.spec import job_iteration
from shoal.timefmt import SECOND, to_rfc3339
from shoal.types import Doc, Plan, TaskState, desired_state, task_is_live, task_node, task_slot, task_state
from tests.unit.plans import apply

NOW = 1_800_000_000.0


# ---- builders -------------------------------------------------------------------------------------------

def make_job(concurrent: int = 2, total: int = 5, restart: Doc | None = None, iteration: int = 0,
             constraints: list[str] | None = None, global_job: bool = False) -> Doc:
    template: Doc = {"ContainerSpec": {"Image": "busybox"}, "ForceUpdate": 0}
    if restart is not None:
        template["RestartPolicy"] = restart
    if constraints:
        template["Placement"] = {"Constraints": constraints}
    mode = {"GlobalJob": {}} if global_job else {"ReplicatedJob": {"MaxConcurrent": concurrent,
                                                                   "TotalCompletions": total}}
    return {"ID": "job1", "Version": {"Index": 3},
            "Spec": {"Name": "batch", "TaskTemplate": template, "Mode": mode},
            "JobStatus": {"JobIteration": {"Index": iteration}, "LastExecution": to_rfc3339(NOW - 500)}}


def make_node(nid: str, state: str = "ready", availability: str = "active", role: str = "worker") -> Doc:
    return {"ID": nid, "Spec": {"Role": role, "Availability": availability, "Labels": {}},
            "Description": {"Hostname": f"host-{nid}"}, "Status": {"State": state, "Addr": "127.0.0.2"}}


def nodes_map(*nodes: Doc) -> dict[str, Doc]:
    return {n["ID"]: n for n in nodes}


def make_task(job: Doc, tid: str, slot: int, node: str = "n1", state: str = "running", desired: str = "running",
              created: float = NOW - 100, ended: float | None = None, **extra: Any) -> Doc:
    task = new_task(job, slot, node, created, task_id=tid)
    task["Status"]["State"] = state
    task["Status"]["Timestamp"] = to_rfc3339(ended if ended is not None else created)
    task["DesiredState"] = desired
    task.update(extra)
    return task


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def updated(plan: Plan, tid: str) -> Doc:
    matches = [t for t in plan.update if t["ID"] == tid]
    assert len(matches) == 1, f"{tid} not updated exactly once"
    return matches[0]


READY = nodes_map(make_node("n1"), make_node("n2"))
NO_RESTART_DELAY = {"Condition": "on-failure", "Delay": 0}


def replicated(job: Doc, tasks: list[Doc], nodes: dict[str, Doc] = READY, now: float = NOW,
               limit: int = 5) -> Plan:
    return reconcile_replicated_job(job, tasks, nodes, now, limit, new_task_id=ids())


# ---- replicated jobs ------------------------------------------------------------------------------------

def test_a_new_job_starts_max_concurrent_tasks_in_the_lowest_slots() -> None:
    job = make_job(concurrent=2, total=5)
    plan = replicated(job, [])
    assert [task_slot(t) for t in plan.create] == [0, 1]  # Docker numbers a job's slots from 0
    for task in plan.create:
        assert task["JobIteration"] == {"Index": 0}
        assert task["DesiredState"] == "running" and task["NodeID"] == ""  # the scheduler places it


def test_fewer_completions_than_concurrency_start_only_those() -> None:
    assert [task_slot(t) for t in replicated(make_job(concurrent=10, total=3), []).create] == [0, 1, 2]
    assert replicated(make_job(concurrent=0, total=0), []).empty()


def test_a_completed_task_is_done_for_good_and_frees_its_place_for_the_next_slot() -> None:
    job = make_job(concurrent=2, total=5)
    tasks = [make_task(job, "a", 0, state="complete"), make_task(job, "b", 1)]
    plan = replicated(job, tasks)
    assert desired_state(updated(plan, "a")) == TaskState.COMPLETE
    assert [task_slot(t) for t in plan.create] == [2]
    assert plan.delete == []


def test_a_completed_task_is_not_restarted_even_with_condition_any() -> None:
    job = make_job(concurrent=1, total=1, restart={"Condition": "any", "Delay": 0})
    plan = replicated(job, [make_task(job, "a", 0, state="complete")])
    assert plan.create == []
    assert desired_state(updated(plan, "a")) == TaskState.COMPLETE


def test_a_finished_job_writes_nothing() -> None:
    job = make_job(concurrent=2, total=3)
    tasks = [make_task(job, f"t{s}", s, state="complete", desired="complete") for s in range(3)]
    assert replicated(job, tasks).empty()


def test_a_failed_task_keeps_its_slot_busy_until_its_restart_delay_has_passed() -> None:
    job = make_job(concurrent=1, total=3, restart={"Condition": "on-failure", "Delay": 10 * SECOND})
    tasks = [make_task(job, "a", 0, state="failed", ended=NOW - 2)]
    plan = replicated(job, tasks)
    assert desired_state(updated(plan, "a")) == TaskState.SHUTDOWN
    assert plan.create == []  # not slot 1 either: the waiting slot counts against MaxConcurrent
    assert plan.wake_at == NOW + 8

    later = replicated(job, apply(tasks, plan), now=NOW + 8)
    assert [(task_slot(t), t["JobIteration"]) for t in later.create] == [(0, {"Index": 0})]


def test_restart_condition_none_gives_a_failed_slot_up_and_moves_on() -> None:
    job = make_job(concurrent=1, total=3, restart={"Condition": "none"})
    plan = replicated(job, [make_task(job, "a", 0, state="failed")])
    # Desired "complete": the slot is over without completing; the job goes on with the next slot.
    assert desired_state(updated(plan, "a")) == TaskState.COMPLETE
    assert [task_slot(t) for t in plan.create] == [1]


def test_max_attempts_ends_the_slot_after_that_many_restarts() -> None:
    job = make_job(concurrent=1, total=2, restart={"Condition": "on-failure", "Delay": 0, "MaxAttempts": 2})
    tasks = [make_task(job, "a", 0, state="failed", desired="shutdown", created=NOW - 30),
             make_task(job, "b", 0, state="failed", desired="shutdown", created=NOW - 20, Restarts=[NOW - 20]),
             make_task(job, "c", 0, state="failed", created=NOW - 10, Restarts=[NOW - 20, NOW - 10])]
    plan = replicated(job, tasks)
    assert desired_state(updated(plan, "c")) == TaskState.COMPLETE
    assert [task_slot(t) for t in plan.create] == [1]


def test_a_task_on_a_failed_node_is_replaced_at_once() -> None:
    job = make_job(concurrent=2, total=2)
    nodes = nodes_map(make_node("n1", state="down"), make_node("n2", availability="drain"))
    tasks = [make_task(job, "a", 0, node="n1"), make_task(job, "b", 1, node="n2")]
    plan = replicated(job, tasks, nodes)
    assert {t["ID"]: desired_state(t) for t in plan.update} == {"a": TaskState.SHUTDOWN, "b": TaskState.SHUTDOWN}
    assert sorted(task_slot(t) for t in plan.create) == [0, 1]


def test_a_slot_that_completed_stops_a_second_task_running_in_it() -> None:
    job = make_job(concurrent=2, total=2)
    tasks = [make_task(job, "a", 0, state="complete", desired="shutdown", created=NOW - 50),
             make_task(job, "b", 0, created=NOW - 10), make_task(job, "c", 1)]
    plan = replicated(job, tasks)
    assert desired_state(updated(plan, "b")) == TaskState.SHUTDOWN
    assert plan.create == []


def test_a_new_iteration_stops_the_old_tasks_and_starts_again_from_slot_0() -> None:
    old = make_job(concurrent=2, total=3, iteration=0)
    tasks = [make_task(old, "done", 0, state="complete", desired="complete"),
             make_task(old, "busy", 1), make_task(old, "waiting", 2, state="pending", node="")]
    job = make_job(concurrent=2, total=3, iteration=1)
    plan = replicated(job, tasks)
    assert desired_state(updated(plan, "busy")) == TaskState.SHUTDOWN
    # Ended (or never given to an agent): deleted at once, as swarmkit removes them.
    assert sorted(t["ID"] for t in plan.delete) == ["done", "waiting"]
    assert [(task_slot(t), job_iteration(t)) for t in plan.create] == [(0, 1), (1, 1)]
    # Once the agent reports the old task stopped, it goes too.
    after = apply(tasks, plan)
    stopped = [{**t, "Status": {**t["Status"], "State": "shutdown"}} if t["ID"] == "busy" else t for t in after]
    assert [t["ID"] for t in replicated(job, stopped).delete] == ["busy"]


def test_failed_history_is_trimmed_but_completions_are_kept() -> None:
    job = make_job(concurrent=1, total=2, restart=NO_RESTART_DELAY)
    tasks = [make_task(job, f"f{i}", 0, state="failed", desired="shutdown", created=NOW - 100 + i)
             for i in range(4)]
    tasks += [make_task(job, "ok", 0, state="complete", desired="complete", created=NOW - 10),
              make_task(job, "run", 1)]
    # The slot keeps `limit` tasks, its completion among them, whatever the limit.
    assert sorted(t["ID"] for t in replicated(job, tasks, limit=2).delete) == ["f0", "f1", "f2"]
    assert sorted(t["ID"] for t in replicated(job, tasks, limit=0).delete) == ["f0", "f1", "f2", "f3"]
    assert replicated(job, tasks, limit=-1).empty()


def test_tasks_of_other_services_are_ignored() -> None:
    job = make_job(concurrent=1, total=1)
    other = {**make_task(job, "x", 0, state="complete"), "ServiceID": "other"}
    assert [task_slot(t) for t in replicated(job, [other]).create] == [0]


# ---- slot by slot -----------------------------------------------------------------------------------------

def test_a_slot_is_decided_alone_with_the_state_of_the_others_from_job_slots() -> None:
    job = make_job(concurrent=3, total=10)
    tasks = [make_task(job, "a", 0, state="complete", desired="complete"), make_task(job, "b", 1),
             make_task(job, "c", 2, state="complete"), make_task(job, "d", 3)]
    kept = JobSlots.of(job, tasks, NOW)
    assert kept.states == {0: SlotState.DONE, 1: SlotState.BUSY, 2: SlotState.DONE, 3: SlotState.BUSY}
    plan = reconcile_replicated_job(job, [t for t in tasks if task_slot(t) == 2], READY, NOW, slots={2},
                                    others=kept, new_task_id=ids())
    assert [t["ID"] for t in plan.update] == ["c"]
    assert [task_slot(t) for t in plan.create] == [4]  # slots 0-3 are used; 1 and 3 busy: room for one


def test_job_slots_know_the_lowest_free_slot() -> None:
    slots = JobSlots(0)
    for slot in (0, 1, 3):
        slots.put(slot, SlotState.DONE)
    assert slots.lowest_free == 2
    slots.put(2, SlotState.BUSY)
    assert slots.lowest_free == 4
    slots.put(1, None)
    assert slots.lowest_free == 1 and slots.counts[SlotState.DONE] == 2


def test_the_slot_state_reads_only_the_current_iteration() -> None:
    old = make_job(iteration=0)
    job = make_job(iteration=1, total=5)
    assert job_slot_state(job, 0, [make_task(old, "a", 0, state="complete")], NOW) is None
    assert job_slot_state(job, 0, [make_task(job, "a", 0)], NOW) is SlotState.BUSY
    assert job_slot_state(job, 7, [make_task(job, "a", 7)], NOW) is None  # beyond TotalCompletions


# ---- global jobs ----------------------------------------------------------------------------------------

def global_job(tasks: list[Doc], nodes: dict[str, Doc], job: Doc | None = None, limit: int = 5) -> Plan:
    return reconcile_global_job(job or make_job(global_job=True), tasks, nodes, NOW, limit, new_task_id=ids())


def test_a_global_job_runs_once_on_every_eligible_node() -> None:
    nodes = nodes_map(make_node("n1"), make_node("n2"), make_node("down", state="down"),
                      make_node("paused", availability="pause"), make_node("drained", availability="drain"))
    plan = global_job([], nodes)
    assert sorted((task_node(t), task_slot(t)) for t in plan.create) == [("n1", 0), ("n2", 0)]
    assert all(t["JobIteration"] == {"Index": 0} for t in plan.create)


def test_a_global_job_follows_its_constraints() -> None:
    nodes = nodes_map(make_node("n1", role="manager"), make_node("n2"))
    plan = global_job([], nodes, make_job(global_job=True, constraints=["node.role==manager"]))
    assert [task_node(t) for t in plan.create] == ["n1"]


def test_a_node_whose_task_completed_is_not_run_on_again() -> None:
    job = make_job(global_job=True, restart={"Condition": "any", "Delay": 0})
    tasks = [make_task(job, "a", 0, node="n1", state="complete")]
    plan = global_job(tasks, nodes_map(make_node("n1")), job)
    assert desired_state(updated(plan, "a")) == TaskState.COMPLETE
    assert plan.create == []


def test_a_node_that_joins_during_the_iteration_gets_its_task() -> None:
    job = make_job(global_job=True)
    tasks = [make_task(job, "a", 0, node="n1", state="complete", desired="complete")]
    plan = global_job(tasks, nodes_map(make_node("n1"), make_node("n3")), job)
    assert [task_node(t) for t in plan.create] == ["n3"]


def test_a_failed_global_job_task_is_restarted_on_its_node_or_given_up() -> None:
    retried = make_job(global_job=True, restart=NO_RESTART_DELAY)
    plan = global_job([make_task(retried, "a", 0, node="n1", state="failed")], nodes_map(make_node("n1")), retried)
    assert desired_state(updated(plan, "a")) == TaskState.SHUTDOWN
    assert [task_node(t) for t in plan.create] == ["n1"]

    once = make_job(global_job=True, restart={"Condition": "none"})
    plan = global_job([make_task(once, "a", 0, node="n1", state="failed")], nodes_map(make_node("n1")), once)
    assert desired_state(updated(plan, "a")) == TaskState.COMPLETE
    assert plan.create == []


def test_a_drained_node_has_its_global_job_task_stopped_and_gets_none() -> None:
    job = make_job(global_job=True)
    plan = global_job([make_task(job, "a", 0, node="n1")], nodes_map(make_node("n1", availability="drain")), job)
    assert desired_state(updated(plan, "a")) == TaskState.SHUTDOWN
    assert plan.create == []


def test_a_new_iteration_of_a_global_job_runs_on_every_node_again() -> None:
    old = make_job(global_job=True, iteration=0)
    tasks = [make_task(old, "a", 0, node="n1", state="complete", desired="complete"),
             make_task(old, "b", 0, node="n2")]
    plan = global_job(tasks, READY, make_job(global_job=True, iteration=1))
    assert [t["ID"] for t in plan.delete] == ["a"]
    assert desired_state(updated(plan, "b")) == TaskState.SHUTDOWN
    assert sorted((task_node(t), job_iteration(t)) for t in plan.create) == [("n1", 1), ("n2", 1)]


# ---- properties over runs of a job --------------------------------------------------------------------------

POLICIES = st.sampled_from([
    {"Condition": "any", "Delay": 0}, {"Condition": "on-failure", "Delay": 0}, {"Condition": "none"},
    {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 2}, {"Condition": "on-failure", "Delay": 3 * SECOND},
])
# What happens to a running task between two passes.
OUTCOMES = st.sampled_from(["complete", "complete", "failed", "running", "node down"])


@st.composite
def runs(draw: st.DrawFn) -> tuple[Doc, list[list[str]]]:
    job = make_job(concurrent=draw(st.integers(1, 4)), total=draw(st.integers(0, 8)), restart=draw(POLICIES))
    return job, draw(st.lists(st.lists(OUTCOMES, max_size=5), min_size=1, max_size=25))


def advance(tasks: list[Doc], outcomes: list[str], now: float, down: set[str]) -> list[Doc]:
    """The agents' side: placed tasks run, then end as `outcomes` say; a node may go down."""
    out = []
    live = iter(outcomes)
    for task in tasks:
        if task_is_live(task) and task_node(task) not in down:
            outcome = next(live, "running")
            task = {**task, "NodeID": task["NodeID"] or "n1", "Status": {**task["Status"], "Timestamp": to_rfc3339(now)}}
            if outcome == "node down":
                down.add(task["NodeID"])
                outcome = "running"
            task["Status"]["State"] = outcome
        elif desired_state(task) >= TaskState.SHUTDOWN and not task_state(task).terminal and \
                task_node(task) not in down:
            task = {**task, "Status": {**task["Status"], "State": "shutdown", "Timestamp": to_rfc3339(now)}}
        out.append(task)
    return out


def check_invariants(job: Doc, tasks: list[Doc], completed_before: dict[int, str]) -> dict[int, str]:
    concurrent = job["Spec"]["Mode"]["ReplicatedJob"]["MaxConcurrent"]
    total = job["Spec"]["Mode"]["ReplicatedJob"]["TotalCompletions"]
    live = [t for t in tasks if task_is_live(t)]
    assert len(live) <= concurrent, "more than MaxConcurrent tasks wanted running"
    assert len({task_slot(t) for t in live}) == len(live), "two live tasks in one slot"
    completed = {task_slot(t): t["ID"] for t in tasks if task_state(t) == TaskState.COMPLETE}
    assert all(0 <= s < total for s in completed)
    assert len(completed) <= total
    for slot, task_id in completed_before.items():
        assert completed.get(slot) == task_id, "a completion was lost"
        assert not any(task_slot(t) == slot for t in live), "a completed slot runs again"
    return completed


@settings(max_examples=150, deadline=None)
@given(runs())
def test_a_job_run_keeps_its_limits_and_never_reruns_a_completion(case: tuple[Doc, list[list[str]]]) -> None:
    job, steps = case
    nodes = nodes_map(make_node("n1"), make_node("n2"))
    tasks: list[Doc] = []
    completed: dict[int, str] = {}
    new_id = ids()
    down: set[str] = set()
    for index, outcomes in enumerate(steps):
        now = NOW + 10 * index
        nodes = {nid: make_node(nid, state="down" if nid in down else "ready") for nid in ("n1", "n2")}
        plan = reconcile_replicated_job(job, tasks, nodes, now, new_task_id=new_id)
        tasks = apply(tasks, plan)
        assert reconcile_replicated_job(job, tasks, nodes, now, new_task_id=ids()).empty(), "not idempotent"
        completed = check_invariants(job, tasks, completed)
        tasks = advance(tasks, outcomes, now + 5, down)


def in_slots(plan: Plan, slots: set[int], used: list[int]) -> tuple[list[Any], list[int], list[str]]:
    """What a plan writes to the decided `slots`, and the new tasks it starts there or in free slots (a restart
    in a slot that was not decided is that slot's decision)."""
    return (sorted((t["ID"], t["DesiredState"], t["Status"]["State"]) for t in plan.update if task_slot(t) in slots),
            sorted(task_slot(t) for t in plan.create if task_slot(t) in slots or task_slot(t) not in used),
            sorted(t["ID"] for t in plan.delete if task_slot(t) in slots))


@settings(max_examples=150, deadline=None)
@given(runs(), st.data())
def test_deciding_some_slots_with_job_slots_writes_what_the_whole_job_pass_writes(
        case: tuple[Doc, list[list[str]]], data: st.DataObject) -> None:
    job, steps = case
    nodes = nodes_map(make_node("n1"), make_node("n2"))
    tasks: list[Doc] = []
    down: set[str] = set()
    new_id = ids()
    for index, outcomes in enumerate(steps):
        now = NOW + 10 * index
        full = reconcile_replicated_job(job, tasks, nodes, now, new_task_id=new_id)
        # The loop's way: the slots that changed, with a JobSlots read from the cache for the rest.
        used = sorted({task_slot(t) for t in tasks})
        slots = set(data.draw(st.lists(st.sampled_from(used), unique=True) if used else st.just([])))
        kept = JobSlots.of(job, tasks, now)
        partial = reconcile_replicated_job(job, [t for t in tasks if task_slot(t) in slots], nodes, now,
                                           slots=slots, others=kept, new_task_id=ids())
        assert in_slots(partial, slots, used) == in_slots(full, slots, used)
        assert all(task_slot(t) in slots or task_slot(t) not in used for t in partial.create)
        assert all(task_slot(t) in slots for t in partial.update + partial.delete)
        tasks = advance(apply(tasks, full), outcomes, now + 5, down)


NODE_IDS = ["n1", "n2", "n3"]


@st.composite
def global_scenarios(draw: st.DrawFn) -> tuple[Doc, list[Doc], dict[str, Doc]]:
    job = make_job(global_job=True, restart=draw(POLICIES), iteration=1)
    older = make_job(global_job=True, iteration=0)
    tasks = [make_task(draw(st.sampled_from([job, job, older])), f"t{i}", 0,
                       node=draw(st.sampled_from([*NODE_IDS, "gone"])),
                       state=draw(st.sampled_from(["pending", "assigned", "running", "complete", "failed",
                                                   "shutdown"])),
                       desired=draw(st.sampled_from(["running", "running", "complete", "shutdown"])),
                       created=NOW - draw(st.integers(0, 100)))
             for i in range(draw(st.integers(0, 8)))]
    nodes = nodes_map(*(make_node(n, draw(st.sampled_from(["ready", "down"])),
                                  draw(st.sampled_from(["active", "pause", "drain"])))
                        for n in draw(st.lists(st.sampled_from(NODE_IDS), unique=True))))
    return job, tasks, nodes


@settings(max_examples=200, deadline=None)
@given(global_scenarios())
def test_a_global_job_pass_is_idempotent_and_runs_one_task_per_node(
        case: tuple[Doc, list[Doc], dict[str, Doc]]) -> None:
    job, tasks, nodes = case
    plan = reconcile_global_job(job, tasks, nodes, NOW, new_task_id=ids())
    after = apply(tasks, plan)
    assert reconcile_global_job(job, after, nodes, NOW, new_task_id=ids()).empty()
    current = [t for t in after if job_iteration(t) == 1]
    live_nodes = [task_node(t) for t in current if task_is_live(t)]
    assert len(live_nodes) == len(set(live_nodes)), "two live tasks on one node"
    completed = {task_node(t) for t in current if task_state(t) == TaskState.COMPLETE}
    assert not completed & set(live_nodes), "a node whose task completed runs it again"
    assert not any(task_is_live(t) for t in after if job_iteration(t) != 1), "an older iteration still runs"
    for task in plan.create:
        node = nodes[task_node(task)]
        assert node["Status"]["State"] == "ready" and node["Spec"]["Availability"] == "active"


def test_a_large_job_starts_its_tasks_over_several_passes(monkeypatch: Any) -> None:
    monkeypatch.setattr("shoal.manager.orchestrator.jobs.MAX_STARTS_PER_PASS", 4)
    job = make_job(concurrent=10, total=10)
    first = replicated(job, [])
    assert [task_slot(t) for t in first.create] == [0, 1, 2, 3]
    counter = itertools.count()
    second = reconcile_replicated_job(job, apply([], first), READY, NOW, new_task_id=lambda: f"x{next(counter)}")
    assert [task_slot(t) for t in second.create] == [4, 5, 6, 7]
