"""Time for `service create --replicas 30` to converge on 3 nodes with the process executor, and to scale 30 → 3.

Usage: python -m bench.create [--replicas 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import time

from bench.common import Swarm, summary, wait


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    swarm = Swarm(1, 2, "127.0.41")
    created, scaled = [], []
    try:
        for run in range(args.runs):
            name = f"web{run}"
            start = time.monotonic()
            swarm.post("/services/create", {"Name": name, "Mode": {"Replicated": {"Replicas": args.replicas}},
                                            "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                                                "Args": ["sleep", "100000"]}}})
            wait(lambda name=name: len(swarm.running(name)) == args.replicas)
            created.append(time.monotonic() - start)
            service = swarm.get(f"/services/{name}")
            spec = service["Spec"]
            spec["Mode"]["Replicated"]["Replicas"] = 3
            start = time.monotonic()
            swarm.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])
            wait(lambda name=name: len(swarm.running(name)) == 3 and
                 sum(t["Status"]["State"] == "running" for t in swarm.get("/tasks")) <= 3)
            scaled.append(time.monotonic() - start)
            with swarm.api() as client:
                client.delete(f"/services/{name}")
            wait(lambda: not swarm.get("/tasks"))
        print(f"create --replicas {args.replicas} on 3 nodes -> all running: {summary(created)}")
        print(f"scale {args.replicas} -> 3 (the others stopped): {summary(scaled)}")
    finally:
        swarm.down()


if __name__ == "__main__":
    main()
