"""The worker with the process executor and real processes: lifecycle, reports, stop, logs, agent restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent import worker as worker_module
from shoal.agent.executor.base import Executor
from shoal.agent.executor.process import ProcessController, ProcessExecutor, process_alive, read_proc_stat
from shoal.agent.health import ERR_UNHEALTHY, unhealthy_error
from shoal.agent.taskdb import TaskDB, TaskRecord
from shoal.agent.worker import DRAIN_SECONDS, EXIT_UNKNOWN_AFTER_RESTART, Worker
from shoal.clock import SystemClock
from shoal.errors import NotFound
from shoal.ids import new_id
from shoal.mesh.userspace import accepts_connections
from shoal.spec import BACKEND_PORTS
from shoal.timefmt import MILLISECOND, SECOND, from_rfc3339
from shoal.types import Doc
from tests.unit.agent_fixtures import Reports, pids_with, shell_past_its_trap
from tests.unit.waiting import wait_until

DEADLINE = 10.0
SHORT_GRACE = 200 * MILLISECOND



def make_task(argv: list[str], desired: str = "running", **container_spec: object) -> Doc:
    spec = {"Image": "busybox:latest", "Command": argv[:1], "Args": argv[1:], "StopGracePeriod": SHORT_GRACE,
            **container_spec}
    return {"ID": new_id(), "ServiceID": new_id(), "Slot": 1, "NodeID": new_id(),
            "Spec": {"ContainerSpec": spec, "RestartPolicy": {"Condition": "any"}},
            "DesiredState": desired, "Status": {"State": "assigned"}, "ServiceAnnotations": {"Name": "web"}}


def with_desired(task: Doc, desired: str) -> Doc:
    return {**task, "DesiredState": desired}





class Node:
    """A node's state dir and the workers started on it (one per simulated agent process)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.workers: list[Worker] = []

    async def start_worker(self, reports: Reports, executor: Executor | None = None) -> Worker:
        worker = Worker(self.state_dir, executor or ProcessExecutor(self.state_dir), reports, SystemClock())
        await worker.start()
        self.workers.append(worker)
        return worker


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(tmp_path / "node")
    yield node
    for worker in reversed(node.workers):
        await worker.stop(kill_tasks=True)


def recorded_ids(state_dir: Path) -> set[str]:
    """The task ids the record on disk holds (read as another process would)."""
    with sqlite3.connect(state_dir / "tasks.db") as conn:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}


def sleeper(marker: str, *extra: str) -> list[str]:
    # `; true` keeps sh from replacing itself with sleep, so the marker ($0) stays in a live command line.
    return ["sh", "-c", "sleep 300; true", marker, *extra]


# ---- the lifecycle -------------------------------------------------------------------------------------------

async def test_task_reports_accepted_to_running_in_order(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(sleeper(marker))
    await worker.assign([task], full=True)
    running = await reports.reach(task["ID"], "running")
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running"]
    assert pids_with(marker) == [running["ContainerStatus"]["PID"]]
    assert from_rfc3339(running["Timestamp"]) == pytest.approx(time.time(), abs=60)
    assert running["Err"] == ""
    assert worker.running_task_ids() == {task["ID"]}
    # The same assignment again changes nothing.
    await worker.assign([task], full=True)
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running"]
    assert len(pids_with(marker)) == 1


async def test_exit_zero_completes(node: Node) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["sh", "-c", "exit 0"])
    await worker.assign([task], full=True)
    done = await reports.reach(task["ID"], "complete")
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running", "complete"]
    assert done["ContainerStatus"]["ExitCode"] == 0 and done["Err"] == ""
    assert worker.running_task_ids() == set()


async def test_non_zero_exit_fails_with_the_exit_code(node: Node) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["sh", "-c", "exit 3"])
    await worker.assign([task], full=False)
    failed = await reports.reach(task["ID"], "failed")
    assert failed["Err"] == "task: non-zero exit (3)"
    assert failed["ContainerStatus"]["ExitCode"] == 3


