"""The rolling update planner: table tests per rule, and simulated runs with a fake agent and reconciler."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from shoal.manager.orchestrator.common import is_task_dirty, new_task
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.orchestrator.update import (
    RUNNING_SINCE,
    UpdatePlan,
    failed_within_monitor,
    plan_progress,
    plan_update,
    running_since,
)
from shoal.manager.orchestrator.update_progress import UpdateProgress, slot_key
from shoal.spec import SPEC_DIGEST
from shoal.timefmt import SECOND, from_rfc3339, to_rfc3339
from shoal.types import Doc, TaskState, clone, task_is_live, task_slot, task_state
from tests.unit.plans import apply

NOW = 1_800_000_000.0
OLD_IMAGE, NEW_IMAGE = "app:1", "app:2"


# ---- builders -------------------------------------------------------------------------------------------

def make_service(replicas: int = 3, image: str = NEW_IMAGE, previous_image: str | None = OLD_IMAGE,
                 update: Doc | None = None, rollback: Doc | None = None, status: Doc | None = None,
                 mode: str = "replicated") -> Doc:
    def spec(img: str) -> Doc:
        out: Doc = {"Name": "web", "Labels": {},
                    "TaskTemplate": {"ContainerSpec": {"Image": img}, "ForceUpdate": 0},
                    "Mode": {"Global": {}} if mode == "global" else {"Replicated": {"Replicas": replicas}}}
        if update is not None:
            out["UpdateConfig"] = dict(update)
        if rollback is not None:
            out["RollbackConfig"] = dict(rollback)
        return out

    service: Doc = {"ID": "svc1", "Version": {"Index": 9}, "CreatedAt": to_rfc3339(NOW - 1000),
                    "UpdatedAt": to_rfc3339(NOW - 100), "Spec": spec(image),
                    "Endpoint": {"Spec": {"Mode": "vip"}}}
    if previous_image is not None:
        service["PreviousSpec"] = spec(previous_image)
    if status is not None:
        service["UpdateStatus"] = dict(status)
    return service


def updating(since: float = NOW - 60, state: str = "updating") -> Doc:
    return {"State": state, "StartedAt": to_rfc3339(since), "Message": "update in progress"}


def make_task(service: Doc, tid: str, slot: int, image: str = OLD_IMAGE, state: str = "running",
              desired: str = "running", node: str = "n1", created: float = NOW - 500,
              changed: float | None = None, running_stamp: float | None = None) -> Doc:
    """A task of `service` running `image`, in `state` since `changed` (default: its creation)."""
    task = new_task(service, slot, node, created, task_id=tid)
    if image != service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]:
        # A task of another spec: the digest stamped on it at creation would no longer match its spec.
        task["Spec"]["ContainerSpec"]["Image"] = image
        del task[SPEC_DIGEST]
    task["Status"]["State"] = state
    task["Status"]["Timestamp"] = to_rfc3339(changed if changed is not None else created)
    if running_stamp is not None:
        task["Status"][RUNNING_SINCE] = to_rfc3339(running_stamp)
    task["DesiredState"] = desired
    return task


def make_node(nid: str, state: str = "ready", availability: str = "active") -> Doc:
    return {"ID": nid, "Spec": {"Role": "worker", "Availability": availability, "Labels": {}},
            "Description": {"Hostname": f"host-{nid}"}, "Status": {"State": state, "Addr": "127.0.0.2"}}


NODES = {n: make_node(n) for n in ("n1", "n2", "n3")}


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


def stopped_old(service: Doc, slot: int) -> Doc:
    return make_task(service, f"old{slot}", slot, state="shutdown", desired="shutdown", changed=NOW - 40)


def old_tasks(service: Doc, count: int) -> list[Doc]:
    return [make_task(service, f"old{s}", s) for s in range(1, count + 1)]



def updated(result: UpdatePlan, tid: str) -> Doc:
    matches = [t for t in result.plan.update if t["ID"] == tid]
    assert len(matches) == 1, f"{tid} not updated exactly once"
    return matches[0]


def shut_ids(result: UpdatePlan) -> list[str]:
    return sorted(t["ID"] for t in result.plan.update if t["DesiredState"] == "shutdown")


def new_slots(result: UpdatePlan) -> list[int]:
    return sorted(task_slot(t) for t in result.plan.create)


# ---- nothing to do --------------------------------------------------------------------------------------

COMPLETED: Doc = {"State": "completed", "StartedAt": to_rfc3339(NOW - 50),
                  "CompletedAt": to_rfc3339(NOW - 40), "Message": "update completed"}


@pytest.mark.parametrize("status", [None, COMPLETED])
def test_no_outdated_task_plans_nothing(status: Doc | None) -> None:
    """`service update` without a change (and no --force) replaces nothing and leaves the status alone."""
    svc = make_service(status=status)
    tasks = [make_task(svc, f"t{s}", s, image=NEW_IMAGE) for s in (1, 2, 3)]
    result = plan_update(svc, tasks, NODES, NOW)
    assert result.empty() and result.wake_at is None


def test_a_new_service_still_starting_is_not_an_update() -> None:
    svc = make_service(previous_image=None)
    tasks = [make_task(svc, f"t{s}", s, image=NEW_IMAGE, state="pending") for s in (1, 2)]
    assert plan_update(svc, tasks, NODES, NOW).empty()


def test_force_update_makes_every_task_outdated() -> None:
    svc = make_service(previous_image=NEW_IMAGE, update={"Parallelism": 0})
    tasks = [make_task(svc, f"t{s}", s, image=NEW_IMAGE) for s in (1, 2)]
    svc = clone(svc)  # documents are never changed in place: an update makes a new one
    svc["Spec"]["TaskTemplate"]["ForceUpdate"] = 1
    result = plan_update(svc, tasks, NODES, NOW, new_task_id=ids())
    assert new_slots(result) == [1, 2] and shut_ids(result) == ["t1", "t2"]


# ---- starting an update; batches ------------------------------------------------------------------------

def test_update_starts_with_status_updating_and_first_stop_first_batch() -> None:
    svc = make_service(3)
    result = plan_update(svc, old_tasks(svc, 3), NODES, NOW, new_task_id=ids())
    assert result.service is not None
    assert result.service["UpdateStatus"] == {"State": "updating", "StartedAt": to_rfc3339(NOW),
                                              "Message": "update in progress"}
    assert result.service["Spec"] == svc["Spec"] and "UpdateStatus" not in svc, "input untouched"
    # Default parallelism 1, stop-first: slot 1's old task stops; its replacement waits at desired "ready".
    assert new_slots(result) == [1] and shut_ids(result) == ["old1"]
    created = result.plan.create[0]
    assert created["DesiredState"] == "ready" and created["Spec"]["ContainerSpec"]["Image"] == NEW_IMAGE
    assert created["NodeID"] == "" and created["Status"]["State"] == "pending"


@pytest.mark.parametrize(("parallelism", "slots"), [(0, [1, 2, 3, 4]), (1, [1]), (2, [1, 2])])
def test_parallelism_sets_batch_size(parallelism: int, slots: list[int]) -> None:
    svc = make_service(4, update={"Parallelism": parallelism})
    result = plan_update(svc, old_tasks(svc, 4), NODES, NOW, new_task_id=ids())
    assert new_slots(result) == slots
    assert shut_ids(result) == [f"old{s}" for s in slots]


def test_slots_whose_old_task_is_not_running_go_first() -> None:
    svc = make_service(3, update={"Parallelism": 1})
    tasks = old_tasks(svc, 3)
    tasks[2] = make_task(svc, "old3", 3, state="pending")
    assert new_slots(plan_update(svc, tasks, NODES, NOW, new_task_id=ids())) == [3]


def test_stop_first_new_task_runs_only_after_old_one_stopped() -> None:
    svc = make_service(2, status=updating())
    tasks = [make_task(svc, "old1", 1, desired="shutdown"),  # asked to stop, still running
             make_task(svc, "new1", 1, image=NEW_IMAGE, state="pending", desired="ready", created=NOW - 5),
             make_task(svc, "old2", 2)]
    waiting = plan_update(svc, tasks, NODES, NOW)
    assert waiting.empty() and "waiting" in " ".join(waiting.notes)

    tasks[0] = make_task(svc, "old1", 1, state="shutdown", desired="shutdown", changed=NOW - 1)
    result = plan_update(svc, tasks, NODES, NOW)
    assert updated(result, "new1")["DesiredState"] == "running"
    assert not result.plan.create, "slot 1 is not running the new spec yet: no next batch"


def test_stop_first_promotes_when_old_task_node_is_down() -> None:
    svc = make_service(1, status=updating())
    nodes = {"n1": make_node("n1", state="down"), "n2": make_node("n2")}
    tasks = [make_task(svc, "old1", 1, desired="shutdown", node="n1"),
             make_task(svc, "new1", 1, image=NEW_IMAGE, state="running", desired="ready", node="n2",
                       created=NOW - 5)]
    assert updated(plan_update(svc, tasks, nodes, NOW), "new1")["DesiredState"] == "running"


def test_start_first_creates_new_task_running_and_keeps_old_one() -> None:
    svc = make_service(2, update={"Order": "start-first"})
    result = plan_update(svc, old_tasks(svc, 2), NODES, NOW, new_task_id=ids())
    assert new_slots(result) == [1] and result.plan.create[0]["DesiredState"] == "running"
    assert not result.plan.update, "old task keeps serving until its replacement runs"


def test_start_first_stops_old_task_once_new_one_runs() -> None:
    svc = make_service(2, update={"Order": "start-first", "Delay": 10 * SECOND}, status=updating())
    starting = make_task(svc, "new1", 1, image=NEW_IMAGE, state="starting", created=NOW - 3)
    tasks = [*old_tasks(svc, 2), starting]
    assert plan_update(svc, tasks, NODES, NOW).empty(), "new task not running yet: both stay"

    tasks[2] = make_task(svc, "new1", 1, image=NEW_IMAGE, created=NOW - 3, changed=NOW - 1)
    result = plan_update(svc, tasks, NODES, NOW, new_task_id=ids())
    assert shut_ids(result) == ["old1"] and not result.plan.create
    assert result.wake_at == pytest.approx(NOW - 1 + 10), "next batch Delay after slot 1 runs"


# ---- delay between batches ------------------------------------------------------------------------------

def _after_first_batch(svc: Doc, running_at: list[float]) -> list[Doc]:
    """Slots 1..len(running_at) run the new spec since the given times; the rest run the old one."""
    tasks = []
    for slot in range(1, 5):
        if slot <= len(running_at):
            tasks.append(stopped_old(svc, slot))
            tasks.append(make_task(svc, f"new{slot}", slot, image=NEW_IMAGE, created=NOW - 50,
                                   changed=running_at[slot - 1]))
        else:
            tasks.append(make_task(svc, f"old{slot}", slot))
    return tasks


@pytest.mark.parametrize(("now", "starts"), [(NOW + 3, False), (NOW + 9.99, False), (NOW + 10, True),
                                             (NOW + 30, True)])
def test_next_batch_starts_delay_after_the_previous_one_runs(now: float, starts: bool) -> None:
    svc = make_service(4, update={"Parallelism": 2, "Delay": 10 * SECOND}, status=updating(NOW - 60))
    # The batch counts as running when its last task did (NOW), not its first (NOW - 5).
    result = plan_update(svc, _after_first_batch(svc, [NOW - 5, NOW]), NODES, now, new_task_id=ids())
    if starts:
        assert new_slots(result) == [3, 4] and result.wake_at is None
    else:
        assert result.empty() and result.wake_at == pytest.approx(NOW + 10)


def test_no_next_batch_while_one_task_of_the_batch_is_still_starting() -> None:
    svc = make_service(4, update={"Parallelism": 2}, status=updating(NOW - 60))
    tasks = _after_first_batch(svc, [NOW - 30, NOW - 30])
    tasks[3] = make_task(svc, "new2", 2, image=NEW_IMAGE, state="starting", created=NOW - 50)
    result = plan_update(svc, tasks, NODES, NOW)
    assert result.empty() and result.wake_at is None, "the task's running report wakes the loop"


def test_unparsable_timestamps_are_treated_as_unknown() -> None:
    svc = make_service(1)
    task = make_task(svc, "t1", 1, image=NEW_IMAGE)
    task["Status"]["Timestamp"] = "yesterday"
    task["Status"][RUNNING_SINCE] = 17
    assert running_since(task, NOW) is None


def test_running_since_stamp_is_preferred_over_status_timestamp() -> None:
    svc = make_service(4, update={"Parallelism": 2, "Delay": 10 * SECOND}, status=updating(NOW - 60))
    tasks = _after_first_batch(svc, [NOW - 30, NOW - 30])
    for task in tasks:
        if task["ID"].startswith("new"):
            task["Status"][RUNNING_SINCE] = to_rfc3339(NOW - 2)  # the manager's clock; the agent's runs ahead
    assert plan_update(svc, tasks, NODES, NOW).wake_at == pytest.approx(NOW + 8)


# ---- failures -------------------------------------------------------------------------------------------

def _failed_new_task(svc: Doc, started: float, ended: float, state: str = "failed",
                     stamp: bool = True) -> Doc:
    return make_task(svc, "new1", 1, image=NEW_IMAGE, state=state, created=started - 1, changed=ended,
                     running_stamp=started if stamp else None)


def _with_first_slot_failed(svc: Doc, failed: Doc) -> list[Doc]:
    return [stopped_old(svc, 1), failed,
            make_task(svc, "old2", 2), make_task(svc, "old3", 3)]


@pytest.mark.parametrize(("started", "ended", "stamp", "counts"), [
    (NOW - 10, NOW - 8, True, True),     # 2 s after starting: inside the 5 s monitor window
    (NOW - 10, NOW - 5, True, True),     # exactly at the window's end
    (NOW - 20, NOW - 2, True, False),    # ran 18 s first: after the window
    (NOW - 10, NOW - 6, False, True),    # no start stamp: 5 s after creation (creation = start - 1)
    (NOW - 10, NOW - 4, False, False),   # 7 s after creation, though 6 s after the start it cannot see
])
def test_failure_counts_only_within_monitor_of_starting(started: float, ended: float, stamp: bool,
                                                        counts: bool) -> None:
    svc = make_service(3, status=updating(NOW - 60))  # default monitor 5 s, ratio 0, action pause
    failed = _failed_new_task(svc, started, ended, stamp=stamp)
    assert failed_within_monitor(failed, 5.0, NOW) is counts
    result = plan_update(svc, _with_first_slot_failed(svc, failed), NODES, NOW, new_task_id=ids())
    if counts:
        assert result.service is not None and result.service["UpdateStatus"]["State"] == "paused"
        assert not result.plan.create
    else:
        assert result.service is None and new_slots(result) == [2], "the update carries on"


def _plan_after_early_failure(svc: Doc) -> UpdatePlan:
    """Slot 1's new task failed 2 s after starting; slots 2 and 3 still run the old spec."""
    failed = _failed_new_task(svc, NOW - 4, NOW - 2)
    return plan_update(svc, _with_first_slot_failed(svc, failed), NODES, NOW, new_task_id=ids())


