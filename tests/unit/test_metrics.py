"""Prometheus metrics: names and labels follow Prometheus's conventions (read back with prometheus_client's own
parser), the figures follow the state they describe, and the endpoint serves them."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shoal.agent.executor.sim import SimExecutor
from shoal.agent.worker import Worker
from shoal.cli.common import CliContext
from shoal.cli.main import run
from shoal.clock import SystemClock
from shoal.errors import NoQuorum, NotLeader, SequenceConflict, Unavailable
from shoal.ids import new_id
from shoal.loopmonitor import LoopMonitor
from shoal.manager.figures import cluster_figures
from shoal.manager.leader import LeaderElection
from shoal.manager.orchestrator.loop import OrchestratorLoop
from shoal.manager.scheduler.filters import (
    READY,
    AvailabilityFilter,
    ConstraintFilter,
    MaxReplicasFilter,
    PlatformFilter,
    ResourceFilter,
)
from shoal.manager.scheduler.loop import SchedulerLoop
from shoal.manager.scheduler.pipeline import (
    NO_SUITABLE_NODE,
    NOT_TRIED,
    WAITING_REASONS,
    host_port_error,
    waiting_reason,
)
from shoal.manager.scheduler.resources import NONE, Resources
from shoal.manager.store.base import Batch
from shoal.mesh.stats import PortStats, PortTotals, from_wire, to_wire
from shoal.mesh.table import Backend
from shoal.mesh.userspace import TcpProxy, UdpProxy
from shoal.metrics import (
    FAILURE_REASONS,
    TEXT_FORMAT,
    ClusterCollector,
    DaemonMetrics,
    ManagerMetrics,
    MeshCollector,
    MetricsServer,
)
from shoal.types import NODES, SERVICES, TASKS, Doc, TaskState, desired_state, task_state
from tests.unit.agent_fixtures import Reports
from tests.unit.manager_fixtures import Harness, make_node, make_service, make_task, running_harness
from tests.unit.waiting import wait_until

LOCAL = "127.0.0.1"
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Series every manager serves, and every node: the test fails if any goes missing.
MANAGER_SERIES = {
    "shoal_manager_is_leader", "shoal_manager_leader_changes", "shoal_nodes", "shoal_services",
    "shoal_service_desired_tasks", "shoal_service_running_tasks", "shoal_service_update_state",
    "shoal_service_update_updated_tasks", "shoal_service_update_outdated_tasks", "shoal_tasks_pending",
    "shoal_store_request_duration_seconds", "shoal_store_request_errors", "shoal_scheduler_placements",
    "shoal_scheduler_placement_latency_seconds", "shoal_dispatcher_sessions", "shoal_dispatcher_heartbeats",
    "shoal_dispatcher_heartbeat_misses",
}
NODE_SERIES = {
    "shoal_event_loop_lag_seconds", "shoal_task_starts", "shoal_task_failures",
    "shoal_executor_call_duration_seconds", "shoal_mesh_connections", "shoal_mesh_failed_connects",
    "shoal_mesh_dropped_connections", "shoal_mesh_bytes", "shoal_mesh_open_connections",
}


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness() as h:
        yield h


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` with exactly these labels."""
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return float(found[0])


def mesh_figures() -> dict[tuple[int, str], PortStats]:
    return {(8080, "tcp"): PortStats(connections=3, failed_connects=1, dropped=1, bytes_in=10, bytes_out=20, open=1),
            (53, "udp"): PortStats(connections=2, bytes_in=5, bytes_out=6)}


