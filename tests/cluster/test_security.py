"""What a compromised worker can reach: not the store, not the CA key; and a former manager loses the store."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.cluster

CLIENT_PORT, PEER_PORT = 2379, 2380


def etcd_request(address: str, port: int, path: str, cert: Path, key: Path, body: dict | None = None) -> bytes | None:
    """What etcd answers an attacker holding `cert` and `key` (who does not check the server), or None when
    it refuses the connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert, key)
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=10)
    try:
        connection.request("POST" if body else "GET", path, body=json.dumps(body) if body else None)
        response = connection.getresponse()
        return response.read() if response.status == 200 else None
    except (OSError, http.client.HTTPException):  # ssl.SSLError is an OSError
        return None
    finally:
        connection.close()


def certs_of(cluster: Cluster, name: str) -> Path:
    return Path(cluster.node(name).state_dir) / "certs"


def test_a_workers_certificate_opens_neither_etcd_port(cluster: Cluster) -> None:
    address = cluster.manager.address
    manager, worker = certs_of(cluster, "manager1"), certs_of(cluster, "worker1")
    # The manager's own store certificate gets in: the requests below can tell access from refusal.
    assert etcd_request(address, CLIENT_PORT, "/version", manager / "store.pem", manager / "node-key.pem")
    assert etcd_request(address, PEER_PORT, "/members", manager / "store.pem", manager / "node-key.pem")

    assert not (worker / "store.pem").exists() and not (worker / "manager.key").exists()
    for port, path in ((CLIENT_PORT, "/version"), (PEER_PORT, "/members")):
        assert etcd_request(address, port, path, worker / "node.pem", worker / "node-key.pem") is None
    # Nor does the manager's cluster certificate: etcd trusts its own CA only.
    assert etcd_request(address, CLIENT_PORT, "/version", manager / "node.pem", manager / "node-key.pem") is None


def test_the_ca_keys_are_sealed_in_the_store(cluster: Cluster) -> None:
    certs = certs_of(cluster, "manager1")
    for key in ("/shoal/ca", "/shoal/store-ca"):
        answer = etcd_request(cluster.manager.address, CLIENT_PORT, "/v3/kv/range", certs / "store.pem",
                              certs / "node-key.pem", {"key": base64.b64encode(key.encode()).decode()})
        assert answer is not None
        (kv,) = json.loads(answer)["kvs"]
        stored = base64.b64decode(kv["value"])
        assert b"BEGIN CERTIFICATE" in stored and b"PRIVATE KEY" not in stored


