"""The cluster root CA: its own certificate, and the node certificates it issues from CSRs."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.certs import NodeIdentity, check_issued_by, identity_from_cert, make_key_and_csr
from shoal.errors import InvalidArgument
from shoal.manager.ca import STORE_CA_COMMON_NAME, RootCA, revoked_serials, serial_number
from shoal.tokens import ca_digest

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
CLUSTER = "c1uster0000000000000000ab"
NODE = "n0de00000000000000000000a"


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create(CLUSTER, now=NOW)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _name_value(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    (attribute,) = name.get_attributes_for_oid(oid)
    return str(attribute.value)


def test_root_ca_is_a_self_signed_p256_ca_for_the_cluster(ca: RootCA) -> None:
    cert = _cert(ca.cert_pem)
    assert _name_value(cert.subject, NameOID.COMMON_NAME) == "swarm-ca"
    assert _name_value(cert.subject, NameOID.ORGANIZATION_NAME) == CLUSTER
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed: raises if the signature does not verify
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_root_ca_is_valid_twenty_years(ca: RootCA) -> None:
    cert = _cert(ca.cert_pem)
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc - NOW == timedelta(days=20 * 365)


def test_root_ca_repr_hides_the_key(ca: RootCA) -> None:
    assert b"PRIVATE KEY" in ca.key_pem
    assert "PRIVATE KEY" not in repr(ca)


def test_digest_is_the_token_digest(ca: RootCA) -> None:
    assert ca.digest() == ca_digest(ca.cert_pem)


def test_load_round_trip_signs_like_the_original(ca: RootCA) -> None:
    loaded = RootCA.load(ca.cert_pem, ca.key_pem)
    cert_pem, _ = loaded.issue_node_cert(NODE, "worker", CLUSTER, [])
    _cert(cert_pem).verify_directly_issued_by(_cert(ca.cert_pem))


def test_load_refuses_a_key_of_another_ca(ca: RootCA) -> None:
    other = RootCA.create(CLUSTER, now=NOW)
    with pytest.raises(InvalidArgument, match="does not match"):
        RootCA.load(ca.cert_pem, other.key_pem)


def test_load_refuses_a_node_certificate_as_ca(ca: RootCA) -> None:
    cert_pem, key_pem = ca.issue_node_cert(NODE, "manager", CLUSTER, [])
    with pytest.raises(InvalidArgument, match="not a CA"):
        RootCA.load(cert_pem, key_pem)


def test_load_refuses_garbage() -> None:
    with pytest.raises(InvalidArgument):
        RootCA.load(b"garbage", b"garbage")


def test_signed_node_cert_names_the_node_and_is_issued_by_the_ca(ca: RootCA) -> None:
    key_pem, csr_pem = make_key_and_csr()
    cert_pem = ca.sign_csr(csr_pem, NODE, "manager", CLUSTER, ["10.0.0.5", "::1"], now=NOW)

    assert identity_from_cert(cert_pem) == NodeIdentity(node_id=NODE, role="manager", cluster_id=CLUSTER)
    cert = _cert(cert_pem)
    assert _name_value(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == "swarm-manager"
    cert.verify_directly_issued_by(_cert(ca.cert_pem))
    # The certificate is for the key the node holds.
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()


def test_signed_node_cert_works_for_tls_server_and_client(ca: RootCA) -> None:
    _, csr_pem = make_key_and_csr()
    cert = _cert(ca.sign_csr(csr_pem, NODE, "worker", CLUSTER, ["10.0.0.5", "10.0.0.5", "fd00::7"], now=NOW))

    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt_names.get_values_for_type(x509.DNSName) == [NODE, "localhost"]
    assert alt_names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::7"),
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert identity_from_cert(cert.public_bytes(serialization.Encoding.PEM)).role == "worker"


def test_node_cert_expiry_follows_the_requested_lifetime(ca: RootCA) -> None:
    _, csr_pem = make_key_and_csr()
    default = _cert(ca.sign_csr(csr_pem, NODE, "worker", CLUSTER, [], now=NOW))
    short = _cert(ca.sign_csr(csr_pem, NODE, "worker", CLUSTER, [], expiry_seconds=3600, now=NOW))
    assert default.not_valid_after_utc == NOW + timedelta(days=90)
    assert short.not_valid_after_utc == NOW + timedelta(hours=1)
    assert short.not_valid_before_utc < NOW  # backdated for clock skew


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, subject: x509.Name
) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def test_the_subject_the_csr_asks_for_is_ignored(ca: RootCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "another-cluster"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-manager"),
            x509.NameAttribute(NameOID.COMMON_NAME, "someone-else"),
        ]
    )
    csr_pem = _csr(key, greedy).public_bytes(serialization.Encoding.PEM)
    cert_pem = ca.sign_csr(csr_pem, NODE, "worker", CLUSTER, [])
    assert identity_from_cert(cert_pem) == NodeIdentity(node_id=NODE, role="worker", cluster_id=CLUSTER)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _csr_signed_by_another_key() -> bytes:
    """A CSR carrying one key's public key but signed with a different key."""
    claimed = ec.generate_private_key(ec.SECP256R1())
    signer = ec.generate_private_key(ec.SECP256R1())
    request_info = _csr(claimed, x509.Name([])).tbs_certrequest_bytes
    signature = signer.sign(request_info, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = request_info + ecdsa_with_sha256 + bit_string
    der = b"\x30" + _der_length(len(body)) + body
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def test_a_csr_signed_by_another_key_is_refused(ca: RootCA) -> None:
    forged = _csr_signed_by_another_key()
    assert not x509.load_pem_x509_csr(forged).is_signature_valid  # the forgery is well-formed but unsigned
    with pytest.raises(InvalidArgument, match="signature does not match its public key"):
        ca.sign_csr(forged, NODE, "worker", CLUSTER, [])


def test_garbage_csr_is_refused(ca: RootCA) -> None:
    with pytest.raises(InvalidArgument, match="invalid certificate signing request"):
        ca.sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            NODE,
            "worker",
            CLUSTER,
            [],
        )


