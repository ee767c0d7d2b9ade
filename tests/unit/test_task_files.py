"""Secrets and configs on a node: references read from a task, the per-node set the dispatcher keeps, and the
files the agent writes to a tmpfs for each task."""

from __future__ import annotations

import base64
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.executor.base import TaskRejected
from shoal.agent.task_files import SHM, TaskFiles, filesystem_of
from shoal.manager.dependencies import NodeDependencies, needed_by
from shoal.task_files import CONFIG, SECRET, BadReference, all_references, task_references
from shoal.types import Doc


def task(secrets: list[Doc] | None = None, configs: list[Doc] | None = None, state: str = "assigned",
         task_id: str = "task1") -> Doc:
    container: Doc = {"Image": "busybox"}
    if secrets is not None:
        container["Secrets"] = secrets
    if configs is not None:
        container["Configs"] = configs
    return {"ID": task_id, "Spec": {"ContainerSpec": container}, "Status": {"State": state},
            "DesiredState": "running"}


def secret_ref(name: str, target: str | None = None, mode: int = 0o444, uid: str = "0", gid: str = "0") -> Doc:
    return {"SecretID": f"id-{name}", "SecretName": name,
            "File": {"Name": target or name, "UID": uid, "GID": gid, "Mode": mode}}


def config_ref(name: str, target: str | None = None, mode: int = 0o444) -> Doc:
    return {"ConfigID": f"id-{name}", "ConfigName": name,
            "File": {"Name": target or name, "UID": "0", "GID": "0", "Mode": mode}}


# ---- references ------------------------------------------------------------------------------------------

def test_targets_follow_dockers_rules() -> None:
    refs = task_references(task([secret_ref("db"), secret_ref("tls", "/etc/tls/key.pem")],
                                [config_ref("app"), config_ref("nginx", "/etc/nginx.conf")]))
    assert [(r.kind, r.container_path, r.relative_path) for r in refs] == [
        (SECRET, "/run/secrets/db", "db"), (SECRET, "/etc/tls/key.pem", "etc/tls/key.pem"),
        (CONFIG, "/app", "app"), (CONFIG, "/etc/nginx.conf", "etc/nginx.conf")]


def test_a_reference_without_a_file_takes_the_name_and_dockers_defaults() -> None:
    [ref] = task_references(task([{"SecretID": "x1", "SecretName": "db"}]))
    assert (ref.target, ref.uid, ref.gid, ref.mode) == ("db", 0, 0, 0o444)


@pytest.mark.parametrize(("ref", "message"), [
    ({"File": {"Name": "x"}}, "must name the secret"),
    (secret_ref("db", "../../etc/passwd"), "not a file path"),
    (secret_ref("db", "dir/"), "not a file path"),
    (secret_ref("db", mode=0o17777), "File.Mode"),
    (secret_ref("db", uid="root"), "File.UID must be a numeric id"),
    ("db", "must be a JSON object"),
])
def test_malformed_references_are_refused_with_the_field(ref: object, message: str) -> None:
    with pytest.raises(BadReference, match=message):
        all_references({"Secrets": [ref]})


def test_two_files_at_one_path_are_refused() -> None:
    with pytest.raises(BadReference, match="conflicting target: '/run/secrets/a'"):
        all_references({"Secrets": [secret_ref("one", "a"), secret_ref("two", "a")]})
    with pytest.raises(BadReference, match="conflicting target"):
        all_references({"Secrets": [secret_ref("s", "/etc/x")], "Configs": [config_ref("c", "/etc/x")]})


def test_runtime_config_targets_are_refused() -> None:
    with pytest.raises(BadReference, match="Runtime"):
        all_references({"Configs": [{"ConfigID": "c", "ConfigName": "c", "Runtime": {}}]})


# ---- the dispatcher's per-node set ------------------------------------------------------------------------

