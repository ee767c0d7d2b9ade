"""The managers at the scale of a large cluster: simulated nodes (real sessions, simulated tasks), real managers.

On a fresh playground of M managers (drained, executor sim) and N hollow nodes (`python -m shoal.sim`, real
certificates, sessions, heartbeats and status reports; see shoal/agent/executor/sim.py), one service of T
replicas is created and driven through what a large cluster lives through, printing for each step:

- create: placements per second from `service create` until all T report running (the managers' count);
- API latency at T tasks, p50/p99 over 100 calls: GET /services, GET /nodes, GET /tasks?filters={"node":…}, and
  GET /tasks?filters={"service":…} (all T tasks, fewer calls);
- a rolling update of all T tasks (parallelism `--parallelism`, no delay, 1 s monitor) until "completed";
- leader `kill -9` (daemon and etcd member) until a surviving manager names a new leader and accepts a write;
- scale T -> 0 until the store holds no task;
- the leader's memory, the etcd database's size, and how the store's writes were batched (operations per
  transaction, transactions per second).

Usage: python -m bench.scale [--nodes 1000] [--tasks 100000] [--managers 3] [--parallelism 1000] [--skip-update]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import wait
from shoal import playground
from shoal.playground import PlaygroundNode

SERVICE = "big"


def client(node: PlaygroundNode, timeout: float = 120.0) -> httpx.Client:
    return playground.api(node.socket, timeout=timeout)


def get(node: PlaygroundNode, path: str, **params: Any) -> Any:
    with client(node) as c:
        response = c.get(path, params=params)
        response.raise_for_status()
        return response.json()


def debug(node: PlaygroundNode) -> dict[str, Any]:
    return get(node, "/shoal/debug")


def running(node: PlaygroundNode) -> int:
    services = get(node, "/services", status="true")
    return sum(int((s.get("ServiceStatus") or {}).get("RunningTasks") or 0) for s in services)


def leader_of(managers: list[PlaygroundNode]) -> PlaygroundNode:
    for node in managers:
        try:
            if debug(node).get("Manager", {}).get("Leader"):
                return node
        except httpx.HTTPError:
            continue
    raise RuntimeError("no leader")


def update_service(node: PlaygroundNode, change: Callable[[dict[str, Any]], None]) -> bool:
    """Read the service, change its spec, write it back through `node`; False when the write was refused."""
    with client(node, timeout=15) as c:
        current = c.get(f"/services/{SERVICE}")
        if current.status_code != 200:
            return False
        doc = current.json()
        spec = doc["Spec"]
        change(spec)
        answer = c.post(f"/services/{doc['ID']}/update", params={"version": doc["Version"]["Index"]}, json=spec)
        return answer.status_code == 200


def latency(node: PlaygroundNode, path: str, params: dict[str, str], calls: int) -> str:
    times = []
    size = 0
    with client(node) as c:
        for _ in range(calls):
            started = time.perf_counter()
            response = c.get(path, params=params)
            response.raise_for_status()
            times.append(time.perf_counter() - started)
            size = len(response.content)
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return f"p50 {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {calls} calls ({size} bytes)"


def etcd_db_size(node: PlaygroundNode) -> int:
    db = Path(node.state_dir) / "etcd" / "member" / "snap" / "db"
    return db.stat().st_size if db.exists() else 0


def store_figures(before: dict[str, Any], after: dict[str, Any], seconds: float) -> str:
    txns = after["transactions"] - before["transactions"]
    ops = after["operations"] - before["operations"]
    return (f"{txns} transactions, {ops} operations ({ops / max(1, txns):.0f} per transaction, largest "
            f"{after['largest']}), {txns / seconds:.0f} transactions/s, {ops / seconds:.0f} operations/s, "
            f"{(after['bytes'] - before['bytes']) / seconds / 1e6:.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--managers", type=int, default=3)
    parser.add_argument("--parallelism", type=int, default=1000)
    parser.add_argument("--subnet", default="127.0.47")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the daemons' logs here before tearing down")
    parser.add_argument("--skip-update", action="store_true",
                        help="leave out the rolling update")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-scale-"))
    print(f"starting {args.managers} managers and {args.nodes} simulated nodes", flush=True)
    started = time.monotonic()
    nodes = playground.up(args.managers, 0, lambda _: None, base=base, subnet=args.subnet, executor="sim",
                          routing_mesh="userspace", sim_nodes=args.nodes)
    print(f"  up in {time.monotonic() - started:.0f}s", flush=True)
    managers = [n for n in nodes if n.role == "manager"]
    try:
        first = managers[0]
        with client(first) as c:
            for manager in managers:
                node = c.get(f"/nodes/{manager.name}").json()
                c.post(f"/nodes/{node['ID']}/update", params={"version": node["Version"]["Index"]},
                       json=dict(node["Spec"], Availability="drain")).raise_for_status()
        leader = leader_of(managers)
        store_before = debug(leader)["Manager"]["Store"]

        # ---- create ----
        started = time.monotonic()
        with client(first) as c:
            c.post("/services/create", json={
                "Name": SERVICE, "Mode": {"Replicated": {"Replicas": args.tasks}},
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1000000"]}},
                "UpdateConfig": {"Parallelism": args.parallelism, "Delay": 0, "Monitor": 1_000_000_000,
                                 "FailureAction": "pause"}}).raise_for_status()
        wait(lambda: running(first) == args.tasks, timeout=3600, interval=1.0)
        created = time.monotonic() - started
        print(f"create {args.tasks} replicas -> all running: {created:.1f}s, {args.tasks / created:.0f} "
              f"placements/s end to end", flush=True)
        print(f"  store during create: {store_figures(store_before, debug(leader)['Manager']['Store'], created)}",
              flush=True)

        # ---- API latency ----
        service_id = get(first, f"/services/{SERVICE}")["ID"]
        hollow_node = next(n["ID"] for n in get(first, "/nodes") if n["Spec"].get("Role") == "worker")
        print("API latency at", args.tasks, "tasks (through the leader's unix socket):", flush=True)
        for name, path, params, calls in [
                ("GET /services", "/services", {}, 100),
                ("GET /services?status=true", "/services", {"status": "true"}, 100),
                ("GET /nodes", "/nodes", {}, 100),
                ('GET /tasks?filters={"node":…}', "/tasks", {"filters": json.dumps({"node": [hollow_node]})}, 100),
                ('GET /tasks?filters={"service":…}', "/tasks", {"filters": json.dumps({"service": [service_id]})},
                 5)]:
            print(f"  {name}: {latency(leader, path, params, calls)}", flush=True)

        # ---- rolling update ----
        if not args.skip_update:
            started = time.monotonic()
            update_service(first, lambda spec: spec["TaskTemplate"].update(ForceUpdate=1))

            def update_done() -> bool:
                state = (get(first, f"/services/{SERVICE}").get("UpdateStatus") or {}).get("State")
                if state in ("paused", "rollback_started"):
                    raise RuntimeError(f"the rolling update stopped: {state}")
                return state == "completed"

            wait(update_done, timeout=3600, interval=2.0)
            updated = time.monotonic() - started
            lag = debug(leader)["Loop"]["lag_ms"]
            print(f"rolling update of {args.tasks} tasks, parallelism {args.parallelism}: completed in "
                  f"{updated:.1f}s (leader loop lag over the last minute: p50 {lag['p50']:.0f} ms, max "
                  f"{lag['max']:.0f} ms)", flush=True)

        # ---- leader kill ----
        if len(managers) >= 3:
            leader = leader_of(managers)
            survivors = [m for m in managers if m is not leader]
            figures = debug(leader)
            print(f"  leader's memory: {figures['Process']['MaxRSSBytes'] / 2**20:.0f} MiB max RSS; etcd "
                  f"database {etcd_db_size(leader) / 2**20:.0f} MiB; so far leader changes "
                  f"{sum(debug(m)['Manager']['ElectionsWon'] for m in managers) - 1}, nodes marked down "
                  f"{figures['Manager']['NodesMarkedDown']}", flush=True)
            started = time.monotonic()
            playground.kill_node(leader)
            wait(lambda: any(debug(s).get("Manager", {}).get("Leader") for s in survivors),
                 timeout=120, interval=0.05)
            named = time.monotonic() - started
            wait(lambda: update_service(survivors[0], lambda spec: spec.setdefault(
                "Labels", {}).update(bench="after-kill")), timeout=120, interval=0.05)
            accepted = time.monotonic() - started
            print(f"leader kill -9 at {args.tasks} tasks: a new leader after {named:.2f}s, a write accepted "
                  f"{accepted:.2f}s after the kill", flush=True)
            first = survivors[0]
            leader = leader_of(survivors)
            managers = survivors

        # ---- scale to 0 ----
        started = time.monotonic()
        update_service(first, lambda spec: spec["Mode"]["Replicated"].update(Replicas=0))
        wait(lambda: debug(leader)["Manager"]["Tasks"] == 0, timeout=3600, interval=1.0)
        emptied = time.monotonic() - started
        print(f"scale {args.tasks} -> 0: no task left in the store after {emptied:.1f}s", flush=True)
        print(f"leader's memory: {debug(leader)['Process']['MaxRSSBytes'] / 2**20:.0f} MiB max RSS; etcd database "
              f"{etcd_db_size(leader) / 2**20:.0f} MiB; leader changes "
              f"{sum(debug(m)['Manager']['ElectionsWon'] for m in managers)}, nodes marked down "
              f"{debug(leader)['Manager']['NodesMarkedDown']}", flush=True)
    finally:
        if args.keep_logs:
            for log in base.glob("*/*.log"):
                target = Path(args.keep_logs) / log.parent.name / log.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)
        playground.down(lambda _: None, base)


if __name__ == "__main__":
    main()
