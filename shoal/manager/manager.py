"""A manager node: its etcd member, the store and cache, leader election and the leader-only control loops.

Every manager serves the control API from its cache and writes specs to the store; only the elected leader
runs the orchestrator, the scheduler and the dispatcher, and its writes are fenced on the leader key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aetcd.exceptions

from shoal.clock import Clock
from shoal.config import EtcdEndpoints
from shoal.errors import NoQuorum, ShoalError
from shoal.ids import new_id
from shoal.loopmonitor import LoopMonitor
from shoal.manager import ca_rotation
from shoal.manager.allocator import AllocatorLoop
from shoal.manager.applier import Applier
from shoal.manager.ca import RootCA
from shoal.manager.cache import Cache
from shoal.manager.controlapi import network as network_api
from shoal.manager.controlapi.swarm import node_cert_expiry_seconds
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.etcd_member import EtcdMember, MemberConfig, client_url
from shoal.manager.events import EventJournal
from shoal.manager.figures import cluster_figures
from shoal.manager.keys import (
    decode_ca,
    encode_ca,
    key_to_wire,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from shoal.manager.leader import MAX_LOOP_STALL, KeeperProcess, LeaderElection
from shoal.manager.orchestrator.loop import OrchestratorLoop
from shoal.manager.scheduler.loop import SchedulerLoop
from shoal.manager.store.base import CA_KEY, DATA_KEY_STORE, Batch
from shoal.manager.store.etcd import (
    EXTERNAL_MAX_OPS_PER_TXN,
    MAX_OPS_PER_TXN,
    EtcdClient,
    EtcdStore,
    channel_target,
    make_client,
)
from shoal.manager.store_access import STORE_CA_KEY, StoreAccess
from shoal.metrics import ClusterFigures, ManagerMetrics
from shoal.supervise import Supervisor
from shoal.timefmt import SECOND, to_rfc3339
from shoal.timeouts import within
from shoal.tokens import make_token
from shoal.types import CLUSTERS, NETWORKS, NODES, Doc, Role

log = logging.getLogger(__name__)

MEMBER_ADD_TIMEOUT = 30.0
ROTATION_CHECK_PERIOD = 1.0  # how often the leader looks whether a root CA rotation can end
PROBE_TIMEOUT = 1.0
MAX_HEARTBEATS_PER_SECOND = 200
DEAD_LEADER_DEADLINE = 5.0  # past it, the dead leader's lease has expired anyway
# The loop lag a daemon reports in heartbeats (and their answers): the worst of the last this-many seconds, so a
# peer that stalled once is given that much more time for a while.
HEARTBEAT_LAG_WINDOW = 60.0


@dataclass
class TLSFiles:
    """A node's key and certificates. The store files and the managers' key exist on managers only."""

    ca: Path
    cert: Path
    key: Path
    store_ca: Path
    store_cert: Path  # for `key`, from the store CA: what etcd lets in
    store_crl: Path
    manager_key: Path

    @classmethod
    def under(cls, certs: Path) -> TLSFiles:
        return cls(ca=certs / "ca.pem", cert=certs / "node.pem", key=certs / "node-key.pem",
                   store_ca=certs / "store-ca.pem", store_cert=certs / "store.pem",
                   store_crl=certs / "store-crl.pem", manager_key=certs / "manager.key")

    def manager_files(self) -> list[Path]:
        return [self.store_ca, self.store_cert, self.store_crl, self.manager_key]


@dataclass
class Bootstrap:
    """A new swarm's first objects: written by its first manager once its store runs."""

    cluster: Doc
    node: Doc
    ca: RootCA
    store_ca: RootCA
    store_records: Batch  # the revocation list and the first manager's store certificate