def test_rejected_task_always_counts_and_completed_counts_as_early_termination() -> None:
    svc = make_service(3)
    rejected = _failed_new_task(svc, NOW - 100, NOW, state="rejected", stamp=False)
    assert failed_within_monitor(rejected, 5.0, NOW)
    assert failed_within_monitor(_failed_new_task(svc, NOW - 3, NOW, state="complete"), 5.0, NOW)
    assert not failed_within_monitor(_failed_new_task(svc, NOW - 3, NOW, state="shutdown"), 5.0, NOW)


def test_failures_of_tasks_from_before_the_update_do_not_count() -> None:
    svc = make_service(3, status=updating(NOW - 5))
    failed = _failed_new_task(svc, NOW - 10, NOW - 8)  # created before StartedAt
    result = plan_update(svc, _with_first_slot_failed(svc, failed), NODES, NOW, new_task_id=ids())
    assert result.service is None and new_slots(result) == [2]


def test_pause_sets_status_with_the_task_and_stops_new_batches() -> None:
    svc = make_service(3, status=updating(NOW - 60))
    result = _plan_after_early_failure(svc)
    assert result.service is not None
    status = result.service["UpdateStatus"]
    assert status["State"] == "paused"
    assert status["Message"] == "update paused due to failure or early termination of task new1"
    assert status["StartedAt"] == to_rfc3339(NOW - 60) and "CompletedAt" not in status
    assert result.plan.empty()


