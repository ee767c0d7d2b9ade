"""Network partitions, for real: each node in its own network namespace, cut with nftables rules that drop
packets silently (tests/cluster/netns.py). Three managers (drained, as in a production swarm) and two workers.

Each scenario asserts what must hold: no task that was running on a reachable worker is restarted, no node is
declared down only because it was still talking to the previous leader, exactly the desired tasks run, and once
the partition heals the cluster is steady (one leader, every node ready, the desired tasks) within 5 seconds,
without the returning manager taking the leadership back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shoal import playground
from tests.cluster.conftest import FAILED_KEY, Sampler, dump_logs, wait_for
from tests.cluster.netns import NetnsCluster, make_netns_cluster, requires_netns

pytestmark = [pytest.mark.cluster, requires_netns]

MANAGERS = ("manager1", "manager2", "manager3")
WORKERS = ("worker1", "worker2")
HEALED_WITHIN = 5.0  # seconds from healing until the cluster is steady again


# ---- reading the cluster through any node -----------------------------------------------------------------


def api_get(cluster: NetnsCluster, name: str, path: str, **params: Any) -> Any:
    with playground.api(cluster.node(name).socket, timeout=10) as client:
        response = client.get(path, params=params)
        response.raise_for_status()
        return response.json()


def debug(cluster: NetnsCluster, name: str) -> dict[str, Any]:
    return api_get(cluster, name, "/shoal/debug")


def leaders(cluster: NetnsCluster) -> list[str]:
    """The managers that consider themselves the leader right now."""
    return [name for name in MANAGERS if debug(cluster, name).get("Manager", {}).get("Leader")]


def a_leader(cluster: NetnsCluster) -> str | None:
    return next(iter(leaders(cluster)), None)


def elections(cluster: NetnsCluster) -> int:
    return sum(int(debug(cluster, name).get("Manager", {}).get("ElectionsWon", 0)) for name in MANAGERS)


def view(cluster: NetnsCluster, manager: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Node states by hostname and the service's tasks, as one manager sees them."""
    nodes = api_get(cluster, manager, "/nodes")
    tasks = api_get(cluster, manager, "/tasks", filters='{"service":["web"]}')
    return {n["Description"]["Hostname"]: n["Status"]["State"] for n in nodes}, tasks


def running_on_ready(states: dict[str, str], tasks: list[dict[str, Any]],
                     node_names: dict[str, str]) -> list[dict[str, Any]]:
    return [t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
            and states.get(node_names.get(t["NodeID"], ""), "") == "ready"]


def node_names(cluster: NetnsCluster, manager: str) -> dict[str, str]:
    return {n["ID"]: n["Description"]["Hostname"] for n in api_get(cluster, manager, "/nodes")}


def steady(cluster: NetnsCluster, replicas: int) -> str | None:
    """None when the cluster is steady: one leader that every manager names, every node ready, `replicas`
    tasks running on ready nodes, one per slot, and exactly that many task processes; else what is not."""
    found = leaders(cluster)
    if len(found) != 1:
        return f"leaders: {found}"
    named = {debug(cluster, name)["Manager"]["LeaderID"] for name in MANAGERS}
    if len(named) != 1:
        return f"managers name different leaders: {named}"
    states, tasks = view(cluster, found[0])
    if any(state != "ready" for state in states.values()):
        return f"nodes: {states}"
    running = running_on_ready(states, tasks, node_names(cluster, found[0]))
    slots = [t["Slot"] for t in running]
    if len(running) != replicas or len(set(slots)) != len(slots):
        return f"running tasks in slots {sorted(slots)}"
    processes = cluster.task_processes()
    if sorted(processes) != sorted(t["ID"] for t in running) or any(len(p) != 1 for p in processes.values()):
        return f"task processes {processes} for running tasks {sorted(t['ID'] for t in running)}"
    return None


