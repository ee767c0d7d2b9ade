"""The control API's operations: read from the cache, validate with the pure controlapi functions, write the
store with the version the client read. Any manager serves these; none needs to be the leader.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from shoal.clock import Clock
from shoal.errors import Conflict, InvalidArgument, NotFound, SequenceConflict
from shoal.ids import generated_name, new_id
from shoal.manager import ca_rotation
from shoal.manager.autolock import (
    UNLOCK_KEY_ID,
    UNLOCK_KEY_STORE,
    autolock_on,
    new_unlock_key,
    read_unlock_key,
    set_unlock_key,
)
from shoal.manager.ca import RootCA
from shoal.manager.controlapi import filters as flt
from shoal.manager.controlapi import network as network_api
from shoal.manager.controlapi import secret as secret_api
from shoal.manager.controlapi import without_private_fields
from shoal.manager.controlapi.node import node_view, validate_node_spec_update
from shoal.manager.controlapi.resolve import node_names, resolve, service_name, task_name_of
from shoal.manager.controlapi.service import (
    counted_status,
    ingress_ports_in_use,
    new_service,
    service_status,
    service_view,
    updated_service,
    validate_service_spec,
)
from shoal.manager.controlapi.swarm import (
    min_cert_expiry_from_environment,
    swarm_view,
    validate_swarm_spec_update,
)
from shoal.manager.controlapi.task import task_view
from shoal.manager.dry_run import simulate
from shoal.manager.keys import encode_ca, open_secret, seal_secret
from shoal.manager.manager import Manager
from shoal.manager.orchestrator.rebalance import (
    marked_for_move,
    rebalance_moves,
    rebalancing,
    refuse_rebalance,
)
from shoal.manager.orchestrator.taskreaper import history_limit
from shoal.manager.scheduler.pipeline import NodeLoad
from shoal.manager.store.base import CA_KEY, Batch
from shoal.manager.store.etcd import EtcdStore
from shoal.spec import RESTARTING_UNTIL, SEALED_DATA, is_job
from shoal.timefmt import to_rfc3339
from shoal.tokens import make_token
from shoal.types import (
    CLUSTERS,
    CONFIGS,
    NETWORKS,
    NODES,
    SECRETS,
    SERVICES,
    TASKS,
    Doc,
    NodeState,
    Role,
    TaskState,
    desired_state,
    is_global,
    node_hostname,
    node_state,
    task_node,
    task_slot,
    task_state,
    version_of,
)

log = logging.getLogger(__name__)

VIEWS_PER_TURN = 2000  # tasks shaped for a list between two turns of the loop


class ControlAPI:
    def __init__(self, manager: Manager, clock: Clock) -> None:
        self.manager = manager
        self.cache = manager.cache
        self.clock = clock
        self._node_views: dict[str, tuple[Doc, str | None, Doc]] = {}  # node ID -> (document, leader, view)

    @property
    def store(self) -> EtcdStore:
        assert self.manager.store is not None
        return self.manager.store

    async def _commit(self, batch: Batch) -> int:
        rev = await self.store.commit(batch)
        # Read-your-writes: the next GET (served from the cache) sees this write.
        await self.cache.wait_for_revision(rev)
        return rev

    # ---- swarm ------------------------------------------------------------------------------------------

    def cluster(self) -> Doc:
        cluster = self.cache.cluster()
        if cluster is None:
            raise NotFound("swarm not found")
        return cluster

    def get_swarm(self) -> Doc:
        return swarm_view(self.cluster())

    async def update_swarm(self, version: int, spec: object, rotate_worker: bool, rotate_manager: bool,
                           rotate_unlock_key: bool = False) -> None:
        cluster = self.cluster()
        if version != version_of(cluster):
            raise SequenceConflict()
        new = dict(cluster)
        new["Spec"] = validate_swarm_spec_update(spec, min_cert_expiry_from_environment())
        batch = Batch()
        if ca_rotation.force_rotate(new["Spec"]) != ca_rotation.force_rotate(cluster.get("Spec")):
            old_ca = await self.manager.root_ca()
            new_ca = RootCA.create(cluster["ID"])
            new = ca_rotation.start(new, old_ca, new_ca)
            batch.put_raw(CA_KEY, encode_ca(new_ca, self.manager.manager_key(), CA_KEY))
        if autolock_on(new) and (rotate_unlock_key or not cluster.get(UNLOCK_KEY_ID)):
            set_unlock_key(batch, new, new_unlock_key(), self.manager.manager_key())
        elif not autolock_on(new) and cluster.get(UNLOCK_KEY_ID):
            set_unlock_key(batch, new, None, self.manager.manager_key())
        tokens = dict(cluster["JoinTokens"])
        if rotate_worker or rotate_manager:
            # A token pins the root nodes trust first (during a root rotation, still the old one).
            trust_root = str((cluster.get("TLSInfo") or {}).get("TrustRoot") or "").encode()
            if rotate_worker:
                tokens["Worker"] = make_token(trust_root)
            if rotate_manager:
                tokens["Manager"] = make_token(trust_root)
        new["JoinTokens"] = tokens
        new["UpdatedAt"] = to_rfc3339(self.clock.now())
        await self._commit(batch.update(CLUSTERS, new))

    async def unlock_key(self) -> str:
        """The swarm's unlock key (`swarm unlock-key`), for a manager's user."""
        key = read_unlock_key(await self.store.get_raw(UNLOCK_KEY_STORE), self.manager.manager_key())
        if not autolock_on(self.cluster()) or key is None:
            raise NotFound("no unlock key is set")
        return key

    # ---- nodes ------------------------------------------------------------------------------------------

    def _node_view(self, node: Doc) -> Doc:
        """The node as the API shows it, made once per node document and leader (`node ls` of a thousand
        nodes would otherwise copy every document on each call)."""
        leader = self.manager.leader_id
        cached = self._node_views.get(node["ID"])
        if cached is not None and cached[0] is node and cached[1] == leader:
            return cached[2]
        view = node_view(node, leader, node_state(node) == NodeState.READY)
        self._node_views[node["ID"]] = (node, leader, view)
        if len(self._node_views) > 2 * len(self.cache.nodes()) + 16:  # removed nodes: forget their views
            self._node_views = {k: v for k, v in self._node_views.items() if self.cache.get(NODES, k) is v[0]}
        return view

    def find_node(self, ref: str) -> Doc:
        return resolve(list(self.cache.nodes().values()), ref, "node", node_names)

    def list_nodes(self, raw_filters: str | None) -> list[Doc]:
        filters = flt.parse_filters(raw_filters)
        return [self._node_view(n) for n in self.cache.nodes().values()
                if flt.match_node(n, filters, self.manager.node_id)]

    def get_node(self, ref: str) -> Doc:
        return self._node_view(self.find_node(ref))

    async def update_node(self, ref: str, version: int, spec: object) -> None:
        node = self.find_node(ref)
        if version != version_of(node):
            raise SequenceConflict()
        new_spec = validate_node_spec_update(node, spec)
        old_role = node["Spec"].get("Role")
        if old_role == Role.MANAGER.value and new_spec["Role"] == Role.WORKER.value:
            managers = [n for n in self.cache.nodes().values() if n["Spec"].get("Role") == Role.MANAGER.value]
            if len(managers) <= 1:
                raise InvalidArgument(
                    f"rpc error: code = FailedPrecondition desc = attempting to demote the last manager of the swarm "
                    f"(node {node['ID']}): promote another node first")
        new = dict(node)
        new["Spec"] = new_spec
        new["UpdatedAt"] = to_rfc3339(self.clock.now())
        await self._commit(Batch().update(NODES, new))

    async def remove_node(self, ref: str, force: bool) -> None:
        node = self.find_node(ref)
        if node["ID"] == self.manager.node_id:
            raise InvalidArgument(
                f"rpc error: code = FailedPrecondition desc = node {node['ID']} is the manager you are talking to: "
                "use \"shoal swarm leave --force\" on it instead")
        if node["Spec"].get("Role") == Role.MANAGER.value:
            raise InvalidArgument(
                f"rpc error: code = FailedPrecondition desc = node {node['ID']} is a cluster manager and is a member "
                "of the raft cluster. It must be demoted to worker before removal")
        if node_state(node) != NodeState.DOWN and not force:
            raise InvalidArgument(
                f"rpc error: code = FailedPrecondition desc = node {node['ID']} is not down and can't be removed: "
                "stop it first or use --force")
        batch = Batch().delete(NODES, node)
        await self._commit(batch)
        if self.manager.dispatcher is not None:
            await self.manager.dispatcher.disconnect(node["ID"], "node removed from the swarm")

    async def note_restarting(self, node_id: str, seconds: float) -> None:
        """A manager's daemon is restarting: whichever manager leads next waits `seconds` before declaring the
        node down (its tasks keep running meanwhile)."""
        node = self.cache.get(NODES, node_id)
        if node is None:
            return
        new = dict(node)
        new[RESTARTING_UNTIL] = self.clock.now() + seconds
        new["Status"] = {**(node.get("Status") or {}), "Message": "daemon restarting"}
        await self.store.commit(Batch().update(NODES, new))

    async def retire_manager(self, node_id: str) -> None:
        """Record a manager that left (or was lost for good) as a worker, so nobody counts on it as one."""
        for _ in range(5):
            node = self.cache.get(NODES, node_id)
            if node is None or node["Spec"].get("Role") != Role.MANAGER.value:
                return
            new = dict(node)
            new["Spec"] = {**node["Spec"], "Role": Role.WORKER.value}
            new.pop("ManagerAddr", None)
            new["UpdatedAt"] = to_rfc3339(self.clock.now())
            try:
                await self._commit(Batch().update(NODES, new))
                return
            except SequenceConflict:
                continue

    # ---- services ---------------------------------------------------------------------------------------

    def find_service(self, ref: str) -> Doc:
        return resolve(list(self.cache.services().values()), ref, "service", service_name)

    def _status(self, service: Doc) -> Doc:
        # A global service's tasks are one per node: few. A job's status counts its current run's tasks.
        if is_global(service) or is_job(service):
            return service_status(service, self.cache.tasks_of_service(service["ID"]), self.cache.nodes())
        return counted_status(service, self.cache.running_by_node(service["ID"]), self.cache.nodes())

    def list_services(self, raw_filters: str | None, status: bool) -> list[Doc]:
        filters = flt.parse_filters(raw_filters)
        return [
            service_view(s, status=self._status(s) if status else None)
            for s in self.cache.services().values() if flt.match_service(s, filters)
        ]

    def get_service(self, ref: str, insert_defaults: bool) -> Doc:
        return service_view(self.find_service(ref), with_defaults=insert_defaults)

    def _with_references(self, spec: Doc) -> Doc:
        """Secrets, configs and networks named by the spec, resolved to their IDs (unknown ones refused)."""
        spec = secret_api.resolve_references(spec, self.cache.docs[SECRETS], self.cache.docs[CONFIGS])
        return network_api.resolve_attachments(spec, self.cache.docs[NETWORKS])

    async def create_service(self, body: object, dry_run: bool = False) -> str | Doc:
        """The new service's ID; with `dry_run`, what creating it would do (nothing is written)."""
        spec = self._with_references(validate_service_spec(body))
        if not spec.get("Name"):
            spec["Name"] = generated_name(set(self.cache.service_by_name))
        if spec["Name"] in self.cache.service_by_name:
            raise Conflict(f"rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
                           f"service {spec['Name']} already exists")
        service_id = new_id()
        used = ingress_ports_in_use(self.cache.services().values())
        service = new_service(spec, service_id, self.clock.now(), used)
        if dry_run:
            return await self._dry_run(service)
        await self._commit(Batch().create(SERVICES, service, unique_name=spec["Name"]))
        return service_id

    async def update_service(self, ref: str, version: int, body: object, rollback: bool,
                             dry_run: bool = False) -> Doc | None:
        """Update the service; with `dry_run`, say what the update would do instead (nothing is written)."""
        service = self.find_service(ref)
        if version != version_of(service):
            raise SequenceConflict()
        spec = self._with_references(validate_service_spec(body)) if not rollback else service["Spec"]
        used = ingress_ports_in_use(self.cache.services().values(), except_service_id=service["ID"])
        new = updated_service(service, spec, self.clock.now(), used, rollback=rollback)
        if dry_run:
            return await self._dry_run(new)
        await self._commit(Batch().update(SERVICES, new))
        return None

    async def rebalance_service(self, ref: str, version: int) -> Doc:
        """Mark the tasks that keep the service from an even spread for the updater to move; say which."""
        service = self.find_service(ref)
        if version != version_of(service):
            raise SequenceConflict()
        refuse_rebalance(service)
        nodes = self.cache.nodes()
        moves = rebalance_moves(service, self.cache.tasks_of_service(service["ID"]), nodes)
        if moves:
            batch = Batch().update(SERVICES, rebalancing(service, self.clock.now()))
            for task in moves:
                batch.update(TASKS, marked_for_move(task))
            await self._commit(batch)
        return {"ID": service["ID"], "Moves": [
            {"TaskID": t["ID"], "Slot": task_slot(t), "NodeID": task_node(t),
             "Node": node_hostname(nodes.get(task_node(t)) or {})} for t in moves]}

    async def _dry_run(self, service: Doc) -> Doc:
        """The planners' batches for `service` over a snapshot of the cluster, worked out off the event loop."""
        own = list(self.cache.tasks_of_service(service["ID"]))
        every = list(self.cache.tasks().values())
        nodes = dict(self.cache.nodes())
        limit = history_limit(self.cache.cluster())

        def work() -> Doc:
            placed = NodeLoad()
            for task in every:
                placed.add(task)
            run = simulate(service, own, nodes, placed, self.clock.now(), limit)
            view = run.view()
            for batch in view["Batches"]:
                for entry in batch["Tasks"] + batch["Stops"]:
                    entry["Node"] = node_hostname(nodes.get(entry["NodeID"]) or {})
                    if entry.get("ReplacesNodeID"):
                        entry["ReplacesNode"] = node_hostname(nodes.get(entry["ReplacesNodeID"]) or {})
            return {"ID": service["ID"], "Name": service["Spec"]["Name"], **view}

        return await asyncio.to_thread(work)

    async def remove_service(self, ref: str) -> None:
        service = self.find_service(ref)
        await self._commit(Batch().delete(SERVICES, service, unique_name=service["Spec"]["Name"],
                                          check_version=False))

    # ---- secrets and configs ----------------------------------------------------------------------------

    def find_object(self, kind: str, ref: str) -> Doc:
        return resolve(list(self.cache.docs[kind].values()), ref, secret_api.what(kind),
                       lambda obj: str(obj["Spec"]["Name"]))

    def list_objects(self, kind: str, raw_filters: str | None) -> list[Doc]:
        filters = flt.parse_filters(raw_filters)
        return [without_private_fields(obj) for obj in self.cache.docs[kind].values()
                if secret_api.matches(obj, filters)]

    def get_object(self, kind: str, ref: str) -> Doc:
        return without_private_fields(self.find_object(kind, ref))

    async def create_object(self, kind: str, body: object) -> str:
        """`secret create` / `config create`: a secret's data is sealed with the data key before it is stored."""
        spec, data = secret_api.validate_spec(body, kind)
        noun, name = secret_api.what(kind), spec["Name"]
        if any(obj["Spec"]["Name"] == name for obj in self.cache.docs[kind].values()):
            raise Conflict(f"rpc error: code = AlreadyExists desc = {noun} {name} already exists")
        obj_id = new_id()
        if kind == SECRETS:
            stored = {SEALED_DATA: seal_secret(await self.manager.data_key(), obj_id, data)}
        else:
            spec["Data"] = base64.b64encode(data).decode()
            stored = {}
        doc = secret_api.new_object(spec, obj_id, self.clock.now(), stored)
        await self._commit(Batch().create(kind, doc, unique_name=name))
        return obj_id

    async def update_object(self, kind: str, ref: str, version: int, body: object) -> None:
        current = self.find_object(kind, ref)
        if version != version_of(current):
            raise SequenceConflict()
        current_data = None
        if kind == SECRETS and isinstance(body, dict) and body.get("Data"):
            current_data = open_secret(await self.manager.data_key(), str(current["ID"]),
                                       str(current.get(SEALED_DATA) or ""))
        updated = secret_api.updated_object(current, body, kind, self.clock.now(), current_data)
        await self._commit(Batch().update(kind, updated))

    async def remove_object(self, kind: str, ref: str) -> None:
        """Refused while a service uses it, naming the services (Docker's message)."""
        obj = self.find_object(kind, ref)
        using = secret_api.users(str(obj["ID"]), kind, list(self.cache.services().values()))
        if using:
            raise secret_api.in_use_error(str(obj["Spec"]["Name"]), kind, using)
        await self._commit(Batch().delete(kind, obj, unique_name=str(obj["Spec"]["Name"]), check_version=False))

    # ---- networks ---------------------------------------------------------------------------------------

    def find_network(self, ref: str) -> Doc:
        return resolve(list(self.cache.docs[NETWORKS].values()), ref, "network",
                       lambda network: str(network["Spec"]["Name"]))

    def list_networks(self, raw_filters: str | None) -> list[Doc]:
        filters = flt.parse_filters(raw_filters)
        return [network_api.view(n) for n in self.cache.docs[NETWORKS].values() if network_api.matches(n, filters)]

    def get_network(self, ref: str) -> Doc:
        return network_api.view(self.find_network(ref))

    async def create_network(self, body: object) -> str:
        existing = list(self.cache.docs[NETWORKS].values())
        spec = network_api.validate_create(body, existing)
        if any(n["Spec"]["Name"] == spec["Name"] for n in existing):
            raise Conflict(f"network with name {spec['Name']} already exists")
        network = network_api.new_network(spec, new_id(), self.clock.now(), existing)
        await self._commit(Batch().create(NETWORKS, network, unique_name=spec["Name"]))
        return str(network["ID"])

    async def remove_network(self, ref: str) -> None:
        """Refused while a service is attached to it (the ingress network: while a service publishes a port
        through the routing mesh)."""
        network = self.find_network(ref)
        services = self.cache.services().values()
        if network["Spec"]["Ingress"]:
            using = sorted(str(s["Spec"]["Name"]) for s in services if ingress_ports_in_use([s]))
        else:
            using = network_api.users(str(network["ID"]), services)
        if using:
            raise network_api.in_use_error(str(network["Spec"]["Name"]), using)
        await self._commit(Batch().delete(NETWORKS, network, unique_name=str(network["Spec"]["Name"]),
                                          check_version=False))

    # ---- tasks ------------------------------------------------------------------------------------------

    async def list_tasks(self, raw_filters: str | None) -> list[Doc]:
        """The tasks the filters match, shaped for the API; a few thousand at a time, so listing a hundred
        thousand does not hold the loop (and the sessions it serves) for seconds."""
        filters = flt.parse_filters(raw_filters)
        candidates = self._task_candidates(filters)
        services = self.cache.services()
        nodes = self.cache.nodes()
        found: list[Doc] = []
        for start in range(0, len(candidates), VIEWS_PER_TURN):
            if start:
                await asyncio.sleep(0)
            found += [task_view(t) for t in candidates[start:start + VIEWS_PER_TURN]
                      if flt.match_task(t, filters, services, nodes, self.manager.node_id)]
        return found

    def _task_candidates(self, filters: flt.Filters) -> list[Doc]:
        """The tasks worth matching: those of the services or nodes asked for (from the cache's indexes), else
        all."""
        services = self.cache.services()
        wanted_services = filters.get("service")
        if wanted_services and all(s in services for s in wanted_services):
            return [t for s in wanted_services for t in self.cache.tasks_of_service(s)]
        if filters.get("node"):
            on_nodes = flt.nodes_with_tasks_matching(filters["node"], list(self.cache.tasks_by_node),
                                                     self.cache.nodes(), self.manager.node_id)
            return [t for node_id in on_nodes for t in self.cache.tasks_on_node(node_id)]
        return list(self.cache.tasks().values())

    def find_task(self, ref: str) -> Doc:
        return resolve(list(self.cache.tasks().values()), ref, "task", task_name_of)

    def get_task(self, ref: str) -> Doc:
        return task_view(self.find_task(ref))

    def tasks_for_logs(self, ref: str) -> list[Doc]:
        """A service's tasks (oldest first), or the one task `ref` names."""
        try:
            service = self.find_service(ref)
        except NotFound:
            return [self.find_task(ref)]
        tasks = self.cache.tasks_of_service(service["ID"])
        tasks = [t for t in tasks if task_state(t) >= TaskState.ASSIGNED or desired_state(t) <= TaskState.RUNNING]
        return sorted(tasks, key=lambda t: (t.get("CreatedAt", ""), t["ID"]))
