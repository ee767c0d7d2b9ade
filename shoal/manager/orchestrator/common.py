"""Pieces shared by the reconcilers: making tasks, moving their states forward, and drafting a plan.

Everything here is pure: documents in, new documents out. Task copies are shallow except for the part that
changes (Status), so callers must treat every document as read-only.

Two conventions the reconcilers rely on:

- A task that is no longer wanted gets `DesiredState` "shutdown"; its `Status` is the agent's to write. The one
  exception is a task no agent has received yet (observed state below "assigned"): nobody else would ever
  report its end, so the manager records "shutdown" itself.
- An agent reports "shutdown" for a task it stopped because the manager asked, and "complete", "failed" or
  "rejected" only for a task that ended on its own. The restart policy applies only to the latter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Collection

from shoal import codec
from shoal.errors import InvalidArgument
from shoal.ids import new_id
from shoal.manager.orchestrator import restart
from shoal.manager.scheduler.constraints import matches
from shoal.spec import (
    DOWN_SINCE,
    JOB_ITERATION,
    JOB_STATUS,
    SPEC_DIGEST,
    Constraint,
    job_iteration,
    parse_constraints,
)
from shoal.timefmt import from_rfc3339, to_rfc3339
from shoal.types import (
    Availability,
    Doc,
    NodeState,
    Plan,
    TaskState,
    constraints,
    desired_state,
    node_availability,
    node_state,
    task_is_live,
    task_node,
    task_state,
    version_of,
)

# Observed states an agent reports for a task that ended without being asked to.
ENDED_ON_ITS_OWN = frozenset({TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED})

IdFactory = Callable[[], str]

# On a task: the digest of the spec and published ports it was created with (see `is_task_dirty`).
# On a node: when (unix time) it was marked down.
# How long the tasks of a down node stay wanted beside their replacements. A daemon that crashes and comes back
# within it keeps its tasks, which never stopped (their replacements are stopped instead); a machine that stays
# away loses them. Replacements start at once either way, so recovery is as fast.
DOWN_TASK_GRACE = 15.0


def new_task(service: Doc, slot: int, node_id: str, now: float, task_id: str | None = None) -> Doc:
    """A pending task for `service` in `slot` (0 for global tasks, which come with their `node_id` set)."""
    spec = service["Spec"]
    stamp = to_rfc3339(now)
    return {
        "ID": task_id or new_id(),
        "Version": {"Index": 0},
        "CreatedAt": stamp,
        "UpdatedAt": stamp,
        "Name": "",
        "Labels": {},
        "Spec": codec.loads(codec.dumps(spec.get("TaskTemplate") or {})),  # a deep copy, several times faster
        "ServiceID": service["ID"],
        "Slot": slot,
        "NodeID": node_id,
        "Status": {"Timestamp": stamp, "State": TaskState.PENDING.wire, "Message": "", "Err": ""},
        "DesiredState": TaskState.RUNNING.wire,
        "ServiceAnnotations": {"Name": spec.get("Name", ""), "Labels": dict(spec.get("Labels") or {})},
        "SpecVersion": {"Index": version_of(service)},
        # The ports the task publishes (host mode binds them on its node), as swarmkit copies them.
        "Endpoint": codec.loads(codec.dumps(service.get("Endpoint") or {})),
        SPEC_DIGEST: service_digest(service),
        # A job's task belongs to the job's current run (swarmkit's JobIteration).
        **({JOB_ITERATION: {"Index": job_iteration(service)}} if JOB_STATUS in service else {}),
    }


def _canonical(doc: object) -> str:
    return json.dumps(doc or {}, sort_keys=True, separators=(",", ":"))


def _digest(template: object, ports: object) -> str:
    text = _canonical({"Ports": ports or [], "Template": template or {}})
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class _ByIdentity:
    """Digests remembered per document object (documents are never changed in place), a bounded number.
    Shared by the loop and the orchestrator's decision thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: dict[int, tuple[Doc, str]] = {}
        self._lock = threading.Lock()

    def get(self, doc: Doc, compute: Callable[[Doc], str]) -> str:
        entry = self.entries.get(id(doc))
        if entry is not None and entry[0] is doc:
            return entry[1]
        digest = compute(doc)
        with self._lock:
            if len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[id(doc)] = (doc, digest)  # the reference keeps id(doc) from being reused meanwhile
        return digest


_service_digests = _ByIdentity(256)
_task_digests = _ByIdentity(4096)


def service_digest(service: Doc) -> str:
    """A digest of the service's TaskTemplate and published ports: what a task of its current spec carries."""
    return _service_digests.get(service, lambda s: _digest(s["Spec"].get("TaskTemplate"),
                                                           (s.get("Endpoint") or {}).get("Ports")))


