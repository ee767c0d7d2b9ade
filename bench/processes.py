"""Thousands of real task processes on the 3-node playground (1 manager, 2 workers), machine idle and busy.

For each run, on a fresh playground: the time from `service create --replicas N` (busybox sleep, through the
API) until all N run (the manager's counted RunningTasks, and N task processes on this machine); the daemons'
CPU while the N tasks idle (their own `Process.CPUSeconds` over a window, plus etcd's from /proc); the time to
scale N -> 0 until no task process is left; leader changes, nodes marked down (the manager's counter, and
`GET /nodes` sampled throughout), and the worst event-loop lag and stall count per daemon. "Busy" runs the
same beside 4 CPU-bound processes. Prints the per-run figures and a table of medians.

Usage: python -m bench.processes [--replicas 5000] [--runs 3] [--idle-only | --busy-only] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench.common import Swarm
from shoal import playground

SERVICE = "sleepers"
HOGS = 4
NODES_POLL_SECONDS = 0.5    # GET /nodes, to catch a node shown not ready even briefly
DEBUG_POLL_SECONDS = 5.0    # GET /shoal/debug per daemon: its lag window is 60 s, so this misses no maximum
PROGRESS_SECONDS = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- task processes, found through /proc ------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, float] | None:
    """(state, start ticks, CPU seconds) of a pid from /proc/<pid>/stat; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state is field 3, utime/stime 14/15, starttime 22 (1-based, as in proc(5)).
    return fields[0].decode(), int(fields[19]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def task_processes(marker: str) -> dict[int, int]:
    """pid -> start ticks of every live (not zombie) process whose command line is `sleep <marker>`: the task
    processes of this run, wherever the agents started them. The marker is unique per run, so nothing else
    on the machine is counted."""
    wanted = b"sleep\0" + marker.encode() + b"\0"
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read() != wanted:
                    continue
        except OSError:
            continue
        stat = _stat(int(name))
        if stat is not None and stat[0] not in "ZX":
            found[int(name)] = stat[1]
    return found


def still_alive(pids: dict[int, int]) -> dict[int, int]:
    """The subset of known task processes still running: one /proc read per pid, far cheaper than a full scan
    while thousands exit (a pid reused by another process has another start time)."""
    alive = {}
    for pid, start in pids.items():
        stat = _stat(pid)
        if stat is not None and stat[0] not in "ZX" and stat[1] == start:
            alive[pid] = start
    return alive


def kill_marked(marker: str) -> int:
    """SIGKILL any task process of this run still around (after the playground is removed there should be
    none); returns how many there were."""
    left = task_processes(marker)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


# ---- waiting with deadlines --------------------------------------------------------------------------------

class BenchError(Exception):
    """A wait that missed its deadline, or the swarm misbehaving; the run fails with this message."""


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float,
               describe: Callable[[], str] = lambda: "", started: float | None = None,
               alive: Callable[[], None] = lambda: None) -> float:
    """Seconds from `started` (default: now) until `check()` holds; prints progress now and then, and raises
    BenchError naming `what` and the current state after `timeout`. `alive()` raises if a daemon died, so a
    crash ends the wait at once instead of at the deadline."""
    start = time.monotonic() if started is None else started
    deadline = time.monotonic() + timeout
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while True:
        if check():
            return time.monotonic() - start
        alive()
        now = time.monotonic()
        if now >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what} ({describe()})")
        if now >= next_progress:
            print(f"    ... {now - start:.0f}s, still waiting for {what}: {describe()}", flush=True)
            next_progress = now + PROGRESS_SECONDS
        time.sleep(interval)


# ---- watching the swarm while it works ---------------------------------------------------------------------

@dataclass
class DaemonWatch:
    """What one daemon's debug endpoint said over the run."""

    name: str
    pid: int
    socket: str
    max_lag_ms: float = 0.0
    stalls: int = 0
    last_stall: dict[str, Any] | None = None
    last: dict[str, Any] = field(default_factory=dict)
    failures: int = 0   # debug requests that failed (daemon not answering within the timeout)


