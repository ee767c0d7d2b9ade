"""Cluster test harness: real daemons and real etcd members on loopback addresses, driven through the real
CLI and API. Each cluster gets its own 127.x.y.0/24 block, so test files can run in parallel."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from shoal import playground
from shoal.playground import PlaygroundNode

T = TypeVar("T")

_counter = itertools.count(1)


def _subnet() -> str:
    """A 127.x.y block for one cluster: per pytest worker, and skipping blocks another run is using."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    while True:
        subnet = f"127.{20 + index}.{next(_counter)}"
        if playground._port_free(f"{subnet}.2", 2377) and playground._port_free(f"{subnet}.2", 2379):
            return subnet


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc  # shown if the deadline passes; an error is never a success
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Sampler:
    """Looks at the cluster from a thread of its own while a scenario runs (`with SomeSampler(...) as s:`):
    `_run` calls `sample()` every `interval` seconds until the block ends."""

    interval = 0.2

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self: S) -> S:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError


S = TypeVar("S", bound=Sampler)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cluster:
    base: Path
    subnet: str
    nodes: list[PlaygroundNode] = field(default_factory=list)
    executor: str = "process"
    # Tests use the userspace mesh unless they test the kernel path: nftables tables live in the machine's
    # network namespace, shared by every cluster on it.
    routing_mesh: str = "userspace"

    def daemon_args(self) -> list[str]:
        return ["--executor", self.executor, "--routing-mesh", self.routing_mesh]

    @staticmethod
    def data_path_args(node: PlaygroundNode) -> list[str]:
        """Nodes sharing this host each need a VXLAN port of their own; a restarted node keeps its own."""
        return ["--data-path-port", str(node.data_path_port or playground.free_udp_port())]

    # ---- access ---------------------------------------------------------------------------------------

    def node(self, name: str) -> PlaygroundNode:
        return next(n for n in self.nodes if n.name == name)

    @property
    def manager(self) -> PlaygroundNode:
        return self.nodes[0]

    def api(self, name: str | None = None) -> httpx.Client:
        return playground.api((self.node(name) if name else self.manager).socket)

    def get(self, path: str, **params: Any) -> Any:
        with self.api() as client:
            response = client.get(path, params=params)
            response.raise_for_status()
            return response.json()

    def shoal(self, *args: str, node: str | None = None, timeout: float = 60,
              environ: dict[str, str] | None = None) -> Result:
        """Run the real CLI against a node (the first manager by default), `environ` added to its environment."""
        target = self.node(node) if node else self.manager
        env = dict(os.environ, **(environ or {}), SHOAL_HOST=f"unix://{target.socket}")
        proc = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, node: str | None = None, timeout: float = 60) -> str:
        result = self.shoal(*args, node=node, timeout=timeout)
        assert result.code == 0, f"shoal {' '.join(args)} failed: {result.err}"
        return result.out

    # ---- state ----------------------------------------------------------------------------------------

    def node_ids(self) -> dict[str, str]:
        return {n["Description"]["Hostname"]: n["ID"] for n in self.get("/nodes")}

    def tasks(self, service: str) -> list[dict[str, Any]]:
        return self.get("/tasks", filters=json.dumps({"service": [service]}))

    def running(self, service: str) -> list[dict[str, Any]]:
        """Tasks wanted and observed running, on nodes that are up."""
        nodes = {n["ID"]: n for n in self.get("/nodes")}
        return [t for t in self.tasks(service)
                if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
                and nodes.get(t["NodeID"], {}).get("Status", {}).get("State") == "ready"]

    def placement(self, service: str) -> dict[str, int]:
        names = {v: k for k, v in self.node_ids().items()}
        counts: dict[str, int] = {}
        for task in self.running(service):
            counts[names[task["NodeID"]]] = counts.get(names[task["NodeID"]], 0) + 1
        return counts

    def wait_running(self, service: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        return wait_for(f"{count} running tasks of {service}",
                        lambda: r if len(r := self.running(service)) == count else None, timeout)

    def node_state(self, name: str) -> str:
        return next(n["Status"]["State"] for n in self.get("/nodes") if n["Description"]["Hostname"] == name)

    # ---- topology ---------------------------------------------------------------------------------------

    def add_node(self, name: str, role: str = "worker") -> PlaygroundNode:
        index = len(self.nodes)
        address = f"{self.subnet}.{playground.FIRST_ADDRESS + index}"
        data_path_port = playground.free_udp_port()
        proc, state_dir, sock = playground.start_daemon(name, self.base, [
            *self.daemon_args(), "--publish-addr", address, "--data-path-port", str(data_path_port)])
        node = PlaygroundNode(name, role, address, proc.pid, str(sock), str(state_dir), data_path_port=data_path_port)
        self.nodes.append(node)
        self._save()
        playground.wait_for_socket(sock, proc)
        token = self.ok("swarm", "join-token", "-q", role).strip()
        result = self.shoal("swarm", "join", "--token", token, "--advertise-addr", address,
                            "--listen-addr", f"{address}:2377", f"{self.manager.address}:2377", node=name)
        assert result.code == 0, result.err
        return node

    def kill(self, name: str) -> float:
        """SIGKILL a node's daemon and every process it started (tasks, etcd); returns the kill time."""
        node = self.node(name)
        pids = playground.processes_under(Path(node.state_dir))
        killed_at = time.monotonic()
        for pid in {node.pid, *pids}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(f"{name}'s processes to exit", lambda: not playground.processes_under(Path(node.state_dir))
                 and not playground._alive(node.pid), timeout=10)
        return killed_at

    def restart(self, name: str) -> None:
        """Start a node's daemon again on its existing state."""
        node = self.node(name)
        proc, _, sock = playground.start_daemon(name, self.base, [*self.daemon_args(), "--publish-addr",
                                                                   node.address, *self.data_path_args(node)])
        node.pid = proc.pid
        self._save()
        playground.wait_for_socket(sock, proc)

    def _save(self) -> None:
        from dataclasses import asdict

        (self.base / "playground.json").write_text(json.dumps([asdict(n) for n in self.nodes]))

    def task_processes(self) -> dict[str, list[int]]:
        """Live task processes under this cluster (not daemons, not etcd), by task ID."""
        found: dict[str, list[int]] = {}
        for pid in playground.processes_under(self.base):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(b"SHOAL_TASK_ID="):
                    found.setdefault(item.split(b"=", 1)[1].decode(), []).append(pid)
        return found

    def down(self) -> None:
        playground.down(lambda _: None, self.base)


def make_cluster(tmp_path_factory: pytest.TempPathFactory, managers: int = 1, workers: int = 2,
                 executor: str = "process", routing_mesh: str = "userspace") -> Cluster:
    base = tmp_path_factory.mktemp("swarm")
    subnet = _subnet()
    cluster = Cluster(base, subnet, executor=executor, routing_mesh=routing_mesh)
    try:
        cluster.nodes = playground.up(managers, workers, lambda _: None, base=base, subnet=subnet, executor=executor,
                                      routing_mesh=routing_mesh)
    except BaseException:
        cluster.down()
        raise
    return cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[FAILED_KEY] = report.failed


FAILED_KEY = pytest.StashKey[bool]()


def dump_logs(cluster: Cluster, lines: int = 40) -> None:
    """Print the end of every daemon's log, to see what a failed cluster test's swarm was doing."""
    for node in cluster.nodes:
        log = Path(node.state_dir) / "daemon.log"
        with contextlib.suppress(OSError):
            tail = [line for line in log.read_text(errors="replace").splitlines() if "aiohttp.access" not in line]
            print(f"\n----- {node.name} daemon.log (last {lines} lines) -----")
            print("\n".join(tail[-lines:]))


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A fresh swarm of one manager and two workers, removed after the test (its logs shown if it failed)."""
    c = make_cluster(tmp_path_factory)
    try:
        yield c
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(c)
        c.down()
