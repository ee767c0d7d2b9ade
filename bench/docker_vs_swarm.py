"""shoal against Docker swarm mode, side by side on this machine's Docker Engine.

shoal: 3 nodes (1 manager, 2 workers) with the docker executor, all sharing the engine. Docker: swarm mode on
the same engine (`docker swarm init --advertise-addr 127.0.0.1`, listening on a free port of 127.0.0.1 as the
shoal nodes hold 2377), a single-node swarm since there is one engine here; it is left (`docker swarm leave --force`) at the end whatever happens.

For each: the time for a 30-replica service of `shoal-busybox:1` (`sleep 100000`) to reach running (created
detached, then the tasks are polled until 30 run), and the time to scale it 30 → 3 (until 27 of its containers
no longer run). Both specs set Init, so `sleep` (which as PID 1 ignores SIGTERM) stops at once on either side:
the figures measure orchestration, not a stop grace period. Median of the runs, with the ratio shoal/Docker.

Usage: python -m bench.docker_vs_swarm [--replicas 30] [--scale-to 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import ServiceMode

from bench.common import summary, wait
from shoal import playground
from tests.dockerimages import IMAGE_1, ensure_busybox_images

SUBNET = "127.0.70"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"
COMMAND = ["sleep", "100000"]
TIMEOUT = 180.0


class ShoalSide:
    """A 3-node shoal playground with the docker executor, driven through its API."""

    label = "shoal (3 nodes, docker executor)"

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.base = Path(tempfile.mkdtemp(prefix="shoal-bench-docker-"))
        self.nodes = playground.up(1, 2, lambda _: None, base=self.base, subnet=SUBNET, executor="docker")
        self.node_ids = {n["ID"] for n in self.get("/nodes")}

    def get(self, path: str, **params: Any) -> Any:
        with playground.api(self.nodes[0].socket) as client:
            response = client.get(path, params=params)
            response.raise_for_status()
            return response.json()

    def post(self, path: str, body: Any, **params: Any) -> Any:
        with playground.api(self.nodes[0].socket) as client:
            response = client.post(path, json=body, params=params)
            response.raise_for_status()
            return response.json() if response.content else None

    def create(self, name: str, replicas: int) -> None:
        self.post("/services/create", {
            "Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE_1, "Args": COMMAND, "Init": True}}})

    def running_tasks(self, name: str) -> int:
        tasks = self.get("/tasks", filters=json.dumps({"service": [name], "desired-state": ["running"]}))
        return sum(t["Status"]["State"] == "running" for t in tasks)

    def scale(self, name: str, replicas: int) -> None:
        service = self.get(f"/services/{name}")
        spec = service["Spec"]
        spec["Mode"]["Replicated"]["Replicas"] = replicas
        self.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])

    def remove(self, name: str) -> None:
        with playground.api(self.nodes[0].socket) as client:
            client.delete(f"/services/{name}").raise_for_status()

    def containers(self, name: str, all_states: bool = False) -> int:
        """This cluster's containers of the service (the engine is shared: others may run a service so named)."""
        listed = self.engine.api.containers(all=all_states, filters={"label": f"{LABEL_SERVICE_NAME}={name}"})
        return sum((c.get("Labels") or {}).get(LABEL_NODE_ID) in self.node_ids for c in listed)

    def close(self) -> None:
        playground.down(lambda _: None, self.base)
        for container in self.engine.api.containers(all=True, filters={"label": LABEL_NODE_ID}):
            if (container.get("Labels") or {}).get(LABEL_NODE_ID) in self.node_ids:
                self.engine.api.remove_container(container["Id"], force=True)


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