async def swarm(h: Harness) -> SchedulerLoop:
    """Nodes of every kind, a replicated service half running with a task no node takes, a global service and
    a job; the scheduler loop following it all (never run: it only counts)."""
    scheduler = SchedulerLoop(h.cache, h.applier, h.clock)
    manager = make_node("m1")
    manager["Spec"]["Role"] = "manager"
    await h.add_nodes(manager, make_node("n1"), make_node("n2", state="down"), make_node("n3", availability="drain"))
    web, agent = make_service("s1", "web", replicas=3), make_service("s2", "agent", replicas=None)
    web["UpdateStatus"] = {"State": "updating"}
    job = make_service("s3", "batch", replicas=None)
    job["Spec"]["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}
    for service in (web, agent, job):
        await h.add_service(service)
    waiting = make_task("t3", "s1", slot=3)
    waiting["Status"]["Err"] = "no suitable node (3 nodes not available for new tasks; 1 node with unsatisfied constraint)"
    await h.add_tasks(
        make_task("t1", "s1", "n1", TaskState.RUNNING, slot=1), make_task("t2", "s1", "n2", TaskState.RUNNING, slot=2),
        waiting, make_task("t4", "s1", slot=4),
        make_task("g1", "s2", "m1", TaskState.RUNNING), make_task("g2", "s2", "n1", TaskState.RUNNING),
        make_task("g3", "s2", "n2", TaskState.RUNNING),
        make_task("j1", "s3", "n1", TaskState.RUNNING))
    return scheduler


def manager_text(h: Harness, scheduler: SchedulerLoop, metrics: DaemonMetrics | None = None) -> str:
    metrics = metrics or DaemonMetrics()
    metrics.manager()
    metrics.add(ClusterCollector(lambda: cluster_figures(
        h.cache, is_leader=True, pending=scheduler.pending_by_reason(), update_progress={"s1": (1, 2)},
        sessions=4)))
    metrics.add(MeshCollector(mesh_figures))
    return metrics.exposition().decode()


# ---- conventions ----------------------------------------------------------------------------------------


async def test_every_series_follows_prometheus_naming(harness: Harness) -> None:
    scheduler = await swarm(harness)
    metrics = DaemonMetrics()
    metrics.node.task_failed("oom")
    metrics.manager().store_errors.labels("commit", "conflict").inc()
    text = manager_text(harness, scheduler, metrics)

    parsed = list(text_string_to_metric_families(text))
    assert {family.name for family in parsed} >= MANAGER_SERIES | NODE_SERIES
    for family in parsed:
        assert family.name.startswith("shoal_") and SNAKE.fullmatch(family.name), family.name
        assert family.documentation, f"{family.name} says nothing of itself"
        assert family.type in ("counter", "gauge", "histogram"), family.name
        assert family.samples or family.type == "counter", f"{family.name} has no series"
        if family.type == "counter":
            assert all(s.name == family.name + "_total" for s in family.samples), family.name
        elif family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), f"{family.name}: a histogram of what unit?"
            assert {s.name for s in family.samples} == {family.name + end for end in ("_bucket", "_sum", "_count")}
        else:
            assert not family.name.endswith(("_total", "_count", "_sum", "_bucket")), family.name
        assert not re.search(r"_(ms|milliseconds|minutes|kb|mb)(_|$)", family.name), f"{family.name}: base units"
        for sample in family.samples:
            for label in sample.labels:
                assert SNAKE.fullmatch(label) and not label.startswith("__"), f"{family.name}: label {label}"


def test_a_worker_serves_node_figures_and_no_cluster_state() -> None:
    metrics = DaemonMetrics()
    metrics.add(ClusterCollector(lambda: None))  # not a manager
    metrics.add(MeshCollector(dict))
    names = set(families(metrics.exposition().decode()))
    assert {"shoal_event_loop_lag_seconds", "shoal_task_starts", "shoal_task_failures"} <= names
    assert not names & {"shoal_nodes", "shoal_manager_is_leader", "shoal_store_request_duration_seconds"}


def test_two_daemons_in_one_process_count_apart() -> None:
    first, second = DaemonMetrics(), DaemonMetrics()
    first.node.task_started()
    assert value(first.exposition().decode(), "shoal_task_starts_total") == 1
    assert value(second.exposition().decode(), "shoal_task_starts_total") == 0


# ---- figures follow the state ---------------------------------------------------------------------------