def test_continue_ignores_failures() -> None:
    svc = make_service(3, update={"FailureAction": "continue"}, status=updating(NOW - 60))
    result = _plan_after_early_failure(svc)
    assert result.service is None and new_slots(result) == [2]


def test_max_failure_ratio_is_failed_slots_over_slots() -> None:
    svc = make_service(4, update={"Parallelism": 2, "MaxFailureRatio": 0.25}, status=updating(NOW - 60))
    one_slot = [stopped_old(svc, 1),
                make_task(svc, "new1", 1, image=NEW_IMAGE, state="failed", created=NOW - 30,
                          changed=NOW - 28),
                make_task(svc, "new1b", 1, image=NEW_IMAGE, state="failed", created=NOW - 20,
                          changed=NOW - 18),
                make_task(svc, "new1c", 1, image=NEW_IMAGE, created=NOW - 10, changed=NOW - 9),
                make_task(svc, "old2", 2), make_task(svc, "old3", 3), make_task(svc, "old4", 4)]
    # Slot 1 crash-looped twice: one failed slot of four is 0.25, not above the ratio.
    result = plan_update(svc, one_slot, NODES, NOW, new_task_id=ids())
    assert result.service is None and new_slots(result) == [2, 3]

    two_slots = [*one_slot[:-3],
                 stopped_old(svc, 2),
                 make_task(svc, "new2", 2, image=NEW_IMAGE, state="failed", created=NOW - 17,
                           changed=NOW - 15),
                 make_task(svc, "old3", 3), make_task(svc, "old4", 4)]
    paused = plan_update(svc, two_slots, NODES, NOW)
    assert paused.service is not None and paused.service["UpdateStatus"]["State"] == "paused"
    assert paused.service["UpdateStatus"]["Message"].endswith("task new2"), "the latest failure is named"


