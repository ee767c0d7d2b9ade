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
from tests.unit.manager_fixtures import make_node, make_service, make_task, running_harness


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
    (lambda s: s["Spec"]["TaskTemplate"].update(Placement={"Preferences": [{"Spread": {
        "SpreadDescriptor": "node.labels.zone"}}]}), "placement preferences"),
])
def test_services_that_cannot_be_rebalanced_say_why(change: object, message: str) -> None:
    service = make_service("web", "web", 2)
    change(service)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        refuse_rebalance(service)


async def test_the_updater_moves_the_marked_tasks_to_the_empty_node_and_nothing_else() -> None:
    async with running_harness() as h:
        orchestrator = OrchestratorLoop(h.cache, h.applier, h.clock)
        scheduler = SchedulerLoop(h.cache, h.applier, h.clock)
        await h.add_nodes(make_node("n1"))
        await h.add_service(make_service("web", "web", 4))
        await orchestrator.run_once()
        await scheduler.run_once()
        for task in h.tasks_of("web"):
            await h.report(task["ID"], TaskState.RUNNING)
        before = {t["ID"] for t in h.tasks_of("web")}
        await h.add_nodes(make_node("n2"))  # a node returns: Docker (and shoal, unasked) leave the tasks be
        assert await orchestrator.run_once() == "" and not await scheduler.run_once()

        service = h.cache.get(SERVICES, "web")
        assert service is not None
        moves = rebalance_moves(service, h.tasks_of("web"), h.cache.nodes())
        batch = Batch().update(SERVICES, rebalancing(service, h.clock.now()))
        for task in moves:
            batch.update(TASKS, marked_for_move(task))
        await h.commit(batch)
        for _ in range(40):
            await orchestrator.run_once()
            await scheduler.run_once()
            for task in h.tasks_of("web"):
                state, desired = task_state(task), desired_state(task)
                if desired > TaskState.RUNNING and state == TaskState.RUNNING:
                    await h.report(task["ID"], TaskState.SHUTDOWN)
                elif state == TaskState.ASSIGNED:
                    await h.report(task["ID"], TaskState.READY if desired == TaskState.READY else TaskState.RUNNING)
                elif state == TaskState.READY and desired == TaskState.RUNNING:
                    await h.report(task["ID"], TaskState.RUNNING)
            h.clock.advance(6)
            current = h.cache.get(SERVICES, "web")
            if current is not None and (current.get("UpdateStatus") or {}).get("State") == "completed":
                break
        assert current is not None and current["UpdateStatus"]["State"] == "completed"
        live = [t for t in h.tasks_of("web") if task_is_live(t)]
        assert Counter(t["NodeID"] for t in live) == {"n1": 2, "n2": 2}
        assert len({t["ID"] for t in live} - before) == 2, "exactly the two moved tasks were replaced"
