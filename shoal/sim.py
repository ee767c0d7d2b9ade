"""Hollow nodes: many simulated nodes in one process, to see what the managers do with a thousand of them.

Each hollow node is a real node but for its tasks: it joins with the worker token (its own key, CSR and
certificate), keeps its own mutually authenticated session with the leader's dispatcher, heartbeats, reports
task status and keeps a task record on disk — the agent code every daemon runs — while its tasks are simulated
(`shoal.agent.executor.sim`). The managers run unchanged, so a benchmark measures them as a thousand real
machines would load them. All nodes share one event loop, which the loop monitor watches as a daemon's.

    python -m shoal.sim --manager 127.0.0.2:2377 --token SWMTKN-1-… --nodes 1000 --state-dir /tmp/hollow

A node's identity is kept under its state directory, so the process can be stopped and started again and
its nodes come back as themselves (their tasks, being simulated, do not survive that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.agent.agent import Agent
from shoal.agent.executor.sim import SimExecutor
from shoal.agent.join import join
from shoal.certs import client_ssl_context, write_private
from shoal.clock import SystemClock
from shoal.daemon import raise_open_file_limit, setup_logging
from shoal.errors import ShoalError
from shoal.gcpauses import GCPauses
from shoal.loopmonitor import LoopMonitor
from shoal.manager.manager import HEARTBEAT_LAG_WINDOW
from shoal.metrics import NodeMetrics
from shoal.supervise import Supervisor
from shoal.types import Doc

log = logging.getLogger(__name__)

JOINS_AT_ONCE = 16  # joins in flight: each costs the manager a certificate signature and a store write
# Nodes per process: an event loop serving more makes each of them late (a burst of assignments for a thousand
# nodes holds it for seconds, and their heartbeats wait).
NODES_PER_PROCESS = 250


@dataclass
class Identity:
    """What a hollow node keeps of its membership (`node.json` beside its certificates)."""

    node_id: str
    hostname: str
    managers: list[str]


class HollowNodes:
    def __init__(self, manager: str, token: str, count: int, state_dir: Path, prefix: str = "hollow",
                 advertise_addr: str = "127.0.0.1", start_delay: float = 0.01, first: int = 0) -> None:
        self.manager = manager
        self.token = token
        self.count = count
        self.first = first
        self.state_dir = state_dir
        self.prefix = prefix
        self.advertise_addr = advertise_addr
        self.executor = SimExecutor(start_delay=start_delay)
        self.monitor = LoopMonitor()
        # One set for the process: a thousand hollow nodes with a set each would cost seconds and megabytes.
        self.metrics = NodeMetrics()
        self.loops = Supervisor("hollow")
        self.agents: list[Agent] = []

    def _dir(self, index: int) -> Path:
        return self.state_dir / f"{self.prefix}-{index:04d}"

    async def _identity(self, index: int) -> Identity:
        """The node's identity: joined before (kept on disk), or joined now."""
        folder = self._dir(index)
        record = folder / "node.json"
        if record.exists():
            return Identity(**json.loads(record.read_text()))
        hostname = folder.name
        result = await join(self.manager, self.token, hostname, self.advertise_addr, 0)
        certs = folder / "certs"
        write_private(certs / "ca.pem", result.ca_pem)
        write_private(certs / "node.pem", result.cert_pem)
        write_private(certs / "node-key.pem", result.key_pem)
        identity = Identity(result.node_id, hostname, result.managers or [self.manager])
        write_private(record, json.dumps(asdict(identity)).encode())
        return identity

    def _agent(self, index: int, identity: Identity) -> Agent:
        folder = self._dir(index)
        certs = folder / "certs"
        context = client_ssl_context(certs / "ca.pem", certs / "node.pem", certs / "node-key.pem")
        description: Doc = {"Hostname": identity.hostname, **self.executor.describe()}

        def remember(managers: list[str]) -> None:
            identity.managers = list(managers)
            write_private(folder / "node.json", json.dumps(asdict(identity)).encode())

        monitor = self.monitor
        return Agent(identity.node_id, identity.managers, context, folder / "agent", self.executor, SystemClock(),
                     lambda: description, remember, liveness=monitor.alive,
                     loop_lag=lambda: monitor.recent_max(HEARTBEAT_LAG_WINDOW), metrics=self.metrics)

    async def start(self, progress: bool = True) -> None:
        self.loops.start("loop-monitor", self.monitor.run)
        self.loops.start("gc-pauses", GCPauses().run)
        gate = asyncio.Semaphore(JOINS_AT_ONCE)
        done = 0

        async def bring_up(index: int) -> Agent:
            nonlocal done
            async with gate:
                identity = await self._identity(index)
            agent = self._agent(index, identity)
            await agent.start()
            done += 1
            if progress and (done % 100 == 0 or done == self.count):
                print(f"{done}/{self.count} hollow nodes up", flush=True)
            return agent

        self.agents = list(await asyncio.gather(*(bring_up(i) for i in range(self.first, self.first + self.count))))

    async def stop(self) -> None:
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        await self.loops.stop()


async def serve(args: argparse.Namespace) -> int:
    nodes = HollowNodes(args.manager, args.token, args.nodes, Path(args.state_dir), args.prefix,
                        args.advertise_addr, args.start_delay, args.first)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await nodes.start()
    except ShoalError as exc:
        print(f"shoal.sim: {exc.message}", file=sys.stderr)
        await nodes.stop()
        return 1
    print(f"{args.nodes} hollow nodes running", flush=True)
    await stop.wait()
    await nodes.stop()
    return 0


def run_children(argv: list[str], nodes: int, processes: int) -> int:
    """Share the nodes among `processes` children (each one this program for its share); stop them all on
    SIGTERM or SIGINT, or when one of them ends."""
    share = -(-nodes // processes)
    children = []
    for first in range(0, nodes, share):
        count = min(share, nodes - first)
        children.append(subprocess.Popen([sys.executable, "-m", "shoal.sim", *argv, "--processes", "1",
                                          "--first", str(first), "--nodes", str(count)]))

    def stop(*_: object) -> None:
        for child in children:
            with contextlib.suppress(OSError):
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    stop()
    return max(child.wait() for child in children)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manager", required=True, metavar="IP:PORT", help="A manager to join through")
    parser.add_argument("--token", required=True, help="The swarm's worker join token")
    parser.add_argument("--nodes", type=int, default=100, help="How many hollow nodes (default 100)")
    parser.add_argument("--state-dir", required=True, help="Where the nodes keep their identities")
    parser.add_argument("--prefix", default="hollow", help="Node name prefix (default hollow)")
    parser.add_argument("--advertise-addr", default="127.0.0.1", help="The address the nodes report")
    parser.add_argument("--start-delay", type=float, default=0.01, metavar="SECONDS",
                        help="Mean time a simulated task takes to start (default 0.01)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help=f"Processes to share the nodes (default: one per {NODES_PER_PROCESS} nodes)")
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)  # a child's first node
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be 1 or more")
    processes = args.processes or -(-args.nodes // NODES_PER_PROCESS)
    if processes > 1:
        return run_children(argv if argv is not None else sys.argv[1:], args.nodes, processes)
    setup_logging(args.log_level)
    raise_open_file_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
