"""Jobs on a three-node swarm with the process executor: a replicated job runs its completions at most
MaxConcurrent at a time and never again, a global job once per node, an update runs a job again; the shoal CLI
and the real docker CLI both follow a job to its end."""

from __future__ import annotations

import re

import pytest

from tests.cluster.conftest import Cluster, Sampler, wait_for
from tests.cluster.test_docker_cli import DOCKERS, DockerCLI

pytestmark = pytest.mark.cluster


class Concurrency(Sampler):
    """The most task processes seen alive at once."""

    interval = 0.05

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.most = 0

    def sample(self) -> None:
        self.most = max(self.most, len(self.cluster.task_processes()))


def row_of(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if re.search(rf"\s{re.escape(name)}\s", line))


def complete_tasks(cluster: Cluster, service: str) -> dict[str, dict]:
    return {t["ID"]: t for t in cluster.tasks(service)
            if t["Status"]["State"] == "complete" and t["DesiredState"] == "complete"}


def test_jobs_run_to_completion_once_and_again_after_an_update(cluster: Cluster) -> None:
    # Without -d the CLI follows the job to its end, as docker does.
    with Concurrency(cluster) as seen:
        out = cluster.ok("service", "create", "--name", "batch", "--mode", "replicated-job", "--replicas", "5",
                         "--max-concurrent", "2", "busybox", "sh", "-c", "sleep 0.5")
    assert out.splitlines()[-1] == "job complete", out
    assert 1 <= seen.most <= 2
    first_run = complete_tasks(cluster, "batch")
    assert sorted(t["Slot"] for t in first_run.values()) == [0, 1, 2, 3, 4]
    assert {t["JobIteration"]["Index"] for t in first_run.values()} == {0}
    assert "0/2 (5/5 completed)" in row_of(cluster.ok("service", "ls"), "batch")
    ps = cluster.ok("service", "ps", "batch").splitlines()[1:]
    assert len(ps) == 5 and all(row.split()[4:6] == ["Complete", "Complete"] for row in ps), ps

    # A global job: once on each of the three nodes.
    out = cluster.ok("service", "create", "--name", "sweep", "--mode", "global-job", "busybox", "true")
    assert out.splitlines()[-1] == "job complete", out
    swept = complete_tasks(cluster, "sweep")
    assert sorted(t["NodeID"] for t in swept.values()) == sorted(cluster.node_ids().values())
    assert "0/0 (3/3 completed)" in row_of(cluster.ok("service", "ls"), "sweep")
    # Meanwhile the replicated job's completions stayed as they were: nothing ran again.
    assert set(complete_tasks(cluster, "batch")) == set(first_run) and len(cluster.tasks("batch")) == 5

    # An update runs the job again, as a new iteration; the old run's tasks are removed.
    out = cluster.ok("service", "update", "--force", "batch")
    assert out.splitlines()[-1] == "job complete", out
    second_run = wait_for("the first run's tasks removed", lambda: (
        tasks if len(tasks := cluster.tasks("batch")) == 5 else None))
    assert {t["JobIteration"]["Index"] for t in second_run} == {1}
    assert all(t["Status"]["State"] == "complete" for t in second_run)
    assert not set(first_run) & {t["ID"] for t in second_run}
    assert "0/2 (5/5 completed)" in row_of(cluster.ok("service", "ls"), "batch")


def test_a_job_whose_tasks_fail_for_good_ends_the_wait_with_an_error(cluster: Cluster) -> None:
    result = cluster.shoal("service", "create", "--name", "doomed", "--mode", "replicated-job",
                           "--restart-condition", "none", "busybox", "sh", "-c", "exit 3")
    assert result.code == 1
    assert result.err.strip().endswith("job cannot complete: task 1/1 failed and its restart policy gives up "
                                       "(task: non-zero exit (3))"), result.err
    assert "0/1 (0/1 completed)" in row_of(cluster.ok("service", "ls"), "doomed")


@pytest.mark.skipif(not DOCKERS, reason="no docker CLI installed")
def test_the_docker_cli_follows_a_replicated_job_to_its_end(cluster: Cluster) -> None:
    docker = DockerCLI(DOCKERS[-1], cluster)  # a current CLI (the job progress came with API 1.41)
    out = docker.ok("service", "create", "--name", "dbatch", "--mode", "replicated-job", "--replicas", "3",
                    "--max-concurrent", "2", "busybox", "sh", "-c", "sleep 0.3")
    assert out.splitlines()[-1] == "job complete", out
    ls = docker.ok("service", "ls")
    assert re.search(r"dbatch\s+replicated job\s+0/2 \(3/3 completed\)", ls), ls
    ps = docker.ok("service", "ps", "dbatch").splitlines()[1:]
    assert len(ps) == 3 and all("Complete" in row for row in ps), ps
    # Scaling a replicated job sets its completions, and runs it again.
    out = docker.ok("service", "scale", "dbatch=4")
    assert out.splitlines()[0] == "dbatch scaled to 4" and out.splitlines()[-1] == "job complete", out
    assert re.search(r"dbatch\s+replicated job\s+0/2 \(4/4 completed\)", docker.ok("service", "ls"))
