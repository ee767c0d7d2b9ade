"""The worker: runs the tasks the dispatcher assigned to this node and reports their status.

Each task is driven by its own named asyncio task (its *runner*) through the executor's controller steps —
accepted → preparing → starting → running → complete | failed | shutdown | rejected — reporting each state as
it is reached. States only move forward: a report that would move a task backwards is dropped here. A task
whose state is already terminal is never started again; restarting is the manager's decision (it creates a
new task).

A task with a health check (`shoal.agent.health`) stays `starting` after its process started until the first
check passes, then is reported running; when checks fail `Retries` times in a row it is stopped (stop signal,
grace period, kill) and reported failed with moby's error ("…: dockerexec: unhealthy container"). The checking
loop is a named asyncio task per task, supervised by the task's runner, and ends when the task ends. Health
itself is not reported: swarm's TaskStatus has no field for it, only the state transitions show it.

Every task is recorded (`TaskDB`) before anything is reported for it, and the record is on disk before the
report leaves the node (the agent flushes it first); a started task's handle is flushed before the task is
reported running. A restarted agent (`start()`) re-adopts the processes that are still alive (resuming their
health checks) and reports failed for those that ended while it was away: it never starts a second copy of a
task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.agent.executor.base import (
    Controller,
    Executor,
    ExecutorError,
    ExitStatusUnknown,
    LogLine,
    TaskRejected,
    is_out_of_memory,
)
from shoal.agent.health import (
    HealthCheck,
    HealthMonitor,
    HealthState,
    HealthStatus,
    health_check_of,
    unhealthy_error,
)
from shoal.agent.taskdb import TaskDB, TaskRecord
from shoal.clock import Clock
from shoal.errors import InvalidArgument, NotFound
from shoal.mesh.table import published_ports
from shoal.mesh.userspace import accepts_connections
from shoal.metrics import (
    FAILED_AGENT_ERROR,
    FAILED_EXIT_UNKNOWN,
    FAILED_NON_ZERO_EXIT,
    FAILED_OOM,
    FAILED_REJECTED,
    FAILED_UNHEALTHY,
    NodeMetrics,
)
from shoal.spec import BACKEND_PORTS, DEFAULT_STOP_GRACE_PERIOD
from shoal.timefmt import SECOND, from_rfc3339, to_rfc3339
from shoal.timeouts import within
from shoal.types import Doc, TaskState

log = logging.getLogger(__name__)

DEFAULT_STOP_SIGNAL = "SIGTERM"
EXIT_UNKNOWN_AFTER_RESTART = "task exit status unknown: the agent restarted while it ran"
EXIT_UNKNOWN_NO_RECORD = "task exit status unknown: this node has no record of the task"
# Temporary executor errors are retried with a backoff growing up to this.
MAX_RETRY_DELAY = 5.0
FIRST_RETRY_DELAY = 0.1
# A health monitor that crashed is started again after this pause (so a bug cannot spin the loop).
HEALTH_RESTART_DELAY = 1.0
# A task the routing mesh or a virtual IP sends connections to is stopped this long after it left the endpoint
# and name tables, so that every node has stopped sending it new connections before it gets its stop signal.
DRAIN_SECONDS = 1.0
# How often, at most, a running task's published ports are tried until they accept connections.
PORT_CHECK_MAX_INTERVAL = 0.5
# After this long without listening, the task's status says so.
NOT_LISTENING_NOTICE = 5.0

Reporter = Callable[[str, Doc], None]


def status_doc(now: float, state: TaskState, message: str, err: str = "", pid: int = 0,
               exit_code: int = 0) -> Doc:
    """A task status in Docker's TaskStatus shape, as the agent reports it."""
    return {"Timestamp": to_rfc3339(now), "State": state.wire, "Message": message, "Err": err,
            "ContainerStatus": {"ContainerID": "", "PID": pid, "ExitCode": exit_code}}


def with_cause(err: str, cause: str) -> str:
    """A task's error with what the executor knows of why it ended (swarmkit's "task: non-zero exit (137): …")."""
    return f"{err}: {cause}" if cause else err


