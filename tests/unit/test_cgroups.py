"""Which cgroup files get which values for a task's limits (v1 and v2), and reading OOM counters: no I/O."""

from __future__ import annotations

import pytest

from shoal.agent.executor.base import binary_size, out_of_memory
from shoal.agent.executor.cgroups import (
    CgroupError,
    Layout,
    Limits,
    TaskGroup,
    Write,
    cpu_max,
    join_argv,
    oom_kills,
    parse_mounts,
    plan_task_group,
)

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /elsewhere/memory cgroup rw,relatime,memory 0 0
"""
V1 = Layout(unified="/sys/fs/cgroup/unified", unified_controllers=frozenset({"hugetlb"}),
            v1={"cpu": "/cg/cpu,cpuacct", "memory": "/cg/memory", "pids": "/cg/pids"})
V2 = Layout(unified="/cg", unified_controllers=frozenset({"cpu", "memory", "pids", "io"}))
ALL = Limits(nano_cpus=500_000_000, memory_bytes=64 << 20, pids=100)


def task_with(limits: dict) -> dict:
    return {"ID": "t1", "NodeID": "n1", "Spec": {"Resources": {"Limits": limits, "Reservations": {"NanoCPUs": 5}}}}


def test_limits_come_from_the_task_and_reservations_need_no_group() -> None:
    assert Limits.of_task(task_with({"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 100})) == ALL
    assert not Limits.of_task(task_with({}))
    assert not Limits.of_task({"ID": "t1", "Spec": {}})
    assert not Limits.of_task(task_with({"Pids": -1}))
    assert Limits(memory_bytes=1).controllers() == ["memory"]
    assert ALL.controllers() == ["cpu", "memory", "pids"]


def test_mounts_name_the_v2_hierarchy_and_each_v1_controller_once() -> None:
    unified, v1 = parse_mounts(HYBRID_MOUNTS)
    assert unified == "/sys/fs/cgroup/unified"
    assert v1 == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}
    assert parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n") == ("/sys/fs/cgroup", {})
    assert parse_mounts("cgroup /my\\040cgroups/mem cgroup rw,memory 0 0\n") == (None, {"memory": "/my cgroups/mem"})


@pytest.mark.parametrize(("nano", "quota_period"), [
    (500_000_000, (50_000, 100_000)),      # half a CPU: 50 ms of every 100 ms
    (2_000_000_000, (200_000, 100_000)),   # two CPUs
    (10_000_000, (1_000, 100_000)),        # 0.01 CPU: the smallest quota in runc's period
    (5_000_000, (1_000, 200_000)),         # 0.005 CPU: a longer period keeps it exact
    (1_000_000, (1_000, 1_000_000)),       # 0.001 CPU (the API's minimum): 1 ms a second
    (1, (1_000, 1_000_000)),               # below what the kernel can do: the least it can
])
def test_cpu_limit_is_a_quota_per_period(nano: int, quota_period: tuple[int, int]) -> None:
    assert cpu_max(nano) == quota_period


def test_v2_one_group_with_the_controllers_handed_down_and_swap_as_docker_allows() -> None:
    plan = plan_task_group(ALL, V2, "n1", "t1")
    group = "/cg/shoal/n1/t1"
    assert plan.version == 2
    assert plan.parents == ("/cg/shoal", "/cg/shoal/n1")
    assert plan.groups == (group,)
    assert plan.enable == tuple(Write(f"{parent}/cgroup.subtree_control", f"+{name}")
                                for parent in ("/cg", "/cg/shoal", "/cg/shoal/n1") for name in ("cpu", "memory", "pids"))
    assert plan.limits == (Write(f"{group}/cpu.max", "50000 100000"), Write(f"{group}/memory.max", str(64 << 20)),
                           Write(f"{group}/memory.swap.max", str(64 << 20), optional=True),
                           Write(f"{group}/pids.max", "100"))
    assert plan.oom_file == f"{group}/memory.events"
    assert plan.procs_files() == [f"{group}/cgroup.procs"]


def test_v2_enables_only_the_controllers_the_limits_need() -> None:
    plan = plan_task_group(Limits(pids=10), V2, "n1", "t1")
    assert {write.value for write in plan.enable} == {"+pids"}
    assert plan.limits == (Write("/cg/shoal/n1/t1/pids.max", "10"),)
    assert plan.oom_file == "" and plan.memory_bytes == 0


def test_v1_one_group_per_hierarchy_in_the_order_the_kernel_accepts() -> None:
    plan = plan_task_group(ALL, V1, "n1", "t1")
    cpu, memory, pids = "/cg/cpu,cpuacct/shoal/n1/t1", "/cg/memory/shoal/n1/t1", "/cg/pids/shoal/n1/t1"
    assert plan.version == 1 and plan.enable == ()
    assert plan.groups == (cpu, memory, pids)
    assert plan.parents == ("/cg/cpu,cpuacct/shoal", "/cg/cpu,cpuacct/shoal/n1", "/cg/memory/shoal",
                            "/cg/memory/shoal/n1", "/cg/pids/shoal", "/cg/pids/shoal/n1")
    assert plan.limits == (
        Write(f"{cpu}/cpu.cfs_period_us", "100000"), Write(f"{cpu}/cpu.cfs_quota_us", "50000"),
        Write(f"{memory}/memory.limit_in_bytes", str(64 << 20)),
        Write(f"{memory}/memory.memsw.limit_in_bytes", str(128 << 20), optional=True),
        Write(f"{pids}/pids.max", "100"))
    assert plan.oom_file == f"{memory}/memory.oom_control"
    assert plan.memory_bytes == 64 << 20


def test_v2_is_preferred_when_it_has_every_controller() -> None:
    both = Layout(unified="/cg/unified", unified_controllers=frozenset({"memory"}), v1=V1.v1)
    assert plan_task_group(Limits(memory_bytes=1 << 20), both, "n1", "t1").version == 2
    assert plan_task_group(Limits(memory_bytes=1 << 20, pids=5), both, "n1", "t1").version == 1


def test_missing_controllers_reject_the_task_by_name() -> None:
    with pytest.raises(CgroupError) as caught:
        plan_task_group(ALL, Layout(v1={"cpu": "/cg/cpu"}), "n1", "t1")
    assert str(caught.value) == ("this node cannot enforce the task's resource limits: no cgroup controller "
                                 "memory (for Limits.MemoryBytes), pids (for Limits.Pids) is available to the agent")
    with pytest.raises(CgroupError, match="cpu"):
        plan_task_group(Limits(nano_cpus=1_000_000), Layout(), "n1", "t1")


def test_odd_ids_never_leave_the_shoal_folder() -> None:
    plan = plan_task_group(Limits(pids=1), V2, "../../etc", "t1")
    assert plan.groups == ("/cg/shoal/node/t1",)


def test_the_handle_keeps_what_removing_and_reading_need() -> None:
    plan = plan_task_group(ALL, V1, "n1", "t1")
    again = TaskGroup.from_doc(plan.to_doc())
    assert (again.groups, again.oom_file, again.memory_bytes, again.version) == (
        plan.groups, plan.oom_file, plan.memory_bytes, 1)


def test_oom_kill_counters_of_v1_and_v2() -> None:
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == 2
    assert oom_kills("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n") == 1
    assert oom_kills("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n") == 0
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\n") == 0  # a kernel before 4.13 has no counter


def test_the_error_of_an_oom_kill_names_the_limit() -> None:
    assert out_of_memory(64 << 20) == "out of memory: OOM killed at its memory limit of 64MiB"
    assert out_of_memory(0) == "out of memory: OOM killed"
    assert [binary_size(n) for n in (512, 1536, 3 << 29, 5 << 40, 5000 << 40)] == [
        "512B", "1.5KiB", "1.5GiB", "5TiB", "5000TiB"]


def test_the_process_joins_every_group_before_its_program_runs() -> None:
    argv = join_argv(["/cg/a/cgroup.procs", "/cg/b/cgroup.procs"], ["sleep", "5"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["shoal-cgroup", "/cg/a/cgroup.procs", "/cg/b/cgroup.procs", "--", "sleep", "5"]