async def test_cluster_gauges_follow_the_cache(harness: Harness) -> None:
    text = manager_text(harness, await swarm(harness))

    assert value(text, "shoal_manager_is_leader") == 1
    assert value(text, "shoal_nodes", role="worker", state="ready", availability="active") == 1
    assert value(text, "shoal_nodes", role="worker", state="down", availability="active") == 1
    assert value(text, "shoal_nodes", role="worker", state="ready", availability="drain") == 1
    assert value(text, "shoal_nodes", role="manager", state="ready", availability="active") == 1
    assert value(text, "shoal_nodes", role="manager", state="down", availability="pause") == 0
    assert value(text, "shoal_services", mode="replicated") == 1
    assert value(text, "shoal_services", mode="global") == 1
    assert value(text, "shoal_services", mode="replicated-job") == 1
    assert value(text, "shoal_services", mode="global-job") == 0
    # A task on a down node is not running; a global service wants a task on each node that is up.
    assert value(text, "shoal_service_desired_tasks", service="web") == 3
    assert value(text, "shoal_service_running_tasks", service="web") == 1
    assert value(text, "shoal_service_desired_tasks", service="agent") == 2
    assert value(text, "shoal_service_running_tasks", service="agent") == 2
    assert value(text, "shoal_service_desired_tasks", service="batch") == 2
    assert value(text, "shoal_service_running_tasks", service="batch") == 1
    assert value(text, "shoal_service_update_state", service="web", state="updating") == 1
    assert value(text, "shoal_service_update_updated_tasks", service="web") == 1
    assert value(text, "shoal_service_update_outdated_tasks", service="web") == 2
    assert value(text, "shoal_tasks_pending", reason="unavailable") == 1
    assert value(text, "shoal_tasks_pending", reason=NOT_TRIED) == 1
    assert value(text, "shoal_tasks_pending", reason="resources") == 0
    assert value(text, "shoal_dispatcher_sessions") == 4
    assert value(text, "shoal_mesh_connections_total", port="8080", protocol="tcp") == 3
    assert value(text, "shoal_mesh_bytes_total", port="8080", protocol="tcp", direction="out") == 20
    assert value(text, "shoal_mesh_open_connections", port="8080", protocol="tcp") == 1
    assert value(text, "shoal_mesh_failed_connects_total", port="8080", protocol="tcp") == 1
    assert value(text, "shoal_mesh_dropped_connections_total", port="53", protocol="udp") == 0


async def test_pending_counts_kept_from_events_equal_a_fresh_count(harness: Harness) -> None:
    h = harness
    scheduler = await swarm(h)

    def fresh() -> dict[str, int]:
        counts = {reason: 0 for reason in WAITING_REASONS}
        for task in h.cache.tasks().values():
            if task["Status"]["State"] == "pending" and task["DesiredState"] == "running":
                counts[waiting_reason(task)] += 1
        return counts

    assert scheduler.pending_by_reason() == fresh()
    # Placed, refused for another reason, shut down, deleted: each moves the counts as a recount would.
    placed = await h.store.get(TASKS, "t4")
    assert placed is not None
    placed["NodeID"], placed["Status"] = "n1", {**placed["Status"], "State": "assigned"}
    await h.commit(Batch().update(TASKS, placed))
    assert scheduler.pending_by_reason() == fresh()
    await h.add_tasks(make_task("t5", "s1", slot=5), make_task("t6", "s1", slot=6))
    await h.report("t5", TaskState.PENDING, err="no suitable node (insufficient resources on 3 nodes)")
    assert scheduler.pending_by_reason()["resources"] == 1
    stopped = await h.store.get(TASKS, "t6")
    assert stopped is not None
    stopped["DesiredState"] = "shutdown"
    await h.commit(Batch().update(TASKS, stopped))
    gone = await h.store.get(TASKS, "t3")
    assert gone is not None
    await h.commit(Batch().delete(TASKS, gone))
    assert scheduler.pending_by_reason() == fresh() == {**{r: 0 for r in WAITING_REASONS}, "resources": 1}


async def test_placements_are_counted_with_how_long_the_task_waited(harness: Harness) -> None:
    h = harness
    registry = CollectorRegistry()
    scheduler = SchedulerLoop(h.cache, h.applier, h.clock, metrics=ManagerMetrics(registry))
    await h.add_nodes(make_node("n1"))
    await h.add_service(make_service("s1", "web", replicas=2))
    created = h.clock.now()
    await h.add_tasks(make_task("t1", "s1", at=created), make_task("t2", "s1", slot=2, at=created))
    h.clock.advance(3.0)

    await scheduler.run_once()

    text = generate_latest(registry).decode()
    assert value(text, "shoal_scheduler_placements_total") == 2
    assert value(text, "shoal_scheduler_placement_latency_seconds_count") == 2
    assert value(text, "shoal_scheduler_placement_latency_seconds_sum") == pytest.approx(6.0)


