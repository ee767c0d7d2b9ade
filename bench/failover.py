"""Leader failover: `kill -9` of the leader (daemon and etcd member) → a scale request issued to a surviving
manager converges. 3 managers (drained, so only the workers run tasks) + 2 workers; median of N runs. Then, right
after a failover, the time to detect a killed worker and replace its tasks.

Usage: python -m bench.failover [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import Swarm, summary, wait
from shoal import playground


def api(node: Any) -> Any:
    return playground.api(node.socket, timeout=10)


def leader(swarm: Swarm, via: Any) -> str | None:
    with api(via) as client:
        for node in client.get("/nodes").json():
            if (node.get("ManagerStatus") or {}).get("Leader"):
                return str(node["Description"]["Hostname"])
    return None


def running(via: Any, service: str) -> int:
    with api(via) as client:
        nodes = {n["ID"]: n for n in client.get("/nodes").json()}
        tasks = client.get("/tasks", params={"filters": json.dumps({"service": [service]})}).json()
    return sum(1 for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
               and nodes.get(t["NodeID"], {}).get("Status", {}).get("State") == "ready")


def scale(via: Any, service: str, replicas: int) -> bool:
    with api(via) as client:
        current = client.get(f"/services/{service}")
        if current.status_code != 200:
            return False
        doc = current.json()
        spec = doc["Spec"]
        spec["Mode"]["Replicated"]["Replicas"] = replicas
        answer = client.post(f"/services/{doc['ID']}/update", params={"version": doc["Version"]["Index"]},
                             json=spec)
        return answer.status_code == 200


def node_down(via: Any, name: str) -> bool:
    with api(via) as client:
        return any(n["Description"]["Hostname"] == name and n["Status"]["State"] == "down"
                   for n in client.get("/nodes").json())


def nodes_ready(via: Any) -> bool:
    with api(via) as client:
        return all(n["Status"]["State"] == "ready" for n in client.get("/nodes").json())


def one_failover(swarm: Swarm, managers: list[Any], replicas: int) -> tuple[float, float]:
    """Kill the leader, scale through a survivor; (seconds to a new leader, seconds to convergence)."""
    current = leader(swarm, managers[0]) or leader(swarm, managers[1])
    victim = next(n for n in managers if n.name == current)
    survivor = next(n for n in managers if n.name != current)
    start = time.monotonic()
    swarm.kill(victim.name)
    wait(lambda: scale(survivor, "web", replicas), timeout=60, interval=0.05)
    wait(lambda: (name := leader(swarm, survivor)) is not None and name != victim.name, timeout=60)
    election = time.monotonic() - start
    wait(lambda: running(survivor, "web") == replicas, timeout=60)
    converged = time.monotonic() - start
    swarm.restart(victim.name)
    wait(lambda: nodes_ready(survivor), timeout=60)
    return election, converged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    swarm = Swarm(3, 2, "127.0.43")
    failovers, elections, worker_replacements = [], [], []
    replicas = 4
    try:
        for name in ("manager1", "manager2", "manager3"):
            with swarm.api() as client:
                node = client.get(f"/nodes/{name}").json()
                spec = dict(node["Spec"], Availability="drain")
                client.post(f"/nodes/{node['ID']}/update", params={"version": node["Version"]["Index"]}, json=spec)
        swarm.post("/services/create", {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                                        "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                                            "Args": ["sleep", "100000"]}}})
        managers = [n for n in swarm.nodes if n.role == "manager"]
        wait(lambda: running(managers[0], "web") == replicas)
        for run in range(args.runs):
            replicas += 1
            election, converged = one_failover(swarm, managers, replicas)
            elections.append(election)
            failovers.append(converged)
            print(f"run {run + 1}: scale to {replicas} converged {converged:.2f}s after the leader's kill "
                  f"(new leader named after {election:.2f}s)", flush=True)
        # A worker killed right after a failover.
        current = leader(swarm, managers[0]) or leader(swarm, managers[1])
        victim = next(n for n in managers if n.name == current)
        survivor = next(n for n in managers if n.name != current)
        swarm.kill(victim.name)
        wait(lambda: (name := leader(swarm, survivor)) is not None and name != victim.name, timeout=60)
        wait(lambda: running(survivor, "web") == replicas, timeout=60)
        start = time.monotonic()
        swarm.kill("worker1")
        wait(lambda: node_down(survivor, "worker1") and running(survivor, "web") == replicas, timeout=60)
        worker_replacements.append(time.monotonic() - start)
        print(f"leader kill -9 -> scale request converges: {summary(failovers)}")
        print(f"leader kill -9 -> a surviving manager names the new leader: {summary(elections)}")
        print(f"worker kill -9 right after a failover -> its tasks running elsewhere: {summary(worker_replacements)}")
    finally:
        swarm.down()



if __name__ == "__main__":
    main()
