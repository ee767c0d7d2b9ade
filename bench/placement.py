"""The scheduler's decision alone: placements per second for each kind of placement, on one core.

`schedule` (pure) places N pending tasks of one service on M nodes, as one tick of the leader's scheduler loop
would if it took them all at once (the loop takes 2,000 per tick). Each kind is timed in the same run as plain
spread, so the ratios hold on a busy machine; medians of `--runs`.

Usage: python -m bench.placement [--tasks 100000] [--nodes 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from shoal.manager.orchestrator.common import new_task
from shoal.manager.scheduler.pipeline import NodeLoad, schedule
from shoal.types import Doc

GIB = 1024**3


def nodes(count: int) -> list[Doc]:
    return [{"ID": f"n{i:05d}", "Spec": {"Role": "worker", "Availability": "active",
                                         "Labels": {"zone": f"z{i % 3}", "rack": f"r{i % 7}"}},
             "Description": {"Hostname": f"n{i}", "Resources": {"NanoCPUs": 64 * 10**9, "MemoryBytes": 256 * GIB},
                             "Platform": {"OS": "linux", "Architecture": "x86_64"}},
             "Status": {"State": "ready"}} for i in range(count)]


def service(**template: object) -> Doc:
    return {"ID": "web", "Version": {"Index": 1},
            "Spec": {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, **template},
                     "Mode": {"Replicated": {"Replicas": 1}}}}


KINDS: dict[str, Callable[[], Doc]] = {
    "spread": lambda: service(),
    "constraint": lambda: service(Placement={"Constraints": ["node.labels.zone!=z2"]}),
    "reservations": lambda: service(Resources={"Reservations": {"NanoCPUs": 10**8, "MemoryBytes": 64 * 2**20}}),
    "max-replicas": lambda: service(Placement={"MaxReplicas": 1000}),
    "preference": lambda: service(Placement={"Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}),
    "2 preferences": lambda: service(Placement={"Preferences": [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}, {"Spread": {"SpreadDescriptor": "node.labels.rack"}}]}),
}


def time_one(kind: str, tasks: int, node_docs: list[Doc]) -> float:
    svc = KINDS[kind]()
    pending = [new_task(svc, slot, "", 0.0, task_id=f"t{slot}") for slot in range(1, tasks + 1)]
    start = time.perf_counter()
    result = schedule(pending, node_docs, NodeLoad(), 0.0)
    elapsed = time.perf_counter() - start
    assert len(result.assigned) == tasks, (kind, len(result.assigned), result.unassigned[:1])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    node_docs = nodes(args.nodes)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.runs):
        for kind in KINDS:
            times[kind].append(time_one(kind, args.tasks, node_docs))
    base = statistics.median(times["spread"])
    print(f"{args.tasks} tasks on {args.nodes} nodes, median of {args.runs}:")
    for kind, runs in times.items():
        median = statistics.median(runs)
        print(f"  {kind:14s} {median:6.2f} s  {args.tasks / median:9,.0f} placements/s  {median / base:4.2f}x spread")


if __name__ == "__main__":
    main()
