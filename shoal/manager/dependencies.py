"""Which secrets and configs each node may hold: exactly those that a task it has and that has not ended uses.

The dispatcher sends a secret's value to a node only in the assignment that gives it a task using the secret,
and tells the node to forget it in the assignment after which no such task is left there (swarmkit sends
dependencies the same way). `NodeDependencies` is that bookkeeping, pure; the dispatcher does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.task_files import BadReference, DependencyKey, task_references
from shoal.types import Doc, TaskState, task_state


def needed_by(task: Doc) -> frozenset[DependencyKey]:
    """What a task needs on its node: its secrets and configs until it has ended (nothing once it has)."""
    if task_state(task) >= TaskState.COMPLETE:
        return frozenset()
    try:
        return frozenset((ref.kind, ref.obj_id) for ref in task_references(task) if ref.obj_id)
    except BadReference:
        return frozenset()  # its agent rejects it; nothing to send


class NodeDependencies:
    """The dependencies one node holds, and which of its tasks hold each."""

    def __init__(self) -> None:
        self._by_task: dict[str, frozenset[DependencyKey]] = {}
        self._users: dict[DependencyKey, set[str]] = {}

    def held(self) -> set[DependencyKey]:
        return set(self._users)

    def set_task(self, task_id: str, needs: Iterable[DependencyKey]) -> tuple[set[DependencyKey], set[DependencyKey]]:
        """Record what the task needs now; returns (newly needed on the node, no longer needed on it)."""
        needs = frozenset(needs)
        before = self._by_task.get(task_id, frozenset())
        if needs == before:
            return set(), set()
        if needs:
            self._by_task[task_id] = needs
        else:
            self._by_task.pop(task_id, None)
        gained: set[DependencyKey] = set()
        lost: set[DependencyKey] = set()
        for key in needs - before:
            users = self._users.setdefault(key, set())
            if not users:
                gained.add(key)
            users.add(task_id)
        for key in before - needs:
            users = self._users.get(key, set())
            users.discard(task_id)
            if not users:
                self._users.pop(key, None)
                lost.add(key)
        return gained, lost

    def drop_task(self, task_id: str) -> set[DependencyKey]:
        """The task left the node; returns what no task there needs any more."""
        return self.set_task(task_id, ())[1]