def task_digest(task: Doc) -> str:
    """The digest of the spec a task was created with: stamped on it then, computed for older tasks."""
    stamped = task.get(SPEC_DIGEST)
    if isinstance(stamped, str):
        return stamped
    return _task_digests.get(task, lambda t: _digest(t.get("Spec"), (t.get("Endpoint") or {}).get("Ports")))


def is_task_dirty(service: Doc, task: Doc) -> bool:
    """True when the task runs a spec other than the service's current TaskTemplate, or publishes other ports
    (a task is given its ports when it starts: node ports for the routing mesh, Docker's port bindings).

    ForceUpdate is part of the comparison on purpose: bumping it (`service update --force`) makes every task
    dirty, so the updater replaces them even though nothing else changed. Compared by digest (a task's spec
    never changes), so the updater's passes over a hundred thousand tasks encode no JSON.
    """
    return task_digest(task) != service_digest(service)


def set_desired(task: Doc, state: TaskState, now: float) -> Doc:
    """A copy of `task` with DesiredState raised to `state`; the task itself when that would lower it."""
    if desired_state(task) >= state:
        return task
    changed = dict(task)
    changed["DesiredState"] = state.wire
    changed["UpdatedAt"] = to_rfc3339(now)
    return changed


def mark_status(task: Doc, state: TaskState, message: str, now: float, err: str = "") -> Doc:
    """A copy of `task` with a new observed Status; the task itself (unchanged) when that would move it back."""
    if state < task_state(task):
        return task
    changed = dict(task)
    status = dict(task.get("Status") or {})
    status.update({"Timestamp": to_rfc3339(now), "State": state.wire, "Message": message, "Err": err})
    changed["Status"] = status
    changed["UpdatedAt"] = to_rfc3339(now)
    return changed


# ---- small readers the reconcilers share ----------------------------------------------------------------

def created_at(task: Doc) -> float:
    text = task.get("CreatedAt")
    if not text:
        return 0.0
    try:
        return from_rfc3339(text)
    except (ValueError, InvalidArgument):
        return 0.0


def age_order(task: Doc) -> tuple[float, int, str]:
    """Sort key putting a slot's tasks oldest first; version and ID break ties deterministically."""
    return (created_at(task), version_of(task), str(task.get("ID", "")))


def newest(tasks: Collection[Doc]) -> Doc | None:
    return max(tasks, key=age_order, default=None)


def ended_on_its_own(task: Doc) -> bool:
    return task_state(task) in ENDED_ON_ITS_OWN


def never_reached_an_agent(task: Doc) -> bool:
    return task_state(task) < TaskState.ASSIGNED


def node_trouble(task: Doc, nodes: dict[str, Doc]) -> str | None:
    """Why a replicated task's node can no longer keep it ("down", "removed", "drained", or no longer what its
    constraints ask: labels or role changed, as swarmkit's constraint enforcer moves it), or None."""
    node_id = task_node(task)
    if not node_id:
        return None
    node = nodes.get(node_id)
    if node is None:
        return "removed"
    if node_state(node) == NodeState.DOWN:
        return "down"
    if node_availability(node) == Availability.DRAIN:
        return "drained"
    exprs = tuple(constraints(task.get("Spec") or {}))
    if exprs and not matches(_parsed(exprs), node):
        return "no longer satisfies the task's placement constraints"
    return None


@functools.lru_cache(maxsize=256)
def _parsed(exprs: tuple[str, ...]) -> list[Constraint]:
    """Constraints parsed once per distinct list: node_trouble runs for every task a pass looks at."""
    try:
        return parse_constraints(list(exprs))
    except InvalidArgument:
        return []  # the API refuses these; a stored one that does not parse moves nothing


def keeper_order(task: Doc) -> tuple[int, float, str]:
    """Of several live tasks in one slot, the one with the highest key stays: furthest along, then oldest (a
    task whose node came back after it was replaced keeps running; its replacement goes)."""
    return (int(task_state(task)), -created_at(task), str(task.get("ID", "")))


def down_task_kept_until(task: Doc, nodes: dict[str, Doc]) -> float | None:
    """Until when a task on a down node stays wanted (beside its replacement), or None when its node is not
    down: DOWN_TASK_GRACE after the node went down."""
    node = nodes.get(task_node(task))
    if node is None or node_state(node) != NodeState.DOWN:
        return None
    since = node.get(DOWN_SINCE)
    return float(since) + DOWN_TASK_GRACE if isinstance(since, int | float) else None


def short(task_or_node_id: str) -> str:
    return task_or_node_id[:12]


# ---- the plan being drafted -----------------------------------------------------------------------------