class Watcher:
    """A thread that samples `GET /nodes` on the manager (any node not "ready" is a false Down: nothing here
    stops a node) and every daemon's debug endpoint (the lag window is 60 s, so the run's maximum is the
    maximum of the samples), and notices a daemon that died."""

    def __init__(self, swarm: Swarm) -> None:
        self.manager_socket = swarm.nodes[0].socket
        self.daemons = [DaemonWatch(n.name, n.pid, n.socket) for n in swarm.nodes]
        self.episodes: list[Episode] = []      # each stretch of samples in which a node was not ready
        self._open: dict[str, Episode] = {}
        self.nodes_failures = 0
        self.dead: list[str] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def check_alive(self) -> None:
        """Raise if a daemon has exited (called by the main thread's waits)."""
        dead = [d.name for d in self.daemons if not playground._alive(d.pid)]
        if dead:
            raise BenchError(f"daemon(s) exited during the run: {', '.join(dead)}")

    def sample_debug(self, daemon: DaemonWatch, client: httpx.Client | None = None) -> dict[str, Any] | None:
        """One debug sample of a daemon, folded into its watch; None when it does not answer."""
        try:
            if client is None:
                with playground.api(daemon.socket, timeout=30) as own:
                    info = own.get("/shoal/debug").raise_for_status().json()
            else:
                info = client.get("/shoal/debug").raise_for_status().json()
        except httpx.HTTPError:
            with self._lock:
                daemon.failures += 1
            return None
        loop = info.get("Loop", {})
        with self._lock:
            daemon.max_lag_ms = max(daemon.max_lag_ms, float(loop.get("lag_ms", {}).get("max", 0.0)))
            daemon.stalls = max(daemon.stalls, int(loop.get("stalls", 0)))
            if loop.get("last_stall"):
                daemon.last_stall = loop["last_stall"]
            daemon.last = info
        return info

    def _note_states(self, nodes: list[dict[str, Any]], at: float) -> None:
        """Open an episode when a node turns not ready (or changes not-ready state), close it when ready."""
        for node in nodes:
            name = str(node["Description"]["Hostname"])
            state = str(node.get("Status", {}).get("State"))
            episode = self._open.get(name)
            if episode is not None and episode.state != state:
                del self._open[name]
                episode = None
            if state == "ready":
                continue
            if episode is None:
                episode = Episode(name, state, at, at)
                self._open[name] = episode
                self.episodes.append(episode)
            episode.last_seen = at

    def _run(self) -> None:
        clients = {d.name: playground.api(d.socket, timeout=30) for d in self.daemons}
        nodes_client = playground.api(self.manager_socket, timeout=30)
        next_debug = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    nodes = nodes_client.get("/nodes").raise_for_status().json()
                    with self._lock:
                        self._note_states(nodes, time.time())
                except httpx.HTTPError:
                    with self._lock:
                        self.nodes_failures += 1
                if now >= next_debug:
                    for daemon in self.daemons:
                        if not playground._alive(daemon.pid):
                            if daemon.name not in self.dead:
                                self.dead.append(daemon.name)
                            continue
                        self.sample_debug(daemon, clients[daemon.name])
                    next_debug = now + DEBUG_POLL_SECONDS
                self._stop.wait(NODES_POLL_SECONDS)
        finally:
            for client in (*clients.values(), nodes_client):
                client.close()


@dataclass
class Episode:
    """A node seen not ready in consecutive samples of GET /nodes (wall-clock times)."""

    node: str
    state: str
    first_seen: float
    last_seen: float


# ---- one run -----------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    machine: str
    run: int
    create_api_s: float = float("nan")     # until the manager counts N running
    create_s: float = float("nan")         # until that and N task processes on the machine
    idle_cpu: dict[str, float] = field(default_factory=dict)    # % of one core, per daemon (and etcd)
    idle_window_s: float = 0.0
    scale_s: float = float("nan")          # until no task process is left
    scale_api_s: float = float("nan")      # until the manager counts 0 running
    leader_changes: int = 0                # sum(ElectionsWon - 1) + LeadershipsLost, over managers
    elections_won: int = 0
    leaderships_lost: int = 0
    marked_down: int = 0                   # the dispatcher's NodesMarkedDown
    down_seen: int = 0                     # episodes of a node shown "down" by GET /nodes
    other_not_ready: int = 0               # episodes of any other not-ready state ("unknown", ...)
    load: tuple[float, float] = (0.0, 0.0)    # 1-minute load average at the start and the end
    phases: list[tuple[str, float]] = field(default_factory=list)   # (phase, wall-clock start)
    max_lag_ms: dict[str, float] = field(default_factory=dict)
    stalls: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    logs: str = ""

    @property
    def false_downs(self) -> int:
        return self.marked_down + self.down_seen

    def phase_at(self, at: float) -> str:
        name = "start"
        for phase, start in self.phases:
            if at >= start:
                name = phase
        return name


