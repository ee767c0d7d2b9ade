"""Secrets and configs as objects: created, listed, inspected, refused while in use, removed — through shoal's
CLI and the real docker CLI — and a secret's value nowhere in the store or on a manager's disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster, wait_for
from tests.cluster.test_security import CLIENT_PORT, certs_of, etcd_request

pytestmark = pytest.mark.cluster

VALUE = b"correct-horse-battery-staple-4711"


def shoal_with_input(cluster: Cluster, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, SHOAL_HOST=f"unix://{cluster.manager.socket}")
    return subprocess.run([sys.executable, "-m", "shoal", *args], input=data, capture_output=True, env=env,
                          timeout=60)


def test_secrets_and_configs_through_the_cli(cluster: Cluster, tmp_path: Path) -> None:
    created = shoal_with_input(cluster, VALUE, "secret", "create", "--label", "env=prod", "db_password", "-")
    assert created.returncode == 0, created.stderr
    secret_id = created.stdout.decode().strip()
    conf = tmp_path / "app.conf"
    conf.write_text("listen 8080\n")
    config_id = cluster.ok("config", "create", "app.conf", str(conf)).strip()

    ls = cluster.ok("secret", "ls").splitlines()
    assert ls[0].split() == ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]
    assert ls[1].startswith(secret_id) and "db_password" in ls[1]
    assert cluster.ok("config", "ls").splitlines()[0].split() == ["ID", "NAME", "CREATED", "UPDATED"]

    secret = cluster.get(f"/secrets/{secret_id}")
    assert secret["Spec"] == {"Name": "db_password", "Labels": {"env": "prod"}}  # never its data
    assert VALUE.decode() not in cluster.ok("secret", "inspect", "db_password")
    config = cluster.get("/configs/app.conf")
    assert base64.b64decode(config["Spec"]["Data"]) == b"listen 8080\n"  # a config's data is served
    assert "listen 8080" in cluster.ok("config", "inspect", "--pretty", "app.conf")

    duplicate = shoal_with_input(cluster, b"x", "secret", "create", "db_password", "-")
    assert duplicate.returncode != 0 and b"already exists" in duplicate.stderr
    for bad_name, data in (("bad name", b"x"), ("empty", b"")):
        refused = shoal_with_input(cluster, data, "secret", "create", bad_name, "-")
        assert refused.returncode != 0 and len(refused.stderr.decode().strip().splitlines()) == 1

    # In use by a service: refused, naming it; free again once the service is gone.
    with cluster.api() as client:
        response = client.post("/services/create", json={"Name": "uses-it", "TaskTemplate": {"ContainerSpec": {
            "Image": "busybox", "Args": ["sleep", "600"],
            "Secrets": [{"SecretID": secret_id, "SecretName": "db_password",
                         "File": {"Name": "db_password", "UID": "0", "GID": "0", "Mode": 0o400}}]}}})
        assert response.status_code == 201, response.text
    in_use = cluster.shoal("secret", "rm", "db_password")
    assert in_use.code != 0 and "in use by the following service: uses-it" in in_use.err
    cluster.ok("service", "rm", "uses-it")
    assert cluster.ok("secret", "rm", "db_password").strip() == "db_password"
    cluster.ok("config", "rm", config_id)
    assert cluster.get("/secrets") == [] and cluster.get("/configs") == []


def test_a_secret_value_is_in_neither_the_store_nor_a_managers_disk(cluster: Cluster) -> None:
    assert shoal_with_input(cluster, VALUE, "secret", "create", "kept", "-").returncode == 0
    certs = certs_of(cluster, "manager1")
    # Everything etcd holds, as a dump would show it (the range of every key).
    answer = etcd_request(cluster.manager.address, CLIENT_PORT, "/v3/kv/range", certs / "store.pem",
                          certs / "node-key.pem", {"key": base64.b64encode(b"\0").decode(),
                                                   "range_end": base64.b64encode(b"\0").decode()})
    assert answer is not None and b"kvs" in answer
    dump = b"".join(base64.b64decode(kv.get("value", "")) for kv in json.loads(answer)["kvs"])
    assert VALUE not in dump and base64.b64encode(VALUE) not in dump
    for path in Path(cluster.manager.state_dir).rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert VALUE not in content and base64.b64encode(VALUE) not in content, f"{path} holds the secret"


def held(cluster: Cluster, node: str) -> dict[str, list[str]]:
    """The secret and config IDs a node's agent holds (IDs only: the debug endpoint never shows values)."""
    with cluster.api(node) as client:
        return client.get("/shoal/debug").json()["Agent"]["Holds"]