async def test_a_rolling_updates_progress_is_served_while_it_runs(harness: Harness) -> None:
    h = harness
    await h.add_nodes(make_node("n1"))
    orchestrator, scheduler = OrchestratorLoop(h.cache, h.applier, h.clock), SchedulerLoop(h.cache, h.applier, h.clock)
    await h.add_service(make_service("web", "web", replicas=4))

    async def agent_and_loops() -> None:
        await orchestrator.run_once()
        await scheduler.run_once()
        for task in h.tasks_of("web"):  # the agent: stops what it is told to stop, starts the rest
            if desired_state(task) >= TaskState.SHUTDOWN and not task_state(task).terminal:
                await h.report(task["ID"], TaskState.SHUTDOWN)
            elif task_state(task) == TaskState.ASSIGNED and desired_state(task) == TaskState.RUNNING:
                await h.report(task["ID"], TaskState.RUNNING)

    await agent_and_loops()
    assert orchestrator.update_progress() == {}
    service = await h.store.get(SERVICES, "web")
    assert service is not None
    service["PreviousSpec"] = service["Spec"]
    service["Spec"] = {**service["Spec"], "TaskTemplate": {"ContainerSpec": {"Image": "busybox:2"}},
                      "UpdateConfig": {"Parallelism": 1, "Monitor": 0}}
    await h.commit(Batch().update(SERVICES, service))

    seen: list[tuple[int, int]] = []
    for _ in range(40):
        await agent_and_loops()
        if progress := orchestrator.update_progress():
            seen.append(progress["web"])
        current = h.cache.get(SERVICES, "web")
        assert current is not None
        if current["UpdateStatus"]["State"] == "completed":
            break
    assert current["UpdateStatus"]["State"] == "completed"
    assert orchestrator.update_progress() == {}  # a finished update is no longer served
    updated = [u for u, _ in seen]
    assert updated == sorted(updated) and all(u + o <= 4 for u, o in seen)
    assert seen[0][1] >= 3 and seen[-1][0] >= 3  # from mostly outdated to mostly updated


class NoLoad:
    """Nodes that run nothing (the filters' LoadView), to have the filters explain themselves."""

    def service_count(self, service_id: str, node_id: str) -> int:
        return 0

    def reserved(self, node_id: str) -> Resources:
        return NONE


@pytest.mark.parametrize("error, reason", [
    (READY.explain(3), "unavailable"),
    (AvailabilityFilter().explain(1), "unavailable"),
    (ConstraintFilter([]).explain(2), "constraints"),
    (PlatformFilter([]).explain(2), "platform"),
    (ResourceFilter(NONE, NoLoad()).explain(2), "resources"),
    (MaxReplicasFilter("s", 1, NoLoad()).explain(2), "max_replicas"),
    (host_port_error(2), "host_port"),
    ("no free address on network back: no free address left in 10.0.1.0/24", "network_addresses"),
])
def test_each_refusal_has_its_reason(error: str, reason: str) -> None:
    text = error if error.startswith(NO_SUITABLE_NODE) else f"{NO_SUITABLE_NODE} ({error})"
    task: Doc = {"Status": {"Err": text}}
    assert waiting_reason(task) == reason
    assert waiting_reason({"Status": {"Err": error}}) == reason


def test_the_first_refusal_named_is_the_reason() -> None:
    both = "no suitable node (insufficient resources on 3 nodes; 1 node not available for new tasks)"
    assert waiting_reason({"Status": {"Err": both}}) == "resources"
    assert waiting_reason({"Status": {"Err": ""}}) == NOT_TRIED
    assert waiting_reason({"Status": {"Err": NO_SUITABLE_NODE}}) == "no_nodes"
    assert waiting_reason({"Status": {"Err": "something new"}}) == "other"


def test_store_requests_are_timed_and_failures_counted_by_kind() -> None:
    registry = CollectorRegistry()
    metrics = ManagerMetrics(registry)
    with metrics.store_request("get"):
        pass
    for error in (SequenceConflict(), NotLeader(), NoQuorum("store unreachable"), ValueError("too big")):
        with pytest.raises(type(error)), metrics.store_request("commit"):
            raise error
    with pytest.raises(asyncio.CancelledError), metrics.store_request("commit"):
        raise asyncio.CancelledError

    text = generate_latest(registry).decode()
    assert value(text, "shoal_store_request_duration_seconds_count", operation="get") == 1
    assert value(text, "shoal_store_request_duration_seconds_count", operation="commit") == 4  # not the cancelled
    for kind in ("conflict", "not_leader", "unavailable", "other"):
        assert value(text, "shoal_store_request_errors_total", operation="commit", error=kind) == 1