class Watch(Sampler):
    """Samples the cluster while a scenario runs, from the managers that answer: any ready node declared
    down, and any slot run twice on ready nodes."""

    def __init__(self, cluster: NetnsCluster, managers: tuple[str, ...]) -> None:
        super().__init__()
        self.cluster = cluster
        self.managers = managers
        self.downs: set[str] = set()
        self.doubles: list[str] = []

    def sample(self) -> None:
        for manager in self.managers:
            try:
                if not debug(self.cluster, manager).get("Manager", {}).get("Leader"):
                    continue
                states, tasks = view(self.cluster, manager)
                names = node_names(self.cluster, manager)
            except (httpx.HTTPError, OSError):
                continue
            self.downs.update(name for name, state in states.items() if state == "down")
            slots = [t["Slot"] for t in running_on_ready(states, tasks, names)]
            twice = sorted({s for s in slots if slots.count(s) > 1})
            if twice:
                self.doubles.append(f"slots {twice} on {manager}")


# ---- the cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    cluster = make_netns_cluster(tmp_path_factory, managers=3, workers=2)
    try:
        for name in MANAGERS:
            cluster.ok("node", "update", "--availability", "drain", name)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, swarm: NetnsCluster) -> Iterator[NetnsCluster]:
    """The module's swarm with service "web" (4 replicas) steady on the workers; afterwards healed and the
    service removed, its logs shown if the test failed."""
    swarm.heal_all()
    manager = wait_for("a leader", lambda: a_leader(swarm), timeout=30)
    swarm.ok("service", "create", "-d", "--name", "web", "--replicas", "4", "busybox", "sleep", "100000",
             node=manager)
    wait_for("the service to be steady", lambda: steady(swarm, 4) is None, timeout=60)
    try:
        yield swarm
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(swarm, lines=80)
        swarm.heal_all()
        leader = wait_for("a leader", lambda: a_leader(swarm), timeout=30)
        swarm.shoal("service", "rm", "web", node=leader)
        wait_for("no task process left", lambda: not swarm.task_processes(), timeout=60)


def still_running(cluster: NetnsCluster, before: dict[str, list[int]]) -> dict[str, list[int]]:
    """Of the task processes seen before, those that still run (same task, same process)."""
    now = cluster.task_processes()
    return {tid: pids for tid, pids in before.items() if now.get(tid) == pids}


# ---- scenarios --------------------------------------------------------------------------------------------


def test_a_cut_off_leader_is_replaced_and_costs_no_task(cluster: NetnsCluster) -> None:
    old = leaders(cluster)[0]
    others = tuple(m for m in MANAGERS if m != old)
    before = cluster.task_processes()
    elected_before = elections(cluster)

    with Watch(cluster, others) as watch:
        cluster.cut(old)
        cut_at = time.monotonic()
        new = wait_for("a new leader", lambda: next((m for m in leaders(cluster) if m != old), None), timeout=15)
        elected_after = time.monotonic() - cut_at
        # The workers move to the new leader and stay ready; a scale asked for now converges now.
        wait_for("the workers ready under the new leader",
                 lambda: all(view(cluster, new)[0][w] == "ready" for w in WORKERS), timeout=15)
        cluster.ok("service", "scale", "-d", "web=6", node=new)
        wait_for("6 running during the partition", lambda: len(running_on_ready(
            *view(cluster, new), node_names(cluster, new))) == 6, timeout=15)
        time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))  # hold the cut: the old leader stays away
        cluster.heal(old)
        healed_at = time.monotonic()
        wait_for("a steady cluster after healing", lambda: steady(cluster, 6) is None, timeout=HEALED_WITHIN)
        settled = time.monotonic() - healed_at

    print(f"new leader after {elected_after:.2f}s, steady {settled:.2f}s after healing")
    assert leaders(cluster) == [new], "the returning manager took the leadership back"
    assert elections(cluster) == elected_before + 1
    assert still_running(cluster, before) == before, "a task running on a reachable worker was restarted"
    assert not watch.downs & set(WORKERS), f"workers declared down: {watch.downs}"
    assert watch.doubles == []


