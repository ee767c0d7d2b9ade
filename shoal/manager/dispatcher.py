"""The dispatcher (leader only): one session per agent — heartbeats in, assignments out, status in.

Agents connect over a mutually authenticated WebSocket (see shoal.protocol); the peer certificate names the
node. Heartbeats stay in memory, and each is answered, so an agent notices a silent leader within a few periods.
A node whose heartbeats stop for longer than the grace period is marked down in the store, which is what makes
the orchestrator move its tasks. Task status reports are coalesced and written in batches about every 100 ms.

Load must not look like death. Heartbeat deadlines run on a liveness clock that stands still while this
manager's own loop is stalled (`shoal.loopmonitor`), and each node's grace grows by the loop lag it reports. A
new leader gives every node time to notice the old leader's silence and reconnect before it counts a missed
heartbeat, so no node is declared down only because it was still talking to the previous leader.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import cast

from aiohttp import WSMsgType, web

from shoal import codec
from shoal.certs import identity_from_peercert
from shoal.clock import Clock
from shoal.discovery.names import data_endpoint, is_peer, name_entries
from shoal.errors import InvalidArgument, NotLeader, ShoalError
from shoal.manager import ca_rotation
from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.dependencies import NodeDependencies, needed_by
from shoal.manager.keys import open_secret
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.store.base import Batch, Event, Store, object_key
from shoal.mesh.table import endpoint_table, is_backend, published_ports
from shoal.metrics import ManagerMetrics
from shoal.protocol import ATTEMPT_HEADER
from shoal.spec import (
    BACKEND_PORTS,
    DOWN_SINCE,
    MESH_ERRORS,
    RESTARTING_UNTIL,
    RUNNING_SINCE,
    SEALED_DATA,
    is_job,
)
from shoal.task_files import SECRET, DependencyKey
from shoal.task_networks import attached_networks
from shoal.timefmt import from_rfc3339, to_rfc3339
from shoal.timeouts import within
from shoal.types import (
    CLUSTERS,
    CONFIGS,
    NODES,
    SECRETS,
    SERVICES,
    TASKS,
    Doc,
    NodeState,
    TaskState,
    desired_state,
    is_global,
    node_state,
    task_node,
    task_slot,
    task_state,
)

log = logging.getLogger(__name__)

STATUS_FLUSH_INTERVAL = 0.1
MERGE_YIELD_EVERY = 500

# (node ID, CSR, the node's swarm port) -> {"certificate", "role", ["etcd_initial_cluster"]}
# (node ID, CSR, the node's listen port, the role its current certificate holds) -> the answer to send it.
CertificateIssuer = Callable[[str, bytes, int, str], Awaitable[Doc]]
GRACE_MULTIPLIER = 3  # heartbeat periods without a heartbeat before a node is marked down
# After a leader change, the periods a node has to find the new leader on top of the usual grace: the agent's
# own silence deadline (shoal.agent.agent.SILENCE_PERIODS) and a reconnect.
ELECTION_EXTRA_PERIODS = 3
MAX_LAG_ALLOWANCE = 10.0  # at most this much of a node's reported loop lag is added to its grace
# After an election, seconds of patience per node not yet back (on top of the grace): a new leader takes a
# thousand agents in at a few dozen a second on a busy machine.
RECONNECT_ALLOWANCE = 0.05
# Sessions opened within one heartbeat period that make a reconnection wave (a busy leader taking agents in):
# a session closed unannounced meanwhile is more likely one of them given up than a dead node.
WAVE_SESSIONS = 8
JOIN_GRACE = 30.0  # a node that just joined has this long, beyond the usual grace, to open its first session
FIRST_REPORT_WAIT = 5.0  # how long a new session's node waits for its first status report before it is ready
RESTART_GRACE = 15.0  # seconds a node that announced a daemon restart has to come back
# On a node document: until when (unix time) a manager that announced its restart is given to come back, so
# that the next leader honours it too.


def agent_should_know(task: Doc) -> bool:
    """Whether the task belongs in its node's assignment set."""
    state = task_state(task)
    if state < TaskState.ASSIGNED:
        return False
    # Both sides agree it is over (a job's task done for good is desired "complete"): the agent may forget it.
    return not (state.terminal and desired_state(task) >= TaskState.COMPLETE)


# What an agent reports of a task besides its state; a report that changes one of them is news even in the same
# state (e.g. a running task announcing the ports it serves).
REPORTED_DETAILS = ("Message", "Err", "ContainerStatus", "PortStatus", BACKEND_PORTS)


