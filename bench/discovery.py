"""Service discovery: how long after a task starts running its name resolves on every node.

On a playground of 1 manager and N workers, a service `probe` on an overlay network, with one task per node
(global) so that every node's DNS server serves the network's names. Each run scales a replicated service
`target` on the same network up by one and measures, from the new task's own "running" timestamp (its
agent's clock), until `tasks.target` on every node's DNS server answers with the new task's address; then
the same for a task that stops (until no node answers with it). Every node's server is asked every 10 ms.

Usage: python -m bench.discovery [--workers 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import time
from datetime import datetime

import dns.message
import dns.query

from bench.common import Swarm, summary, wait


def lookup(server: str, name: str) -> set[str]:
    try:
        answer = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1)
    except Exception:
        return set()
    return {item.address for rrset in answer.answer for item in rrset}


def started_at(task: dict[str, object]) -> float:
    stamp = str(task["Status"]["Timestamp"])  # type: ignore[index]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def address(task: dict[str, object]) -> str:
    attachment = task["NetworksAttachments"][0]  # type: ignore[index]
    return str(ipaddress.ip_interface(attachment["Addresses"][0]).ip)


def has_running(swarm: Swarm, count: int) -> bool:
    return len(swarm.running("target")) == count


def resolves_everywhere(servers: list[str], ip: str) -> bool:
    return all(ip in lookup(server, "tasks.target") for server in servers)


def fewer_everywhere(servers: list[str], before: set[str]) -> bool:
    return all(lookup(server, "tasks.target") < before for server in servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--subnet", default="127.0.61")
    args = parser.parse_args()

    print(f"starting 1 manager and {args.workers} workers")
    swarm = Swarm(1, args.workers, args.subnet, routing_mesh="userspace")
    try:
        swarm.post("/networks/create", {"Name": "back", "Driver": "overlay"})
        template = {"ContainerSpec": {"Image": "busybox", "Command": ["sleep", "1d"]},
                    "Networks": [{"Target": "back"}]}
        swarm.post("/services/create", {"Name": "probe", "TaskTemplate": template, "Mode": {"Global": {}}})
        swarm.post("/services/create", {"Name": "target", "TaskTemplate": template,
                                        "Mode": {"Replicated": {"Replicas": 0}}})
        servers = [str(n["Status"]["Addr"]) for n in swarm.get("/nodes")]
        wait(lambda: len(swarm.running("probe")) == len(servers), timeout=60)

        appear: list[float] = []
        vanish: list[float] = []
        for replicas in range(1, args.runs + 1):
            known = {t["ID"] for t in swarm.running("target")}
            scale(swarm, replicas)
            wait(functools.partial(has_running, swarm, replicas), timeout=60, interval=0.005)
            new = next(t for t in swarm.running("target") if t["ID"] not in known)
            ip = address(new)
            wait(functools.partial(resolves_everywhere, servers, ip), timeout=30, interval=0.01)
            appear.append(time.time() - started_at(new))
        for replicas in range(args.runs - 1, -1, -1):
            before = {address(t) for t in swarm.running("target")}
            scale(swarm, replicas)
            stopped = time.time()
            wait(functools.partial(fewer_everywhere, servers, before), timeout=30, interval=0.01)
            vanish.append(time.time() - stopped)
        print(f"a running task resolves on all {len(servers)} nodes: {summary(appear)}")
        print(f"a scaled-away task no longer resolves on any node (from the scale request): {summary(vanish)}")
    finally:
        swarm.down()


def scale(swarm: Swarm, replicas: int) -> None:
    current = swarm.get("/services/target")
    spec = current["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = replicas
    swarm.post(f"/services/{current['ID']}/update", spec, version=current["Version"]["Index"])


if __name__ == "__main__":
    main()
