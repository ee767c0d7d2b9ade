"""Health check decisions (pure, table tests) and the monitor loop driven by a scripted probe and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shoal.agent.executor.base import ProbeResult
from shoal.agent.health import (
    DEFAULT_INTERVAL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ERR_UNHEALTHY,
    HealthCheck,
    HealthMonitor,
    HealthState,
    HealthStatus,
    after_probe,
    health_check_of,
    next_probe_delay,
    unhealthy_error,
)
from shoal.clock import FakeClock
from shoal.timefmt import MILLISECOND, SECOND
from shoal.types import Doc

STARTING, HEALTHY, UNHEALTHY = HealthStatus.STARTING, HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


def task_with(healthcheck: Doc | None) -> Doc:
    spec: Doc = {"Image": "busybox", "Command": ["sleep", "300"]}
    if healthcheck is not None:
        spec["Healthcheck"] = healthcheck
    return {"ID": "t1", "Spec": {"ContainerSpec": spec}}


# ---- reading ContainerSpec.Healthcheck ------------------------------------------------------------------------

def test_shell_form_runs_through_sh_and_durations_are_nanoseconds() -> None:
    check = health_check_of(task_with({"Test": ["CMD-SHELL", "curl -f localhost || exit 1"],
                                       "Interval": 100 * MILLISECOND, "Timeout": 2 * SECOND, "Retries": 5,
                                       "StartPeriod": 10 * SECOND}))
    assert check == HealthCheck(command=("/bin/sh", "-c", "curl -f localhost || exit 1"), interval=0.1,
                                timeout=2.0, retries=5, start_period=10.0, start_interval=0.1)


def test_exec_form_runs_the_program_directly_and_zero_fields_take_dockers_defaults() -> None:
    check = health_check_of(task_with({"Test": ["CMD", "pg_isready", "-q"], "Interval": 0, "Retries": 0}))
    assert check == HealthCheck(command=("pg_isready", "-q"), interval=DEFAULT_INTERVAL, timeout=DEFAULT_TIMEOUT,
                                retries=DEFAULT_RETRIES, start_period=0.0, start_interval=DEFAULT_INTERVAL)
    assert (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RETRIES) == (30.0, 30.0, 3)


def test_start_interval_is_used_when_given() -> None:
    check = health_check_of(task_with({"Test": ["CMD", "true"], "Interval": 10 * SECOND,
                                       "StartInterval": SECOND}))
    assert check is not None and (check.interval, check.start_interval) == (10.0, 1.0)


@pytest.mark.parametrize("healthcheck", [
    None,
    {},
    {"Test": []},
    {"Test": ["NONE"], "Interval": SECOND},
    {"Interval": SECOND, "Retries": 2},  # settings without a test: a process has no image to inherit one from
    {"Test": ["CMD"]},
    {"Test": ["WHATEVER", "true"]},  # Docker ignores an unknown test type
])
def test_no_check(healthcheck: Doc | None) -> None:
    assert health_check_of(task_with(healthcheck)) is None


# ---- deciding -------------------------------------------------------------------------------------------------

CHECK = HealthCheck(command=("true",), interval=1.0, timeout=1.0, retries=3, start_period=10.0, start_interval=1.0)


@pytest.mark.parametrize("state, passed, since_start, expected", [
    (HealthState(STARTING, 0), True, 0.5, HealthState(HEALTHY, 0)),
    (HealthState(HEALTHY, 2), True, 50.0, HealthState(HEALTHY, 0)),
    # Failures while starting inside the start period do not count.
    (HealthState(STARTING, 0), False, 9.9, HealthState(STARTING, 0)),
    (HealthState(STARTING, 2), False, 9.9, HealthState(STARTING, 2)),
    # After it, they do.
    (HealthState(STARTING, 0), False, 10.0, HealthState(STARTING, 1)),
    (HealthState(STARTING, 2), False, 11.0, HealthState(UNHEALTHY, 3)),
    # Once healthy, the start period is over even if its time is not.
    (HealthState(HEALTHY, 0), False, 5.0, HealthState(HEALTHY, 1)),
    (HealthState(HEALTHY, 2), False, 5.0, HealthState(UNHEALTHY, 3)),
])
def test_after_probe(state: HealthState, passed: bool, since_start: float, expected: HealthState) -> None:
    assert after_probe(state, CHECK, passed, since_start) == expected


def test_one_retry_means_the_first_counted_failure_is_unhealthy() -> None:
    check = HealthCheck(command=("true",), retries=1)
    assert after_probe(HealthState(), check, False, 0.0) == HealthState(UNHEALTHY, 1)


@pytest.mark.parametrize("check, status, since_start, delay", [
    (HealthCheck(("true",), interval=2.0), STARTING, 0.0, 2.0),
    (HealthCheck(("true",), interval=2.0), HEALTHY, 100.0, 2.0),
    # During the start period a starting task is checked every start interval...
    (HealthCheck(("true",), interval=10.0, start_period=60.0, start_interval=1.0), STARTING, 5.0, 1.0),
    # ...a healthy one every interval...
    (HealthCheck(("true",), interval=10.0, start_period=60.0, start_interval=1.0), HEALTHY, 5.0, 10.0),
    # ...and the end of the start period is not overshot.
    (HealthCheck(("true",), interval=10.0, start_period=60.0, start_interval=10.0), STARTING, 57.0, 3.0),
    (HealthCheck(("true",), interval=10.0, start_period=60.0, start_interval=1.0), STARTING, 60.0, 10.0),
])
def test_next_probe_delay(check: HealthCheck, status: HealthStatus, since_start: float, delay: float) -> None:
    assert next_probe_delay(check, status, since_start) == pytest.approx(delay)


def test_unhealthy_error_is_mobys() -> None:
    assert ERR_UNHEALTHY == "dockerexec: unhealthy container"
    assert unhealthy_error(143) == "task: non-zero exit (143): dockerexec: unhealthy container"
    assert unhealthy_error(None) == "dockerexec: unhealthy container"
    assert unhealthy_error(0) == "dockerexec: unhealthy container"


# ---- the monitor loop -----------------------------------------------------------------------------------------

class Scripted:
    """A probe that answers from a script of exit codes (or exceptions) and a fake clock that sleeps move."""

    def __init__(self, codes: list[int | Exception], probe_seconds: float = 0.0) -> None:
        self.codes = list(codes)
        self.clock = FakeClock()
        self.probe_seconds = probe_seconds
        self.sleeps: list[float] = []
        self.probed_at: list[float] = []
        self.commands: list[tuple[tuple[str, ...], float]] = []

    async def probe(self, command: Sequence[str], timeout: float) -> ProbeResult:
        self.probed_at.append(self.clock.now())
        self.commands.append((tuple(command), timeout))
        self.clock.advance(self.probe_seconds)
        if not self.codes:
            raise AssertionError("probed more often than scripted")
        code = self.codes.pop(0)
        if isinstance(code, Exception):
            raise code
        return ProbeResult(exit_code=code, output=f"exit {code}")

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)


def monitor_for(script: Scripted, check: HealthCheck, changes: list[HealthStatus],
                state: HealthState | None = None) -> HealthMonitor:
    return HealthMonitor("task t1", check, script.probe, script.clock.now, script.clock.now(), state=state,
                         on_change=changes.append, sleep=script.sleep)


async def test_monitor_reports_healthy_then_unhealthy_after_retries_consecutive_failures() -> None:
    script = Scripted([1, 0, 1, 0, 1, 1])
    changes: list[HealthStatus] = []
    check = HealthCheck(command=("/bin/sh", "-c", "probe"), interval=2.0, timeout=0.5, retries=2)
    final = await monitor_for(script, check, changes).run()
    assert final == HealthState(UNHEALTHY, 2)
    assert changes == [HEALTHY, UNHEALTHY]
    # The first check comes one interval after the start; the interval runs from the end of a check.
    assert script.sleeps == [2.0] * 6
    assert script.commands[0] == (("/bin/sh", "-c", "probe"), 0.5)


async def test_monitor_ignores_failures_in_the_start_period_while_starting() -> None:
    script = Scripted([1, 1, 1, 1, 0, 1, 1])
    changes: list[HealthStatus] = []
    check = HealthCheck(command=("x",), interval=1.0, retries=2, start_period=4.5, start_interval=1.0)
    final = await monitor_for(script, check, changes).run()
    assert changes == [HEALTHY, UNHEALTHY]
    assert final.status == UNHEALTHY
    assert len(script.probed_at) == 7  # four ignored failures, a pass, two counted failures


async def test_monitor_fails_a_task_never_healthy_once_its_start_period_is_over() -> None:
    script = Scripted([1, 1, 1, 1])
    changes: list[HealthStatus] = []
    check = HealthCheck(command=("x",), interval=1.0, retries=2, start_period=2.5, start_interval=1.0)
    await monitor_for(script, check, changes).run()
    assert changes == [UNHEALTHY]
    # At 1 and 2 (ignored), at 2.5 (the end of the start period: counted) and 3.5.
    start = script.probed_at[0] - 1.0
    assert [t - start for t in script.probed_at] == pytest.approx([1.0, 2.0, 2.5, 3.5])


async def test_a_probe_that_raises_counts_as_a_failure() -> None:
    script = Scripted([RuntimeError("executor bug"), 0])
    changes: list[HealthStatus] = []
    check = HealthCheck(command=("x",), interval=1.0, retries=2)
    monitor = monitor_for(script, check, changes)
    assert await monitor.probe_once() == "exit -1: starting (failing streak 1/2)"
    assert monitor.results[-1].output == "health check error: executor bug"
    assert await monitor.probe_once() == "exit 0: healthy (failing streak 0/2)"
    assert changes == [HEALTHY]


async def test_a_resumed_healthy_monitor_counts_failures_at_once() -> None:
    script = Scripted([1, 1])
    changes: list[HealthStatus] = []
    check = HealthCheck(command=("x",), interval=1.0, retries=2, start_period=60.0)
    final = await monitor_for(script, check, changes, state=HealthState(HEALTHY)).run()
    assert final == HealthState(UNHEALTHY, 2)
    assert changes == [UNHEALTHY]
