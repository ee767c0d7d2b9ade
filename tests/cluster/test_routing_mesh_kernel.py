"""The routing mesh's kernel data path (nftables DNAT) on a three-node swarm: the same promises as the
userspace path. The nodes share this machine's network namespace, so each node's table matches only its own
address; the test checks that no table is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from shoal import playground
from shoal.mesh.kernel import kernel_available, table_name
from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for
from tests.cluster.test_routing_mesh import HTTPD, Load, answers, refused, serving

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(kernel_available() is not None, reason=f"no kernel path: {kernel_available()}")]


def shoal_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split()[-1].startswith("shoal_")}


@pytest.fixture
def kernel_mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = make_cluster(tmp_path_factory, routing_mesh="kernel")
    tables = {table_name(node_id) for node_id in cluster.node_ids().values()}
    try:
        yield cluster
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(cluster, lines=60)
        cluster.down()
        # A table a killed daemon left behind must not outlive the test (it would catch later clusters' traffic).
        for table in tables & shoal_tables():
            subprocess.run(["nft", "delete", "table", "ip", table], check=False)


def test_kernel_rules_spread_follow_tasks_and_go_with_the_daemons(kernel_mesh: Cluster) -> None:
    cluster = kernel_mesh
    tables = {table_name(node_id) for node_id in cluster.node_ids().values()}
    assert tables <= shoal_tables()
    assert "kernel data path" in (cluster.base / "worker2" / "daemon.log").read_text()
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "2", "-p", "8090:80",
               "busybox", "sh", "-c", HTTPD)
    ids = serving(cluster, "web", 8090, 2)
    for node in cluster.nodes:
        # Every node gets the table at the same time as the manager, give or take a few milliseconds.
        wait_for(f"both tasks answering through {node.name}",
                 lambda a=node.address: set(answers(a, 8090, 10)) == ids, timeout=5)

    # While a node's daemon restarts (its tasks running on), its rules keep serving the published port.
    worker2 = cluster.node("worker2")
    os.kill(worker2.pid, signal.SIGTERM)
    wait_for("worker2's daemon to stop", lambda: not playground._alive(worker2.pid), timeout=20)
    assert set(answers(worker2.address, 8090, 10)) == ids
    cluster.restart("worker2")

    # A killed task leaves the rules within a heartbeat: no request fails after that.
    victim = sorted(ids)[0]
    for pid in cluster.task_processes()[victim]:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)  # one heartbeat period: what the promise is measured against
    survivor = answers(cluster.manager.address, 8090, 10)
    assert victim not in survivor and sum(survivor.values()) == 10

    # No request fails while the service is scaled down.
    serving(cluster, "web", 8090, 2)
    with Load([n.address for n in cluster.nodes], 8090) as load:
        cluster.ok("service", "scale", "web=1", timeout=120)
        serving(cluster, "web", 8090, 1)
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: {load.failures[:5]}"
    assert load.total > 20

    # Without backends a connection is refused at once instead of hanging.
    cluster.ok("service", "scale", "web=0", timeout=120)
    wait_for("refused without backends", lambda: refused(cluster.manager.address, 8090))

    cluster.down()
    assert not tables & shoal_tables(), "a stopped daemon left its nftables table"