def test_a_leader_change_is_counted_when_another_manager_takes_over() -> None:
    registry = CollectorRegistry()
    election = LeaderElection(None, "me", None, metrics=ManagerMetrics(registry))  # type: ignore[arg-type]

    def changes() -> float:
        return value(generate_latest(registry).decode(), "shoal_manager_leader_changes_total")

    election._set(False, "a")  # the first leader seen: no change
    election._set(False, "a")
    election._set(False, None)  # the lease ended...
    assert changes() == 0
    election._set(False, "b")  # ...and another manager won
    election._set(True, "me")
    election._set(False, None)
    election._set(True, "me")  # the same manager again: no change of leader
    assert changes() == 2


def test_the_loop_monitor_hands_on_every_lag_sample() -> None:
    heard: list[float] = []
    monitor = LoopMonitor(on_lag=heard.append)
    monitor.record(1.0, 0.01)
    monitor.record(1.1, 0.3)
    assert heard == [0.01, 0.3]


async def test_the_worker_counts_starts_and_failures_by_reason(tmp_path: Path) -> None:
    metrics = DaemonMetrics()
    reports = Reports()
    worker = Worker(tmp_path, SimExecutor(start_delay=0.001), reports, SystemClock(), metrics=metrics.node)
    await worker.start()

    def task(*argv: str) -> Doc:
        return {"ID": new_id(), "ServiceID": "svc", "Slot": 1, "NodeID": "n1", "DesiredState": "running",
                "Status": {"State": "assigned"}, "Spec": {"ContainerSpec": {"Image": "busybox", "Args": list(argv)}}}

    done, failing, rejected = task("true"), task("exit", "3"), task("sleep", "soon")
    try:
        await worker.assign([done, failing, rejected], full=True)
        await reports.reach(done["ID"], "complete")
        await reports.reach(failing["ID"], "failed")
        await reports.reach(rejected["ID"], "rejected")
    finally:
        await worker.stop(kill_tasks=True)
    text = metrics.exposition().decode()
    assert value(text, "shoal_task_starts_total") == 2
    assert value(text, "shoal_task_failures_total", reason="non_zero_exit") == 1
    assert value(text, "shoal_task_failures_total", reason="rejected") == 1
    assert sum(value(text, "shoal_task_failures_total", reason=r) for r in FAILURE_REASONS) == 2
    assert value(text, "shoal_executor_call_duration_seconds_count", call="start") == 2
    assert value(text, "shoal_executor_call_duration_seconds_count", call="prepare") == 3


# ---- the routing mesh's figures -------------------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[Backend]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, LOCAL, 0)
    yield Backend("t1", LOCAL, int(server.sockets[0].getsockname()[1]))
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


async def test_a_tcp_proxy_counts_connections_bytes_failed_connects_and_drops(echo: Backend) -> None:
    stats = PortStats()
    proxy = TcpProxy(LOCAL, 0, "test", connect_deadline=0.5, stats=stats)
    await proxy.start()
    try:
        proxy.set_backends([Backend("dead", LOCAL, closed_port()), echo])
        for _ in range(2):
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(), 5) == b"echo:ping"
            writer.close()
        await wait_until(lambda: proxy.open_count() == 0)
        assert (stats.connections, stats.bytes_in, stats.bytes_out) == (2, 8, 18)
        assert stats.failed_connects >= 1  # one of the two went to the dead task first, then on to the echo
        assert stats.dropped == 0

        proxy.set_backends([Backend("dead", LOCAL, closed_port())])
        reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # no task took it
        writer.close()
        assert stats.dropped == 1 and stats.connections == 3
    finally:
        await proxy.stop()


