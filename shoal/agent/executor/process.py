"""The process executor: each task runs as a host process. It is shoal's default and needs nothing but Python.

Conventions (a process has no image, so the task document is read this way):

- argv is `ContainerSpec.Command + ContainerSpec.Args` when either is non-empty. Otherwise the image names the
  program: `Image` with its registry path, ":tag" and "@digest" removed ("docker.io/library/nginx:1.11" runs
  `nginx`); an image that is an absolute path ("/usr/bin/top") is run as that path.
- The process runs in its own session and process group, so signals reach everything it started and it keeps
  running when the agent dies. Its stdin is /dev/null; its stdout and stderr are written by the child itself to
  `<state_dir>/logs/<task_id>/stdout.log` and `stderr.log` (files, not pipes: no agent needed to keep them open).
- Environment: PATH and HOME, then `ContainerSpec.Env`, then SHOAL_TASK_ID, SHOAL_SERVICE_NAME and SHOAL_TASK_SLOT;
  for a task that mounts secrets or configs, SHOAL_SECRETS_DIR and SHOAL_CONFIGS_DIR: its own folders on a
  tmpfs holding one file per reference at its target (shoal.agent.task_files), removed when the task ends.
- Working directory: `ContainerSpec.Dir`, which must exist; else a scratch directory `<state_dir>/scratch/<task_id>`.
- `ContainerSpec.User` ("name", "uid", "name:group" or "uid:gid") needs the agent to run as root.
- Stop: the StopSignal (default SIGTERM) to the process group, SIGKILL to the group after the grace period. When
  the main process ends, what is left of its group is killed, as a container's processes end with its init.
- Health check (`probe`): the check command runs as the task's user, with its environment and working directory,
  in a session of its own; at its timeout its whole process group is killed (Docker's result then: exit -1,
  "Health check exceeded timeout (…)"). A check that cannot be started is a failure (exit -1), never an error.
- Swarm networks (`NetworksAttachments`, needs root and the node's overlay): the process runs in a network
  namespace of its own, attached to its networks as a container is (`shoal.overlay`), so it listens on its
  target ports (PORT / PORT_<target> say them) and reaches other services by name and virtual IP. Its
  /etc/resolv.conf (in a mount namespace of its own) names the node's DNS server on the first network's
  gateway. Its published ports (TCP) are carried from the node port the routing mesh connects to into its
  namespace (`shoal.overlay.forward`). It has no way out but its networks and published ports — as far as
  its privileges go: a process task running as root can leave any namespace (the process executor isolates
  nothing from a root task; give tasks a `User`, or use the docker executor).
- Resources: a task with `Resources.Limits` (CPU, memory, pids) runs in control groups of its own that enforce
  them (`shoal.agent.executor.cgroups`: cgroup v2, or v1), joined before its program starts and removed when it
  ends; a node that cannot enforce them rejects the task, naming what it lacks. An OOM kill in the group is
  the task's error ("task: non-zero exit (137): out of memory: …"). Reservations are the scheduler's: nothing
  is enforced for them here.
- What a process cannot have — Hostname, Groups, TTY, OpenStdin, ReadOnly, Mounts, Init, Hosts, DNSConfig,
  Sysctls, CapabilityAdd/Drop, Ulimits, OomScoreAdj, Privileges, `TaskTemplate.LogDriver` — rejects the task,
  naming the field (`shoal.spec.CONTAINER_SPEC_SUPPORT`), rather than run it without: such a service needs nodes
  with the docker executor. Zero values (`"Init": false`, which the docker CLI always sends) are fine.
- Exit code: from waiting on the child; a signal death is reported as 128 + signal number (Docker's convention).
  A process adopted after an agent restart is not our child: we watch its pid (checking its start time in
  /proc/<pid>/stat, so a reused pid is never taken for it), and its exit status is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import logging
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from shoal import __version__
from shoal.agent.executor.base import (
    Controller,
    ExecutorError,
    ExitStatusUnknown,
    LogLine,
    ProbeResult,
    TaskRejected,
    backend_port,
    out_of_memory,
    refuse_unsupported_fields,
)
from shoal.agent.executor.cgroups import (
    CgroupError,
    Layout,
    Limits,
    TaskGroup,
    create_groups,
    group_oom_kills,
    join_argv,
    plan_task_group,
    read_layout,
    remove_groups,
)
from shoal.agent.task_files import TaskFiles
from shoal.errors import InvalidArgument
from shoal.mesh.table import published_ports
from shoal.overlay.forward import PortForwarder
from shoal.overlay.linux import OverlayDataPath, TaskNamespace
from shoal.overlay.plan import OverlayError, OverlayNetwork
from shoal.spec import PROCESS_EXECUTOR, ImageReference
from shoal.task_files import CONFIG, SECRET, BadReference, mounts_files, task_references
from shoal.task_networks import task_networks
from shoal.timeouts import within
from shoal.types import Doc, task_slot

log = logging.getLogger(__name__)
T = TypeVar("T")

EXECUTOR_NAME = PROCESS_EXECUTOR
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_SIGNAL = "SIGTERM"
# After SIGKILL a process normally ends at once; one stuck in the kernel (D state) may not.
KILL_WAIT_SECONDS = 30.0
# Only used where pidfd_open is missing (Linux < 5.3), and for following log files.
POLL_SECONDS = 0.1
LOG_STREAMS = ("stdout", "stderr")
# What is kept of a health check's output (Docker keeps 4096 bytes and marks the cut with "...").
MAX_PROBE_OUTPUT = 4096
_SAFE_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Every child this agent process spawned and has not reaped yet. A controller may be dropped while its process
# runs (the worker stopped without killing tasks, and a new worker in this same process adopts the task): the
# child is still ours to reap. The adopting controller reaps it when it ends; `_reap_finished` sweeps up after
# controllers nobody waits on, at most every REAP_INTERVAL (a sweep polls every child, so it must not run for each
# of thousands of starts).
_UNREAPED: dict[int, subprocess.Popen[bytes]] = {}
REAP_INTERVAL = 5.0
_last_reap = 0.0


def _reap_finished() -> None:
    global _last_reap
    now = time.monotonic()
    if now - _last_reap < REAP_INTERVAL:
        return
    _last_reap = now
    for pid, child in list(_UNREAPED.items()):
        if child.poll() is not None:
            _UNREAPED.pop(pid, None)


# fork/exec waits for the child to exec, a millisecond or more on a busy machine: thousands of starts would stall
# the event loop for seconds, so processes are spawned (and their files made and removed) on threads of their own.
SPAWN_THREADS = 2


# ---- reading the task document ----------------------------------------------------------------------------

def task_argv(container_spec: Doc) -> list[str]:
    """Command + Args when either is given, else the program named by the image."""
    argv = [str(a) for a in (container_spec.get("Command") or [])]
    argv += [str(a) for a in (container_spec.get("Args") or [])]
    if argv:
        return argv
    image = str(container_spec.get("Image") or "")
    try:
        return [ImageReference.parse(image).program]
    except InvalidArgument:
        raise TaskRejected(f"no command given and the image {image!r} names no program") from None


def task_environment(task: Doc, base: dict[str, str], ports: dict[int, int] | None = None) -> dict[str, str]:
    """`base` (PATH, HOME), the spec's "K=V" entries, then shoal's own variables (which cannot be overridden)."""
    env = dict(base)
    spec = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
    for entry in spec.get("Env") or []:
        key, sep, value = str(entry).partition("=")
        if sep and key:
            env[key] = value
    env["SHOAL_TASK_ID"] = str(task["ID"])
    env["SHOAL_SERVICE_NAME"] = str(((task.get("ServiceAnnotations") or {}).get("Name")) or "")
    env["SHOAL_TASK_SLOT"] = str(task_slot(task))
    # The port to listen on (on all addresses) for each published target port; PORT is the first one's.
    for index, (target, port) in enumerate((ports or {}).items()):
        if index == 0:
            env["PORT"] = str(port)
        env[f"PORT_{target}"] = str(port)
    return env


def run_as_argv(argv: list[str], run_as: RunAs | None) -> list[str]:
    """argv run as `run_as` by setpriv, for a wrapper that must itself run as the agent (it execs argv)."""
    if run_as is None:
        return list(argv)
    groups = f"--groups={','.join(str(g) for g in run_as.extra_groups)}" if run_as.extra_groups else "--clear-groups"
    return [_tool("setpriv"), f"--reuid={run_as.uid}", f"--regid={run_as.gid}", groups, "--", *argv]


def namespace_argv(namespace: str, resolv_conf: Path, argv: list[str], run_as: RunAs | None) -> list[str]:
    """argv run in the task's network namespace, with `resolv_conf` as its /etc/resolv.conf (in a mount namespace
    of its own) and as `run_as`: each step execs the next, so the task's process keeps the first one's pid."""
    tail = run_as_argv(argv, run_as)
    script = (f'{shlex.quote(_tool("mount"))} --bind "$0" /etc/resolv.conf 2>/dev/null || echo "shoal: no '
              '/etc/resolv.conf to replace: service names resolve only through the node\'s DNS server" >&2; '
              'exec "$@"')
    return [_tool("nsenter"), f"--net={namespace}", "--", _tool("unshare"), "--mount", "--propagation", "private",
            "--", "/bin/sh", "-c", script, str(resolv_conf), *tail]


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") or name


def parse_signal(name: str) -> signal.Signals:
    """"SIGTERM", "TERM", "term" or "15" → signal.SIGTERM; raises ValueError for anything else."""
    text = name.strip()
    if text.isdigit():
        return signal.Signals(int(text))
    text = text.upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


@dataclass
class RunAs:
    """Whom the process runs as (None: as the agent)."""

    uid: int
    gid: int
    extra_groups: list[int] = field(default_factory=list)
    home: str = "/"


def resolve_user(user: str) -> RunAs | None:
    """ContainerSpec.User ("name", "uid", "name:group", "uid:gid") → ids; None when empty."""
    if not user:
        return None
    user_part, _, group_part = user.partition(":")
    try:
        entry = pwd.getpwuid(int(user_part)) if user_part.isdigit() else pwd.getpwnam(user_part)
    except KeyError:
        if not user_part.isdigit():
            raise TaskRejected(f"unable to find user {user_part}") from None
        entry = None
    uid = entry.pw_uid if entry else int(user_part)
    gid = entry.pw_gid if entry else uid
    if group_part:
        try:
            gid = int(group_part) if group_part.isdigit() else grp.getgrnam(group_part).gr_gid
        except KeyError:
            raise TaskRejected(f"unable to find group {group_part}") from None
    extra = os.getgrouplist(entry.pw_name, gid) if entry else []
    if uid != os.geteuid() and os.geteuid() != 0:
        raise TaskRejected(f"cannot run as user {user}: the agent is not running as root")
    return RunAs(uid=uid, gid=gid, extra_groups=extra, home=entry.pw_dir if entry else "/")


# ---- watching processes through /proc ---------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    state: str        # R, S, D, Z (zombie: it has exited), X, …
    start_ticks: int  # start time in clock ticks since boot: tells a reused pid apart


def read_proc_stat(pid: int) -> ProcStat | None:
    """The process's state and start time from /proc/<pid>/stat, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    fields = text[text.rindex(")") + 2:].split()
    return ProcStat(state=fields[0], start_ticks=int(fields[19]))


