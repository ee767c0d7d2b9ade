"""Node-side certificate helpers, and the TLS contexts exercised end to end on loopback."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.certs import (
    NodeIdentity,
    cert_validity,
    check_issued_by,
    client_ssl_context,
    csr_for_key,
    identity_from_cert,
    identity_from_peercert,
    insecure_probe_context,
    load_certificate,
    make_key_and_csr,
    renewal_time,
    server_ssl_context,
    write_private,
)
from shoal.errors import InvalidArgument
from shoal.manager.ca import RootCA

CLUSTER = "c1uster0000000000000000ab"
MANAGER = "manager000000000000000001"
WORKER = "worker0000000000000000001"
DEADLINE = 10.0  # seconds; loopback handshakes take milliseconds


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create(CLUSTER)


@pytest.fixture(scope="module")
def other_ca() -> RootCA:
    return RootCA.create("someone-elses-cluster")


def test_make_key_and_csr_gives_a_p256_key_and_a_csr_signed_by_it() -> None:
    key_pem, csr_pem = make_key_and_csr()
    key = serialization.load_pem_private_key(key_pem, password=None)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert make_key_and_csr()[0] != key_pem


def test_identity_from_cert_refuses_a_certificate_that_names_no_node(ca: RootCA) -> None:
    # The CA certificate has a CN and an O, but no role.
    with pytest.raises(InvalidArgument, match="not a shoal node certificate"):
        identity_from_cert(ca.cert_pem)


def test_identity_from_cert_refuses_garbage() -> None:
    with pytest.raises(InvalidArgument):
        identity_from_cert(b"nope")


def _peercert(*subject: tuple[str, str]) -> dict[str, Any]:
    return {"subject": tuple(((name, value),) for name, value in subject), "version": 3}


def test_identity_from_peercert_reads_the_subject() -> None:
    peercert = _peercert(
        ("organizationName", CLUSTER), ("organizationalUnitName", "swarm-worker"), ("commonName", WORKER)
    )
    assert identity_from_peercert(peercert) == NodeIdentity(node_id=WORKER, role="worker", cluster_id=CLUSTER)


@pytest.mark.parametrize(
    "peercert",
    [
        None,
        {},
        _peercert(("organizationalUnitName", "swarm-worker"), ("commonName", WORKER)),
        _peercert(("organizationName", CLUSTER), ("commonName", WORKER)),
        _peercert(("organizationName", CLUSTER), ("organizationalUnitName", "swarm-worker")),
        _peercert(
            ("organizationName", CLUSTER), ("organizationalUnitName", "admins"), ("commonName", WORKER)
        ),
    ],
    ids=["none", "empty", "no cluster", "no role", "no node", "unknown role"],
)
def test_identity_from_peercert_refuses_incomplete_subjects(peercert: dict[str, Any] | None) -> None:
    with pytest.raises(InvalidArgument):
        identity_from_peercert(peercert)


def test_cert_validity(ca: RootCA) -> None:
    now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    _, csr_pem = make_key_and_csr()
    cert_pem = ca.sign_csr(csr_pem, WORKER, "worker", CLUSTER, [], expiry_seconds=7200, now=now)
    # Backdated for clocks that lag: an hour, or a tenth of the life of a short certificate.
    assert cert_validity(cert_pem) == (now - timedelta(minutes=12), now + timedelta(hours=2))
    long_lived = ca.sign_csr(csr_pem, WORKER, "worker", CLUSTER, [], expiry_seconds=90 * 86400, now=now)
    assert cert_validity(long_lived)[0] == now - timedelta(hours=1)


def test_renewal_falls_between_half_and_four_fifths_of_the_life() -> None:
    start = datetime(2031, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=90)
    assert renewal_time(start, end, 0.0) == start + timedelta(days=45)
    assert renewal_time(start, end, 0.999999) < start + timedelta(days=72)
    times = {renewal_time(start, end, draw / 10) for draw in range(10)}
    assert len(times) == 10  # spread, not one instant for every node


def test_a_renewal_keeps_the_key(ca: RootCA) -> None:
    key_pem, _ = make_key_and_csr()
    cert_pem = ca.sign_csr(csr_for_key(key_pem), WORKER, "worker", CLUSTER, [])
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert load_certificate(cert_pem).public_key() == key.public_key()


def test_check_issued_by(ca: RootCA, other_ca: RootCA) -> None:
    cert_pem, _ = ca.issue_node_cert(WORKER, "worker", CLUSTER, [])
    check_issued_by(cert_pem, ca.cert_pem)
    with pytest.raises(InvalidArgument, match="not issued by the cluster CA"):
        check_issued_by(cert_pem, other_ca.cert_pem)


def test_write_private_creates_parents_and_keeps_the_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "certificates" / "node.key"
    write_private(path, b"secret key")
    assert path.read_bytes() == b"secret key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_replaces_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == ["node.key"]  # no temporary file left behind


def test_client_context_needs_both_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        client_ssl_context(tmp_path / "ca.pem", tmp_path / "node.crt", None)


def test_contexts_refuse_tls_below_1_2(tmp_path: Path, ca: RootCA) -> None:
    files = _write_node_files(tmp_path, ca, ca.issue_node_cert(MANAGER, "manager", CLUSTER, ["127.0.0.1"]))
    contexts = [
        server_ssl_context(files.ca, files.cert, files.key),
        client_ssl_context(files.ca, files.cert, files.key),
        insecure_probe_context(),
    ]
    assert all(context.minimum_version == ssl.TLSVersion.TLSv1_2 for context in contexts)


# --- end to end on loopback ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFiles:
    ca: Path
    cert: Path
    key: Path


def _write_node_files(directory: Path, ca: RootCA, cert_and_key: tuple[bytes, bytes]) -> NodeFiles:
    files = NodeFiles(ca=directory / "ca.pem", cert=directory / "node.crt", key=directory / "node.key")
    write_private(files.ca, ca.cert_pem)
    write_private(files.cert, cert_and_key[0])
    write_private(files.key, cert_and_key[1])
    return files


@dataclass
class TLSServer:
    port: int
    peercerts: asyncio.Queue[dict[str, Any] | None]


@asynccontextmanager
async def _serve(context: ssl.SSLContext) -> AsyncIterator[TLSServer]:
    """A server that records each verified connection's peer certificate and answers b"hello\\n"."""
    peercerts: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peercerts.put(writer.get_extra_info("peercert"))
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield TLSServer(port=port, peercerts=peercerts)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def manager_server(tmp_path: Path, ca: RootCA) -> AsyncIterator[TLSServer]:
    files = _write_node_files(
        tmp_path / "manager", ca, ca.issue_node_cert(MANAGER, "manager", CLUSTER, ["127.0.0.1"])
    )
    async with _serve(server_ssl_context(files.ca, files.cert, files.key)) as server:
        yield server


