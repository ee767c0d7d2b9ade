"""Stability under the failures a real machine sees, with real daemons, real etcd and real task processes.

- A worker daemon that crashes (SIGKILL of the daemon alone) and comes straight back keeps its tasks: they never
  stopped, so the replacements started meanwhile go and the originals stay, same process, same task.
- A worker that dies with its tasks still has them replaced at once: the grace kept for returning daemons must
  not cost fast recovery.
- A machine whose CPUs are saturated costs no leadership and no node: heartbeats and the leader's lease keep
  up, and the service still converges.

What must never happen is watched while it could: the API is sampled from a background thread, and every
revision the store went through is replayed from etcd's history afterwards, so that a slot claimed twice for
a few milliseconds is seen as surely as one claimed for seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from shoal import playground
from shoal.manager.store.base import Event, Snapshot
from shoal.manager.store.etcd import EtcdStore, make_client
from shoal.types import NODES, SERVICES, TASKS
from tests.cluster.conftest import FAILED_KEY, Cluster, Sampler, dump_logs, make_cluster, wait_for

pytestmark = pytest.mark.cluster

REPLICAS = 6
RECOVERY_WITHIN = 10.0  # seconds from a worker's death until its replicas run elsewhere
LOAD_REPLICAS = 600  # 200 task processes per node
LOAD_SCALED = 660
LOAD_PROCESSES = 4  # CPU-bound processes on a 2-core machine
LOAD_SECONDS = 20.0


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One manager and two workers, removed after the test; if it failed, longer log tails than conftest's
    (what the manager did through a whole scenario)."""
    c = make_cluster(tmp_path_factory)
    try:
        yield c
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(c, lines=150)
        c.down()


# ---- reading the cluster ----------------------------------------------------------------------------------


def get(client: httpx.Client, path: str, **params: Any) -> Any:
    response = client.get(path, params=params)
    response.raise_for_status()
    return response.json()


def view(client: httpx.Client, service: str) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
    """Node states by hostname, hostnames by node ID, and the service's tasks. Nodes are read before tasks, so a
    task counted on a ready node was on a node still ready when the tasks were read (no false doubles)."""
    nodes = get(client, "/nodes")
    tasks = get(client, "/tasks", filters=f'{{"service":["{service}"]}}')
    states = {n["Description"]["Hostname"]: n["Status"]["State"] for n in nodes}
    names = {n["ID"]: n["Description"]["Hostname"] for n in nodes}
    return states, names, tasks


def running_on_ready(states: dict[str, str], names: dict[str, str],
                     tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
            and states.get(names.get(t["NodeID"], ""), "") == "ready"]


def steady(cluster: Cluster, service: str, replicas: int, down: tuple[str, ...] = ()) -> str | None:
    """None when the cluster is steady: the nodes in `down` down and every other one ready, `replicas` tasks
    running on ready nodes, one per slot, and exactly one live task process for each of them (none other);
    else what is not."""
    with cluster.api() as client:
        states, names, tasks = view(client, service)
    expected = {name: "down" if name in down else "ready" for name in states}
    if states != expected:
        return f"nodes: {states}"
    running = running_on_ready(states, names, tasks)
    slots = [t["Slot"] for t in running]
    if len(running) != replicas or len(set(slots)) != len(slots):
        return f"{len(running)} running tasks in slots {sorted(slots)}"
    processes = cluster.task_processes()
    if sorted(processes) != sorted(t["ID"] for t in running) or any(len(p) != 1 for p in processes.values()):
        return f"{len(processes)} task processes for {len(running)} running tasks"
    return None


def still_running(cluster: Cluster, before: dict[str, list[int]]) -> dict[str, list[int]]:
    """Of the task processes seen before, those that still run (same task, same process)."""
    now = cluster.task_processes()
    return {task_id: pids for task_id, pids in before.items() if now.get(task_id) == pids}


