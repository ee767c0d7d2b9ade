"""Rebalance: which tasks move (pure), and the move carried out by the real loops under the update policy."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.orchestrator.loop import OrchestratorLoop
from shoal.manager.orchestrator.rebalance import (
    marked_for_move,
    rebalance_moves,
    rebalancing,
    refuse_rebalance,
)
from shoal.manager.scheduler.loop import SchedulerLoop
from shoal.manager.store.base import Batch
from shoal.types import SERVICES, TASKS, Doc, TaskState, desired_state, task_is_live, task_state
from tests.unit.manager_fixtures import Harness, make_node, make_service, make_task, running_harness


def tasks_on(service: Doc, layout: dict[str, int]) -> list[Doc]:
    tasks, slot = [], 1
    for node_id, count in layout.items():
        for _ in range(count):
            tasks.append(make_task(f"t{slot}", service["ID"], node_id, TaskState.RUNNING, slot=slot))
            slot += 1
    return tasks


def nodes(*ids: str, **states: str) -> dict[str, Doc]:
    return {nid: make_node(nid, state=states.get(nid, "ready")) for nid in ids}


@pytest.mark.parametrize(("layout", "moved_from"), [
    ({"n1": 4, "n2": 0}, {"n1": 2}),
    ({"n1": 5, "n2": 1, "n3": 0}, {"n1": 3}),
    ({"n1": 2, "n2": 1, "n3": 1}, {}),  # within one of even: nothing moves
    ({"n1": 3, "n2": 3, "n3": 0}, {"n1": 1, "n2": 1}),
    ({"n1": 0, "n2": 0}, {}),
])
def test_the_tasks_above_each_nodes_fair_share_move(layout: dict[str, int], moved_from: dict[str, int]) -> None:
    service = make_service("web", "web", sum(layout.values()))
    moves = rebalance_moves(service, tasks_on(service, layout), nodes(*layout))
    assert Counter(t["NodeID"] for t in moves) == Counter(moved_from)
    for node_id, count in moved_from.items():  # the highest slots of a node go
        held = sorted(t["Slot"] for t in tasks_on(service, layout) if t["NodeID"] == node_id)
        assert sorted(t["Slot"] for t in moves if t["NodeID"] == node_id) == held[-count:]


def test_nodes_that_cannot_take_the_service_do_not_count() -> None:
    service = make_service("web", "web", 4)
    # n3 is down: its share is not counted and its task is the reconciler's business, not a rebalance's.
    layout = {"n1": 3, "n2": 0, "n3": 1}
    moves = rebalance_moves(service, tasks_on(service, layout), nodes("n1", "n2", "n3", n3="down"))
    assert Counter(t["NodeID"] for t in moves) == {"n1": 1}


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["Spec"].update(Mode={"Global": {}}), "not a replicated service"),
    (lambda s: s.update(UpdateStatus={"State": "updating"}), "being updated"),
    (lambda s: s["Spec"].update(UpdateConfig={"FailureAction": "rollback"}), "no spec to roll back to"),
])
def test_services_that_cannot_be_rebalanced_say_why(change: object, message: str) -> None:
    service = make_service("web", "web", 2)
    change(service)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        refuse_rebalance(service)


async def _start(h: Harness, service: Doc, *nodes_: Doc) -> tuple[OrchestratorLoop, SchedulerLoop, set[str]]:
    """The service placed and running on `nodes_`; the loops that did it, and its task IDs."""
    orchestrator = OrchestratorLoop(h.cache, h.applier, h.clock)
    scheduler = SchedulerLoop(h.cache, h.applier, h.clock)
    await h.add_nodes(*nodes_)
    await h.add_service(service)
    await orchestrator.run_once()
    await scheduler.run_once()
    for task in h.tasks_of(service["ID"]):
        await h.report(task["ID"], TaskState.RUNNING)
    return orchestrator, scheduler, {t["ID"] for t in h.tasks_of(service["ID"])}


async def _rebalance(h: Harness, orchestrator: OrchestratorLoop, scheduler: SchedulerLoop,
                     service_id: str) -> list[Doc]:
    """Mark the moves as the control API does, then play agents that obey until the update completes; the
    live tasks after it."""
    service = h.cache.get(SERVICES, service_id)
    assert service is not None
    moves = rebalance_moves(service, h.tasks_of(service_id), h.cache.nodes())
    batch = Batch().update(SERVICES, rebalancing(service, h.clock.now()))
    for task in moves:
        batch.update(TASKS, marked_for_move(task))
    await h.commit(batch)
    for _ in range(40):
        await orchestrator.run_once()
        await scheduler.run_once()
        for task in h.tasks_of(service_id):
            state, desired = task_state(task), desired_state(task)
            if desired > TaskState.RUNNING and state == TaskState.RUNNING:
                await h.report(task["ID"], TaskState.SHUTDOWN)
            elif state == TaskState.ASSIGNED:
                await h.report(task["ID"], TaskState.READY if desired == TaskState.READY else TaskState.RUNNING)
            elif state == TaskState.READY and desired == TaskState.RUNNING:
                await h.report(task["ID"], TaskState.RUNNING)
        h.clock.advance(6)
        current = h.cache.get(SERVICES, service_id)
        if current is not None and (current.get("UpdateStatus") or {}).get("State") == "completed":
            return [t for t in h.tasks_of(service_id) if task_is_live(t)]
    raise AssertionError("the rebalance did not complete")


async def test_the_updater_moves_the_marked_tasks_to_the_empty_node_and_nothing_else() -> None:
    async with running_harness() as h:
        orchestrator, scheduler, before = await _start(h, make_service("web", "web", 4), make_node("n1"))
        await h.add_nodes(make_node("n2"))  # a node returns: Docker (and shoal, unasked) leave the tasks be
        assert await orchestrator.run_once() == "" and not await scheduler.run_once()
        live = await _rebalance(h, orchestrator, scheduler, "web")
        assert Counter(t["NodeID"] for t in live) == {"n1": 2, "n2": 2}
        assert len({t["ID"] for t in live} - before) == 2, "exactly the two moved tasks were replaced"


async def test_with_a_preference_the_replacements_go_to_the_emptier_label_value() -> None:
    async with running_harness() as h:
        service = make_service("web", "web", 4)
        service["Spec"]["TaskTemplate"]["Placement"] = {
            "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}
        orchestrator, scheduler, before = await _start(h, service, labelled("n1", "a"), labelled("n2", "a"))
        await h.add_nodes(labelled("n3", "b"))
        live = await _rebalance(h, orchestrator, scheduler, "web")
        assert Counter(t["NodeID"] for t in live) == {"n1": 1, "n2": 1, "n3": 2}
        assert len({t["ID"] for t in live} - before) == 2


def labelled(nid: str, zone: str) -> Doc:
    node = make_node(nid)
    node["Spec"]["Labels"] = {"zone": zone}
    return node


@pytest.mark.parametrize(("layout", "zones", "moved_from"), [
    # zone a holds all 4 and zone b none: 2 leave a, one from each of its nodes
    ({"n1": 2, "n2": 2, "n3": 0}, {"n1": "a", "n2": "a", "n3": "b"}, {"n1": 1, "n2": 1}),
    # per zone even (2 and 2) though not per node: only inside zone a does one move
    ({"n1": 2, "n2": 0, "n3": 2}, {"n1": "a", "n2": "a", "n3": "b"}, {"n1": 1}),
    # nodes even (1 each) but zones 3 against 1: one leaves zone a (of equals, the last by ID)
    ({"n1": 1, "n2": 1, "n3": 1, "n4": 1}, {"n1": "a", "n2": "a", "n3": "a", "n4": "b"}, {"n3": 1}),
])
def test_with_a_spread_preference_the_label_values_are_evened_first(
        layout: dict[str, int], zones: dict[str, str], moved_from: dict[str, int]) -> None:
    service = make_service("web", "web", sum(layout.values()))
    service["Spec"]["TaskTemplate"]["Placement"] = {"Preferences": [{"Spread": {"SpreadDescriptor":
                                                                                "node.labels.zone"}}]}
    nodes_ = {nid: labelled(nid, zone) for nid, zone in zones.items()}
    moves = rebalance_moves(service, tasks_on(service, layout), nodes_)
    assert Counter(t["NodeID"] for t in moves) == Counter(moved_from)