def test_rollback_action_swaps_in_previous_spec() -> None:
    svc = make_service(3, update={"FailureAction": "rollback"}, status=updating(NOW - 60))
    result = _plan_after_early_failure(svc)
    assert result.service is not None and result.plan.empty()
    rolled = result.service
    assert rolled["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == OLD_IMAGE
    assert rolled["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"] == NEW_IMAGE
    assert rolled["UpdateStatus"] == {
        "State": "rollback_started", "StartedAt": to_rfc3339(NOW),
        "Message": "update rolled back due to failure or early termination of task new1"}
    assert rolled["Version"] == svc["Version"], "written with the version read"


def test_rollback_without_previous_spec_pauses() -> None:
    svc = make_service(3, previous_image=None, update={"FailureAction": "rollback"},
                       status=updating(NOW - 60))
    result = _plan_after_early_failure(svc)
    assert result.service is not None and result.service["UpdateStatus"]["State"] == "paused"
    assert "rollback impossible" in result.service["UpdateStatus"]["Message"]


def test_rollback_uses_rollback_config() -> None:
    svc = make_service(4, update={"Parallelism": 1}, rollback={"Parallelism": 0},
                       status=updating(NOW, state="rollback_started"))
    result = plan_update(svc, old_tasks(svc, 4), NODES, NOW, new_task_id=ids())
    assert new_slots(result) == [1, 2, 3, 4] and result.service is None


def test_failure_during_rollback_pauses_it() -> None:
    svc = make_service(3, rollback={"FailureAction": "pause"},
                       status=updating(NOW - 60, state="rollback_started"))
    result = _plan_after_early_failure(svc)
    assert result.service is not None
    assert result.service["UpdateStatus"]["State"] == "rollback_paused"
    assert result.service["UpdateStatus"]["Message"] == (
        "rollback paused due to failure or early termination of task new1")


# ---- paused ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["paused", "rollback_paused"])
def test_paused_update_starts_nothing(state: str) -> None:
    svc = make_service(3, status=updating(NOW - 60, state=state))
    tasks = [make_task(svc, "old1", 1, state="shutdown", desired="shutdown", changed=NOW - 40),
             _failed_new_task(svc, NOW - 4, NOW - 2), make_task(svc, "old2", 2), make_task(svc, "old3", 3)]
    result = plan_update(svc, tasks, NODES, NOW + 1000)
    assert result.empty() and result.wake_at is None


def test_paused_update_still_finishes_a_start_first_slot_in_flight() -> None:
    svc = make_service(3, update={"Order": "start-first"}, status=updating(NOW - 60, state="paused"))
    tasks = old_tasks(svc, 3) + [make_task(svc, "new2", 2, image=NEW_IMAGE, created=NOW - 5, changed=NOW - 1)]
    result = plan_update(svc, tasks, NODES, NOW)
    assert shut_ids(result) == ["old2"] and not result.plan.create and result.service is None


# ---- completion -----------------------------------------------------------------------------------------

def _all_new(svc: Doc, since: float) -> list[Doc]:
    tasks = []
    for slot in (1, 2, 3):
        tasks.append(stopped_old(svc, slot))
        tasks.append(make_task(svc, f"new{slot}", slot, image=NEW_IMAGE, created=NOW - 55,
                               changed=since))
    return tasks


@pytest.mark.parametrize(("state", "final", "message"), [("updating", "completed", "update completed"),
                                                         ("rollback_started", "rollback_completed",
                                                          "rollback completed")])
def test_completed_once_last_task_ran_for_monitor(state: str, final: str, message: str) -> None:
    svc = make_service(3, status=updating(NOW - 60, state=state))
    tasks = _all_new(svc, NOW - 2)
    monitoring = plan_update(svc, tasks, NODES, NOW)
    assert monitoring.empty() and monitoring.wake_at == pytest.approx(NOW + 3)

    done = plan_update(svc, tasks, NODES, NOW + 3)
    assert done.service is not None and done.plan.empty()
    assert done.service["UpdateStatus"] == {"State": final, "StartedAt": to_rfc3339(NOW - 60),
                                            "CompletedAt": to_rfc3339(NOW + 3), "Message": message}


def test_failure_during_final_monitor_window_still_pauses() -> None:
    svc = make_service(3, status=updating(NOW - 60))
    tasks = _all_new(svc, NOW - 2)
    tasks[1] = make_task(svc, "new1", 1, image=NEW_IMAGE, state="failed", created=NOW - 55, changed=NOW,
                         running_stamp=NOW - 2)
    result = plan_update(svc, tasks, NODES, NOW)
    assert result.service is not None and result.service["UpdateStatus"]["State"] == "paused"


# ---- global services ------------------------------------------------------------------------------------

def test_global_update_replaces_per_node_and_skips_nodes_that_cannot_take_a_task() -> None:
    svc = make_service(mode="global", update={"Parallelism": 0})
    nodes = {"n1": make_node("n1"), "n2": make_node("n2"), "n3": make_node("n3", availability="drain"),
             "n4": make_node("n4", state="down"), "n5": make_node("n5", availability="pause")}
    tasks = [make_task(svc, f"old-{n}", 0, node=n) for n in nodes]
    result = plan_update(svc, tasks, nodes, NOW, new_task_id=ids())
    assert sorted(t["NodeID"] for t in result.plan.create) == ["n1", "n2"]
    assert all(t["Slot"] == 0 and t["DesiredState"] == "ready" for t in result.plan.create)
    assert shut_ids(result) == ["old-n1", "old-n2"]
    assert result.service is not None and result.service["UpdateStatus"]["State"] == "updating"


def test_global_update_one_node_at_a_time() -> None:
    svc = make_service(mode="global", status=updating(NOW - 60))
    tasks = [make_task(svc, "old-n1", 0, node="n1", state="shutdown", desired="shutdown", changed=NOW - 30),
             make_task(svc, "new-n1", 0, node="n1", image=NEW_IMAGE, created=NOW - 31, changed=NOW - 20),
             make_task(svc, "old-n2", 0, node="n2"), make_task(svc, "old-n3", 0, node="n3")]
    result = plan_update(svc, tasks, NODES, NOW, new_task_id=ids())
    assert [t["NodeID"] for t in result.plan.create] == ["n2"] and shut_ids(result) == ["old-n2"]


# ---- decisions come from the store alone ----------------------------------------------------------------

def test_planning_again_after_applying_writes_nothing_more() -> None:
    """A new leader (or the next pass) reading what was written repeats no decision."""
    svc = make_service(4, update={"Parallelism": 2, "Order": "start-first"})
    tasks = old_tasks(svc, 4)
    first = plan_update(svc, tasks, NODES, NOW, new_task_id=ids())
    assert first.service is not None and len(first.plan.create) == 2
    svc, tasks = first.service, apply(tasks, first.plan)
    again = plan_update(svc, tasks, NODES, NOW + 1, new_task_id=ids())
    assert again.empty()


def _summary(progress: UpdateProgress) -> tuple[object, ...]:
    """Everything the updater reads from a progress."""
    return (progress.basis, progress.covered, progress.new_running, progress.outdated, progress.in_flight,
            progress.finishing, progress.waiting, progress.waiting_busy, progress.started,
            {key: sorted(t["ID"] for t in tasks) for key, tasks in progress.failures.items()},
            {key: sorted(t["ID"] for t in state.tasks) for key, state in progress.slots.items()})


# ---- a simulated run ------------------------------------------------------------------------------------

class FakeCluster:
    """The store, an agent and the leader's loop, advanced by explicit time steps.

    The agent takes `start_time` seconds to move a task from pending to running and stops a task one step
    after its desired state becomes shutdown. `holds_ready` makes it wait for desired "running" (swarmkit's
    agent); without it, a task at desired "ready" is started at once (shoal's agent today).
    """

    def __init__(self, service: Doc, tasks: list[Doc], now: float, holds_ready: bool,
                 fail_image: str | None = None) -> None:
        self.service, self.now, self.holds_ready, self.fail_image = service, now, holds_ready, fail_image
        self.tasks = {t["ID"]: t for t in tasks}
        # Kept as the orchestrator keeps it: refreshed slot by slot from the tasks that changed.
        self.progress = UpdateProgress.build(service, tasks, NODES)
        self.seen = dict(self.tasks)
        self.start_time = 2.0
        self.new_id = ids()
        self.created_by_updater: list[tuple[float, str]] = []
        self.max_running_per_slot = 0
        self.min_running = len(tasks)

    def agent_step(self) -> None:
        for tid, task in list(self.tasks.items()):
            state, stamp = task_state(task), to_rfc3339(self.now)
            task = clone(task)
            if task["DesiredState"] in ("shutdown", "remove") and not state.terminal:
                task["Status"].update({"State": "shutdown", "Timestamp": stamp})
            elif state == TaskState.PENDING and not (self.holds_ready and task["DesiredState"] == "ready"):
                task["Status"].update({"State": "starting", "Timestamp": stamp})
            elif state == TaskState.STARTING and self.now >= self.since(task) + self.start_time:
                if task["Spec"]["ContainerSpec"]["Image"] == self.fail_image:
                    task["Status"].update({"State": "failed", "Timestamp": stamp})
                else:
                    task["Status"].update({"State": "running", "Timestamp": stamp, RUNNING_SINCE: stamp})
            self.tasks[tid] = task

    @staticmethod
    def since(task: Doc) -> float:
        return from_rfc3339(task["Status"]["Timestamp"])

    def _kept_progress(self) -> UpdateProgress:
        """The progress refreshed over the slots whose tasks changed since the last step; it must equal one
        built from scratch, and plan the same."""
        changed = {tid for tid in self.tasks.keys() | self.seen.keys() if self.tasks.get(tid) is not self.seen.get(tid)}
        if not self.progress.rebase(self.service):
            self.progress = UpdateProgress.build(self.service, [], NODES)
            changed = set(self.tasks)
        keys = {slot_key(self.service, (self.tasks.get(tid) or self.seen[tid])) for tid in changed}
        for key in keys | self.progress.stale:
            self.progress.refresh(key, [t for t in self.tasks.values() if slot_key(self.service, t) == key], NODES)
        self.progress.stale.clear()
        self.seen = dict(self.tasks)
        fresh = UpdateProgress.build(self.service, list(self.tasks.values()), NODES)
        assert _summary(self.progress) == _summary(fresh)
        return self.progress

    def leader_step(self) -> UpdatePlan:
        """What the loop is asked to do: the updater first, then the reconciler on the result."""
        tasks = list(self.tasks.values())
        result = plan_update(self.service, tasks, NODES, self.now, new_task_id=self.new_id)
        kept = plan_progress(self.service, self._kept_progress(), NODES, self.now, new_task_id=ids())
        assert (kept.summary(), kept.notes, kept.wake_at) == (result.summary(), result.notes, result.wake_at)
        self.created_by_updater += [(self.now, t["ID"]) for t in result.plan.create]
        tasks = apply(tasks, result.plan)
        if result.service is not None:
            self.service = result.service
        reconcile = reconcile_global if "Global" in self.service["Spec"]["Mode"] else reconcile_replicated
        tasks = apply(tasks, reconcile(self.service, tasks, NODES, self.now, new_task_id=self.new_id))
        self.tasks = {t["ID"]: t for t in tasks}
        return result

    def observe(self) -> None:
        running = [t for t in self.tasks.values() if task_state(t) == TaskState.RUNNING]
        self.min_running = min(self.min_running, len(running))
        per_slot: dict[int, int] = {}
        for task in running:
            per_slot[task_slot(task)] = per_slot.get(task_slot(task), 0) + 1
        self.max_running_per_slot = max([self.max_running_per_slot, *per_slot.values()])

    def run(self, until: Callable[[], bool], step: float = 0.5, limit: float = 300) -> None:
        deadline = self.now + limit
        while not until():
            assert self.now < deadline, f"not done by {limit}s: {self.service.get('UpdateStatus')}"
            self.agent_step()
            self.leader_step()
            self.observe()
            self.now += step

    def status(self) -> str:
        return str((self.service.get("UpdateStatus") or {}).get("State"))

    def running_time(self, tid: str) -> float:
        return from_rfc3339(self.tasks[tid]["Status"][RUNNING_SINCE])

    def live(self) -> list[Doc]:
        return [t for t in self.tasks.values() if task_is_live(t)]


@pytest.mark.parametrize("holds_ready", [False, True])
def test_seed_scenario_four_replicas_parallelism_two_delay_ten(holds_ready: bool) -> None:
    svc = make_service(4, update={"Parallelism": 2, "Delay": 10 * SECOND})
    cluster = FakeCluster(svc, old_tasks(svc, 4), NOW, holds_ready)
    cluster.run(lambda: cluster.status() == "completed")

    batches: dict[float, list[str]] = {}
    for at, tid in cluster.created_by_updater:
        batches.setdefault(at, []).append(tid)
    assert [len(b) for b in batches.values()] == [2, 2], "two batches of two"
    first_at, second_at = sorted(batches)
    first_running = max(cluster.running_time(tid) for tid in batches[first_at])
    assert second_at >= first_running + 10, "second batch starts Delay after the first one runs"
    assert second_at < first_running + 10 + 1, "and not much later"

    live = cluster.live()
    assert len(live) == 4 and all(not is_task_dirty(cluster.service, t) for t in live)
    assert all(task_state(t) == TaskState.RUNNING for t in live)
    assert cluster.min_running >= 2, "at most Parallelism slots down at once"
    if holds_ready:
        assert cluster.max_running_per_slot == 1, "stop-first: never two tasks running in a slot"
    completed_at = from_rfc3339(cluster.service["UpdateStatus"]["CompletedAt"])
    last_running = max(cluster.running_time(tid) for tid in batches[second_at])
    assert last_running + 5 <= completed_at < last_running + 5 + 1, "completed after the monitor period"


def test_simulated_start_first_keeps_every_slot_serving() -> None:
    svc = make_service(3, update={"Parallelism": 1, "Order": "start-first"})
    cluster = FakeCluster(svc, old_tasks(svc, 3), NOW, holds_ready=True)
    cluster.run(lambda: cluster.status() == "completed")
    assert cluster.min_running >= 3, "start-first never drops below the replica count"
    assert len(cluster.created_by_updater) == 3
    assert all(not is_task_dirty(cluster.service, t) for t in cluster.live())


def test_simulated_failing_version_rolls_back_and_every_task_runs_the_old_spec() -> None:
    svc = make_service(4, update={"Parallelism": 1, "FailureAction": "rollback"})
    cluster = FakeCluster(svc, old_tasks(svc, 4), NOW, holds_ready=True, fail_image=NEW_IMAGE)
    cluster.run(lambda: cluster.status() == "rollback_completed")
    assert cluster.service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == OLD_IMAGE
    live = cluster.live()
    assert len(live) == 4
    assert all(t["Spec"]["ContainerSpec"]["Image"] == OLD_IMAGE for t in live)
    assert all(task_state(t) == TaskState.RUNNING for t in live)


def test_simulated_failing_version_pauses_after_the_first_failure() -> None:
    svc = make_service(4, update={"Parallelism": 1})
    cluster = FakeCluster(svc, old_tasks(svc, 4), NOW, holds_ready=True, fail_image=NEW_IMAGE)
    cluster.run(lambda: cluster.status() == "paused")
    end = cluster.now + 60
    cluster.run(lambda: cluster.now >= end)
    assert len(cluster.created_by_updater) == 1, "no slot after the failing one is touched"
    old_running = [t for t in cluster.live() if t["Spec"]["ContainerSpec"]["Image"] == OLD_IMAGE]
    assert len(old_running) == 3


def test_simulated_global_update() -> None:
    svc = make_service(mode="global", update={"Parallelism": 1, "Delay": 3 * SECOND})
    tasks = [make_task(svc, f"old-{n}", 0, node=n) for n in NODES]
    cluster = FakeCluster(svc, tasks, NOW, holds_ready=True)
    cluster.run(lambda: cluster.status() == "completed")
    live = cluster.live()
    assert sorted(t["NodeID"] for t in live) == ["n1", "n2", "n3"]
    assert all(not is_task_dirty(cluster.service, t) for t in live)
    times = sorted(at for at, _ in cluster.created_by_updater)
    assert len(times) == 3 and all(b - a >= 3 for a, b in itertools.pairwise(times))


def test_a_rollback_completes_only_when_every_slot_runs_the_previous_spec_again() -> None:
    """The failed task that caused the rollback left its slot empty: the reconciler refills it, and only then
    is the rollback complete."""
    svc = make_service(3, image=OLD_IMAGE, previous_image=NEW_IMAGE, status=updating(NOW - 60, "rollback_started"))
    tasks = [make_task(svc, "failed1", 1, image=NEW_IMAGE, state="failed", desired="shutdown", created=NOW - 58),
             make_task(svc, "old2", 2, image=OLD_IMAGE), make_task(svc, "old3", 3, image=OLD_IMAGE)]
    waiting = plan_update(svc, tasks, NODES, NOW)
    assert waiting.service is None and waiting.plan.empty()
    assert any("waiting for 1 slot to run the current spec" in note for note in waiting.notes)
    refilled = tasks + [make_task(svc, "old1b", 1, image=OLD_IMAGE, created=NOW - 10, running_stamp=NOW - 9)]
    done = plan_update(svc, refilled, NODES, NOW + 10)
    assert done.service is not None and done.service["UpdateStatus"]["State"] == "rollback_completed"


def test_publishing_another_port_makes_tasks_dirty() -> None:
    """A task gets its ports when it starts (node ports, Docker's bindings): new ports need new tasks."""
    service = make_service(replicas=1)
    service["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                      "PublishMode": "ingress"}]}
    task = new_task(service, 1, "", NOW)
    assert not is_task_dirty(service, task)
    service = {**service, "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 9090,
                                                  "PublishMode": "ingress"}]}}
    assert is_task_dirty(service, task)


def test_the_delay_is_between_batches_only_not_after_the_last() -> None:
    # Docker's --update-delay: the update completes Monitor after its last batch runs, not Delay after.
    svc = make_service(2, update={"Parallelism": 1, "Delay": 60 * SECOND, "Monitor": 1 * SECOND},
                       status=updating(NOW - 100))
    tasks = []
    for slot in (1, 2):
        tasks.append(stopped_old(svc, slot))
        tasks.append(make_task(svc, f"new{slot}", slot, image=NEW_IMAGE, created=NOW - 50, changed=NOW - 2))
    result = plan_update(svc, tasks, NODES, NOW)
    assert result.service is not None and result.service["UpdateStatus"]["State"] == "completed"