def debug(client: httpx.Client) -> dict[str, Any]:
    return get(client, "/shoal/debug")


class Watch(Sampler):
    """Samples the cluster through its manager in a background thread while a scenario runs, because what
    must never happen may last less than the scenario's own checks can see: node states other than ready,
    slots running twice on ready nodes (with `tasks`), and the manager's leadership and node-loss counters."""

    def __init__(self, cluster: Cluster, service: str, interval: float, tasks: bool = True,
                 must_stay: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cluster = cluster
        self.must_stay = must_stay or {}
        self.service = service
        self.interval = interval
        self.with_tasks = tasks
        self.started = time.monotonic()
        self.transitions: list[str] = []  # node state changes, "+1.23s worker1 down"
        self.not_ready: set[str] = set()
        self.doubles: list[str] = []
        self.counters: list[str] = []  # samples where the manager's counters were not as they must stay
        self.wanted_max = 0  # most tasks wanted running at once
        self.lag_max_ms = 0.0
        self.stalls = 0
        self.agents_disconnected: set[str] = set()
        self.errors: list[str] = []
        self.samples = 0
        self.slowest = 0.0

    def at(self) -> str:
        return f"+{time.monotonic() - self.started:.2f}s"

    def _run(self) -> None:
        clients = {node.name: playground.api(node.socket, timeout=15) for node in self.cluster.nodes}
        try:
            self._sample(clients)
        finally:
            for client in clients.values():
                client.close()

    def _sample(self, clients: dict[str, httpx.Client]) -> None:
        manager = clients[self.cluster.manager.name]
        last: dict[str, str] = {}
        while not self._stop.wait(self.interval):
            began = time.monotonic()
            try:
                if self.with_tasks:  # as fast as it can: no more than the nodes and the tasks
                    states, names, tasks = view(manager, self.service)
                    self._check_tasks(states, names, tasks)
                else:
                    self._check_manager(debug(manager))
                    states = {n["Description"]["Hostname"]: n["Status"]["State"] for n in get(manager, "/nodes")}
                    self._check_agents(clients)
            except (httpx.HTTPError, OSError) as exc:
                self.errors.append(f"{self.at()} {exc!r}")
                continue
            self.samples += 1
            self.slowest = max(self.slowest, time.monotonic() - began)
            for name, state in states.items():
                if last.get(name) != state:
                    self.transitions.append(f"{self.at()} {name} {state}")
                if state != "ready":
                    self.not_ready.add(name)
            last = states

    def _check_manager(self, info: dict[str, Any]) -> None:
        manager = info.get("Manager", {})
        figures = {key: manager.get(key) for key in ("Leader", "ElectionsWon", "LeadershipsLost", "NodesMarkedDown")}
        if self.must_stay and figures != self.must_stay:
            self.counters.append(f"{self.at()} {figures}")
        loop = info.get("Loop", {})
        self.lag_max_ms = max(self.lag_max_ms, float(loop.get("lag_ms", {}).get("max", 0.0)))
        self.stalls = max(self.stalls, int(loop.get("stalls", 0)))

    def _check_tasks(self, states: dict[str, str], names: dict[str, str], tasks: list[dict[str, Any]]) -> None:
        self.wanted_max = max(self.wanted_max, sum(1 for t in tasks if t["DesiredState"] == "running"))
        slots = [t["Slot"] for t in running_on_ready(states, names, tasks)]
        twice = sorted({s for s in slots if slots.count(s) > 1})
        if twice:
            self.doubles.append(f"{self.at()} slots {twice} running twice on ready nodes "
                                f"(nodes {states})")

    def _check_agents(self, clients: dict[str, httpx.Client]) -> None:
        for name, client in clients.items():
            if not debug(client).get("Agent", {}).get("Connected", True):
                self.agents_disconnected.add(name)


class StoreHistory:
    """Every state the store went through since this was made, replayed from etcd's own history (each revision
    in commit order): what the swarm claimed at every moment, not only when a sampler happened to look. A
    window of a few milliseconds is as visible here as one of seconds."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.start = asyncio.run(self._snapshot())

    def _store(self) -> EtcdStore:
        manager = self.cluster.manager
        certs = Path(manager.state_dir) / "certs"
        # etcd lets in certificates of the store CA only, which managers hold.
        return EtcdStore(make_client([f"https://{manager.address}:2379"], (certs / "store-ca.pem").read_bytes(),
                                     (certs / "store.pem").read_bytes(), (certs / "node-key.pem").read_bytes()))

    async def _snapshot(self) -> Snapshot:
        store = self._store()
        try:
            return await store.snapshot()
        finally:
            await store.close()

    def replay(self) -> list[tuple[int, dict[str, dict[str, dict[str, Any]]]]]:
        """(revision, every document by kind and ID after it) for each revision since the start, up to now."""
        return asyncio.run(self._replay())

    async def _replay(self) -> list[tuple[int, dict[str, dict[str, dict[str, Any]]]]]:
        store = self._store()
        docs = {kind: dict(by_id) for kind, by_id in self.start.docs.items()}
        states: list[tuple[int, dict[str, dict[str, dict[str, Any]]]]] = []
        stream = cast(AsyncGenerator[list[Event], None], store.watch(self.start.revision))
        try:
            end = (await store.snapshot()).revision
            revision = self.start.revision
            while revision < end:
                try:
                    events: list[Event] = await asyncio.wait_for(anext(stream), 5)
                except TimeoutError:
                    break  # the revisions left changed no document
                for event in events:
                    if event.revision != revision and revision > self.start.revision:
                        states.append((revision, {kind: dict(by_id) for kind, by_id in docs.items()}))
                    revision = event.revision
                    if event.doc is None:
                        docs.setdefault(event.kind, {}).pop(event.obj_id, None)
                    else:
                        docs.setdefault(event.kind, {})[event.obj_id] = event.doc
            states.append((revision, docs))
        finally:
            await stream.aclose()
            await store.close()
        return states

    def doubled_slots(self, service: str) -> list[str]:
        """Each time a slot of `service` ran twice on ready nodes (two tasks wanted and reported running, both on
        nodes marked ready): the slots, the revisions that began and ended it, what they wrote, and how long it
        lasted by the times the writers stamped on their documents."""
        service_id = next(s["ID"] for s in self.cluster.get("/services") if s["Spec"]["Name"] == service)
        found = []
        before = self.start.docs
        began: tuple[int, str, str, list[int]] | None = None
        for revision, docs in self.replay():
            ready = {node_id for node_id, node in docs.get(NODES, {}).items()
                     if node.get("Status", {}).get("State") == "ready"}
            slots = [t["Slot"] for t in docs.get(TASKS, {}).values()
                     if t.get("ServiceID") == service_id and t.get("DesiredState") == "running"
                     and t.get("Status", {}).get("State") == "running" and t.get("NodeID") in ready]
            twice = sorted({slot for slot in slots if slots.count(slot) > 1})
            written, what = changes(before, docs)
            if twice and began is None:
                began = (revision, written, what, twice)
            elif not twice and began is not None:
                lasted = (stamp_seconds(written) - stamp_seconds(began[1])) * 1000
                found.append(f"slots {began[3]} from revision {began[0]} ({began[2]}, at {began[1]}) to revision "
                             f"{revision} ({what}, at {written}): {lasted:.0f} ms")
                began = None
            before = docs
        if began is not None:
            found.append(f"slots {began[3]} from revision {began[0]} ({began[2]}, at {began[1]}) on")
        return found


def changes(before: dict[str, dict[str, dict[str, Any]]], after: dict[str, dict[str, dict[str, Any]]]) \
        -> tuple[str, str]:
    """When one revision was written (the latest time its writer stamped) and what it changed, in short."""
    names = {node_id: node.get("Description", {}).get("Hostname", node_id[:12])
             for node_id, node in after.get(NODES, {}).items()}
    changed = [(kind, doc) for kind in (NODES, TASKS, SERVICES) for obj_id, doc in after.get(kind, {}).items()
               if before.get(kind, {}).get(obj_id) != doc]
    written = max((doc.get("UpdatedAt", "") for _, doc in changed), default="")
    what = []
    for kind, doc in changed:
        if kind == NODES:
            what.append(f"node {names[doc['ID']]} {doc.get('Status', {}).get('State')}")
        elif kind == TASKS:
            what.append(f"task {doc['ID'][:12]} slot {doc.get('Slot')} on {names.get(doc.get('NodeID', ''), '-')} "
                        f"{doc.get('DesiredState')}/{doc.get('Status', {}).get('State')}")
        else:
            what.append(f"service {doc.get('Spec', {}).get('Name')}")
    return written, "; ".join(what)


def stamp_seconds(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with nanoseconds, as shoal stamps its documents."""
    day, _, rest = stamp.rstrip("Z").partition("T")
    clock, _, fraction = rest.partition(".")
    whole = datetime.fromisoformat(f"{day}T{clock}+00:00").timestamp()
    return whole + float(f"0.{fraction or 0}")


# ---- a crashed daemon, a dead machine -----------------------------------------------------------------------


def start_web(cluster: Cluster, replicas: int = REPLICAS) -> dict[str, list[int]]:
    """The service "web", steady on all three nodes; returns its task processes."""
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", str(replicas), "busybox", "sleep", "100000")
    wait_for("web to be steady", lambda: steady(cluster, "web", replicas) is None, timeout=30)
    assert cluster.placement("web") == {"manager1": 2, "worker1": 2, "worker2": 2}
    return cluster.task_processes()


def test_a_worker_daemon_killed_and_restarted_keeps_its_tasks(cluster: Cluster) -> None:
    """A crashed daemon's tasks never stopped: restarting them, or running their slots twice, would be the swarm
    undoing work the node still does."""
    before = start_web(cluster)
    worker1 = cluster.node_ids()["worker1"]
    on_worker1 = {t["ID"] for t in cluster.running("web") if t["NodeID"] == worker1}
    assert len(on_worker1) == 2
    daemon = cluster.node("worker1").pid
    history = StoreHistory(cluster)

    with Watch(cluster, "web", interval=0.05) as watch:
        os.kill(daemon, signal.SIGKILL)  # the daemon alone: its task processes keep running
        killed_at = time.monotonic()
        wait_for("worker1's daemon to exit", lambda: not playground._alive(daemon), timeout=5)
        wait_for("worker1 marked down", lambda: cluster.node_state("worker1") == "down", timeout=10, interval=0.05)
        down_after = time.monotonic() - killed_at
        cluster.restart("worker1")
        answering_after = time.monotonic() - killed_at
        wait_for("worker1 ready again", lambda: cluster.node_state("worker1") == "ready", timeout=15, interval=0.05)
        ready_after = time.monotonic() - killed_at
        wait_for("a steady cluster", lambda: steady(cluster, "web", REPLICAS) is None, timeout=20)
        steady_after = time.monotonic() - killed_at

    tasks = cluster.tasks("web")
    replacements = [t for t in tasks if t["ID"] not in before]
    doubled = history.doubled_slots("web")
    print(f"\nworker1's daemon SIGKILLed: marked down after {down_after:.2f}s, restarted daemon answering after "
          f"{answering_after:.2f}s, ready after {ready_after:.2f}s, steady after {steady_after:.2f}s; "
          f"{len(replacements)} replacements started meanwhile (at most {watch.wanted_max} tasks wanted running), "
          f"{watch.samples} samples, node states {watch.transitions}; store revisions with a slot running twice on "
          f"ready nodes: {doubled or 'none'}")
    assert replacements, "worker1's tasks were not replaced while it was down: the scenario did not happen"
    kept = still_running(cluster, before)
    assert {t: before[t] for t in on_worker1} == {t: kept.get(t) for t in on_worker1}, \
        f"worker1's task processes were restarted: before {before}, now {cluster.task_processes()}"
    assert kept == before, f"a task was restarted: before {before}, now {cluster.task_processes()}"
    assert {t["ID"] for t in cluster.running("web")} == set(before)
    assert all(t["DesiredState"] != "running" for t in replacements)
    assert watch.doubles == [], watch.doubles
    assert doubled == [], f"the store said a slot ran twice on ready nodes: {doubled}"
    assert watch.errors == [], watch.errors


def test_a_worker_killed_with_its_tasks_has_them_replaced_at_once(cluster: Cluster) -> None:
    """The grace that lets a crashed daemon keep its tasks must not delay replacing those of a dead machine."""
    before = start_web(cluster)
    worker1 = cluster.node_ids()["worker1"]
    on_worker1 = {t["ID"] for t in cluster.running("web") if t["NodeID"] == worker1}
    history = StoreHistory(cluster)

    with Watch(cluster, "web", interval=0.05) as watch:
        killed_at = cluster.kill("worker1")  # the daemon and its task processes: the machine died
        wait_for(f"{REPLICAS} running again", lambda: steady(cluster, "web", REPLICAS, down=("worker1",)) is None,
                 timeout=RECOVERY_WITHIN - (time.monotonic() - killed_at), interval=0.05)
        recovered = time.monotonic() - killed_at
        # Back within the grace, without its tasks: nothing of it is kept, the replacements stay.
        cluster.restart("worker1")
        wait_for("a steady cluster after worker1 came back",
                 lambda: steady(cluster, "web", REPLICAS) is None, timeout=20)
        back = time.monotonic() - killed_at
    doubled = history.doubled_slots("web")

    print(f"\nworker1 killed with its tasks: {REPLICAS} replicas running again after {recovered:.2f}s; back and "
          f"steady after {back:.2f}s; node states {watch.transitions}; store revisions with a slot running twice "
          f"on ready nodes: {doubled or 'none'}")
    assert not set(cluster.task_processes()) & on_worker1
    assert still_running(cluster, before) == {t: p for t, p in before.items() if t not in on_worker1}, \
        "a task on a surviving node was restarted"
    assert "worker1" not in cluster.placement("web")
    assert watch.doubles == [], watch.doubles
    assert doubled == [], f"the store said a slot ran twice on ready nodes: {doubled}"


def log_lines(cluster: Cluster, name: str, *words: str) -> list[str]:
    """The lines of a node's daemon log that mention any of `words`: the evidence for a failed assertion."""
    log = Path(cluster.node(name).state_dir) / "daemon.log"
    return [line for line in log.read_text(errors="replace").splitlines()
            if "aiohttp.access" not in line and any(word in line for word in words)]


# ---- a loaded machine -------------------------------------------------------------------------------------


@contextmanager
def cpu_load(processes: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """CPU-bound processes, more than the machine has cores; always killed at the end."""
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL))
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)


