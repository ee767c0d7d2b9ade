"""shoald: the one daemon per machine. Its role follows the node's membership: not in a swarm, worker, or
manager (a manager also runs an agent, as in Docker swarm mode).

It always serves the Docker-shaped API on a unix socket for the local CLI. A manager also listens on its
swarm address (default port 2377) with TLS for joins, agent sessions and remote API use (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import platform
import random
import resource
import shutil
import signal
import socket
import ssl
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from shoal import __version__
from shoal.agent.agent import Agent
from shoal.agent.executor.base import Executor
from shoal.agent.join import join as join_cluster
from shoal.agent.task_files import TaskFiles, default_root
from shoal.certs import (
    cert_validity,
    client_ssl_context,
    make_key_and_csr,
    read_if_present,
    renewal_time,
    server_ssl_context,
    split_pem,
    tls_info,
    write_private,
)
from shoal.clock import Clock, SystemClock
from shoal.config import DEFAULT_PORT, DaemonConfig
from shoal.discovery.node import NodeDiscovery
from shoal.errors import (
    AlreadyInSwarm,
    InvalidArgument,
    NotAManager,
    NotInSwarm,
    ShoalError,
    SwarmLocked,
    Unavailable,
)
from shoal.gcpauses import GCPauses
from shoal.ids import new_id
from shoal.loopmonitor import LoopMonitor
from shoal.manager import ca_rotation, store_access
from shoal.manager.autolock import (
    UNLOCK_KEY_ID,
    UNLOCK_KEY_STORE,
    ManagerSecrets,
    MemoryFile,
    autolock_on,
    key_id,
    locked_path,
    new_unlock_key,
    read_unlock_key,
    set_unlock_key,
)
from shoal.manager.ca import RootCA
from shoal.manager.control import ControlAPI
from shoal.manager.controlapi.node import MANAGER_ADDR_FIELD
from shoal.manager.controlapi.swarm import (
    min_cert_expiry_from_environment,
    node_cert_expiry_seconds,
    validate_swarm_spec,
)
from shoal.manager.dispatcher import RESTART_GRACE
from shoal.manager.events import EventJournal
from shoal.manager.join import new_node
from shoal.manager.keys import key_from_wire, new_manager_key
from shoal.manager.manager import HEARTBEAT_LAG_WINDOW, Bootstrap, Manager, TLSFiles
from shoal.manager.store.base import Batch
from shoal.manager.store_access import StoreCredentials, create_store_ca
from shoal.mesh.mesh import RoutingMesh
from shoal.mesh.stats import PortKey, PortStats
from shoal.metrics import ClusterCollector, ClusterFigures, DaemonMetrics, MeshCollector, MetricsServer
from shoal.overlay.linux import OverlayDataPath, overlay_problem
from shoal.spec import AVAILABILITIES, DATA_PATH_PORT
from shoal.supervise import Supervisor
from shoal.task_files import CONFIG, SECRET
from shoal.timefmt import to_rfc3339
from shoal.timeouts import within
from shoal.tokens import make_token
from shoal.types import NODES, Doc, NodeState, Role, node_state

log = logging.getLogger(__name__)

SWARM_PORT_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn

# `swarm init` waits this long for its node to be ready; long enough for a loaded machine, and it is a wait on
# a condition, so an idle one returns at once.
READY_TIMEOUT = 30.0
# A graceful stop (SIGTERM) that takes longer than this is cut short: the daemon kills its etcd member and lease
# keeper and exits. Tasks keep running either way, for the next daemon to adopt.
SHUTDOWN_DEADLINE = 30.0
# A node looks at its certificate's age this often, and asks again this long after an unanswered renewal.
RENEWAL_CHECK_PERIOD = 1.0
RENEWAL_RETRY = 30.0
AUTOLOCK_CHECK_PERIOD = 0.5  # how often a manager compares its sealed keys with the swarm's autolock setting
# How long a closing server waits for its requests and sessions to end before it cancels them (aiohttp's own
# default, 60 s, would hold `swarm leave` that long for a session that never closes by itself).
RUNNER_SHUTDOWN_TIMEOUT = 2.0
LEAVE_STEP_TIMEOUT = 10.0  # each step of `swarm leave` that talks to the store or stops a part


@dataclass
class NodeRecord:
    """What a node remembers of its membership across restarts (state.json)."""

    node_id: str
    cluster_id: str
    role: str
    advertise_addr: str  # IP address
    listen_addr: str  # "ip:port" the manager listens on
    hostname: str
    managers: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.listen_addr.rsplit(":", 1)[1])

    @property
    def manager_addr(self) -> str:
        return f"{self.advertise_addr}:{self.port}"


def split_addr(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """"ip", "ip:port" or "[v6]:port" → (ip, port); InvalidArgument for anything else."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        host, port = inner, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidArgument(f"invalid address {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidArgument(
            f"invalid address {text!r}: give an IP address, optionally with a port (e.g. 192.168.0.10:2377)"
        ) from None
    return host, port


def resolve_host(addr: str) -> str:
    """"name:port" → "ip:port" (a manager may be given by name, as with Docker); addresses pass unchanged."""
    host, sep, port = addr.rpartition(":")
    if not sep or host.startswith("["):
        return addr
    try:
        ipaddress.ip_address(host)
        return addr
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        raise InvalidArgument(f"could not resolve the manager address {host!r}: give its IP address or a name "
                              "this machine can resolve") from None
    return f"{infos[0][4][0]}:{port}"


def local_ip_towards(remote_ip: str) -> str:
    """The local address the kernel would use to reach `remote_ip` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((remote_ip, 9))
        return str(probe.getsockname()[0])


class Daemon:
    def __init__(self, config: DaemonConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.state_dir = config.state_dir
        self.hostname = config.hostname or socket.gethostname()
        self.record: NodeRecord | None = None
        self.manager: Manager | None = None
        self.control: ControlAPI | None = None
        self.agent: Agent | None = None
        self.overlay: OverlayDataPath | None = None
        self._cluster_site: web.TCPSite | None = None
        self._cluster_runner: web.AppRunner | None = None
        self._api_runner: web.AppRunner | None = None
        self._membership = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.error = ""
        self.metrics = DaemonMetrics()
        self.metrics.add(ClusterCollector(self._cluster_figures))
        self.metrics.add(MeshCollector(self._mesh_ports))
        self._metrics_server: MetricsServer | None = None
        self.monitor = LoopMonitor(on_lag=self.metrics.node.observe_loop_lag)
        self.gc_pauses = GCPauses()
        self.loops = Supervisor("daemon")
        # A manager's TLS key and the managers' key, held in memory files while it runs (autolock.py).
        self._secrets: tuple[MemoryFile, MemoryFile] | None = None
        self.locked = False  # a manager whose secrets autolock sealed, waiting for `swarm unlock`
        self._server_context: ssl.SSLContext | None = None
        self._expired_logged = False

    # ---- paths ------------------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def tls(self) -> TLSFiles:
        """The files the node's TLS and store access read: a manager's keys from memory."""
        files = self.disk_tls
        if self._secrets is not None:
            files = dataclasses.replace(files, key=self._secrets[0].path, manager_key=self._secrets[1].path)
        return files

    @property
    def disk_tls(self) -> TLSFiles:
        """Where the node's keys and certificates are kept (and written)."""
        return TLSFiles.under(self.state_dir / "certs")

    @property
    def manager_secrets(self) -> ManagerSecrets:
        return ManagerSecrets(self.disk_tls.key, self.disk_tls.manager_key)

    def _load_secrets(self, unlock_key: str | None = None) -> None:
        """Hold this manager's keys in memory, unsealing them with `unlock_key` when autolock sealed them."""
        clear = self.manager_secrets.read(unlock_key)
        self._drop_secrets()
        self._secrets = (MemoryFile("node-key", clear[0]), MemoryFile("manager-key", clear[1]))

    def _drop_secrets(self) -> None:
        if self._secrets is not None:
            for memory in self._secrets:
                memory.close()
            self._secrets = None

    def clear_secrets(self) -> tuple[bytes, bytes]:
        assert self._secrets is not None
        return self._secrets[0].path.read_bytes(), self._secrets[1].path.read_bytes()

    def _save_record(self) -> None:
        assert self.record is not None
        write_private(self.record_path, json.dumps(asdict(self.record), indent=2).encode())

    def _load_record(self) -> NodeRecord | None:
        try:
            return NodeRecord(**json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None

    def _wipe_state(self) -> None:
        self._drop_secrets()
        self.locked = False
        shutil.rmtree(default_root(self.state_dir), ignore_errors=True)  # task files on the tmpfs
        for name in ("state.json", "certs", "etcd", "etcd.log", "agent"):
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ---- lifecycle --------------------------------------------------------------------------------------

    def make_executor(self) -> Executor:
        if self.config.executor == "docker":
            from shoal.agent.executor.docker import DockerExecutor

            # The engine named by DOCKER_HOST (and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH), else the local socket;
            # Unavailable, with the reason, when it does not answer.
            return DockerExecutor.connect(task_files=TaskFiles(default_root(self.state_dir)))
        if self.config.executor == "sim":
            from shoal.agent.executor.sim import SimExecutor

            return SimExecutor()
        if self.config.executor != "process":
            raise InvalidArgument(f"unknown executor {self.config.executor!r}: use process, docker or sim")
        from shoal.agent.executor.process import ProcessExecutor

        return ProcessExecutor(self.state_dir / "agent", TaskFiles(default_root(self.state_dir)))

    def describe(self) -> Doc:
        """What the node reports of itself in its session's hello (the node's Description)."""
        executor_desc = self._executor.describe()
        engine = dict(executor_desc.get("Engine") or {})
        engine["Labels"] = {**(engine.get("Labels") or {}), **self.config.engine_labels}
        description: Doc = {
            "Hostname": self.hostname,
            "Platform": executor_desc.get("Platform") or {"Architecture": platform.machine(), "OS": "linux"},
            "Resources": executor_desc.get("Resources") or {},
            "Engine": engine,
        }
        if self.overlay is not None:
            description[DATA_PATH_PORT] = self.overlay.port
        with contextlib.suppress(OSError, InvalidArgument):
            description["TLSInfo"] = tls_info(self.disk_tls.cert.read_bytes(), self.disk_tls.ca.read_bytes())
        return description

    async def start(self) -> None:
        # Keys, the task record and task logs live here: only root may read them (mkdir's mode spares an
        # existing directory, hence the chmods).
        for private in (self.state_dir, self.state_dir / "agent"):
            private.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(private, 0o700)
        if self.config.metrics_addr is not None:
            self._metrics_server = MetricsServer(self.metrics.registry, *self.config.metrics_addr)
            await self._metrics_server.start()  # Unavailable, saying why, when the address cannot be had
        self.loops.start("loop-monitor", self.monitor.run)
        self.loops.start("gc-pauses", self.gc_pauses.run)
        self.loops.start("autolock", self._follow_autolock)
        self.loops.start("certificate-renewal", self._renew_certificate)
        self._executor = self.make_executor()
        self.record = self._load_record()
        if self.record is not None and self.record.role == Role.MANAGER.value and self.manager_secrets.is_locked():
            self.locked = True
            log.warning("this manager is locked (autolock): unlock it with \"shoal swarm unlock\" and the key")
        elif self.record is not None:
            log.info("resuming as %s %s in swarm %s", self.record.role, self.record.node_id, self.record.cluster_id)
            try:
                await self._activate()
            except ShoalError as exc:
                # Keep serving the local API so the node can still be inspected or made to leave.
                self.error = exc.message
                log.error("could not resume swarm membership: %s", exc.message)
        from shoal.api.server import make_app

        self._api_runner = web.AppRunner(make_app(self, remote=False), handle_signals=False, access_log=None,
                                         shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT)
        await self._api_runner.setup()
        self.config.socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.config.socket.unlink()
        await web.UnixSite(self._api_runner, str(self.config.socket)).start()
        os.chmod(self.config.socket, 0o660)
        log.info("API listening on unix://%s", self.config.socket)

    async def stop(self) -> None:
        await self._deactivate(kill_tasks=False)
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        with contextlib.suppress(FileNotFoundError):
            self.config.socket.unlink()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        await self.loops.stop()
        self.stopped.set()

    async def _activate(self, initial_cluster: str | None = None, initial_state: str = "new") -> None:
        """Start the manager (if this node is one) and the agent for the current record."""
        record = self.record
        assert record is not None
        if record.role == Role.MANAGER.value:
            if self._secrets is None:  # else just loaded (a join, an unlock)
                self._load_secrets()
            await self._start_manager(initial_cluster, initial_state)
        managers = record.managers or [record.manager_addr]
        if record.role == Role.MANAGER.value and record.manager_addr not in managers:
            managers = [record.manager_addr, *managers]
        await self._start_agent(managers)

    async def _start_manager(self, initial_cluster: str | None = None, initial_state: str = "new",
                             force_new_cluster: bool = False,
                             bootstrap: Bootstrap | None = None) -> None:
        """Run this node's manager: its etcd member (or the external store), the control API and the swarm
        port. `bootstrap` holds the first objects of a new swarm (cluster, CA, node) to write once it runs."""
        record = self.record
        assert record is not None
        self.manager = Manager(record.node_id, record.advertise_addr, record.manager_addr, self.state_dir,
                               self.tls, self.clock, self.config.external_etcd, monitor=self.monitor,
                               metrics=self.metrics.manager())
        await self.manager.start(record.cluster_id, initial_cluster, initial_state, force_new_cluster)
        if bootstrap is not None:
            await self.manager.bootstrap(bootstrap)
        self.control = ControlAPI(self.manager, self.clock)
        await self._start_cluster_server(record)

    async def _start_agent(self, managers: list[str]) -> None:
        self.agent = self._make_agent(managers)
        await self.agent.start()

    def _make_agent(self, managers: list[str]) -> Agent:
        assert self.record is not None
        context = client_ssl_context(self.tls.ca, self.tls.cert, self.tls.key)
        # Simulated tasks serve nothing: a node that runs them has no routing mesh to offer.
        mesh = None if self.config.executor == "sim" else RoutingMesh(
            self.record.node_id, self.config.publish_addr, self.config.routing_mesh,
            executor_binds_host_ports=self.config.executor == "docker", workers=self.config.mesh_workers)
        # Simulated tasks look nothing up either.
        discovery = None if self.config.executor == "sim" else NodeDiscovery(self.record.advertise_addr,
                                                                             self.config.dns_port)
        self.overlay = self._make_overlay(discovery)
        monitor = self.monitor
        return Agent(self.record.node_id, managers, context, self.state_dir / "agent", self._executor, self.clock,
                     self.describe, self._remember_managers, self.change_role, self.record.port, mesh=mesh,
                     liveness=monitor.alive, loop_lag=lambda: monitor.recent_max(HEARTBEAT_LAG_WINDOW),
                     on_manager_gone=self._manager_gone, on_trust=self._on_trust, discovery=discovery,
                     overlay=self.overlay, metrics=self.metrics.node)

    def _make_overlay(self, discovery: NodeDiscovery | None) -> OverlayDataPath | None:
        """The node's overlay, for an executor that puts tasks on swarm networks (docker, process)."""
        assert self.record is not None
        from shoal.agent.executor.docker import DockerExecutor
        from shoal.agent.executor.process import ProcessExecutor

        executor = self._executor
        if not isinstance(executor, DockerExecutor | ProcessExecutor):
            return None
        problem = overlay_problem()
        if problem is not None:
            executor.overlay_problem = problem
            log.warning("overlay: containers cannot join swarm networks on this node: %s", problem)
            return None
        overlay = OverlayDataPath(self.record.node_id, self.record.advertise_addr, self.config.data_path_port,
                                  discovery.serve_in if discovery is not None else None)
        executor.overlay = overlay
        return overlay

    async def _manager_gone(self, addr: str) -> None:
        """This node's agent lost its session unexpectedly: a manager here checks whether the leader died."""
        manager = self.manager
        if manager is not None:
            await manager.manager_gone(addr)

    async def change_role(self, answer: Doc, key_pem: bytes) -> None:
        """Become a manager (promote) or a worker (demote) with the certificate the leader issued."""
        async with self._membership:
            record = self.record
            if record is None or self.agent is None:
                return
            role = str(answer["role"])
            if role == record.role:
                await self._use_renewed_certificate(answer, key_pem)
                return
            log.info("changing role: %s -> %s", record.role, role)
            write_private(self.disk_tls.key, key_pem)
            write_private(self.disk_tls.cert, str(answer["certificate"]).encode())
            if role == Role.MANAGER.value:
                self._write_manager_files(answer)
                self._load_secrets()
                record.role = role
                await self._start_manager(answer.get("etcd_initial_cluster"), "existing")
                managers = [record.manager_addr, *[m for m in self.agent.managers if m != record.manager_addr]]
            else:
                manager, self.manager, self.control = self.manager, None, None
                # Its store credentials and the managers' key go first, before it answers as a worker; what
                # still runs (etcd, the store client, the lease keeper) holds what it loaded.
                self._remove_manager_files()
                if manager is not None:
                    await manager.stop_leading()
                if self._cluster_runner is not None:
                    await self._cluster_runner.cleanup()
                    self._cluster_runner = None
                if manager is not None:
                    await manager.stop()
                shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
                self._drop_secrets()
                record.role = role
                managers = [m for m in self.agent.managers if m != record.manager_addr]
            record.managers = managers
            self._save_record()
            await self.agent.reconnect(client_ssl_context(self.tls.ca, self.tls.cert, self.tls.key), managers)

    async def _on_trust(self, bundle: str, renew: bool) -> None:
        """The roots this node trusts now (a root rotation adds the new one, then drops the old one), and
        whether to renew its certificate from the new root."""
        tls = self.disk_tls
        roots = split_pem(bundle.encode())
        if roots and bundle.encode() != read_if_present(tls.ca):
            write_private(tls.ca, bundle.encode())
            if self._server_context is not None:
                self._server_context.load_verify_locations(cadata=bundle)
            log.info("trusting %d root certificate%s now", len(roots), "s" if len(roots) != 1 else "")
        if renew and self.agent is not None and await self.agent.request_certificate(self.tls.key.read_bytes()):
            log.info("renewing this node's certificate from the swarm's new root CA")

    async def _use_renewed_certificate(self, answer: Doc, key_pem: bytes) -> None:
        """A renewed certificate for the node's own key: the session starts again presenting it (and the node's
        TLSInfo, which a root rotation waits for), and the swarm port serves it."""
        if key_pem != self.tls.key.read_bytes():
            log.warning("ignoring a certificate for a key this node does not hold")
            return
        cert = str(answer["certificate"]).encode()
        write_private(self.disk_tls.cert, cert)
        tls = self.tls
        if self._server_context is not None:
            self._server_context.load_cert_chain(tls.cert, tls.key)  # the swarm port's next handshakes
        if self.agent is not None:
            await self.agent.reconnect(client_ssl_context(tls.ca, tls.cert, tls.key), self.agent.managers)
        self._expired_logged = False
        log.info("certificate renewed: valid until %s", cert_validity(cert)[1].isoformat())

    async def _renew_certificate(self) -> None:
        """Renew the node's certificate before it expires, at a random point of the second half of its life."""
        draw = random.random()
        asked_at = -RENEWAL_RETRY
        while True:
            await asyncio.sleep(RENEWAL_CHECK_PERIOD)
            if self.record is None or self.agent is None or self.locked:
                continue
            try:
                not_before, not_after = cert_validity(self.disk_tls.cert.read_bytes())
            except (OSError, InvalidArgument):
                continue
            now = datetime.fromtimestamp(self.clock.now(), UTC)
            if now >= not_after:
                self._report_expired(not_after)
                continue
            retry = min(RENEWAL_RETRY, (not_after - not_before).total_seconds() / 10)
            due = now >= renewal_time(not_before, not_after, draw) and time.monotonic() - asked_at >= retry
            if due and await self.agent.request_certificate(self.tls.key.read_bytes()):
                asked_at = time.monotonic()
                log.info("renewing this node's certificate (it expires at %s)", not_after.isoformat())

    def _report_expired(self, not_after: datetime) -> None:
        self.error = (f"this node's certificate expired at {not_after.isoformat()}, so the swarm no longer lets it "
                      "in: run \"shoal swarm leave --force\" here, then join again with a token from a manager "
                      "(\"shoal swarm join-token worker\" prints the command)")
        if not self._expired_logged:
            log.error("%s", self.error)
            self._expired_logged = True

    def _write_manager_files(self, answer: Doc) -> None:
        """The managers' key and the store access a node receives when it becomes a manager."""
        tls = self.disk_tls
        write_private(tls.manager_key, key_from_wire(str(answer.get("ManagerKey") or "")))
        credentials = StoreCredentials.from_wire(answer)
        if credentials is not None:
            credentials.write(tls.store_ca, tls.store_cert, tls.store_crl)

    def _remove_manager_files(self) -> None:
        """A demoted node keeps no manager secret, nor a sealed copy of its old key (a worker's is not sealed)."""
        tls = self.disk_tls
        for path in tls.manager_files():
            path.unlink(missing_ok=True)
        for path in (tls.key, tls.manager_key):
            locked_path(path).unlink(missing_ok=True)

    def _remember_managers(self, managers: list[str]) -> None:
        if self.record is not None and managers != self.record.managers:
            self.record.managers = list(managers)
            self._save_record()

    async def _start_cluster_server(self, record: NodeRecord) -> None:
        from shoal.api.server import make_app

        host, port = split_addr(record.listen_addr)
        context = server_ssl_context(self.tls.ca, self.tls.cert, self.tls.key)
        self._server_context = context
        self._cluster_runner = web.AppRunner(make_app(self, remote=True), handle_signals=False, access_log=None,
                                             shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT)
        await self._cluster_runner.setup()
        # A new leader takes a thousand agents' connections at once: with aiohttp's backlog of 128 the kernel
        # drops the rest of the SYNs, and agents time out connecting (seen in bench.scale) although the port is up.
        self._cluster_site = web.TCPSite(self._cluster_runner, host, port, ssl_context=context, reuse_address=True,
                                         backlog=SWARM_PORT_BACKLOG)
        try:
            await self._cluster_site.start()
        except OSError as exc:
            raise Unavailable(f"cannot listen on {record.listen_addr}: {exc.strerror}; choose another "
                              "--listen-addr") from exc
        log.info("swarm port listening on %s (TLS)", record.listen_addr)

    async def _deactivate(self, kill_tasks: bool) -> None:
        if not kill_tasks and self.control is not None and self.record is not None:
            # A restart, not a departure: tell whichever manager leads next to wait for this node.
            with contextlib.suppress(ShoalError, TimeoutError):
                await within(self.control.note_restarting(self.record.node_id, RESTART_GRACE), 3)
        # Leader loops go first: a manager shutting down must not mark the nodes whose sessions it is
        # closing as down, nor act on its own agent going away.
        if self.manager is not None:
            await self.manager.stop_leading()
        if self._cluster_runner is not None:
            await self._cluster_runner.cleanup()
            self._cluster_runner = None
        if self.agent is not None:
            await self.agent.stop(kill_tasks=kill_tasks)
            self.agent = None
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
            self.control = None

    # ---- membership -------------------------------------------------------------------------------------

    def event_journal(self) -> EventJournal:
        """The swarm's events as this manager sees them (`GET /events`); refused as any manager route is."""
        self.require_control()
        assert self.manager is not None
        return self.manager.events

    def require_control(self) -> ControlAPI:
        if self.locked:
            raise SwarmLocked()
        if self.control is None:
            raise NotAManager(worker=self.record is not None)
        return self.control

    async def init_swarm(self, body: Doc) -> str:
        if body.get("ForceNewCluster") and self.record is not None:
            return await self.force_new_cluster()
        async with self._membership:
            if self.record is not None:
                raise AlreadyInSwarm()
            listen = str(body.get("ListenAddr") or f"0.0.0.0:{DEFAULT_PORT}")
            listen_host, listen_port = split_addr(listen)
            advertise_text = str(body.get("AdvertiseAddr") or "")
            if advertise_text:
                advertise_ip, _ = split_addr(advertise_text, listen_port)
            elif listen_host not in ("0.0.0.0", "::"):
                advertise_ip = listen_host
            else:
                raise InvalidArgument("could not choose an IP address to advertise since this system has multiple "
                                      "addresses - specify one with --advertise-addr")
            if body.get("ForceNewCluster"):
                raise InvalidArgument("--force-new-cluster needs an existing swarm state on this node; none is here")
            spec = validate_swarm_spec(body.get("Spec") or {}, min_cert_expiry_from_environment())
            cluster_id, node_id = new_id(), new_id()
            now = self.clock.now()
            ca, store_ca = RootCA.create(cluster_id), create_store_ca(cluster_id)
            key, csr = make_key_and_csr()
            addrs = [advertise_ip, "127.0.0.1"]
            cert = ca.sign_csr(csr, node_id, Role.MANAGER.value, cluster_id, addrs,
                               expiry_seconds=node_cert_expiry_seconds({"Spec": spec}))
            store_records = Batch()
            store = store_access.bootstrap(store_records, store_ca, node_id, csr, cluster_id, addrs)
            tls = self.disk_tls
            write_private(tls.ca, ca.cert_pem)
            write_private(tls.cert, cert)
            write_private(tls.key, key)
            manager_key = new_manager_key()
            write_private(tls.manager_key, manager_key)
            store.write(tls.store_ca, tls.store_cert, tls.store_crl)
            self._load_secrets()
            timestamp = to_rfc3339(now)
            cluster: Doc = {
                "ID": cluster_id, "CreatedAt": timestamp, "UpdatedAt": timestamp, "Spec": spec,
                **ca_rotation.initial_fields(ca), "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
                "DataPathPort": 4789,
                "JoinTokens": {"Worker": make_token(ca.cert_pem), "Manager": make_token(ca.cert_pem)},
            }
            if body.get("AutoLockManagers"):
                spec["EncryptionConfig"] = {**(spec.get("EncryptionConfig") or {}), "AutoLockManagers": True}
            if autolock_on(cluster):
                set_unlock_key(store_records, cluster, new_unlock_key(), manager_key)
            node = new_node(node_id, Role.MANAGER, self.hostname, advertise_ip, listen_port, now)
            node["Description"] = self.describe()
            if body.get("Availability") in AVAILABILITIES:
                node["Spec"]["Availability"] = body["Availability"]
            self.record = NodeRecord(node_id, cluster_id, Role.MANAGER.value, advertise_ip,
                                     f"{listen_host}:{listen_port}", self.hostname)
            try:
                await self._start_manager(bootstrap=Bootstrap(cluster, node, ca, store_ca, store_records))
                self._save_record()
                await self._start_agent([self.record.manager_addr])
                await self._until_ready(node_id)
            except BaseException:
                await self._deactivate(kill_tasks=True)
                self.record = None
                self._wipe_state()
                raise
            log.info("swarm %s initialised; this node %s is its first manager", cluster_id, node_id)
            return node_id

    async def _until_ready(self, node_id: str) -> None:
        """Return from `swarm init` as Docker does, with the node ready (its agent's session registered it): a
        `node update` right after must not find the version already moved on."""
        manager = self.manager
        assert manager is not None
        cache = manager.cache
        try:
            await cache.wait_until(lambda: node_state(cache.get(NODES, node_id) or {}) == NodeState.READY,
                                   READY_TIMEOUT)
        except TimeoutError:
            log.warning("this node is not ready %.0fs after swarm init; see the log above", READY_TIMEOUT)

    async def _follow_autolock(self) -> None:
        """Seal or unseal this manager's keys on disk as the swarm's autolock setting and unlock key say: on
        when turned on, again after a rotation, back in clear when turned off."""
        while True:
            await asyncio.sleep(AUTOLOCK_CHECK_PERIOD)
            manager = self.manager
            cluster = manager.cache.cluster() if manager is not None else None
            if manager is None or manager.store is None or cluster is None or self._secrets is None:
                continue
            wanted = (cluster.get(UNLOCK_KEY_ID) or None) if autolock_on(cluster) else None
            secrets = self.manager_secrets
            if wanted == secrets.sealed_with():
                continue
            async with self._membership:
                if self._secrets is None or self.manager is not manager:
                    continue
                clear = self.clear_secrets()
                if wanted is None:
                    await asyncio.to_thread(secrets.unlock, clear)
                    log.info("autolock is off: this manager's keys are kept in clear")
                    continue
                key = read_unlock_key(await manager.store.get_raw(UNLOCK_KEY_STORE), manager.manager_key())
                if key is not None and key_id(key) == wanted:
                    await asyncio.to_thread(secrets.lock, key, clear)
                    log.info("autolock: this manager's keys are sealed with the current unlock key")

    async def unlock_swarm(self, unlock_key: str) -> None:
        """`swarm unlock`: open this manager's sealed keys with the unlock key and take part in the swarm."""
        async with self._membership:
            if self.record is None:
                raise NotInSwarm()
            if not self.locked:
                raise InvalidArgument("swarm is not locked: nothing to unlock")
            self._load_secrets(unlock_key)  # a wrong key: InvalidArgument, and the node stays locked
            self.locked = False
            log.info("unlocked: resuming as manager %s", self.record.node_id)
            try:
                await self._activate()
            except ShoalError as exc:
                self.error = exc.message
                raise

    async def force_new_cluster(self) -> str:
        """Recover a swarm that lost its quorum for good: this manager's etcd member restarts as the only
        member, keeping all the state; the other managers are recorded as workers (they must leave and join
        again)."""
        async with self._membership:
            record = self.record
            assert record is not None
            if record.role != Role.MANAGER.value:
                raise InvalidArgument("only a manager can force a new cluster: this node is a worker")
            if self.config.external_etcd is not None:
                raise InvalidArgument("--force-new-cluster does not apply to an external etcd cluster: "
                                      "recover that cluster with etcd's own tools")
            log.warning("forcing a new cluster from this manager's state")
            await self._deactivate(kill_tasks=False)
            try:
                await self._start_manager(force_new_cluster=True)
                assert self.control is not None
                for node in list(self.control.cache.nodes().values()):
                    if node["ID"] != record.node_id and node["Spec"].get("Role") == Role.MANAGER.value:
                        await self.control.retire_manager(node["ID"])
                record.managers = [record.manager_addr]
                self._save_record()
                await self._start_agent(record.managers)
            except BaseException:
                await self._deactivate(kill_tasks=False)
                raise
            return record.node_id

    async def join_swarm(self, body: Doc) -> None:
        async with self._membership:
            if self.record is not None:
                raise AlreadyInSwarm()
            remotes = body.get("RemoteAddrs") or []
            if not remotes or not isinstance(remotes, list):
                raise InvalidArgument("give the address of a manager to join, e.g. 192.168.0.10:2377")
            remote_ip, remote_port = split_addr(resolve_host(str(remotes[0])))
            listen = str(body.get("ListenAddr") or f"0.0.0.0:{DEFAULT_PORT}")
            listen_host, listen_port = split_addr(listen)
            advertise_text = str(body.get("AdvertiseAddr") or "")
            if advertise_text:
                advertise_ip, _ = split_addr(advertise_text, listen_port)
            elif listen_host not in ("0.0.0.0", "::"):
                advertise_ip = listen_host
            else:
                advertise_ip = local_ip_towards(remote_ip)
            result = await join_cluster(f"{remote_ip}:{remote_port}", str(body.get("JoinToken") or ""),
                                        self.hostname, advertise_ip, listen_port)
            tls = self.disk_tls
            write_private(tls.ca, result.ca_pem)
            write_private(tls.cert, result.cert_pem)
            write_private(tls.key, result.key_pem)
            if result.role == Role.MANAGER.value:
                self._write_manager_files(result.answer)
                self._load_secrets()
            managers = result.managers or [f"{remote_ip}:{remote_port}"]
            self.record = NodeRecord(result.node_id, result.cluster_id, result.role, advertise_ip,
                                     f"{listen_host}:{listen_port}", self.hostname, managers)
            try:
                await self._activate(result.etcd_initial_cluster, "existing")
                self._save_record()
            except BaseException:
                await self._deactivate(kill_tasks=True)
                self.record = None
                self._wipe_state()
                raise

    async def leave_swarm(self, force: bool) -> None:
        async with self._membership:
            if self.record is None:
                raise NotInSwarm()
            if self.record.role == Role.MANAGER.value and not force:
                self._refuse_unsafe_manager_leave()
            # Each step is bounded: a swarm without quorum must not hold `leave` (and the membership lock).
            if self.manager is not None and self.control is not None:
                # Others must stop counting this node as a manager (it stays listed, Down, as in Docker).
                with contextlib.suppress(ShoalError, TimeoutError):
                    await within(self.control.retire_manager(self.record.node_id), LEAVE_STEP_TIMEOUT)
                if self.manager.access is not None and self.manager.external_etcd is None:
                    # This node's certificate for the store stays on its disk: make it worthless.
                    with contextlib.suppress(ShoalError, TimeoutError):
                        await within(self.manager.access.revoke(self.record.node_id), LEAVE_STEP_TIMEOUT)
            if self.manager is not None and self.manager.client is not None and self.manager.external_etcd is None:
                with contextlib.suppress(TimeoutError):
                    await within(self._remove_own_member(), LEAVE_STEP_TIMEOUT)
            try:
                await within(self._deactivate(kill_tasks=True), LEAVE_STEP_TIMEOUT * 2)
            except TimeoutError:
                log.error("leaving: stopping this node's parts took over %.0fs; stopping them by force",
                          LEAVE_STEP_TIMEOUT * 2)
                self.kill_children()
                self.manager, self.control, self.agent, self._cluster_runner = None, None, None, None
            self.record = None
            self._wipe_state()

    def _refuse_unsafe_manager_leave(self) -> None:
        """Docker's rules: a manager may not leave without --force when it is the last one, or when the
        managers left reachable would be too few for a quorum."""
        assert self.record is not None
        managers = [n for n in (self.control.cache.nodes().values() if self.control else [])
                    if n["Spec"].get("Role") == Role.MANAGER.value]
        prefix = "You are attempting to leave the swarm on a node that is participating as a manager. "
        if len(managers) <= 1:
            raise Unavailable(prefix + "Removing the last manager erases all current state of the swarm. "
                              "Use `--force` to ignore this message.")
        reachable = sum(1 for n in managers if n["ID"] != self.record.node_id
                        and (n.get("Status") or {}).get("State") == "ready")
        quorum = len(managers) // 2 + 1
        if reachable < quorum:
            raise Unavailable(
                prefix + f"Removing this node leaves {reachable} managers out of {len(managers)}. Without a Raft "
                "quorum your swarm will be inaccessible. The only way to restore a swarm that has lost consensus "
                "is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.")

    async def _remove_own_member(self) -> None:
        """Leave the etcd cluster cleanly when other members remain."""
        assert self.manager is not None and self.manager.client is not None and self.record is not None
        try:
            members = [m async for m in self.manager.client.members()]
            mine = [m for m in members if m.name == self.record.node_id]
            if mine and len(members) > 1:
                await self.manager.client.remove_member(mine[0].id)
        except Exception as exc:
            log.warning("could not remove this node's etcd member: %s", exc)

    def kill_children(self) -> None:
        """SIGKILL the processes this daemon started and would stop on a clean exit (not its tasks)."""
        manager = self.manager
        if manager is None:
            return
        for pid in (manager.member.pid if manager.member else None, manager.keeper.pid if manager.keeper else None):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    # ---- what /info, the debug endpoint and the metrics report -------------------------------------------

    def _cluster_figures(self) -> ClusterFigures | None:
        manager = self.manager
        return manager.figures() if manager is not None else None

    def _mesh_ports(self) -> dict[PortKey, PortStats]:
        agent = self.agent
        return agent.mesh.port_stats() if agent is not None and agent.mesh is not None else {}

    def debug_info(self) -> Doc:
        """Figures for operators and benchmarks (`GET /shoal/debug`): loop lag, leadership, store writes."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        info: Doc = {
            "NodeID": self.record.node_id if self.record else "",
            "Role": self.record.role if self.record else "",
            "Loop": self.monitor.stats(),
            "GC": self.gc_pauses.stats(),
            "Process": {"CPUSeconds": round(usage.ru_utime + usage.ru_stime, 3), "MaxRSSBytes": usage.ru_maxrss * 1024},
        }
        manager = self.manager
        if manager is not None:
            election = manager.election
            info["Manager"] = {
                "Leader": manager.is_leader, "LeaderID": manager.leader_id or "",
                "ElectionsWon": election.elections_won if election else 0,
                "LeadershipsLost": election.leaderships_lost if election else 0,
                "Store": manager.store.stats.to_json() if manager.store else {},
                "Sessions": len(manager.dispatcher.sessions) if manager.dispatcher else 0,
                "NodesMarkedDown": manager.dispatcher.nodes_marked_down if manager.dispatcher else 0,
                "Tasks": len(manager.cache.tasks()),
                "Events": manager.events.stats(),
            }
        agent = self.agent
        if agent is not None:
            info["Agent"] = {"Manager": agent.current_manager or "", "Connected": agent.connected.is_set(),
                             "Tasks": len(agent.worker.known_task_ids()), "TaskRecord": agent.worker.record_stats()}
            files = getattr(self._executor, "task_files", None)
            if isinstance(files, TaskFiles):
                # Which secrets and configs the node holds (their IDs only), for least-privilege checks.
                held = files.held()
                info["Agent"]["Holds"] = {"Secrets": sorted(i for k, i in held if k == SECRET),
                                          "Configs": sorted(i for k, i in held if k == CONFIG)}
            if agent.discovery is not None:
                info["Agent"]["Discovery"] = agent.discovery.debug()
            if agent.overlay is not None:
                info["Agent"]["Overlay"] = agent.overlay.debug()
        return info


    def swarm_info(self) -> Doc:
        if self.record is None or self.locked:
            return {"NodeID": self.record.node_id if self.record else "", "NodeAddr": "",
                    "LocalNodeState": "locked" if self.locked else "inactive", "ControlAvailable": False,
                    "Error": self.error, "RemoteManagers": None}
        nodes = self.control.cache.nodes() if self.control is not None else {}
        info: Doc = {
            "NodeID": self.record.node_id, "NodeAddr": self.record.advertise_addr, "LocalNodeState": "active",
            "ControlAvailable": self.control is not None, "Error": self.error,
            "RemoteManagers": remote_managers(self.agent.managers if self.agent else self.record.managers, nodes),
        }
        if self.control is not None:
            info["Nodes"] = len(nodes)
            info["Managers"] = sum(1 for n in nodes.values() if n["Spec"].get("Role") == "manager")
            with contextlib.suppress(ShoalError):
                info["Cluster"] = self.control.get_swarm()
                info["Cluster"].pop("JoinTokens", None)
            if info["Managers"] == 2:
                info["Warnings"] = [TWO_MANAGERS_WARNING]
        return info


# Docker's words (moby `daemon/cluster/swarm.go` Info).
TWO_MANAGERS_WARNING = (
    "WARNING: Running Swarm in a two-manager configuration. This configuration provides\n"
    "         no fault tolerance, and poses a high risk to lose control over the cluster.\n"
    "         Refer to https://docs.docker.com/engine/swarm/admin_guide/ to configure the\n"
    "         Swarm for fault-tolerance.")


def remote_managers(addrs: list[str], nodes: dict[str, Doc]) -> list[Doc]:
    """`Swarm.RemoteManagers`: the managers this node knows, by address, with their node IDs where this node
    holds the node list (a manager); a worker knows only their addresses."""
    by_addr = {}
    for node in nodes.values():
        if node["Spec"].get("Role") == Role.MANAGER.value:
            addr = node.get(MANAGER_ADDR_FIELD) or f"{(node.get('Status') or {}).get('Addr', '')}:{DEFAULT_PORT}"
            by_addr[addr] = node["ID"]
    return [{"NodeID": by_addr.get(addr, ""), "Addr": addr} for addr in addrs]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def serve(config: DaemonConfig) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
    except ShoalError as exc:
        log.error("%s", exc.message)
        await daemon.stop()
        return 1
    log.info("shoal daemon %s ready (state %s)", __version__, config.state_dir)
    await stop.wait()
    log.info("shutting down")
    start_exit_watchdog(daemon, SHUTDOWN_DEADLINE)
    await daemon.stop()
    return 0


def start_exit_watchdog(daemon: Daemon, deadline: float) -> None:
    """Make sure the process ends within `deadline`, whatever its loop or its threads are stuck on (a thread
    cannot be cancelled, and asyncio.run waits for them). From a thread, so a blocked loop cannot stop it."""

    def cut_short() -> None:
        log.error("shutdown did not finish within %.0fs: stopping the etcd member and exiting now", deadline)
        daemon.kill_children()
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(deadline, cut_short)
    timer.daemon = True
    timer.start()


def raise_open_file_limit() -> None:
    """Every mesh connection holds two sockets and every UDP session one: take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run(config: DaemonConfig) -> int:
    setup_logging(config.log_level)
    raise_open_file_limit()
    try:
        import uvloop  # the routing mesh's userspace proxy forwards about twice as fast on it

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        log.info("event loop: uvloop %s", uvloop.__version__)
    except ImportError:
        pass
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
