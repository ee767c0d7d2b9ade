"""The executor interface: how the agent's worker runs one task, whatever runs it (host process, container).

A `Controller` drives one task through its life one step at a time (prepare, start, wait, shutdown, remove),
as swarmkit's `exec.Controller` does; the worker decides the order and reports each state. A controller can
describe itself as a small JSON `handle` that the worker saves on disk, and `Executor.recover` re-attaches to
the running task from that handle after an agent restart (nomad's `RecoverTask`), so a restarted agent adopts
its tasks instead of starting second copies. `probe` runs a task's health check command the way the task
itself runs (same user, environment, working directory); the worker decides when and what the results mean.

Errors: `ExecutorError` is temporary (the step may be retried); `TaskRejected` is fatal (the task can never
run here: it is reported as rejected); `ExitStatusUnknown` means the task's process is gone and its exit status
cannot be known (it was not our child any more).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shoal.spec import unsupported_task_fields
from shoal.types import Doc

# One line of task output: (stream "stdout" | "stderr", unix timestamp, the line's bytes with its newline).
LogLine = tuple[str, float, bytes]


@dataclass(frozen=True)
class ProbeResult:
    """One run of a health check: exit code 0 is healthy; -1 when it timed out or could not be started."""

    exit_code: int
    output: str = ""  # what it printed (stdout and stderr), cut to a few kilobytes


def backend_port(port: Doc, node_port: int, probe_host: str, probe_port: int) -> Doc:
    """One entry of a controller's `backend_ports()`: the node port the routing mesh connects to for one of the
    task's published ports, and where to check that the task listens (TCP)."""
    return {"Protocol": str(port.get("Protocol") or "tcp"), "TargetPort": int(port["TargetPort"]),
            "PublishMode": str(port.get("PublishMode") or "ingress"),
            "PublishedPort": int(port.get("PublishedPort") or 0), "Port": node_port,
            "ProbeHost": probe_host, "ProbePort": probe_port}


def binary_size(size: int) -> str:
    """64 MiB → "64MiB", 1.5 GiB → "1.5GiB" (docker's units.BytesSize, four significant digits)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, index = float(size), 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.4g}{units[index]}"


OUT_OF_MEMORY = "out of memory: OOM killed"


def out_of_memory(memory_limit: int) -> str:
    """The cause added to a task's error when the kernel killed one of its processes for lack of memory."""
    if memory_limit > 0:
        return f"{OUT_OF_MEMORY} at its memory limit of {binary_size(memory_limit)}"
    return OUT_OF_MEMORY


def is_out_of_memory(cause: str) -> bool:
    """Whether an exit cause (`Controller.exit_cause`) says the task was killed for lack of memory."""
    return cause.startswith(OUT_OF_MEMORY)


def cancelling() -> bool:
    """Whether the current task is being cancelled (in a `finally`: the agent stops, the task does not end)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ExecutorError(Exception):
    """A step failed for a reason that may pass (retry the step)."""


class TaskRejected(ExecutorError):
    """The task cannot run on this node (bad command, missing program, unknown user): never retried."""


class ExitStatusUnknown(ExecutorError):
    """The task's process went away and its exit status cannot be known (e.g. adopted after a restart)."""


def refuse_unsupported_fields(task: Doc, executor: str) -> None:
    """TaskRejected naming the first field of the task's spec that `executor` does not act on
    (`shoal.spec.CONTAINER_SPEC_SUPPORT`, `TASK_SPEC_SUPPORT`): a task never runs without part of its spec."""
    for field, instead in unsupported_task_fields(task.get("Spec") or {}, executor):
        raise TaskRejected(f"TaskTemplate.{field} is not supported by the {executor} executor: {instead}")


class Controller(Protocol):
    """Runs one task. Each step is called at most once, in order, by one asyncio task of the worker."""

    async def prepare(self) -> None:
        """Check and set up what the task needs; raise TaskRejected if it can never start."""
        ...

    async def start(self) -> None:
        """Start the task; after it returns, `handle()` identifies the running task."""
        ...

    async def wait(self) -> int:
        """Wait until the task ends and return its exit code (raise ExitStatusUnknown if it cannot be known)."""
        ...

    async def shutdown(self, grace_seconds: float, signal_name: str) -> None:
        """Stop the task: `signal_name` first, a kill after `grace_seconds`. Returns once it has ended."""
        ...

    async def remove(self) -> None:
        """Delete what the task left on the node (scratch directory, logs). The task must have ended."""
        ...

    async def probe(self, command: Sequence[str], timeout_seconds: float) -> ProbeResult:
        """Run a health check command (argv) beside the task, as the task's user, with its environment and
        working directory; kill it after `timeout_seconds`. Never raises for the command's own failures."""
        ...

    def handle(self) -> Doc:
        """What to save on disk so that `Executor.recover` can re-attach to the running task."""
        ...

    def pid(self) -> int:
        """The task's main process id (0 when there is none), reported in ContainerStatus.PID."""
        ...

    # Optional, for tasks with published ports: `async def backend_ports(self) -> list[Doc]` returns one
    # `backend_port(...)` per published port once the task runs. The worker reports them when they accept
    # connections, and the routing mesh then sends traffic there.

    # Optional: `def exit_cause(self) -> str`, read once `wait` has returned (or raised ExitStatusUnknown): why
    # the task ended when the executor knows more than its exit code ("out of memory: …"), else "". The worker
    # adds it to the task's error, as swarmkit's exitError adds its cause.


class Executor(Protocol):
    def describe(self) -> Doc:
        """This node's description pieces: {"Engine", "Platform", "Resources"} in Docker's NodeDescription shape."""
        ...

    def controller(self, task: Doc) -> Controller:
        """A controller for a task that has not been started yet."""
        ...

    def recover(self, task: Doc, handle: Doc) -> Controller:
        """Re-attach to a task started earlier (maybe by a previous agent process) from its saved handle.

        Raises ExitStatusUnknown when the task is no longer running.
        """
        ...

    def logs(self, task_id: str, tail: int | None, follow: bool, ended: Callable[[], bool],
             now: Callable[[], float]) -> AsyncIterator[LogLine]:
        """The task's output lines; `tail` counts lines of the whole task; with `follow`, keep yielding new lines
        until `ended()` is true and everything written has been yielded."""
        ...
