"""The overlay's kernel side: namespaces, bridges, VXLAN devices, veth pairs and VIP rules, kept in step with the
tasks attached here and the name table the leader sends (`shoal.overlay.plan` decides; this module applies).

- A network gets its namespace on this node when the first local task attaches to it, and loses it once no
  local task has used it for NETWORK_LINGER_SECONDS (a rolling update that replaces the node's only task of a
  network keeps it). The VXLAN device is made in the host's namespace (its UDP socket stays there, on the
  node's address and data-path port) and then moved into the network's namespace, as Docker's overlay does.
- The node's DNS server also listens in each network's namespace, on the gateway address, which the task's
  resolver names.
- Every task's namespace is named (`shoal-<node>-task-<task>`): a process task's is made for it; a
  container's is its own, named by its process once it runs (`ip netns attach`), so that no later command can
  reach another process's namespace through a reused PID. The name goes when the task has ended.
- Attaching a task: a veth pair from the network's bridge into the task's namespace, its address and MAC,
  and its VIP table. Idempotent, so a task adopted after an agent restart is attached again without harm.
- Namespaces of this node that nothing claims (left by an earlier agent whose tasks ended meanwhile) go after
  NETWORK_LINGER_SECONDS. A change that fails is retried every RETRY_SECONDS; one network's or task's failure
  does not hold up the others.
- The peers (tasks on other nodes) and every local task's VIP table follow each name table change; only the
  differences are written, with one `bridge -batch` and one `ip -batch` per network. So does the filter on
  the data-path port (`render_vxlan_filter`): each network's frames only from the nodes that run its tasks.

All of it runs `ip`, `bridge`, `nsenter` and `nft` as subprocesses: the event loop never blocks on the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from shoal.discovery.names import NameEntry
from shoal.overlay.plan import (
    BRIDGE,
    OVERLAY_MTU,
    OverlayError,
    OverlayNetwork,
    Peer,
    mac_of,
    namespace_name,
    peer_changes,
    peers_by_network,
    render_vips,
    render_vxlan_filter,
    veth_device,
    vip_backends,
    vxlan_device,
    vxlan_table,
)
from shoal.task_networks import task_networks
from shoal.types import Doc

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
NETWORK_LINGER_SECONDS = 30.0
RETRY_SECONDS = 2.0
# VIP tables written at once (each is an nft run in a task's namespace).
VIP_WRITERS = 8
TOOLS = ("ip", "bridge", "nsenter", "nft")
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"

# Starts the DNS server in a network's namespace on its gateway; returns what closes it.
DNSStarter = Callable[[str, str], Awaitable[Callable[[], None] | None]]


def overlay_problem() -> str | None:
    """None when this process can build overlays here, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    missing = [tool for tool in TOOLS if _tool(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages iproute2, util-linux, nftables)"
    return None


def node_namespaces(node_id: str) -> list[str]:
    """The network namespaces of a node's overlays on this host."""
    prefix = namespace_name(node_id, "")
    try:
        return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))
    except OSError:
        return []


@functools.cache
def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


