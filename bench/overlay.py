"""The overlay's data path: requests between two services over the service's virtual IP (kernel DNAT in the
client's namespace) against the same requests sent straight to the tasks' addresses, in the same run.

On a docker-executor playground (1 manager, 2 workers, this machine's Docker Engine), a service `srv` (busybox
httpd, 2 replicas, one per worker) and two client tasks on the manager, all on one overlay network: every
request crosses a VXLAN tunnel. The load generator is this Python, run inside a client container's network
namespace (nsenter), so it sees exactly what the container sees: each request is a new TCP connection (DNAT is
decided per connection), `--concurrency` at a time for `--seconds`; the two modes alternate for `--rounds`.
Each mode has a client container of its own. One client sending thousands of connections a second both
ways would reuse a source port towards the same task within its TIME_WAIT, once straight and once through the
VIP: the two connections' initial sequence numbers are unrelated (they differ in destination), so the task's
TIME_WAIT may refuse the second SYN, and here about 1 % of the connections waited for a SYN retry (1 s). That is a property of NAT load balancing, not of
the overlay, and it is not what is measured here.

Usage: python -m bench.overlay [--seconds 10] [--rounds 3] [--concurrency 16]   (root, a Docker Engine)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import subprocess
import sys
import time

import docker

from bench.common import Swarm, wait
from tests.dockerimages import IMAGE_1, ensure_busybox_images

CLIENT = r"""
import asyncio, json, sys, time
targets, seconds, concurrency = sys.argv[1].split(","), float(sys.argv[2]), int(sys.argv[3])
latencies, errors = [], 0
async def one(ip):
    reader, writer = await asyncio.open_connection(ip, 80)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    if b" 200 " not in data[:16]:
        raise ValueError(data[:40])
async def worker(index):
    global errors
    end, i = time.monotonic() + seconds, index
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            await asyncio.wait_for(one(targets[i % len(targets)]), 10)
            latencies.append(time.monotonic() - started)
        except Exception:
            errors += 1
        i += 1
async def main():
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
asyncio.run(main())
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def run_load(pid: int, targets: list[str], seconds: float, concurrency: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) of a run from inside the namespace of process `pid`."""
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", CLIENT, ",".join(targets),
                          str(seconds), str(concurrency)], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    latencies = sorted(result["latencies"])
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    return (len(latencies) / seconds, statistics.median(latencies) * 1000 if latencies else 0.0, p99 * 1000,
            int(result["errors"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--subnet", default="127.0.62")
    args = parser.parse_args()

    ensure_busybox_images()
    engine = docker.from_env()
    print("starting 1 manager and 2 workers (docker executor)")
    swarm = Swarm(1, 2, args.subnet, routing_mesh="userspace", executor="docker")
    try:
        swarm.post("/networks/create", {"Name": "bench", "Driver": "overlay"})
        server = ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"]
        for name, replicas, role, command in (("srv", 2, "worker", server),
                                              ("cli", 2, "manager", ["sleep", "1000000"])):
            swarm.post("/services/create", {
                "Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
                "TaskTemplate": {"ContainerSpec": {"Image": IMAGE_1, "Command": command},
                                 "Networks": [{"Target": "bench"}],
                                 "Placement": {"Constraints": [f"node.role=={role}"]}}})
        wait(lambda: len(swarm.running("srv")) == 2 and len(swarm.running("cli")) == 2, timeout=120)
        service = swarm.get("/services/srv")
        vip = str(ipaddress.ip_interface(service["Endpoint"]["VirtualIPs"][0]["Addr"]).ip)
        direct = [str(ipaddress.ip_interface(t["NetworksAttachments"][0]["Addresses"][0]).ip)
                  for t in swarm.running("srv")]
        pids = []
        for client in swarm.running("cli"):
            container = engine.containers.list(filters={"label": f"com.docker.swarm.task.id={client['ID']}"})[0]
            pids.append(int(container.attrs["State"]["Pid"]))
        time.sleep(1)
        results: dict[str, list[tuple[float, float, float, int]]] = {"direct": [], "vip": []}
        for round_ in range(1, args.rounds + 1):
            for mode, targets, pid in (("direct", direct, pids[0]), ("vip", [vip], pids[1])):
                figures = run_load(pid, targets, args.seconds, args.concurrency)
                results[mode].append(figures)
                print(f"round {round_} {mode:6} {figures[0]:8.0f} req/s  p50 {figures[1]:6.2f} ms  "
                      f"p99 {figures[2]:6.2f} ms  errors {figures[3]}")
        rate = {mode: statistics.median(r[0] for r in runs) for mode, runs in results.items()}
        p99 = {mode: statistics.median(r[2] for r in runs) for mode, runs in results.items()}
        print(f"direct to the tasks ({', '.join(direct)}): {rate['direct']:.0f} req/s, p99 {p99['direct']:.2f} ms")
        print(f"through the virtual IP {vip}: {rate['vip']:.0f} req/s, p99 {p99['vip']:.2f} ms")
        print(f"virtual IP / direct: {rate['vip'] / rate['direct']:.2f}x the rate, "
              f"{p99['vip'] / p99['direct']:.2f}x the p99 (medians of {args.rounds} rounds)")
    finally:
        swarm.down()
        engine.close()


if __name__ == "__main__":
    main()