def process_alive(pid: int, start_ticks: int) -> bool:
    """True while the process we started (same pid and start time) exists and has not exited."""
    stat = read_proc_stat(pid)
    return stat is not None and stat.start_ticks == start_ticks and stat.state not in ("Z", "X")


@functools.cache
def boot_id() -> str:
    """Changes at every boot: a saved (pid, start time) is meaningless after a reboot (read once)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


async def until_exited(pid: int, start_ticks: int) -> None:
    """Return once the process has exited (it may remain a zombie until its parent reaps it)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    try:
        # Checked after opening the pidfd: if the process is ours now, the pidfd refers to it.
        if not process_alive(pid, start_ticks):
            return
        if pidfd < 0:
            while process_alive(pid, start_ticks):
                await asyncio.sleep(POLL_SECONDS)
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def signal_group(pgid: int, sig: int) -> None:
    """Signal a whole process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---- the executor -----------------------------------------------------------------------------------------

class ProcessExecutor:
    """Runs tasks as host processes; files live under `state_dir` (logs/, scratch/)."""

    def __init__(self, state_dir: Path, task_files: TaskFiles | None = None,
                 cgroup_layout: Layout | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.task_files = task_files  # where tasks' secrets and configs come from (None: refused)
        self._ports_in_use: dict[int, str] = {}  # node port -> task id, for tasks with published ports
        self._spawner = ThreadPoolExecutor(max_workers=SPAWN_THREADS, thread_name_prefix="spawn")
        # The node's overlay, set by the daemon; without it, why tasks cannot go on swarm networks here.
        self.overlay: OverlayDataPath | None = None
        self.overlay_problem = "the node has no overlay"
        # The host's cgroup mounts (None: read when a task first has limits).
        self._cgroup_layout: Layout | None = cgroup_layout

    async def cgroup_layout(self) -> Layout:
        """Where the host's cgroup hierarchies are (read once: mounts do not move under a running agent)."""
        if self._cgroup_layout is None:
            self._cgroup_layout = await self.off_loop(read_layout)
        return self._cgroup_layout

    async def off_loop(self, work: Callable[[], T]) -> T:
        """Run blocking work (fork/exec, file system) on the executor's own threads. Cancelled meanwhile, it
        still waits for the work to finish before giving way, so a process it started is never unknown."""
        future = asyncio.get_running_loop().run_in_executor(self._spawner, work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await future
            raise

    def describe(self) -> Doc:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            cpus = os.cpu_count() or 1
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {
            "Engine": {"EngineVersion": f"shoal-{EXECUTOR_NAME}/{__version__}", "Labels": {}},
            "Platform": {"Architecture": platform.machine(), "OS": platform.system().lower()},
            "Resources": {"NanoCPUs": cpus * 1_000_000_000, "MemoryBytes": memory},
        }

    def log_dir(self, task_id: str) -> Path:
        return self.state_dir / "logs" / _checked_task_id(task_id)

    def scratch_dir(self, task_id: str) -> Path:
        return self.state_dir / "scratch" / _checked_task_id(task_id)

    def resolv_conf(self, task_id: str) -> Path:
        return self.state_dir / "net" / f"{_checked_task_id(task_id)}.resolv.conf"

    def allocate_port(self, task_id: str) -> int:
        """A port free for both TCP and UDP on this machine, not handed to another live task by us."""
        for _attempt in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("0.0.0.0", 0))
                number = int(probe.getsockname()[1])
                if number in self._ports_in_use:
                    continue
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        udp.bind(("0.0.0.0", number))
                except OSError:
                    continue
            self._ports_in_use[number] = task_id
            return number
        raise ExecutorError("no free port to give the task")

    def release_ports(self, task_id: str) -> None:
        for number in [n for n, owner in self._ports_in_use.items() if owner == task_id]:
            del self._ports_in_use[number]

    def controller(self, task: Doc) -> ProcessController:
        return ProcessController(self, task)

    def recover(self, task: Doc, handle: Doc) -> ProcessController:
        pid = int(handle.get("PID") or 0)
        start_ticks = int(handle.get("StartTime") or -1)
        if (handle.get("Executor") != EXECUTOR_NAME or pid <= 0 or handle.get("BootID") != boot_id()
                or not process_alive(pid, start_ticks)):
            raise ExitStatusUnknown(f"process {pid} of task {task['ID']} is gone")
        controller = ProcessController(self, task)
        controller.adopt(pid, start_ticks)
        controller.adopted = True
        controller.ports = {int(target): int(port) for target, port in (handle.get("Ports") or {}).items()}
        if handle.get("Cgroup"):
            controller.cgroup = TaskGroup.from_doc(handle["Cgroup"])
        for port in controller.ports.values():
            self._ports_in_use[port] = str(task["ID"])
        return controller

    async def logs(self, task_id: str, tail: int | None, follow: bool, ended: Callable[[], bool],
                   now: Callable[[], float]) -> AsyncIterator[LogLine]:
        folder = self.log_dir(task_id)
        files = [(stream, folder / f"{stream}.log") for stream in LOG_STREAMS]
        async for line in read_log_files(files, tail, follow, ended, now):
            yield line


