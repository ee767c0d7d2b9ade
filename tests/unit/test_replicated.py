"""The replicated reconciler: table tests per case, and hypothesis properties (idempotence, at most N live)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.manager.orchestrator.common import (
    DOWN_SINCE,
    DOWN_TASK_GRACE,
    down_task_kept_until,
    is_task_dirty,
    mark_status,
    new_task,
    set_desired,
)
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.timefmt import SECOND, to_rfc3339
from shoal.types import Doc, Plan, TaskState, task_is_live, task_slot
from tests.unit.plans import apply

NOW = 1_800_000_000.0


# ---- builders -------------------------------------------------------------------------------------------

def make_service(replicas: int = 3, restart: Doc | None = None, sid: str = "svc1", image: str = "nginx") -> Doc:
    template: Doc = {"ContainerSpec": {"Image": image}, "ForceUpdate": 0}
    if restart is not None:
        template["RestartPolicy"] = restart
    return {
        "ID": sid,
        "Version": {"Index": 7},
        "Spec": {"Name": "web", "Labels": {"team": "a"}, "TaskTemplate": template,
                 "Mode": {"Replicated": {"Replicas": replicas}}},
    }


def make_node(nid: str, state: str = "ready", availability: str = "active") -> Doc:
    return {"ID": nid, "Spec": {"Role": "worker", "Availability": availability, "Labels": {}},
            "Description": {"Hostname": f"host-{nid}"}, "Status": {"State": state, "Addr": "127.0.0.2"}}


def nodes_map(*nodes: Doc) -> dict[str, Doc]:
    return {n["ID"]: n for n in nodes}


def make_task(service: Doc, tid: str, slot: int, node: str = "n1", state: str = "running",
              desired: str = "running", created: float = NOW - 100, ended: float | None = None,
              **extra: Any) -> Doc:
    task = new_task(service, slot, node, created, task_id=tid)
    task["Status"]["State"] = state
    task["Status"]["Timestamp"] = to_rfc3339(ended if ended is not None else created)
    task["DesiredState"] = desired
    task.update(extra)
    return task


def ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"



def updated(plan: Plan, tid: str) -> Doc:
    matches = [t for t in plan.update if t["ID"] == tid]
    assert len(matches) == 1, f"{tid} not updated exactly once"
    return matches[0]


def live_slots(tasks: list[Doc]) -> list[int]:
    return sorted(task_slot(t) for t in tasks if task_is_live(t))


READY3 = nodes_map(make_node("n1"), make_node("n2"), make_node("n3"))


# ---- common.py ------------------------------------------------------------------------------------------

def test_new_task_is_a_pending_copy_of_the_template() -> None:
    svc = make_service()
    task = new_task(svc, 2, "", NOW, task_id="t1")
    assert task["Spec"] == svc["Spec"]["TaskTemplate"] and task["Spec"] is not svc["Spec"]["TaskTemplate"]
    assert (task["Slot"], task["NodeID"], task["DesiredState"]) == (2, "", "running")
    assert task["Status"]["State"] == "pending"
    assert task["ServiceAnnotations"] == {"Name": "web", "Labels": {"team": "a"}}
    assert task["SpecVersion"] == {"Index": 7}
    assert task["CreatedAt"] == to_rfc3339(NOW)


def test_dirty_when_spec_differs_including_force_update() -> None:
    svc = make_service()
    task = new_task(svc, 1, "", NOW)
    assert not is_task_dirty(svc, task)
    forced = make_service()
    forced["Spec"]["TaskTemplate"]["ForceUpdate"] = 1
    assert is_task_dirty(forced, task)
    assert is_task_dirty(make_service(image="nginx:1.11"), task)


def test_desired_state_is_never_lowered_and_status_never_moves_back() -> None:
    task = make_task(make_service(), "t1", 1, state="running", desired="shutdown")
    assert set_desired(task, TaskState.RUNNING, NOW) is task
    assert set_desired(task, TaskState.REMOVE, NOW)["DesiredState"] == "remove"
    assert mark_status(task, TaskState.ASSIGNED, "back", NOW) is task
    done = mark_status(task, TaskState.FAILED, "exit 1", NOW, err="boom")
    assert done["Status"]["State"] == "failed" and done["Status"]["Err"] == "boom"
    assert task["Status"]["State"] == "running", "the input is not modified"


# ---- scaling --------------------------------------------------------------------------------------------

def test_new_service_gets_one_pending_task_per_slot() -> None:
    plan = reconcile_replicated(make_service(3), [], READY3, NOW, new_task_id=ids())
    assert sorted(t["Slot"] for t in plan.create) == [1, 2, 3]
    assert all(t["NodeID"] == "" and t["Status"]["State"] == "pending" for t in plan.create)
    assert not plan.update and not plan.delete and plan.notes


def test_scale_up_fills_only_missing_slots() -> None:
    svc = make_service(4)
    tasks = [make_task(svc, "a", 1), make_task(svc, "b", 2)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert sorted(t["Slot"] for t in plan.create) == [3, 4]
    assert not plan.update


def test_scale_down_stops_highest_slots_not_running_first() -> None:
    svc = make_service(3)
    tasks = [make_task(svc, f"t{s}", s) for s in range(1, 6)]
    tasks[3] = make_task(svc, "t4", 4, state="starting")
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert [t["ID"] for t in plan.update] == ["t4", "t5"]
    assert all(t["DesiredState"] == "shutdown" for t in plan.update)
    assert all(t["Status"]["State"] in ("running", "starting") for t in plan.update), "status is the agent's"
    assert not plan.create
    assert live_slots(apply(tasks, plan)) == [1, 2, 3]


def test_scale_to_zero_stops_everything_and_marks_unassigned_tasks_shut_down() -> None:
    svc = make_service(0)
    tasks = [make_task(svc, "a", 1), make_task(svc, "b", 2, node="", state="pending")]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert updated(plan, "a")["Status"]["State"] == "running"
    # No agent ever had task b: nothing to stop, and its slot is scaled away, so it is simply deleted.
    assert [t["ID"] for t in plan.delete] == ["b"]
    assert not plan.create


def test_scale_down_then_up_recreates_the_slot_at_once() -> None:
    svc = make_service(2, restart={"Condition": "none"})
    tasks = [make_task(svc, "a", 1), make_task(svc, "b", 2, state="shutdown", desired="shutdown", ended=NOW - 1)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert [t["Slot"] for t in plan.create] == [2]


def test_tasks_of_other_services_are_ignored() -> None:
    svc, other = make_service(1), make_service(1, sid="svc2")
    tasks = [make_task(svc, "a", 1), make_task(other, "x", 1), make_task(other, "y", 5)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert plan.empty()


# ---- node failure, return, drain ------------------------------------------------------------------------

def test_node_down_replaces_task_at_once_and_leaves_its_status() -> None:
    svc = make_service(2, restart={"Condition": "any", "Delay": 3600 * SECOND})
    nodes = nodes_map(make_node("n1", state="down"), make_node("n2"))
    tasks = [make_task(svc, "a", 1, node="n1"), make_task(svc, "b", 2, node="n2")]
    plan = reconcile_replicated(svc, tasks, nodes, NOW, new_task_id=ids())
    old = updated(plan, "a")
    assert old["DesiredState"] == "shutdown" and old["Status"]["State"] == "running"
    assert [(t["Slot"], t["NodeID"]) for t in plan.create] == [(1, "")]
    assert plan.wake_at is None
    assert any("down" in note for note in plan.notes)


def test_node_removed_replaces_task() -> None:
    svc = make_service(1)
    tasks = [make_task(svc, "a", 1, node="gone")]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert [t["Slot"] for t in plan.create] == [1]


def test_node_returning_does_not_move_tasks_back() -> None:
    svc = make_service(1)
    tasks = [make_task(svc, "a", 1, node="n1", desired="shutdown", created=NOW - 100),
             make_task(svc, "b", 1, node="n2", created=NOW - 50)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert plan.empty()


def test_drained_node_tasks_are_moved() -> None:
    svc = make_service(1)
    nodes = nodes_map(make_node("n1", availability="drain"), make_node("n2"))
    plan = reconcile_replicated(svc, [make_task(svc, "a", 1, node="n1")], nodes, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert [t["Slot"] for t in plan.create] == [1]


def test_paused_node_keeps_its_tasks() -> None:
    svc = make_service(1)
    nodes = nodes_map(make_node("n1", availability="pause"))
    assert reconcile_replicated(svc, [make_task(svc, "a", 1, node="n1")], nodes, NOW).empty()


# ---- tasks that ended, restart policy -------------------------------------------------------------------

def test_failed_task_waits_for_the_restart_delay() -> None:
    svc = make_service(1, restart={"Condition": "any", "Delay": 10 * SECOND})
    tasks = [make_task(svc, "a", 1, state="failed", ended=NOW - 4)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert not plan.create
    assert plan.wake_at == pytest.approx(NOW + 6)
    # Deciding again before the delay changes nothing; at wake_at the replacement is made.
    after = apply(tasks, plan)
    assert reconcile_replicated(svc, after, READY3, NOW + 1).empty()
    later = reconcile_replicated(svc, after, READY3, NOW + 6, new_task_id=ids())
    assert [t["Slot"] for t in later.create] == [1]


def test_failed_task_past_its_delay_is_replaced_in_the_same_plan() -> None:
    svc = make_service(1)  # default delay 5 s
    tasks = [make_task(svc, "a", 1, state="failed", ended=NOW - 6)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert [t["Slot"] for t in plan.create] == [1]
    assert "Restarts" not in plan.create[0], "unlimited attempts need no history"


@pytest.mark.parametrize(
    ("condition", "state", "restarted"),
    [
        ("any", "complete", True),
        ("any", "failed", True),
        ("on-failure", "failed", True),
        ("on-failure", "rejected", True),
        ("on-failure", "complete", False),
        ("none", "failed", False),
    ],
)
def test_restart_condition(condition: str, state: str, restarted: bool) -> None:
    svc = make_service(1, restart={"Condition": condition, "Delay": 0})
    tasks = [make_task(svc, "a", 1, state=state, ended=NOW - 1)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert bool(plan.create) is restarted
    # Not restarted stays not restarted.
    assert reconcile_replicated(svc, apply(tasks, plan), READY3, NOW + 3600).empty()


def test_max_attempts_counts_restarts_carried_in_the_tasks() -> None:
    svc = make_service(1, restart={"Condition": "any", "Delay": 0, "MaxAttempts": 2})
    tasks = [make_task(svc, "a", 1, state="failed", ended=NOW - 1)]
    now, new_ids = NOW, ids()
    for expected in ([NOW], [NOW, NOW + 10]):
        plan = reconcile_replicated(svc, tasks, READY3, now, new_task_id=new_ids)
        assert len(plan.create) == 1
        assert plan.create[0]["Restarts"] == expected
        tasks = apply(tasks, plan)
        # The replacement fails too.
        tasks = [mark_status(t, TaskState.FAILED, "exit 1", now + 5) if t is plan.create[0] else t for t in tasks]
        now += 10
    plan = reconcile_replicated(svc, tasks, READY3, now)
    assert not plan.create
    assert any("not restarted" in note for note in plan.notes)


def test_restarts_outside_the_window_do_not_count() -> None:
    window = {"Condition": "any", "Delay": 0, "MaxAttempts": 2, "Window": 60 * SECOND}
    svc = make_service(1, restart=window)
    old = [NOW - 600, NOW - 500]
    tasks = [make_task(svc, "a", 1, state="failed", ended=NOW - 1, Restarts=old)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert len(plan.create) == 1 and plan.create[0]["Restarts"] == [NOW]
    recent = [NOW - 30, NOW - 20]
    tasks = [make_task(svc, "a", 1, state="failed", ended=NOW - 1, Restarts=recent)]
    assert not reconcile_replicated(svc, tasks, READY3, NOW).create


def test_new_spec_forgets_restart_history() -> None:
    policy = {"Condition": "any", "Delay": 3600 * SECOND, "MaxAttempts": 1}
    old_svc = make_service(1, restart=policy)
    tasks = [make_task(old_svc, "a", 1, state="failed", desired="shutdown", ended=NOW - 1, Restarts=[NOW - 2])]
    new_svc = make_service(1, restart=policy, image="nginx:1.11")
    plan = reconcile_replicated(new_svc, tasks, READY3, NOW)
    assert len(plan.create) == 1 and "Restarts" not in plan.create[0]
    assert plan.create[0]["Spec"]["ContainerSpec"]["Image"] == "nginx:1.11"


def test_node_failure_replacement_carries_restart_history_forward() -> None:
    svc = make_service(1, restart={"Condition": "any", "MaxAttempts": 3})
    nodes = nodes_map(make_node("n1", state="down"))
    tasks = [make_task(svc, "a", 1, node="n1", Restarts=[NOW - 50])]
    plan = reconcile_replicated(svc, tasks, nodes, NOW)
    assert plan.create[0]["Restarts"] == [NOW - 50]


# ---- duplicates, history ---------------------------------------------------------------------------------

def test_duplicate_live_tasks_in_a_slot_keep_the_one_furthest_along() -> None:
    svc = make_service(1)
    tasks = [make_task(svc, "a", 1, state="running", created=NOW - 100),
             make_task(svc, "b", 1, node="n2", state="starting", created=NOW - 50)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    assert [t["ID"] for t in plan.update] == ["b"]
    assert live_slots(apply(tasks, plan)) == [1]


def test_start_first_update_overlap_is_left_to_the_updater() -> None:
    old_svc, new_svc = make_service(1), make_service(1, image="nginx:1.11")
    tasks = [make_task(old_svc, "a", 1, state="running"), make_task(new_svc, "b", 1, node="n2", state="starting")]
    assert reconcile_replicated(new_svc, tasks, READY3, NOW).empty()


def test_history_beyond_the_limit_is_deleted_oldest_first() -> None:
    svc = make_service(1)
    history = [make_task(svc, f"h{i}", 1, state="shutdown", desired="shutdown", created=NOW - 1000 + i)
               for i in range(6)]
    tasks = [*history, make_task(svc, "live", 1, created=NOW - 10)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW, history_limit=5)
    assert sorted(t["ID"] for t in plan.delete) == ["h0", "h1"]
    assert not plan.update and not plan.create


def test_plan_never_updates_a_task_it_deletes() -> None:
    svc = make_service(0)
    tasks = [make_task(svc, "a", 1, node="", state="pending", created=NOW - 50),
             make_task(svc, "b", 1, state="shutdown", desired="shutdown", created=NOW - 10)]
    plan = reconcile_replicated(svc, tasks, READY3, NOW, history_limit=0)
    # Replicas 0: slot 1 is scaled away, so its finished tasks go too (the pending one is only deleted, not
    # first updated).
    assert sorted(t["ID"] for t in plan.delete) == ["a", "b"]
    assert not plan.update


def test_scaled_away_slots_leave_no_history() -> None:
    svc = make_service(1)
    tasks = [make_task(svc, "a", 1), make_task(svc, "b", 2, state="shutdown", desired="shutdown"),
             make_task(svc, "c", 3, desired="shutdown")]
    plan = reconcile_replicated(svc, tasks, READY3, NOW)
    # b has stopped: deleted. c is still stopping on its node: kept until its agent reports.
    assert [t["ID"] for t in plan.delete] == ["b"]


# ---- properties -----------------------------------------------------------------------------------------

NODE_IDS = ["n1", "n2", "n3", "n4"]
STATES = ["pending", "assigned", "running", "complete", "failed", "shutdown", "rejected", "orphaned"]

def maybe_down_since(node: Doc, ago: int | None) -> Doc:
    """A down node that says when it went down (a while ago, or within the grace), or that does not say."""
    if node["Status"]["State"] != "down" or ago is None:
        return node
    return down_since(node, NOW - ago)


nodes_strategy = st.lists(
    st.builds(maybe_down_since,
              st.builds(make_node, st.sampled_from(NODE_IDS), st.sampled_from(["ready", "down", "unknown"]),
                        st.sampled_from(["active", "pause", "drain"])),
              st.sampled_from([None, 2, int(DOWN_TASK_GRACE) + 5])),
    max_size=4,
    unique_by=lambda n: n["ID"],
).map(lambda ns: nodes_map(*ns))

policy_strategy = st.fixed_dictionaries({
    "Condition": st.sampled_from(["any", "on-failure", "none"]),
    "Delay": st.sampled_from([0, 5 * SECOND, 60 * SECOND]),
    "MaxAttempts": st.sampled_from([0, 1, 3]),
    "Window": st.sampled_from([0, 30 * SECOND]),
})


@st.composite
def scenarios(draw: st.DrawFn, mixed_specs: bool) -> tuple[Doc, list[Doc], dict[str, Doc], int]:
    svc = make_service(draw(st.integers(0, 5)), restart=draw(policy_strategy))
    older = make_service(1, restart=svc["Spec"]["TaskTemplate"]["RestartPolicy"], image="old")
    tasks = []
    for i in range(draw(st.integers(0, 12))):
        spec_of = draw(st.sampled_from([svc, older])) if mixed_specs else svc
        state = draw(st.sampled_from(STATES))
        tasks.append(make_task(
            spec_of, f"t{i}", draw(st.integers(0, 7)),
            node="" if state == "pending" and draw(st.booleans()) else draw(st.sampled_from([*NODE_IDS, "gone"])),
            state=state,
            desired=draw(st.sampled_from(["running", "shutdown"])),
            created=NOW - draw(st.integers(0, 500)),
            ended=NOW - draw(st.integers(0, 120)),
            Restarts=sorted(NOW - draw(st.integers(0, 120)) for _ in range(draw(st.integers(0, 3)))),
        ))
    return svc, tasks, draw(nodes_strategy), draw(st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(scenarios(mixed_specs=True))
def test_reconciling_an_applied_plan_again_changes_nothing(case: tuple[Doc, list[Doc], dict[str, Doc], int]) -> None:
    svc, tasks, nodes, limit = case
    after = apply(tasks, reconcile_replicated(svc, tasks, nodes, NOW, limit, new_task_id=ids()))
    again = reconcile_replicated(svc, after, nodes, NOW, limit, new_task_id=ids())
    assert again.empty(), again.summary()


@settings(max_examples=300, deadline=None)
@given(scenarios(mixed_specs=False))
def test_never_more_than_replicas_live_tasks(case: tuple[Doc, list[Doc], dict[str, Doc], int]) -> None:
    svc, tasks, nodes, limit = case
    wanted = svc["Spec"]["Mode"]["Replicated"]["Replicas"]
    after = apply(tasks, reconcile_replicated(svc, tasks, nodes, NOW, limit, new_task_id=ids()))
    # A task on a node that went down moments ago stays wanted beside its replacement (not on a healthy node).
    kept = [t for t in after if task_is_live(t) and (down_task_kept_until(t, nodes) or 0) > NOW]
    slots = live_slots([t for t in after if t not in kept])
    assert len(slots) <= wanted
    assert len(set(slots)) == len(slots), "one live task per slot"
    assert all(1 <= s <= wanted for s in slots)
    for task in after:
        if task_is_live(task) and task["NodeID"] and task not in kept:
            node = nodes.get(task["NodeID"])
            assert node is not None and node["Status"]["State"] != "down"
            assert node["Spec"]["Availability"] != "drain"


# ---- deciding some slots only -----------------------------------------------------------------------------

def test_with_slots_only_those_slots_are_decided() -> None:
    service = make_service(replicas=3)
    nodes = nodes_map(make_node("n1"), make_node("gone", state="down"))
    tasks = [make_task(service, "t1", 1, node="gone"), make_task(service, "t2", 2, node="gone"),
             make_task(service, "t9", 9)]

    plan = reconcile_replicated(service, tasks, nodes, NOW, slots={2, 9}, new_task_id=ids())

    assert sorted(t["ID"] for t in plan.update) == ["t2", "t9"]  # slot 1 is not looked at
    assert [task_slot(t) for t in plan.create] == [2]
    # The same decision as a full pass makes for those slots.
    full = reconcile_replicated(service, tasks, nodes, NOW, new_task_id=ids())
    assert sorted(t["ID"] for t in full.update) == ["t1", "t2", "t9"]
    assert sorted(task_slot(t) for t in full.create) == [1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["running", "failed", "pending"]),
                          st.sampled_from(["n1", "down"])), max_size=10),
       st.integers(0, 5), st.sets(st.integers(1, 6)))
def test_deciding_slot_by_slot_writes_what_the_full_pass_writes_for_them(
        layout: list[tuple[int, str, str]], replicas: int, slots: set[int]) -> None:
    service = make_service(replicas=replicas)
    nodes = nodes_map(make_node("n1"), make_node("down", state="down"))
    tasks = [make_task(service, f"t{i}", slot, node=node, state=state)
             for i, (slot, state, node) in enumerate(layout)]

    partial = reconcile_replicated(service, tasks, nodes, NOW, slots=slots, new_task_id=ids())
    full = reconcile_replicated(service, tasks, nodes, NOW, new_task_id=ids())

    def touched(plan: Plan) -> tuple[list[str], list[int], list[str]]:
        return (sorted(t["ID"] for t in plan.update if task_slot(t) in slots),
                sorted(task_slot(t) for t in plan.create if task_slot(t) in slots),
                sorted(t["ID"] for t in plan.delete if task_slot(t) in slots))

    assert touched(partial) == touched(full)
    assert all(task_slot(t) in slots for t in partial.update + partial.create + partial.delete)


# ---- a down node's tasks stay wanted for a while ----------------------------------------------------------

def down_since(node: Doc, at: float) -> Doc:
    return {**node, DOWN_SINCE: at}


def test_a_task_on_a_node_just_down_is_replaced_at_once_but_kept_wanted() -> None:
    service = make_service(replicas=1)
    nodes = nodes_map(down_since(make_node("n1", state="down"), NOW - 3), make_node("n2"))
    original = make_task(service, "orig", 1, node="n1")

    plan = reconcile_replicated(service, [original], nodes, NOW, new_task_id=ids())

    assert plan.update == []  # not told to stop: its node may be back in a moment
    assert [task_slot(t) for t in plan.create] == [1]  # recovery does not wait
    assert plan.wake_at == NOW - 3 + DOWN_TASK_GRACE


def test_once_the_grace_has_passed_the_down_nodes_task_is_stopped() -> None:
    service = make_service(replicas=1)
    nodes = nodes_map(down_since(make_node("n1", state="down"), NOW - DOWN_TASK_GRACE - 1), make_node("n2"))
    original = make_task(service, "orig", 1, node="n1")
    replacement = make_task(service, "new", 1, node="n2", created=NOW - DOWN_TASK_GRACE)

    plan = reconcile_replicated(service, [original, replacement], nodes, NOW, new_task_id=ids())

    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [("orig", "shutdown")]
    assert plan.create == []


@pytest.mark.parametrize("replacement_state", ["assigned", "starting", "running"])
def test_a_node_back_within_the_grace_keeps_its_running_task_and_the_replacement_goes(
        replacement_state: str) -> None:
    service = make_service(replicas=1)
    nodes = nodes_map(make_node("n1"), make_node("n2"))  # n1 is back
    original = make_task(service, "orig", 1, node="n1", created=NOW - 1000)
    replacement = make_task(service, "new", 1, node="n2", state=replacement_state, created=NOW - 5)

    plan = reconcile_replicated(service, [original, replacement], nodes, NOW, new_task_id=ids())

    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [("new", "shutdown")]


def test_a_node_back_without_its_task_keeps_the_replacement() -> None:
    # Rebooted: its first report says the task is gone (failed), so the replacement stays.
    service = make_service(replicas=1)
    nodes = nodes_map(make_node("n1"), make_node("n2"))
    original = make_task(service, "orig", 1, node="n1", state="failed", created=NOW - 1000)
    replacement = make_task(service, "new", 1, node="n2", created=NOW - 5)

    plan = reconcile_replicated(service, [original, replacement], nodes, NOW, new_task_id=ids())

    assert [(t["ID"], t["DesiredState"]) for t in plan.update] == [("orig", "shutdown")]
    assert plan.create == []


def test_a_node_whose_labels_no_longer_satisfy_the_constraints_loses_its_task() -> None:
    svc = make_service(1)
    svc["Spec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.labels.zone==east"]}
    east = make_node("n1")
    east["Spec"]["Labels"] = {"zone": "east"}
    task = make_task(svc, "a", 1, node="n1")
    assert reconcile_replicated(svc, [task], nodes_map(east, make_node("n2")), NOW).empty()
    west = make_node("n1")
    west["Spec"]["Labels"] = {"zone": "west"}  # relabelled: the constraint enforcer moves the task
    plan = reconcile_replicated(svc, [task], nodes_map(west, make_node("n2")), NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
    assert any("placement constraints" in note for note in plan.notes)
    assert [t["Slot"] for t in plan.create] == [1]


def test_a_demoted_node_loses_a_task_constrained_to_managers() -> None:
    svc = make_service(1)
    svc["Spec"]["TaskTemplate"]["Placement"] = {"Constraints": ["node.role==manager"]}
    manager = make_node("n1")
    manager["Spec"]["Role"] = "manager"
    task = make_task(svc, "a", 1, node="n1")
    assert reconcile_replicated(svc, [task], nodes_map(manager), NOW).empty()
    plan = reconcile_replicated(svc, [task], nodes_map(make_node("n1")), NOW)
    assert updated(plan, "a")["DesiredState"] == "shutdown"