def logs_of(cluster: Cluster, service: str) -> str:
    return cluster.ok("service", "logs", "--raw", service)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_task_reads_its_secret_and_config_and_a_rotation_rolls_it_to_the_new_secret(cluster: Cluster) -> None:
    new_value = b"second-secret-value-0815"
    v1 = shoal_with_input(cluster, VALUE, "secret", "create", "db_v1", "-")
    assert v1.returncode == 0, v1.stderr
    v1_id = v1.stdout.decode().strip()
    assert shoal_with_input(cluster, b"listen 8080\n", "config", "create", "app", "-").returncode == 0
    reader = ('sha256sum "$SHOAL_SECRETS_DIR/db" "$SHOAL_CONFIGS_DIR/etc/app.conf" | cut -d" " -f1; '
              'exec sleep 600')

    # An unknown secret refuses the service, and nothing is stored.
    refused = cluster.shoal("service", "create", "-d", "--name", "nope", "--secret", "missing", "busybox", "true")
    assert refused.code != 0 and refused.err.strip().endswith("secret not found: missing")
    assert cluster.get("/services") == []

    cluster.ok("service", "create", "-d", "--name", "app", "--constraint", "node.hostname==worker1",
               "--secret", "source=db_v1,target=db,mode=0400", "--config", "source=app,target=/etc/app.conf",
               "busybox", "sh", "-c", reader)
    (task,) = cluster.wait_running("app", 1)
    wait_for("the task's output", lambda: logs_of(cluster, "app").count("\n") >= 2 or None)
    assert logs_of(cluster, "app").split() == [digest(VALUE), digest(b"listen 8080\n")]
    # Only the node running the task was ever given the secret.
    assert held(cluster, "worker1")["Secrets"] == [v1_id]
    assert held(cluster, "worker2")["Secrets"] == [] and held(cluster, "manager1")["Secrets"] == []
    assert cluster.get(f"/tasks/{task['ID']}")["Spec"]["ContainerSpec"]["Secrets"][0]["SecretID"] == v1_id
    assert cluster.shoal("secret", "rm", "db_v1").code != 0  # in use

    # Rotation: a new secret at the same target, rolled out as an update; the old one is then free to go.
    v2 = shoal_with_input(cluster, new_value, "secret", "create", "db_v2", "-")
    v2_id = v2.stdout.decode().strip()
    cluster.ok("service", "update", "-d", "--secret-rm", "db_v1", "--secret-add", "source=db_v2,target=db,mode=0400",
               "app")
    wait_for("the new task's output", lambda: digest(new_value) in logs_of(cluster, "app") or None, timeout=60)
    (rotated,) = cluster.wait_running("app", 1)
    assert rotated["ID"] != task["ID"]
    wait_for("the old secret to be forgotten", lambda: held(cluster, "worker1")["Secrets"] == [v2_id] or None)
    assert cluster.ok("secret", "rm", "db_v1").strip() == "db_v1"

    # Never in a log line, `service ps`, `inspect` or a task document.
    for text in (cluster.ok("service", "ps", "--no-trunc", "app"), cluster.ok("service", "inspect", "app"),
                 json.dumps(cluster.tasks("app"))):
        assert VALUE.decode() not in text and new_value.decode() not in text
    for node in cluster.nodes:
        for path in Path(node.state_dir).rglob("*"):
            if path.is_file():  # records, certificates, logs (task output holds only digests)
                content = path.read_bytes()
                assert VALUE not in content and new_value not in content, f"{path} holds a secret"


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_the_docker_cli_manages_secrets_and_configs(cluster: Cluster) -> None:
    env = dict(os.environ, DOCKER_HOST=f"unix://{cluster.manager.socket}")
    env.pop("DOCKER_CONTEXT", None)

    def docker(*args: str, data: bytes | None = None) -> str:
        result = subprocess.run(["docker", *args], input=data, capture_output=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    secret_id = docker("secret", "create", "s1", "-", data=VALUE).strip()
    assert "s1" in docker("secret", "ls") and secret_id in docker("secret", "ls", "-q")
    assert '"Name": "s1"' in docker("secret", "inspect", "s1") and VALUE.decode() not in docker("secret", "inspect", "s1")
    docker("config", "create", "c1", "-", data=b"hello config\n")
    assert "hello config" in docker("config", "inspect", "--pretty", "c1")
    # A service that mounts them, as `docker service create --secret/--config` sends it (names resolved to IDs).
    docker("service", "create", "-d", "--name", "dsvc", "--secret", "source=s1,target=pw", "--config", "c1",
           "busybox", "sleep", "600")
    container = cluster.get("/services/dsvc")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert [(r["SecretID"], r["SecretName"], r["File"]["Name"]) for r in container["Secrets"]] == [
        (secret_id, "s1", "pw")]
    assert [r["ConfigName"] for r in container["Configs"]] == ["c1"]
    cluster.wait_running("dsvc", 1)
    docker("service", "update", "-d", "--secret-rm", "s1", "dsvc")
    assert "Secrets" not in cluster.get("/services/dsvc")["Spec"]["TaskTemplate"]["ContainerSpec"] or \
        not cluster.get("/services/dsvc")["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    docker("service", "rm", "dsvc")
    docker("secret", "rm", "s1")
    docker("config", "rm", "c1")
    assert docker("secret", "ls", "-q").strip() == "" and docker("config", "ls", "-q").strip() == ""
