"""A process task's resource limits, enforced by a Linux control group of its own (cgroup v2, or v1).

`TaskTemplate.Resources.Limits` {NanoCPUs, MemoryBytes, Pids} are applied as Docker applies them to a
container (runc's settings): a CPU quota per 100 ms period, a memory limit with as much swap again (Docker's
default MemorySwap is twice Memory), and a process count limit. Reservations are the scheduler's business:
nothing is enforced for them on the node, so a task without limits needs no group at all.

Where the groups live: `<hierarchy>/shoal/<node id>/<task id>`, so that several nodes of a playground on one
host never share one. On a unified (v2) host that is one directory with the `cpu`, `memory` and `pids`
controllers enabled down the way; on a v1 or hybrid host (the v2 mount has no controllers) it is one directory
per controller hierarchy (`/sys/fs/cgroup/memory/shoal/…`, `/sys/fs/cgroup/cpu/shoal/…`). v2 is used when it
offers every controller the task needs, else v1 when it does; else the task is rejected, naming what is
missing — a task that asks for limits never runs unlimited.

The process joins its groups before the task's program runs: a small shell wrapper writes its own pid into
each group's `cgroup.procs`, then execs the program (`join_argv`), so nothing of the task ever runs outside.
An OOM kill shows in the group's `oom_kill` counter (v2 `memory.events`, v1 `memory.oom_control`), read when
the task ends, before its groups are removed.

Pure: the mount table and the limits in, the directories and file writes out (`plan_task_group`), counters
parsed from text. The I/O (`create_groups`, `remove_groups`, `read_layout`) is thin and blocking: callers run
it off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.types import Doc

PARENT = "shoal"
# runc's default CFS period; the kernel takes quotas from 1 ms and periods up to 1 s.
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
MAX_CPU_PERIOD_US = 1_000_000
NANO = 1_000_000_000
# The controller each limit needs, and the spec field it comes from (for the rejection message).
CONTROLLERS = (("cpu", "NanoCPUs"), ("memory", "MemoryBytes"), ("pids", "Pids"))
# How long removing a group waits for the processes it killed to be gone.
REMOVE_WAIT_SECONDS = 5.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Held while a node's folder is made or removed, so that removing it (after its last task) never races with a
# task of the same node being set up (agents of different nodes share nothing but the `shoal` folder, kept).
_NODE_FOLDERS = threading.Lock()


class CgroupError(Exception):
    """The task's groups cannot be made or used here (what is missing, or what the kernel refused)."""


# ---- pure --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The limits of `TaskTemplate.Resources.Limits` that a group enforces (0: none)."""

    nano_cpus: int = 0
    memory_bytes: int = 0
    pids: int = 0

    @classmethod
    def of_task(cls, task: Doc) -> Limits:
        limits = (((task.get("Spec") or {}).get("Resources")) or {}).get("Limits") or {}
        return cls(nano_cpus=max(0, int(limits.get("NanoCPUs") or 0)),
                   memory_bytes=max(0, int(limits.get("MemoryBytes") or 0)),
                   pids=max(0, int(limits.get("Pids") or 0)))

    def controllers(self) -> list[str]:
        """The controllers these limits need, in a fixed order."""
        values = {"cpu": self.nano_cpus, "memory": self.memory_bytes, "pids": self.pids}
        return [name for name, _ in CONTROLLERS if values[name] > 0]

    def __bool__(self) -> bool:
        return bool(self.nano_cpus or self.memory_bytes or self.pids)


@dataclass(frozen=True)
class Layout:
    """Where the host's cgroup hierarchies are mounted: the v2 one (with the controllers its root offers) and
    the v1 ones (controller → mount point; co-mounted controllers share a mount point)."""

    unified: str | None = None
    unified_controllers: frozenset[str] = frozenset()
    v1: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Write:
    """One value written to one control file; an optional one is skipped when the kernel lacks the file (swap
    accounting off, say)."""

    path: str
    value: str
    optional: bool = False


@dataclass(frozen=True)
class TaskGroup:
    """What the task's groups are and how they are set up, in order: make `parents`, apply `enable` (v2: the
    controllers handed down), make `groups`, apply `limits`. `oom_file` holds the oom_kill counter."""

    version: int
    parents: tuple[str, ...]
    enable: tuple[Write, ...]
    groups: tuple[str, ...]
    limits: tuple[Write, ...]
    oom_file: str = ""
    memory_bytes: int = 0

    def procs_files(self) -> list[str]:
        return [f"{group}/cgroup.procs" for group in self.groups]

    def to_doc(self) -> Doc:
        """What a task handle keeps, so that an agent restarted meanwhile finds the groups again."""
        return {"Version": self.version, "Groups": list(self.groups), "OOMFile": self.oom_file,
                "MemoryBytes": self.memory_bytes}

    @classmethod
    def from_doc(cls, doc: Doc) -> TaskGroup:
        return cls(version=int(doc.get("Version") or 0), parents=(), enable=(),
                   groups=tuple(str(g) for g in doc.get("Groups") or []), limits=(),
                   oom_file=str(doc.get("OOMFile") or ""), memory_bytes=int(doc.get("MemoryBytes") or 0))