async def test_a_udp_proxy_counts_sessions_and_bytes() -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    backend, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCAL, 0))
    stats = PortStats()
    proxy = UdpProxy(LOCAL, 0, "test", stats=stats)
    await proxy.start()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            replies.put_nowait(data)

    client, _ = await loop.create_datagram_endpoint(Client, remote_addr=(LOCAL, proxy.port))
    try:
        proxy.set_backends([Backend("t1", LOCAL, backend.get_extra_info("sockname")[1])])
        client.sendto(b"a")
        assert await asyncio.wait_for(replies.get(), 5) == b"echo:a"
        client.sendto(b"bb")
        assert await asyncio.wait_for(replies.get(), 5) == b"echo:bb"
        assert (stats.connections, stats.bytes_in, stats.bytes_out) == (1, 3, 13)
        assert proxy.open_count() == 1
    finally:
        client.close()
        await proxy.stop()
        backend.close()


def test_port_figures_survive_the_pipe_and_a_helper_restart() -> None:
    report = mesh_figures()
    assert from_wire(to_wire(report)) == report
    with pytest.raises(ValueError):
        from_wire('[[80, "tcp", [1, 2]]]')
    totals = PortTotals()
    totals.report(0, from_wire(to_wire(report)))
    totals.report(1, {(8080, "tcp"): PortStats(connections=1, open=1)})
    assert totals.total()[(8080, "tcp")].connections == 4
    totals.retire(0)  # helper 0 died: its counts stay, its open connections went with it
    totals.report(0, {(8080, "tcp"): PortStats(connections=1)})  # the new helper 0 counts from 0
    total = totals.total()
    assert total[(8080, "tcp")].connections == 5 and total[(8080, "tcp")].open == 1
    assert total[(53, "udp")].bytes_out == 6


# ---- the endpoint and the flag --------------------------------------------------------------------------


async def test_the_endpoint_serves_the_text_format_and_refuses_other_paths() -> None:
    metrics = DaemonMetrics()
    metrics.node.task_started()
    server = MetricsServer(metrics.registry, LOCAL, 0)
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url)
            missing = await client.get(f"http://{LOCAL}:{server.port}/")
        assert response.status_code == 200
        assert response.headers["content-type"] == TEXT_FORMAT
        assert value(response.text, "shoal_task_starts_total") == 1
        assert missing.status_code == 404 and "/metrics" in missing.json()["message"]

        taken = MetricsServer(metrics.registry, LOCAL, server.port)
        with socket.socket() as other:  # an address another program holds
            other.bind((LOCAL, 0))
            other.listen()
            taken.port = other.getsockname()[1]
            with pytest.raises(Unavailable, match="cannot serve metrics on .*--metrics-addr"):
                await taken.start()
    finally:
        await server.stop()


@pytest.mark.parametrize("address", ["9323", "localhost:9323", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000",
                                     "::1:9323"])
def test_a_bad_metrics_address_is_one_error_line(address: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["daemon", "--metrics-addr", address], CliContext(out=out, err=err, now=lambda: 0.0))
    assert code != 0
    assert "--metrics-addr" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("address, parsed", [("127.0.0.1:9323", ("127.0.0.1", 9323)), ("[::1]:9100", ("::1", 9100))])
def test_a_metrics_address_is_an_ip_and_a_port(address: str, parsed: tuple[str, int]) -> None:
    from shoal.cli.daemon import metrics_address

    assert metrics_address(address) == parsed


async def test_a_demoted_and_promoted_daemon_keeps_one_set_of_manager_counters() -> None:
    metrics = DaemonMetrics()
    assert metrics.manager() is metrics.manager()
    metrics.manager().heartbeats.inc()
    assert value(metrics.exposition().decode(), "shoal_dispatcher_heartbeats_total") == 1


def test_nodes_of_unknown_kinds_are_still_counted() -> None:
    from shoal.manager.cache import Cache

    cache = Cache()
    odd = make_node("x")
    odd["Spec"]["Availability"] = "sleepy"
    cache.docs[NODES]["x"] = odd
    figures = cluster_figures(cache, is_leader=False, pending={}, update_progress={}, sessions=0)
    assert figures.nodes[("worker", "ready", "sleepy")] == 1
    metrics = DaemonMetrics()
    metrics.add(ClusterCollector(lambda: figures))
    text = metrics.exposition().decode()
    assert value(text, "shoal_nodes", role="worker", state="ready", availability="sleepy") == 1
    assert value(text, "shoal_manager_is_leader") == 0
