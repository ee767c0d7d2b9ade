"""shoald: the one daemon per machine. Its role follows the node's membership: not in a swarm, worker, or
manager (a manager also runs an agent, as in Docker swarm mode).

It always serves the Docker-shaped API on a unix socket for the local CLI. A manager also listens on its
swarm address (default port 2377) with TLS for joins, agent sessions and remote API use (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import platform
import resource
import shutil
import signal
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web

from shoal import __version__
from shoal.agent.agent import Agent
from shoal.agent.executor.base import Executor
from shoal.agent.join import join as join_cluster
from shoal.certs import client_ssl_context, server_ssl_context, write_private
from shoal.clock import Clock, SystemClock
from shoal.config import DEFAULT_PORT, DaemonConfig
from shoal.errors import AlreadyInSwarm, InvalidArgument, NotAManager, NotInSwarm, ShoalError, Unavailable
from shoal.ids import new_id
from shoal.loopmonitor import LoopMonitor
from shoal.manager.ca import RootCA
from shoal.manager.control import ControlAPI
from shoal.manager.controlapi.swarm import default_swarm_spec, merge_swarm_spec
from shoal.manager.dispatcher import RESTART_GRACE
from shoal.manager.join import new_node
from shoal.manager.manager import HEARTBEAT_LAG_WINDOW, Manager, TLSFiles
from shoal.mesh.mesh import RoutingMesh
from shoal.supervise import Supervisor
from shoal.timefmt import to_rfc3339
from shoal.timeouts import within
from shoal.tokens import make_token
from shoal.types import Doc, Role

log = logging.getLogger(__name__)


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
        self._cluster_site: web.TCPSite | None = None
        self._cluster_runner: web.AppRunner | None = None
        self._api_runner: web.AppRunner | None = None
        self._membership = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.error = ""
        self.monitor = LoopMonitor()
        self.loops = Supervisor("daemon")

    # ---- paths ------------------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def tls(self) -> TLSFiles:
        certs = self.state_dir / "certs"
        return TLSFiles(ca=certs / "ca.pem", cert=certs / "node.pem", key=certs / "node-key.pem")

    def _save_record(self) -> None:
        assert self.record is not None
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.record), indent=2))
        os.replace(tmp, self.record_path)

    def _load_record(self) -> NodeRecord | None:
        try:
            return NodeRecord(**json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None

    def _wipe_state(self) -> None:
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
            return DockerExecutor.connect()
        if self.config.executor == "sim":
            from shoal.agent.executor.sim import SimExecutor

            return SimExecutor()
        if self.config.executor != "process":
            raise InvalidArgument(f"unknown executor {self.config.executor!r}: use process, docker or sim")
        from shoal.agent.executor.process import ProcessExecutor

        return ProcessExecutor(self.state_dir / "agent")

    def describe(self) -> Doc:
        executor_desc = self._executor.describe()
        engine = dict(executor_desc.get("Engine") or {})
        engine["Labels"] = {**(engine.get("Labels") or {}), **self.config.engine_labels}
        return {
            "Hostname": self.hostname,
            "Platform": executor_desc.get("Platform") or {"Architecture": platform.machine(), "OS": "linux"},
            "Resources": executor_desc.get("Resources") or {},
            "Engine": engine,
        }

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.loops.start("loop-monitor", self.monitor.run)
        self._executor = self.make_executor()
        self.record = self._load_record()
        if self.record is not None:
            log.info("resuming as %s %s in swarm %s", self.record.role, self.record.node_id, self.record.cluster_id)
            try:
                await self._activate()
            except ShoalError as exc:
                # Keep serving the local API so the node can still be inspected or made to leave.
                self.error = exc.message
                log.error("could not resume swarm membership: %s", exc.message)
        from shoal.api.server import make_app

        self._api_runner = web.AppRunner(make_app(self, remote=False), handle_signals=False, access_log=None)
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
        await self.loops.stop()
        self.stopped.set()

    async def _activate(self, initial_cluster: str | None = None, initial_state: str = "new") -> None:
        """Start the manager (if this node is one) and the agent for the current record."""
        record = self.record
        assert record is not None
        if record.role == Role.MANAGER.value:
            await self._start_manager(initial_cluster, initial_state)
        managers = record.managers or [record.manager_addr]
        if record.role == Role.MANAGER.value and record.manager_addr not in managers:
            managers = [record.manager_addr, *managers]
        await self._start_agent(managers)

    async def _start_manager(self, initial_cluster: str | None = None, initial_state: str = "new",
                             force_new_cluster: bool = False,
                             bootstrap: tuple[Doc, RootCA, Doc] | None = None) -> None:
        """Run this node's manager: its etcd member (or the external store), the control API and the swarm
        port. `bootstrap` holds the first objects of a new swarm (cluster, CA, node) to write once it runs."""
        record = self.record
        assert record is not None
        self.manager = Manager(record.node_id, record.advertise_addr, record.manager_addr, self.state_dir,
                               self.tls, self.clock, self.config.external_etcd, monitor=self.monitor)
        await self.manager.start(record.cluster_id, initial_cluster, initial_state, force_new_cluster)
        if bootstrap is not None:
            await self.manager.bootstrap(*bootstrap)
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
        monitor = self.monitor
        return Agent(self.record.node_id, managers, context, self.state_dir / "agent", self._executor, self.clock,
                     self.describe, self._remember_managers, self.change_role, self.record.port, mesh=mesh,
                     liveness=monitor.alive, loop_lag=lambda: monitor.recent_max(HEARTBEAT_LAG_WINDOW),
                     on_manager_gone=self._manager_gone)

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
                return
            log.info("changing role: %s -> %s", record.role, role)
            write_private(self.tls.key, key_pem)
            write_private(self.tls.cert, str(answer["certificate"]).encode())
            if role == Role.MANAGER.value:
                record.role = role
                await self._start_manager(answer.get("etcd_initial_cluster"), "existing")
                managers = [record.manager_addr, *[m for m in self.agent.managers if m != record.manager_addr]]
            else:
                manager, self.manager, self.control = self.manager, None, None
                if manager is not None:
                    await manager.stop_leading()
                if self._cluster_runner is not None:
                    await self._cluster_runner.cleanup()
                    self._cluster_runner = None
                if manager is not None:
                    await manager.stop()
                shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
                record.role = role
                managers = [m for m in self.agent.managers if m != record.manager_addr]
            record.managers = managers
            self._save_record()
            await self.agent.reconnect(client_ssl_context(self.tls.ca, self.tls.cert, self.tls.key), managers)

    def _remember_managers(self, managers: list[str]) -> None:
        if self.record is not None and managers != self.record.managers:
            self.record.managers = list(managers)
            self._save_record()

    async def _start_cluster_server(self, record: NodeRecord) -> None:
        from shoal.api.server import make_app

        host, port = split_addr(record.listen_addr)
        context = server_ssl_context(self.tls.ca, self.tls.cert, self.tls.key)
        self._cluster_runner = web.AppRunner(make_app(self, remote=True), handle_signals=False, access_log=None)
        await self._cluster_runner.setup()
        self._cluster_site = web.TCPSite(self._cluster_runner, host, port, ssl_context=context, reuse_address=True)
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

    def require_control(self) -> ControlAPI:
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
            cluster_id, node_id = new_id(), new_id()
            now = self.clock.now()
            ca = RootCA.create(cluster_id)
            cert, key = ca.issue_node_cert(node_id, Role.MANAGER.value, cluster_id, [advertise_ip, "127.0.0.1"])
            tls = self.tls
            write_private(tls.ca, ca.cert_pem)
            write_private(tls.cert, cert)
            write_private(tls.key, key)
            spec = merge_swarm_spec(default_swarm_spec(), body.get("Spec") or {})
            timestamp = to_rfc3339(now)
            cluster: Doc = {
                "ID": cluster_id, "CreatedAt": timestamp, "UpdatedAt": timestamp, "Spec": spec,
                "TLSInfo": {"TrustRoot": ca.cert_pem.decode(), "CertIssuerSubject": "", "CertIssuerPublicKey": ""},
                "RootRotationInProgress": False, "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24,
                "DataPathPort": 4789,
                "JoinTokens": {"Worker": make_token(ca.cert_pem), "Manager": make_token(ca.cert_pem)},
            }
            node = new_node(node_id, Role.MANAGER, self.hostname, advertise_ip, listen_port, now)
            node["Description"] = self.describe()
            if body.get("Availability") in ("active", "pause", "drain"):
                node["Spec"]["Availability"] = body["Availability"]
            self.record = NodeRecord(node_id, cluster_id, Role.MANAGER.value, advertise_ip,
                                     f"{listen_host}:{listen_port}", self.hostname)
            try:
                await self._start_manager(bootstrap=(cluster, ca, node))
                self._save_record()
                await self._start_agent([self.record.manager_addr])
            except BaseException:
                await self._deactivate(kill_tasks=True)
                self.record = None
                self._wipe_state()
                raise
            log.info("swarm %s initialised; this node %s is its first manager", cluster_id, node_id)
            return node_id

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
            tls = self.tls
            write_private(tls.ca, result.ca_pem)
            write_private(tls.cert, result.cert_pem)
            write_private(tls.key, result.key_pem)
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
            if self.manager is not None and self.control is not None:
                # Others must stop counting this node as a manager (it stays listed, Down, as in Docker).
                with contextlib.suppress(ShoalError):
                    await self.control.retire_manager(self.record.node_id)
            if self.manager is not None and self.manager.client is not None and self.manager.external_etcd is None:
                await self._remove_own_member()
            await self._deactivate(kill_tasks=True)
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

    # ---- what /info and the debug endpoint report --------------------------------------------------------

    def debug_info(self) -> Doc:
        """Figures for operators and benchmarks (`GET /shoal/debug`): loop lag, leadership, store writes."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        info: Doc = {
            "NodeID": self.record.node_id if self.record else "",
            "Role": self.record.role if self.record else "",
            "Loop": self.monitor.stats(),
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
            }
        agent = self.agent
        if agent is not None:
            info["Agent"] = {"Manager": agent.current_manager or "", "Connected": agent.connected.is_set(),
                             "Tasks": len(agent.worker.known_task_ids()), "TaskRecord": agent.worker.record_stats()}
        return info


    def swarm_info(self) -> Doc:
        if self.record is None:
            return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                    "Error": self.error, "RemoteManagers": None}
        info: Doc = {
            "NodeID": self.record.node_id, "NodeAddr": self.record.advertise_addr, "LocalNodeState": "active",
            "ControlAvailable": self.control is not None, "Error": self.error,
            "RemoteManagers": [{"NodeID": "", "Addr": a} for a in
                               (self.agent.managers if self.agent else self.record.managers)],
        }
        if self.control is not None:
            nodes = self.control.cache.nodes()
            info["Nodes"] = len(nodes)
            info["Managers"] = sum(1 for n in nodes.values() if n["Spec"].get("Role") == "manager")
            with contextlib.suppress(ShoalError):
                info["Cluster"] = self.control.get_swarm()
                info["Cluster"].pop("JoinTokens", None)
        return info


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
    await daemon.stop()
    return 0


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