def parse_mounts(text: str) -> tuple[str | None, dict[str, str]]:
    """The v2 mount point and the v1 controller → mount point map, from /proc/self/mounts."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = _unescape(fields[1])
        if fields[2] == "cgroup2" and unified is None:
            unified = point
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in {name for name, _ in CONTROLLERS} and option not in v1:
                    v1[option] = point
    return unified, v1


def _unescape(text: str) -> str:
    # The kernel writes a space in a mount point as \040 (and tab, newline, backslash likewise).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def cpu_max(nano_cpus: int) -> tuple[int, int]:
    """(quota, period) in microseconds for a CPU limit: runc's 100 ms period; a limit too small for a 1 ms quota
    in that period gets a longer period instead, so 0.001 CPU is still exact (1 ms every second)."""
    quota = nano_cpus * CPU_PERIOD_US // NANO
    if quota >= MIN_CPU_QUOTA_US:
        return quota, CPU_PERIOD_US
    period = min(MAX_CPU_PERIOD_US, -(-MIN_CPU_QUOTA_US * NANO // nano_cpus))
    return MIN_CPU_QUOTA_US, period


def safe_name(name: str, fallback: str) -> str:
    """A path component made of an id (the ids are checked elsewhere; this only keeps odd ones out)."""
    return name if _SAFE_NAME.fullmatch(name) else fallback


def plan_task_group(limits: Limits, layout: Layout, node_id: str, task_id: str) -> TaskGroup:
    """The groups that enforce `limits` for one task, or CgroupError naming what the host lacks."""
    needed = limits.controllers()
    node = safe_name(node_id, "node")
    task = safe_name(task_id, "task")
    if layout.unified is not None and needed and set(needed) <= layout.unified_controllers:
        return _plan_v2(limits, layout.unified, needed, node, task)
    if needed and all(name in layout.v1 for name in needed):
        return _plan_v1(limits, layout.v1, needed, node, task)
    missing = [name for name in needed if name not in layout.v1 and name not in layout.unified_controllers]
    if not missing:  # each exists, but not all in one version
        missing = [name for name in needed if name not in layout.v1]
    fields = dict(CONTROLLERS)
    named = ", ".join(f"{name} (for Limits.{fields[name]})" for name in missing)
    raise CgroupError(f"this node cannot enforce the task's resource limits: no cgroup controller {named} "
                      "is available to the agent")


def _plan_v2(limits: Limits, root: str, needed: list[str], node: str, task: str) -> TaskGroup:
    top, node_dir, group = f"{root}/{PARENT}", f"{root}/{PARENT}/{node}", f"{root}/{PARENT}/{node}/{task}"
    # A controller reaches a group only when every ancestor hands it down (cgroup.subtree_control).
    enable = tuple(Write(f"{parent}/cgroup.subtree_control", f"+{name}")
                   for parent in (root, top, node_dir) for name in needed)
    writes: list[Write] = []
    if limits.nano_cpus:
        quota, period = cpu_max(limits.nano_cpus)
        writes.append(Write(f"{group}/cpu.max", f"{quota} {period}"))
    if limits.memory_bytes:
        writes.append(Write(f"{group}/memory.max", str(limits.memory_bytes)))
        writes.append(Write(f"{group}/memory.swap.max", str(limits.memory_bytes), optional=True))
    if limits.pids:
        writes.append(Write(f"{group}/pids.max", str(limits.pids)))
    return TaskGroup(version=2, parents=(top, node_dir), enable=enable, groups=(group,), limits=tuple(writes),
                     oom_file=f"{group}/memory.events" if limits.memory_bytes else "",
                     memory_bytes=limits.memory_bytes)


def _plan_v1(limits: Limits, mounts: dict[str, str], needed: list[str], node: str, task: str) -> TaskGroup:
    def group_of(controller: str) -> str:
        return f"{mounts[controller]}/{PARENT}/{node}/{task}"

    parents: list[str] = []
    groups: list[str] = []
    for name in needed:
        mount = mounts[name]
        for directory in (f"{mount}/{PARENT}", f"{mount}/{PARENT}/{node}"):
            if directory not in parents:
                parents.append(directory)
        if group_of(name) not in groups:
            groups.append(group_of(name))
    writes: list[Write] = []
    if limits.nano_cpus:
        quota, period = cpu_max(limits.nano_cpus)
        # The period first: the quota is checked against it.
        writes.append(Write(f"{group_of('cpu')}/cpu.cfs_period_us", str(period)))
        writes.append(Write(f"{group_of('cpu')}/cpu.cfs_quota_us", str(quota)))
    if limits.memory_bytes:
        memory = group_of("memory")
        # memory+swap must never be below memory: the memory limit goes first.
        writes.append(Write(f"{memory}/memory.limit_in_bytes", str(limits.memory_bytes)))
        writes.append(Write(f"{memory}/memory.memsw.limit_in_bytes", str(2 * limits.memory_bytes), optional=True))
    if limits.pids:
        writes.append(Write(f"{group_of('pids')}/pids.max", str(limits.pids)))
    return TaskGroup(version=1, parents=tuple(parents), enable=(), groups=tuple(groups), limits=tuple(writes),
                     oom_file=f"{group_of('memory')}/memory.oom_control" if limits.memory_bytes else "",
                     memory_bytes=limits.memory_bytes)


def oom_kills(text: str) -> int:
    """The `oom_kill` counter of v2 memory.events or v1 memory.oom_control (0 when the kernel has none)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def join_argv(procs_files: Sequence[str], argv: Sequence[str]) -> list[str]:
    """argv started by a shell that first moves itself into each group (by writing its pid into the group's
    cgroup.procs), then execs argv: the task's program starts inside, with the shell's pid. A group that
    cannot be joined ends it with 125 (Docker's code for a container that could not be started)."""
    script = ('while [ "$1" != -- ]; do echo $$ > "$1" || { echo "shoal: cannot join the task\'s cgroup $1" >&2; '
              'exit 125; }; shift; done; shift; exec "$@"')
    return ["/bin/sh", "-c", script, "shoal-cgroup", *procs_files, "--", *argv]


