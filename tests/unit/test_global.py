"""The global reconciler: one live task per eligible node; table tests and hypothesis properties."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.manager.orchestrator.common import new_task
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.timefmt import SECOND, to_rfc3339
from shoal.types import Doc, Plan, task_is_live
from tests.unit.plans import apply

NOW = 1_800_000_000.0


def make_service(constraints: list[str] | None = None, restart: Doc | None = None, image: str = "agent") -> Doc:
    template: Doc = {"ContainerSpec": {"Image": image}}
    if constraints:
        template["Placement"] = {"Constraints": constraints}
    if restart is not None:
        template["RestartPolicy"] = restart
    return {"ID": "g1", "Version": {"Index": 3},
            "Spec": {"Name": "monitor", "TaskTemplate": template, "Mode": {"Global": {}}}}


def make_node(nid: str, state: str = "ready", availability: str = "active", role: str = "worker",
              labels: dict[str, str] | None = None) -> Doc:
    return {"ID": nid, "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
            "Description": {"Hostname": f"host-{nid}"}, "Status": {"State": state, "Addr": "127.0.0.2"}}


def nodes_map(*nodes: Doc) -> dict[str, Doc]:
    return {n["ID"]: n for n in nodes}


def make_task(service: Doc, tid: str, node: str, state: str = "running", desired: str = "running",
              created: float = NOW - 100, ended: float | None = None) -> Doc:
    task = new_task(service, 0, node, created, task_id=tid)
    task["Status"]["State"] = state
    task["Status"]["Timestamp"] = to_rfc3339(ended if ended is not None else created)
    task["DesiredState"] = desired
    return task


def ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"



def stopped(plan: Plan) -> list[str]:
    return sorted(t["ID"] for t in plan.update if t["DesiredState"] == "shutdown")


def test_one_task_per_ready_active_node_with_node_id_set() -> None:
    nodes = nodes_map(make_node("n1"), make_node("n2"))
    plan = reconcile_global(make_service(), [], nodes, NOW, new_task_id=ids())
    assert sorted((t["NodeID"], t["Slot"], t["Status"]["State"]) for t in plan.create) == [
        ("n1", 0, "pending"), ("n2", 0, "pending")]


def test_new_node_gets_a_task_existing_ones_are_left_alone() -> None:
    svc = make_service()
    nodes = nodes_map(make_node("n1"), make_node("n2"), make_node("n3"))
    tasks = [make_task(svc, "a", "n1"), make_task(svc, "b", "n2")]
    plan = reconcile_global(svc, tasks, nodes, NOW)
    assert [t["NodeID"] for t in plan.create] == ["n3"]
    assert not plan.update


def test_paused_node_keeps_its_task_but_gets_no_new_one() -> None:
    svc = make_service()
    nodes = nodes_map(make_node("n1", availability="pause"), make_node("n2", availability="pause"))
    plan = reconcile_global(svc, [make_task(svc, "a", "n1")], nodes, NOW)
    assert plan.empty()


def test_down_node_keeps_its_task_but_gets_no_new_one() -> None:
    svc = make_service()
    nodes = nodes_map(make_node("n1", state="down"), make_node("n2", state="down"))
    assert reconcile_global(svc, [make_task(svc, "a", "n1")], nodes, NOW).empty()


def test_drained_node_task_is_stopped_status_left_to_the_agent() -> None:
    svc = make_service()
    nodes = nodes_map(make_node("n1", availability="drain"))
    plan = reconcile_global(svc, [make_task(svc, "a", "n1")], nodes, NOW)
    assert stopped(plan) == ["a"]
    assert plan.update[0]["Status"]["State"] == "running"
    assert not plan.create


def test_constraints_decide_which_nodes_run_the_service() -> None:
    svc = make_service(["node.labels.zone==east"])
    nodes = nodes_map(make_node("n1", labels={"zone": "east"}), make_node("n2", labels={"zone": "west"}),
                      make_node("n3"))
    tasks = [make_task(svc, "on-west", "n2")]
    plan = reconcile_global(svc, tasks, nodes, NOW)
    assert [t["NodeID"] for t in plan.create] == ["n1"]
    assert stopped(plan) == ["on-west"]


def test_removed_node_tasks_are_stopped() -> None:
    svc = make_service()
    plan = reconcile_global(svc, [make_task(svc, "a", "gone")], nodes_map(make_node("n1")), NOW, new_task_id=ids())
    # Its node left the swarm for good: nobody can stop or report it, so it is deleted outright.
    assert [t["ID"] for t in plan.delete] == ["a"]
    assert [t["NodeID"] for t in plan.create] == ["n1"]


def test_task_that_ended_is_restarted_on_its_node_after_the_delay() -> None:
    svc = make_service(restart={"Condition": "on-failure", "Delay": 10 * SECOND})
    nodes = nodes_map(make_node("n1"))
    tasks = [make_task(svc, "a", "n1", state="failed", ended=NOW - 2)]
    plan = reconcile_global(svc, tasks, nodes, NOW)
    assert stopped(plan) == ["a"] and not plan.create
    assert plan.wake_at == NOW + 8
    later = reconcile_global(svc, apply(tasks, plan), nodes, NOW + 8, new_task_id=ids())
    assert [(t["NodeID"], t["Slot"]) for t in later.create] == [("n1", 0)]


def test_completed_task_with_on_failure_is_not_restarted() -> None:
    svc = make_service(restart={"Condition": "on-failure", "Delay": 0})
    nodes = nodes_map(make_node("n1"))
    tasks = [make_task(svc, "a", "n1", state="complete", ended=NOW - 2)]
    plan = reconcile_global(svc, tasks, nodes, NOW)
    assert stopped(plan) == ["a"] and not plan.create
    assert reconcile_global(svc, apply(tasks, plan), nodes, NOW + 60).empty()


def test_invalid_constraints_place_nowhere_and_say_so() -> None:
    svc = make_service(["node.role=manager"])
    plan = reconcile_global(svc, [], nodes_map(make_node("n1")), NOW)
    assert not plan.create
    assert any("invalid constraint" in note for note in plan.notes)


def test_history_is_trimmed_per_node() -> None:
    svc = make_service()
    old = [make_task(svc, f"h{i}", "n1", state="failed", desired="shutdown", created=NOW - 900 + i)
           for i in range(3)]
    tasks = [*old, make_task(svc, "live", "n1", created=NOW - 10), make_task(svc, "other", "n2")]
    plan = reconcile_global(svc, tasks, nodes_map(make_node("n1"), make_node("n2")), NOW, history_limit=2)
    assert sorted(t["ID"] for t in plan.delete) == ["h0", "h1"], "2 kept on n1: the live task and h2"


# ---- properties -----------------------------------------------------------------------------------------

NODE_IDS = ["n1", "n2", "n3", "n4"]
STATES = ["pending", "assigned", "running", "complete", "failed", "shutdown", "rejected"]

nodes_strategy = st.lists(
    st.builds(make_node, st.sampled_from(NODE_IDS), st.sampled_from(["ready", "down", "unknown"]),
              st.sampled_from(["active", "pause", "drain"]), st.sampled_from(["worker", "manager"])),
    max_size=4,
    unique_by=lambda n: n["ID"],
).map(lambda ns: nodes_map(*ns))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Doc, list[Doc], dict[str, Doc], int]:
    svc = make_service(
        draw(st.sampled_from([None, ["node.role==manager"], ["node.role!=manager"]])),
        restart={"Condition": draw(st.sampled_from(["any", "on-failure", "none"])),
                 "Delay": draw(st.sampled_from([0, 30 * SECOND])), "MaxAttempts": draw(st.sampled_from([0, 2]))},
    )
    tasks = [
        make_task(svc, f"t{i}", draw(st.sampled_from([*NODE_IDS, "gone"])), state=draw(st.sampled_from(STATES)),
                  desired=draw(st.sampled_from(["running", "shutdown"])), created=NOW - draw(st.integers(0, 500)),
                  ended=NOW - draw(st.integers(0, 60)))
        for i in range(draw(st.integers(0, 10)))
    ]
    return svc, tasks, draw(nodes_strategy), draw(st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_reconciling_an_applied_plan_again_changes_nothing(case: tuple[Doc, list[Doc], dict[str, Doc], int]) -> None:
    svc, tasks, nodes, limit = case
    after = apply(tasks, reconcile_global(svc, tasks, nodes, NOW, limit, new_task_id=ids()))
    again = reconcile_global(svc, after, nodes, NOW, limit, new_task_id=ids())
    assert again.empty(), again.summary()


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_at_most_one_live_task_per_node_and_none_where_not_allowed(
    case: tuple[Doc, list[Doc], dict[str, Doc], int],
) -> None:
    svc, tasks, nodes, limit = case
    after = apply(tasks, reconcile_global(svc, tasks, nodes, NOW, limit, new_task_id=ids()))
    live = Counter(t["NodeID"] for t in after if task_is_live(t))
    assert all(count == 1 for count in live.values())
    wants_manager = svc["Spec"]["TaskTemplate"].get("Placement", {}).get("Constraints")
    for node_id in live:
        node = nodes.get(node_id)
        assert node is not None and node["Spec"]["Availability"] != "drain"
        if wants_manager == ["node.role==manager"]:
            assert node["Spec"]["Role"] == "manager"
