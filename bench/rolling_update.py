"""Wall time of a rolling update and of a rollback, against the lower bound set by the delays.

6 replicas, parallelism 1, delay 2 s, tasks that stop on SIGTERM, default monitor (5 s). The update is done when
UpdateStatus says completed (which includes the monitor period after the last batch), so the lower bound is
5 delays between 6 batches + the monitor period. Usage: python -m bench.rolling_update [--runs 3]
"""

from __future__ import annotations

import argparse
import time

from bench.common import Swarm, summary, wait

REPLICAS, DELAY, MONITOR = 6, 2.0, 5.0


def update_state(swarm: Swarm) -> str:
    return str((swarm.get("/services/web").get("UpdateStatus") or {}).get("State", ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    swarm = Swarm(1, 2, "127.0.42")
    lower = (REPLICAS - 1) * DELAY + MONITOR
    updates, rollbacks, converged = [], [], []
    try:
        swarm.post("/services/create", {
            "Name": "web", "Mode": {"Replicated": {"Replicas": REPLICAS}},
            "UpdateConfig": {"Parallelism": 1, "Delay": int(DELAY * 1e9), "Monitor": int(MONITOR * 1e9)},
            "RollbackConfig": {"Parallelism": 1, "Delay": int(DELAY * 1e9), "Monitor": int(MONITOR * 1e9)},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "100000"]}}})
        wait(lambda: len(swarm.running("web")) == REPLICAS)
        for run in range(args.runs):
            service = swarm.get("/services/web")
            spec = service["Spec"]
            spec["TaskTemplate"]["ContainerSpec"]["Args"] = ["sleep", str(200000 + run)]
            start = time.monotonic()
            swarm.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])
            converged.append(wait(lambda spec=spec: sum(
                t["Spec"]["ContainerSpec"]["Args"] == spec["TaskTemplate"]["ContainerSpec"]["Args"]
                for t in swarm.running("web")) == REPLICAS, timeout=120))
            wait(lambda: update_state(swarm) == "completed", timeout=120)
            updates.append(time.monotonic() - start)
            service = swarm.get("/services/web")
            start = time.monotonic()
            swarm.post(f"/services/{service['ID']}/update", service["Spec"], version=service["Version"]["Index"],
                       rollback="previous")
            wait(lambda: update_state(swarm) == "rollback_completed", timeout=120)
            rollbacks.append(time.monotonic() - start)
        print(f"rolling update of {REPLICAS} replicas (parallelism 1, delay {DELAY:.0f}s, monitor {MONITOR:.0f}s):")
        print(f"  all tasks on the new spec: {summary(converged)}  (lower bound {(REPLICAS - 1) * DELAY:.1f}s)")
        print(f"  UpdateStatus completed:    {summary(updates)}  (lower bound {lower:.1f}s)")
        print(f"  rollback completed:        {summary(rollbacks)}  (lower bound {lower:.1f}s)")
    finally:
        swarm.down()


if __name__ == "__main__":
    main()
