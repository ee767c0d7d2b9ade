"""Prometheus metrics of one daemon (`shoal daemon --metrics-addr IP:PORT`): what it measures, and where.

Names follow Prometheus's conventions: `shoal_` first, snake_case, counters end in `_total`, durations are
`_seconds` histograms. Each daemon has a registry of its own: the playground and the tests run several
daemons in one process. Figures come in two kinds:

- events, counted where they happen by the part that sees them (`NodeMetrics` on every node, `ManagerMetrics`
  once the node is a manager): a counter increment or a histogram observation, cheap enough for every
  heartbeat and every store request;
- state, read when Prometheus scrapes, by collectors over what the daemon keeps anyway (`ClusterCollector`
  over the cache's counts and the scheduler's pending tasks, `MeshCollector` over the routing mesh's port
  figures): O(services + nodes + ports), never a pass over the tasks.

The endpoint is plain HTTP with no authentication, like Docker's own `--metrics-addr`: put it on a loopback or
a management address. A scrape collects on the event loop (the collectors read state the loop owns, in
microseconds) and renders the text on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from shoal.errors import Conflict, NotLeader, Unavailable

if TYPE_CHECKING:
    from shoal.mesh.stats import PortKey, PortStats

log = logging.getLogger(__name__)

# The `_created` series prometheus_client adds beside every counter and histogram double the output and are
# read by nothing here.
prometheus_client.disable_created_metrics()

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text exposition format
METRICS_PATH = "/metrics"
SHUTDOWN_TIMEOUT = 2.0

# Histogram buckets, in seconds, for what each measures.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PLACEMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
EXECUTOR_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Why a task failed, as `shoal_task_failures_total{reason}` says it.
FAILED_NON_ZERO_EXIT = "non_zero_exit"
FAILED_OOM = "oom"  # killed at its memory limit
FAILED_UNHEALTHY = "unhealthy"
FAILED_REJECTED = "rejected"  # the executor refused it before it started
FAILED_EXIT_UNKNOWN = "exit_status_unknown"  # it ended while the agent was away
FAILED_AGENT_ERROR = "agent_error"
FAILURE_REASONS = (FAILED_NON_ZERO_EXIT, FAILED_OOM, FAILED_UNHEALTHY, FAILED_REJECTED, FAILED_EXIT_UNKNOWN,
                   FAILED_AGENT_ERROR)
EXECUTOR_CALLS = ("prepare", "start", "shutdown", "remove")
STORE_OPERATIONS = ("commit", "get", "list", "snapshot")


def store_error_kind(exc: BaseException) -> str:
    """`shoal_store_request_errors_total{error}`: a refused write, a lost leadership, or no store to talk to."""
    if isinstance(exc, NotLeader):
        return "not_leader"
    if isinstance(exc, Conflict):
        return "conflict"
    if isinstance(exc, Unavailable):
        return "unavailable"
    return "other"


class NodeMetrics:
    """What every node counts as it happens: its event loop, its tasks and its executor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.loop_lag = Histogram(
            "shoal_event_loop_lag_seconds", "How late the daemon's event loop ran a timer due every 100 ms",
            buckets=LAG_BUCKETS, registry=registry)
        self.task_starts = Counter("shoal_task_starts", "Tasks this node started (their process or container)",
                                   registry=registry)
        self.task_failures = Counter("shoal_task_failures", "Tasks of this node that failed or were rejected",
                                     ["reason"], registry=registry)
        self.executor_seconds = Histogram(
            "shoal_executor_call_duration_seconds", "How long the executor took for each step of a task",
            ["call"], buckets=EXECUTOR_BUCKETS, registry=registry)
        for reason in FAILURE_REASONS:  # every series exists from the start, at 0
            self.task_failures.labels(reason)
        for call in EXECUTOR_CALLS:
            self.executor_seconds.labels(call)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def task_started(self) -> None:
        self.task_starts.inc()

    def task_failed(self, reason: str) -> None:
        self.task_failures.labels(reason).inc()

    @contextlib.contextmanager
    def executor_call(self, call: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.executor_seconds.labels(call).observe(time.monotonic() - started)


class ManagerMetrics:
    """What a manager counts as it happens: store requests, placements, heartbeats, leader changes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.store_seconds = Histogram(
            "shoal_store_request_duration_seconds", "How long the store (etcd) took to answer a request",
            ["operation"], buckets=REQUEST_BUCKETS, registry=registry)
        self.store_errors = Counter("shoal_store_request_errors", "Store requests that failed, by why",
                                    ["operation", "error"], registry=registry)
        self.placements = Counter("shoal_scheduler_placements", "Tasks the scheduler placed on a node",
                                  registry=registry)
        self.placement_latency = Histogram(
            "shoal_scheduler_placement_latency_seconds", "From a task's creation to its placement on a node",
            buckets=PLACEMENT_BUCKETS, registry=registry)
        self.heartbeats = Counter("shoal_dispatcher_heartbeats", "Heartbeats the leader received from nodes",
                                  registry=registry)
        self.heartbeat_misses = Counter(
            "shoal_dispatcher_heartbeat_misses", "Nodes the leader marked down because their heartbeats stopped",
            registry=registry)
        self.leader_changes = Counter("shoal_manager_leader_changes",
                                      "Times this manager saw the swarm's leader change", registry=registry)
        for operation in STORE_OPERATIONS:
            self.store_seconds.labels(operation)

    @contextlib.contextmanager
    def store_request(self, operation: str) -> Iterator[None]:
        """Time one store request and count it if it fails (a cancelled one counts for neither)."""
        started = time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.store_errors.labels(operation, store_error_kind(exc)).inc()
            self.store_seconds.labels(operation).observe(time.monotonic() - started)
            raise
        self.store_seconds.labels(operation).observe(time.monotonic() - started)

    def placed(self, latencies: Iterable[float | None]) -> None:
        """Tasks placed, each with how long it waited since its creation (None: not known)."""
        for seconds in latencies:
            self.placements.inc()
            if seconds is not None:
                self.placement_latency.observe(max(0.0, seconds))


# ---- state read at scrape time --------------------------------------------------------------------------


@dataclass
class ServiceFigures:
    name: str
    mode: str  # replicated, global, replicated-job, global-job
    desired: int
    running: int
    update_state: str = ""  # UpdateStatus.State; "" for a service never updated
    updated: int | None = None  # under update, known by the leader: slots running the new spec
    outdated: int | None = None  # …and slots still running a task of an older spec


@dataclass
class ClusterFigures:
    """A manager's view of the swarm, made in O(services + nodes) from what its loops keep."""

    is_leader: bool
    nodes: Mapping[tuple[str, str, str], int]  # (role, state, availability) -> nodes; every combination
    services: list[ServiceFigures] = field(default_factory=list)
    modes: Mapping[str, int] = field(default_factory=dict)  # mode -> services; every mode
    pending: Mapping[str, int] = field(default_factory=dict)  # reason -> tasks waiting for a node
    sessions: int = 0  # agent sessions this manager serves (only the leader serves any)


class ClusterCollector(Collector):
    """The swarm's state as gauges, on managers (a worker has no cluster state: `figures` gives None)."""

    def __init__(self, figures: Callable[[], ClusterFigures | None]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures()
        if figures is None:
            return
        yield _gauge("shoal_manager_is_leader", "1 on the manager that leads the swarm, 0 on the others",
                     [((), int(figures.is_leader))])
        yield _gauge("shoal_nodes", "Nodes of the swarm by role, status and availability",
                     figures.nodes.items(), ["role", "state", "availability"])
        yield _gauge("shoal_services", "Services by mode", (((mode,), n) for mode, n in figures.modes.items()),
                     ["mode"])
        yield _gauge("shoal_service_desired_tasks", "Tasks the service should have running (as service ls)",
                     (((s.name,), s.desired) for s in figures.services), ["service"])
        yield _gauge("shoal_service_running_tasks", "Tasks of the service running on nodes that are up",
                     (((s.name,), s.running) for s in figures.services), ["service"])
        yield _gauge("shoal_service_update_state", "1 for the state of the service's last update or rollback",
                     (((s.name, s.update_state), 1) for s in figures.services if s.update_state),
                     ["service", "state"])
        yield _gauge("shoal_service_update_updated_tasks",
                     "Slots of a service under update that run the new spec (leader only)",
                     (((s.name,), s.updated) for s in figures.services if s.updated is not None), ["service"])
        yield _gauge("shoal_service_update_outdated_tasks",
                     "Slots of a service under update still running an older spec (leader only)",
                     (((s.name,), s.outdated) for s in figures.services if s.outdated is not None), ["service"])
        yield _gauge("shoal_tasks_pending", "Tasks waiting for a node, by why no node takes them",
                     (((reason,), n) for reason, n in figures.pending.items()), ["reason"])
        yield _gauge("shoal_dispatcher_sessions", "Agent sessions this manager serves (the leader serves all)",
                     [((), figures.sessions)])


class MeshCollector(Collector):
    """The routing mesh's figures per published port, from the userspace proxies of every mesh process."""

    def __init__(self, ports: Callable[[], Mapping[PortKey, PortStats]]) -> None:
        self._ports = ports

    def collect(self) -> Iterator[Metric]:
        ports = sorted(self._ports().items())
        labels = ["port", "protocol"]

        def key(port: int, protocol: str) -> tuple[str, str]:
            return str(port), protocol

        yield _counter("shoal_mesh_connections", "Connections (UDP: client sessions) to a published port",
                       ((key(*k), s.connections) for k, s in ports), labels)
        yield _counter("shoal_mesh_failed_connects", "Attempts to reach a task for a published port that failed",
                       ((key(*k), s.failed_connects) for k, s in ports), labels)
        yield _counter("shoal_mesh_dropped_connections",
                       "Connections to a published port closed because no task accepted them in time",
                       ((key(*k), s.dropped) for k, s in ports), labels)
        yield _counter("shoal_mesh_bytes", "Bytes through a published port (in: from clients, out: to them)",
                       [*(((*key(*k), "in"), s.bytes_in) for k, s in ports),
                        *(((*key(*k), "out"), s.bytes_out) for k, s in ports)], [*labels, "direction"])
        yield _gauge("shoal_mesh_open_connections", "Connections (UDP: sessions) open now on a published port",
                     ((key(*k), s.open) for k, s in ports), labels)


def _gauge(name: str, documentation: str, values: Iterable[tuple[tuple[str, ...], float]],
           labels: list[str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels or [])
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def _counter(name: str, documentation: str, values: Iterable[tuple[tuple[str, ...], float]],
             labels: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


class DaemonMetrics:
    """One daemon's registry: the node's metrics always, a manager's from the first time it is one (they stay
    after a demotion, so that no counter ever goes back), and the collectors the daemon adds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.node = NodeMetrics(self.registry)
        self._manager: ManagerMetrics | None = None

    def manager(self) -> ManagerMetrics:
        if self._manager is None:
            self._manager = ManagerMetrics(self.registry)
        return self._manager

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text Prometheus reads, made at once (for tests and tools; the server renders on a thread)."""
        return generate_latest(self.registry)


# ---- the endpoint ---------------------------------------------------------------------------------------


class _Collected(Collector):
    """Families already collected, for rendering away from the loop."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """`GET /metrics` on host:port, plain HTTP, no authentication."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port  # the bound port once started (0 asks for any free one)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_route("*", "/{path:.*}", self._not_found)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # uvloop's own text repeats the address
            raise Unavailable(f"cannot serve metrics on {self.host}:{self.port}: {why}; "
                              "choose another --metrics-addr") from None
        self._runner = runner
        bound = runner.addresses
        if bound and isinstance(bound[0], tuple):
            self.port = int(bound[0][1])
        if is_loopback(self.host):
            log.info("metrics at %s", self.url)
        else:
            log.warning("metrics at %s: plain HTTP without authentication, on an address that is not loopback; "
                        "anyone who reaches it reads the swarm's figures", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            families = list(self.registry.collect())
            body = await asyncio.to_thread(generate_latest, _Collected(families))
        except Exception:
            log.exception("collecting the metrics failed")
            return web.json_response({"message": "collecting the metrics failed; see the daemon's log"},
                                     status=500)
        return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"message": f"no such page: the metrics are at {METRICS_PATH}"}, status=404)
