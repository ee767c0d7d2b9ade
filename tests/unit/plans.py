"""Shared by the reconciler and updater tests: a tiny applier that writes a Plan over a list of tasks."""

from __future__ import annotations

from shoal.types import Doc, Plan


def apply(tasks: list[Doc], plan: Plan) -> list[Doc]:
    """What the store holds once the plan is written (updates only of known tasks, creates only of new ones)."""
    by_id = {t["ID"]: t for t in tasks}
    for doc in plan.update:
        assert doc["ID"] in by_id, "update of an unknown task"
        by_id[doc["ID"]] = doc
    for doc in plan.delete:
        by_id.pop(doc["ID"])
    for doc in plan.create:
        assert doc["ID"] not in by_id
        by_id[doc["ID"]] = doc
    return list(by_id.values())
