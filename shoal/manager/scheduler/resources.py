"""CPU and memory as the scheduler counts them: what a node has, what a task reserves, what is left.

A node offers `Description.Resources` (NanoCPUs, MemoryBytes, as its agent reports them); a task reserves
`Spec.Resources.Reservations`. A node takes a task only if every reservation fits in what its live tasks have
not reserved yet, as swarmkit's ResourceFilter decides. Limits are the executors' business, not placement's.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.types import Doc


@dataclass(frozen=True, slots=True)
class Resources:
    nano_cpus: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus + other.nano_cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus - other.nano_cpus, self.memory_bytes - other.memory_bytes)

    def __bool__(self) -> bool:
        return bool(self.nano_cpus or self.memory_bytes)

    def fits_in(self, available: Resources) -> bool:
        return self.nano_cpus <= available.nano_cpus and self.memory_bytes <= available.memory_bytes

    @classmethod
    def of(cls, doc: Doc | None) -> Resources:
        doc = doc or {}
        return cls(int(doc.get("NanoCPUs") or 0), int(doc.get("MemoryBytes") or 0))


NONE = Resources()


def reservation(task_spec: Doc) -> Resources:
    """What a task with this TaskSpec reserves on its node."""
    return Resources.of((task_spec.get("Resources") or {}).get("Reservations"))


def capacity(node: Doc) -> Resources:
    """What a node offers in all."""
    return Resources.of((node.get("Description") or {}).get("Resources"))
