"""Root CA rotation: cross-signing keeps old and new trust working together; the decisions over documents."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shoal.certs import (
    client_ssl_context,
    issuer_of,
    load_certificate,
    server_ssl_context,
    split_pem,
    tls_info,
    write_private,
)
from shoal.errors import InvalidArgument
from shoal.manager import ca_rotation
from shoal.manager.ca import RootCA
from shoal.types import Doc
from tests.unit.test_certs import _exchange, _serve

CLUSTER = "c1uster0000000000000000ab"
MANAGER, WORKER = "manager000000000000000001", "worker0000000000000000001"


@pytest.fixture(scope="module")
def roots() -> tuple[RootCA, RootCA]:
    return RootCA.create(CLUSTER), RootCA.create(CLUSTER)


def _node(node_id: str, chain: bytes, trusted: bytes, state: str = "ready") -> Doc:
    return {"ID": node_id, "Status": {"State": state}, "Description": {"TLSInfo": tls_info(chain, trusted)}}


async def test_a_certificate_of_the_new_root_is_accepted_by_a_node_that_trusts_only_the_old(
        tmp_path: Path, roots: tuple[RootCA, RootCA]) -> None:
    old, new = roots
    cert, key = new.issue_node_cert(MANAGER, "manager", CLUSTER, ["127.0.0.1"])
    chain = cert + old.cross_sign(new)
    for name, data in (("chain.pem", chain), ("key.pem", key), ("old.pem", old.cert_pem),
                       ("both.pem", old.cert_pem + new.cert_pem), ("new.pem", new.cert_pem)):
        write_private(tmp_path / name, data)
    server = server_ssl_context(tmp_path / "both.pem", tmp_path / "chain.pem", tmp_path / "key.pem")
    async with _serve(server) as served:
        for trusted in ("old.pem", "both.pem", "new.pem"):
            assert await _exchange(served.port, client_ssl_context(tmp_path / trusted)) == b"hello\n"
        # Without the cross-signed copy, a node that trusts only the old root refuses it.
        write_private(tmp_path / "leaf.pem", cert)
    bare = server_ssl_context(tmp_path / "both.pem", tmp_path / "leaf.pem", tmp_path / "key.pem")
    async with _serve(bare) as served:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _exchange(served.port, client_ssl_context(tmp_path / "old.pem"))


def test_the_issuer_is_found_by_signature_though_both_roots_share_a_name(roots: tuple[RootCA, RootCA]) -> None:
    old, new = roots
    cert, _ = new.issue_node_cert(WORKER, "worker", CLUSTER, [])
    issuer = issuer_of(cert, old.cert_pem + new.cert_pem)
    assert issuer is not None and issuer.public_key() == load_certificate(new.cert_pem).public_key()
    assert split_pem(old.cert_pem + new.cert_pem) == [old.cert_pem, new.cert_pem]


def test_a_rotation_starts_waits_for_every_live_node_and_finishes(roots: tuple[RootCA, RootCA]) -> None:
    old, new = roots
    cluster = {"ID": CLUSTER, **ca_rotation.initial_fields(old)}
    on_old = old.issue_node_cert(WORKER, "worker", CLUSTER, [])[0]

    rotating = ca_rotation.start(cluster, old, new)
    assert rotating["RootRotationInProgress"] is True
    assert split_pem(ca_rotation.trust_bundle(rotating).encode()) == [old.cert_pem, new.cert_pem]
    # The chain is the new root's key, vouched for by the old root.
    (cross,) = split_pem(ca_rotation.ca_chain(rotating))
    assert load_certificate(cross).public_key() == load_certificate(new.cert_pem).public_key()
    assert issuer_of(cross, old.cert_pem) is not None and issuer_of(cross, new.cert_pem) is None
    with pytest.raises(InvalidArgument, match="already in progress"):
        ca_rotation.start(rotating, old, new)

    bundle = ca_rotation.trust_bundle(rotating).encode()
    manager = _node(MANAGER, new.issue_node_cert(MANAGER, "manager", CLUSTER, [])[0], bundle)
    worker = _node(WORKER, on_old, bundle)
    gone = _node("gone", on_old, bundle, state="down")
    assert not ca_rotation.needs_renewal(manager, rotating) and ca_rotation.needs_renewal(worker, rotating)
    assert ca_rotation.progress(rotating, [manager, worker, gone]) == (1, 2)  # a down node does not hold it

    worker = _node(WORKER, new.issue_node_cert(WORKER, "worker", CLUSTER, [])[0] + old.cross_sign(new), bundle)
    assert ca_rotation.progress(rotating, [manager, worker, gone]) == (2, 2)
    done = ca_rotation.finish(rotating, new, {"Worker": "w", "Manager": "m"})
    assert done["RootRotationInProgress"] is False and done["JoinTokens"] == {"Worker": "w", "Manager": "m"}
    assert ca_rotation.trust_bundle(done) == new.cert_pem.decode() == done["TLSInfo"]["TrustRoot"]
    assert ca_rotation.ca_chain(done) == b"" and not ca_rotation.needs_renewal(worker, done)
