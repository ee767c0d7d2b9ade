"""The service progress display: the pure decision functions and the polling loop around them."""

from __future__ import annotations

import io
from typing import Any

import pytest

from shoal.cli.progress import (
    LineRenderer,
    ProgressEvent,
    ProgressFailed,
    ProgressState,
    TerminalRenderer,
    progress_step,
    wait_on_service,
)
from shoal.timefmt import SECOND

NODES = [{"ID": "n1", "Status": {"State": "ready"}}, {"ID": "n2", "Status": {"State": "ready"}}]


def replicated(replicas: int, **extra: Any) -> dict:
    return {"ID": "svc1", "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}}}, **extra}


def global_service(**extra: Any) -> dict:
    return {"ID": "svc1", "Spec": {"Name": "agent", "Mode": {"Global": {}}}, **extra}


def task(slot: int, state: str, node: str = "n1", desired: str = "running", err: str = "") -> dict:
    return {"ID": f"t{slot}{state}", "Slot": slot, "NodeID": node, "DesiredState": desired,
            "Status": {"State": state, "Err": err}}


def lines(events: list[ProgressEvent]) -> list[str]:
    """What a pipe shows: bars are left out."""
    return [e.line() for e in events if not e.is_bar]


def test_replicated_service_converges_then_verifies() -> None:
    state = ProgressState("web")
    step = progress_step(state, replicated(2), [], NODES, now=0.0)
    assert lines(step.events) == ["overall progress: 0 out of 2 tasks", "1/2:  ", "2/2:  ",
                                  "overall progress: 0 out of 2 tasks"]
    assert not step.finished

    step = progress_step(state, replicated(2), [task(1, "running"), task(2, "preparing")], NODES, now=0.2)
    assert lines(step.events) == ["overall progress: 1 out of 2 tasks"]
    bars = [e for e in step.events if e.is_bar]
    assert [(b.id, b.text.strip(), b.current) for b in bars] == [("1/2", "running", 9), ("2/2", "preparing", 6)]

    step = progress_step(state, replicated(2), [task(1, "running"), task(2, "running")], NODES, now=1.0)
    assert lines(step.events) == ["overall progress: 2 out of 2 tasks",
                                  "verify: Waiting 5 seconds to verify that tasks are stable..."]
    step = progress_step(state, replicated(2), [task(1, "running"), task(2, "running")], NODES, now=2.5)
    assert lines(step.events) == ["verify: Waiting 4 seconds to verify that tasks are stable..."]
    step = progress_step(state, replicated(2), [task(1, "running"), task(2, "running")], NODES, now=5.9)
    assert lines(step.events) == ["verify: Waiting 1 seconds to verify that tasks are stable..."]
    step = progress_step(state, replicated(2), [task(1, "running"), task(2, "running")], NODES, now=6.0)
    assert lines(step.events) == ["verify: Service web converged"]
    assert step.finished and step.error is None


def test_monitor_period_comes_from_update_config() -> None:
    state = ProgressState("web")
    service = replicated(1, **{})
    service["Spec"]["UpdateConfig"] = {"Monitor": 2 * SECOND}
    step = progress_step(state, service, [task(1, "running")], NODES, now=0.0)
    assert "verify: Waiting 2 seconds to verify that tasks are stable..." in lines(step.events)
    assert progress_step(state, service, [task(1, "running")], NODES, now=2.0).finished


def test_lost_convergence_is_reported_and_restarts_the_wait() -> None:
    state = ProgressState("web")
    progress_step(state, replicated(1), [task(1, "running")], NODES, now=0.0)
    step = progress_step(state, replicated(1), [task(1, "failed", desired="shutdown", err="exit 1")], NODES, now=1.0)
    assert "verify: Detected task failure" in lines(step.events)
    assert "1/1: exit 1" in lines(step.events)
    step = progress_step(state, replicated(1), [task(1, "running")], NODES, now=2.0)
    assert "verify: Waiting 5 seconds to verify that tasks are stable..." in lines(step.events)
    assert not progress_step(state, replicated(1), [task(1, "running")], NODES, now=6.9).finished
    assert progress_step(state, replicated(1), [task(1, "running")], NODES, now=7.0).finished


def test_tasks_on_down_nodes_do_not_count() -> None:
    state = ProgressState("web")
    nodes = [{"ID": "n1", "Status": {"State": "down"}}, {"ID": "n2", "Status": {"State": "ready"}}]
    step = progress_step(state, replicated(2), [task(1, "running", node="n1"), task(2, "running", node="n2")],
                         nodes, now=0.0)
    assert "overall progress: 1 out of 2 tasks" in lines(step.events)


def test_lowest_desired_state_wins_per_slot() -> None:
    state = ProgressState("web")
    old = task(1, "running", desired="shutdown")
    new = task(1, "starting")
    step = progress_step(state, replicated(1), [old, new], NODES, now=0.0)
    assert lines(step.events)[-1] == "overall progress: 0 out of 1 tasks"
    assert [e.text.strip() for e in step.events if e.is_bar] == ["starting"]


def test_many_replicas_have_no_per_slot_lines() -> None:
    state = ProgressState("web")
    step = progress_step(state, replicated(25), [], NODES, now=0.0)
    assert lines(step.events) == ["overall progress: 0 out of 25 tasks"] * 2


def test_global_service_waits_for_tasks_then_counts_nodes() -> None:
    state = ProgressState("agent")
    step = progress_step(state, global_service(), [], NODES, now=0.0)
    assert lines(step.events) == ["overall progress: waiting for new tasks"]
    tasks = [task(0, "running", node="n1"), task(0, "pending", node="n2")]
    step = progress_step(state, global_service(), tasks, NODES, now=0.2)
    assert lines(step.events) == ["overall progress: 0 out of 2 tasks", "overall progress: 1 out of 2 tasks"]
    assert [e.id for e in step.events if e.is_bar] == ["n1", "n2"]
    tasks = [task(0, "running", node="n1"), task(0, "running", node="n2")]
    step = progress_step(state, global_service(), tasks, NODES, now=0.4)
    assert lines(step.events) == ["overall progress: 2 out of 2 tasks",
                                  "verify: Waiting 5 seconds to verify that tasks are stable..."]
    assert progress_step(state, global_service(), tasks, NODES, now=5.4).finished


def test_paused_update_is_an_error() -> None:
    state = ProgressState("web")
    service = replicated(2, UpdateStatus={"State": "paused", "Message": "update paused due to failure"})
    step = progress_step(state, service, [], NODES, now=0.0)
    assert step.error == "service update paused: update paused due to failure"


def test_rollback_started_is_shown_once_and_changes_the_overall_line() -> None:
    state = ProgressState("web")
    service = replicated(1, UpdateStatus={"State": "rollback_started", "Message": "update rolled back"})
    step = progress_step(state, service, [], NODES, now=0.0)
    assert lines(step.events)[:2] == ["rollback: update rolled back", "overall progress: rolling back update: 0 out of 1 tasks"]
    step = progress_step(state, service, [], NODES, now=0.2)
    assert "rollback: update rolled back" not in lines(step.events)
    paused = replicated(1, UpdateStatus={"State": "rollback_paused", "Message": "rollback paused"})
    assert progress_step(state, paused, [], NODES, now=0.4).error == "service rollback paused: rollback paused"


def test_rollback_completed_message_follows_converged() -> None:
    state = ProgressState("web")
    service = replicated(1, UpdateStatus={"State": "rollback_completed", "Message": "rollback completed"})
    progress_step(state, service, [task(1, "running")], NODES, now=0.0)
    step = progress_step(state, service, [task(1, "running")], NODES, now=5.0)
    assert lines(step.events) == ["verify: Service web converged", "rollback: rollback completed"]


def test_completed_update_before_convergence_ends_quietly() -> None:
    state = ProgressState("web")
    step = progress_step(state, replicated(1, UpdateStatus={"State": "completed"}), [], NODES, now=0.0)
    assert step.finished and step.events == []


def test_an_unknown_mode_is_refused() -> None:
    service = {"ID": "j", "Spec": {"Mode": {"CronJob": {}}}}
    assert progress_step(ProgressState("j"), service, [], NODES, now=0.0).error == "unrecognized service mode"


# ---- jobs -----------------------------------------------------------------------------------------------

def replicated_job(concurrent: int, total: int, iteration: int = 0) -> dict:
    return {"ID": "job1", "Spec": {"Name": "batch", "Mode": {"ReplicatedJob": {"MaxConcurrent": concurrent,
                                                                               "TotalCompletions": total}}},
            "JobStatus": {"JobIteration": {"Index": iteration}}}


def global_job(iteration: int = 0) -> dict:
    return {"ID": "job1", "Spec": {"Name": "sweep", "Mode": {"GlobalJob": {}}},
            "JobStatus": {"JobIteration": {"Index": iteration}}}


def job_task(slot: int, state: str, iteration: int = 0, node: str = "n1", desired: str = "running",
             err: str = "") -> dict:
    return {**task(slot, state, node, desired, err), "JobIteration": {"Index": iteration}}


def test_a_replicated_job_shows_its_completions_and_active_tasks_then_ends() -> None:
    state = ProgressState("batch")
    job = replicated_job(2, 3)
    step = progress_step(state, job, [], NODES, now=0.0)
    # docker's replicatedJobProgressUpdater: the counts (a bar, left out in a pipe), the active line, one line
    # per completion to come.
    assert lines(step.events) == ["active tasks: 0 out of 2 tasks", "1/3:  ", "2/3:  ", "3/3:  ",
                                  "active tasks: 0 out of 2 tasks"]
    assert [(e.id, e.text, e.current, e.total) for e in step.events if e.is_bar] == [
        ("job progress", "0 out of 3 complete", 0, 3), ("job progress", "0 out of 3 complete", 0, 3)]

    # An older run's tasks do not count; the lowest state of a slot is shown.
    tasks = [job_task(0, "complete"), job_task(0, "failed", desired="shutdown"), job_task(1, "running"),
             job_task(2, "complete", iteration=-5)]
    step = progress_step(state, job, tasks, NODES, now=0.2)
    assert lines(step.events) == ["active tasks: 1 out of 2 tasks"]
    assert [(e.id, e.text.strip()) for e in step.events if e.is_bar] == [
        ("1/3", "complete"), ("2/3", "running"), ("job progress", "1 out of 3 complete")]
    assert not step.finished and step.error is None

    done = [job_task(slot, "complete", desired="complete") for slot in range(3)]
    step = progress_step(state, job, done, NODES, now=0.4)
    assert lines(step.events)[-2:] == ["active tasks: 0 out of 0 tasks", "job complete"]
    assert step.finished  # no verify wait for a job


def test_a_job_whose_task_failed_for_good_ends_the_wait_with_one_error() -> None:
    state = ProgressState("batch")
    job = replicated_job(1, 3)
    progress_step(state, job, [], NODES, now=0.0)
    # Failed and to be restarted (history, desired shutdown): the wait goes on.
    step = progress_step(state, job, [job_task(0, "failed", desired="shutdown", err="task: non-zero exit (1)")],
                         NODES, now=0.2)
    assert step.error is None
    step = progress_step(state, job, [job_task(0, "failed", desired="complete", err="task: non-zero exit (1)")],
                         NODES, now=0.4)
    assert step.error == ("job cannot complete: task 1/3 failed and its restart policy gives up "
                          "(task: non-zero exit (1))")


def test_a_global_job_waits_for_its_tasks_then_counts_its_nodes() -> None:
    state = ProgressState("sweep")
    step = progress_step(state, global_job(1), [job_task(0, "complete", iteration=0)], NODES, now=0.0)
    assert lines(step.events) == ["job progress: waiting for tasks"]
    tasks = [job_task(0, "running", 1, node="n1"), job_task(0, "complete", 1, node="n2")]
    step = progress_step(state, global_job(1), tasks, NODES, now=0.2)
    assert [(e.id, e.text.strip()) for e in step.events] == [
        ("n1", "running"), ("n2", "complete"), ("job progress", "1 out of 2 complete")]
    # A node that joins later is not waited for (docker's rule).
    tasks = [job_task(0, "complete", 1, node=n) for n in ("n1", "n2")] + [job_task(0, "running", 1, node="n3")]
    step = progress_step(state, global_job(1), tasks, NODES, now=0.4)
    assert step.finished and lines(step.events)[-1] == "job complete"


class FakeClient:
    """Answers the three poll requests from a scripted list of task states."""

    def __init__(self, service: dict, task_script: list[list[dict]]) -> None:
        self.service = service
        self.task_script = task_script
        self.requests: list[tuple[str, Any]] = []

    def get(self, path: str, params: Any = None) -> Any:
        self.requests.append((path, params))
        if path.startswith("/services/"):
            return self.service
        if path == "/tasks":
            return self.task_script.pop(0) if len(self.task_script) > 1 else self.task_script[0]
        if path == "/nodes":
            return NODES
        raise AssertionError(path)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_on_service_prints_what_docker_prints_into_a_pipe() -> None:
    running = [task(1, "running"), task(2, "running")]
    client = FakeClient(replicated(2), [[], [task(1, "running")], running])
    clock = FakeTime()
    out = io.StringIO()
    wait_on_service(client, "web", out, tty=False, monotonic=clock.monotonic, sleep=clock.sleep)  # type: ignore[arg-type]
    printed = out.getvalue().splitlines()
    assert printed[:6] == ["overall progress: 0 out of 2 tasks", "1/2:  ", "2/2:  ",
                           "overall progress: 0 out of 2 tasks", "overall progress: 1 out of 2 tasks",
                           "overall progress: 2 out of 2 tasks"]
    waits = printed[6:-1]
    assert len(waits) == 25  # five polls per second for five seconds, as in the docker trace
    assert waits[0] == waits[4] == "verify: Waiting 5 seconds to verify that tasks are stable..."
    assert waits[-1] == "verify: Waiting 1 seconds to verify that tasks are stable..."
    assert printed[-1] == "verify: Service web converged"
    tasks_query = [params for path, params in client.requests if path == "/tasks"][0]
    assert tasks_query == {"filters": '{"_up-to-date":{"true":true},"service":{"svc1":true}}'}
    assert client.requests[-1][0] == "/services/web"


def test_wait_on_a_job_ends_when_it_completes() -> None:
    client = FakeClient(replicated_job(1, 2), [[job_task(0, "running")],
                                               [job_task(0, "complete"), job_task(1, "running")],
                                               [job_task(0, "complete"), job_task(1, "complete")]])
    clock = FakeTime()
    out = io.StringIO()
    wait_on_service(client, "batch", out, tty=False, monotonic=clock.monotonic, sleep=clock.sleep)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "active tasks: 0 out of 1 tasks", "1/2:  ", "2/2:  ", "active tasks: 1 out of 1 tasks",
        "active tasks: 1 out of 1 tasks", "active tasks: 0 out of 0 tasks", "job complete"]
    assert clock.now == pytest.approx(100.4)