def exit_cause(controller: Controller) -> str:
    """The controller's optional `exit_cause()` (see executor.base), "" when it has none or it fails."""
    method = getattr(controller, "exit_cause", None)
    if method is None:
        return ""
    try:
        return str(method() or "")
    except Exception:
        log.exception("reading why a task ended failed")
        return ""


def _container_spec(task: Doc) -> Doc:
    return ((task.get("Spec") or {}).get("ContainerSpec")) or {}


def stop_grace_seconds(task: Doc) -> float:
    grace = _container_spec(task).get("StopGracePeriod")
    return (DEFAULT_STOP_GRACE_PERIOD if grace is None else int(grace)) / SECOND


def _parse_state(text: object, default: TaskState) -> TaskState:
    try:
        return TaskState.parse(str(text)) if text else default
    except ValueError:
        return default


def _desired(task: Doc) -> TaskState:
    return _parse_state(task.get("DesiredState"), TaskState.RUNNING)


def _status_time(status: Doc | None, default: float) -> float:
    try:
        return from_rfc3339(str((status or {})["Timestamp"]))
    except (KeyError, InvalidArgument):
        return default


@dataclass
class _TaskRun:
    """A task this worker knows: its record on disk plus what lives only in this process."""

    record: TaskRecord
    controller: Controller | None = None
    runner: asyncio.Task[None] | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    health: HealthMonitor | None = None  # while its process runs, for a task with a health check
    # Set once the manager wants the task running; a task wanted only "ready" is prepared and held (the new
    # task of a stop-first update waits so until the old one has stopped).
    may_start: asyncio.Event = field(default_factory=asyncio.Event)
    port_check: asyncio.Task[None] | None = None  # until its published ports accept connections

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def state(self) -> TaskState:
        """The last state this agent reported (or, before any report, the one the manager's document shows)."""
        if self.record.status is not None:
            return _parse_state(self.record.status.get("State"), TaskState.NEW)
        return _parse_state((self.record.task.get("Status") or {}).get("State"), TaskState.NEW)


