"""What a `service create` or `service update` would do, decided by the real planners and never written.

`simulate` runs the orchestrator's own decision (`decide`: the reconcilers and the rolling updater) and the
scheduler's `schedule` over copies of the store's documents, with agents that do at once what they are asked
(start a placed task, stop one asked to stop) and a clock that jumps to the planners' next wake-up (update
delay, monitor window). Each pass that creates tasks is a batch: which slot, which node, which task it
replaces, or why no node can take it. A dry run is only as good as the cluster's state when it is made: a
node that fails meanwhile, or a task that fails its start, changes what really happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.manager.orchestrator.loop import Work, decide
from shoal.manager.scheduler.pipeline import NodeLoad, schedule
from shoal.spec import RUNNING_SINCE
from shoal.timefmt import to_rfc3339
from shoal.types import Doc, Plan, TaskState, desired_state, task_node, task_slot, task_state

# Simulated work (tasks looked at over all passes) after which the plan is cut short and says so: an update
# of a huge service one task at a time is many thousands of passes.
WORK_LIMIT = 2_000_000
PASS_LIMIT = 10_000


@dataclass
class Batch:
    """The tasks one pass starts, and those it stops without a replacement (a scale down)."""

    started: list[Doc] = field(default_factory=list)  # {"Slot", "NodeID", "Replaces", "Error"}
    stopped: list[Doc] = field(default_factory=list)  # {"Slot", "TaskID", "NodeID"}

    def view(self) -> Doc:
        return {"Tasks": self.started, "Stops": self.stopped}


@dataclass
class DryRun:
    batches: list[Batch] = field(default_factory=list)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def view(self) -> Doc:
        return {"Batches": [b.view() for b in self.batches], "Truncated": self.truncated, "Notes": self.notes}


def simulate(service: Doc, tasks: list[Doc], nodes: Mapping[str, Doc], placed: NodeLoad, now: float,
             history_limit: int = 5) -> DryRun:
    """The batches the planners would make for `service` (already updated, not yet stored), given its tasks
    and `placed`: what every node runs, this service's tasks included. Nothing passed in is changed."""
    result = DryRun()
    had_tasks = bool(tasks)
    by_id = {t["ID"]: t for t in tasks}
    node_map = dict(nodes)
    node_list = list(node_map.values())
    load = placed.copy()
    refused: dict[str, str] = {}  # task ID -> why no node takes it
    replaced_ids: set[str] = set()  # old tasks a batch already named as replaced
    clock, work = now, 0
    for _ in range(PASS_LIMIT):
        work += len(by_id) + 1
        if work > WORK_LIMIT:
            result.truncated = True
            break
        plan, changed = decide(Work(service["ID"], service, list(by_id.values()), None, used_ports=set()),
                               node_map, clock, history_limit)
        if changed is not None:
            service = changed
        if plan.empty():
            if plan.wake_at is not None and plan.wake_at > clock:
                clock = plan.wake_at  # a delay or a monitor window: nothing happens meanwhile
                continue
            if changed is None:
                break
            continue
        batch = _write(plan, by_id, load, replaced_ids)
        waiting = [t for t in by_id.values() if task_state(t) == TaskState.PENDING
                   and desired_state(t) <= TaskState.RUNNING and t["ID"] not in refused]
        decision = schedule(waiting, node_list, load, clock)
        for task in decision.assigned:
            _put(by_id, load, task)
        for task in decision.unassigned:
            refused[task["ID"]] = str(task["Status"].get("Err") or "")
        if batch.started or batch.stopped:
            for entry in batch.started:
                task = by_id[entry.pop("ID")]
                entry["NodeID"] = task_node(task)
                entry["Error"] = refused.get(task["ID"], "")
            result.batches.append(batch)
        clock += 0.001
        _agents_act(by_id, load, clock)
    else:
        result.truncated = True
    if refused:
        many = len(refused) != 1
        note = (f"{len(refused)} task{'s' if many else ''} could not be placed: {'they wait' if many else 'it waits'}"
                f" for a node that can take {'them' if many else 'it'}")
        if had_tasks:
            note += ", and a rolling update waits with " + ("them" if many else "it")
        result.notes.append(note)
    return result


def _put(by_id: dict[str, Doc], load: NodeLoad, task: Doc) -> None:
    before = by_id.get(task["ID"])
    if before is not None:
        load.remove(before)
    by_id[task["ID"]] = task
    load.add(task)


def _write(plan: Plan, by_id: dict[str, Doc], load: NodeLoad, replaced_ids: set[str]) -> Batch:
    """Write the plan over the simulated tasks; the batch it makes: tasks created (with the task each
    replaces), and tasks stopped with no replacement. A start-first slot's old task is stopped a pass after its
    replacement started: it was reported then (`replaced_ids`), not again."""
    batch = Batch()
    live = {_slot_key(t): t for t in by_id.values() if desired_state(t) <= TaskState.RUNNING
            and not task_state(t).terminal}
    stopping = {}
    for doc in plan.update:
        before = by_id.get(doc["ID"])
        if before is not None and desired_state(before) <= TaskState.RUNNING < desired_state(doc):
            stopping[_slot_key(doc)] = doc
        _put(by_id, load, doc)
    for doc in plan.delete:
        gone = by_id.pop(doc["ID"], None)
        if gone is not None:
            load.remove(gone)
    for doc in plan.create:
        _put(by_id, load, doc)
        replaced = stopping.pop(_slot_key(doc), None) or live.get(_slot_key(doc))
        if replaced is not None:
            replaced_ids.add(replaced["ID"])
        batch.started.append({"ID": doc["ID"], "Slot": task_slot(doc),
                              "Replaces": replaced["ID"] if replaced else "",
                              "ReplacesNodeID": task_node(replaced) if replaced else ""})
    for doc in stopping.values():
        if doc["ID"] not in replaced_ids:
            batch.stopped.append({"Slot": task_slot(doc), "TaskID": doc["ID"], "NodeID": task_node(doc)})
    return batch


def _slot_key(task: Doc) -> int | str:
    """A replicated task's slot; a global task's node."""
    return task_slot(task) or task_node(task)


def _agents_act(by_id: dict[str, Doc], load: NodeLoad, now: float) -> None:
    """Every agent does at once what it was asked: placed tasks start (or get ready), stopped ones stop."""
    stamp = to_rfc3339(now)
    for task in list(by_id.values()):
        state, desired = task_state(task), desired_state(task)
        if state.terminal or state < TaskState.ASSIGNED:
            continue
        if desired > TaskState.RUNNING:
            observed = TaskState.SHUTDOWN
        elif desired == TaskState.READY:
            observed = TaskState.READY
        else:
            observed = TaskState.RUNNING
        if observed != state:
            status = {**task["Status"], "State": observed.wire, "Timestamp": stamp, "Err": ""}
            if observed == TaskState.RUNNING:
                status[RUNNING_SINCE] = stamp
            _put(by_id, load, {**task, "Status": status})
