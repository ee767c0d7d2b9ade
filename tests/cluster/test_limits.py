"""Resource limits on a real swarm with the process executor: tasks run in cgroups of their own, an OOM kill is
the task's error, and nothing is left of the groups once the service is removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.executor.cgroups import CgroupError, Limits, TaskGroup, plan_task_group, read_layout
from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for

pytestmark = pytest.mark.cluster

# Reads 200 MB from /dev/zero into one buffer (every page touched) and exits 0: far past a 32 MiB limit.
ALLOCATE_200MB = ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
OOM_ERROR = "task: non-zero exit (137): out of memory: OOM killed at its memory limit of 32MiB"


@pytest.fixture
def swarm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node is enough: limits are the node's business (placement is tested elsewhere)."""
    try:
        plan_task_group(Limits(nano_cpus=10**9, memory_bytes=1 << 30, pids=10), read_layout(), "n", "t")
    except CgroupError as exc:
        pytest.skip(str(exc))
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    cluster = make_cluster(tmp_path_factory, managers=1, workers=0)
    try:
        yield cluster
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(cluster)
        cluster.down()


def groups_of(cluster: Cluster, task: dict) -> TaskGroup:
    """Where the node keeps the task's groups (they are named after its node and id)."""
    return plan_task_group(Limits.of_task(task), read_layout(), task["NodeID"], task["ID"])


def node_folders(cluster: Cluster) -> list[Path]:
    node_id = cluster.node_ids()["manager1"]
    layout = read_layout()
    mounts = {*layout.v1.values(), *([layout.unified] if layout.unified else [])}
    return [Path(mount, "shoal", node_id) for mount in mounts if Path(mount, "shoal", node_id).exists()]


def ended(cluster: Cluster, service: str) -> dict | None:
    tasks = [t for t in cluster.tasks(service) if t["Status"]["State"] in ("complete", "failed", "rejected")]
    return tasks[0] if tasks else None


def test_a_task_past_its_memory_limit_fails_as_oom_killed_and_one_without_the_limit_does_not(swarm: Cluster) -> None:
    swarm.ok("service", "create", "-d", "--name", "hog", "--limit-memory", "32m", "--restart-condition", "none",
             "busybox", *ALLOCATE_200MB)
    swarm.ok("service", "create", "-d", "--name", "free", "--restart-condition", "none", "busybox", *ALLOCATE_200MB)
    hog = wait_for("the limited task to end", lambda: ended(swarm, "hog"))
    assert (hog["Status"]["State"], hog["Status"]["Err"]) == ("failed", OOM_ERROR)
    assert OOM_ERROR in swarm.ok("service", "ps", "--no-trunc", "hog")
    free = wait_for("the unlimited task to end", lambda: ended(swarm, "free"))
    assert (free["Status"]["State"], free["Status"]["Err"]) == ("complete", "")
    assert not any(Path(group).exists() for group in groups_of(swarm, hog).groups), "gone when the task ended"
    assert "  Memory:\t32MiB\n" in swarm.ok("service", "inspect", "--pretty", "hog")


def test_limits_are_the_groups_values_updates_change_them_and_rm_leaves_no_group(swarm: Cluster) -> None:
    swarm.ok("service", "create", "-d", "--name", "capped", "--limit-memory", "64m", "--limit-cpu", "0.5",
             "--limit-pids", "20", "--reserve-memory", "16m", "busybox", "sleep", "600")
    first = swarm.wait_running("capped", 1)[0]
    plan = groups_of(swarm, first)
    pid = int(first["Status"]["ContainerStatus"]["PID"])
    assert pid > 0
    memory_file = "memory.max" if plan.version == 2 else "memory.limit_in_bytes"
    memory_group = next(g for g in plan.groups if Path(g, memory_file).exists())
    assert Path(memory_group, memory_file).read_text().strip() == str(64 << 20)
    assert str(pid) in Path(memory_group, "cgroup.procs").read_text().split()

    # An update changes only what it names: a new task with the new memory limit, CPU and pids kept.
    swarm.ok("service", "update", "-d", "--limit-memory", "128m", "capped")
    second = wait_for("the updated task to run", lambda: next(
        (t for t in swarm.running("capped") if t["ID"] != first["ID"]), None), timeout=60)
    assert second["Spec"]["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 128 << 20, "Pids": 20}
    wait_for("the first task's groups to go", lambda: not any(Path(g).exists() for g in plan.groups))
    updated = groups_of(swarm, second)
    memory_group = next(g for g in updated.groups if Path(g, memory_file).exists())
    assert Path(memory_group, memory_file).read_text().strip() == str(128 << 20)

    swarm.ok("service", "rm", "capped")
    wait_for("no task process left after rm", lambda: not swarm.task_processes(), timeout=20)
    wait_for("no cgroup left after rm", lambda: not node_folders(swarm), timeout=20)
