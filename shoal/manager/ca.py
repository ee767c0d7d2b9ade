"""The cluster root CA, kept by the managers, which issues every node's certificate.

As in swarmkit, a node certificate carries the node's identity (CN node ID, OU role, O cluster ID) and is
issued for a key the node made itself: a joining node sends only a CSR, and the CA ignores the subject
the CSR asks for and writes the identity the manager decided.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.certs import OU_BY_ROLE, load_certificate, make_key_and_csr
from shoal.errors import InvalidArgument
from shoal.tokens import ca_digest

CA_COMMON_NAME = "swarm-ca"
# The store's own CA: only managers hold certificates from it, so only they reach etcd (store_access.py).
STORE_CA_COMMON_NAME = "shoal-store-ca"
ROOT_CA_VALIDITY = timedelta(days=20 * 365)
NODE_CERT_VALIDITY_SECONDS = 90 * 24 * 3600
# Certificates start an hour in the past so a node whose clock lags the manager's still accepts them (a tenth of
# their life when that is shorter, so that renewing in their second half still means after they were issued).
BACKDATE = timedelta(hours=1)
MIN_RSA_KEY_BITS = 2048


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


@dataclass(frozen=True)
class RootCA:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def create(cls, cluster_id: str, now: datetime | None = None, common_name: str = CA_COMMON_NAME) -> RootCA:
        """A new self-signed ECDSA P-256 root CA for the cluster, valid 20 years."""
        issued_at = _now(now)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued_at - BACKDATE)
            .not_valid_after(issued_at + ROOT_CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> RootCA:
        """The CA from its stored certificate and key, checked to be a CA and to belong together."""
        root = cls(cert_pem=cert_pem, key_pem=key_pem)
        cert, key = root._certificate, root._private_key
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise InvalidArgument(
                "the root CA certificate is not a CA certificate (basicConstraints CA:false)"
            )
        if cert.public_key() != key.public_key():
            raise InvalidArgument("the root CA key does not match the root CA certificate")
        return root

    def digest(self) -> str:
        """The digest join tokens pin (tokens.ca_digest)."""
        return ca_digest(self.cert_pem)

    @cached_property
    def _certificate(self) -> x509.Certificate:
        return load_certificate(self.cert_pem)

    @cached_property
    def _private_key(self) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as error:
            raise InvalidArgument(
                f"the root CA key is not a valid unencrypted PEM private key: {error}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidArgument("the root CA key must be an ECDSA or RSA key")
        return key

    def sign_csr(
        self,
        csr_pem: bytes,
        node_id: str,
        role: str,
        cluster_id: str,
        ip_addrs: list[str],
        expiry_seconds: int = NODE_CERT_VALIDITY_SECONDS,
        now: datetime | None = None,
    ) -> bytes:
        """A node certificate (PEM) for the CSR's public key, naming the node as the manager decided.

        The certificate serves both as TLS server and client certificate (the node's port, and etcd member
        TLS), so it carries both extended key usages and the node's addresses as SubjectAltNames.
        """
        ou = OU_BY_ROLE.get(role)
        if ou is None:
            raise InvalidArgument(f"invalid node role {role!r}: expected 'manager' or 'worker'")
        if not node_id or not cluster_id:
            raise InvalidArgument("a node certificate needs a node ID and a cluster ID")
        if expiry_seconds <= 0:
            raise InvalidArgument(f"certificate expiry must be positive, got {expiry_seconds} seconds")
        addresses = _parse_addresses(ip_addrs)
        public_key = _csr_public_key(csr_pem)

        issued_at = _now(now)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            ]
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(node_id), x509.DNSName("localhost")]
        alt_names += [x509.IPAddress(address) for address in addresses]
        ca_cert = self._certificate
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued_at - min(BACKDATE, timedelta(seconds=expiry_seconds) / 10))
            .not_valid_after(issued_at + timedelta(seconds=expiry_seconds))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange needs it; harmless for ECDSA keys.
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._private_key.public_key()),
                critical=False,
            )
            .sign(self._private_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def cross_sign(self, other: RootCA) -> bytes:
        """`other`'s root certificate re-issued by this CA (PEM): during a root rotation, certificates of the new
        root carry it, so that nodes which trust only the old root still accept them."""
        theirs = other._certificate
        cert = (
            x509.CertificateBuilder()
            .subject_name(theirs.subject)
            .issuer_name(self._certificate.subject)
            .public_key(theirs.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(theirs.not_valid_before_utc)
            .not_valid_after(min(theirs.not_valid_after_utc, self._certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(theirs.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._private_key.public_key()), critical=False
            )
            .sign(self._private_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign_crl(self, revoked_serials: Iterable[int], now: datetime | None = None) -> bytes:
        """A certificate revocation list (PEM) naming `revoked_serials`, valid as long as the CA."""
        issued_at = _now(now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._certificate.subject)
            .last_update(issued_at - BACKDATE)
            .next_update(self._certificate.not_valid_after_utc)
        )
        for serial in sorted(set(revoked_serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(issued_at).build()
            )
        return builder.sign(self._private_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def issue_node_cert(
        self, node_id: str, role: str, cluster_id: str, ip_addrs: list[str]
    ) -> tuple[bytes, bytes]:
        """A new key pair and its node certificate, (cert_pem, key_pem): for the first manager at `swarm init`."""
        key_pem, csr_pem = make_key_and_csr()
        return self.sign_csr(csr_pem, node_id, role, cluster_id, ip_addrs), key_pem


def revoked_serials(crl_pem: bytes) -> set[int]:
    """The serial numbers a CRL (PEM) revokes."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as error:
        raise InvalidArgument(f"not a valid PEM certificate revocation list: {error}") from None
    return {revoked.serial_number for revoked in crl}


def serial_number(cert_pem: bytes) -> int:
    return load_certificate(cert_pem).serial_number


def _parse_addresses(ip_addrs: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in ip_addrs:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidArgument(f"invalid IP address {text!r} for a node certificate") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def _csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The CSR's public key, once the CSR proves it holds the matching private key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise InvalidArgument(f"invalid certificate signing request: not a PEM CSR ({error})") from None
    if not csr.is_signature_valid:
        raise InvalidArgument(
            "invalid certificate signing request: its signature does not match its public key"
        )
    public_key = csr.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= MIN_RSA_KEY_BITS:
        return public_key
    raise InvalidArgument(
        f"invalid certificate signing request: the key must be ECDSA or RSA of at least {MIN_RSA_KEY_BITS} bits"
    )
