"""Node-side certificate helpers and the TLS contexts every shoal connection uses.

A node certificate names its owner the way swarmkit does: CN is the node ID, OU is the role
("swarm-manager" or "swarm-worker"), O is the cluster ID. Whoever holds a certificate signed by the cluster
CA is that node, so servers read the identity from the peer certificate rather than from the request.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shoal.errors import InvalidArgument

StrPath = str | os.PathLike[str]

MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
ROLE_BY_OU = {MANAGER_OU: "manager", WORKER_OU: "worker"}
OU_BY_ROLE = {role: ou for ou, role in ROLE_BY_OU.items()}


def csr_for_key(key_pem: bytes) -> bytes:
    """A CSR for an existing key (a certificate renewal keeps the node's key)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidArgument("the node key must be an ECDSA or RSA key")
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def make_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for it; the CA decides the subject, so the CSR names none."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str  # "manager" | "worker"
    cluster_id: str


def _identity(node_id: str | None, ou: str | None, cluster_id: str | None) -> NodeIdentity:
    if not node_id or not cluster_id or ou is None:
        raise InvalidArgument(
            "the certificate is not a shoal node certificate: its subject needs CN (node ID), "
            "OU (swarm-manager or swarm-worker) and O (cluster ID)"
        )
    role = ROLE_BY_OU.get(ou)
    if role is None:
        raise InvalidArgument(
            f"the certificate's OU {ou!r} is not a node role: expected {MANAGER_OU!r} or {WORKER_OU!r}"
        )
    return NodeIdentity(node_id=node_id, role=role, cluster_id=cluster_id)


def load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise InvalidArgument(f"not a valid PEM certificate: {error}") from None


def identity_from_cert(cert_pem: bytes) -> NodeIdentity:
    """Who a node certificate (PEM) belongs to."""
    subject = load_certificate(cert_pem).subject

    def first(oid: x509.ObjectIdentifier) -> str | None:
        attributes = subject.get_attributes_for_oid(oid)
        return str(attributes[0].value) if attributes else None

    return _identity(
        first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATIONAL_UNIT_NAME), first(NameOID.ORGANIZATION_NAME)
    )


def identity_from_peercert(peercert: Mapping[str, Any] | None) -> NodeIdentity:
    """Who the peer of a TLS connection is, from `ssl.SSLSocket.getpeercert()` (aiohttp: extra info "peercert").

    The dict is only filled in for a certificate the context verified, so a non-empty one is from the cluster CA.
    """
    if not peercert:
        raise InvalidArgument("the connection presented no verified client certificate")
    fields: dict[str, str] = {}
    # "subject" is a tuple of relative distinguished names, each a tuple of (name, value) pairs.
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            fields.setdefault(name, value)
    return _identity(
        fields.get("commonName"), fields.get("organizationalUnitName"), fields.get("organizationName")
    )


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle (a chain, or the roots a node trusts), each as PEM."""
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" for part in (chunk + marker for chunk in bundle.split(marker)[:-1])
            if b"-----BEGIN CERTIFICATE-----" in part]


def issuer_of(chain_pem: bytes, trusted_pem: bytes) -> x509.Certificate | None:
    """The certificate that signed the first one of `chain_pem`, among the rest of the chain and the trusted
    roots (several roots share a name during a root rotation, so the signature decides)."""
    certs = split_pem(chain_pem)
    if not certs:
        return None
    leaf = load_certificate(certs[0])
    for candidate_pem in [*certs[1:], *split_pem(trusted_pem)]:
        candidate = load_certificate(candidate_pem)
        try:
            leaf.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None


def public_key_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def tls_info(chain_pem: bytes, trusted_pem: bytes) -> dict[str, str]:
    """Docker's node `Description.TLSInfo`: the root the node trusts and who issued its certificate (the
    issuer's subject and public key, DER in base64), which `swarm ca --rotate` watches change."""
    issuer = issuer_of(chain_pem, trusted_pem)
    roots = split_pem(trusted_pem)
    if issuer is None:
        return {"TrustRoot": (roots[-1] if roots else b"").decode(), "CertIssuerSubject": "",
                "CertIssuerPublicKey": ""}
    return {"TrustRoot": (roots[-1] if roots else b"").decode(),
            "CertIssuerSubject": base64.b64encode(issuer.subject.public_bytes()).decode(),
            "CertIssuerPublicKey": base64.b64encode(public_key_der(issuer)).decode()}