class Manager:
    def __init__(self, node_id: str, advertise_ip: str, manager_addr: str, state_dir: Path, tls: TLSFiles,
                 clock: Clock, external_etcd: EtcdEndpoints | None = None,
                 monitor: LoopMonitor | None = None, metrics: ManagerMetrics | None = None) -> None:
        self.node_id = node_id
        self.metrics = metrics or ManagerMetrics()
        self.advertise_ip = advertise_ip
        self.manager_addr = manager_addr
        self.state_dir = state_dir
        self.tls = tls
        self.clock = clock
        self.external_etcd = external_etcd
        self.monitor = monitor or LoopMonitor()
        self.member: EtcdMember | None = None
        self.client: EtcdClient | None = None
        self.store: EtcdStore | None = None
        self.cache = Cache()
        self.events = EventJournal(clock)  # what `GET /events` streams, from this manager's cache
        self.cache.subscribe(self.events.on_change, on_reload=self.events.reload)
        self.loops = Supervisor("manager")
        self.leader_loops = Supervisor("leader")
        self.election: LeaderElection | None = None
        self.keeper: KeeperProcess | None = None
        self.dispatcher: Dispatcher | None = None
        self.api_applier: Applier | None = None
        self.leader_applier: Applier | None = None
        self._store_ca: RootCA | None = None
        self._data_key: bytes | None = None
        self.access: StoreAccess | None = None

    # ---- start and stop ---------------------------------------------------------------------------------

    def member_config(self, cluster_id: str, initial_cluster: str | None, initial_state: str,
                      force_new_cluster: bool = False) -> MemberConfig:
        return MemberConfig(
            force_new_cluster=force_new_cluster,
            name=self.node_id, ip=self.advertise_ip, data_dir=self.state_dir / "etcd",
            ca_file=self.tls.store_ca, cert_file=self.tls.store_cert, key_file=self.tls.key,
            crl_file=self.tls.store_crl, cluster_token=cluster_id,
            initial_cluster=initial_cluster or f"{self.node_id}=https://{self.advertise_ip}:2380",
            initial_state=initial_state,
        )

    async def start(self, cluster_id: str, initial_cluster: str | None = None, initial_state: str = "new",
                    force_new_cluster: bool = False) -> None:
        """Start (or restart) this manager's etcd member and everything above it."""
        if self.external_etcd is not None:
            e = self.external_etcd
            def read(p):
                return (Path(p).read_bytes() if p else None)
            self.client = make_client(e.urls, read(e.cacert), read(e.cert), read(e.key))
        else:
            self.member = EtcdMember(self.member_config(cluster_id, initial_cluster, initial_state,
                                                        force_new_cluster), self.state_dir / "etcd.log")
            await self.member.start()
            self.client = make_client([client_url(self.advertise_ip)], self.tls.store_ca.read_bytes(),
                                      self.tls.store_cert.read_bytes(), self.tls.key.read_bytes())
        self.store = EtcdStore(self.client, EXTERNAL_MAX_OPS_PER_TXN if self.external_etcd else MAX_OPS_PER_TXN,
                               metrics=self.metrics)
        self.access = StoreAccess(self.store, self.store_ca, self.tls.store_crl)
        await self._wait_for_store()
        client = self.client
        monitor = self.monitor
        self.keeper = self._lease_keeper(lambda: monitor.progressing(MAX_LOOP_STALL))
        await self.keeper.start()
        self.election = LeaderElection(client, self.node_id, self.keeper, metrics=self.metrics)
        leader_applier = self.leader_applier = Applier(self.store, fence=lambda: self.node_id)
        self.api_applier = Applier(self.store, fence=lambda: None)
        self.dispatcher = Dispatcher(self.cache, self.store, leader_applier, self.clock,
                                     heartbeat_period=self.heartbeat_period, managers=self.manager_addrs,
                                     issue_certificate=self.issue_certificate, liveness=monitor.alive,
                                     loop_lag=lambda: monitor.recent_max(HEARTBEAT_LAG_WINDOW),
                                     data_key=self.data_key, metrics=self.metrics)
        self.orchestrator = OrchestratorLoop(self.cache, leader_applier, self.clock)
        self.allocator = AllocatorLoop(self.cache, leader_applier)
        self.scheduler = SchedulerLoop(self.cache, leader_applier, self.clock, self.allocator.addresses,
                                       metrics=self.metrics)
        store = self.store
        self.loops.start("cache", lambda: self.cache.run(store))
        if self.member is not None:
            self.loops.start("store-revocations", self.access.follow_revocations)
        election = self.election
        self.loops.start("election", lambda: election.run(self._on_elected, self._on_deposed))
        # Serve reads only once the cache holds the store's contents.
        await within(self.cache.ready.wait(), 30)

    def _lease_keeper(self, progressing: Callable[[], bool]) -> KeeperProcess:
        """The leader lease's keeper process, connected to the store as this manager is."""
        e = self.external_etcd
        if e is None:
            return KeeperProcess(channel_target([client_url(self.advertise_ip)]), str(self.tls.store_ca),
                                 str(self.tls.store_cert), str(self.tls.key), progressing)
        tls = any(url.startswith("https://") for url in e.urls)
        return KeeperProcess(channel_target(e.urls), e.cacert if tls else None, e.cert, e.key, progressing)

    async def _wait_for_store(self, timeout: float = 30.0) -> None:
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: Exception | None = None
        while loop.time() < deadline:
            if self.member is not None and (why := self.member.exited_early()):
                raise NoQuorum(f"the etcd member did not start: {why}")
            try:
                await within(self.client.get(b"/shoal/probe"), 2)
                return
            except Exception as exc:
                last_error = exc
                await asyncio.sleep(0.1)
        raise NoQuorum(f"the store did not answer within {timeout:.0f}s: {last_error}")

    async def _on_elected(self) -> None:
        await self.cache.ready.wait()
        assert self.dispatcher is not None
        self.dispatcher.activate()
        dispatcher = self.dispatcher
        try:
            marked = await dispatcher.mark_nodes_unknown()
            if marked:
                log.info("%d nodes are unknown until they reconnect to this leader", marked)
        except ShoalError as exc:
            log.warning("could not mark nodes unknown after the leader change: %s", exc.message)
        self.leader_loops.start("orchestrator", self.orchestrator.run)
        self.leader_loops.start("allocator", self.allocator.run)
        self.leader_loops.start("scheduler", self.scheduler.run)
        self.leader_loops.start("node-health", dispatcher.node_health_loop)
        self.leader_loops.start("task-status", dispatcher.flush_status_loop)
        self.leader_loops.start("ca-rotation", self._finish_ca_rotation)

    async def _finish_ca_rotation(self) -> None:
        """End a root CA rotation once every node that is not down runs on a certificate of the new root."""
        while True:
            await asyncio.sleep(ROTATION_CHECK_PERIOD)
            cluster = self.cache.cluster()
            if cluster is None or not cluster.get(ca_rotation.IN_PROGRESS):
                continue
            done, total = ca_rotation.progress(cluster, list(self.cache.nodes().values()))
            if done < total:
                continue
            ca = await self.root_ca()
            finished = ca_rotation.finish(cluster, ca, {"Worker": make_token(ca.cert_pem),
                                                         "Manager": make_token(ca.cert_pem)})
            finished["UpdatedAt"] = to_rfc3339(self.clock.now())
            assert self.leader_applier is not None
            result = await self.leader_applier.write(Batch().update(CLUSTERS, finished))
            if result.written:
                log.info("root CA rotation complete: %d nodes on the new root; new join tokens", total)

    async def _on_deposed(self) -> None:
        await self.leader_loops.stop()
        if self.dispatcher is not None:
            await self.dispatcher.deactivate()

    async def stop_leading(self) -> None:
        """Stop campaigning and acting as leader; the store stays up for a clean handover."""
        await self.loops.stop()
        await self._on_deposed()

    async def stop(self) -> None:
        # Stepping down revoked the leader lease (leader.py), so the next manager need not wait for it.
        await self.stop_leading()
        if self.keeper is not None:
            await self.keeper.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        if self.member is not None:
            await self.member.stop()

    # ---- state the API and the dispatcher read ----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.election is not None and self.election.is_leader

    @property
    def leader_id(self) -> str | None:
        return self.election.leader_id if self.election is not None else None

    def figures(self) -> ClusterFigures | None:
        """The swarm's state for the metrics; None until this manager's loops and cache are up."""
        if self.dispatcher is None or not self.cache.ready.is_set():
            return None
        leading = self.is_leader
        return cluster_figures(self.cache, is_leader=leading, pending=self.scheduler.pending_by_reason(),
                               update_progress=self.orchestrator.update_progress() if leading else {},
                               sessions=len(self.dispatcher.sessions))

    def leader_addr(self) -> str | None:
        leader = self.leader_id
        node = self.cache.get(NODES, leader) if leader else None
        return node.get("ManagerAddr") if node else None

    def heartbeat_period(self) -> float:
        return heartbeat_period(self.cache.cluster(), len(self.cache.nodes()))

    def manager_addrs(self) -> list[str]:
        return sorted(
            n["ManagerAddr"] for n in self.cache.nodes().values()
            if n.get("Spec", {}).get("Role") == Role.MANAGER.value and n.get("ManagerAddr")
        )

    async def manager_gone(self, addr: str) -> None:
        """This node's agent lost its session with the manager at `addr`. When that is the leader and nothing
        listens there any more (its daemon died: the machine answers, the port refuses), its lease is ended
        at once, so a crashed leader is replaced in well under the lease's time."""
        election = self.election
        leader = self.leader_id
        if election is None or leader is None or self.is_leader or self.leader_addr() != addr:
            return
        if not await refuses_connections(addr):
            return
        # The store may be electing a leader of its own (the dead manager's etcd member led it): a request sent
        # then is lost and waits out its whole timeout, so try again in short attempts.
        deadline = asyncio.get_running_loop().time() + DEAD_LEADER_DEADLINE
        while asyncio.get_running_loop().time() < deadline:
            try:
                await within(election.end_dead_leader(leader), 1.0)
                return
            except Exception as exc:
                log.info("could not end the lease of leader %s yet: %s", leader, exc or type(exc).__name__)
                await asyncio.sleep(0.1)

    def manager_key(self) -> bytes:
        return self.tls.manager_key.read_bytes()

    async def _load_ca(self, key: str, what: str) -> RootCA:
        assert self.store is not None
        raw = await self.store.get_raw(key)
        if raw is None:
            raise NoQuorum(f"the {what} is missing from the store")
        return decode_ca(raw, self.manager_key(), key)

    async def root_ca(self) -> RootCA:
        """The CA that signs node certificates now (read each time: a root rotation replaces it)."""
        return await self._load_ca(CA_KEY, "cluster CA")

    async def store_ca(self) -> RootCA:
        if self._store_ca is None:
            self._store_ca = await self._load_ca(STORE_CA_KEY, "store CA")
        return self._store_ca

    async def data_key(self) -> bytes:
        """The cluster's data key (seals secrets), made on first use; stored wrapped with the managers' key,
        kept in this process's memory once read (it never changes)."""
        if self._data_key is None:
            assert self.store is not None
            wrapped = await self.store.get_raw(DATA_KEY_STORE)
            if wrapped is None:
                wrapped = await self.store.put_raw_if_absent(
                    DATA_KEY_STORE, wrap_data_key(new_data_key(), self.manager_key()))
            self._data_key = unwrap_data_key(wrapped, self.manager_key())
        return self._data_key

    async def manager_credentials(self, node_id: str, csr: bytes, cluster_id: str, addr: str) -> Doc:
        """What a node that becomes a manager receives beside its certificate: the managers' key, and store
        access for its etcd member."""
        answer: Doc = {"ManagerKey": key_to_wire(self.manager_key())}
        if self.external_etcd is None:
            assert self.access is not None
            credentials = await self.access.grant(node_id, csr, cluster_id, [addr, "127.0.0.1"])
            answer.update(credentials.to_wire())
        return answer

    async def issue_certificate(self, node_id: str, csr: bytes, listen_port: int, held_role: str) -> Doc:
        """A certificate for the node's current role. A renewal (the role its certificate holds already) is just
        that; on promotion its etcd member is added and it gets store access, on demotion both are taken away.

        The node document is written first: adding a member leaves the store without quorum until the new
        member starts (with two members), so nothing else may need the store after that.
        """
        assert self.store is not None and self.client is not None
        node = self.cache.get(NODES, node_id)
        cluster = self.cache.cluster()
        if node is None or cluster is None:
            raise NoQuorum("node or cluster missing from the store")
        role = node["Spec"].get("Role", Role.WORKER.value)
        addr = (node.get("Status") or {}).get("Addr") or ""
        ca = await self.root_ca()
        cert = ca.sign_csr(csr, node_id, role, cluster["ID"], [addr, "127.0.0.1"],
                           expiry_seconds=node_cert_expiry_seconds(cluster)) + ca_rotation.ca_chain(cluster)
        answer: Doc = {"certificate": cert.decode(), "role": role}
        if role == held_role:
            log.info("renewed the %s certificate of node %s", role, node_id)
            return answer
        if role == Role.MANAGER.value:
            answer.update(await self.manager_credentials(node_id, csr, cluster["ID"], addr))
        updated = dict(node)
        if role == Role.MANAGER.value:
            updated["ManagerAddr"] = f"{addr}:{listen_port}"
        else:
            updated.pop("ManagerAddr", None)
        if updated != node:
            await self.store.commit(Batch().update(NODES, updated, check_version=False))
        if self.external_etcd is None:
            url = f"https://{addr}:2380"
            if role == Role.MANAGER.value:
                answer["etcd_initial_cluster"] = await self.add_member(url, node_id)
            else:
                mine = [m async for m in self.client.members() if url in m.peer_urls]
                if mine:
                    await self.client.remove_member(mine[0].id)
                assert self.access is not None
                await self.access.revoke(node_id)
        log.info("issued a %s certificate to node %s", role, node_id)
        return answer

    async def add_member(self, url: str, node_id: str) -> str:
        """Add an etcd member for `url`; returns the --initial-cluster string its etcd must start with.

        etcd refuses membership changes until every member has been connected for a few seconds (its strict
        reconfiguration check), e.g. right after another manager joined: wait and try again meanwhile.
        """
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MEMBER_ADD_TIMEOUT
        while True:
            try:
                members = [m async for m in self.client.members()]
                if not any(url in m.peer_urls for m in members):
                    members.append(await self.client.add_member([url]))
                return ",".join(f"{m.name or node_id}={m.peer_urls[0]}" for m in members if m.peer_urls)
            except aetcd.exceptions.ClientError as exc:
                if loop.time() > deadline:
                    raise NoQuorum(f"could not add an etcd member for {url}: {exc}") from exc
                log.info("etcd member add for %s not possible yet (%s); retrying", url, exc)
                await asyncio.sleep(0.5)

    async def bootstrap(self, first: Bootstrap) -> None:
        """Write the first objects of a new swarm in one transaction."""
        assert self.store is not None
        ingress = network_api.new_network(network_api.ingress_spec(), new_id(), self.clock.now(), [])
        batch = Batch().create("clusters", first.cluster).create(NODES, first.node)
        batch.create(NETWORKS, ingress, unique_name=network_api.INGRESS_NAME)
        batch.ops.extend(first.store_records.ops)
        batch.put_raw(CA_KEY, encode_ca(first.ca, self.manager_key(), CA_KEY))
        batch.put_raw(STORE_CA_KEY, encode_ca(first.store_ca, self.manager_key(), STORE_CA_KEY))
        rev = await self.store.commit(batch)
        await self.cache.wait_for_revision(rev, timeout=10)


def heartbeat_period(cluster: Doc | None, nodes: int) -> float:
    """The swarm's heartbeat period in seconds (`swarm update --dispatcher-heartbeat`, 1 s by default),
    lengthened in a large swarm so the leader reads at most MAX_HEARTBEATS_PER_SECOND: a thousand nodes beat
    every 5 s, Docker's own default period."""
    ns = ((cluster or {}).get("Spec", {}).get("Dispatcher", {}) or {}).get("HeartbeatPeriod") or SECOND
    return max(float(ns) / SECOND, nodes / MAX_HEARTBEATS_PER_SECOND)


async def refuses_connections(addr: str) -> bool:
    """Whether a TCP connection to "ip:port" is refused: the machine is up and nothing listens. A timeout (a
    cut network, a frozen machine) or any other error is not proof of anything."""
    host, _, port = addr.rpartition(":")
    try:
        _, writer = await within(asyncio.open_connection(host.strip("[]"), int(port)), PROBE_TIMEOUT)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return False