async def test_an_oom_kill_is_the_cause_in_the_tasks_error(node: Node) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"])
    task["Spec"]["Resources"] = {"Limits": {"MemoryBytes": 32 << 20}}
    await worker.assign([task], full=False)
    await wait_until(lambda: {"failed", "rejected"} & set(reports.states(task["ID"])))
    ended = reports.last(task["ID"])
    if ended["State"] == "rejected":
        pytest.skip(f"this host cannot enforce memory limits: {ended['Err']}")
    assert ended["Err"] == "task: non-zero exit (137): out of memory: OOM killed at its memory limit of 32MiB"
    assert ended["ContainerStatus"]["ExitCode"] == 137


async def test_missing_program_is_rejected(node: Node) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["no-such-program-shoal", "x"])
    await worker.assign([task], full=True)
    rejected = await reports.reach(task["ID"], "rejected")
    assert rejected["Err"].startswith("starting task: ")
    assert "no-such-program-shoal" in rejected["Err"]
    assert "running" not in reports.states(task["ID"])


async def test_image_names_the_program_when_no_command_is_given(node: Node) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task([], Image="docker.io/library/true:latest", Command=None, Args=None)
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "complete")


async def test_desired_shutdown_stops_with_sigkill_after_the_grace_period(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["sh", "-c", "trap '' TERM; sleep 300; true", marker])
    await worker.assign([task], full=True)
    pid = (await reports.reach(task["ID"], "running"))["ContainerStatus"]["PID"]
    await shell_past_its_trap(pid)
    before = time.monotonic()
    await worker.assign([with_desired(task, "shutdown")], full=True)
    stopped = await reports.reach(task["ID"], "shutdown")
    assert time.monotonic() - before >= SHORT_GRACE / 1e9
    assert stopped["Message"] == "shutdown"
    assert stopped["ContainerStatus"]["ExitCode"] == 128 + signal.SIGKILL
    assert pids_with(marker) == []
    assert read_proc_stat(pid) is None or read_proc_stat(pid).state == "Z"  # type: ignore[union-attr]
    assert worker.running_task_ids() == set()


