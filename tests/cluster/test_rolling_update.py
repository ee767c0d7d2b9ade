"""Rolling updates and rollbacks with the process executor (the seed's second half)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shoal.timefmt import from_rfc3339
from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD = ["sleep", "600"]
NEW = ["sleep", "601"]


def args_of(task: dict[str, Any]) -> list[str]:
    return list(task["Spec"]["ContainerSpec"].get("Args") or [])


def update_state(cluster: Cluster, name: str) -> str:
    return (cluster.get(f"/services/{name}").get("UpdateStatus") or {}).get("State", "")


def test_seed_scenario_two_batches_spaced_by_the_delay(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--replicas", "4", "--name", "myweb3", "--update-delay", "2s",
               "--update-parallelism", "2", "busybox", *OLD)
    cluster.wait_running("myweb3", 4)
    out = cluster.ok("service", "update", "--args", " ".join(NEW), "myweb3")
    assert "overall progress: 4 out of 4 tasks" in out and "verify: Service myweb3 converged" in out
    running = cluster.running("myweb3")
    assert len(running) == 4 and all(args_of(t) == NEW for t in running)
    # Two batches of two: the second started at least the delay after the first was running.
    started = sorted(from_rfc3339(t["CreatedAt"]) for t in running)
    first_running = max(from_rfc3339(t["Status"]["ShoalRunningSince"]) if "ShoalRunningSince" in t["Status"]
                        else from_rfc3339(t["Status"]["Timestamp"]) for t in running
                        if from_rfc3339(t["CreatedAt"]) - started[0] < 1.0)
    assert started[1] - started[0] < 1.0 and started[3] - started[2] < 1.0
    assert started[2] - first_running >= 2.0 - 0.05, (started, first_running)
    assert update_state(cluster, "myweb3") == "completed"
    # The replaced tasks stay as history rows.
    ps = cluster.ok("service", "ps", "myweb3")
    assert ps.count(" \\_ myweb3.") == 4
    pretty = cluster.ok("service", "inspect", "--pretty", "myweb3")
    assert "Parallelism:\t2" in pretty and "Delay:\t\t2s" in pretty and "update completed" in pretty
    # An update with no change replaces nothing.
    before = {t["ID"] for t in cluster.tasks("myweb3")}
    cluster.ok("service", "update", "-d", "myweb3")
    time.sleep(1)
    assert {t["ID"] for t in cluster.tasks("myweb3")} == before
    # service rollback returns to the previous spec.
    out = cluster.ok("service", "rollback", "myweb3")
    assert "rollback:" in out
    wait_for("all tasks back on the old command", lambda: (r := cluster.running("myweb3")) and len(r) == 4
             and all(args_of(t) == OLD for t in r))
    wait_for("rollback completed", lambda: update_state(cluster, "myweb3") == "rollback_completed")


@pytest.mark.parametrize("action", ["pause", "continue", "rollback"])
def test_a_failing_new_version_with_each_failure_action(cluster: Cluster, action: str) -> None:
    cluster.ok("service", "create", "-d", "--replicas", "3", "--name", "web", "--update-failure-action", action,
               "--update-monitor", "2s", "--restart-delay", "100ms", "busybox", *OLD)
    cluster.wait_running("web", 3)
    result = cluster.shoal("service", "update", "--args", "sh -c 'exit 7'", "web", timeout=120)
    if action == "pause":
        assert result.code != 0 and "update paused" in result.err
        assert update_state(cluster, "web") == "paused"
        message = cluster.get("/services/web")["UpdateStatus"]["Message"]
        assert "update paused due to failure or early termination of task" in message
        # The update stopped after the first slot: the other two still run the old command.
        assert sum(args_of(t) == OLD for t in cluster.running("web")) == 2
    elif action == "continue":
        wait_for("every slot tried the new version",
                 lambda: all(any(args_of(t) != OLD for t in cluster.tasks("web") if t["Slot"] == s) for s in (1, 2, 3)))
        assert update_state(cluster, "web") != "paused"
    else:
        # The CLI follows the rollback, then reports the update as failed.
        assert result.code != 0 and "service update rolled back" in result.err, (result.out, result.err)
        assert "rollback: update rolled back due to failure or early termination of task" in result.out
        wait_for("automatic rollback completed", lambda: update_state(cluster, "web") == "rollback_completed",
                 timeout=60)
        running = cluster.wait_running("web", 3)
        assert all(args_of(t) == OLD for t in running)
        assert cluster.get("/services/web")["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == OLD


def test_start_first_keeps_the_replica_count(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--replicas", "2", "--name", "web", "--update-order", "start-first",
               "--update-monitor", "1s", "busybox", *OLD)
    cluster.wait_running("web", 2)
    cluster.ok("service", "update", "-d", "--args", " ".join(NEW), "web")
    lowest = 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = cluster.running("web")
        lowest = min(lowest, len(running))
        if len(running) == 2 and all(args_of(t) == NEW for t in running):
            break
        time.sleep(0.05)
    assert lowest >= 2
    assert all(args_of(t) == NEW for t in cluster.running("web"))


def test_a_failing_health_check_pauses_the_update(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--replicas", "2", "--name", "web", "--health-cmd", "true",
               "--health-interval", "200ms", "--health-retries", "2", "--restart-delay", "100ms", "busybox", *OLD)
    cluster.wait_running("web", 2)
    result = cluster.shoal("service", "update", "--health-cmd", "false", "web", timeout=120)
    assert result.code != 0 and "update paused" in result.err
    failed = [t for t in cluster.tasks("web") if t["Status"]["State"] == "failed"]
    assert failed and all("unhealthy container" in t["Status"]["Err"] for t in failed)
    # One slot still runs the healthy old version.
    assert len(cluster.running("web")) >= 1


def test_bad_update_input_is_refused(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "busybox", *OLD)
    before = cluster.get("/services/web")
    for args in (["--update-parallelism", "-1"], ["--update-delay", "soon"], ["--update-max-failure-ratio", "1.5"],
                 ["--update-failure-action", "explode"], ["--rollback-failure-action", "rollback"],
                 ["--update-order", "sideways"]):
        result = cluster.shoal("service", "update", *args, "web")
        assert result.code != 0, args
        assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    no_previous = cluster.shoal("service", "rollback", "web")
    assert no_previous.code != 0 and "does not have a previous spec" in no_previous.err
    assert cluster.get("/services/web") == before