def _checked_task_id(task_id: str) -> str:
    # The id becomes a path component: refuse anything that could leave the state directory.
    if not _SAFE_TASK_ID.fullmatch(task_id):
        raise TaskRejected(f"invalid task id {task_id!r}")
    return task_id


class ProcessController(Controller):
    """One task's host process: started by us, or adopted from a saved handle after an agent restart."""

    def __init__(self, executor: ProcessExecutor, task: Doc) -> None:
        self._executor = executor
        self._task = task
        self._task_id = _checked_task_id(str(task["ID"]))
        self._spec: Doc = ((task.get("Spec") or {}).get("ContainerSpec")) or {}
        self._argv: list[str] = []
        self._env: dict[str, str] = {}
        self._cwd: Path | None = None
        self._run_as: RunAs | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # None for an adopted process
        self._pid = 0
        self._start_ticks = -1
        # Target port -> the node port the task listens on instead (several tasks of a service share a node,
        # and the routing mesh owns the published port): the task reads it from $PORT / $PORT_<target>.
        # A task on swarm networks listens on the target port in its namespace; the node port is forwarded.
        self.ports: dict[int, int] = {}
        self._networks = [OverlayNetwork.of(network) for network, _ in task_networks(task)]
        self._namespace: TaskNamespace | None = None
        self._forwarder: PortForwarder | None = None
        self.adopted = False  # taken over after an agent restart: its networks and forwarders are set up again
        self._limits = Limits.of_task(task)
        self.cgroup: TaskGroup | None = None  # the groups enforcing the task's limits (None: it has none)
        self._exit_cause = ""

    # -- steps --

    async def prepare(self) -> None:
        refuse_unsupported_fields(self._task, EXECUTOR_NAME)
        if self._networks:
            if self._executor.overlay is None:
                raise TaskRejected(f"this node cannot put processes on swarm networks: {self._executor.overlay_problem}")
            if any(str(port.get("Protocol") or "tcp") != "tcp" for port in published_ports(self._task)):
                raise TaskRejected("a process task on swarm networks can publish TCP ports only")
        self._argv = task_argv(self._spec)
        if self._limits and self.cgroup is None:
            self.cgroup = await self._plan_cgroup()
        if not self.ports:
            for port in published_ports(self._task):
                target = int(port["TargetPort"])
                if target not in self.ports:
                    self.ports[target] = self._executor.allocate_port(self._task_id)
        await self._executor.off_loop(self._prepare_files)

    def _prepare_files(self) -> None:
        """Who runs it, where, and check that the program exists (user database and file system lookups)."""
        self._resolve_context()
        assert self._cwd is not None
        if self._spec.get("Dir"):
            if not self._cwd.is_dir():
                raise TaskRejected(f"working directory {self._cwd} does not exist")
        else:
            self._mkdir(self._cwd)
        self._find_program()
        self._mkdir(self._executor.log_dir(self._task_id), mode=0o700)
        files = self._executor.task_files
        if files is not None:
            run_as = self._run_as
            files.write(self._task, (run_as.uid, run_as.gid) if run_as else None)
        elif mounts_files(self._task):
            raise TaskRejected("this node was not given a place for secrets and configs")

    async def start(self) -> None:
        if not self._argv:
            await self.prepare()
        argv, run_as = self._argv, self._run_as
        if self._networks:
            await self._join_networks()
            assert self._namespace is not None
            argv = namespace_argv(self._namespace.path, self._executor.resolv_conf(self._task_id), argv, run_as)
            run_as = None  # the wrapper changes user once it has entered the namespaces
        cgroup = self.cgroup
        if cgroup is not None:
            # Joining a group takes the agent's rights: the wrapper joins, then changes user, then execs.
            argv = join_argv(cgroup.procs_files(), run_as_argv(argv, run_as))
            run_as = None
        _reap_finished()
        try:
            await self._executor.off_loop(lambda: self._spawn_in_groups(argv, run_as, cgroup))
        except BaseException:
            await self._leave_networks()
            raise
        _UNREAPED[self._pid] = self._popen  # type: ignore[assignment]
        self._forward_ports()

    async def _join_networks(self) -> None:
        """The task's namespace, attached to its networks, and its resolver's file."""
        overlay = self._executor.overlay
        if overlay is None:
            raise TaskRejected(f"this node cannot put processes on swarm networks: {self._executor.overlay_problem}")
        resolv = self._executor.resolv_conf(self._task_id)
        text = f"nameserver {self._networks[0].gateway}\noptions ndots:0\n"
        await self._executor.off_loop(lambda: _write_file(resolv, text))  # unchanged for an adopted task
        try:
            self._namespace = await overlay.make_task_namespace(self._task_id)
            await overlay.attach(self._task, self._namespace, 0)
        except OverlayError as exc:
            with contextlib.suppress(OverlayError):
                await overlay.release(self._task_id)
            raise ExecutorError(f"attaching the task to its networks: {exc}") from exc

    def _forward_ports(self) -> None:
        if self._networks and self.ports and self._namespace is not None and self._forwarder is None:
            self._forwarder = PortForwarder(self._namespace.path, self.ports)
            self._forwarder.start()

    async def _leave_networks(self) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        overlay = self._executor.overlay
        if self._networks and overlay is not None:
            with contextlib.suppress(OverlayError):
                await overlay.release(self._task_id)
            resolv = self._executor.resolv_conf(self._task_id)
            await self._executor.off_loop(lambda: resolv.unlink(missing_ok=True))

    async def _plan_cgroup(self) -> TaskGroup:
        layout = await self._executor.cgroup_layout()
        try:
            return plan_task_group(self._limits, layout, str(self._task.get("NodeID") or ""), self._task_id)
        except CgroupError as exc:
            raise TaskRejected(str(exc)) from None

    def _spawn_in_groups(self, argv: list[str], run_as: RunAs | None, cgroup: TaskGroup | None) -> None:
        """Make the task's groups (if it has limits), then start it; groups of a start that failed go again."""
        if cgroup is not None:
            try:
                create_groups(cgroup)
            except CgroupError as exc:
                raise TaskRejected(str(exc)) from None
        try:
            self._spawn(argv, run_as)
        except BaseException:
            if cgroup is not None:
                remove_groups(cgroup.groups, wait_seconds=0)
            raise

    def _end_cgroup(self, cgroup: TaskGroup) -> None:
        """The task has ended: note an OOM kill in its groups, then kill what is left there and remove them."""
        if group_oom_kills(cgroup.oom_file) > 0:
            self._exit_cause = out_of_memory(cgroup.memory_bytes)
        left = remove_groups(cgroup.groups)
        if left:
            log.warning("task %s: cgroups %s could not be removed", self._task_id, ", ".join(left))

    def exit_cause(self) -> str:
        """"out of memory: …" when the kernel killed a process of the task at its memory limit."""
        return self._exit_cause

    def _spawn(self, argv: list[str], run_as: RunAs | None) -> None:
        log_dir = self._executor.log_dir(self._task_id)
        try:
            with open(log_dir / "stdout.log", "ab", opener=_private) as stdout, \
                    open(log_dir / "stderr.log", "ab", opener=_private) as stderr:
                self._popen = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=self._cwd,
                    env=self._env, start_new_session=True, close_fds=True,
                    user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
                    extra_groups=run_as.extra_groups if run_as else None,
                )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise TaskRejected(f"{self._argv[0]}: {exc.strerror or exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
                raise ExecutorError(f"cannot start {self._argv[0]} now: {exc}") from exc
            raise TaskRejected(f"{self._argv[0]}: {exc}") from exc
        self._pid = self._popen.pid
        stat = read_proc_stat(self._pid)
        self._start_ticks = stat.start_ticks if stat else -1

    async def wait(self) -> int:
        if self.adopted and self._networks:
            self.adopted = False
            try:
                await self._join_networks()  # attached already: this finds it so, and sets up the VIP rules
                self._forward_ports()
            except (ExecutorError, TaskRejected) as exc:
                # Off its networks it would run unreachable: end it, as a container that cannot be attached.
                log.warning("task %s: %s; killing it", self._task_id, exc)
                signal_group(self._pid, signal.SIGKILL)
        await until_exited(self._pid, self._start_ticks)
        await self._leave_networks()
        await self._executor.off_loop(self._remove_task_files)  # the task ended: its secrets go
        # The main process has ended (a zombie still holds its pid, so the group id cannot be reused yet).
        signal_group(self._pid, signal.SIGKILL)
        cgroup = self.cgroup
        if cgroup is not None:
            # Also what left the process group; and an OOM kill is read before the groups go.
            await self._executor.off_loop(lambda: self._end_cgroup(cgroup))
        if self._popen is None:
            # Adopted within the agent process that started it, it is still our child: reap it, so it does not
            # linger as a zombie. Its status is still unknown to this controller, as after a real restart.
            orphan = _UNREAPED.pop(self._pid, None)
            if orphan is not None:
                orphan.wait()
            raise ExitStatusUnknown(f"process {self._pid} was adopted after an agent restart")
        code = self._popen.wait()  # at once: it has exited (its status may even be cached already)
        _UNREAPED.pop(self._pid, None)
        return 128 - code if code < 0 else code

    async def shutdown(self, grace_seconds: float, signal_name: str) -> None:
        if not self.running():
            return
        try:
            first = parse_signal(signal_name or DEFAULT_STOP_SIGNAL)
        except ValueError:
            log.warning("task %s: unknown stop signal %r, using SIGTERM", self._task_id, signal_name)
            first = signal.SIGTERM
        signal_group(self._pid, first)
        try:
            await within(until_exited(self._pid, self._start_ticks), timeout=max(grace_seconds, 0))
            return
        except TimeoutError:
            log.info("task %s did not stop within %.1fs of %s: killing it", self._task_id, grace_seconds,
                     first.name)
        signal_group(self._pid, signal.SIGKILL)
        try:
            await within(until_exited(self._pid, self._start_ticks), timeout=KILL_WAIT_SECONDS)
        except TimeoutError:
            raise ExecutorError(f"process {self._pid} survived SIGKILL for {KILL_WAIT_SECONDS:.0f}s") from None

    async def backend_ports(self) -> list[Doc]:
        return [backend_port(port, self.ports[int(port["TargetPort"])], "127.0.0.1",
                             self.ports[int(port["TargetPort"])])
                for port in published_ports(self._task) if int(port["TargetPort"]) in self.ports]

    async def remove(self) -> None:
        if self.running():
            raise ExecutorError(f"task {self._task_id} is still running")
        await self._leave_networks()
        folders = (self._executor.scratch_dir(self._task_id), self._executor.log_dir(self._task_id))
        await self._executor.off_loop(lambda: _remove_folders(folders))
        await self._executor.off_loop(self._remove_task_files)
        self._executor.release_ports(self._task_id)
        if self._limits:
            # Also for a task this agent lost track of (its groups are named after its node and id).
            try:
                cgroup = self.cgroup or await self._plan_cgroup()
            except TaskRejected:
                return  # no groups could ever have been made for it here
            await self._executor.off_loop(lambda: remove_groups(cgroup.groups))

    async def probe(self, command: Sequence[str], timeout_seconds: float) -> ProbeResult:
        try:
            if not self._env:
                self._resolve_context()  # an adopted process: prepare() did not run in this agent
            run_as, argv = self._run_as, list(command)
            if self._namespace is not None:  # the check sees what the task sees
                argv = namespace_argv(self._namespace.path, self._executor.resolv_conf(self._task_id), argv, run_as)
                run_as = None
            if self.cgroup is not None:  # and counts against the task's limits, as an exec in a container
                argv = join_argv(self.cgroup.procs_files(), run_as_argv(argv, run_as))
                run_as = None
            with tempfile.TemporaryFile() as output:
                # A file, not a pipe: a check that leaves a background child holding it open cannot hang us.
                checker = await self._executor.off_loop(lambda: subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=self._cwd,
                    env=self._env, start_new_session=True, close_fds=True,
                    user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
                    extra_groups=run_as.extra_groups if run_as else None,
                ))
                exit_code = await _wait_for_probe(checker, timeout_seconds)
                output.seek(0)
                printed = _probe_output(output.read(MAX_PROBE_OUTPUT + 1))
        except (OSError, subprocess.SubprocessError, TaskRejected) as exc:
            return ProbeResult(exit_code=-1, output=f"health check could not be started: {exc}")
        if exit_code is None:
            timed_out = f"Health check exceeded timeout ({timeout_seconds:g}s)"
            return ProbeResult(exit_code=-1, output=f"{timed_out}: {printed}" if printed else timed_out)
        return ProbeResult(exit_code=exit_code, output=printed)

    def handle(self) -> Doc:
        handle: Doc = {"Executor": EXECUTOR_NAME, "PID": self._pid, "StartTime": self._start_ticks,
                       "BootID": boot_id(), "Ports": {str(target): port for target, port in self.ports.items()}}
        if self.cgroup is not None:
            handle["Cgroup"] = self.cgroup.to_doc()
        return handle

    def pid(self) -> int:
        return self._pid

    # -- helpers --

    def adopt(self, pid: int, start_ticks: int) -> None:
        """Watch a process started by an earlier agent (not our child: its exit status will be unknown)."""
        self._pid = pid
        self._start_ticks = start_ticks

    def running(self) -> bool:
        return self._pid > 0 and process_alive(self._pid, self._start_ticks)

    def _resolve_context(self) -> None:
        """Whom the task runs as, its environment and working directory (creating nothing)."""
        self._run_as = resolve_user(str(self._spec.get("User") or ""))
        base = {"PATH": os.environ.get("PATH") or DEFAULT_PATH,
                "HOME": self._run_as.home if self._run_as else os.environ.get("HOME", "/")}
        # In a namespace of its own, the task listens on the target ports themselves.
        ports = {target: target for target in self.ports} if self._networks else self.ports
        self._env = task_environment(self._task, base, ports)
        files = self._executor.task_files
        if files is not None:
            try:
                kinds = {ref.kind for ref in task_references(self._task)}
            except BadReference:
                kinds = set()  # prepare rejects the task
            if SECRET in kinds:
                self._env["SHOAL_SECRETS_DIR"] = str(files.kind_dir(self._task_id, SECRET))
            if CONFIG in kinds:
                self._env["SHOAL_CONFIGS_DIR"] = str(files.kind_dir(self._task_id, CONFIG))
        work_dir = str(self._spec.get("Dir") or "")
        self._cwd = Path(work_dir) if work_dir else self._executor.scratch_dir(self._task_id)

    def _remove_task_files(self) -> None:
        if self._executor.task_files is not None:
            self._executor.task_files.remove(self._task_id)

    def _find_program(self) -> None:
        program = self._argv[0]
        if "/" in program:
            path = Path(program) if program.startswith("/") else (self._cwd or Path.cwd()) / program
            if not path.is_file() or not os.access(path, os.X_OK):
                raise TaskRejected(f'exec: "{program}": no such executable file')
        elif shutil.which(program, path=self._env.get("PATH")) is None:
            raise TaskRejected(f'exec: "{program}": executable file not found in $PATH')

    def _mkdir(self, folder: Path, mode: int = 0o777) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as exc:
            raise ExecutorError(f"cannot create {folder}: {exc}") from exc