async def test_stop_signal_from_the_spec_is_used(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    # Exits 0 on SIGUSR1 only; the long grace period shows it was not killed.
    task = make_task(["sh", "-c", "trap 'exit 0' USR1; sleep 300 & wait", marker],
                     StopSignal="SIGUSR1", StopGracePeriod=60 * 1_000_000_000)
    await worker.assign([task], full=True)
    pid = (await reports.reach(task["ID"], "running"))["ContainerStatus"]["PID"]
    await shell_past_its_trap(pid)
    await worker.assign([with_desired(task, "shutdown")], full=True)
    stopped = await reports.reach(task["ID"], "shutdown")
    assert stopped["ContainerStatus"]["ExitCode"] == 0


async def test_task_assigned_with_desired_shutdown_is_never_started(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(sleeper(marker), desired="shutdown")
    await worker.assign([task], full=True)
    assert reports.states(task["ID"]) == ["shutdown"]
    assert pids_with(marker) == []


async def test_terminal_task_is_not_restarted(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    already_failed = {**make_task(sleeper(marker)), "Status": {"State": "failed"}}
    await worker.assign([already_failed], full=True)
    done = make_task(["true"])
    await worker.assign([already_failed, done], full=True)
    await reports.reach(done["ID"], "complete")
    # Assigned again (the manager still lists it, with an older observed state): nothing happens.
    await worker.assign([already_failed, done], full=True)
    assert reports.states(already_failed["ID"]) == []
    assert reports.states(done["ID"]).count("running") == 1
    assert pids_with(marker) == []


async def test_full_assignment_without_a_task_stops_and_forgets_it(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    kept, dropped = make_task(sleeper(marker, "kept")), make_task(sleeper(marker, "dropped"))
    await worker.assign([kept, dropped], full=True)
    await reports.reach(kept["ID"], "running")
    dropped_pid = (await reports.reach(dropped["ID"], "running"))["ContainerStatus"]["PID"]
    summary = await worker.assign([kept], full=True)
    assert "forgetting 1" in summary
    await reports.reach(dropped["ID"], "shutdown")
    await wait_until(lambda: dropped_pid not in pids_with(marker))
    assert worker.running_task_ids() == {kept["ID"]}
    await wait_until(lambda: dropped["ID"] not in recorded_ids(node.state_dir))
    assert not (node.state_dir / "logs" / dropped["ID"]).exists()
    with pytest.raises(NotFound):
        worker.logs(dropped["ID"])


async def test_a_crashing_runner_fails_its_task_and_the_worker_carries_on(node: Node) -> None:
    class CrashOnPrepare(ProcessExecutor):
        def controller(self, task: Doc) -> ProcessController:
            controller = super().controller(task)
            if task["Spec"]["ContainerSpec"]["Args"] == ["crash"]:
                async def explode() -> None:
                    raise RuntimeError("boom")
                controller.prepare = explode  # type: ignore[method-assign]
            return controller

    reports = Reports()
    worker = await node.start_worker(reports, CrashOnPrepare(node.state_dir))
    crash, fine = make_task(["echo", "crash"]), make_task(["echo", "fine"])
    await worker.assign([crash, fine], full=True)
    failed = await reports.reach(crash["ID"], "failed")
    assert "boom" in failed["Err"]
    await reports.reach(fine["ID"], "complete")


# ---- logs ----------------------------------------------------------------------------------------------------

async def test_logs_tail_and_follow(node: Node, tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    go = tmp_path / "go"
    task = make_task(["sh", "-c", f'for i in 1 2 3 4 5; do echo "line $i"; done; echo warn >&2; '
                                  f'while [ ! -e {go} ]; do sleep 0.02; done; echo "after go"'])
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    log_dir = node.state_dir / "logs" / task["ID"]
    await wait_until(lambda: (log_dir / "stderr.log").exists() and (log_dir / "stderr.log").read_bytes() != b"")

    tail = [(stream, line) async for stream, _, line in worker.logs(task["ID"], tail=2, follow=False)]
    assert len(tail) == 2 and set(tail) <= {("stdout", b"line 5\n"), ("stdout", b"line 4\n"),
                                               ("stderr", b"warn\n")}
    everything = [(stream, line) async for stream, _, line in worker.logs(task["ID"])]
    assert [line for stream, line in everything if stream == "stdout"] == [b"line %d\n" % i for i in range(1, 6)]
    assert [line for stream, line in everything if stream == "stderr"] == [b"warn\n"]

    followed: list[bytes] = []

    async def follow() -> None:
        async for _, stamp, line in worker.logs(task["ID"], tail=1, follow=True):
            assert stamp > 0
            followed.append(line)

    follower = asyncio.ensure_future(follow())
    await wait_until(lambda: len(followed) == 1)
    go.touch()
    await reports.reach(task["ID"], "complete")
    # It ends by itself once the task has ended and the files are drained.
    await asyncio.wait_for(follower, DEADLINE)
    assert followed[-1] == b"after go\n"


async def test_logs_of_an_unknown_task_are_not_found(node: Node) -> None:
    worker = await node.start_worker(Reports())
    with pytest.raises(NotFound):
        worker.logs("nosuchtask")


# ---- agent restart -------------------------------------------------------------------------------------------

async def test_restarted_agent_readopts_a_running_process_without_a_second_copy(node: Node,
                                                                               marker: str) -> None:
    first_reports = Reports()
    first = await node.start_worker(first_reports)
    task = make_task(sleeper(marker))
    await first.assign([task], full=True)
    pid = (await first_reports.reach(task["ID"], "running"))["ContainerStatus"]["PID"]
    await first.stop(kill_tasks=False)
    assert pids_with(marker) == [pid]  # the agent stopped; the task did not

    second_reports = Reports()
    second = await node.start_worker(second_reports)
    assert second_reports.states(task["ID"]) == ["running"]
    assert second_reports.last(task["ID"])["ContainerStatus"]["PID"] == pid
    assert second.running_task_ids() == {task["ID"]}
    await second.assign([task], full=True)  # the dispatcher's full assignment after reconnecting
    assert pids_with(marker) == [pid]
    assert second_reports.states(task["ID"]) == ["running"]

    # The re-adopted task is still under control: a desired shutdown stops it.
    await second.assign([with_desired(task, "shutdown")], full=True)
    await second_reports.reach(task["ID"], "shutdown")
    await wait_until(lambda: pids_with(marker) == [])


AGENT_THAT_DIES = """
import asyncio, json, os, sys
from pathlib import Path
from shoal.agent.executor.process import ProcessExecutor
from shoal.agent.worker import Worker
from shoal.clock import SystemClock

async def main() -> None:
    state_dir, task = Path(sys.argv[1]), json.loads(sys.argv[2])
    running = asyncio.Event()
    def report(task_id, status):
        if status["State"] == "running":
            print(status["ContainerStatus"]["PID"], flush=True)
            running.set()
    worker = Worker(state_dir, ProcessExecutor(state_dir), report, SystemClock())
    await worker.start()
    await worker.assign([task], full=True)
    await running.wait()
    os._exit(0)  # the agent dies at once: no cleanup of any kind

asyncio.run(main())
"""


async def test_task_outlives_an_agent_process_that_died_and_is_readopted(node: Node, marker: str) -> None:
    task = make_task(["sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done", marker])
    repo = Path(__file__).resolve().parents[2]
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_THAT_DIES, str(node.state_dir), json.dumps(task),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(repo)})
    out, _ = await asyncio.wait_for(agent.communicate(), DEADLINE)
    pid = int(out)
    assert pids_with(marker) == [pid]
    stdout_log = node.state_dir / "logs" / task["ID"] / "stdout.log"
    size_when_agent_died = stdout_log.stat().st_size
    await wait_until(lambda: stdout_log.stat().st_size > size_when_agent_died)  # still running and logging

    reports = Reports()
    worker = await node.start_worker(reports)
    assert reports.states(task["ID"]) == ["running"]
    assert reports.last(task["ID"])["ContainerStatus"]["PID"] == pid
    await worker.assign([task], full=True)
    assert pids_with(marker) == [pid]
    lines = [line async for _, _, line in worker.logs(task["ID"], tail=1)]
    assert len(lines) == 1 and lines[0].startswith(b"tick ")
    await worker.assign([with_desired(task, "shutdown")], full=True)
    await reports.reach(task["ID"], "shutdown")
    await wait_until(lambda: pids_with(marker) == [])


async def test_restarted_agent_reports_failed_for_a_process_that_died_while_it_was_away(
        node: Node, marker: str) -> None:
    first_reports = Reports()
    first = await node.start_worker(first_reports)
    task = make_task(sleeper(marker))
    await first.assign([task], full=True)
    pid = (await first_reports.reach(task["ID"], "running"))["ContainerStatus"]["PID"]
    stat = read_proc_stat(pid)
    assert stat is not None
    await first.stop(kill_tasks=False)
    os.killpg(pid, signal.SIGKILL)
    await wait_until(lambda: not process_alive(pid, stat.start_ticks))

    second_reports = Reports()
    second = await node.start_worker(second_reports)
    failed = second_reports.last(task["ID"])
    assert failed["State"] == "failed" and failed["Err"] == EXIT_UNKNOWN_AFTER_RESTART
    assert second.running_task_ids() == set()
    # Assigned again, it is not restarted: a replacement is the manager's decision.
    await second.assign([task], full=True)
    assert second_reports.states(task["ID"]) == ["failed"]
    assert pids_with(marker) == []


async def test_readopted_process_that_exits_later_is_reported_failed_with_unknown_status(
        node: Node, marker: str) -> None:
    first = await node.start_worker(Reports())
    task = make_task(sleeper(marker))
    await first.assign([task], full=True)
    await wait_until(lambda: first.running_task_ids() == {task["ID"]})
    await first.stop(kill_tasks=False)

    reports = Reports()
    await node.start_worker(reports)
    (pid,) = pids_with(marker)
    os.killpg(pid, signal.SIGKILL)
    failed = await reports.reach(task["ID"], "failed")
    assert failed["Err"] == EXIT_UNKNOWN_AFTER_RESTART


async def test_restarted_agent_resends_final_states(node: Node) -> None:
    first_reports = Reports()
    first = await node.start_worker(first_reports)
    task = make_task(["sh", "-c", "exit 3"])
    await first.assign([task], full=True)
    await first_reports.reach(task["ID"], "failed")
    await first.stop(kill_tasks=False)
    second_reports = Reports()
    second = await node.start_worker(second_reports)
    assert second_reports.states(task["ID"]) == ["failed"]
    assert second.current_statuses()[task["ID"]]["Err"] == "task: non-zero exit (3)"


async def test_restarted_agent_resumes_a_task_it_was_preparing_unless_it_is_to_stop(node: Node,
                                                                                 marker: str) -> None:
    # What an agent that died while preparing two tasks left on disk.
    resume, drop = make_task(sleeper(marker, "resume")), make_task(sleeper(marker, "drop"), desired="shutdown")
    db = TaskDB(node.state_dir / "tasks.db")
    await db.load()
    for task in (resume, drop):
        db.put(TaskRecord(task=task, status={"State": "preparing", "Message": "preparing"}))
    await db.close()

    reports = Reports()
    await node.start_worker(reports)
    await reports.reach(resume["ID"], "running")
    await reports.reach(drop["ID"], "shutdown")
    assert reports.states(resume["ID"]) == ["starting", "running"]  # only forward from where it was
    assert reports.states(drop["ID"]) == ["shutdown"]
    (pid,) = pids_with(marker)
    assert b"resume" in Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_stop_with_kill_tasks_stops_everything_and_forgets_it(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(sleeper(marker))
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    await worker.stop(kill_tasks=True)
    assert reports.states(task["ID"])[-1] == "shutdown"
    assert pids_with(marker) == []
    assert recorded_ids(node.state_dir) == set()


# ---- health checks -------------------------------------------------------------------------------------------

INTERVAL = 100 * MILLISECOND


def health(command: str, retries: int = 3, timeout: int = 2 * SECOND, start_period: int = 0,
           interval: int = INTERVAL) -> Doc:
    return {"Test": ["CMD-SHELL", command], "Interval": interval, "Timeout": timeout, "Retries": retries,
            "StartPeriod": start_period}


def counted(count_file: Path, command: str) -> str:
    """A check command that also leaves a line in `count_file` each time it runs."""
    return f"echo run >> {count_file}; {command}"


def runs(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


async def test_task_stays_starting_until_its_health_check_passes(node: Node, marker: str, tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    ready, count = tmp_path / "ready", tmp_path / "count"
    task = make_task(sleeper(marker), Healthcheck=health(counted(count, f"test -e {ready}"), retries=1000))
    await worker.assign([task], full=True)
    await wait_until(lambda: runs(count) >= 3)
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting"]
    assert worker.running_task_ids() == set()
    assert len(pids_with(marker)) == 1
    ready.touch()
    running = await reports.reach(task["ID"], "running")
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running"]
    assert running["ContainerStatus"]["PID"] == pids_with(marker)[0]
    assert worker.running_task_ids() == {task["ID"]}


async def test_healthy_task_goes_from_starting_to_running_after_the_first_interval(node: Node,
                                                                                  marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(sleeper(marker), Healthcheck=health("true", interval=300 * MILLISECOND))
    await worker.assign([task], full=True)
    running = await reports.reach(task["ID"], "running")
    starting = [status for tid, status in reports.entries if tid == task["ID"] and status["State"] == "starting"]
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running"]
    # Docker runs the first check one interval after the start.
    assert from_rfc3339(running["Timestamp"]) - from_rfc3339(starting[0]["Timestamp"]) >= 0.3


async def test_failing_health_check_fails_the_task_after_retries_and_stops_it(node: Node, marker: str,
                                                                            tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    count = tmp_path / "count"
    task = make_task(sleeper(marker), Healthcheck=health(counted(count, "exit 1"), retries=2))
    before = time.monotonic()
    await worker.assign([task], full=True)
    failed = await reports.reach(task["ID"], "failed")
    assert time.monotonic() - before >= 2 * INTERVAL / 1e9
    assert runs(count) == 2
    # sh dies of the stop signal (SIGTERM): moby's words for it.
    assert failed["Err"] == unhealthy_error(128 + signal.SIGTERM)
    assert failed["Err"] == "task: non-zero exit (143): dockerexec: unhealthy container"
    assert failed["ContainerStatus"]["ExitCode"] == 128 + signal.SIGTERM
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "failed"]
    assert pids_with(marker) == []
    # No checking after the task ended.
    await asyncio.sleep(3 * INTERVAL / 1e9)
    assert runs(count) == 2


async def test_unhealthy_task_that_ignores_the_stop_signal_is_killed_after_the_grace_period(
        node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = make_task(["sh", "-c", "trap '' TERM; sleep 300; true", marker],
                     Healthcheck=health("exit 1", retries=1))
    await worker.assign([task], full=True)
    failed = await reports.reach(task["ID"], "failed")
    assert failed["Err"] == unhealthy_error(128 + signal.SIGKILL)
    assert pids_with(marker) == []


async def test_start_period_tolerates_early_failures(node: Node, marker: str, tmp_path: Path) -> None:
    # The task gets ready after a while; until then every check fails, and one counted failure is enough
    # to fail it (retries 1).
    ready = tmp_path / "ready"
    starts_slowly = ["sh", "-c", f"sleep 0.5; touch {ready}; sleep 300; true", marker]
    reports = Reports()
    worker = await node.start_worker(reports)
    tolerated = make_task(starts_slowly, Healthcheck=health(f"test -e {ready}", retries=1, start_period=30 * SECOND))
    await worker.assign([tolerated], full=True)
    await reports.reach(tolerated["ID"], "running")
    assert "failed" not in reports.states(tolerated["ID"])

    # The same without a start period: the first failed check fails it.
    ready.unlink()
    impatient = make_task(starts_slowly, Healthcheck=health(f"test -e {ready}", retries=1))
    await worker.assign([tolerated, impatient], full=True)
    failed = await reports.reach(impatient["ID"], "failed")
    assert ERR_UNHEALTHY in failed["Err"]
    assert "running" not in reports.states(impatient["ID"])


async def test_a_check_that_hangs_past_its_timeout_counts_as_failed(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    check_marker = f"{marker}-check"
    task = make_task(sleeper(marker), Healthcheck=health(f"sleep 300; true {check_marker}", retries=2,
                                                         timeout=100 * MILLISECOND))
    before = time.monotonic()
    await worker.assign([task], full=True)
    failed = await reports.reach(task["ID"], "failed")
    assert time.monotonic() - before < 5.0
    assert ERR_UNHEALTHY in failed["Err"]
    assert pids_with(marker) == []  # the task and the checks that hung


async def test_healthy_task_that_becomes_unhealthy_fails(node: Node, marker: str, tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    broken = tmp_path / "broken"
    task = make_task(sleeper(marker), Healthcheck=health(f"test ! -e {broken}", retries=2))
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    broken.touch()
    failed = await reports.reach(task["ID"], "failed")
    assert failed["Err"] == unhealthy_error(128 + signal.SIGTERM)
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running", "failed"]
    assert pids_with(marker) == []


async def test_none_means_no_health_check(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    # With a check this task would stay starting for a minute (the first check comes after the interval).
    task = make_task(sleeper(marker), Healthcheck={"Test": ["NONE"], "Interval": 60 * SECOND})
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "running"]


async def test_stop_while_starting_is_a_shutdown_and_ends_the_checks(node: Node, marker: str,
                                                                    tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    count = tmp_path / "count"
    task = make_task(sleeper(marker), Healthcheck=health(counted(count, "exit 1"), retries=1000))
    await worker.assign([task], full=True)
    await wait_until(lambda: runs(count) >= 1)
    await worker.assign([with_desired(task, "shutdown")], full=True)
    await reports.reach(task["ID"], "shutdown")
    assert reports.states(task["ID"]) == ["accepted", "preparing", "starting", "shutdown"]
    # A check already under way when the stop came may still count itself; after that, none starts.
    await asyncio.sleep(INTERVAL / 1e9)
    checks_run = runs(count)
    await asyncio.sleep(3 * INTERVAL / 1e9)
    assert runs(count) == checks_run
    assert pids_with(marker) == []


async def test_readopted_healthy_task_resumes_its_checks(node: Node, marker: str, tmp_path: Path) -> None:
    first_reports = Reports()
    first = await node.start_worker(first_reports)
    broken = tmp_path / "broken"
    task = make_task(sleeper(marker), Healthcheck=health(f"test ! -e {broken}", retries=2))
    await first.assign([task], full=True)
    await first_reports.reach(task["ID"], "running")
    await first.stop(kill_tasks=False)

    reports = Reports()
    await node.start_worker(reports)
    assert reports.states(task["ID"]) == ["running"]
    broken.touch()
    failed = await reports.reach(task["ID"], "failed")
    # Not our child any more: its exit code is unknown.
    assert failed["Err"] == ERR_UNHEALTHY
    assert pids_with(marker) == []


async def test_readopted_starting_task_stays_starting_until_healthy(node: Node, marker: str,
                                                                   tmp_path: Path) -> None:
    first_reports = Reports()
    first = await node.start_worker(first_reports)
    ready, count = tmp_path / "ready", tmp_path / "count"
    task = make_task(sleeper(marker), Healthcheck=health(counted(count, f"test -e {ready}"), retries=1000))
    await first.assign([task], full=True)
    await wait_until(lambda: runs(count) >= 1)
    await first.stop(kill_tasks=False)
    pid = pids_with(marker)

    reports = Reports()
    second = await node.start_worker(reports)
    assert reports.states(task["ID"]) == ["starting"]
    checks_before = runs(count)
    await wait_until(lambda: runs(count) >= checks_before + 2)
    assert reports.states(task["ID"]) == ["starting"]
    ready.touch()
    await reports.reach(task["ID"], "running")
    assert pids_with(marker) == pid
    assert second.running_task_ids() == {task["ID"]}


# ---- the task record -----------------------------------------------------------------------------------------

async def test_a_record_in_the_old_single_file_format_is_imported(node: Node, marker: str) -> None:
    # A daemon upgraded in place keeps its tasks: format 1 kept everything in tasks.json.
    task = make_task(sleeper(marker))
    node.state_dir.mkdir(parents=True)
    (node.state_dir / "tasks.json").write_text(json.dumps(
        {"Version": 1, "Tasks": {task["ID"]: {"Task": task, "Status": {"State": "preparing"}}}}))

    reports = Reports()
    await node.start_worker(reports)

    await reports.reach(task["ID"], "running")
    assert not (node.state_dir / "tasks.json").exists()
    assert recorded_ids(node.state_dir) == {task["ID"]}


async def test_a_task_wanted_ready_is_prepared_and_held_until_wanted_running(tmp_path: Path) -> None:
    """The new task of a stop-first update waits at "ready" until the manager raises it to running."""
    reports: list[tuple[str, str]] = []
    worker = Worker(tmp_path, ProcessExecutor(tmp_path), lambda tid, st: reports.append((tid, st["State"])),
                    SystemClock())
    await worker.start()
    task = {"ID": "held1", "ServiceID": "s", "Slot": 1, "DesiredState": "ready",
            "Spec": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "30"]}},
            "Status": {"State": "assigned"}}
    try:
        await worker.assign([task], full=True)
        await wait_until(lambda: ("held1", "ready") in reports)
        await asyncio.sleep(0.3)
        assert ("held1", "starting") not in reports and not worker.running_task_ids()
        await worker.assign([dict(task, DesiredState="running")], full=True)
        await wait_until(lambda: ("held1", "running") in reports)
        assert worker.running_task_ids() == {"held1"}
    finally:
        await worker.stop(kill_tasks=True)


# ---- published ports -----------------------------------------------------------------------------------------

LISTENER = """
import os, socket, sys, time
time.sleep(float(sys.argv[1]))  # not listening yet: the mesh must not hear of the task
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(os.environ["PORT"])))
s.listen()
while True:
    s.accept()[0].close()
"""


def published(task: Doc) -> Doc:
    task["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                   "PublishMode": "ingress"}]}
    return task


async def test_a_task_is_announced_to_the_mesh_only_once_its_port_accepts_connections(node: Node,
                                                                                        marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = published(make_task(["python3", "-c", LISTENER, "0.5", marker]))
    await worker.assign([task], full=True)
    running = await reports.reach(task["ID"], "running")
    assert BACKEND_PORTS not in running
    await wait_until(lambda: BACKEND_PORTS in reports.last(task["ID"]))
    [port] = reports.last(task["ID"])[BACKEND_PORTS]
    assert port["TargetPort"] == 80 and port["Protocol"] == "tcp"
    assert await accepts_connections("127.0.0.1", port["Port"])
    # Announced while running: the same state again, with the ports.
    assert reports.states(task["ID"])[-2:] == ["running", "running"]


async def test_a_mesh_backend_is_stopped_only_after_the_drain_delay(node: Node, marker: str) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    task = published(make_task(["python3", "-c", LISTENER, "0", marker]))
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    await wait_until(lambda: BACKEND_PORTS in reports.last(task["ID"]))
    before = time.monotonic()
    await worker.assign([with_desired(task, "shutdown")], full=True)
    await reports.reach(task["ID"], "shutdown")
    # Other nodes may still be sending it connections for a moment: it is not signalled before the delay.
    assert time.monotonic() - before >= DRAIN_SECONDS


async def test_an_unhealthy_backend_leaves_the_mesh_before_it_is_stopped(node: Node, marker: str,
                                                                         tmp_path: Path) -> None:
    reports = Reports()
    worker = await node.start_worker(reports)
    healthy = tmp_path / "healthy"
    healthy.touch()
    task = published(make_task(["python3", "-c", LISTENER, "0", marker],
                               Healthcheck=health(f"test -f {healthy}", retries=1)))
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    await wait_until(lambda: bool(reports.last(task["ID"]).get(BACKEND_PORTS)))
    healthy.unlink()
    await reports.reach(task["ID"], "failed")
    withdrawn = [status for tid, status in reports.entries
                 if tid == task["ID"] and status["State"] == "running" and status.get(BACKEND_PORTS) == []]
    assert withdrawn, reports.states(task["ID"])


async def test_a_task_not_listening_on_its_port_says_so_then_is_announced_when_it_does(
        node: Node, marker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "NOT_LISTENING_NOTICE", 0.2)
    reports = Reports()
    worker = await node.start_worker(reports)
    task = published(make_task(["python3", "-c", LISTENER, "1.5", marker]))
    await worker.assign([task], full=True)
    await reports.reach(task["ID"], "running")
    await wait_until(lambda: "not listening" in reports.last(task["ID"]).get("Message", ""))
    message = reports.last(task["ID"])["Message"]
    assert message.startswith("started; not listening on $PORT_80=") and BACKEND_PORTS not in reports.last(
        task["ID"])
    await wait_until(lambda: bool(reports.last(task["ID"]).get(BACKEND_PORTS)))
    assert reports.last(task["ID"])["Message"] == "started"
