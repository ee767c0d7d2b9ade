"""Requests per second and p99 latency of a small HTTP response: direct to the task, through the userspace
mesh and through the kernel (nftables) mesh, measured in the same run with wrk.

One manager and two workers on loopback; one nginx task pinned to worker1; the mesh is entered on worker2, so
every request crosses from one node to another as it would in a cluster. Each data path gets its own swarm
(the path is a daemon setting); the direct figure is measured again in each, and ratios are against it.
Needs `wrk` and `nginx` (Debian: apt-get install wrk nginx-light). Usage: python -m bench.mesh [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import urllib.request
from pathlib import Path

from bench.common import Swarm, wait

PUBLISHED = 8080
# nginx as a process-executor task, listening on the node port the agent gives it.
NGINX = ('printf "daemon off; worker_processes 1; pid $PWD/nginx.pid; error_log stderr; events {} '
         'http { access_log off; keepalive_requests 1000000; server { listen $PORT; '
         'location / { return 200 \\"hello\\\\n\\"; } } }" > nginx.conf && exec nginx -c "$PWD/nginx.conf"')


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) of one wrk run."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported errors for {url}: {errors.group(0)}")
    return rps, p99


def task_port(pid: int) -> int:
    """The port the task's process listens on (nginx rewrites its environment, so $PORT cannot be read)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            return int(fields[1].split(":")[1], 16)
    raise RuntimeError(f"process {pid} listens on no TCP port")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


Runs = list[tuple[float, float]]


def docker_proxy(listen: str, port: int, target: str, target_port: int) -> subprocess.Popen[bytes] | None:
    """Docker's own userspace proxy (Go), as a baseline for the userspace mesh, when it is installed."""
    program = shutil.which("docker-proxy") or shutil.which("docker-proxy", path="/usr/sbin:/usr/bin")
    if program is None:
        return None
    # It reports readiness on fd 3 to dockerd; give it somewhere harmless to write.
    command = (f"exec {program} -proto tcp -host-ip {listen} -host-port {port} -container-ip {target} "
               f"-container-port {target_port} 3>/dev/null")
    return subprocess.Popen(["sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def measure(routing_mesh: str, subnet: str, seconds: int, rounds: int,
            connections: list[int]) -> dict[int, dict[str, Runs]]:
    """For each connection count, the runs of each path, alternating so that drift hits them alike."""
    swarm = Swarm(1, 2, subnet, routing_mesh=routing_mesh)
    try:
        swarm.post("/services/create", {
            "Name": "web", "Mode": {"Replicated": {"Replicas": 1}},
            "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": PUBLISHED}]},
            "TaskTemplate": {"ContainerSpec": {"Image": "nginx", "Command": ["sh", "-c", NGINX]},
                             "Placement": {"Constraints": ["node.hostname==worker1"]}}})
        wait(lambda: len(swarm.running("web")) == 1, timeout=60)
        [task] = swarm.running("web")
        node_port = task_port(int(task["Status"]["ContainerStatus"]["PID"]))
        worker1 = next(n for n in swarm.nodes if n.name == "worker1")
        worker2 = next(n for n in swarm.nodes if n.name == "worker2")
        urls = {"direct": f"http://{worker1.address}:{node_port}/",
                routing_mesh: f"http://{worker2.address}:{PUBLISHED}/"}
        wait(lambda: answers(urls[routing_mesh]), timeout=30)
        baseline = docker_proxy(worker2.address, 18099, worker1.address, node_port) if routing_mesh == "userspace" \
            else None
        if baseline is not None:
            urls["docker-proxy"] = f"http://{worker2.address}:18099/"
            wait(lambda: answers(urls["docker-proxy"]), timeout=10)
        results: dict[int, dict[str, Runs]] = {}
        try:
            for count in connections:
                runs: dict[str, Runs] = {path: [] for path in urls}
                for _ in range(rounds):
                    for path, url in urls.items():
                        runs[path].append(wrk(url, seconds, count))
                results[count] = runs
        finally:
            if baseline is not None:
                baseline.kill()
                baseline.wait()
        return results
    finally:
        swarm.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="16,64", help="wrk connection counts, comma separated")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not shutil.which(tool, path="/usr/sbin"):
            raise SystemExit(f"bench.mesh needs {tool}: apt-get install wrk nginx-light")
    connections = [int(c) for c in args.connections.split(",")]
    print(f"small HTTP response (nginx), wrk 1 thread, keep-alive, {args.seconds}s per run; direct and mesh runs "
          f"alternate, {args.rounds} rounds; medians")
    print(f"{'path':<13}{'conns':>6}{'req/s':>10}{'p99 ms':>9}{'vs direct':>11}   ratios per round")
    for mode, subnet in (("userspace", "127.0.44"), ("kernel", "127.0.45")):
        for count, runs in measure(mode, subnet, args.seconds, args.rounds, connections).items():
            for path, path_runs in runs.items():
                ratios = [r[0] / d[0] for r, d in zip(path_runs, runs["direct"], strict=True)]
                rps = statistics.median(r[0] for r in path_runs)
                p99 = statistics.median(r[1] for r in path_runs)
                extra = "  " + " ".join(f"{r:.2f}" for r in ratios) if path != "direct" else ""
                print(f"{path:<13}{count:>6}{rps:>10.0f}{p99:>9.2f}{statistics.median(ratios):>10.2f}x{extra}")


if __name__ == "__main__":
    main()
