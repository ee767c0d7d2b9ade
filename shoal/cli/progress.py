"""The progress display of `service create|update|scale|rollback`, as docker's ServiceProgress shows it.

A job is followed as docker follows it (`job progress`, `active tasks`, "job complete"), over the tasks of
its current iteration; unlike docker, the wait also ends, with an error, once a task failed and its restart
policy gives up on it (the manager marks it desired "complete"): the job cannot complete then.

The decisions are pure: `check_service` and `observe_tasks` take the progress state, what the daemon
returned and the current (monotonic) time, and return the lines to show and whether the wait is over.
`wait_on_service` is the thin loop around them that polls every 200 ms and draws the lines.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from shoal.api.client import Client, filters_param
from shoal.spec import GLOBAL, GLOBAL_JOB, MODE_NAMES, REPLICATED, REPLICATED_JOB, job_iteration, job_limits
from shoal.timefmt import SECOND
from shoal.types import Doc

POLL_INTERVAL = 0.2
DEFAULT_MONITOR = 5.0
MAX_PROGRESS_BARS = 20
MAX_PROGRESS = 9
MAX_JOB_PROGRESS = 10
# docker ranks states to pick the most relevant task per slot; states it does not know are ignored.
STATE_RANK = {
    "new": 1, "allocated": 2, "pending": 3, "assigned": 4, "accepted": 5, "preparing": 6, "ready": 7,
    "starting": 8, "running": 9, "complete": 10, "shutdown": 11, "failed": 12, "rejected": 13,
}
LONGEST_STATE = max(len(s) for s, rank in STATE_RANK.items() if rank <= STATE_RANK["complete"])
MAX_ERROR_WIDTH = 75
K = TypeVar("K", int, str)


@dataclass
class ProgressEvent:
    """One progress message: a line keyed by `id` ("overall progress", "1/3", "verify"), or a plain message
    when `id` is empty. `current`/`total` make it a bar, which only a terminal shows."""

    id: str
    text: str
    current: int = 0
    total: int = 0

    @property
    def is_bar(self) -> bool:
        return self.current > 0 or self.total > 0

    def line(self) -> str:
        return f"{self.id}: {self.text}" if self.id else self.text


@dataclass
class ProgressState:
    service_ref: str
    mode: str | None = None
    initialized: bool = False
    done: bool = False
    slot_map: dict[int, int] = field(default_factory=dict)
    converged: bool = False
    converged_at: float | None = None
    monitor: float = DEFAULT_MONITOR
    rollback: bool = False
    final_message: ProgressEvent | None = None
    job_iteration: int = -1  # a job's iteration, read once as docker does
    job_nodes: set[str] = field(default_factory=set)  # a global job's nodes when the wait began


@dataclass
class Step:
    events: list[ProgressEvent] = field(default_factory=list)
    finished: bool = False
    error: str | None = None


def check_service(state: ProgressState, service: Doc, now: float) -> Step:
    """First half of a poll: the service's update status and the end of the verify wait."""
    step = Step()
    spec = service.get("Spec") or {}
    monitor_ns = int((spec.get("UpdateConfig") or {}).get("Monitor") or 0)
    if monitor_ns:
        state.monitor = monitor_ns / SECOND
    if state.mode is None:
        mode = spec.get("Mode") or {}
        state.mode = next((MODE_NAMES[key] for key in (REPLICATED, GLOBAL, REPLICATED_JOB, GLOBAL_JOB)
                           if mode.get(key) is not None), None)
        if state.mode is None:
            step.error = "unrecognized service mode"
            return step
        state.job_iteration = job_iteration(service)

    update = service.get("UpdateStatus") or {}
    update_state = update.get("State") or ""
    message = str(update.get("Message") or "")
    if update_state == "updating":
        state.rollback = False
    elif update_state == "completed":
        if not state.converged:
            step.finished = True
            return step
    elif update_state == "paused":
        step.error = f"service update paused: {message}"
        return step
    elif update_state == "rollback_started":
        if not state.rollback and message:
            step.events.append(ProgressEvent("rollback", message))
        state.rollback = True
    elif update_state == "rollback_paused":
        step.error = f"service rollback paused: {message}"
        return step
    elif update_state == "rollback_completed":
        if not state.converged:
            state.final_message = ProgressEvent("rollback", message)
        state.rollback = True

    if state.converged and state.converged_at is not None and now - state.converged_at >= state.monitor:
        step.events.append(ProgressEvent("verify", f"Service {state.service_ref} converged"))
        if state.final_message is not None:
            step.events.append(state.final_message)
        step.finished = True
    return step


