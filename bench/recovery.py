"""Time from `kill -9` of a worker (daemon and its task processes) to all replicas running again.

Default settings (heartbeat period 1 s). Prints the median of N runs, then watches a loaded machine for false
Down marks. Usage: python -m bench.recovery [--runs 5] [--load-seconds 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from bench.common import Swarm, summary, wait

REPLICAS = 6


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    args = parser.parse_args()
    swarm = Swarm(1, 3, "127.0.40")
    try:
        swarm.post("/services/create", {"Name": "web", "Mode": {"Replicated": {"Replicas": REPLICAS}},
                                        "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                                            "Args": ["sleep", "100000"]}}})
        wait(lambda: len(swarm.running("web")) == REPLICAS)
        names = {n["ID"]: n["Description"]["Hostname"] for n in swarm.get("/nodes")}
        times = []
        for _ in range(args.runs):
            per_node: dict[str, int] = {}
            for task in swarm.running("web"):
                per_node[names[task["NodeID"]]] = per_node.get(names[task["NodeID"]], 0) + 1
            victim = max((n for n in per_node if n.startswith("worker")), key=lambda n: per_node[n])
            start = time.monotonic()
            swarm.kill(victim)
            wait(lambda victim=victim: len(swarm.running("web")) == REPLICAS and
                 all(names[t["NodeID"]] != victim for t in swarm.running("web")))
            times.append(time.monotonic() - start)
            print(f"killed {victim} ({per_node[victim]} replicas): all {REPLICAS} running again after "
                  f"{times[-1]:.2f}s", flush=True)
            swarm.restart(victim)
            wait(lambda: all(n["Status"]["State"] == "ready" for n in swarm.get("/nodes")))
            # Spread the replicas again so the next victim has some (recovery does not rebalance).
            swarm.post("/services/create", {"Name": f"tmp{len(times)}", "Mode": {"Replicated": {"Replicas": 0}},
                                            "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}})
            service = swarm.get("/services/web")
            spec = service["Spec"]
            spec["TaskTemplate"]["ForceUpdate"] = len(times)
            spec["Mode"]["Replicated"]["Replicas"] = 0
            swarm.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])
            wait(lambda: not swarm.running("web"))
            service = swarm.get("/services/web")
            spec["Mode"]["Replicated"]["Replicas"] = REPLICAS
            swarm.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])
            wait(lambda: len(swarm.running("web")) == REPLICAS)
        print(f"kill -9 worker -> {REPLICAS} replicas running: {summary(times)}")

        cores = multiprocessing.cpu_count()
        print(f"loading all {cores} cores for {args.load_seconds:.0f}s and watching for false Down marks ...",
              flush=True)
        load = [multiprocessing.Process(target=busy, args=(args.load_seconds,)) for _ in range(cores * 2)]
        for proc in load:
            proc.start()
        false_down = 0
        end = time.monotonic() + args.load_seconds
        while time.monotonic() < end:
            false_down = max(false_down, sum(n["Status"]["State"] != "ready" for n in swarm.get("/nodes")))
            time.sleep(0.2)
        for proc in load:
            proc.join()
        print(f"nodes seen not ready under load (x{cores * 2} busy processes): {false_down}")
    finally:
        swarm.down()


if __name__ == "__main__":
    main()