def _private(path: str, flags: int) -> int:
    """Open a file that only its owner may read (task logs can hold anything a task prints)."""
    return os.open(path, flags, 0o600)


def _write_file(path: Path, text: str) -> None:
    """Write `text` unless the file holds it already (a running task may have it bind-mounted)."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)  # read by the task, whoever it runs as


def _remove_folders(folders: Sequence[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


async def _wait_for_probe(checker: subprocess.Popen[bytes], timeout_seconds: float) -> int | None:
    """The check's exit code, or None when it ran past its timeout (then its whole group is killed). Whatever
    it left running in its process group is killed too; cancelled, it kills the check and returns nothing."""
    _UNREAPED[checker.pid] = checker
    stat = read_proc_stat(checker.pid)
    start_ticks = stat.start_ticks if stat else -1
    try:
        await within(until_exited(checker.pid, start_ticks), timeout=max(timeout_seconds, 0))
        timed_out = False
    except TimeoutError:
        timed_out = True
    finally:
        # Before reaping: the group id cannot be reused while the leader is a zombie.
        signal_group(checker.pid, signal.SIGKILL)
    try:
        await within(until_exited(checker.pid, start_ticks), timeout=KILL_WAIT_SECONDS)
    except TimeoutError:
        log.warning("health check process %d survived SIGKILL", checker.pid)
        return None
    code = checker.wait()
    _UNREAPED.pop(checker.pid, None)
    if timed_out:
        return None
    return 128 - code if code < 0 else code


def _probe_output(data: bytes) -> str:
    text = data[:MAX_PROBE_OUTPUT].decode(errors="replace")
    return text + "..." if len(data) > MAX_PROBE_OUTPUT else text


# ---- logs ---------------------------------------------------------------------------------------------------

@dataclass
class _LogFile:
    stream: str
    path: Path
    offset: int = 0
    partial: bytes = b""  # the start of a line whose newline has not been written yet

    def read_new(self) -> list[bytes]:
        """Complete lines written since the last read."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        return self.split(data)

    def flush(self) -> list[bytes]:
        line, self.partial = self.partial, b""
        return [line] if line else []

    def split(self, data: bytes) -> list[bytes]:
        lines = (self.partial + data).splitlines(keepends=True)
        self.partial = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        return lines