async def run(*argv: str, stdin: str | None = None) -> str:
    """Run a command; raise OverlayError with its complaint when it fails."""
    program = _tool(argv[0]) or argv[0]
    try:
        process = await asyncio.create_subprocess_exec(
            program, *argv[1:], stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate(stdin.encode() if stdin is not None else None)
    except (OSError, RuntimeError) as exc:
        raise OverlayError(f"{argv[0]} could not run: {exc}") from exc
    if process.returncode != 0:
        raise OverlayError(f"`{' '.join(argv[:6])}` failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def succeeds(*argv: str) -> bool:
    try:
        await run(*argv)
    except OverlayError:
        return False
    return True


@dataclass(frozen=True)
class TaskNamespace:
    """A task's own network namespace, by its name under /run/netns."""

    name: str

    @property
    def path(self) -> str:  # for nsenter
        return f"{NETNS_DIR}/{self.name}"


def task_namespace_name(node_id: str, task_id: str) -> str:
    """A task's own namespace (named after its node too, so the node's leftovers can be found)."""
    return f"{namespace_name(node_id, '')}task-{task_id}"


@dataclass
class AttachedTask:
    namespace: TaskNamespace
    networks: list[str]
    vips: dict[str, tuple[str, ...]] | None = None  # as last applied
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class LocalNetwork:
    network: OverlayNetwork
    namespace: str
    device: str
    peers: dict[str, Peer] = field(default_factory=dict)  # as last applied
    close_dns: Callable[[], None] | None = None

    def stop_dns(self) -> None:
        if self.close_dns is not None:
            self.close_dns()
            self.close_dns = None


class OverlayDataPath:
    """This node's overlays. `update` takes each name table; `attach` and `release` follow local tasks."""

    def __init__(self, node_id: str, address: str, port: int, start_dns: DNSStarter | None = None) -> None:
        self.node_id = node_id
        self.address = address
        self.port = port
        self.endpoint = f"{address}:{port}"
        self._start_dns = start_dns
        self._entries: list[NameEntry] = []
        self._networks: dict[str, LocalNetwork] = {}
        self._tasks: dict[str, AttachedTask] = {}
        self._lock = asyncio.Lock()  # one change of the kernel's state at a time
        self._changed = asyncio.Event()
        # Namespaces of this node (by name) that no task or network of this agent claims, and since when.
        self._unclaimed_since: dict[str, float] = {}
        self._retry = False  # the last sync failed somewhere: try again soon
        self._filter_applied = ""  # the VXLAN filter script last applied
        self.errors: dict[str, str] = {}  # what failed, by network or task, at the last sync

    # ---- inputs ----------------------------------------------------------------------------------------------

    def update(self, entries: Iterable[NameEntry]) -> None:
        self._entries = list(entries)
        self._changed.set()

    async def attach(self, task: Doc, namespace: TaskNamespace, first_interface: int) -> None:
        """Put a task (its namespace) on its networks: interfaces eth<first_interface>, …"""
        attachments = [(OverlayNetwork.of(network), address) for network, address in task_networks(task)]
        if not attachments:
            return
        task_id = str(task["ID"])
        async with self._lock:
            for index, (network, address) in enumerate(attachments):
                local = await self._ensure_network(network)
                await self._attach_interface(local, task_id, namespace, f"eth{first_interface + index}", address)
            attached = AttachedTask(namespace, [network.id for network, _ in attachments])
            self._tasks[task_id] = attached
        await self._apply_vips(attached)

    async def name_container(self, task_id: str, pid: int) -> TaskNamespace:
        """Name a started container's namespace (its process `pid`, checked by the caller just before)."""
        name = task_namespace_name(self.node_id, task_id)
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            await run("ip", "netns", "attach", name, str(pid))
        return TaskNamespace(name)

    async def make_task_namespace(self, task_id: str) -> TaskNamespace:
        """A namespace of its own for a process task (kept if an earlier agent made it)."""
        name = task_namespace_name(self.node_id, task_id)
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            await run("ip", "netns", "add", name)
            await run("ip", "-n", name, "link", "set", "lo", "up")
        return TaskNamespace(name)

    async def release(self, task_id: str) -> None:
        """The task has ended: its namespace's name goes (and with a process task's, its interfaces)."""
        if self._tasks.pop(task_id, None) is not None:
            self._changed.set()
        name = task_namespace_name(self.node_id, task_id)
        if os.path.exists(f"{NETNS_DIR}/{name}"):
            await run("ip", "netns", "del", name)

    # ---- the loop --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply each change (supervised by the agent); retry what failed; remove what nothing claims."""
        while True:
            wait = RETRY_SECONDS if self._retry else NETWORK_LINGER_SECONDS if self._unclaimed_since else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
            self._changed.clear()
            await self._sync()

    async def close(self, remove: bool = False) -> None:
        """Stop serving DNS in the namespaces. They and the tasks' interfaces stay for the next agent, unless
        `remove` (the node leaves the swarm and its tasks are gone)."""
        async with self._lock:
            for local in self._networks.values():
                local.stop_dns()
            if remove:
                for name in node_namespaces(self.node_id):
                    with contextlib.suppress(OverlayError):
                        await run("ip", "netns", "del", name)
                self._networks.clear()
                with contextlib.suppress(OverlayError):
                    await run("nft", "delete", "table", "ip", vxlan_table(self.port))

    def debug(self) -> Doc:
        return {"Endpoint": self.endpoint, "Networks": sorted(self._networks), "Tasks": len(self._tasks),
                "Peers": sum(len(n.peers) for n in self._networks.values()), "Errors": dict(self.errors)}

    async def _sync(self) -> None:
        """The networks' peers, filter and clean-up under the lock; then every task's VIP table, outside it and
        several at a time (each task's namespace is its own): a task being attached never waits for them."""
        errors: dict[str, str] = {}
        async with self._lock:
            wanted = peers_by_network(self._entries, self.endpoint, self._networks)
            for network_id, local in self._networks.items():
                try:
                    await self._apply_peers(local, wanted.get(network_id, {}))
                except OverlayError as exc:
                    errors[f"network {network_id[:12]}"] = str(exc)
            try:
                await self._remove_unclaimed()
            except OverlayError as exc:
                errors["cleanup"] = str(exc)
            try:
                await self._apply_vxlan_filter()
            except OverlayError as exc:
                errors["VXLAN filter"] = str(exc)
        limit = asyncio.Semaphore(VIP_WRITERS)

        async def vips_of(task_id: str, attached: AttachedTask) -> None:
            async with limit:
                try:
                    await self._apply_vips(attached)
                except OverlayError as exc:
                    if not os.path.exists(attached.namespace.path):
                        self._tasks.pop(task_id, None)  # ended before its controller said so
                    else:
                        errors[f"task {task_id}"] = str(exc)
        await asyncio.gather(*(vips_of(task_id, attached) for task_id, attached in list(self._tasks.items())))
        for what, error in errors.items():
            if self.errors.get(what) != error:
                log.warning("overlay: %s: %s", what, error)
        self.errors = errors
        self._retry = bool(errors)

    async def _remove_unclaimed(self) -> None:
        """Networks no local task uses, and namespaces of this node nothing claims (an earlier agent's), once
        unclaimed for NETWORK_LINGER_SECONDS: a rolling update that replaces the node's only task of a
        network keeps the network's namespace."""
        in_use = {network for task in self._tasks.values() for network in task.networks}
        claimed = {local.namespace for network_id, local in self._networks.items() if network_id in in_use}
        claimed |= {task.namespace.name for task in self._tasks.values()}
        now = time.monotonic()
        unclaimed = {name: self._unclaimed_since.get(name, now) for name in node_namespaces(self.node_id)
                     if name not in claimed}
        self._unclaimed_since = unclaimed
        for name, since in list(unclaimed.items()):
            if now - since < NETWORK_LINGER_SECONDS:
                continue
            local = next((n for n in self._networks.values() if n.namespace == name), None)
            if local is not None:
                local.stop_dns()
            # The bridge and the VXLAN device go with a network's namespace; a task's interface with its own.
            await run("ip", "netns", "del", name)
            del self._unclaimed_since[name]
            if local is not None:
                del self._networks[local.network.id]
                log.info("overlay: network %s removed from this node", local.network.id[:12])

    # ---- networks --------------------------------------------------------------------------------------------

    async def _ensure_network(self, network: OverlayNetwork) -> LocalNetwork:
        local = self._networks.get(network.id)
        if local is not None:
            return local
        namespace = namespace_name(self.node_id, network.id)
        device = vxlan_device(self.node_id, network.id)
        local = LocalNetwork(network, namespace, device)
        if os.path.exists(f"{NETNS_DIR}/{namespace}") and not await succeeds(
                "ip", "-n", namespace, "link", "show", "dev", BRIDGE):
            await run("ip", "netns", "del", namespace)  # half made (an agent stopped while making it)
        if not os.path.exists(f"{NETNS_DIR}/{namespace}"):
            await run("ip", "netns", "add", namespace)
            try:
                await run("ip", "-n", namespace, "-batch", "-", stdin=(
                    # A bridge's MAC follows its lowest port's unless set: a task joining must not change the
                    # gateway's MAC under the other tasks' ARP caches (their DNS would go unanswered).
                    f"link set lo up\nlink add {BRIDGE} address {mac_of(network.gateway)} type bridge\n"
                    f"addr add {network.gateway_interface} dev {BRIDGE}\nlink set {BRIDGE} up\n"))
            except BaseException:
                with contextlib.suppress(OverlayError):
                    await run("ip", "netns", "del", namespace)
                raise
        elif await succeeds("ip", "-n", namespace, "link", "show", "dev", device):
            # Left by an earlier agent (its tasks' interfaces are on the bridge): a fresh device, so no
            # forwarding entry of unknown age stays.
            await run("ip", "-n", namespace, "link", "del", device)
        await run("ip", "link", "add", device, "type", "vxlan", "id", str(network.vni), "local", self.address,
                  "dstport", str(self.port), "nolearning", "proxy")
        try:
            await run("ip", "link", "set", device, "netns", namespace)
        except OverlayError:
            with contextlib.suppress(OverlayError):
                await run("ip", "link", "del", device)
            raise
        await run("ip", "-n", namespace, "link", "set", device, "master", BRIDGE, "mtu", str(OVERLAY_MTU), "up")
        if self._start_dns is not None:
            try:
                local.close_dns = await self._start_dns(f"{NETNS_DIR}/{namespace}", network.gateway)
            except OSError as exc:
                log.warning("overlay: no DNS server on network %s: %s", network.id[:12], exc)
        self._networks[network.id] = local
        # The peers known so far at once: the task about to start may talk to them from its first packet.
        await self._apply_peers(local, peers_by_network(self._entries, self.endpoint, [network.id])[network.id])
        await self._apply_vxlan_filter()
        log.info("overlay: network %s set up (VXLAN %d, namespace %s)", network.id[:12], network.vni, namespace)
        return local

    async def _apply_vxlan_filter(self) -> None:
        if not self._networks:
            # No VXLAN device listens on the port: nothing to guard, and a node that never joins a network
            # leaves no table behind. The last network gone, its table goes too.
            if self._filter_applied:
                with contextlib.suppress(OverlayError):
                    await run("nft", "delete", "table", "ip", vxlan_table(self.port))
                self._filter_applied = ""
            return
        sources = {local.network.vni: {peer.address for peer in local.peers.values()}
                   for local in self._networks.values()}
        script = render_vxlan_filter(vxlan_table(self.port), self.port, sources)
        if script != self._filter_applied:
            await run("nft", "-f", "-", stdin=script)
            self._filter_applied = script

    async def _apply_peers(self, local: LocalNetwork, wanted: dict[str, Peer]) -> None:
        fdb, neigh = peer_changes(local.device, local.peers, wanted)
        if fdb:
            await run("bridge", "-n", local.namespace, "-force", "-batch", "-", stdin="\n".join(fdb) + "\n")
            await run("ip", "-n", local.namespace, "-force", "-batch", "-", stdin="\n".join(neigh) + "\n")
        local.peers = dict(wanted)

    # ---- tasks -----------------------------------------------------------------------------------------------

    async def _attach_interface(self, local: LocalNetwork, task_id: str, namespace: TaskNamespace, name: str,
                                address: str) -> None:
        veth = veth_device(task_id, local.network.id)
        if not await succeeds("ip", "-n", local.namespace, "link", "show", "dev", veth):
            await run("ip", "link", "add", veth, "netns", local.namespace, "mtu", str(OVERLAY_MTU), "type",
                      "veth", "peer", "name", name, "mtu", str(OVERLAY_MTU), "netns", namespace.name)
            await run("ip", "-n", local.namespace, "link", "set", veth, "master", BRIDGE, "up")
        # Also when the veth was there already: an agent stopped half-way may have left it unconfigured.
        ip = address.partition("/")[0]
        await run("ip", "-n", namespace.name, "-batch", "-", stdin=(
            f"link set {name} address {mac_of(ip)}\naddr replace {address} dev {name}\nlink set {name} up\n"))

    async def _apply_vips(self, attached: AttachedTask) -> None:
        async with attached.writing:  # one write at a time per task; the last one reads the latest table
            vips = vip_backends(self._entries, attached.networks)
            if vips == attached.vips:
                return
            await run("nsenter", f"--net={attached.namespace.path}", _tool("nft") or "nft", "-f", "-",
                      stdin=render_vips(vips))
            attached.vips = vips
