"""Task history trimming per slot (per node for global services)."""

from __future__ import annotations

from shoal.manager.orchestrator.taskreaper import trim_history
from shoal.timefmt import to_rfc3339
from shoal.types import Doc

NOW = 1_800_000_000.0


def task(tid: str, slot: int = 1, node: str = "n1", state: str = "shutdown", desired: str = "shutdown",
         age: float = 100) -> Doc:
    return {"ID": tid, "ServiceID": "s", "Slot": slot, "NodeID": node, "CreatedAt": to_rfc3339(NOW - age),
            "Status": {"State": state}, "DesiredState": desired}


def deleted(tasks: list[Doc], limit: int, existing: set[str] | None = None) -> list[str]:
    return sorted(t["ID"] for t in trim_history(tasks, limit, existing))


def test_keeps_the_limit_per_slot_including_the_live_task_deleting_oldest_first() -> None:
    tasks = [task(f"old{i}", age=1000 - i) for i in range(5)] + [task("live", state="running", desired="running", age=1)]
    assert deleted(tasks, 5) == ["old0"]
    assert deleted(tasks, 3) == ["old0", "old1", "old2"]


def test_slots_are_counted_separately() -> None:
    tasks = [task("a1", slot=1, age=3), task("a2", slot=1, age=2), task("b1", slot=2, age=3)]
    assert deleted(tasks, 1) == ["a1"]


def test_global_tasks_are_grouped_by_node() -> None:
    tasks = [task("x1", slot=0, node="n1", age=3), task("x2", slot=0, node="n1", age=2),
             task("y1", slot=0, node="n2", age=3)]
    assert deleted(tasks, 1) == ["x1"]


def test_tasks_an_agent_may_still_run_are_kept_unless_their_node_is_gone() -> None:
    tasks = [task("stopping", state="running", age=10), task("new", state="running", desired="running", age=1)]
    assert deleted(tasks, 1) == []
    assert deleted(tasks, 1, existing={"n2"}) == ["stopping"]


def test_ended_tasks_still_wanted_are_kept_for_the_restart_decision() -> None:
    tasks = [task("failed", state="failed", desired="running", age=10), task("live", state="running",
                                                                             desired="running", age=1)]
    assert deleted(tasks, 1) == []


def test_never_scheduled_tasks_that_are_unwanted_can_go() -> None:
    tasks = [task("p", node="", state="pending", age=10), task("live", state="running", desired="running", age=1)]
    assert deleted(tasks, 1) == ["p"]


def test_newest_task_of_an_empty_slot_is_kept_even_with_limit_zero() -> None:
    tasks = [task("a", state="failed", age=10), task("b", state="failed", age=5)]
    assert deleted(tasks, 0) == ["a"]


def test_negative_limit_keeps_everything() -> None:
    tasks = [task(f"t{i}", age=i) for i in range(10)]
    assert deleted(tasks, -1) == []
