"""Health checks: a task's `ContainerSpec.Healthcheck` run beside it, with Docker's semantics.

The check command runs every interval (the first run one interval after the task started); each run is killed
after its timeout. Exit 0 is a pass; anything else (a timeout, a check that cannot start) is a failure. Until the
first pass the task is `starting`; a pass makes it `healthy` and resets the failing streak; `retries` failures in
a row make it `unhealthy`. Failures during the start period do not count while the task is still starting
(a pass ends the start period early). During the start period the check runs every `StartInterval` (defaulting
to the interval), and once more when the start period ends if that comes before the next interval.

The decisions (`after_probe`, `next_probe_delay`) are pure functions of the check, the state and the elapsed
time; `HealthMonitor` is the loop that sleeps, runs the probe and applies them. In swarm mode a task stays in
state `starting` until it is healthy and is failed with Docker's error when it becomes unhealthy; the worker
does that with what the monitor tells it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from shoal.agent.executor.base import ProbeResult
from shoal.timefmt import SECOND
from shoal.types import Doc

log = logging.getLogger(__name__)

# Docker's defaults for a zero (unset) field of HealthConfig.
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_START_PERIOD = 0.0
# How many recent probe results a monitor keeps (Docker keeps 5 in State.Health.Log).
RESULTS_KEPT = 5
# The error moby's swarm executor gives a task whose container became unhealthy (ErrContainerUnhealthy).
ERR_UNHEALTHY = "dockerexec: unhealthy container"
SHELL = ("/bin/sh", "-c")

Probe = Callable[[Sequence[str], float], Awaitable[ProbeResult]]
Sleep = Callable[[float], Awaitable[None]]


class HealthStatus(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class HealthCheck:
    """A task's health check, durations in seconds with Docker's defaults applied."""

    command: tuple[str, ...]  # the argv to run: CMD-SHELL goes through /bin/sh -c
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    start_period: float = DEFAULT_START_PERIOD
    start_interval: float = DEFAULT_INTERVAL


def _seconds(value: object, default: float) -> float:
    try:
        nanoseconds = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default
    return nanoseconds / SECOND if nanoseconds > 0 else default


def health_check_of(task: Doc) -> HealthCheck | None:
    """The task's health check, or None when it has none: no Healthcheck, no Test (a process has no image to
    inherit one from), ["NONE"], or a test type Docker does not know (ignored with a warning, as Docker does)."""
    spec = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
    config = spec.get("Healthcheck") or {}
    test = [str(part) for part in (config.get("Test") or [])]
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL" and len(test) > 1:
        command: tuple[str, ...] = (*SHELL, *test[1:])
    elif test[0] == "CMD" and len(test) > 1:
        command = tuple(test[1:])
    else:
        log.warning("task %s: health check %r ignored: expected [\"CMD\", …] or [\"CMD-SHELL\", …]",
                    task.get("ID"), test)
        return None
    interval = _seconds(config.get("Interval"), DEFAULT_INTERVAL)
    retries = config.get("Retries")
    return HealthCheck(
        command=command,
        interval=interval,
        timeout=_seconds(config.get("Timeout"), DEFAULT_TIMEOUT),
        retries=int(retries) if isinstance(retries, int) and retries > 0 else DEFAULT_RETRIES,
        start_period=_seconds(config.get("StartPeriod"), DEFAULT_START_PERIOD),
        start_interval=_seconds(config.get("StartInterval"), interval),
    )


@dataclass(frozen=True)
class HealthState:
    status: HealthStatus = HealthStatus.STARTING
    failing_streak: int = 0


def after_probe(state: HealthState, check: HealthCheck, passed: bool, since_start: float) -> HealthState:
    """The health after one probe that began `since_start` seconds after the task started."""
    if passed:
        return HealthState(HealthStatus.HEALTHY, 0)
    if state.status == HealthStatus.STARTING and since_start < check.start_period:
        return state  # still starting up: this failure does not count
    streak = state.failing_streak + 1
    if streak >= check.retries:
        return HealthState(HealthStatus.UNHEALTHY, streak)
    return replace(state, failing_streak=streak)


def next_probe_delay(check: HealthCheck, status: HealthStatus, since_start: float) -> float:
    """Seconds until the next probe, `since_start` seconds after the task started."""
    remaining_start_period = check.start_period - since_start
    if remaining_start_period <= 0:
        return check.interval
    if remaining_start_period < check.interval:
        return remaining_start_period  # the first check after the start period is not put off
    return check.start_interval if status == HealthStatus.STARTING else check.interval


def unhealthy_error(exit_code: int | None) -> str:
    """A task's Err once it was stopped for being unhealthy, in moby's words."""
    if exit_code:
        return f"task: non-zero exit ({exit_code}): {ERR_UNHEALTHY}"
    return ERR_UNHEALTHY


class HealthMonitor:
    """Runs one task's health check until the task is unhealthy.

    `now` gives the time in seconds on the same clock as `started_at` (when the task's process started);
    `on_change` is told every change of status. The state lives in the monitor, so a crashed `run` can be
    started again and carries on where it was.
    """

    def __init__(self, name: str, check: HealthCheck, probe: Probe, now: Callable[[], float], started_at: float,
                 state: HealthState | None = None, on_change: Callable[[HealthStatus], None] | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.check = check
        self.state = state or HealthState()
        self.results: collections.deque[ProbeResult] = collections.deque(maxlen=RESULTS_KEPT)
        self._probe = probe
        self._now = now
        self._started_at = started_at
        self._on_change = on_change
        self._sleep = sleep

    async def run(self) -> HealthState:
        """Probe every interval; return the state once it is unhealthy."""
        while self.state.status != HealthStatus.UNHEALTHY:
            await self._sleep(next_probe_delay(self.check, self.state.status, self._now() - self._started_at))
            await self.probe_once()
        return self.state

    async def probe_once(self) -> str:
        """Run the check once and apply its result; returns what was decided."""
        began = self._now()
        try:
            result = await self._probe(self.check.command, self.check.timeout)
        except Exception as exc:  # an executor's bug must not stop the checking: it is a failed check
            log.exception("%s: health check could not run", self.name)
            result = ProbeResult(exit_code=-1, output=f"health check error: {exc}")
        self.results.append(result)
        before = self.state
        self.state = after_probe(before, self.check, result.exit_code == 0, began - self._started_at)
        decision = (f"exit {result.exit_code}: {self.state.status} "
                    f"(failing streak {self.state.failing_streak}/{self.check.retries})")
        if result.exit_code != 0:
            log.info("%s: health check failed, %s; output: %s", self.name, decision, result.output.strip()[:200])
        if self.state.status != before.status:
            log.info("%s: %s → %s", self.name, before.status, self.state.status)
            if self._on_change is not None:
                self._on_change(self.state.status)
        return decision