def observe_tasks(state: ProgressState, service: Doc, tasks: Sequence[Doc], nodes: Sequence[Doc],
                  now: float) -> Step:
    """Second half of a poll: per-slot (or per-node) lines, the overall count and the verify countdown."""
    step = Step()
    active_nodes = {n["ID"] for n in nodes if (n.get("Status") or {}).get("State") != "down"}
    if state.mode in (MODE_NAMES[REPLICATED_JOB], MODE_NAMES[GLOBAL_JOB]):
        return _observe_job(state, service, tasks, active_nodes)
    if state.mode == "global":
        converged = _update_global(state, tasks, active_nodes, step.events)
    else:
        converged = _update_replicated(state, service, tasks, active_nodes, step.events)
    state.converged = converged
    if converged:
        if state.converged_at is None:
            state.converged_at = now
        wait = state.monitor - (now - state.converged_at)
        if wait >= 0:
            # docker computes wait/1s+1 a few nanoseconds after converging: whole seconds left, rounded up.
            seconds = max(1, math.ceil(wait))
            step.events.append(ProgressEvent("verify", f"Waiting {seconds} seconds to verify that tasks are stable..."))
    else:
        if state.converged_at is not None:
            step.events.append(ProgressEvent("verify", "Detected task failure"))
        state.converged_at = None
    return step


def progress_step(state: ProgressState, service: Doc, tasks: Sequence[Doc], nodes: Sequence[Doc],
                  now: float) -> Step:
    """One whole poll (both halves), for callers that fetched everything up front."""
    first = check_service(state, service, now)
    if first.finished or first.error:
        return first
    second = observe_tasks(state, service, tasks, nodes, now)
    return Step(first.events + second.events, second.finished, second.error)


def _rank(state: str | None) -> int:
    return STATE_RANK.get(str(state or ""), 0)


def _terminal(state: str | None) -> bool:
    return _rank(state) > STATE_RANK["running"]


def _overall(count: int, total: int, rollback: bool) -> ProgressEvent:
    if rollback:
        return ProgressEvent("overall progress", f"rolling back update: {count} out of {total} tasks")
    return ProgressEvent("overall progress", f"{count} out of {total} tasks")


def _truncate_error(message: str) -> str:
    message = message.replace("\n", " ")
    return message[: MAX_ERROR_WIDTH - 1] + "…" if len(message) > MAX_ERROR_WIDTH else message


def _best_task(existing: Doc | None, task: Doc) -> bool:
    """Whether `task` should replace `existing` for its slot/node: lowest desired state, then lowest state."""
    if existing is None:
        return True
    if _rank(existing.get("DesiredState")) < _rank(task.get("DesiredState")):
        return False
    return not (_rank(existing.get("DesiredState")) == _rank(task.get("DesiredState"))
                and _rank(_state(existing)) <= _rank(_state(task)))


def _state(task: Doc) -> str:
    return str((task.get("Status") or {}).get("State") or "")


def _task_event(event_id: str, task: Doc) -> ProgressEvent | None:
    error = str((task.get("Status") or {}).get("Err") or "")
    if error:
        return ProgressEvent(event_id, _truncate_error(error))
    if not _terminal(task.get("DesiredState")) and not _terminal(_state(task)):
        return ProgressEvent(event_id, _state(task).ljust(LONGEST_STATE), _rank(_state(task)), MAX_PROGRESS)
    return None


def _update_replicated(state: ProgressState, service: Doc, tasks: Sequence[Doc], active_nodes: set[str],
                       events: list[ProgressEvent]) -> bool:
    mode = (service.get("Spec") or {}).get("Mode") or {}
    replicated = mode.get("Replicated") or {}
    count = replicated.get("Replicas")
    replicas = 1 if count is None else int(count)
    if not state.initialized:
        events.append(_overall(0, replicas, state.rollback))
        if replicas <= MAX_PROGRESS_BARS:
            events.extend(ProgressEvent(f"{i}/{replicas}", " ") for i in range(1, replicas + 1))
        state.initialized = True

    by_slot: dict[int, Doc] = {}
    for task in tasks:
        if not _rank(task.get("DesiredState")) or not _rank(_state(task)):
            continue
        slot = int(task.get("Slot") or 0)
        if not _best_task(by_slot.get(slot), task):
            continue
        if task.get("NodeID") and task["NodeID"] not in active_nodes:
            continue
        by_slot[slot] = task

    if state.done and any(_state(t) != "running" for t in by_slot.values()):
        state.done = False

    running = 0
    for slot in sorted(by_slot):
        task = by_slot[slot]
        mapped = state.slot_map.setdefault(slot, len(state.slot_map) + 1)
        if not _terminal(task.get("DesiredState")) and _state(task) == "running":
            running += 1
        if state.done or replicas > MAX_PROGRESS_BARS or mapped > replicas:
            continue
        event = _task_event(f"{mapped}/{replicas}", task)
        if event is not None:
            events.append(event)

    if not state.done:
        events.append(_overall(running, replicas, state.rollback))
        if running == replicas:
            state.done = True
    return running == replicas


