"""The userspace mesh on every core: the agent's own proxies plus worker processes on the same ports.

One Python process forwards on one core. The agent starts `workers - 1` helper processes
(`python -m shoal.mesh.workers`); every process binds each published port with SO_REUSEPORT and the kernel
spreads new connections (and UDP clients, by address) over them. The agent binds first, so a port another
program holds is still reported; a helper is told only the ports the agent could bind.

A helper reads the ports to serve, as one JSON line per change, on its stdin, and exits when stdin closes:
it never outlives the agent that started it, even one killed with SIGKILL. A helper that dies is started
again and given the current ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from shoal.mesh.table import Backend, Serving
from shoal.mesh.userspace import TcpProxy, UdpProxy
from shoal.timeouts import within

log = logging.getLogger(__name__)

Proxy = TcpProxy | UdpProxy
RESTART_DELAY = 1.0
MAX_WORKERS = 8


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

    async def apply(self, plan: Sequence[Serving]) -> dict[tuple[int, str], OSError]:
        """Serve the plan; returns the ports that could not be bound, with why."""
        wanted = {serving.key: serving for serving in plan}
        for key in [key for key in self.proxies if key not in wanted]:
            log.info("routing mesh: no longer serving %d/%s", *key)
            # Open connections may finish (a host-mode task being replaced, a service being removed).
            draining = asyncio.create_task(self.proxies.pop(key).stop(drain=self.drain_seconds))
            self._draining.add(draining)
            draining.add_done_callback(self._draining.discard)
        failed: dict[tuple[int, str], OSError] = {}
        for key, serving in wanted.items():
            proxy = self.proxies.get(key)
            if proxy is None:
                name = f"{serving.published_port}/{serving.protocol}"
                proxy = (TcpProxy(self.listen_host, serving.published_port, name, shared=self.shared)
                         if serving.protocol == "tcp"
                         else UdpProxy(self.listen_host, serving.published_port, name, shared=self.shared))
                try:
                    await proxy.start()
                except OSError as exc:
                    failed[key] = exc
                    continue
                self.proxies[key] = proxy
            proxy.set_backends(serving.backends)
        return failed

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
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shoal.mesh.workers", self.listen_host, str(self.drain_seconds),
                stdin=asyncio.subprocess.PIPE, start_new_session=True)
            self._processes[index] = process
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
                self._processes[index] = None


async def serve(listen_host: str, drain_seconds: float) -> None:
    """A helper process: serve each plan read from stdin until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    proxies = ProxySet(listen_host, shared=True, drain_seconds=drain_seconds)
    try:
        while line := await reader.readline():
            failed = await proxies.apply(plan_from_wire(line.decode()))
            for key, exc in failed.items():
                log.error("routing mesh worker: cannot listen on %s:%d/%s: %s", listen_host, *key, exc)
    finally:
        await proxies.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(serve(sys.argv[1], float(sys.argv[2])))


if __name__ == "__main__":
    main()
