"""The sim executor: simulated tasks that follow their command, behind the real worker."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from shoal.agent.executor.base import ExitStatusUnknown, TaskRejected
from shoal.agent.executor.sim import STOPPED_EXIT_CODE, SimExecutor, planned_exit
from shoal.agent.worker import Worker
from shoal.clock import SystemClock
from shoal.ids import new_id
from shoal.types import Doc
from tests.unit.agent_fixtures import Reports


def make_task(*argv: str) -> Doc:
    return {"ID": new_id(), "ServiceID": "svc", "Slot": 1, "NodeID": "n1", "DesiredState": "running",
            "Status": {"State": "assigned"}, "ServiceAnnotations": {"Name": "web"},
            "Spec": {"ContainerSpec": {"Image": "busybox", "Args": list(argv)}}}


@pytest.mark.parametrize("argv, planned", [
    (["sleep", "2.5"], (2.5, 0)),
    (["/bin/sleep", "0"], (0.0, 0)),
    (["true"], (0.0, 0)),
    (["false"], (0.0, 1)),
    (["exit", "3"], (0.0, 3)),
    (["nginx", "-g", "daemon off;"], (None, 0)),  # anything else runs until stopped
])
def test_a_simulated_task_does_what_its_command_says(argv: list[str], planned: tuple[float | None, int]) -> None:
    assert planned_exit(argv) == planned


@pytest.mark.parametrize("argv", [["sleep", "soon"], ["exit", "x"]])
def test_a_command_the_simulation_cannot_follow_is_rejected(argv: list[str]) -> None:
    with pytest.raises(TaskRejected):
        planned_exit(argv)


async def test_a_simulated_task_takes_any_field_of_the_spec() -> None:
    """It simulates the task, whatever the spec asks of a container (a benchmark may mimic a docker service)."""
    executor = SimExecutor(start_delay=0.001, rng=random.Random(1))
    task = make_task("true")
    task["Spec"]["ContainerSpec"].update(Hostname="web-1", TTY=True, Init=True, Sysctls={"a.b": "1"},
                                         Mounts=[{"Type": "bind", "Source": "/srv", "Target": "/srv"}])
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    assert await controller.wait() == 0


async def test_a_task_runs_until_stopped_and_then_ends_as_on_sigterm() -> None:
    executor = SimExecutor(start_delay=0.001, rng=random.Random(1))
    task = make_task("nginx")
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    assert controller.pid() > 0
    waiting = asyncio.ensure_future(controller.wait())
    await asyncio.sleep(0.05)
    assert not waiting.done()

    await controller.shutdown(10, "SIGTERM")

    assert await waiting == STOPPED_EXIT_CODE
    assert controller.pid() == 0


async def test_an_agent_restarted_in_the_same_process_adopts_its_running_tasks() -> None:
    executor = SimExecutor(start_delay=0.001)
    task = make_task("nginx")
    controller = executor.controller(task)
    await controller.start()

    assert executor.recover(task, controller.handle()) is controller
    await controller.shutdown(1, "SIGTERM")
    with pytest.raises(ExitStatusUnknown):
        executor.recover(task, controller.handle())


async def test_the_real_worker_runs_simulated_tasks_to_their_end(tmp_path: Path) -> None:
    reports = Reports()
    worker = Worker(tmp_path, SimExecutor(start_delay=0.001), reports, SystemClock())
    await worker.start()
    done, failing, forever = make_task("sleep", "0.05"), make_task("false"), make_task("nginx")
    try:
        await worker.assign([done, failing, forever], full=True)

        await reports.reach(done["ID"], "complete")
        failed = await reports.reach(failing["ID"], "failed")
        await reports.reach(forever["ID"], "running")
        assert failed["Err"] == "task: non-zero exit (1)"
        assert reports.states(done["ID"]) == ["accepted", "preparing", "starting", "running", "complete"]
    finally:
        await worker.stop(kill_tasks=True)
    assert reports.states(forever["ID"])[-1] == "shutdown"
