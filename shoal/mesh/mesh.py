"""The agent's routing mesh: keeps this node's data path in step with the endpoint table.

Ingress ports are served on every node; host-mode ports only on nodes running one of the service's tasks, and
only to those local tasks (unless the executor binds host ports itself, as Docker does). The table arrives
whole from the dispatcher on every change (`shoal.mesh.table`).

Two data paths:
- userspace (`shoal.mesh.userspace`): an asyncio proxy per published port; works on every kernel. The agent
  and one helper process per further core (`shoal.mesh.workers`) listen on the same ports.
- kernel (`shoal.mesh.kernel`): nftables DNAT rules, one table per node, replaced atomically on each change.
  The userspace listeners stay bound beside it: they reserve the ports (so a port used by another program is
  reported, as with the userspace path), and serve while nft refuses a rule set.

`auto` takes the kernel path where it is usable (root, `nft`) and forwarded traffic is not dropped (Docker
sets the FORWARD policy to DROP), else userspace. Ports this node cannot listen on are reported to the
manager, which shows them in the node's status message.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Sequence

from shoal.errors import InvalidArgument
from shoal.mesh import stats as port_stats
from shoal.mesh.kernel import (
    KernelDataPath,
    KernelPathError,
    KernelRule,
    forwarding_problem,
    kernel_available,
)
from shoal.mesh.stats import PortKey, PortStats
from shoal.mesh.table import HOST, Listener, Serving
from shoal.mesh.workers import ProxySet, ProxyWorkers, default_workers

log = logging.getLogger(__name__)

MODES = ("auto", "kernel", "userspace")
# A port no longer served stops taking connections at once; the open ones get this long to finish.
PROXY_DRAIN_SECONDS = 10.0


def local_plan(table: Sequence[Listener], local_task_ids: set[str], executor_binds_host_ports: bool) -> list[Serving]:
    """The ports this node serves and their backends: every ingress port; a host-mode port only when one of
    its running tasks is here (and the executor does not bind it itself), to the local tasks only."""
    plan: dict[tuple[int, str], Serving] = {}
    for listener in table:
        backends = listener.backends
        if listener.mode == HOST:
            if executor_binds_host_ports:
                continue
            backends = tuple(b for b in backends if b.task_id in local_task_ids)
            if not backends:
                continue
        plan[listener.key] = Serving(listener.protocol, listener.published_port, backends)
    return [plan[key] for key in sorted(plan)]


def choose_mode(wanted: str, kernel_problem: str | None, forwarding: str | None) -> tuple[str, str]:
    """The data path to use for `wanted` ("auto", "kernel", "userspace") and why (pure): `kernel_problem` is
    why nftables cannot be used here, `forwarding` why forwarded traffic would be dropped (None: no problem)."""
    if wanted == "userspace":
        return "userspace", "asked for"
    if wanted == "kernel":
        if kernel_problem is not None:
            raise KernelPathError(f"the kernel routing mesh cannot be used here: {kernel_problem}; "
                                  "use --routing-mesh userspace")
        return "kernel", "asked for"
    problem = kernel_problem or forwarding
    if problem is None:
        return "kernel", "nftables is usable and forwarding works"
    return "userspace", (f"the kernel path is not usable: {problem}; --routing-mesh kernel forces it (see the "
                         "README)")


class RoutingMesh:
    def __init__(self, node_id: str, listen_host: str, mode: str,
                 report_errors: Callable[[list[str]], None] = lambda errors: None,
                 executor_binds_host_ports: bool = False, workers: int | None = None) -> None:
        self.node_id = node_id
        self.listen_host = listen_host or "0.0.0.0"
        self.wanted_mode = mode
        self.mode = "userspace"
        self.report_errors = report_errors
        self.executor_binds_host_ports = executor_binds_host_ports
        count = default_workers() if workers is None else max(1, workers)
        # This process's proxies, and (userspace path, several cores) helper processes on the same ports.
        self.local = ProxySet(self.listen_host, shared=count > 1, drain_seconds=PROXY_DRAIN_SECONDS)
        self.helpers = ProxyWorkers(count - 1, self.listen_host, PROXY_DRAIN_SECONDS) if count > 1 else None
        self.port_errors: dict[tuple[int, str], str] = {}  # ports this node could not listen on
        self.kernel_error = ""  # why the last kernel rule set was not applied
        self._kernel: KernelDataPath | None = None
        self._table: list[Listener] = []
        self._local_task_ids: set[str] = set()
        self._reported: list[str] | None = None
        # One table is applied at a time, and always the newest: an update pauses (binding, nft), and an older
        # table must not be applied over a newer one.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        # nftables is probed once: to choose, and to know whether rules of an earlier kernel path may be left.
        kernel_problem = await asyncio.to_thread(kernel_available)
        forwarding = (await asyncio.to_thread(forwarding_problem)
                      if self.wanted_mode == "auto" and kernel_problem is None else None)
        try:
            self.mode, why = choose_mode(self.wanted_mode, kernel_problem, forwarding)
        except KernelPathError as exc:
            raise InvalidArgument(str(exc)) from None
        log.info("routing mesh: %s data path (%s), listening on %s", self.mode, why, self.listen_host)
        if self.mode == "kernel":
            # Rules an earlier daemon of this node left stay until the first table replaces them: published
            # ports keep working through a daemon restart, as the tasks do.
            self._kernel = KernelDataPath(self.node_id, self.listen_host)
            self.helpers = None  # the kernel forwards; the agent's listeners only reserve the ports
        elif kernel_problem is None:
            try:  # the node may have used the kernel path before
                await KernelDataPath(self.node_id, self.listen_host).clear()
            except KernelPathError as exc:
                log.warning("routing mesh: could not remove earlier kernel rules: %s", exc)
        if self.helpers is not None:
            self.helpers.start()
            log.info("routing mesh: %d worker processes beside the agent", self.helpers.count)

    async def stop(self, keep_rules: bool = False) -> None:
        """Stop serving. With `keep_rules` (a daemon restart, its tasks running on) the kernel rules stay."""
        async with self._lock:
            if self.helpers is not None:
                await self.helpers.stop()
            await self.local.stop()
            if self._kernel is not None and not keep_rules:
                try:
                    await self._kernel.clear()
                except KernelPathError as exc:
                    log.warning("routing mesh: could not remove the kernel rules: %s", exc)

    def port_stats(self) -> dict[PortKey, PortStats]:
        """What the userspace proxies of every process counted, per published port (the kernel path's
        forwarding is the kernel's and is not counted)."""
        helpers = self.helpers.totals.total() if self.helpers is not None else {}
        return port_stats.merged(self.local.stats(), helpers)

    def current_errors(self) -> list[str]:
        errors = [self.port_errors[key] for key in sorted(self.port_errors)]
        return errors + ([self.kernel_error] if self.kernel_error else [])

    async def update(self, table: Sequence[Listener], local_task_ids: set[str]) -> None:
        """Serve what the table says (called with each new table from the dispatcher)."""
        self._table, self._local_task_ids = list(table), set(local_task_ids)
        async with self._lock:
            await self._apply()

    async def retry(self) -> None:
        """Try again what failed: ports another program held, kernel rules nft refused."""
        if self.port_errors or self.kernel_error:
            async with self._lock:
                await self._apply()

    async def _apply(self) -> None:
        plan = local_plan(self._table, self._local_task_ids, self.executor_binds_host_ports)
        failed = await self.local.apply(plan)
        self.port_errors = {key: listen_error(f"{key[0]}/{key[1]}", exc) for key, exc in failed.items()}
        for key, exc in failed.items():
            log.error("routing mesh: cannot listen on %s:%d/%s: %s", self.listen_host, *key, exc)
        bound = [serving for serving in plan if serving.key in self.local.proxies]
        if self.helpers is not None:
            await self.helpers.send(bound)
        if self._kernel is not None:
            await self._sync_kernel([KernelRule(s.protocol, s.published_port, s.backends) for s in bound])
        self._report()

    async def _sync_kernel(self, rules: list[KernelRule]) -> None:
        assert self._kernel is not None
        try:
            await self._kernel.sync(rules)
            self.kernel_error = ""
        except KernelPathError as exc:
            log.error("routing mesh: kernel rules not applied: %s", exc)
            # The old rules would keep sending connections to the old tasks: remove them, so the userspace
            # listeners (bound on every port) serve until a retry applies the new rules.
            try:
                await self._kernel.clear()
                self.kernel_error = f"kernel rules not applied ({exc}); serving in userspace meanwhile"
            except KernelPathError as clear_error:
                self.kernel_error = f"kernel rules not applied ({exc}) nor removed ({clear_error})"

    def _report(self) -> None:
        errors = self.current_errors()
        if errors != self._reported:
            self._reported = errors
            self.report_errors(errors)

    def resend_errors(self) -> None:
        """A new session: the manager hears the current errors again."""
        self._reported = None
        self._report()


def listen_error(name: str, exc: OSError) -> str:
    """What to tell the user about a published port this node cannot listen on."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {name} is in use on this node: free it, or publish the service on another port"
    if exc.errno == errno.EACCES:
        return f"port {name} needs privileges on this node: run the daemon as root, or publish a port above 1023"
    return f"cannot listen on port {name}: {exc.strerror or exc}"