def running_tasks(swarm: Swarm) -> int:
    for service in swarm.get("/services", status="true"):
        if service["Spec"]["Name"] == SERVICE:
            return int(service.get("ServiceStatus", {}).get("RunningTasks", 0))
    raise BenchError(f"service {SERVICE} is missing from GET /services")


def etcd_pids(swarm: Swarm) -> dict[str, int]:
    """The managers' etcd members: processes of their own, outside the daemons' CPUSeconds."""
    found = {}
    for node in swarm.nodes:
        with contextlib.suppress(OSError, ValueError):
            found[f"etcd@{node.name}"] = int((Path(node.state_dir) / "etcd.pid").read_text())
    return found


def measure_idle_cpu(swarm: Swarm, watcher: Watcher, seconds: float) -> tuple[dict[str, float], float]:
    """% of one core each daemon (its own CPUSeconds) and each etcd member (/proc) used over `seconds`."""
    etcd = etcd_pids(swarm)

    def snapshot() -> tuple[float, dict[str, float]]:
        cpu: dict[str, float] = {}
        for daemon in watcher.daemons:
            info = watcher.sample_debug(daemon)
            if info is None:
                raise BenchError(f"{daemon.name} did not answer GET /shoal/debug")
            cpu[daemon.name] = float(info["Process"]["CPUSeconds"])
        for name, pid in etcd.items():
            stat = _stat(pid)
            if stat is not None:
                cpu[name] = stat[2]
        return time.monotonic(), cpu

    t0, before = snapshot()
    time.sleep(seconds)
    t1, after = snapshot()
    percent = {name: 100.0 * (after[name] - before[name]) / (t1 - t0) for name in after if name in before}
    return percent, t1 - t0


