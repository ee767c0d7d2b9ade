"""Who may reach the store: managers, and nobody else.

etcd trusts one CA of its own, the store CA, on its client and peer ports alike. Only managers hold a
certificate from it, issued for the node's own key when it joins as a manager or is promoted; a worker's
certificate comes from the cluster CA and fails etcd's TLS handshake. A node that stops being a manager still
has its certificate file, so its serial numbers go on the store CA's revocation list, which every manager keeps
in a file that its etcd member reads on each new connection.

The store CA's key lives in the store (encrypted with the managers' key, see shoal.manager.keys), so any
manager can grant access; revoking happens on the leader, which demotes, and on the manager that retires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.certs import read_if_present, write_private
from shoal.errors import NoQuorum
from shoal.manager.ca import STORE_CA_COMMON_NAME, RootCA, revoked_serials, serial_number
from shoal.manager.store.base import PREFIX, Batch
from shoal.manager.store.etcd import EtcdStore
from shoal.types import Doc, Role

log = logging.getLogger(__name__)

STORE_CA_KEY = PREFIX + "store-ca"
STORE_CRL_KEY = PREFIX + "store-crl"
ISSUED_PREFIX = PREFIX + "store-certs/"
# Store certificates outlive node certificates: the node's key stays the same through renewals, and access ends
# by revocation, not by expiry (a renewal would have to restart the etcd member that presents it).
STORE_CERT_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


def create_store_ca(cluster_id: str) -> RootCA:
    return RootCA.create(cluster_id, common_name=STORE_CA_COMMON_NAME)


@dataclass(frozen=True)
class StoreCredentials:
    """What a manager needs to run an etcd member and talk to the store: the store CA's certificate, this
    node's certificate from it (for the node's key) and the current revocation list."""

    ca_pem: bytes
    cert_pem: bytes
    crl_pem: bytes

    def to_wire(self) -> Doc:
        return {"StoreCA": self.ca_pem.decode(), "StoreCertificate": self.cert_pem.decode(),
                "StoreCRL": self.crl_pem.decode()}

    @classmethod
    def from_wire(cls, answer: Doc) -> StoreCredentials | None:
        if not answer.get("StoreCertificate"):
            return None
        return cls(str(answer["StoreCA"]).encode(), str(answer["StoreCertificate"]).encode(),
                   str(answer["StoreCRL"]).encode())

    def write(self, ca: Path, cert: Path, crl: Path) -> None:
        write_private(ca, self.ca_pem)
        write_private(cert, self.cert_pem)
        write_private(crl, self.crl_pem)


def bootstrap(batch: Batch, store_ca: RootCA, node_id: str, csr_pem: bytes, cluster_id: str,
              addrs: list[str]) -> StoreCredentials:
    """The first manager's store credentials, with the writes that record them in a new swarm's first
    transaction (the store CA itself is written sealed, by Manager.bootstrap)."""
    cert = store_ca.sign_csr(csr_pem, node_id, Role.MANAGER.value, cluster_id, addrs,
                             expiry_seconds=STORE_CERT_VALIDITY_SECONDS)
    crl = store_ca.sign_crl([])
    batch.put_raw(STORE_CRL_KEY, crl)
    batch.put_raw(f"{ISSUED_PREFIX}{node_id}/{serial_number(cert)}", b"")
    return StoreCredentials(store_ca.cert_pem, cert, crl)


class StoreAccess:
    """Grants and revokes store certificates, and keeps this manager's copy of the revocation list current."""

    def __init__(self, store: EtcdStore, load_ca: Callable[[], Awaitable[RootCA]], crl_file: Path) -> None:
        self.store = store
        self._load_ca = load_ca
        self.crl_file = crl_file
        self._revoking = asyncio.Lock()

    async def grant(self, node_id: str, csr_pem: bytes, cluster_id: str, addrs: list[str]) -> StoreCredentials:
        """A store certificate for a node that is becoming a manager, its serial recorded for revocation."""
        ca = await self._load_ca()
        cert = ca.sign_csr(csr_pem, node_id, Role.MANAGER.value, cluster_id, addrs,
                           expiry_seconds=STORE_CERT_VALIDITY_SECONDS)
        await self.store.commit(Batch().put_raw(f"{ISSUED_PREFIX}{node_id}/{serial_number(cert)}", b""))
        crl = await self.store.get_raw(STORE_CRL_KEY)
        if crl is None:
            raise NoQuorum("the store's revocation list is missing from the store")
        return StoreCredentials(ca.cert_pem, cert, crl)

    async def revoke(self, node_id: str) -> None:
        """End the store access of a node that is no longer a manager: every certificate it was given."""
        async with self._revoking:
            issued = await self.store.list_raw(f"{ISSUED_PREFIX}{node_id}/")
            serials = {int(key.rsplit("/", 1)[1]) for key in issued}
            current = await self.store.get_raw(STORE_CRL_KEY)
            revoked = revoked_serials(current) if current else set()
            if serials <= revoked:
                return
            ca = await self._load_ca()
            await self.store.commit(Batch().put_raw(STORE_CRL_KEY, ca.sign_crl(revoked | serials)))
            log.info("revoked the store access of node %s (%d certificates)", node_id, len(serials - revoked))

    async def follow_revocations(self) -> None:
        """Keep the revocation list file that this manager's etcd member reads current (a supervised loop)."""
        async for crl in self.store.follow_raw(STORE_CRL_KEY):
            if crl is not None and crl != read_if_present(self.crl_file):
                await asyncio.to_thread(write_private, self.crl_file, crl)
                log.info("store revocation list updated: %d certificates revoked", len(revoked_serials(crl)))