def _last_lines(path: Path, count: int, block: int = 65536) -> tuple[bytes, int]:
    """The bytes of (at least) the last `count` lines of a file and the file size they end at."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start, data = size, b""
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - block)
            f.seek(start)
            data = f.read(size - start)
    if start > 0:
        # Starts mid-line: drop that fragment (there are more than `count` newlines after it).
        data = data[data.index(b"\n") + 1:]
    return data, size


async def read_log_files(files: list[tuple[str, Path]], tail: int | None, follow: bool,
                         ended: Callable[[], bool], now: Callable[[], float]) -> AsyncIterator[LogLine]:
    """Lines of a task's log files, oldest first, as (stream, timestamp, line).

    Lines already written carry their file's modification time (nothing finer is recorded); lines read while
    following carry the time they were read. `tail` counts lines over all streams. A last line without its
    newline is yielded when not following, or once the task has ended.
    """
    readers = [_LogFile(stream, path) for stream, path in files]
    task_ended = ended()
    backlog: list[tuple[float, int, LogLine]] = []
    for index, reader in enumerate(readers):
        try:
            mtime = reader.path.stat().st_mtime
            if tail is None:
                lines = reader.read_new()
            else:
                data, reader.offset = _last_lines(reader.path, tail)
                lines = reader.split(data)
        except FileNotFoundError:
            continue
        if not follow or task_ended:
            lines += reader.flush()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        backlog += [(mtime, index, (reader.stream, mtime, line)) for line in lines]
    backlog.sort(key=lambda entry: (entry[0], entry[1]))  # stable: each file's lines keep their order
    if tail is not None:
        backlog = backlog[-tail:] if tail > 0 else []
    for _, _, old_line in backlog:
        yield old_line
    if not follow or task_ended:
        return
    while True:
        # Checked before reading: whatever the task wrote before it ended is read in this round.
        finished = ended()
        got_any = False
        for reader in readers:
            fresh = reader.read_new() + (reader.flush() if finished else [])
            got_any = got_any or bool(fresh)
            stamp = now()
            for line in fresh:
                yield (reader.stream, stamp, line)
        if finished:
            return
        if not got_any:
            await asyncio.sleep(POLL_SECONDS)
