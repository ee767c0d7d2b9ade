"""Shared pieces of the benchmarks: a playground on its own loopback block, and API helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal import playground


class Swarm:
    def __init__(self, managers: int, workers: int, subnet: str, routing_mesh: str = "auto",
                 executor: str = "process") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
        self.subnet = subnet
        self.nodes = playground.up(managers, workers, lambda _: None, base=self.base, subnet=subnet,
                                   routing_mesh=routing_mesh, executor=executor)

    def api(self) -> Any:
        return playground.api(self.nodes[0].socket)

    def get(self, path: str, **params: Any) -> Any:
        with self.api() as client:
            response = client.get(path, params=params)
            response.raise_for_status()
            return response.json()

    def post(self, path: str, body: Any, **params: Any) -> Any:
        with self.api() as client:
            response = client.post(path, json=body, params=params)
            response.raise_for_status()
            return response.json() if response.content else None

    def running(self, service: str) -> list[dict[str, Any]]:
        nodes = {n["ID"]: n for n in self.get("/nodes")}
        tasks = self.get("/tasks", filters=json.dumps({"service": [service]}))
        return [t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
                and nodes.get(t["NodeID"], {}).get("Status", {}).get("State") == "ready"]

    def kill(self, name: str) -> None:
        node = next(n for n in self.nodes if n.name == name)
        for pid in {node.pid, *playground.processes_under(Path(node.state_dir))}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart(self, name: str) -> None:
        node = next(n for n in self.nodes if n.name == name)
        proc, _, sock = playground.start_daemon(name, self.base, ["--publish-addr", node.address])
        node.pid = proc.pid
        playground.wait_for_socket(sock, proc)

    def down(self) -> None:
        playground.down(lambda _: None, self.base)


def wait(check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> float:
    """Seconds until `check()` holds (polling every `interval`); raises after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def summary(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f}s  min {min(values):.2f}s  max {max(values):.2f}s  "
            f"runs {', '.join(f'{v:.2f}' for v in values)}")