def merge_status(task: Doc, status: Doc, now: float) -> Doc | None:
    """The task with the agent's reported status applied, or None when it changes nothing.

    Observed states only move forward: a report older than what is stored is dropped.
    """
    current = task_state(task)
    state = status.get("State")
    if not isinstance(state, str):
        return None
    try:
        reported = TaskState.parse(state)
    except ValueError:
        return None
    old = task["Status"]
    if reported < current:
        return None
    if reported == current and all(old.get(k) == status.get(k) for k in REPORTED_DETAILS):
        return None
    new = dict(task)
    merged = dict(old)
    merged.update({k: v for k, v in status.items() if k in ("State", "Timestamp", *REPORTED_DETAILS)})
    try:
        from_rfc3339(str(merged.get("Timestamp")))
    except InvalidArgument:
        merged["Timestamp"] = to_rfc3339(now)
    if reported == current and old.get("Timestamp"):
        # Same state again (e.g. re-adopted after an agent restart): it has been in it since the first report.
        merged["Timestamp"] = old["Timestamp"]
    if reported == TaskState.RUNNING and current < TaskState.RUNNING:
        # When it started running, for the rolling update's monitor window (hidden from API views).
        merged[RUNNING_SINCE] = to_rfc3339(now)
    new["Status"] = merged
    new["UpdatedAt"] = to_rfc3339(now)
    return new


_NO_NAMES: list[Doc] = []  # a network with no names (one object: compared by identity)


@dataclass(frozen=True)
class Attempt:
    """Which connection attempt of which agent process a session is (ATTEMPT_HEADER); unknown: never later."""

    instance: str = ""
    number: int = 0

    @classmethod
    def parse(cls, header: str | None) -> Attempt:
        instance, _, number = (header or "").partition(":")
        return cls(instance, int(number)) if instance and number.isdigit() else cls()

    def earlier_than(self, other: Attempt) -> bool:
        """Whether this is an attempt the same agent process made before `other` (a restarted agent's
        attempts are never earlier: it is another process)."""
        return bool(self.instance) and self.instance == other.instance and self.number < other.number


@dataclass
class NodeSession:
    node_id: str
    ws: web.WebSocketResponse
    role: str  # the role its certificate carries
    transport: asyncio.Transport | None = None
    attempt: Attempt = field(default_factory=Attempt)  # which of its agent's connection attempts
    role_told: str = ""  # the role we last asked the agent to take on
    check_role: bool = False
    check_trust: bool = False
    trust_told: tuple[str, bool] | None = None  # the roots and the renewal we last told the agent of
    send_managers: bool = False
    restarting: bool = False  # the agent said its daemon is restarting
    gave_up: bool = False  # the agent left because this manager did not answer in time
    background: list[asyncio.Task[None]] = field(default_factory=list)
    answerer: asyncio.Task[None] | None = None  # sends the heartbeat answers owed, beside the reading loop
    answers_owed: int = 0
    known: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    endpoints_sent: list[Doc] | None = None  # the endpoint table this agent has
    names_sent: dict[str, list[Doc]] | None = None  # the name table entries this agent has, by network
    networks: frozenset[str] | None = None  # the networks of its tasks (None: to be read again)
    dependencies: NodeDependencies = field(default_factory=NodeDependencies)  # the secrets and configs it holds
    reported: asyncio.Event = field(default_factory=asyncio.Event)  # its first status report arrived
    log_queues: dict[int, asyncio.Queue[Doc | None]] = field(default_factory=dict)

    async def send(self, message: Doc) -> None:
        await self.ws.send_str(codec.dumps_text(message))

    def drop(self) -> None:
        """End the session at once; a close handshake with a silent agent would wait out its timeout."""
        if self.transport is not None:
            self.transport.abort()