def update_replicas(swarm: Swarm, replicas: int) -> None:
    service = swarm.get(f"/services/{SERVICE}")
    spec = service["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = replicas
    swarm.post(f"/services/{service['ID']}/update", spec, version=service["Version"]["Index"])


def one_run(machine: str, run: int, args: argparse.Namespace) -> RunResult:
    """A fresh playground: create N, idle, scale to 0; the playground is removed whatever happens, its logs
    copied out first when something went wrong."""
    result = RunResult(machine, run)
    marker = f"100000.{random.randrange(10**6):06d}"   # `sleep 100000.NNNNNN`: unique to this run
    n = args.replicas
    print(f"[{machine} run {run + 1}] starting a playground on {args.subnet}.x (sleep {marker})", flush=True)
    try:
        result.load = (os.getloadavg()[0], 0.0)
        swarm = Swarm(1, 2, args.subnet)
    except Exception as exc:  # playground.up has removed what it started
        result.error = f"playground up: {type(exc).__name__}: {exc}"
        print(f"[{machine} run {run + 1}] FAILED: {result.error}", flush=True)
        return result
    watcher = Watcher(swarm)
    try:
        watcher.start()
        try:
            _measure(swarm, watcher, marker, n, args, result)
        finally:
            watcher.stop()
            _figures(watcher, result)
    except (BenchError, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"[{machine} run {run + 1}] FAILED: {result.error}", flush=True)
    finally:
        watcher.stop()
        result.load = (result.load[0], os.getloadavg()[0])
        result.notes += log_summary(swarm, result)
        if result.error or result.leader_changes or result.false_downs or args.keep_logs:
            result.logs = copy_logs(swarm, machine, run)
            print(f"[{machine} run {run + 1}] logs copied to {result.logs}", flush=True)
        swarm.down()
        left = kill_marked(marker)
        if left:
            result.notes.append(f"{left} task processes were left after the playground was removed (killed)")
    return result


def _measure(swarm: Swarm, watcher: Watcher, marker: str, n: int, args: argparse.Namespace,
             result: RunResult) -> None:
    label = f"[{result.machine} run {result.run + 1}]"
    procs: dict[int, int] = {}
    api_running = 0

    def api_state() -> str:
        return f"manager counts {api_running} running"

    # 1. create -> all N running, by the manager's count, then by the processes on this machine
    result.phases.append(("create", time.time()))
    start = time.monotonic()
    swarm.post("/services/create", {"Name": SERVICE, "Mode": {"Replicated": {"Replicas": n}},
                                    "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                                        "Args": ["sleep", marker]}}})

    def all_counted() -> bool:
        nonlocal api_running
        api_running = running_tasks(swarm)
        return api_running == n

    result.create_api_s = wait_until(f"{n} tasks counted running", all_counted, args.timeout, 0.25,
                                     api_state, start, watcher.check_alive)

    def all_processes() -> bool:
        nonlocal procs
        procs = task_processes(marker)
        return len(procs) == n

    result.create_s = wait_until(f"{n} task processes", all_processes, args.timeout, 0.25,
                                 lambda: f"{len(procs)} processes", start, watcher.check_alive)
    print(f"{label} create -> {n} running: {result.create_s:.1f}s "
          f"(manager's count: {result.create_api_s:.1f}s)", flush=True)

    # 2. the daemons' CPU while the tasks idle
    result.phases.append(("settle", time.time()))
    time.sleep(args.settle)
    result.phases.append(("idle", time.time()))
    result.idle_cpu, result.idle_window_s = measure_idle_cpu(swarm, watcher, args.idle_seconds)
    print(f"{label} CPU over {result.idle_window_s:.0f}s idle: "
          + ", ".join(f"{k} {v:.1f}%" for k, v in result.idle_cpu.items()), flush=True)
    still = task_processes(marker)
    if len(still) != n:
        result.notes.append(f"after idling {len(still)} task processes run, not {n}")
    lost = set(procs) - set(still)
    if lost:
        result.notes.append(f"{len(lost)} task processes ended while idling (restarted or replaced)")
    procs = still

    # 3. scale N -> 0 until no task process is left (the known pids first, then a full scan for stragglers)
    result.phases.append(("scale", time.time()))
    start = time.monotonic()
    update_replicas(swarm, 0)

    def no_processes() -> bool:
        nonlocal procs
        procs = still_alive(procs)
        if procs:
            return False
        procs = task_processes(marker)
        return not procs

    result.scale_s = wait_until("no task process left", no_processes, args.timeout, 0.1,
                                lambda: f"{len(procs)} processes", start, watcher.check_alive)

    def none_counted() -> bool:
        nonlocal api_running
        api_running = running_tasks(swarm)
        return api_running == 0

    result.scale_api_s = wait_until("0 tasks counted running", none_counted, args.timeout, 0.25,
                                    api_state, start, watcher.check_alive)
    print(f"{label} scale {n} -> 0, no process left: {result.scale_s:.1f}s "
          f"(manager's count 0: {result.scale_api_s:.1f}s)", flush=True)
    with swarm.api() as client:
        client.delete(f"/services/{SERVICE}").raise_for_status()
    result.phases.append(("end", time.time()))


def _figures(watcher: Watcher, result: RunResult) -> None:
    """Leadership, Down marks and loop lag from the watcher, with a last debug sample of every daemon."""
    for daemon in watcher.daemons:
        if playground._alive(daemon.pid):
            watcher.sample_debug(daemon)
        result.max_lag_ms[daemon.name] = daemon.max_lag_ms
        result.stalls[daemon.name] = daemon.stalls
        if daemon.failures:
            result.notes.append(f"{daemon.name}: {daemon.failures} debug requests failed")
        manager = daemon.last.get("Manager")
        if manager:
            won, lost = int(manager["ElectionsWon"]), int(manager["LeadershipsLost"])
            result.leader_changes += max(0, won - 1) + lost
            result.elections_won += won
            result.leaderships_lost += lost
            result.marked_down += int(manager["NodesMarkedDown"])
            store = manager.get("Store") or {}
            if store:
                result.notes.append(f"{daemon.name} store: " + json.dumps(store, separators=(",", ":")))
        rss = daemon.last.get("Process", {}).get("MaxRSSBytes")
        if rss:
            result.notes.append(f"{daemon.name}: max RSS {rss / 2**20:.0f} MiB, "
                                f"CPU {daemon.last['Process']['CPUSeconds']:.1f}s in all")
    result.down_seen = sum(e.state == "down" for e in watcher.episodes)
    result.other_not_ready = sum(e.state != "down" for e in watcher.episodes)
    if watcher.episodes:
        by_phase = collections.Counter(f"{e.state} in {result.phase_at(e.first_seen)}"
                                       for e in watcher.episodes)
        longest = max(watcher.episodes, key=lambda e: e.last_seen - e.first_seen)
        result.notes.append(f"GET /nodes showed nodes not ready {len(watcher.episodes)} times "
                            "(node episodes): "
                            + ", ".join(f"{k} x{v}" for k, v in by_phase.items())
                            + f"; longest {longest.node} {longest.state} for "
                              f">={longest.last_seen - longest.first_seen + NODES_POLL_SECONDS:.1f}s")
    if watcher.nodes_failures:
        result.notes.append(f"GET /nodes failed {watcher.nodes_failures} times")
    if watcher.dead:
        result.notes.append(f"daemons died: {', '.join(watcher.dead)}")


STALL = re.compile(r"event loop stalled for (\d+) ms")
LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
LOST = re.compile(r"lost the leadership: (.*)$")
FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


def _logged_at(line: str) -> float | None:
    """The wall-clock time of a log record's line (local time, as the daemons log it)."""
    match = LOG_RECORD.match(line)
    if not match:
        return None
    return time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000


def log_summary(swarm: Swarm, result: RunResult, top: int = 3) -> list[str]:
    """From the daemons' logs: when and why the manager lost the leadership, and where each daemon's loop was
    when it stalled (the innermost frame of the loop thread, and of any other busy thread, from the stacks
    the loop monitor logs), by phase and count, so the bottleneck shows without reading the logs."""
    notes = []
    for node in swarm.nodes:
        try:
            lines = (Path(node.state_dir) / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        where: collections.Counter[str] = collections.Counter()
        worst: dict[str, int] = {}
        stalls = 0
        stall_phases: collections.Counter[str] = collections.Counter()
        losses: collections.Counter[str] = collections.Counter()
        i = 0
        while i < len(lines):
            lost = LOST.search(lines[i])
            if lost:
                at = _logged_at(lines[i])
                losses[f"{lost[1]} (in {result.phase_at(at) if at else '?'})"] += 1
            match = STALL.search(lines[i])
            at = _logged_at(lines[i])
            i += 1
            if not match:
                continue
            stalls += 1
            stall_phases[result.phase_at(at) if at else "?"] += 1
            thread = "loop"
            innermost: dict[str, str] = {}
            while i < len(lines) and not LOG_RECORD.match(lines[i]):
                if lines[i].startswith("thread "):
                    thread = "thread"
                frame = FRAME.match(lines[i])
                if frame:
                    innermost[thread] = f"{Path(frame[1]).name}:{frame[2]} {frame[3]}"
                i += 1
            key = " / ".join(f"{t} {f}" for t, f in innermost.items()) or "(no stack)"
            where[key] += 1
            worst[key] = max(worst.get(key, 0), int(match[1]))
        if losses:
            notes.append(f"{node.name} lost the leadership: "
                         + "; ".join(f"{count}x {why}" for why, count in losses.items()))
        if stalls:
            phases = ", ".join(f"{phase} {count}" for phase, count in stall_phases.items())
            shown = "; ".join(f"{count}x (max {worst[k]} ms) {k}" for k, count in where.most_common(top))
            notes.append(f"{node.name}: {stalls} stalls logged ({phases}); innermost frames: {shown}")
    return notes


def copy_logs(swarm: Swarm, machine: str, run: int) -> str:
    """The nodes' own logs (daemon, etcd; not the tasks'), kept before the playground is removed."""
    target = Path(f"/tmp/shoal-bench-processes-logs/{time.strftime('%Y%m%d-%H%M%S')}-{machine}-{run + 1}")
    for node in swarm.nodes:
        for log in Path(node.state_dir).glob("*.log"):
            dest = target / node.name / log.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy2(log, dest)
    return str(target)


# ---- the busy machine --------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """`count` CPU-bound processes for the duration; always killed, whatever ends the block."""
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                                         stdin=subprocess.DEVNULL))
        yield
    finally:
        for hog in hogs:
            with contextlib.suppress(OSError):
                hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)


# ---- reporting ---------------------------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def print_run(r: RunResult) -> None:
    status = f"FAILED ({r.error})" if r.error else "ok"
    print(f"  {r.machine} run {r.run + 1}: {status}  (load average {r.load[0]:.1f} at the start, "
          f"{r.load[1]:.1f} at the end)")
    print(f"    create {r.create_s:.2f}s (counted {r.create_api_s:.2f}s)  scale->0 {r.scale_s:.2f}s "
          f"(counted {r.scale_api_s:.2f}s)")
    print(f"    leader changes {r.leader_changes} (elections won {r.elections_won}, leaderships lost "
          f"{r.leaderships_lost})  marked down {r.marked_down}  seen down {r.down_seen}  "
          f"seen otherwise not ready {r.other_not_ready}")
    print(f"    idle CPU over {r.idle_window_s:.0f}s: "
          + ", ".join(f"{k} {v:.1f}%" for k, v in r.idle_cpu.items()))
    print("    loop lag max / stalls: " + ", ".join(f"{k} {r.max_lag_ms[k]:.0f} ms / {r.stalls.get(k, 0)}"
                                                   for k in r.max_lag_ms))
    for note in r.notes:
        print(f"    - {note}")
    if r.logs:
        print(f"    logs: {r.logs}")


def worst_lag(runs: list[RunResult]) -> str:
    lags = [(lag, name) for r in runs for name, lag in r.max_lag_ms.items()]
    if not lags:
        return "-"
    lag, name = max(lags)
    return f"{lag:.0f} ms ({name})"


def print_table(results: list[RunResult], replicas: int) -> None:
    machines = [m for m in ("idle", "busy") if any(r.machine == m for r in results)]
    daemons = list(dict.fromkeys(k for r in results for k in r.idle_cpu))
    rows: list[tuple[str, ...]] = []
    for machine in machines:
        runs = [r for r in results if r.machine == machine]
        ok = [r for r in runs if not r.error]
        cpu = [f"{_median([r.idle_cpu[d] for r in ok if d in r.idle_cpu]):.1f}" for d in daemons]
        rows.append((machine, f"{len(ok)}/{len(runs)}", f"{_median([r.create_s for r in ok]):.1f}s",
                     f"{_median([r.scale_s for r in ok]):.1f}s", *cpu,
                     str(sum(r.leader_changes for r in runs)), str(sum(r.false_downs for r in runs)),
                     str(sum(r.other_not_ready for r in runs)),
                     worst_lag(runs),
                     str(sum(sum(r.stalls.values()) for r in runs))))
    header = ("machine", "ok runs", f"create {replicas}", "scale->0", *[f"{d} CPU%" for d in daemons],
              "leader chg", "false downs", "not ready", "max loop lag", "stalls")
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print("(medians over ok runs; CPU% of one core over the idle window; leader changes, false downs (marked"
          " or seen down), other not-ready episodes (e.g. unknown) and stalls summed over runs; loop lag the"
          " worst of any daemon)")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM ends the benchmark as Ctrl-C does, through every `finally` (playground down, hogs killed)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--idle-only", action="store_true", help="only on the idle machine")
    which.add_argument("--busy-only", action="store_true", help=f"only beside {HOGS} CPU-bound processes")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="window for the idle CPU figure")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between convergence and the window")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of each wait, seconds")
    parser.add_argument("--subnet", default="127.0.46", help="loopback block of the playgrounds")
    parser.add_argument("--keep-logs", action="store_true", help="copy the nodes' logs out after every run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    machines = ["busy"] if args.busy_only else ["idle"] if args.idle_only else ["idle", "busy"]
    results: list[RunResult] = []
    try:
        for machine in machines:
            for run in range(args.runs):
                with cpu_hogs(HOGS if machine == "busy" else 0):
                    results.append(one_run(machine, run, args))
    except KeyboardInterrupt:
        print("interrupted; the playground and any CPU hogs were removed", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        if results:
            print(f"\nper run ({args.replicas} replicas of busybox sleep, 1 manager + 2 workers, "
                  "process executor):")
            for r in results:
                print_run(r)
            print()
            print_table(results, args.replicas)
    if any(r.error for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
