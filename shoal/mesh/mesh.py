"""The agent's routing mesh: keeps this node's data path in step with the endpoint table.

Ingress ports are served on every node; host-mode ports only on nodes running one of the service's tasks, and
only to those local tasks (unless the executor binds host ports itself, as Docker does). The table arrives
whole from the dispatcher on every change (`shoal.mesh.table`).

Two data paths:
- userspace (`shoal.mesh.userspace`): an asyncio proxy per published port; works on every kernel.
- kernel (`shoal.mesh.kernel`): nftables DNAT rules, one table per node, replaced atomically on each change.
  The userspace listeners stay bound beside it: they reserve the ports (so a port used by another program is
  reported, as with the userspace path) and serve anything the rules do not catch.

`auto` takes the kernel path where it is usable (root, `nft`) and forwarded traffic is not dropped (Docker
sets the FORWARD policy to DROP), else userspace. Ports this node cannot listen on
are reported to the manager, which shows them in the node's status message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shoal.mesh.kernel import (
    KernelDataPath,
    KernelPathError,
    KernelRule,
    forwarding_problem,
    kernel_available,
)
from shoal.mesh.table import HOST, Backend, Listener
from shoal.mesh.userspace import TcpProxy, UdpProxy

log = logging.getLogger(__name__)

MODES = ("auto", "kernel", "userspace")

Proxy = TcpProxy | UdpProxy


@dataclass(frozen=True)
class Serving:
    """What this node serves on one published port."""

    protocol: str
    published_port: int
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[int, str]:
        return (self.published_port, self.protocol)


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


def choose_mode(wanted: str) -> tuple[str, str]:
    """The data path to use for `wanted` ("auto", "kernel", "userspace") and why."""
    if wanted == "userspace":
        return "userspace", "asked for"
    problem = kernel_available()
    if wanted == "kernel":
        if problem is not None:
            raise KernelPathError(f"the kernel routing mesh cannot be used here: {problem}; "
                                  "use --routing-mesh userspace")
        return "kernel", "asked for"
    problem = problem or forwarding_problem()
    if problem is None:
        return "kernel", "nftables is usable and forwarding works"
    return "userspace", (f"the kernel path is not usable: {problem}; --routing-mesh kernel forces it (see the "
                         "README)")


class RoutingMesh:
    def __init__(self, node_id: str, listen_host: str, mode: str,
                 report_errors: Callable[[list[str]], None] = lambda errors: None,
                 executor_binds_host_ports: bool = False) -> None:
        self.node_id = node_id
        self.listen_host = listen_host or "0.0.0.0"
        self.wanted_mode = mode
        self.mode = "userspace"
        self.report_errors = report_errors
        self.executor_binds_host_ports = executor_binds_host_ports
        self.proxies: dict[tuple[int, str], Proxy] = {}
        self.errors: dict[tuple[int, str], str] = {}
        self._kernel: KernelDataPath | None = None
        self._table: list[Listener] = []
        self._reported: list[str] | None = None

    async def start(self) -> None:
        self.mode, why = choose_mode(self.wanted_mode)
        log.info("routing mesh: %s data path (%s), listening on %s", self.mode, why, self.listen_host)
        if self.mode == "kernel":
            self._kernel = KernelDataPath(self.node_id, self.listen_host)
            await self._kernel.clear()  # rules a crashed daemon of this node left behind

    async def stop(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()
        self.proxies.clear()
        if self._kernel is not None:
            try:
                await self._kernel.clear()
            except KernelPathError as exc:
                log.warning("routing mesh: could not remove the kernel rules: %s", exc)

    def current_errors(self) -> list[str]:
        return [self.errors[key] for key in sorted(self.errors)]

    async def update(self, table: Sequence[Listener], local_task_ids: set[str]) -> None:
        """Serve what the table says (called with each new table, and when this node's tasks change)."""
        self._table = list(table)
        plan = local_plan(self._table, local_task_ids, self.executor_binds_host_ports)
        wanted = {serving.key: serving for serving in plan}
        for key in [key for key in self.proxies if key not in wanted]:
            await self.proxies.pop(key).stop()
            log.info("routing mesh: no longer serving %d/%s", *key)
        for key in [key for key in self.errors if key not in wanted]:
            del self.errors[key]
        for key, serving in wanted.items():
            proxy = self.proxies.get(key)
            if proxy is None:
                proxy = await self._listen(serving)
                if proxy is None:
                    continue
            proxy.set_backends(serving.backends)
        if self._kernel is not None:
            rules = [KernelRule(s.protocol, s.published_port, s.backends) for s in plan if s.key in self.proxies]
            try:
                await self._kernel.sync(rules)
                self.errors.pop((0, "kernel"), None)
            except KernelPathError as exc:
                # The userspace listeners still serve every port.
                self.errors[(0, "kernel")] = f"kernel rules not applied ({exc}); serving in userspace"
                log.error("routing mesh: %s", exc)
        self._report()

    async def retry(self, local_task_ids: set[str]) -> None:
        """Try again the ports that could not be bound (another program may have let go of one)."""
        if any(key[0] for key in self.errors):
            await self.update(self._table, local_task_ids)

    async def _listen(self, serving: Serving) -> Proxy | None:
        name = f"{serving.published_port}/{serving.protocol}"
        proxy: Proxy = (TcpProxy(self.listen_host, serving.published_port, name) if serving.protocol == "tcp"
                        else UdpProxy(self.listen_host, serving.published_port, name))
        try:
            await proxy.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.errors[serving.key] = (f"port {name} is in use on this node ({reason}): free it, or publish "
                                        "the service on another port")
            log.error("routing mesh: cannot listen on %s:%s: %s", self.listen_host, name, reason)
            return None
        self.errors.pop(serving.key, None)
        self.proxies[serving.key] = proxy
        log.info("routing mesh: serving %s on %s", name, self.listen_host)
        return proxy

    def _report(self) -> None:
        errors = self.current_errors()
        if errors != self._reported:
            self._reported = errors
            self.report_errors(errors)

    def resend_errors(self) -> None:
        """A new session: the manager hears the current errors again."""
        self._reported = None
        self._report()