def test_wait_on_a_job_that_cannot_complete_raises() -> None:
    client = FakeClient(replicated_job(1, 1), [[job_task(0, "rejected", desired="complete", err="no such image")]])
    clock = FakeTime()
    with pytest.raises(ProgressFailed, match=r"job cannot complete: task 1/1 rejected .*\(no such image\)"):
        wait_on_service(client, "batch", io.StringIO(), tty=False,  # type: ignore[arg-type]
                        monotonic=clock.monotonic, sleep=clock.sleep)


def test_wait_on_service_raises_when_the_update_pauses() -> None:
    client = FakeClient(replicated(1, UpdateStatus={"State": "paused", "Message": "task failed"}), [[]])
    clock = FakeTime()
    with pytest.raises(ProgressFailed, match="service update paused: task failed"):
        wait_on_service(client, "web", io.StringIO(), tty=False,  # type: ignore[arg-type]
                        monotonic=clock.monotonic, sleep=clock.sleep)


def test_ctrl_c_leaves_the_update_running() -> None:
    clock = FakeTime()

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    wait_on_service(FakeClient(replicated(1), [[]]), "web", out, tty=False,  # type: ignore[arg-type]
                    monotonic=clock.monotonic, sleep=interrupt)
    assert out.getvalue().splitlines()[-2:] == ["Operation continuing in background.",
                                                "Use `shoal service ps web` to check progress."]


def test_renderers() -> None:
    pipe = io.StringIO()
    renderer = LineRenderer(pipe)
    renderer.write(ProgressEvent("1/1", "running  ", 9, 9))
    renderer.write(ProgressEvent("overall progress", "1 out of 1 tasks"))
    assert pipe.getvalue() == "overall progress: 1 out of 1 tasks\n"

    terminal = io.StringIO()
    tty = TerminalRenderer(terminal)
    tty.write(ProgressEvent("overall progress", "0 out of 1 tasks"))
    tty.write(ProgressEvent("1/1", "running  ", 9, 9))
    tty.write(ProgressEvent("overall progress", "1 out of 1 tasks"))
    text = terminal.getvalue()
    # The third write goes back up two lines to redraw the first one in place.
    assert text.count("\n") == 2
    assert "\x1b[2A\x1b[2K\roverall progress: 1 out of 1 tasks\r\x1b[2B" in text