class DockerSide:
    """Docker swarm mode on the host engine, driven through the docker SDK."""

    label = "Docker swarm mode (1 node: the one engine)"

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        state = engine.info().get("Swarm", {}).get("LocalNodeState")
        if state not in ("inactive", "", None):
            raise SystemExit(f"the Docker Engine is already in a swarm ({state}): not touching it")
        try:
            # Docker's default listen address, 0.0.0.0:2377, collides with the shoal nodes' 127.x.y.z:2377.
            listen = f"127.0.0.1:{free_port('127.0.0.1')}"
            done = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                                   listen], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"docker swarm init failed: {done.stderr.strip()}")
            self.node_ids = {n.id for n in engine.nodes.list()}
        except BaseException:
            self.close()
            raise

    def create(self, name: str, replicas: int) -> None:
        self.engine.services.create(IMAGE_1, command=COMMAND[:1], args=COMMAND[1:], name=name, init=True,
                                    mode=ServiceMode("replicated", replicas=replicas))

    def running_tasks(self, name: str) -> int:
        tasks = self.engine.api.tasks(filters={"service": name, "desired-state": "running"})
        return sum(t["Status"]["State"] == "running" for t in tasks)

    def scale(self, name: str, replicas: int) -> None:
        self.engine.services.get(name).scale(replicas)

    def remove(self, name: str) -> None:
        self.engine.services.get(name).remove()

    def containers(self, name: str, all_states: bool = False) -> int:
        listed = self.engine.api.containers(all=all_states, filters={"label": f"{LABEL_SERVICE_NAME}={name}"})
        return sum((c.get("Labels") or {}).get(LABEL_NODE_ID) in self.node_ids for c in listed)

    def close(self) -> None:
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, text=True)


Side = ShoalSide | DockerSide


def one_run(side: Side, name: str, replicas: int, scale_to: int) -> tuple[float, float]:
    """(seconds to `replicas` running tasks, seconds from the scale request to `scale_to` running containers)."""
    start = time.monotonic()
    side.create(name, replicas)
    wait(lambda: side.running_tasks(name) == replicas, timeout=TIMEOUT)
    created = time.monotonic() - start
    if side.containers(name) != replicas:
        raise AssertionError(f"{side.label}: {replicas} tasks run but {side.containers(name)} containers")
    start = time.monotonic()
    side.scale(name, scale_to)
    wait(lambda: side.containers(name) == scale_to, timeout=TIMEOUT)
    scaled = time.monotonic() - start
    side.remove(name)
    wait(lambda: side.containers(name, all_states=True) == 0, timeout=TIMEOUT)
    return created, scaled


def ratio_line(what: str, shoal_times: list[float], docker_times: list[float]) -> str:
    shoal_median, docker_median = statistics.median(shoal_times), statistics.median(docker_times)
    return (f"{what}: shoal {shoal_median:.2f}s  Docker {docker_median:.2f}s  "
            f"ratio shoal/Docker {shoal_median / docker_median:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--scale-to", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ensure_busybox_images()
    engine = docker.from_env(version="auto", max_pool_size=32)
    sides: list[Side] = []
    results: dict[str, tuple[list[float], list[float]]] = {}
    try:
        sides.append(ShoalSide(engine))
        sides.append(DockerSide(engine))
        print(f"engine: Docker {engine.version()['Version']} on {os.uname().nodename}, {os.cpu_count()} CPUs")
        print("Docker swarm mode runs as a single-node swarm: this machine has one Docker Engine, which all "
              "three shoal nodes share too")
        for run in range(args.runs):
            # Alternate which side goes first, so neither always meets a warmer engine.
            for side in sides if run % 2 == 0 else sides[::-1]:
                created, scaled = one_run(side, f"bench{run}-{os.getpid()}", args.replicas, args.scale_to)
                results.setdefault(side.label, ([], []))
                results[side.label][0].append(created)
                results[side.label][1].append(scaled)
                print(f"run {run + 1} {side.label}: {args.replicas} running in {created:.2f}s, "
                      f"{args.replicas} -> {args.scale_to} in {scaled:.2f}s", flush=True)
    finally:
        for side in sides:
            try:
                side.close()
            except Exception as exc:  # noqa: BLE001 — the other side must still be cleaned up
                print(f"cleaning up {side.label}: {exc}", file=sys.stderr)
        engine.close()
    shoal_create, shoal_scale = results[ShoalSide.label]
    docker_create, docker_scale = results[DockerSide.label]
    print()
    for label, (create_times, scale_times) in results.items():
        print(f"{label}")
        print(f"  create --replicas {args.replicas} -> all running: {summary(create_times)}")
        print(f"  scale {args.replicas} -> {args.scale_to}: {summary(scale_times)}")
    print(ratio_line(f"create {args.replicas} -> running (median)", shoal_create, docker_create))
    print(ratio_line(f"scale {args.replicas} -> {args.scale_to} (median)", shoal_scale, docker_scale))


if __name__ == "__main__":
    main()