def _update_global(state: ProgressState, tasks: Sequence[Doc], active_nodes: set[str],
                   events: list[ProgressEvent]) -> bool:
    by_node: dict[str, Doc] = {}
    for task in tasks:
        if not _rank(task.get("DesiredState")) or not _rank(_state(task)):
            continue
        node_id = str(task.get("NodeID") or "")
        if _best_task(by_node.get(node_id), task):
            by_node[node_id] = task
    node_count = len(by_node)

    if not state.initialized:
        if node_count == 0:
            events.append(ProgressEvent("overall progress", "waiting for new tasks"))
            return False
        events.append(_overall(0, node_count, state.rollback))
        state.initialized = True

    if state.done and any(_state(t) != "running" for t in by_node.values()):
        state.done = False

    running = 0
    for node_id in sorted(by_node):
        task = by_node[node_id]
        if node_id not in active_nodes:
            continue
        if not _terminal(task.get("DesiredState")) and _state(task) == "running":
            running += 1
        if state.done or node_count > MAX_PROGRESS_BARS:
            continue
        event = _task_event(node_id[:12], task)
        if event is not None:
            events.append(event)

    if not state.done:
        events.append(_overall(running, node_count, state.rollback))
        if running == node_count:
            state.done = True
    return running == node_count


# ---- jobs -----------------------------------------------------------------------------------------------

def _observe_job(state: ProgressState, service: Doc, tasks: Sequence[Doc], active_nodes: set[str]) -> Step:
    """A poll of a job: finished when every task of its iteration completed (docker exits with "job
    complete", without the verify wait), failed when one failed for good."""
    step = Step()
    current = [t for t in tasks if job_iteration(t) == state.job_iteration]
    if state.mode == MODE_NAMES[REPLICATED_JOB]:
        done = _update_replicated_job(state, service, current, step.events)
    else:
        done = _update_global_job(state, current, tasks, active_nodes, step.events)
    state.converged = done
    if done:
        step.events.append(ProgressEvent("", "job complete"))
        step.finished = True
        return step
    for task in current:
        if task.get("DesiredState") == "complete" and _state(task) in ("failed", "rejected"):
            where = (f"task {task_slot_label(task, service)}" if state.mode == MODE_NAMES[REPLICATED_JOB]
                     else f"the task on node {str(task.get('NodeID') or '')[:12]}")
            error = str((task.get("Status") or {}).get("Err") or _state(task))
            step.error = f"job cannot complete: {where} {_state(task)} and its restart policy gives up ({error})"
            break
    return step


def task_slot_label(task: Doc, service: Doc) -> str:
    """"3/5": a replicated job's task as its progress line names it (slots count from 0)."""
    return f"{int(task.get('Slot') or 0) + 1}/{job_limits(service)[1]}"


def _lowest_state(tasks: Sequence[Doc], key: Callable[[Doc], K]) -> dict[K, Doc]:
    """Per slot (or node), the task docker shows: the one in the lowest known state."""
    best: dict[K, Doc] = {}
    for task in tasks:
        if not _rank(task.get("DesiredState")) or not _rank(_state(task)):
            continue
        existing = best.get(key(task))
        if existing is None or _rank(_state(existing)) > _rank(_state(task)):
            best[key(task)] = task
    return best


def _job_task_event(event_id: str, task: Doc) -> ProgressEvent:
    error = str((task.get("Status") or {}).get("Err") or "")
    if error:
        return ProgressEvent(event_id, _truncate_error(error))
    return ProgressEvent(event_id, _state(task).ljust(LONGEST_STATE), _rank(_state(task)), MAX_JOB_PROGRESS)


def _update_replicated_job(state: ProgressState, service: Doc, tasks: Sequence[Doc],
                           events: list[ProgressEvent]) -> bool:
    concurrent, total = job_limits(service)
    digits, active_digits = len(str(total)), len(str(concurrent))

    def overall(active: int, completed: int) -> None:
        events.append(ProgressEvent("job progress", f"{completed:>{digits}} out of {total} complete",
                                    completed, total))
        wanted = min(total - completed, concurrent)
        events.append(ProgressEvent("active tasks", f"{active:>{active_digits}} out of "
                                                    f"{wanted:>{active_digits}} tasks"))

    if not state.initialized:
        overall(0, 0)
        if total <= MAX_PROGRESS_BARS:
            events.extend(ProgressEvent(f"{i}/{total}", " ") for i in range(1, total + 1))
        state.initialized = True
    by_slot = _lowest_state(tasks, lambda t: int(t.get("Slot") or 0))
    active = completed = 0
    for slot in sorted(by_slot):
        task = by_slot[slot]
        if total <= MAX_PROGRESS_BARS:
            events.append(_job_task_event(task_slot_label(task, service), task))
        if _rank(_state(task)) < STATE_RANK["complete"]:
            active += 1
        completed += _state(task) == "complete"
    overall(active, completed)
    return completed == total


