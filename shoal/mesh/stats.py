"""What the routing mesh's userspace proxies count per published port, for the node's metrics.

A proxy adds to its port's `PortStats` as connections come and bytes pass (plain integers: this is the hot
path). The counts outlive a proxy that stops and starts again on the same port, and the helper processes of
the userspace mesh (`shoal.mesh.workers`) send theirs to the agent as one JSON line now and then, which adds
them up (`PortTotals`). The kernel path forwards without the proxies, so what it forwards is not counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

PortKey = tuple[int, str]  # (published port, protocol)


@dataclass
class PortStats:
    connections: int = 0  # TCP connections accepted, UDP sessions opened (one per client address)
    failed_connects: int = 0  # attempts to reach a task that failed (the connection then tries another)
    dropped: int = 0  # connections closed because no task accepted them within the deadline
    bytes_in: int = 0  # from clients to tasks
    bytes_out: int = 0  # from tasks to clients
    open: int = 0  # connections (sessions) open now: a level, not a count; filled in when read

    def add(self, other: PortStats) -> None:
        for name in _FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def copy(self) -> PortStats:
        return PortStats(**{name: getattr(self, name) for name in _FIELDS})


_FIELDS = tuple(f.name for f in fields(PortStats))


def merged(*parts: Mapping[PortKey, PortStats]) -> dict[PortKey, PortStats]:
    """The sum of several processes' figures, port by port (new objects: the parts are left alone)."""
    total: dict[PortKey, PortStats] = {}
    for part in parts:
        for key, stats in part.items():
            if key in total:
                total[key].add(stats)
            else:
                total[key] = stats.copy()
    return total


def to_wire(stats: Mapping[PortKey, PortStats]) -> str:
    """One line of JSON (a helper process's report to the agent)."""
    return json.dumps([[port, protocol, [getattr(s, name) for name in _FIELDS]]
                       for (port, protocol), s in sorted(stats.items())], separators=(",", ":"))


def from_wire(line: str) -> dict[PortKey, PortStats]:
    """A report read back; ValueError (or a subclass) when it is not one."""
    out: dict[PortKey, PortStats] = {}
    for port, protocol, values in json.loads(line):
        if len(values) != len(_FIELDS):
            raise ValueError("a port's figures do not match PortStats")
        out[(int(port), str(protocol))] = PortStats(*(int(v) for v in values))
    return out


class PortTotals:
    """The helper processes' figures as the agent adds them up: the last report of each running helper, plus
    what helpers that exited had counted (so a restarted helper, starting again from 0, never makes a count
    go down). What a helper counted after its last report is lost with it."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[PortKey, PortStats]] = {}  # helper index -> its last report
        self.retired: dict[PortKey, PortStats] = {}

    def report(self, helper: int, stats: dict[PortKey, PortStats]) -> None:
        self.latest[helper] = stats

    def retire(self, helper: int) -> None:
        """The helper exited: keep its counts, not its open connections (they closed with it)."""
        gone = self.latest.pop(helper, None)
        if gone:
            for stats in gone.values():
                stats.open = 0
            self.retired = merged(self.retired, gone)

    def total(self) -> dict[PortKey, PortStats]:
        return merged(self.retired, *self.latest.values())