class Dispatcher:
    def __init__(self, cache: Cache, store: Store, applier: Applier, clock: Clock,
                 heartbeat_period: Callable[[], float], managers: Callable[[], list[str]],
                 issue_certificate: CertificateIssuer, liveness: Callable[[], float] | None = None,
                 loop_lag: Callable[[], float] | None = None,
                 data_key: Callable[[], Awaitable[bytes]] | None = None,
                 metrics: ManagerMetrics | None = None) -> None:
        self.cache = cache
        self.metrics = metrics or ManagerMetrics()
        self.store = store
        self.applier = applier
        self.clock = clock
        self.heartbeat_period = heartbeat_period
        self.managers = managers
        self.issue_certificate = issue_certificate
        self.data_key = data_key  # opens secrets for delivery (None: no secret is ever delivered)
        self.sessions: dict[str, NodeSession] = {}
        # On the liveness clock (stands still while this process's loop is stalled).
        self.last_heartbeat: dict[str, float] = {}
        self.node_lag: dict[str, float] = {}  # the loop lag each node last reported
        self._alive = liveness or clock.monotonic
        self._loop_lag = loop_lag or (lambda: 0.0)
        self.nodes_marked_down = 0  # for the debug endpoint and the benchmarks
        self.pending_status: dict[str, Doc] = {}
        self._flush_lock = asyncio.Lock()
        self._status_revision = 0  # the store revision of the last status write
        self._log_ids = itertools.count(1)
        self._endpoints: list[Doc] | None = None  # the routing mesh's table, recomputed when it may have changed
        self._publishing: dict[str, tuple[Doc, bool]] = {}
        self._names_stale = True  # the name table may have changed since it was last made
        self._names_by_network: dict[str, list[Doc]] = {}  # the name table on the wire, by network
        self._networked: dict[str, tuple[Doc, bool]] = {}
        self.active = False
        # After an election every agent reconnects at once; with a thousand of them the wave takes a while, and a
        # node's silence means little while others are still getting through (see check_nodes).
        self._reconnected: set[str] = set()
        self._last_session_opened = 0.0
        self._recent_opens: collections.deque[float] = collections.deque()  # session opens of the last period
        self._activated = 0.0
        cache.subscribe(self._on_event)

    # ---- leadership -------------------------------------------------------------------------------------

    def activate(self) -> None:
        """Start serving as the leader's dispatcher. Every known node gets a fresh grace period, lengthened by
        the time its agent needs to notice that the old leader went silent and to reconnect here."""
        now = self._alive() + ELECTION_EXTRA_PERIODS * self.heartbeat_period()
        self.last_heartbeat = {nid: now for nid in self.cache.nodes()}
        self.node_lag = {}
        self._reconnected = set()
        self._last_session_opened = self._activated = self._alive()
        self.active = True

    async def mark_nodes_unknown(self) -> int:
        """After a leader change no node is known to be up until it opens a session with this leader: ready
        nodes become "unknown", so nothing new is placed on a node that died with the old leader (swarmkit does
        the same). Their tasks stay until the grace runs out; a node that reconnects is ready again."""
        now = self.clock.now()
        batch = Batch()
        for node_id, node in self.cache.nodes().items():
            if node_state(node) == NodeState.READY and node_id not in self.sessions:
                new = dict(node)
                new["Status"] = {**(node.get("Status") or {}), "State": NodeState.UNKNOWN.value,
                                 "Message": 'Node moved to "unknown" state due to leadership change in cluster'}
                new["UpdatedAt"] = to_rfc3339(now)
                batch.update(NODES, new)
        if not batch.ops:
            return 0
        result = await self.applier.write(batch)
        return result.written

    async def deactivate(self) -> None:
        self.active = False
        for session in list(self.sessions.values()):
            session.drop()
        self.sessions.clear()

    # ---- the session ------------------------------------------------------------------------------------

    async def handle_session(self, request: web.Request, leader_addr: str | None) -> web.StreamResponse:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        if not peercert:
            raise web.HTTPForbidden(text="a node certificate is required")
        identity = identity_from_peercert(peercert)
        attempt = Attempt.parse(request.headers.get(ATTEMPT_HEADER))
        current = self.sessions.get(identity.node_id)
        if current is not None and attempt.earlier_than(current.attempt):
            # An attempt the agent gave up on, served late (a busy leader): it must not replace the session
            # the agent opened after it, which would end that one and send the agent reconnecting again.
            raise web.HTTPConflict(text="a later session of this node is open")
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024, timeout=1.0)
        await ws.prepare(request)
        if not self.active:
            await ws.send_str(json.dumps({"type": "redirect", "leader": leader_addr or ""}))
            await ws.close()
            return ws
        node = self.cache.get(NODES, identity.node_id)
        if node is None:
            await ws.send_str(json.dumps({"type": "rejected", "message": "node is not part of this swarm (removed?)"}))
            await ws.close()
            return ws
        session = NodeSession(identity.node_id, ws, identity.role,
                              transport=cast(asyncio.Transport | None, request.transport), attempt=attempt)
        old = self.sessions.get(identity.node_id)
        if old is not None and attempt.earlier_than(old.attempt):
            await ws.close()  # a later attempt got in while this one was being answered
            return ws
        if old is not None:
            old.drop()  # the agent gave up on it: it may be dead
        self.sessions[identity.node_id] = session
        self.session_opened(identity.node_id)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        sender = asyncio.create_task(self._send_assignments(session), name=f"assign:{identity.node_id}")
        try:
            await self._serve(session, peer[0] if peer else "")
        finally:
            tasks = [sender, *session.background, *([session.answerer] if session.answerer else [])]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.sessions.get(identity.node_id) is session:
                del self.sessions[identity.node_id]
                self.session_ended(session)
            for queue in session.log_queues.values():
                queue.put_nowait(None)
        return ws

    def session_opened(self, node_id: str) -> None:
        self._reconnected.add(node_id)
        now = self._alive()
        self._last_session_opened = now
        self._recent_opens.append(now)
        self._opens_within(now, self.heartbeat_period())  # keeps the record to one period
        self.last_heartbeat[node_id] = now

    def _opens_within(self, now: float, period: float) -> int:
        """How many sessions opened in the last `period` (older ones are forgotten)."""
        while self._recent_opens and self._recent_opens[0] < now - period:
            self._recent_opens.popleft()
        return len(self._recent_opens)

    def session_ended(self, session: NodeSession) -> None:
        """How long the node of a session that just closed has to come back, by how it ended."""
        node_id = session.node_id
        period = self.heartbeat_period()
        now = self._alive()
        if session.restarting:
            # A daemon restart (tasks keep running): the node has RESTART_GRACE to come back.
            self.last_heartbeat[node_id] = now - period * GRACE_MULTIPLIER + RESTART_GRACE
        elif session.gave_up:
            # The agent found this manager too slow to answer and is reconnecting: nothing says it died, so
            # it keeps the usual grace from its last heartbeat.
            pass
        else:
            # A connection closed unannounced is a strong hint the node died: give the agent one heartbeat
            # period to reconnect (to us or another manager) rather than the full grace.
            hinted = now - period * (GRACE_MULTIPLIER - 1)
            last = self.last_heartbeat.get(node_id, hinted)
            self.last_heartbeat[node_id] = min(last, hinted)
            if self._opens_within(now, period) >= WAVE_SESSIONS:
                # Unless this leader is taking many agents in right now: sessions then end because it is slow
                # (seen in bench.scale after a failover), and the node waits its turn like one not back since
                # the election: silent only once the wave is over.
                self._reconnected.discard(node_id)

    async def _serve(self, session: NodeSession, peer_ip: str) -> None:
        ws = session.ws
        await session.send({"type": "welcome", "node_id": session.node_id,
                            "heartbeat_period": self.heartbeat_period(), "managers": self.managers()})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            data = codec.loads(msg.data)
            kind = data.get("type")
            self.last_heartbeat[session.node_id] = self._alive()
            if kind == "heartbeat":
                self.metrics.heartbeats.inc()
                self.node_lag[session.node_id] = _seconds(data.get("lag"))
                # Answered, so the agent knows this manager still hears it (and how busy it is, and how often
                # to beat: the period grows with the swarm). Not from here: an agent slow to read (busy with a
                # hundred thousand assignments) would stop this loop reading its heartbeats, and be marked down.
                session.answers_owed += 1
                if session.answerer is None or session.answerer.done():
                    session.answerer = asyncio.create_task(self._answer_heartbeats(session),
                                                           name=f"heartbeats:{session.node_id}")
            elif kind == "hello":
                # Registering writes the store, which can be slow right after a leader change: do it beside
                # the message loop, so heartbeats keep being read meanwhile.
                session.background.append(asyncio.create_task(
                    self._welcome(session, data.get("description") or {}, peer_ip), name=f"hello:{session.node_id}"))
            elif kind == "bye":
                session.restarting = bool(data.get("restarting"))
                session.gave_up = bool(data.get("silent"))
            elif kind == "renew":
                await self._renew(session, data)
            elif kind == "status":
                for update in data.get("updates", []):
                    # A node reports only on its own tasks.
                    task = self.cache.get(TASKS, str(update.get("TaskID")))
                    if task is not None and task.get("NodeID") == session.node_id:
                        self.pending_status[task["ID"]] = update.get("Status") or {}
                session.reported.set()
            elif kind == "mesh":
                errors = [str(error) for error in data.get("errors") or []]
                session.background.append(asyncio.create_task(
                    self._record_mesh_errors(session.node_id, errors), name=f"mesh:{session.node_id}"))
            elif kind == "log":
                queue = session.log_queues.get(int(data["req"]))
                if queue is not None:
                    queue.put_nowait(data)
            elif kind == "log_end":
                queue = session.log_queues.get(int(data["req"]))
                if queue is not None:
                    queue.put_nowait(None)

    async def _answer_heartbeats(self, session: NodeSession) -> None:
        while session.answers_owed:
            session.answers_owed -= 1
            await session.send({"type": "heartbeat", "lag": round(self._loop_lag(), 3),
                                "period": self.heartbeat_period()})

    async def _welcome(self, session: NodeSession, description: Doc, peer_ip: str) -> None:
        # Ready only once the store shows what the node runs: a node back from a daemon restart keeps the tasks
        # it still runs rather than their replacements, and that choice must not be made on stale states (a
        # rebooted node's tasks are gone, and it says so in this first report).
        with contextlib.suppress(TimeoutError):
            await within(session.reported.wait(), FIRST_REPORT_WAIT)
            # In the store and in the cache, which the choice reads: a flush already under way may hold this
            # report (the lock waits for it), and a write reaches the cache a moment after it is made.
            await self.flush_status()
            await self.cache.wait_for_revision(self._status_revision, FIRST_REPORT_WAIT)
        await self._register(session.node_id, description, peer_ip)
        # The first assignment set is complete; later ones carry only changes.
        await self._send_full(session)
        await self._tell_role(session)
        await self._tell_trust(session)

    async def _register(self, node_id: str, description: Doc, peer_ip: str) -> None:
        """Record the node as ready with what it reports about itself (retried until written)."""
        for attempt in range(50):
            node = self.cache.get(NODES, node_id)
            if node is None:
                return
            new = dict(node)
            desc = dict(node.get("Description") or {})
            hostname = desc.get("Hostname")
            desc.update(description)
            if hostname and not description.get("Hostname"):
                desc["Hostname"] = hostname
            new["Description"] = desc
            addr = (node.get("Status") or {}).get("Addr") or peer_ip
            new["Status"] = {"State": NodeState.READY.value, "Addr": addr, "Message": ""}
            new.pop(RESTARTING_UNTIL, None)
            new.pop(DOWN_SINCE, None)
            new["UpdatedAt"] = to_rfc3339(self.clock.now())
            batch = Batch().update(NODES, new)
            for task in self._made_redundant(new):
                batch.update(TASKS, task)
            try:
                result = await self.applier.write(batch)
                if result.written and object_key(NODES, node_id) not in result.failed_keys:
                    return
                # A stale version: wait for the cache to catch up, then again.
                await asyncio.sleep(0.05)
            except NotLeader:
                raise
            except ShoalError as exc:
                log.info("registering node %s (attempt %d): %s", node_id, attempt + 1, exc.message)
                await asyncio.sleep(0.2)
        log.warning("could not register node %s as ready", node_id)

    def _made_redundant(self, node: Doc) -> list[Doc]:
        """The replacements a node coming back makes redundant, told to stop in the very write that shows the
        node ready: the tasks it still runs are kept (the orchestrator's rule, decided here as it would decide
        it), and no moment shows a slot running twice on ready nodes. Only those stops: the rest of what the
        node's return changes is the orchestrator's, a moment later."""
        nodes = {**self.cache.nodes(), node["ID"]: node}
        now = self.clock.now()
        slots: dict[str, set[int]] = defaultdict(set)
        for task in self.cache.tasks_on_node(node["ID"]):
            if task_state(task) == TaskState.RUNNING and desired_state(task) == TaskState.RUNNING:
                slots[task["ServiceID"]].add(task_slot(task))
        stops = []
        for service_id, numbers in slots.items():
            service = self.cache.get(SERVICES, service_id)
            if service is None or is_global(service) or is_job(service) or 0 in numbers:
                continue
            plan = reconcile_replicated(service, self.cache.tasks_in_slots(service_id, numbers), nodes, now,
                                        slots=numbers)
            stops += [t for t in plan.update if desired_state(t) == TaskState.SHUTDOWN
                      and task_node(t) != node["ID"]]
        return stops

    async def _record_mesh_errors(self, node_id: str, errors: list[str]) -> None:
        """Keep what the node's routing mesh cannot serve on its document (`node inspect` shows it)."""
        for _attempt in range(20):
            node = self.cache.get(NODES, node_id)
            if node is None or (node.get(MESH_ERRORS) or []) == errors:
                return
            new = dict(node)
            if errors:
                new[MESH_ERRORS] = errors
            else:
                new.pop(MESH_ERRORS, None)
            with contextlib.suppress(ShoalError):
                if (await self.applier.write(Batch().update(NODES, new))).written:
                    return
            await asyncio.sleep(0.1)

    # ---- assignments ------------------------------------------------------------------------------------

    async def _renew(self, session: NodeSession, data: Doc) -> None:
        """A promoted or demoted node asks for a certificate carrying its new role."""
        try:
            answer = await self.issue_certificate(session.node_id, str(data.get("csr", "")).encode(),
                                                  int(data.get("listen_port") or 2377), session.role)
        except Exception as exc:
            # etcd refuses membership changes until every member has been healthy for a few seconds; the
            # role change is asked for again shortly.
            log.warning("role change of node %s not done yet: %s", session.node_id, exc)
            session.role_told = ""

            def retry() -> None:
                session.check_role = True
                session.wake.set()

            asyncio.get_running_loop().call_later(1.0, retry)
            return
        await session.send({"type": "certificate", **answer})

    async def _tell_role(self, session: NodeSession) -> None:
        """Ask the agent to change role when its node's spec says so (node promote / demote)."""
        node = self.cache.get(NODES, session.node_id)
        wanted = (node or {}).get("Spec", {}).get("Role", session.role)
        if wanted != session.role and wanted != session.role_told:
            session.role_told = wanted
            await session.send({"type": "role", "role": wanted})

    async def _tell_trust(self, session: NodeSession) -> None:
        """Tell the agent which roots to trust, and to renew its certificate during a root rotation while an
        old root issued it (ca_rotation.py)."""
        cluster = self.cache.cluster()
        if cluster is None:
            return
        told = (ca_rotation.trust_bundle(cluster),
                ca_rotation.needs_renewal(self.cache.get(NODES, session.node_id), cluster))
        if told != session.trust_told:
            session.trust_told = told
            await session.send({"type": "trust", "bundle": told[0], "renew": told[1]})

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        endpoints, names = self._may_change_endpoints(event, prev), self._may_change_names(event, prev)
        if endpoints:
            self._endpoints = None
        if names:
            self._names_stale = True
        if endpoints or names:
            for session in self.sessions.values():
                session.wake.set()
        if event.kind == NODES and (event.doc or {}).get("ManagerAddr") != (prev or {}).get("ManagerAddr"):
            # A manager joined, left or was promoted or demoted: every agent learns the new list.
            for session in self.sessions.values():
                session.send_managers = True
                session.wake.set()
        if event.kind == NODES and event.obj_id in self.sessions:
            session = self.sessions[event.obj_id]
            session.check_role = session.check_trust = True
            session.wake.set()
        if event.kind == CLUSTERS:
            for session in self.sessions.values():
                session.check_trust = True
                session.wake.set()
        if event.kind != TASKS or not self.sessions:
            return
        for doc in (prev, event.doc):
            if doc is not None and doc.get("NodeID") in self.sessions:
                session = self.sessions[doc["NodeID"]]
                session.dirty.add(event.obj_id)
                session.wake.set()

    async def _send_full(self, session: NodeSession) -> None:
        tasks = [t for t in self.cache.tasks_on_node(session.node_id) if agent_should_know(t)]
        session.known = {t["ID"] for t in tasks}
        session.dirty.clear()
        session.networks = None
        session.dependencies = NodeDependencies()
        for task in tasks:
            session.dependencies.set_task(str(task["ID"]), needed_by(task))
        values = await self._values(session.dependencies.held())
        await session.send({"type": "assignments", "full": True, "tasks": tasks, "remove": [], **values})
        await self._send_endpoints(session)
        await self._send_names(session)

    # ---- secrets and configs: sent with the first task that needs them, forgotten after the last ----------

    async def _values(self, gained: Collection[DependencyKey], lost: Collection[DependencyKey] = ()) -> Doc:
        """The assignment's fields carrying what the node now needs and what it may forget."""
        fields: Doc = {}
        for kind, obj_id in sorted(gained):
            data = await self._reveal(kind, obj_id)
            if data is not None:
                fields.setdefault(f"{kind}s", []).append({"ID": obj_id, "Data": base64.b64encode(data).decode()})
        forget: Doc = {}
        for kind, obj_id in sorted(lost):
            forget.setdefault(f"{kind}s", []).append(obj_id)
        if forget:
            fields["forget"] = forget
        return fields

    async def _reveal(self, kind: str, obj_id: str) -> bytes | None:
        """A secret's or config's value; None when it is gone (the task that needs it is then rejected)."""
        if kind == SECRET:
            secret = self.cache.get(SECRETS, obj_id)
            if secret is None or self.data_key is None:
                return None
            return open_secret(await self.data_key(), obj_id, str(secret.get(SEALED_DATA) or ""))
        config = self.cache.get(CONFIGS, obj_id)
        if config is None:
            return None
        return base64.b64decode(str(config["Spec"].get("Data") or ""))

    # ---- the routing mesh's endpoint table --------------------------------------------------------------

    def _may_change_endpoints(self, event: Event, prev: Doc | None) -> bool:
        """Whether a store change can change the endpoint table (most task changes of services without
        published ports cannot)."""
        if event.kind == SERVICES:
            return any(published_ports(doc) for doc in (prev, event.doc) if doc)
        if event.kind == NODES:
            before, after = prev or {}, event.doc or {}
            return bool(before.get("Status") != after.get("Status"))
        if event.kind == TASKS:
            task = event.doc or prev or {}
            return self._publishes(str(task.get("ServiceID") or ""))
        return False

    def _publishes(self, service_id: str) -> bool:
        """Whether the service publishes ports (or is gone)."""
        return self._remembered(self._publishing, service_id, published_ports)

    def _remembered(self, memo: dict[str, tuple[Doc, bool]], service_id: str, test: Callable[[Doc], object]) -> bool:
        """Whether `test` holds for the service (True when it is gone), remembered per service document: asked
        for every task change, a hundred thousand times when a service that size starts."""
        service = self.cache.get(SERVICES, service_id)
        if service is None:
            memo.pop(service_id, None)
            return True
        known = memo.get(service_id)
        if known is None or known[0] is not service:
            known = memo[service_id] = (service, bool(test(service)))
        return known[1]

    def endpoints(self) -> list[Doc]:
        """The endpoint table on the wire (`shoal.mesh.table`), from the cache."""
        if self._endpoints is None:
            services = [s for s in self.cache.services().values() if published_ports(s)]
            tasks = [t for s in services for t in self.cache.tasks_of_service(str(s["ID"]))]
            table = endpoint_table(services, tasks, self.cache.nodes())
            self._endpoints = [listener.to_wire() for listener in table]
        return self._endpoints

    async def _send_endpoints(self, session: NodeSession) -> None:
        table = self.endpoints()
        if table != session.endpoints_sent:
            session.endpoints_sent = table
            await session.send({"type": "endpoints", "listeners": table})

    # ---- service discovery: the names of the networks a node's tasks are on ------------------------------

    def _may_change_names(self, event: Event, prev: Doc | None) -> bool:
        if event.kind == SERVICES:
            return any(attached_networks(doc.get("Spec") or {}) for doc in (prev, event.doc) if doc)
        if event.kind == NODES:
            before, after = prev or {}, event.doc or {}
            return bool(before.get("Status") != after.get("Status") or data_endpoint(before) != data_endpoint(
                after)) and any(attached for _, attached in self._networked.values())
        if event.kind == TASKS:
            task = event.doc or prev or {}
            if not self._on_networks(str(task.get("ServiceID") or "")):
                return False
            # Only a change of what a name answers: a task becoming or ceasing to be a backend, or its
            # addresses (most status changes of a rollout are neither)…
            nodes = self.cache.nodes()
            was_backend = prev is not None and is_backend(prev, nodes)
            is_now = event.doc is not None and is_backend(event.doc, nodes)
            # …or a task's process appearing on a node or ending there (the overlay's peers).
            was_peer = prev is not None and is_peer(prev)
            peer_now = event.doc is not None and is_peer(event.doc)
            return was_backend != is_now or was_peer != peer_now or ((is_now or peer_now) and (prev or {}).get(
                "NetworksAttachments") != (event.doc or {}).get("NetworksAttachments"))
        return False

    def _on_networks(self, service_id: str) -> bool:
        """Whether the service is attached to a network (or is gone)."""
        return self._remembered(self._networked, service_id, lambda s: attached_networks(s.get("Spec") or {}))

    def _refresh_names(self) -> None:
        """The name table on the wire by network, made again when it may have changed."""
        if not self._names_stale:
            return
        self._names_stale = False
        services = [s for s in self.cache.services().values() if attached_networks(s.get("Spec") or {})]
        tasks = [t for s in services for t in self.cache.tasks_of_service(str(s["ID"]))]
        by_network: dict[str, list[Doc]] = {}
        for entry in name_entries(services, tasks, self.cache.nodes()):
            by_network.setdefault(entry.network_id, []).append(entry.to_wire())
        # A network whose entries did not change keeps its list object: sessions compare by identity.
        previous = self._names_by_network
        self._names_by_network = {network: previous[network] if previous.get(network) == entries else entries
                                  for network, entries in by_network.items()}

    async def _send_names(self, session: NodeSession) -> None:
        """The entries of the networks the node's tasks are attached to: a node learns no other names. Costs
        the node's networks when nothing changed for it (the networks are read again only when its tasks
        change), not the swarm's names."""
        self._refresh_names()
        if session.networks is None:
            session.networks = frozenset(
                network for task in self.cache.tasks_on_node(session.node_id) if agent_should_know(task)
                for network in attached_networks(task.get("Spec") or {}))
        wanted = {network: self._names_by_network.get(network, _NO_NAMES) for network in session.networks}
        sent = session.names_sent
        if sent is not None and sent.keys() == wanted.keys() and all(
                sent[network] is entries for network, entries in wanted.items()):
            return
        session.names_sent = wanted
        await session.send({"type": "names", "entries": [entry for network in sorted(wanted)
                                                         for entry in wanted[network]]})

    async def _send_assignments(self, session: NodeSession) -> None:
        while True:
            await session.wake.wait()
            session.wake.clear()
            await asyncio.sleep(0.02)  # coalesce a burst of task changes into one message
            if session.check_role:
                session.check_role = False
                await self._tell_role(session)
            if session.check_trust:
                session.check_trust = False
                await self._tell_trust(session)
            if session.send_managers:
                session.send_managers = False
                await session.send({"type": "managers", "managers": self.managers()})
            dirty, session.dirty = session.dirty, set()
            changed: list[Doc] = []
            removed: list[str] = []
            held = session.dependencies.held()
            for task_id in dirty:
                task = self.cache.get(TASKS, task_id)
                if task is not None and task.get("NodeID") == session.node_id and agent_should_know(task):
                    changed.append(task)
                    session.known.add(task_id)
                    session.dependencies.set_task(task_id, needed_by(task))
                elif task_id in session.known:
                    removed.append(task_id)
                    session.known.discard(task_id)
                    session.dependencies.drop_task(task_id)
            if changed or removed:
                session.networks = None  # its tasks changed: their networks may have
                now_held = session.dependencies.held()
                values = await self._values(now_held - held, held - now_held)
                await session.send({"type": "assignments", "full": False, "tasks": changed, "remove": removed,
                                    **values})
            if session.endpoints_sent is not None:  # else the full assignment, still to come, sends it
                await self._send_endpoints(session)
                await self._send_names(session)

    # ---- status -----------------------------------------------------------------------------------------

    async def flush_status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_FLUSH_INTERVAL)
            if self.active and self.pending_status:
                await self.flush_status()

    async def flush_status(self) -> None:
        async with self._flush_lock:  # one at a time: a caller that must see its reports written waits here
            await self._flush_status()

    async def _flush_status(self) -> None:
        pending, self.pending_status = self.pending_status, {}
        now = self.clock.now()
        batch = Batch()
        for index, (task_id, status) in enumerate(pending.items()):
            if index and index % MERGE_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # thousands of reports at once: let the sessions be read meanwhile
            task = self.cache.get(TASKS, task_id)
            if task is None:
                continue
            new = merge_status(task, status, now)
            if new is not None:
                batch.update(TASKS, new)
        if not batch.ops:
            return
        try:
            result = await self.applier.write(batch)
        except Exception:
            # Not written (the store unreachable, the leadership lost): keep the reports for the next round, or
            # for the next leader's dispatcher... which hears them again when the agents reconnect.
            for task_id, status in pending.items():
                self.pending_status.setdefault(task_id, status)
            raise
        self._status_revision = max(self._status_revision, result.revision)
        if result.failed_keys:
            # Stale versions: merge again next round against the fresh cache (newer reports win).
            for op in batch.ops:
                if op.key in result.failed_keys:
                    task_id = op.key.rsplit("/", 1)[-1]
                    self.pending_status.setdefault(task_id, pending[task_id])

    # ---- node health ------------------------------------------------------------------------------------

    async def node_health_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.active:
                await self.check_nodes()

    def grace(self, node_id: str) -> float:
        """How long the node may be silent: a few heartbeat periods, plus the loop lag it last reported."""
        return self.heartbeat_period() * GRACE_MULTIPLIER + min(self.node_lag.get(node_id, 0.0), MAX_LAG_ALLOWANCE)

    def _silence(self, node_id: str, now: float, waiting: int) -> float:
        """How long the node has been silent, as far as this leader can tell (0 or less: not silent)."""
        # A node just joined has to start first (a manager its etcd member and cache): more time.
        last = self.last_heartbeat.setdefault(node_id, now + JOIN_GRACE)
        if node_id not in self._reconnected:
            # Not back since this manager became the leader: silent only once the reconnection wave is over
            # (no session opened for a grace), not while this leader is still taking the others in, and not
            # before it could have taken in all that are still out (a thousand take a while).
            last = max(last, self._last_session_opened, self._activated + waiting * RECONNECT_ALLOWANCE)
        return now - last

    async def check_nodes(self) -> list[str]:
        """Mark down every ready node whose heartbeats stopped; returns their IDs."""
        wall = self.clock.now()
        waiting = len(self.cache.nodes()) - len(self._reconnected)
        candidates = [node_id for node_id, node in list(self.cache.nodes().items())
                      if node_state(node) != NodeState.DOWN and wall > node.get(RESTARTING_UNTIL, 0)
                      and self._silence(node_id, self._alive(), waiting) > self.grace(node_id)]
        expired = []
        for node_id in candidates:
            # Asked again right before each write: marking hundreds down takes a while, and heartbeats that
            # arrived meanwhile count.
            silence = self._silence(node_id, self._alive(), waiting)
            if silence <= self.grace(node_id):
                continue
            # Why, for whoever reads the log after a false Down: back since the election, and how long silent.
            log.info("node %s: silent for %.1fs (grace %.1fs), %s", node_id, silence, self.grace(node_id),
                     "back since this manager became the leader" if node_id in self._reconnected else
                     f"not back since this manager became the leader; last session opened "
                     f"{self._alive() - self._last_session_opened:.1f}s ago")
            if await self.set_node_down(node_id, "heartbeat failure"):
                self.metrics.heartbeat_misses.inc()
            expired.append(node_id)
        return expired

    async def set_node_down(self, node_id: str, message: str) -> bool:
        """Mark the node down in the store and end its session; whether this write did it."""
        node = self.cache.get(NODES, node_id)
        if node is None:
            return False
        new = dict(node)
        new["Status"] = {**(node.get("Status") or {}), "State": NodeState.DOWN.value, "Message": message}
        new[DOWN_SINCE] = self.clock.now()
        new["UpdatedAt"] = to_rfc3339(self.clock.now())
        result = await self.applier.write(Batch().update(NODES, new))
        if result.written:
            self.nodes_marked_down += 1
            log.warning("node %s is down: %s", node_id, message)
            # The next check must see it down, not mark (and log) it again from a cache a moment behind.
            await self.cache.caught_up(result.revision, "node health")
        session = self.sessions.pop(node_id, None)
        if session is not None:
            session.drop()
        return bool(result.written)

    async def disconnect(self, node_id: str, message: str) -> None:
        """End a node's session with a reason (e.g. it was removed from the swarm)."""
        session = self.sessions.pop(node_id, None)
        if session is not None:
            with contextlib.suppress(Exception):
                await session.send({"type": "rejected", "message": message})
                await session.ws.close()

    # ---- logs -------------------------------------------------------------------------------------------

    async def logs(self, tasks: list[Doc], tail: int, follow: bool) -> AsyncIterator[Doc]:
        """Log lines of the given tasks from the agents that run them, merged as they arrive."""
        by_node: dict[str, list[str]] = {}
        for task in tasks:
            if task.get("NodeID") in self.sessions:
                by_node.setdefault(task["NodeID"], []).append(task["ID"])
        queue: asyncio.Queue[Doc | None] = asyncio.Queue()
        opened: list[tuple[NodeSession, int]] = []
        for node_id, task_ids in by_node.items():
            session = self.sessions[node_id]
            req = next(self._log_ids)
            session.log_queues[req] = queue
            opened.append((session, req))
            await session.send({"type": "logs", "req": req, "tasks": task_ids, "tail": tail, "follow": follow})
        remaining = len(opened)
        try:
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                yield item
        finally:
            for session, req in opened:
                session.log_queues.pop(req, None)
                if follow:
                    with contextlib.suppress(Exception):
                        await session.send({"type": "logs_cancel", "req": req})




def _seconds(value: object) -> float:
    """A duration an agent reported; anything that is not a sane number counts as 0."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return seconds if 0.0 <= seconds < 1e6 else 0.0
