"""The sim executor: tasks that are simulated, on nodes that are otherwise real.

Everything around the task is the real thing — the node's certificate, its session to the dispatcher, its
heartbeats, its status reports, its task record — only no process or container runs. That is what lets a
thousand nodes live in one process (`python -m shoal.sim`, `shoal playground up --sim-nodes N`) and a
benchmark drive the managers at the scale of a large cluster, with the manager side unchanged.

A simulated task starts after the executor's start delay (a few milliseconds by default, with jitter, as a
real start takes) and then does what its command says, read as a process executor would read it:

- `sleep N` runs for N seconds, then exits 0;
- `true` exits 0 at once, `false` exits 1, `exit N` exits N (so the restart policy and rolling-update
  failure handling can be exercised);
- anything else runs until it is stopped.

A stop ends it at once with 143 (128 + SIGTERM), as a process that obeys its stop signal.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator, Callable, Sequence

from shoal import __version__
from shoal.agent.executor.base import Controller, ExitStatusUnknown, LogLine, ProbeResult, TaskRejected
from shoal.agent.executor.process import task_argv
from shoal.types import Doc

EXECUTOR_NAME = "sim"
STOPPED_EXIT_CODE = 128 + 15


def planned_exit(argv: Sequence[str]) -> tuple[float | None, int]:
    """(seconds until the task exits, its exit code); None seconds: it runs until stopped."""
    program, args = (argv[0].rsplit("/", 1)[-1], list(argv[1:])) if argv else ("", [])
    if program == "sleep" and args:
        try:
            return max(0.0, float(args[0])), 0
        except ValueError:
            raise TaskRejected(f"sleep: invalid time interval {args[0]!r}") from None
    if program == "true":
        return 0.0, 0
    if program == "false":
        return 0.0, 1
    if program == "exit":
        try:
            return 0.0, int(args[0]) if args else 0
        except ValueError:
            raise TaskRejected(f"exit: {args[0]!r}: numeric argument required") from None
    return None, 0


class SimExecutor:
    """Simulated tasks; `start_delay` is the mean time a start takes (jittered by ±50 %)."""

    def __init__(self, start_delay: float = 0.01, cpus: int = 4, memory_bytes: int = 8 << 30,
                 rng: random.Random | None = None) -> None:
        self.start_delay = start_delay
        self.cpus = cpus
        self.memory_bytes = memory_bytes
        self._rng = rng or random.Random()
        # Tasks running in this process, so an agent restarted within it adopts them as a real one would.
        self.running: dict[str, SimController] = {}

    def describe(self) -> Doc:
        return {
            "Engine": {"EngineVersion": f"shoal-{EXECUTOR_NAME}/{__version__}", "Labels": {}},
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": self.cpus * 1_000_000_000, "MemoryBytes": self.memory_bytes},
        }

    def controller(self, task: Doc) -> SimController:
        return SimController(self, task)

    def recover(self, task: Doc, handle: Doc) -> SimController:
        controller = self.running.get(str(task["ID"]))
        if handle.get("Executor") != EXECUTOR_NAME or controller is None or controller.ended:
            raise ExitStatusUnknown(f"simulated task {task['ID']} is not running in this process")
        return controller

    def delay(self) -> float:
        return self.start_delay * self._rng.uniform(0.5, 1.5)

    async def logs(self, task_id: str, tail: int | None, follow: bool, ended: Callable[[], bool],
                   now: Callable[[], float]) -> AsyncIterator[LogLine]:
        if tail != 0:
            yield ("stdout", now(), f"simulated task {task_id}\n".encode())


class SimController(Controller):
    def __init__(self, executor: SimExecutor, task: Doc) -> None:
        self._executor = executor
        self._task_id = str(task["ID"])
        self._argv = task_argv(((task.get("Spec") or {}).get("ContainerSpec")) or {})
        self._exit: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # A stable, fake process ID for `service ps` and ContainerStatus.PID.
        self._pid = 100_000 + zlib.crc32(self._task_id.encode()) % 900_000

    @property
    def ended(self) -> bool:
        return self._exit is not None and self._exit.done()

    async def prepare(self) -> None:
        planned_exit(self._argv)  # a command the simulation cannot follow is rejected, as a bad one would be

    async def start(self) -> None:
        await asyncio.sleep(self._executor.delay())
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        seconds, code = planned_exit(self._argv)
        if seconds is not None:
            self._timer = loop.call_later(seconds, self._end, code)
        self._executor.running[self._task_id] = self

    def _end(self, code: int) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)
        if self._timer is not None:
            self._timer.cancel()
        self._executor.running.pop(self._task_id, None)

    async def wait(self) -> int:
        assert self._exit is not None, "wait() before start()"
        return await asyncio.shield(self._exit)

    async def shutdown(self, grace_seconds: float, signal_name: str) -> None:
        self._end(STOPPED_EXIT_CODE)

    async def remove(self) -> None:
        self._executor.running.pop(self._task_id, None)

    async def probe(self, command: Sequence[str], timeout_seconds: float) -> ProbeResult:
        return ProbeResult(exit_code=0, output="simulated")

    def handle(self) -> Doc:
        return {"Executor": EXECUTOR_NAME, "TaskID": self._task_id}

    def pid(self) -> int:
        return self._pid if self._exit is not None and not self._exit.done() else 0