def cert_validity(cert_pem: bytes) -> tuple[datetime, datetime]:
    """When the certificate starts and stops being valid (timezone-aware UTC)."""
    cert = load_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def renewal_time(not_before: datetime, not_after: datetime, draw: float) -> datetime:
    """When to renew a certificate: at a random point (`draw` in [0, 1)) between 50 % and 80 % of its life, as
    swarmkit does, so that nodes whose certificates were issued together do not all renew at once."""
    return not_before + (not_after - not_before) * (0.5 + 0.3 * draw)


def check_issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> None:
    """Raise InvalidArgument unless `cert_pem` was signed by the CA `ca_cert_pem` (e.g. a cert a manager sent back)."""
    cert, ca_cert = load_certificate(cert_pem), load_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise InvalidArgument(
            "the certificate was not issued by the cluster CA: its signature does not verify"
        ) from None
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"the certificate was not issued by the cluster CA: {error}") from None


def server_ssl_context(ca_pem_path: StrPath, cert_path: StrPath, key_path: StrPath) -> ssl.SSLContext:
    """TLS server context for a node's port.

    Client certificates are optional but, when presented, must chain to the cluster CA: the join endpoint
    serves nodes that have no certificate yet, and the handlers of the session and API check the peer.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cafile=ca_pem_path)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class ManagerPeerSSLObject(ssl.SSLObject):
    """A TLS connection that fails its handshake unless the server presented a manager certificate.

    Every certificate of the cluster CA passes the CA check, a worker's too; a worker posing as a manager (to
    agents, or to a node that joins) is refused before a byte of the request is sent.
    """

    def do_handshake(self) -> None:
        super().do_handshake()
        try:
            role = identity_from_peercert(self.getpeercert()).role
        except InvalidArgument as error:
            raise ssl.SSLCertVerificationError(f"the server is not a swarm manager: {error.message}") from None
        if role != "manager":
            raise ssl.SSLCertVerificationError(
                f"the server presented a {role} certificate where a manager's is required"
            )


def client_ssl_context(
    ca_pem_path: StrPath, cert_path: StrPath | None = None, key_path: StrPath | None = None,
    require_manager: bool = True,
) -> ssl.SSLContext:
    """TLS client context that trusts only the cluster CA, presenting the node certificate when given.

    Host names are not checked: the CA is private to the cluster and signs only its nodes. The server must
    hold a manager certificate (every shoal client talks to a manager), unless `require_manager` is False.
    """
    if (cert_path is None) != (key_path is None):
        raise InvalidArgument("a client certificate needs both the certificate and the key file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_pem_path)
    if cert_path is not None and key_path is not None:
        context.load_cert_chain(cert_path, key_path)
    if require_manager:
        context.sslobject_class = ManagerPeerSSLObject
    return context


def insecure_probe_context() -> ssl.SSLContext:
    """A client context that verifies nothing.

    Only for fetching the CA certificate at join time; the caller must check it against the token's digest
    (tokens.check_ca) before trusting anything received over this connection.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def read_if_present(path: Path) -> bytes | None:
    """A file's content, or None when it cannot be read (not there yet)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys, certificates), creating parent directories.

    The data goes to a temporary file in the same directory first and is renamed into place, so a reader
    (or a crash) never sees a half-written key when a certificate is renewed.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:  # mkstemp creates the file with mode 0600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