def converged(cluster: Cluster, replicas: int) -> str | None:
    """None when `replicas` tasks run on ready nodes and exactly one task process lives for each."""
    running = cluster.running("web")
    if len(running) != replicas:
        return f"{len(running)} running"
    processes = cluster.task_processes()
    if sorted(processes) != sorted(t["ID"] for t in running) or any(len(p) != 1 for p in processes.values()):
        return f"{sum(len(p) for p in processes.values())} task processes for {replicas} running tasks"
    return None


def wait_converged(cluster: Cluster, replicas: int, timeout: float) -> str:
    """Wait until `replicas` run with as many task processes; returns how long it took and what it waited on
    last (where the time went)."""
    began = time.monotonic()
    waited_on: list[str] = []

    def check() -> bool:
        reason = converged(cluster, replicas)
        if reason is not None:
            waited_on[:] = [f"{reason} at +{time.monotonic() - began:.1f}s"]
        return reason is None

    wait_for(f"{replicas} running and as many task processes", check, timeout=timeout, interval=0.5)
    return f"{time.monotonic() - began:.1f}s" + (f" ({waited_on[0]})" if waited_on else "")


def test_a_loaded_machine_costs_no_leadership_and_no_node(cluster: Cluster) -> None:
    """Busy is not dead: a leader or node that only waits for a CPU must not be replaced, which would make the
    swarm stop and restart work on a machine that is already short of CPU."""
    started = time.monotonic()
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", str(LOAD_REPLICAS), "busybox", "sleep",
               "100000")
    wait_for(f"{LOAD_REPLICAS} running", lambda: converged(cluster, LOAD_REPLICAS) is None, timeout=90,
             interval=0.5)
    print(f"\n{LOAD_REPLICAS} tasks running after {time.monotonic() - started:.1f}s; "
          f"placement {cluster.placement('web')}")
    with cluster.api() as client:
        first = debug(client)
    must_stay = {"Leader": True, "ElectionsWon": 1, "LeadershipsLost": 0, "NodesMarkedDown": 0}
    assert {key: first["Manager"][key] for key in must_stay} == must_stay
    cpu_before = first["Process"]["CPUSeconds"]

    cycles: list[str] = []
    loaded_for = settled = "-"
    watch = Watch(cluster, "web", interval=0.25, tasks=False, must_stay=must_stay)
    try:
        with watch, cpu_load(LOAD_PROCESSES):
            loaded_at = time.monotonic()
            while time.monotonic() - loaded_at < LOAD_SECONDS / 2:  # scale up and down under load
                cluster.ok("service", "scale", "-d", f"web={LOAD_SCALED}", timeout=60)
                up = wait_converged(cluster, LOAD_SCALED, timeout=60)
                cluster.ok("service", "scale", "-d", f"web={LOAD_REPLICAS}", timeout=60)
                cycles.append(f"up {up}, down {wait_converged(cluster, LOAD_REPLICAS, timeout=60)}")
            time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - loaded_at)))  # hold the load
            loaded_for = f"{time.monotonic() - loaded_at:.1f}s"
        settled = wait_converged(cluster, LOAD_REPLICAS, timeout=60)
    finally:
        with cluster.api() as client:
            last = debug(client)
        print(f"load of {LOAD_PROCESSES} CPU-bound processes for {loaded_for}, scaling {LOAD_REPLICAS} -> "
              f"{LOAD_SCALED} -> {LOAD_REPLICAS} (converged, task processes counted) {len(cycles)} times: {cycles}; "
              f"converged {settled} after the load ended; manager loop lag max {watch.lag_max_ms:.0f} ms, stalls "
              f"{watch.stalls}, manager CPU {last['Process']['CPUSeconds'] - cpu_before:.1f}s, store "
              f"{last['Manager']['Store']}; {watch.samples} samples (slowest {watch.slowest:.2f}s), sampling "
              f"errors {watch.errors}; node states {watch.transitions}; agents seen disconnected "
              f"{sorted(watch.agents_disconnected)}; manager log lines on lease renewals that failed: "
              f"{sum('fail' in line for line in log_lines(cluster, 'manager1', 'lease'))}")
    evidence = "\n".join(log_lines(cluster, "manager1", "leader", "lease", "is down", "election", "stall"))
    assert {key: last["Manager"][key] for key in must_stay} == must_stay, f"{last['Manager']}\n{evidence}"
    assert watch.counters == [], f"{watch.counters}\n{evidence}"
    assert watch.not_ready == set(), f"nodes not ready under load: {watch.transitions}\n{evidence}"
    assert watch.samples > 0, watch.errors
