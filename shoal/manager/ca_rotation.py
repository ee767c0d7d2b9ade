"""Root CA rotation (`swarm ca --rotate`): the swarm moves to a new root without a moment of broken trust.

1. Start: a new root is made, and the old root cross-signs it. From then on the managers sign with the new
   root, and every certificate they issue carries the cross-signed copy, so a node that trusts only the old
   root still accepts it. Nodes are told to trust both roots.
2. Each node trusts both, and renews its certificate (on its own key) from the new root. The leader tells every
   node whose certificate an old root issued (its `Description.TLSInfo`, which the node reports).
3. Once every node that is not down runs on a certificate of the new root, the rotation ends: nodes trust the
   new root alone, and the join tokens change (they pin the root's digest).

Pure functions over the cluster and node documents; the dispatcher tells nodes, the leader finishes.
"""

from __future__ import annotations

import base64

from shoal.certs import load_certificate, public_key_der
from shoal.errors import InvalidArgument
from shoal.manager.ca import RootCA
from shoal.spec import CA_CHAIN, SIGNING_ISSUER, TRUST_BUNDLE
from shoal.types import Doc, NodeState, node_state

IN_PROGRESS = "RootRotationInProgress"


def issuer_fields(ca_cert_pem: bytes) -> dict[str, str]:
    """A CA as Docker's TLSInfo names an issuer: its subject and public key, DER in base64."""
    cert = load_certificate(ca_cert_pem)
    return {"CertIssuerSubject": base64.b64encode(cert.subject.public_bytes()).decode(),
            "CertIssuerPublicKey": base64.b64encode(public_key_der(cert)).decode()}


def initial_fields(ca: RootCA) -> Doc:
    """The cluster document's trust fields for a new swarm."""
    return {"TLSInfo": {"TrustRoot": ca.cert_pem.decode(), **issuer_fields(ca.cert_pem)}, IN_PROGRESS: False,
            TRUST_BUNDLE: ca.cert_pem.decode(), CA_CHAIN: "", SIGNING_ISSUER: issuer_fields(ca.cert_pem)}


def trust_bundle(cluster: Doc) -> str:
    return str(cluster.get(TRUST_BUNDLE) or (cluster.get("TLSInfo") or {}).get("TrustRoot") or "")


def ca_chain(cluster: Doc | None) -> bytes:
    return str((cluster or {}).get(CA_CHAIN) or "").encode()


def start(cluster: Doc, old: RootCA, new: RootCA) -> Doc:
    """The cluster document once a rotation from `old` to `new` has begun."""
    if cluster.get(IN_PROGRESS):
        raise InvalidArgument("a root CA rotation is already in progress: wait for it to finish "
                              "(\"shoal swarm ca\" shows the progress)")
    out = dict(cluster)
    out[IN_PROGRESS] = True
    out[TRUST_BUNDLE] = old.cert_pem.decode() + new.cert_pem.decode()
    out[CA_CHAIN] = old.cross_sign(new).decode()
    out[SIGNING_ISSUER] = issuer_fields(new.cert_pem)
    return out


def has_current_certificate(node: Doc, cluster: Doc) -> bool:
    """Whether the node's certificate (as its TLSInfo reports) was issued by the CA that signs now."""
    info = (node.get("Description") or {}).get("TLSInfo") or {}
    wanted = cluster.get(SIGNING_ISSUER) or {}
    return bool(wanted) and info.get("CertIssuerPublicKey") == wanted.get("CertIssuerPublicKey")


def needs_renewal(node: Doc | None, cluster: Doc | None) -> bool:
    return bool(node and cluster and cluster.get(IN_PROGRESS) and not has_current_certificate(node, cluster))


def progress(cluster: Doc, nodes: list[Doc]) -> tuple[int, int]:
    """(nodes on a certificate of the new root, nodes that count): a down node does not hold the rotation."""
    counted = [n for n in nodes if node_state(n) != NodeState.DOWN]
    return sum(1 for n in counted if has_current_certificate(n, cluster)), len(counted)


def finish(cluster: Doc, new: RootCA, tokens: dict[str, str]) -> Doc:
    """The cluster document once every node runs on the new root: trust it alone, new join tokens."""
    out = dict(cluster)
    out[IN_PROGRESS] = False
    out["TLSInfo"] = {"TrustRoot": new.cert_pem.decode(), **issuer_fields(new.cert_pem)}
    out[TRUST_BUNDLE] = new.cert_pem.decode()
    out[CA_CHAIN] = ""
    out["JoinTokens"] = tokens
    return out


def force_rotate(spec: Doc | None) -> int:
    return int(((spec or {}).get("CAConfig") or {}).get("ForceRotate") or 0)