class PlanDraft:
    """Collects one reconcile pass's decisions against a view of the tasks as they will be once applied.

    Each task appears at most once in the resulting plan, so the applier never writes one document twice.
    """

    def __init__(self, tasks: list[Doc], new_task_id: IdFactory | None = None) -> None:
        self._original = {t["ID"]: t for t in tasks}
        self._changed: dict[str, Doc] = {}
        self._created: list[Doc] = []
        self._notes: list[str] = []
        self._wake_at: float | None = None
        self.new_task_id: IdFactory = new_task_id or new_id

    def current(self, task: Doc) -> Doc:
        return self._changed.get(task["ID"], task)

    def _put(self, before: Doc, after: Doc) -> None:
        if after is not before:
            self._changed[after["ID"]] = after

    def shut_down(self, task: Doc, now: float, message: str) -> None:
        """Ask for `task` to stop. A task no agent has yet is recorded as stopped right away (see module doc)."""
        before = self.current(task)
        after = set_desired(before, TaskState.SHUTDOWN, now)
        if never_reached_an_agent(after):
            after = mark_status(after, TaskState.SHUTDOWN, message, now)
        self._put(before, after)

    def want(self, task: Doc, state: TaskState, now: float) -> None:
        """Raise the task's desired state to `state` (a job's ended task: "complete", done for good)."""
        before = self.current(task)
        self._put(before, set_desired(before, state, now))

    def create(self, task: Doc) -> None:
        self._created.append(task)

    def note(self, text: str) -> None:
        self._notes.append(text)

    def wake(self, at: float) -> None:
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)

    def view(self) -> list[Doc]:
        """The service's tasks as they will be after this plan is applied."""
        return [self._changed.get(tid, t) for tid, t in self._original.items()] + self._created

    def finish(self, deletions: list[Doc]) -> Plan:
        deleted = {t["ID"] for t in deletions}
        return Plan(
            create=list(self._created),
            # A task the plan deletes needs no update first (and the update would stale the delete's version).
            update=[t for tid, t in self._changed.items() if tid not in deleted],
            delete=[self._original.get(t["ID"], t) for t in deletions],
            wake_at=self._wake_at,
            notes=list(self._notes),
        )


def live_tasks(tasks: list[Doc]) -> list[Doc]:
    return [t for t in tasks if task_is_live(t)]


def ended_while_wanted(task: Doc) -> bool:
    """The task stopped although the manager still wants it running."""
    return desired_state(task) <= TaskState.RUNNING and task_state(task).terminal


# ---- the decisions both reconcilers make about one slot (a global service's slot is its node) ------------

def stop_ended(draft: PlanDraft, tasks: list[Doc], now: float, where: str) -> None:
    """Tasks that ended while still wanted get desired state shutdown, so they become history."""
    for task in tasks:
        if ended_while_wanted(task):
            draft.shut_down(task, now, "task ended")
            draft.note(f"{where}: task {short(task['ID'])} {task_state(task).wire}")


def keep_one(draft: PlanDraft, service: Doc, live: list[Doc], now: float, where: str) -> None:
    """Stop all but one of several live tasks in one slot.

    A slot holding both a task of the current spec and one of an older spec is a start-first update in
    flight; the updater owns that overlap, so it is left alone.
    """
    if len(live) < 2 or len({is_task_dirty(service, t) for t in live}) > 1:
        return
    keeper = max(live, key=keeper_order)
    for task in live:
        if task is not keeper:
            draft.shut_down(task, now, "duplicate task in slot")
            draft.note(f"{where}: duplicate task {short(task['ID'])} stopping")


def refill(
    draft: PlanDraft,
    service: Doc,
    slot: int,
    node_id: str,
    history: list[Doc],
    now: float,
    where: str,
) -> None:
    """Give an empty slot its next task: now, at a later time (plan.wake_at), or not at all.

    The slot's newest task says why it is empty. One that ended on its own is replaced as the restart policy
    says; one that was stopped or moved by the manager (scale, node failure, drain) is replaced at once.
    """
    policy = (service["Spec"].get("TaskTemplate") or {}).get("RestartPolicy") or {}
    last = newest(history)
    carried: list[float] = []
    if last is not None and not is_task_dirty(service, last):
        if ended_on_its_own(last):
            at = restart.restart_at(policy, last, restart.restarts_of(last), now)
            if at is None:
                draft.note(f"{where}: task {short(last['ID'])} {task_state(last).wire}, not restarted (restart policy)")
                return
            if at > now:
                draft.wake(at)
                draft.note(f"{where}: restart in {at - now:.1f}s")
                return
            carried = restart.history_for_restart(policy, last, now)
        else:
            carried = restart.history_carried_forward(policy, last, now)
    task = new_task(service, slot, node_id, now, draft.new_task_id())
    if carried:
        task[restart.RESTARTS] = carried
    draft.create(task)
    draft.note(f"{where}: new task {short(task['ID'])}")
