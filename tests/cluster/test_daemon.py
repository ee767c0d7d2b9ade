"""The daemon outside a playground: autostart by `swarm init`, an external etcd cluster, swarm settings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal import playground
from tests.cluster.conftest import Cluster, _subnet, wait_for

pytestmark = pytest.mark.cluster


def _pids_with_socket(sock: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(sock).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def test_swarm_init_starts_a_daemon_when_none_answers(tmp_path: Path) -> None:
    state, sock = tmp_path / "state", tmp_path / "shoal.sock"
    address = f"{_subnet()}.2"
    env = dict(os.environ, SHOAL_SOCKET=str(sock), SHOAL_PLAYGROUND_DIR=str(tmp_path / "no-playground"))
    env.pop("SHOAL_HOST", None)
    try:
        result = subprocess.run([sys.executable, "-m", "shoal", "swarm", "init", "--advertise-addr", address,
                                 "--state-dir", str(state)], capture_output=True, text=True, env=env, timeout=90)
        assert result.returncode == 0, result.stderr
        assert "Started the shoal daemon in the background" in result.stderr
        assert "Swarm initialized: current node (" in result.stdout
        assert "shoal swarm join --token SWMTKN-1-" in result.stdout and f"{address}:2377" in result.stdout
        # init returns with the node ready, as Docker's does: an update right away is not out of sequence.
        node_id = result.stdout.split("current node (", 1)[1].split(")", 1)[0]
        update = subprocess.run([sys.executable, "-m", "shoal", "node", "update", "--label-add", "zone=a", node_id],
                                capture_output=True, text=True, env=env, timeout=30)
        assert update.returncode == 0, update.stderr
        # Keys, the membership record, the store's data and its log are root's alone.
        private = {path: stat.S_IMODE(path.stat().st_mode) for path in (
            state, state / "state.json", state / "certs", state / "certs" / "node-key.pem", state / "agent",
            state / "etcd", state / "etcd.log")}
        assert private == {path: 0o700 if path.is_dir() else 0o600 for path in private}
        ls = subprocess.run([sys.executable, "-m", "shoal", "node", "ls"], capture_output=True, text=True, env=env)
        assert "Leader" in ls.stdout
        again = subprocess.run([sys.executable, "-m", "shoal", "swarm", "init", "--advertise-addr", address,
                                "--state-dir", str(state)], capture_output=True, text=True, env=env, timeout=60)
        assert again.returncode != 0 and "already part of a swarm" in again.stderr
        assert "Started the shoal daemon" not in again.stderr
        left = subprocess.run([sys.executable, "-m", "shoal", "swarm", "leave", "--force"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert left.returncode == 0 and "Node left the swarm." in left.stdout
        assert not (state / "etcd").exists() and not (state / "certs").exists()
    finally:
        for pid in _pids_with_socket(sock):
            os.kill(pid, signal.SIGTERM)
        wait_for("the daemon to exit", lambda: not _pids_with_socket(sock), timeout=20)
        for pid in playground.processes_under(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (apt-get install etcd-server)")
def test_manager_on_an_external_etcd_cluster(tmp_path: Path) -> None:
    subnet = _subnet()
    etcd_ip, node_ip = f"{subnet}.10", f"{subnet}.2"
    etcd = subprocess.Popen(
        ["etcd", "--name", "ext", "--data-dir", str(tmp_path / "ext"),
         "--listen-client-urls", f"http://{etcd_ip}:2379", "--advertise-client-urls", f"http://{etcd_ip}:2379",
         "--listen-peer-urls", f"http://{etcd_ip}:2380", "--initial-advertise-peer-urls", f"http://{etcd_ip}:2380",
         "--initial-cluster", f"ext=http://{etcd_ip}:2380", "--logger", "zap", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, state_dir, sock = playground.start_daemon("ext1", tmp_path, ["--etcd-endpoints", f"http://{etcd_ip}:2379"])
    try:
        playground.wait_for_socket(sock, proc)
        with playground.api(str(sock), timeout=60) as api:
            response = api.post("/swarm/init", json={"AdvertiseAddr": node_ip, "ListenAddr": f"{node_ip}:2377"})
            assert response.status_code == 200, response.text
            create = api.post("/services/create", json={"Name": "ext", "TaskTemplate": {"ContainerSpec": {
                "Image": "busybox", "Args": ["sleep", "600"]}}})
            assert create.status_code == 201
            wait_for("the task to run", lambda: any(
                t["Status"]["State"] == "running" for t in api.get("/tasks").json()))
        # shoal ran no etcd of its own: the objects are in the external one.
        assert not (state_dir / "etcd").exists()
        keys = subprocess.run(["etcdctl", "--endpoints", f"http://{etcd_ip}:2379", "get", "--prefix", "--keys-only",
                               "/shoal/services/"], capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"))
        assert keys.stdout.strip().startswith("/shoal/services/")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        for pid in playground.processes_under(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        etcd.kill()
        etcd.wait()


def test_task_history_limit_is_a_swarm_setting(cluster: Cluster) -> None:
    cluster.ok("swarm", "update", "--task-history-limit", "2")
    assert cluster.get("/swarm")["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    cluster.ok("service", "create", "-d", "--name", "flaky", "--restart-delay", "100ms", "busybox", "sh", "-c",
               "sleep 0.3; exit 1")

    def failures_seen() -> int:
        return sum(1 for t in cluster.tasks("flaky") if t["Status"]["State"] == "failed")

    started = time.monotonic()
    wait_for("several restarts", lambda: time.monotonic() - started > 4 and failures_seen() >= 1)
    wait_for("history kept at 2 tasks", lambda: len(cluster.tasks("flaky")) <= 2, timeout=10)
    time.sleep(1)
    assert len(cluster.tasks("flaky")) <= 2
    bad = cluster.shoal("swarm", "update", "--task-history-limit", "lots")
    assert bad.code != 0
    assert cluster.get("/swarm")["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    assert json.dumps(cluster.get("/swarm"))


LEAVE_BOUND = 30.0  # seconds; a leave normally takes one or two


def test_leave_right_after_init_fifty_times_then_a_bounded_sigterm(tmp_path: Path) -> None:
    address = f"{_subnet()}.2"
    proc, state_dir, sock = playground.start_daemon("quick", tmp_path)
    try:
        playground.wait_for_socket(sock, proc)
        with playground.api(str(sock), timeout=LEAVE_BOUND) as api:
            for attempt in range(50):
                init = api.post("/swarm/init", json={"AdvertiseAddr": address, "ListenAddr": f"{address}:2377"})
                assert init.status_code == 200, (attempt, init.text)
                # The client's timeout is the bound: a leave that hangs fails the test.
                leave = api.post("/swarm/leave", params={"force": "1"})
                assert leave.status_code == 200, (attempt, leave.text)
                assert api.get("/swarm").status_code == 503  # not in a swarm any more
            assert api.post("/swarm/init", json={"AdvertiseAddr": address,
                                                 "ListenAddr": f"{address}:2377"}).status_code == 200
        # SIGTERM in the middle of work: the daemon exits in bounded time and leaves no etcd behind.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=LEAVE_BOUND + 10)
        wait_for("no etcd of this node", lambda: not playground.processes_under(tmp_path), timeout=15)
    finally:
        for pid in [proc.pid, *playground.processes_under(tmp_path)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