# ---- I/O (blocking: run it off the event loop) ---------------------------------------------------------------

def read_layout(mounts_file: str = "/proc/self/mounts") -> Layout:
    """The host's cgroup mounts, and the controllers the v2 root offers."""
    try:
        unified, v1 = parse_mounts(Path(mounts_file).read_text())
    except OSError:
        return Layout()
    controllers: frozenset[str] = frozenset()
    if unified is not None:
        with contextlib.suppress(OSError):
            controllers = frozenset(Path(unified, "cgroup.controllers").read_text().split())
    return Layout(unified=unified, unified_controllers=controllers, v1=v1)


def create_groups(plan: TaskGroup) -> None:
    """Make the task's groups and set their limits (an existing group is reused: a start tried again). On
    failure, what was made for the task is removed and CgroupError says what the kernel refused."""
    try:
        with _NODE_FOLDERS:
            for directory in plan.parents:
                _mkdir(directory)
            for write in plan.enable:
                _enable(write)
            for directory in plan.groups:
                _mkdir(directory)
        for write in plan.limits:
            _write(write)
    except CgroupError:
        remove_groups(plan.groups, wait_seconds=0)
        raise


def _mkdir(directory: str) -> None:
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {directory}: {_why(exc)}") from exc


def _enable(write: Write) -> None:
    # Enabling a controller already enabled is harmless; read first to skip the write when it is there.
    with contextlib.suppress(OSError):
        if write.value[1:] in Path(write.path).read_text().split():
            return
    _write(write)


def _write(write: Write) -> None:
    try:
        with open(write.path, "w") as f:
            f.write(write.value)
    except FileNotFoundError as exc:
        if write.optional:
            return
        raise CgroupError(f"cannot set {write.path}: the kernel has no such control") from exc
    except OSError as exc:
        raise CgroupError(f"cannot write {write.value!r} to {write.path}: {_why(exc)}") from exc


def _why(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return f"{text} (the agent is not running as root)"
    if exc.errno == errno.EROFS:
        return f"{text} (the cgroup file system is mounted read-only here)"
    return text


def group_oom_kills(oom_file: str) -> int:
    if not oom_file:
        return 0
    try:
        return oom_kills(Path(oom_file).read_text())
    except OSError:
        return 0


def group_pids(group: str) -> list[int]:
    try:
        return [int(pid) for pid in Path(group, "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_groups(groups: Sequence[str], wait_seconds: float = REMOVE_WAIT_SECONDS) -> list[str]:
    """Kill whatever still runs in the task's groups, remove them (waiting up to `wait_seconds` for the killed
    processes to be gone), then their node's folder when it is empty. Returns the groups left behind."""
    deadline = time.monotonic() + wait_seconds
    left: list[str] = []
    for group in groups:
        while True:
            for pid in group_pids(group):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    left.append(group)
                    break
            time.sleep(0.02)
        # The node's folder goes with its last task.
        with _NODE_FOLDERS, contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(group))
    return left
