"""The manager's side of `swarm join`: check the token, sign the node's certificate, record the node, and for
a manager add its etcd member."""

from __future__ import annotations

import ipaddress
import logging

from shoal.clock import Clock
from shoal.errors import InvalidArgument, JoinRefused, ShoalError
from shoal.ids import new_id
from shoal.manager import ca_rotation
from shoal.manager.controlapi.swarm import node_cert_expiry_seconds
from shoal.manager.etcd_member import peer_url
from shoal.manager.manager import Manager
from shoal.manager.store.base import Batch
from shoal.timefmt import to_rfc3339
from shoal.tokens import parse_token, secrets_match
from shoal.types import NODES, Doc, Role

log = logging.getLogger(__name__)


def role_for_token(cluster: Doc, token_text: str) -> Role:
    """Which role a token grants, or JoinRefused when it is not one of the swarm's current tokens."""
    token = parse_token(token_text)
    tokens = cluster.get("JoinTokens") or {}
    if secrets_match(token_text.strip(), tokens.get("Manager", "")):
        return Role.MANAGER
    if secrets_match(token_text.strip(), tokens.get("Worker", "")):
        return Role.WORKER
    del token
    raise JoinRefused(
        "the join token is not valid for this swarm (it may have been rotated): print the current one with "
        "\"shoal swarm join-token worker\" (or manager) on a manager"
    )


def new_node(node_id: str, role: Role, hostname: str, addr: str, manager_port: int, now: float) -> Doc:
    timestamp = to_rfc3339(now)
    node: Doc = {
        "ID": node_id,
        "CreatedAt": timestamp,
        "UpdatedAt": timestamp,
        "Spec": {"Labels": {}, "Role": role.value, "Availability": "active"},
        "Description": {"Hostname": hostname},
        "Status": {"State": "unknown", "Addr": addr, "Message": ""},
    }
    if role == Role.MANAGER:
        node["ManagerAddr"] = f"{addr}:{manager_port}"
    return node


async def handle_join(manager: Manager, clock: Clock, body: Doc, peer_ip: str, manager_port: int) -> Doc:
    cluster = manager.cache.cluster()
    if cluster is None:
        raise JoinRefused("this manager has no swarm to join")
    role = role_for_token(cluster, str(body.get("Token") or ""))
    csr = str(body.get("CSR") or "").encode()
    hostname = str(body.get("Hostname") or "") or peer_ip
    addr = str(body.get("AdvertiseAddr") or "") or peer_ip
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidArgument(f"advertise address {addr!r} is not an IP address") from None
    node_id = new_id()
    ca = await manager.root_ca()
    cert = ca.sign_csr(csr, node_id, role.value, cluster["ID"], [addr, "127.0.0.1"],
                       expiry_seconds=node_cert_expiry_seconds(cluster)) + ca_rotation.ca_chain(cluster)
    answer: Doc = {"NodeID": node_id, "ClusterID": cluster["ID"], "Role": role.value,
                   "Certificate": cert.decode(), "Managers": manager.manager_addrs()}
    if role == Role.MANAGER:
        answer.update(await manager.manager_credentials(node_id, csr, cluster["ID"], addr))
    port = int(body.get("ListenPort") or manager_port)
    node = new_node(node_id, role, hostname, addr, port, clock.now())
    rev = await manager.store.commit(Batch().create(NODES, node)) if manager.store else 0
    await manager.cache.wait_for_revision(rev)
    if role == Role.MANAGER and manager.external_etcd is None:
        # The new member joins the etcd cluster before it starts, as etcd requires. Until it starts the
        # store has no quorum, so everything else about the node is written first.
        try:
            answer["EtcdInitialCluster"] = await manager.add_member(peer_url(addr), node_id)
        except ShoalError:
            await manager.store.commit(Batch().delete(NODES, node, check_version=False)) if manager.store else None
            raise
    log.info("node %s (%s) joined as %s", node_id, hostname, role.value)
    return answer