def test_a_worker_cut_off_for_long_has_its_tasks_replaced_and_the_stale_ones_stop_after(
        cluster: NetnsCluster) -> None:
    leader = leaders(cluster)[0]
    victim, survivor = WORKERS
    names = node_names(cluster, leader)
    ids = {name: node_id for node_id, name in names.items()}
    kept = {t["ID"] for t in view(cluster, leader)[1] if t["NodeID"] == ids[survivor]}
    before = cluster.task_processes()

    with Watch(cluster, MANAGERS) as watch:
        cluster.cut(victim)
        wait_for(f"{victim} down", lambda: view(cluster, leader)[0][victim] == "down", timeout=10)
        wait_for("4 running on the survivor", lambda: len(running_on_ready(
            *view(cluster, leader), names)) == 4, timeout=10)
        time.sleep(17)  # longer than the down node's grace: its tasks are no longer wanted
        cluster.heal(victim)
        wait_for("a steady cluster after healing", lambda: steady(cluster, 4) is None, timeout=HEALED_WITHIN)

    assert set(still_running(cluster, before)) >= kept, "a task on the reachable worker was restarted"
    assert watch.doubles == []
    assert leaders(cluster) == [leader]


def test_a_worker_back_within_the_grace_keeps_its_tasks(cluster: NetnsCluster) -> None:
    leader = leaders(cluster)[0]
    victim = WORKERS[0]
    before = cluster.task_processes()

    cluster.cut(victim)
    wait_for(f"{victim} down", lambda: view(cluster, leader)[0][victim] == "down", timeout=10)
    wait_for("4 running elsewhere", lambda: len(running_on_ready(
        *view(cluster, leader), node_names(cluster, leader))) == 4, timeout=10)
    cluster.heal(victim)
    wait_for("a steady cluster after healing", lambda: steady(cluster, 4) is None, timeout=HEALED_WITHIN)

    # The tasks that never stopped are kept; their replacements went.
    assert still_running(cluster, before) == before


def test_a_cut_off_follower_changes_nothing_and_is_reachable_soon_after(cluster: NetnsCluster) -> None:
    leader = leaders(cluster)[0]
    follower = next(m for m in MANAGERS if m != leader)
    before = cluster.task_processes()
    elected_before = elections(cluster)

    with Watch(cluster, (leader,)) as watch:
        cluster.cut(follower)
        wait_for(f"{follower} down", lambda: view(cluster, leader)[0][follower] == "down", timeout=15)
        time.sleep(3)
        cluster.heal(follower)
        wait_for("a steady cluster after healing", lambda: steady(cluster, 4) is None, timeout=HEALED_WITHIN)

    reachability = {n["Description"]["Hostname"]: (n.get("ManagerStatus") or {}).get("Reachability")
                    for n in api_get(cluster, leader, "/nodes")}
    assert reachability[follower] == "reachable"
    assert elections(cluster) == elected_before
    assert still_running(cluster, before) == before
    assert not watch.downs & set(WORKERS) and watch.doubles == []


def test_without_a_majority_writes_are_refused_and_tasks_keep_running(cluster: NetnsCluster) -> None:
    before = cluster.task_processes()
    lonely, *rest = MANAGERS

    cluster.split([lonely], rest)
    cluster.split([rest[0]], [rest[1]])  # no two managers talk: no majority anywhere
    wait_for("no leader", lambda: not leaders(cluster), timeout=15)
    refused = cluster.shoal("service", "scale", "-d", "web=5", node=lonely, timeout=60)
    assert refused.code != 0 and "quorum" in refused.err.lower(), refused
    time.sleep(3)
    assert still_running(cluster, before) == before
    cluster.heal_all()
    wait_for("a steady cluster after healing", lambda: steady(cluster, 4) is None, timeout=HEALED_WITHIN)

    assert still_running(cluster, before) == before, "tasks were restarted after the majority came back"