class Worker:
    """Runs assigned tasks through an Executor, reports their status and serves their logs."""

    def __init__(self, state_dir: Path, executor: Executor, report: Reporter, clock: Clock,
                 metrics: NodeMetrics | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._metrics = metrics or NodeMetrics()
        self._executor = executor
        self._report_cb = report
        self._clock = clock
        self._db = TaskDB(self.state_dir / "tasks.db")
        self._runs: dict[str, _TaskRun] = {}
        self._forgetting: dict[str, asyncio.Task[None]] = {}
        self._started = False

    # ---- lifecycle of the worker --------------------------------------------------------------------------

    async def start(self) -> str:
        """Load the task record; re-adopt live processes, report failed for the ones that died meanwhile."""
        if self._started:
            return "already started"
        self._started = True
        adopted = lost = resumed = 0
        for record in (await self._db.load()).values():
            run = _TaskRun(record)
            self._runs[run.task_id] = run
            if record.stopping or _desired(record.task) > TaskState.RUNNING:
                run.stop_requested.set()
            if _desired(record.task) >= TaskState.RUNNING:
                run.may_start.set()
            if run.state.terminal:
                # The last report may not have reached the manager before the agent stopped: send it again.
                if record.status is not None:
                    self._send(run.task_id, record.status)
            elif record.handle is not None:
                try:
                    run.controller = self._executor.recover(record.task, record.handle)
                except ExitStatusUnknown:
                    lost += 1
                    self._finish_unknown(run, EXIT_UNKNOWN_AFTER_RESTART)
                    continue
                adopted += 1
                check = health_check_of(record.task)
                if check is not None and run.state < TaskState.RUNNING:
                    # Still starting: the start period counts from when it was being started.
                    started_at = _status_time(record.status, self._clock.now())
                    run.health = self._health_monitor(run, check, started_at, HealthState())
                    self._report(run, TaskState.STARTING, "re-adopted after an agent restart")
                else:
                    if check is not None:
                        # It was healthy: failures count from now on.
                        run.health = self._health_monitor(run, check, self._clock.now(),
                                                          HealthState(HealthStatus.HEALTHY))
                    self._report(run, TaskState.RUNNING, "re-adopted after an agent restart")
                self._spawn_runner(run)
            elif run.state < TaskState.STARTING:
                # Nothing was started yet: carry on from where it was (prepare can be repeated).
                resumed += 1
                self._spawn_runner(run)
            else:
                # It was being started when the agent stopped: a process may exist that we cannot identify.
                lost += 1
                self._finish_unknown(run, EXIT_UNKNOWN_AFTER_RESTART)
        summary = f"re-adopted {adopted}, lost {lost}, resumed {resumed}"
        log.info("worker started: %s", summary)
        return summary

    async def stop(self, kill_tasks: bool = False) -> None:
        """Stop supervising. Tasks keep running (a restarted agent re-adopts them) unless `kill_tasks`, which
        stops every task, deletes what it left, and forgets them all (used by `swarm leave`)."""
        if not self._started:
            return
        self._started = False
        runs = list(self._runs.values())
        if kill_tasks:
            for run in runs:
                if not run.state.terminal:
                    self._request_stop(run)
            await self._settle([run.runner for run in runs if run.runner] + list(self._forgetting.values()))
            for run in runs:
                await self._remove_files(run)
            self._db.clear()
        else:
            pending = [run.runner for run in runs if run.runner] + list(self._forgetting.values())
            for task in pending:
                task.cancel()
            await self._settle(pending)
        self._runs.clear()
        self._forgetting.clear()
        try:
            await self._db.close()
        except Exception:
            log.exception("could not write the task record on stop")

    # ---- assignments --------------------------------------------------------------------------------------

    async def assign(self, tasks: list[Doc], full: bool) -> str:
        """Apply an assignment: all of this node's tasks (`full`) or the changed ones. Returns what it did."""
        if not self._started:
            raise RuntimeError("Worker.start() must be called before assign()")
        started = stopping = forgotten = 0
        assigned: set[str] = set()
        for task in tasks:
            task_id = str(task["ID"])
            assigned.add(task_id)
            if task_id in self._forgetting:
                await self._settle([self._forgetting[task_id]])
            run = self._runs.get(task_id)
            if run is None:
                started += self._admit(task)
                continue
            if run.record.task != task:
                run.record.task = task
                self._db.put(run.record)
            if _desired(task) >= TaskState.RUNNING:
                run.may_start.set()
            if (_desired(task) > TaskState.RUNNING and not run.state.terminal
                    and not run.stop_requested.is_set()):
                stopping += 1
                self._request_stop(run)
        if full:
            for task_id in set(self._runs) - assigned:
                forgotten += 1
                self._forget(task_id)
        summary = f"started {started}, stopping {stopping}, forgetting {forgotten}"
        if started or stopping or forgotten:
            log.info("assignment (%s): %s", "full" if full else "incremental", summary)
        return summary

    def _admit(self, task: Doc) -> int:
        """Take on a task this worker has no record of; 1 if a runner was started for it."""
        observed = _parse_state((task.get("Status") or {}).get("State"), TaskState.NEW)
        if observed.terminal:
            return 0  # it ended already; running it again is the manager's call, with a new task
        run = _TaskRun(TaskRecord(task=task))
        self._runs[run.task_id] = run
        if _desired(task) >= TaskState.RUNNING:
            run.may_start.set()
        if _desired(task) > TaskState.RUNNING:
            self._report(run, TaskState.SHUTDOWN, "shutdown")  # never started here: nothing to stop
            return 0
        if observed >= TaskState.STARTING:
            self._finish_unknown(run, EXIT_UNKNOWN_NO_RECORD)
            return 0
        self._db.put(run.record)
        self._spawn_runner(run)
        return 1

    async def forget(self, task_id: str) -> None:
        """The manager removed this task from the node: stop it if it runs, delete its files, drop its record.
        Returns at once; the stop (up to the task's grace period) goes on in the background."""
        if task_id in self._runs:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        run = self._runs.pop(task_id)
        self._forgetting[task_id] = asyncio.create_task(self._stop_and_forget(run), name=f"forget:{task_id}")

    async def _stop_and_forget(self, run: _TaskRun) -> None:
        try:
            if run.runner is not None and not run.runner.done():
                self._request_stop(run)
                await self._settle([run.runner])
            await self._remove_files(run)
            self._db.remove(run.task_id)
        finally:
            self._forgetting.pop(run.task_id, None)

    async def persist(self) -> None:
        """Write every record change made so far to disk (before the reports about them are sent)."""
        await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        # A disk that refuses writes must not stop the tasks or their reports: it costs only re-adoption.
        try:
            await self._db.flush()
        except Exception:
            log.exception("could not write the task record (%d changes pending)", self._db.pending)

    # ---- queries -----------------------------------------------------------------------------------------

    def record_stats(self) -> Doc:
        return {"Transactions": self._db.transactions, "RowsWritten": self._db.rows_written,
                "Pending": self._db.pending}

    def known_task_ids(self) -> set[str]:
        """Every task this worker still has a record of, including ones it is stopping or forgetting."""
        return set(self._runs) | set(self._forgetting)

    def running_task_ids(self) -> set[str]:
        return {task_id for task_id, run in self._runs.items() if run.state == TaskState.RUNNING}

    def current_statuses(self) -> dict[str, Doc]:
        """The last status reported for every task this worker knows (re-sent when a session opens)."""
        return {task_id: run.record.status for task_id, run in self._runs.items() if run.record.status}

    def task_status(self, task_id: str) -> Doc | None:
        """The last status reported for a task this worker knows, or None."""
        run = self._runs.get(task_id)
        return run.record.status if run else None

    def logs(self, task_id: str, tail: int | None = None, follow: bool = False) -> AsyncIterator[LogLine]:
        """The task's output as (stream, timestamp, line); `tail` counts lines of the whole task. With
        `follow`, new lines keep coming until the consumer stops or the task has ended and all is read."""
        if task_id not in self._runs:
            raise NotFound(f"task {task_id} is not on this node")

        def ended() -> bool:
            run = self._runs.get(task_id)
            return not self._started or run is None or run.state.terminal

        return self._executor.logs(task_id, tail, follow, ended, self._clock.now)

    # ---- one task's runner --------------------------------------------------------------------------------

    def _spawn_runner(self, run: _TaskRun) -> None:
        run.runner = asyncio.create_task(self._supervise(run), name=f"task-runner:{run.task_id}")

    async def _supervise(self, run: _TaskRun) -> None:
        """A crash of one runner is logged and reported as that task's failure; the worker carries on."""
        try:
            if run.controller is None and not await self._start_task(run):
                return
            await self._watch(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task %s: runner crashed", run.task_id)
            self._report(run, TaskState.FAILED, "agent error", err=f"agent error: {exc}", failure=FAILED_AGENT_ERROR)

    @staticmethod
    async def _held_until_wanted(run: _TaskRun) -> bool:
        """Wait, prepared, until the manager wants the task running (True) or stopped (False)."""
        start = asyncio.ensure_future(run.may_start.wait())
        stop = asyncio.ensure_future(run.stop_requested.wait())
        try:
            await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            start.cancel()
            stop.cancel()
        return run.may_start.is_set() and not run.stop_requested.is_set()

    async def _start_task(self, run: _TaskRun) -> bool:
        """accepted → preparing → starting → running; False when the task ended before running."""
        self._advance(run, TaskState.ACCEPTED, "accepted")
        try:
            if run.stop_requested.is_set():
                self._report(run, TaskState.SHUTDOWN, "shutdown")
                return False
            controller = run.controller = self._executor.controller(run.record.task)
            self._advance(run, TaskState.PREPARING, "preparing")
            prepared = await self._retrying(run, self._timed("prepare", controller.prepare))
            if not prepared or run.stop_requested.is_set():
                self._report(run, TaskState.SHUTDOWN, "shutdown")
                return False
            if not run.may_start.is_set():
                self._advance(run, TaskState.READY, "ready")
                if not await self._held_until_wanted(run):
                    self._report(run, TaskState.SHUTDOWN, "shutdown")
                    return False
            self._advance(run, TaskState.STARTING, "starting")
            try:
                if not await self._retrying(run, self._timed("start", controller.start)):
                    self._report(run, TaskState.SHUTDOWN, "shutdown")
                    return False
            except asyncio.CancelledError:
                if controller.pid():
                    # The agent is stopping mid-start and the process is up: keep its handle, so the next
                    # agent adopts it rather than losing it.
                    run.record.handle = controller.handle()
                    self._db.put(run.record)
                raise
            # A stop asked for during start is handled by _watch, which stops the process it finds running.
        except TaskRejected as exc:
            self._report(run, TaskState.REJECTED, "rejected", err=f"starting task: {exc}", failure=FAILED_REJECTED)
            return False
        self._metrics.task_started()
        run.record.handle = controller.handle()
        # The handle reaches the disk before anything else happens, so a restarted agent adopts the process.
        self._db.put(run.record)
        await self._flush_quietly()
        check = health_check_of(run.record.task)
        if check is None:
            self._report(run, TaskState.RUNNING, "started")
        else:
            # It stays `starting` until its health check passes; the handle is saved now, so a restarted agent
            # re-adopts the process meanwhile.
            self._db.put(run.record)
            run.health = self._health_monitor(run, check, self._clock.now(), HealthState())
        return True

    async def _retrying(self, run: _TaskRun, step: Callable[[], Awaitable[None]]) -> bool:
        """Run a controller step, retrying temporary errors with backoff; False if a stop came meanwhile."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                await step()
                return True
            except TaskRejected:
                raise
            except ExecutorError as exc:
                log.warning("task %s: %s; retrying in %.1fs", run.task_id, exc, delay)
            with contextlib.suppress(TimeoutError):
                await within(run.stop_requested.wait(), timeout=delay)
                return False
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _watch(self, run: _TaskRun) -> None:
        """Wait for the running task to end, stopping it first if asked to or once it is unhealthy; report how
        it ended."""
        controller = run.controller
        assert controller is not None
        exited = asyncio.ensure_future(controller.wait())
        stop = asyncio.ensure_future(run.stop_requested.wait())
        checking = self._spawn_health(run)
        unhealthy = False
        try:
            while True:
                await asyncio.wait({exited, stop} | ({checking} if checking else set()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if checking is None or not checking.done() or exited.done() or stop.done():
                    break
                if checking.exception() is None:
                    unhealthy = True
                    break
                log.error("task %s: health monitor crashed, restarting it", run.task_id,
                          exc_info=checking.exception())
                checking = self._spawn_health(run, delay=HEALTH_RESTART_DELAY)
            # The checks end with the task (and must not report it running while it is being stopped).
            if checking is not None:
                checking.cancel()
                await self._settle([checking])
            if not exited.done() and self._is_mesh_backend(run):
                if unhealthy:
                    # The manager still sees it running: take it out of the routing mesh first.
                    self._withdraw_ports(run)
                await asyncio.wait({exited}, timeout=DRAIN_SECONDS)
            if not exited.done():
                spec = _container_spec(run.record.task)
                with self._metrics.executor_call("shutdown"):
                    await controller.shutdown(stop_grace_seconds(run.record.task),
                                              str(spec.get("StopSignal") or DEFAULT_STOP_SIGNAL))
                await asyncio.wait({exited})
        finally:
            if run.port_check is not None:
                run.port_check.cancel()
            waiters = [exited, stop] + ([checking] if checking else [])
            for waiter in waiters:
                waiter.cancel()
            await self._settle(waiters)
            run.health = None
        try:
            code: int | None = exited.result()
        except ExitStatusUnknown:
            code = None
        run.record.handle = None
        cause = exit_cause(controller)
        if run.stop_requested.is_set():
            self._report(run, TaskState.SHUTDOWN, "shutdown", exit_code=code or 0)
        elif unhealthy:
            self._report(run, TaskState.FAILED, "unhealthy", err=unhealthy_error(code), exit_code=code or 0,
                         failure=FAILED_UNHEALTHY)
        elif code is None:
            self._report(run, TaskState.FAILED, "finished", err=with_cause(EXIT_UNKNOWN_AFTER_RESTART, cause),
                         failure=FAILED_EXIT_UNKNOWN)
        elif code == 0:
            self._report(run, TaskState.COMPLETE, "finished")
        else:
            self._report(run, TaskState.FAILED, "finished", err=with_cause(f"task: non-zero exit ({code})", cause),
                         exit_code=code, failure=FAILED_OOM if is_out_of_memory(cause) else FAILED_NON_ZERO_EXIT)

    # ---- published ports ----------------------------------------------------------------------------------

    @staticmethod
    def _is_mesh_backend(run: _TaskRun) -> bool:
        """Whether other nodes may be sending the task connections: through the routing mesh, or through a
        virtual IP or name on one of its networks."""
        return bool(run.record.status and (run.record.status.get(BACKEND_PORTS)
                                           or run.record.task.get("NetworksAttachments")))

    def _amend_status(self, run: _TaskRun, fields: Doc) -> None:
        """Report the task's current state again with some fields changed (the state itself stays)."""
        assert run.record.status is not None
        run.record.status = {**run.record.status, **fields}
        self._db.put(run.record)
        self._send(run.task_id, run.record.status)

    def _withdraw_ports(self, run: _TaskRun) -> None:
        """Tell the manager the running task serves no port any more (an empty list, not a missing key)."""
        self._amend_status(run, {BACKEND_PORTS: []})
        log.info("task %s: unhealthy, out of the routing mesh", run.task_id)

    def _spawn_port_check(self, run: _TaskRun) -> None:
        if (run.port_check is None and published_ports(run.record.task)
                and getattr(run.controller, "backend_ports", None) is not None):
            run.port_check = asyncio.create_task(self._announce_ports(run), name=f"ports:{run.task_id}")

    @staticmethod
    async def _listening_ports(run: _TaskRun) -> list[Doc] | None:
        """The task's backend ports when all its TCP ones accept connections, else None."""
        try:
            ports: list[Doc] = await run.controller.backend_ports()  # type: ignore[union-attr]
        except Exception as exc:  # e.g. the engine's API failing for a moment: try again later
            log.debug("task %s: published ports not known yet: %s", run.task_id, exc)
            return None
        for port in ports:
            if port["Protocol"] == "tcp" and not await accepts_connections(str(port["ProbeHost"]),
                                                                            int(port["ProbePort"])):
                return None
        return ports or None

    async def _announce_ports(self, run: _TaskRun) -> None:
        """Report where the task's published ports are served once its TCP ones accept connections, so the
        routing mesh sends no connection to a task that is not listening yet."""
        delay = 0.02
        started = self._clock.monotonic()
        told_waiting = False
        while (ports := await self._listening_ports(run)) is None:
            if run.state != TaskState.RUNNING or run.stop_requested.is_set():
                return
            if not told_waiting and self._clock.monotonic() - started > NOT_LISTENING_NOTICE:
                told_waiting = True
                self._note_not_listening(run)
            await asyncio.sleep(delay)
            delay = min(delay * 2, PORT_CHECK_MAX_INTERVAL)
        if run.record.status is None or run.state != TaskState.RUNNING or run.stop_requested.is_set():
            return
        fields: Doc = {"Message": "started", BACKEND_PORTS: [
            {"Protocol": p["Protocol"], "TargetPort": p["TargetPort"], "Port": p["Port"]} for p in ports]}
        host_ports = [{"Protocol": p["Protocol"], "TargetPort": p["TargetPort"], "PublishMode": "host",
                       "PublishedPort": p["PublishedPort"] or p["Port"]}
                      for p in ports if p["PublishMode"] == "host"]
        if host_ports:
            fields["PortStatus"] = {"Ports": host_ports}
        self._amend_status(run, fields)
        log.info("task %s: serving published ports %s", run.task_id,
                 ", ".join(f"{p['TargetPort']}/{p['Protocol']} on {p['Port']}" for p in ports))

    def _note_not_listening(self, run: _TaskRun) -> None:
        """Say in the task's Status.Message why the routing mesh sends it nothing (`docker inspect TASK`)."""
        ports = getattr(run.controller, "ports", {})
        where = ", ".join(f"$PORT_{target}={port}" for target, port in ports.items()) or "its published ports"
        message = f"started; not listening on {where} yet, so the routing mesh sends it nothing"
        self._amend_status(run, {"Message": message})
        log.warning("task %s: %s", run.task_id, message)

    # ---- health checks ------------------------------------------------------------------------------------

    def _health_monitor(self, run: _TaskRun, check: HealthCheck, started_at: float,
                        state: HealthState) -> HealthMonitor:
        controller = run.controller
        assert controller is not None

        def on_change(status: HealthStatus) -> None:
            if status == HealthStatus.HEALTHY:
                self._advance(run, TaskState.RUNNING, "started")

        return HealthMonitor(f"task {run.task_id}", check, controller.probe, self._clock.now, started_at,
                             state=state, on_change=on_change)

    def _spawn_health(self, run: _TaskRun, delay: float = 0.0) -> asyncio.Task[HealthState] | None:
        """The task's health monitor as a named asyncio task; None when the task has no health check."""
        monitor = run.health
        if monitor is None:
            return None

        async def run_monitor() -> HealthState:
            if delay:
                await asyncio.sleep(delay)
            return await monitor.run()

        return asyncio.create_task(run_monitor(), name=f"health:{run.task_id}")

    # ---- helpers ------------------------------------------------------------------------------------------

    def _request_stop(self, run: _TaskRun) -> None:
        if not run.record.stopping:
            run.record.stopping = True
            self._db.put(run.record)
        run.stop_requested.set()

    def _finish_unknown(self, run: _TaskRun, err: str) -> None:
        """The task's process is gone (or unknowable) and nobody saw how it ended."""
        run.record.handle = None
        if run.record.stopping:
            self._report(run, TaskState.SHUTDOWN, "shutdown")
        else:
            self._report(run, TaskState.FAILED, "exit status unknown", err=err, failure=FAILED_EXIT_UNKNOWN)

    def _advance(self, run: _TaskRun, state: TaskState, message: str) -> None:
        """Report a lifecycle step unless the task is already past it (a runner resumed after a restart)."""
        if run.record.status is None or state > run.state:
            self._report(run, state, message)

    def _report(self, run: _TaskRun, state: TaskState, message: str, err: str = "", exit_code: int = 0,
                failure: str = "") -> None:
        """Record the new state on disk, then report it; a backward move (or leaving a terminal state) is
        dropped. `failure` says why, in the metrics' words, for a failed or rejected task."""
        current = run.state if run.record.status is not None else None
        if current is not None and (state < current or (current.terminal and state != current)):
            log.warning("task %s: not moving from %s back to %s", run.task_id, current.wire, state.wire)
            return
        if failure and current != state:
            self._metrics.task_failed(failure)
        pid = run.controller.pid() if run.controller and state <= TaskState.RUNNING else 0
        announced = (run.record.status or {}).get(BACKEND_PORTS)
        run.record.status = status_doc(self._clock.now(), state, message, err=err, pid=pid, exit_code=exit_code)
        if announced and state == TaskState.RUNNING:
            run.record.status[BACKEND_PORTS] = announced  # still serving there (e.g. re-adopted)
        self._db.put(run.record)
        self._send(run.task_id, run.record.status)
        if state == TaskState.RUNNING:
            self._spawn_port_check(run)

    def _send(self, task_id: str, status: Doc) -> None:
        try:
            self._report_cb(task_id, status)
        except Exception:
            log.exception("task %s: reporting status %s failed", task_id, status.get("State"))

    def _timed(self, call: str, step: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A controller step that records how long the executor takes for it."""
        async def timed() -> None:
            with self._metrics.executor_call(call):
                await step()

        return timed

    async def _remove_files(self, run: _TaskRun) -> None:
        try:
            controller = run.controller or self._executor.controller(run.record.task)
            with self._metrics.executor_call("remove"):
                await controller.remove()
        except ExecutorError as exc:
            log.warning("task %s: could not remove its files: %s", run.task_id, exc)

    @staticmethod
    async def _settle(tasks: Sequence[asyncio.Future[Any]]) -> None:
        """Wait for tasks to finish, whatever their outcome (their errors were logged where they happened)."""
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
