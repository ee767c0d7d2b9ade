"""The userspace mesh on every core: the agent's own proxies plus worker processes on the same ports.

One Python process forwards on one core. The agent starts `workers - 1` helper processes
(`python -m shoal.mesh.workers`); every process binds each published port with SO_REUSEPORT and the kernel
spreads new connections (and UDP clients, by address) over them. The agent binds first, so a port another
program holds is still reported; a helper is told only the ports the agent could bind.

A helper reads the ports to serve, as one JSON line per change, on its stdin, and exits when stdin closes:
it never outlives the agent that started it, even one killed with SIGKILL. A helper that dies is started
again and given the current ports. On a pipe of its own (its stdout and stderr stay the daemon's, so the
daemon's log has its lines and whoever looks for the daemon's processes by their output finds it) it reports
what its proxies counted (`shoal.mesh.stats`), about once a second while the counts change, so the node's
metrics cover every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from shoal.mesh import stats as port_stats
from shoal.mesh.stats import PortKey, PortStats, PortTotals
from shoal.mesh.table import Backend, Serving
from shoal.mesh.userspace import TcpProxy, UdpProxy
from shoal.timeouts import within

log = logging.getLogger(__name__)

Proxy = TcpProxy | UdpProxy
RESTART_DELAY = 1.0
MAX_WORKERS = 8
STATS_INTERVAL = 1.0  # seconds between a helper's reports of its counts (sent only when they changed)
STATS_BACKLOG = 64 * 1024  # bytes of reports a helper holds for an agent that does not read: later ones wait


def default_workers() -> int:
    """One process per core this daemon may use, up to MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


class ProxySet:
    """The proxies of one process, kept equal to a list of Servings."""

    def __init__(self, listen_host: str, shared: bool, drain_seconds: float) -> None:
        self.listen_host = listen_host
        self.shared = shared
        self.drain_seconds = drain_seconds
        self.proxies: dict[tuple[int, str], Proxy] = {}
        self._draining: set[asyncio.Task[None]] = set()
        # Per port, kept when its proxy stops: a port served again counts on from where it was.
        self._stats: dict[PortKey, PortStats] = {}
        self._draining_proxies: dict[Proxy, PortKey] = {}

    async def apply(self, plan: Sequence[Serving]) -> dict[tuple[int, str], OSError]:
        """Serve the plan; returns the ports that could not be bound, with why."""
        wanted = {serving.key: serving for serving in plan}
        for key in [key for key in self.proxies if key not in wanted]:
            log.info("routing mesh: no longer serving %d/%s", *key)
            self._drain(key)
        failed: dict[tuple[int, str], OSError] = {}
        for key, serving in wanted.items():
            proxy = self.proxies.get(key)
            if proxy is None:
                name = f"{serving.published_port}/{serving.protocol}"
                stats = self._stats.setdefault(key, PortStats())
                proxy = (TcpProxy(self.listen_host, serving.published_port, name, shared=self.shared, stats=stats)
                         if serving.protocol == "tcp"
                         else UdpProxy(self.listen_host, serving.published_port, name, shared=self.shared,
                                       stats=stats))
                try:
                    await proxy.start()
                except OSError as exc:
                    failed[key] = exc
                    continue
                self.proxies[key] = proxy
            proxy.set_backends(serving.backends)
        return failed

    def _drain(self, key: PortKey) -> None:
        """Stop serving a port; its open connections may finish (a host-mode task being replaced, a service
        being removed), and count as open meanwhile."""
        proxy = self.proxies.pop(key)
        draining = asyncio.create_task(proxy.stop(drain=self.drain_seconds))
        self._draining.add(draining)
        self._draining_proxies[proxy] = key

        def drained(task: asyncio.Task[None]) -> None:
            self._draining.discard(task)
            self._draining_proxies.pop(proxy, None)

        draining.add_done_callback(drained)

    def stats(self) -> dict[PortKey, PortStats]:
        """What this process's proxies counted, per port, with the connections open now (draining ones too)."""
        out = {key: stats.copy() for key, stats in self._stats.items()}
        for key, proxy in [*self.proxies.items(), *((k, p) for p, k in self._draining_proxies.items())]:
            out[key].open += proxy.open_count()
        return out

    async def stop(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()
        self.proxies.clear()
        for draining in list(self._draining):
            draining.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)


def plan_to_wire(plan: Sequence[Serving]) -> str:
    return json.dumps([[s.protocol, s.published_port, [[b.task_id, b.host, b.port] for b in s.backends]]
                       for s in plan], separators=(",", ":"))