def test_a_weak_rsa_key_is_refused(ca: RootCA) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr_pem = _csr(weak, x509.Name([])).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument, match="at least 2048 bits"):
        ca.sign_csr(csr_pem, NODE, "worker", CLUSTER, [])


@pytest.mark.parametrize(
    ("role", "ip_addrs", "message"),
    [
        ("admin", [], "invalid node role"),
        ("worker", ["10.0.0.300"], "invalid IP address"),
        ("worker", ["node.example"], "invalid IP address"),
    ],
)
def test_bad_role_or_address_is_refused(ca: RootCA, role: str, ip_addrs: list[str], message: str) -> None:
    _, csr_pem = make_key_and_csr()
    with pytest.raises(InvalidArgument, match=message):
        ca.sign_csr(csr_pem, NODE, role, CLUSTER, ip_addrs)


def test_issue_node_cert_returns_a_matching_key_pair(ca: RootCA) -> None:
    cert_pem, key_pem = ca.issue_node_cert(NODE, "manager", CLUSTER, ["127.0.0.1"])
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert _cert(cert_pem).public_key() == key.public_key()
    assert identity_from_cert(cert_pem) == NodeIdentity(node_id=NODE, role="manager", cluster_id=CLUSTER)


def test_revocation_list_names_the_revoked_serials_and_is_signed_by_the_ca(ca: RootCA) -> None:
    first, _ = ca.issue_node_cert(NODE, "manager", CLUSTER, [])
    second, _ = ca.issue_node_cert(NODE, "manager", CLUSTER, [])

    crl_pem = ca.sign_crl([serial_number(first)], now=NOW)

    assert revoked_serials(crl_pem) == {serial_number(first)}
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.is_signature_valid(_cert(ca.cert_pem).public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(serial_number(second)) is None
    assert revoked_serials(ca.sign_crl([], now=NOW)) == set()


def test_store_ca_is_a_separate_root(ca: RootCA) -> None:
    store_ca = RootCA.create(CLUSTER, now=NOW, common_name=STORE_CA_COMMON_NAME)
    assert _name_value(_cert(store_ca.cert_pem).subject, NameOID.COMMON_NAME) == STORE_CA_COMMON_NAME
    # A node certificate of the cluster CA is no certificate of the store CA.
    cert, _ = ca.issue_node_cert(NODE, "worker", CLUSTER, [])
    with pytest.raises(InvalidArgument):
        check_issued_by(cert, store_ca.cert_pem)