async def _exchange(port: int, context: ssl.SSLContext) -> bytes:
    """Connect, read the greeting, and close."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), DEADLINE)
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


async def test_client_with_node_cert_is_identified_by_the_server(
    manager_server: TLSServer, tmp_path: Path, ca: RootCA
) -> None:
    files = _write_node_files(tmp_path / "worker", ca, ca.issue_node_cert(WORKER, "worker", CLUSTER, []))

    greeting = await _exchange(manager_server.port, client_ssl_context(files.ca, files.cert, files.key))

    assert greeting == b"hello\n"
    peercert = await asyncio.wait_for(manager_server.peercerts.get(), DEADLINE)
    assert identity_from_peercert(peercert) == NodeIdentity(node_id=WORKER, role="worker", cluster_id=CLUSTER)


async def test_client_without_cert_connects_and_the_server_sees_no_peer(
    manager_server: TLSServer, tmp_path: Path, ca: RootCA
) -> None:
    write_private(tmp_path / "ca.pem", ca.cert_pem)

    greeting = await _exchange(manager_server.port, client_ssl_context(tmp_path / "ca.pem"))

    assert greeting == b"hello\n"
    peercert = await asyncio.wait_for(manager_server.peercerts.get(), DEADLINE)
    assert peercert is None
    with pytest.raises(InvalidArgument):
        identity_from_peercert(peercert)


@pytest.mark.parametrize(
    "tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_client_with_cert_from_another_ca_is_refused(
    manager_server: TLSServer, tmp_path: Path, ca: RootCA, other_ca: RootCA, tls_version: ssl.TLSVersion
) -> None:
    # The intruder trusts the real CA (to get past its own server check) but holds a foreign certificate.
    files = _write_node_files(
        tmp_path / "intruder", ca, other_ca.issue_node_cert(WORKER, "manager", CLUSTER, [])
    )
    context = client_ssl_context(files.ca, files.cert, files.key)
    context.maximum_version = tls_version

    # TLS 1.2 fails in the handshake; with TLS 1.3 the client learns of the refusal on its first read.
    try:
        greeting = await _exchange(manager_server.port, context)
    except (ssl.SSLError, ConnectionError):
        greeting = b""

    assert greeting == b""  # refused: an error or a close, never the greeting
    assert manager_server.peercerts.empty()  # the handler never ran


async def test_client_refuses_a_server_from_another_ca(tmp_path: Path, ca: RootCA, other_ca: RootCA) -> None:
    impostor = _write_node_files(
        tmp_path / "impostor", other_ca, other_ca.issue_node_cert(MANAGER, "manager", CLUSTER, ["127.0.0.1"])
    )
    write_private(tmp_path / "ca.pem", ca.cert_pem)
    async with _serve(server_ssl_context(impostor.ca, impostor.cert, impostor.key)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exchange(server.port, client_ssl_context(tmp_path / "ca.pem"))

        # The join probe still connects, to fetch the CA certificate it then checks against the token.
        assert await _exchange(server.port, insecure_probe_context()) == b"hello\n"


async def test_client_refuses_a_server_that_holds_a_worker_certificate(tmp_path: Path, ca: RootCA) -> None:
    # A compromised worker posing as a manager: its certificate is from the right CA but names a worker.
    worker = _write_node_files(
        tmp_path / "worker", ca, ca.issue_node_cert(WORKER, "worker", CLUSTER, ["127.0.0.1"])
    )
    async with _serve(server_ssl_context(worker.ca, worker.cert, worker.key)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="worker certificate"):
            await _exchange(server.port, client_ssl_context(worker.ca, worker.cert, worker.key))

        # Only a context that asks for no manager (none in shoal) would talk to it.
        context = client_ssl_context(worker.ca, worker.cert, worker.key, require_manager=False)
        assert await _exchange(server.port, context) == b"hello\n"