def _update_global_job(state: ProgressState, current: Sequence[Doc], tasks: Sequence[Doc],
                       active_nodes: set[str], events: list[ProgressEvent]) -> bool:
    if not state.initialized:
        # The job's nodes are those with a task when the wait begins; nodes that join later are not awaited.
        if not current and (tasks or active_nodes):
            events.append(ProgressEvent("job progress", "waiting for tasks"))
            return False
        state.job_nodes = {str(t.get("NodeID") or "") for t in current}
        state.initialized = True
    total = len(state.job_nodes)
    by_node = _lowest_state([t for t in current if str(t.get("NodeID") or "") in state.job_nodes],
                            lambda t: str(t.get("NodeID") or ""))
    completed = 0
    for node_id in sorted(by_node):
        task = by_node[node_id]
        if total <= MAX_PROGRESS_BARS:
            events.append(_job_task_event(node_id, task))
        completed += _state(task) == "complete"
    events.append(ProgressEvent("job progress", f"{completed:>{len(str(total))}} out of {total} complete",
                                completed, total))
    return completed == total


# ---- drawing --------------------------------------------------------------------------------------------

class LineRenderer:
    """Not a terminal: one line per message, bars left out (what docker prints into a pipe)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, event: ProgressEvent) -> None:
        if event.is_bar:
            return
        self.out.write(event.line() + "\n")
        self.out.flush()

    def finish(self) -> None:
        pass


class TerminalRenderer:
    """A terminal: each keyed line is redrawn in place; a plain message starts a new block."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.rows: dict[str, int] = {}

    def write(self, event: ProgressEvent) -> None:
        if not event.id:
            self.rows = {}
            self.out.write(event.text + "\n")
            self.out.flush()
            return
        if event.id not in self.rows:
            self.rows[event.id] = len(self.rows)
            self.out.write("\n")
        up = len(self.rows) - self.rows[event.id]
        text = f"{event.id}: {event.text}"
        if event.is_bar:
            text += " " + _bar(event.current, event.total)
        self.out.write(f"\x1b[{up}A\x1b[2K\r{text}\r\x1b[{up}B")
        self.out.flush()

    def finish(self) -> None:
        self.out.flush()


class NullRenderer:
    def write(self, event: ProgressEvent) -> None:
        pass

    def finish(self) -> None:
        pass


def _bar(current: int, total: int) -> str:
    if shutil.get_terminal_size((80, 24)).columns <= 110 or total <= 0:
        return ""
    filled = min(50, int(current / total * 100) // 2)
    return f"[{'=' * filled}>{' ' * (50 - filled)}] "


class ProgressFailed(Exception):
    """The service did not converge: its update (or rollback) paused, or the service went away."""


def wait_on_service(client: Client, service_ref: str, out: TextIO, *, quiet: bool = False,
                    tty: bool | None = None, monotonic: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep, fail_on_rollback: bool = False) -> None:
    """Poll until the service converged (and stayed so for its monitor period); raise ProgressFailed.

    With `fail_on_rollback` (`service update`), an update that the swarm rolled back is a failure too.
    """
    if tty is None:
        tty = out.isatty()
    renderer: LineRenderer | TerminalRenderer | NullRenderer
    renderer = NullRenderer() if quiet else (TerminalRenderer(out) if tty else LineRenderer(out))
    state = ProgressState(service_ref)

    def show(step: Step) -> None:
        for event in step.events:
            renderer.write(event)
        if step.error:
            renderer.finish()
            raise ProgressFailed(step.error)

    try:
        while True:
            service = client.get(f"/services/{service_ref}")
            step = check_service(state, service, monotonic())
            show(step)
            if step.finished:
                renderer.finish()
                if fail_on_rollback and state.rollback:
                    message = state.final_message.text if state.final_message else "update rolled back"
                    raise ProgressFailed(f"service update rolled back: {message}")
                return
            filters = filters_param({"_up-to-date": ["true"], "service": [service["ID"]]})
            tasks = client.get("/tasks", params={"filters": filters}) or []
            nodes = client.get("/nodes") or []
            step = observe_tasks(state, service, tasks, nodes, monotonic())
            show(step)
            if step.finished:  # a job that completed
                renderer.finish()
                return
            sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        if not state.converged:
            renderer.write(ProgressEvent("", "Operation continuing in background."))
            renderer.write(ProgressEvent("", f"Use `shoal service ps {service_ref}` to check progress."))
        renderer.finish()