def test_a_demoted_manager_loses_the_store(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ok("node", "promote", "worker1")
    worker1 = certs_of(cluster, "worker1")
    wait_for("worker1 to hold store access", lambda: (worker1 / "store.pem").exists(), timeout=60)
    wait_for("worker1 to serve as a manager", lambda: cluster.shoal("node", "ls", node="worker1").code == 0,
             timeout=60)
    # What an attacker on worker1 would keep: the files as they were while it was a manager.
    kept = tmp_path / "kept"
    shutil.copytree(worker1, kept)
    address = cluster.manager.address
    assert etcd_request(address, CLIENT_PORT, "/version", kept / "store.pem", kept / "node-key.pem")

    cluster.ok("node", "demote", "worker1")
    wait_for("worker1 to be a worker again",
             lambda: "not a swarm manager" in cluster.shoal("node", "ls", node="worker1").err, timeout=60)

    assert not (worker1 / "store.pem").exists() and not (worker1 / "manager.key").exists()
    wait_for("the first manager's etcd to refuse worker1's old certificate",
             lambda: etcd_request(address, CLIENT_PORT, "/version", kept / "store.pem", kept / "node-key.pem")
             is None, timeout=30)
    assert etcd_request(address, PEER_PORT, "/members", kept / "store.pem", kept / "node-key.pem") is None
    cluster.ok("service", "create", "-d", "--name", "after-demote", "busybox", "sleep", "600")
    cluster.wait_running("after-demote", 1)


def unlock(cluster: Cluster, key: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SHOAL_HOST=f"unix://{cluster.manager.socket}")
    return subprocess.run([sys.executable, "-m", "shoal", "swarm", "unlock"], input=key + "\n", capture_output=True,
                          text=True, env=env, timeout=60)


def restart_manager(cluster: Cluster) -> None:
    cluster.kill("manager1")
    cluster.restart("manager1")


def sealed(cluster: Cluster) -> set[str]:
    return {path.name for path in certs_of(cluster, "manager1").iterdir()
            if path.name.startswith(("node-key.pem", "manager.key"))}


def test_autolock_keeps_a_restarted_manager_locked_until_unlocked(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "kept", "busybox", "sleep", "600")
    cluster.wait_running("kept", 1)
    out = cluster.ok("swarm", "update", "--autolock=true")
    key = next(word for word in out.split() if word.startswith("SWMKEY-1-"))
    assert cluster.ok("swarm", "unlock-key", "-q").strip() == key
    wait_for("the manager's keys to be sealed",
             lambda: sealed(cluster) == {"node-key.pem.locked", "manager.key.locked"}, timeout=30)

    restart_manager(cluster)
    locked = cluster.shoal("node", "ls")
    assert locked.code != 0 and "Swarm is encrypted and needs to be unlocked" in locked.err
    assert cluster.get("/info")["Swarm"]["LocalNodeState"] == "locked"
    wrong = unlock(cluster, key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"))
    assert wrong.returncode != 0 and "invalid unlock key" in wrong.stderr
    assert cluster.get("/info")["Swarm"]["LocalNodeState"] == "locked"

    right = unlock(cluster, key)
    assert right.returncode == 0, right.stderr
    wait_for("the manager to serve again", lambda: cluster.shoal("node", "ls").code == 0, timeout=60)
    cluster.wait_running("kept", 1)

    # A rotation seals the keys again under the new key: the old one no longer opens them.
    new_key = cluster.ok("swarm", "unlock-key", "--rotate", "-q").strip()
    assert new_key.startswith("SWMKEY-1-") and new_key != key
    manager_key = certs_of(cluster, "manager1") / "manager.key.locked"
    wait_for("the keys to be sealed with the new key", lambda: _sealed_with(manager_key, new_key), timeout=30)
    restart_manager(cluster)
    assert unlock(cluster, key).returncode != 0
    assert unlock(cluster, new_key).returncode == 0
    wait_for("the manager to serve again", lambda: cluster.shoal("node", "ls").code == 0, timeout=60)

    # Turned off, the keys go back in clear and a restart needs no key.
    cluster.ok("swarm", "update", "--autolock=false")
    wait_for("the keys in clear", lambda: sealed(cluster) == {"node-key.pem", "manager.key"}, timeout=30)
    assert cluster.shoal("swarm", "unlock-key").code != 0
    restart_manager(cluster)
    wait_for("the manager to serve without a key", lambda: cluster.shoal("node", "ls").code == 0, timeout=60)
    cluster.wait_running("kept", 1)


def _sealed_with(path: Path, unlock_key: str) -> bool:
    from shoal.manager.autolock import key_id

    try:
        return json.loads(path.read_bytes())["key_id"] == key_id(unlock_key)
    except (OSError, ValueError, KeyError):
        return False


def _validity(path: Path) -> tuple[datetime, datetime] | None:
    from shoal.certs import cert_validity

    try:
        return cert_validity(path.read_bytes())
    except (OSError, ValueError):
        return None


def test_short_lived_certificates_renew_themselves(tmp_path_factory: pytest.TempPathFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_MIN_CERT_EXPIRY", "10")  # Docker's floor is an hour: too long to watch
    cluster = make_cluster(tmp_path_factory, managers=1, workers=0)
    try:
        cluster.ok("swarm", "update", "--cert-expiry", "30s")
        cluster.add_node("worker1")
        cert = certs_of(cluster, "worker1") / "node.pem"
        first = _validity(cert)
        assert first is not None and first[1] - first[0] <= timedelta(seconds=34)  # 30 s, backdated 3 s
        seen = {first}

        def renewed_twice() -> bool:
            current = _validity(cert)
            if current is not None:
                seen.add(current)
            return len(seen) >= 3

        # Each renewal comes between half and four fifths of the certificate's life.
        wait_for("two renewals", renewed_twice, timeout=90, interval=0.5)
        assert max(seen)[1] > first[1] + timedelta(seconds=20)
        assert cluster.node_state("worker1") == "ready"
        cluster.ok("service", "create", "-d", "--name", "on-worker", "--constraint", "node.role==worker", "busybox",
                   "sleep", "600")
        cluster.wait_running("on-worker", 1)

        # A node that was away past its certificate's end is told what to do.
        cluster.kill("worker1")
        expires = (_validity(cert) or first)[1]
        wait_for("worker1's certificate to expire",
                 lambda: datetime.now(UTC) > expires + timedelta(seconds=1), timeout=60, interval=0.5)
        cluster.restart("worker1")

        def told() -> str | None:
            with cluster.api("worker1") as client:
                error = str(client.get("/info").json()["Swarm"]["Error"])
            return error if "certificate expired" in error else None

        message = wait_for("worker1 to report its expired certificate", told, timeout=30)
        assert "shoal swarm leave --force" in message and "join-token" in message
    finally:
        cluster.down()


def test_root_ca_rotation_moves_every_node_to_the_new_root_without_restarting_tasks(cluster: Cluster) -> None:
    from shoal.certs import issuer_of, load_certificate, split_pem

    cluster.ok("service", "create", "-d", "--name", "steady", "--replicas", "3", "busybox", "sleep", "600")
    cluster.wait_running("steady", 3)
    before = cluster.task_processes()
    old_root = cluster.get("/swarm")["TLSInfo"]["TrustRoot"]
    old_token = cluster.ok("swarm", "join-token", "-q", "worker").strip()

    printed = cluster.ok("swarm", "ca", "--rotate", timeout=120)

    swarm = cluster.get("/swarm")
    new_root = swarm["TLSInfo"]["TrustRoot"]
    assert swarm["RootRotationInProgress"] is False and new_root != old_root
    assert printed.strip() == new_root.strip()
    new_key = load_certificate(new_root.encode()).public_key()
    for node in cluster.nodes:
        certs = certs_of(cluster, node.name)
        wait_for(f"{node.name} to trust the new root alone",
                 lambda certs=certs: (certs / "ca.pem").read_text().strip() == new_root.strip(), timeout=30)
        chain = (certs / "node.pem").read_bytes()
        issuer = issuer_of(chain, new_root.encode())
        assert issuer is not None and issuer.public_key() == new_key, f"{node.name} still on the old root"
        assert len(split_pem(chain)) >= 1
    new_token = cluster.ok("swarm", "join-token", "-q", "worker").strip()
    assert new_token != old_token and new_token.split("-")[2] != old_token.split("-")[2]  # the digest moved
    cluster.add_node("worker3")  # joins with the new token, pinning the new root
    wait_for("worker3 ready", lambda: cluster.node_state("worker3") == "ready", timeout=30)
    assert cluster.task_processes() == before, "a task was restarted by the rotation"