def test_a_node_holds_exactly_what_its_unfinished_tasks_use() -> None:
    node = NodeDependencies()
    one = task([secret_ref("db")], [config_ref("app")], task_id="t1")
    two = task([secret_ref("db"), secret_ref("tls")], task_id="t2")

    assert node.set_task("t1", needed_by(one)) == ({(SECRET, "id-db"), (CONFIG, "id-app")}, set())
    assert node.set_task("t2", needed_by(two)) == ({(SECRET, "id-tls")}, set()), "db is held already"
    assert node.drop_task("t1") == {(CONFIG, "id-app")}, "t2 still uses db"
    ended = task([secret_ref("db"), secret_ref("tls")], state="failed", task_id="t2")
    assert needed_by(ended) == frozenset()
    assert node.set_task("t2", needed_by(ended)) == (set(), {(SECRET, "id-db"), (SECRET, "id-tls")})
    assert node.held() == set()
    assert node.drop_task("never-seen") == set()


def test_a_task_with_malformed_references_needs_nothing() -> None:
    assert needed_by(task([{"SecretName": "x", "File": {"Name": "../x"}}])) == frozenset()


# ---- the agent's files ---------------------------------------------------------------------------------------

@pytest.fixture
def files() -> Iterator[TaskFiles]:
    root = SHM / "shoal-test" / uuid.uuid4().hex[:12]
    store = TaskFiles(root)
    yield store
    shutil.rmtree(root, ignore_errors=True)


def assignment(**values: dict[str, bytes]) -> Doc:
    return {kind: [{"ID": obj_id, "Data": base64.b64encode(data).decode()} for obj_id, data in items.items()]
            for kind, items in values.items()}


def test_files_are_written_with_their_mode_and_owner_in_a_private_folder(files: TaskFiles) -> None:
    files.receive(assignment(secrets={"id-db": b"hunter2"}, configs={"id-app": b"port=80\n"}))
    doc = task([secret_ref("db", mode=0o400, uid="1000", gid="1001")], [config_ref("app", "/etc/app.conf")])

    placed = files.write(doc, owner=(1000, 1000))

    secret, config = (p.path for p in placed)
    assert secret == files.root / "task1" / "secrets" / "db"
    assert config == files.root / "task1" / "configs" / "etc" / "app.conf"
    assert secret.read_bytes() == b"hunter2" and config.read_bytes() == b"port=80\n"
    info = secret.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o400, 1000, 1001)
    folder = (files.root / "task1").stat()
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid) == (0o700, 1000), "only the task's user gets in"
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o711, "nobody lists the other tasks"

    files.remove("task1")
    assert not (files.root / "task1").exists()


def test_a_value_never_delivered_rejects_the_task(files: TaskFiles) -> None:
    with pytest.raises(TaskRejected, match="not delivered to this node: secret db"):
        files.write(task([secret_ref("db")]), owner=None)


def test_forgotten_values_are_gone_and_a_full_assignment_replaces_all(files: TaskFiles) -> None:
    files.receive(assignment(secrets={"a": b"1", "b": b"2"}))
    files.forget({"forget": {"secrets": ["a"]}})
    assert files.held() == {(SECRET, "b")}
    files.receive({"full": True, **assignment(configs={"c": b"3"})})
    assert files.held() == {(CONFIG, "c")}


def test_files_are_never_written_outside_a_tmpfs(tmp_path: Path) -> None:
    on_disk = TaskFiles(tmp_path / "files")
    on_disk.receive(assignment(secrets={"id-db": b"hunter2"}))
    if filesystem_of(tmp_path, Path("/proc/self/mountinfo").read_text()) in ("tmpfs", "ramfs"):
        pytest.skip("this machine's temporary directory is itself a tmpfs")
    with pytest.raises(TaskRejected, match="is not on a tmpfs"):
        on_disk.write(task([secret_ref("db")]), owner=None)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_the_file_system_of_a_path_is_read_from_mountinfo() -> None:
    mountinfo = "\n".join([
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        "30 22 0:26 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw",
        "31 22 0:27 / /dev/shm/not\\040here rw - ext4 /dev/sdb rw",
    ])
    assert filesystem_of(Path("/dev/shm/shoal/abc/task1"), mountinfo) == "tmpfs"
    assert filesystem_of(Path("/var/lib/shoal"), mountinfo) == "ext4"
    assert filesystem_of(Path("/dev/shmx"), mountinfo) == "ext4"
    assert filesystem_of(Path("/dev/shm/not here/x"), mountinfo) == "ext4"