def plan_from_wire(line: str) -> list[Serving]:
    return [Serving(str(protocol), int(port), tuple(Backend(str(t), str(h), int(p)) for t, h, p in backends))
            for protocol, port, backends in json.loads(line)]


class ProxyWorkers:
    """The helper processes of one agent: started, told each plan, restarted when they die, stopped."""

    def __init__(self, count: int, listen_host: str, drain_seconds: float) -> None:
        self.count = count
        self.listen_host = listen_host
        self.drain_seconds = drain_seconds
        self.plan: list[Serving] = []
        self._processes: list[asyncio.subprocess.Process | None] = [None] * count
        self._keepers: list[asyncio.Task[None]] = []
        self.totals = PortTotals()  # what the helpers counted, as they report it

    def start(self) -> None:
        self._keepers = [asyncio.create_task(self._keep(index), name=f"mesh-worker:{index}")
                         for index in range(self.count)]

    async def send(self, plan: Sequence[Serving]) -> None:
        self.plan = list(plan)
        for process in self._processes:
            await self._tell(process)

    async def stop(self) -> None:
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        self._keepers = []

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.returncode is None]

    async def _tell(self, process: asyncio.subprocess.Process | None) -> None:
        if process is None or process.returncode is not None or process.stdin is None:
            return
        # It died (uvloop says so with a RuntimeError on the closed pipe): its keeper starts it again.
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            process.stdin.write((plan_to_wire(self.plan) + "\n").encode())
            await process.stdin.drain()

    async def _keep(self, index: int) -> None:
        """Run helper `index`, starting it again whenever it exits, until cancelled."""
        while True:
            read_fd, write_fd = os.pipe()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "shoal.mesh.workers", self.listen_host, str(self.drain_seconds),
                    str(write_fd), stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,), start_new_session=True)
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            self._processes[index] = process
            reader = asyncio.create_task(self._read_stats(index, process.pid, read_fd),
                                         name=f"mesh-worker-stats:{index}")
            try:
                await self._tell(process)
                code = await process.wait()
                log.warning("routing mesh: worker process %d exited (%s); starting it again", process.pid, code)
                await asyncio.sleep(RESTART_DELAY)
            finally:
                if process.returncode is None:
                    if process.stdin is not None:
                        process.stdin.close()  # it exits on EOF
                    try:
                        await within(process.wait(), 5)
                    except TimeoutError:
                        process.kill()
                        await process.wait()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                self.totals.retire(index)
                self._processes[index] = None

    async def _read_stats(self, index: int, pid: int, read_fd: int) -> None:
        """Keep helper `index`'s last report of its counts, until its pipe ends."""
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        stream = asyncio.StreamReader(limit=16 * 1024 * 1024)
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream), pipe)
        except BaseException:
            pipe.close()
            raise
        try:
            while line := await stream.readline():
                try:
                    self.totals.report(index, port_stats.from_wire(line.decode()))
                except (ValueError, TypeError, UnicodeDecodeError):
                    log.warning("routing mesh: worker process %d sent figures that do not parse", pid)
        finally:
            transport.close()


async def report_stats(proxies: ProxySet, out: asyncio.WriteTransport, interval: float = STATS_INTERVAL) -> None:
    """A helper's counts to the agent, one line each time they changed. Written without blocking: an agent
    that does not read holds up the reports (the next one carries the totals), never the forwarding."""
    last = ""
    while True:
        await asyncio.sleep(interval)
        line = port_stats.to_wire(proxies.stats())
        if line != last and out.get_write_buffer_size() < STATS_BACKLOG:
            out.write((line + "\n").encode())
            last = line


async def serve(listen_host: str, drain_seconds: float, report_fd: int | None = None) -> None:
    """A helper process: serve each plan read from stdin until stdin closes; report its counts on
    `report_fd` (a pipe to the agent) if given."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    proxies = ProxySet(listen_host, shared=True, drain_seconds=drain_seconds)
    reporter: asyncio.Task[None] | None = None
    if report_fd is not None:
        out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(report_fd, "wb", buffering=0))
        reporter = asyncio.create_task(report_stats(proxies, out), name="mesh-worker-report")
    try:
        while line := await reader.readline():
            failed = await proxies.apply(plan_from_wire(line.decode()))
            for key, exc in failed.items():
                log.error("routing mesh worker: cannot listen on %s:%d/%s: %s", listen_host, *key, exc)
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        await proxies.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(serve(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None))


if __name__ == "__main__":
    main()
