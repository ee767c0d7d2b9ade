"""The overlay's kernel side: namespaces, bridges, VXLAN devices, veth pairs and VIP rules, kept in step with the
tasks attached here and the name table the leader sends (`shoal.overlay.plan` decides; this module applies).

- A network gets its namespace on this node when the first local task attaches to it, and loses it once no
  local task has used it for NETWORK_LINGER_SECONDS (a rolling update that replaces the node's only task of a
  network keeps it). The VXLAN device is made in the host's namespace (its UDP socket stays there, on the
  node's address and data-path port) and then moved into the network's namespace, as Docker's overlay does.
- The node's DNS server also listens in each network's namespace, on the gateway address, which the task's
  resolver names.
- Attaching a task: a veth pair from the network's bridge into the task's namespace (by the PID of its
  process), its address and MAC, and its VIP table. Idempotent, so a task adopted after an agent restart is
  attached again without harm.
- The peers (tasks on other nodes) and every local task's VIP table follow each name table change; only the
  differences are written, with one `bridge -batch` and one `ip -batch` per network.

All of it runs `ip`, `bridge`, `nsenter` and `nft` as subprocesses: the event loop never blocks on the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    veth_device,
    vip_backends,
    vxlan_device,
)
from shoal.task_networks import task_networks
from shoal.types import Doc

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
NETWORK_LINGER_SECONDS = 30.0
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
    """A task's own network namespace: a container's (by its process) or one made for a process task."""

    ip_ref: str  # how `ip link … netns` names it: a PID, or a name under /run/netns
    path: str  # its file, for nsenter

    @classmethod
    def of_process(cls, pid: int) -> TaskNamespace:
        return cls(str(pid), f"/proc/{pid}/ns/net")

    @classmethod
    def named(cls, name: str) -> TaskNamespace:
        return cls(name, f"{NETNS_DIR}/{name}")


def task_namespace_name(node_id: str, task_id: str) -> str:
    """A process task's own namespace (named after its node too, so the node's leftovers can be found)."""
    return f"{namespace_name(node_id, '')}task-{task_id}"


@dataclass
class AttachedTask:
    namespace: TaskNamespace
    networks: list[str]
    vips: dict[str, tuple[str, ...]] | None = None  # as last applied


@dataclass
class LocalNetwork:
    network: OverlayNetwork
    namespace: str
    device: str
    peers: dict[str, Peer] = field(default_factory=dict)  # as last applied
    close_dns: Callable[[], None] | None = None


class OverlayDataPath:
    """This node's overlays. `update` takes each name table; `attach` and `detach` follow local tasks."""

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
        self._unused_since: dict[str, float] = {}  # network ID -> when its last local task left
        self.last_error = ""

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

    async def make_task_namespace(self, task_id: str) -> TaskNamespace:
        """A namespace of its own for a process task (kept if an earlier agent made it)."""
        name = task_namespace_name(self.node_id, task_id)
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            await run("ip", "netns", "add", name)
            await run("ip", "-n", name, "link", "set", "lo", "up")
        return TaskNamespace.named(name)

    async def remove_task_namespace(self, task_id: str) -> None:
        """The process task has ended: its namespace (and with it its interfaces) goes."""
        self.detach(task_id)
        if os.path.exists(f"{NETNS_DIR}/{task_namespace_name(self.node_id, task_id)}"):
            await run("ip", "netns", "del", task_namespace_name(self.node_id, task_id))

    def detach(self, task_id: str) -> None:
        """The task's process has ended (its interfaces went with its namespace)."""
        if self._tasks.pop(task_id, None) is not None:
            self._changed.set()

    # ---- the loop --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply each change (supervised by the agent)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), NETWORK_LINGER_SECONDS if self._unused_since else None)
            self._changed.clear()
            async with self._lock:
                try:
                    await self._sync()
                    self.last_error = ""
                except OverlayError as exc:
                    self.last_error = str(exc)
                    log.warning("overlay: %s", exc)

    async def close(self, remove: bool = False) -> None:
        """Stop serving DNS in the namespaces. They and the tasks' interfaces stay for the next agent, unless
        `remove` (the node leaves the swarm and its tasks are gone)."""
        async with self._lock:
            for local in self._networks.values():
                if local.close_dns is not None:
                    local.close_dns()
                    local.close_dns = None
            if remove:
                for name in node_namespaces(self.node_id):
                    with contextlib.suppress(OverlayError):
                        await run("ip", "netns", "del", name)
                self._networks.clear()

    def debug(self) -> Doc:
        return {"Endpoint": self.endpoint, "Networks": sorted(self._networks), "Tasks": len(self._tasks),
                "Peers": sum(len(n.peers) for n in self._networks.values()), "Error": self.last_error}

    async def _sync(self) -> None:
        in_use = {network for task in self._tasks.values() for network in task.networks}
        now = time.monotonic()
        for network_id in list(self._networks):
            if network_id in in_use:
                self._unused_since.pop(network_id, None)
            elif now - self._unused_since.setdefault(network_id, now) >= NETWORK_LINGER_SECONDS:
                del self._unused_since[network_id]
                await self._remove_network(self._networks.pop(network_id))
        wanted = peers_by_network(self._entries, self.endpoint, self._networks)
        for network_id, local in self._networks.items():
            await self._apply_peers(local, wanted.get(network_id, {}))
        for task_id, attached in list(self._tasks.items()):
            try:
                await self._apply_vips(attached)
            except OverlayError as exc:
                if not os.path.exists(attached.namespace.path):
                    self._tasks.pop(task_id, None)  # ended before its controller said so
                    continue
                raise exc

    # ---- networks --------------------------------------------------------------------------------------------

    async def _ensure_network(self, network: OverlayNetwork) -> LocalNetwork:
        local = self._networks.get(network.id)
        if local is not None:
            return local
        namespace = namespace_name(self.node_id, network.id)
        device = vxlan_device(self.node_id, network.id)
        local = LocalNetwork(network, namespace, device)
        if not os.path.exists(f"{NETNS_DIR}/{namespace}"):
            await run("ip", "netns", "add", namespace)
            await run("ip", "-n", namespace, "-batch", "-", stdin=(
                # A bridge's MAC follows its lowest port's unless set: a task joining must not change the
                # gateway's MAC under the other tasks' ARP caches (their DNS would go unanswered).
                f"link set lo up\nlink add {BRIDGE} address {mac_of(network.gateway)} type bridge\n"
                f"addr add {network.gateway_interface} dev {BRIDGE}\nlink set {BRIDGE} up\n"))
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
        log.info("overlay: network %s set up (VXLAN %d, namespace %s)", network.id[:12], network.vni, namespace)
        return local

    async def _remove_network(self, local: LocalNetwork) -> None:
        if local.close_dns is not None:
            local.close_dns()
        # The bridge and the VXLAN device go with the namespace.
        await run("ip", "netns", "del", local.namespace)
        log.info("overlay: network %s removed from this node", local.network.id[:12])

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
        if await succeeds("ip", "-n", local.namespace, "link", "show", "dev", veth):
            return  # attached by an earlier agent
        await run("ip", "link", "add", veth, "netns", local.namespace, "mtu", str(OVERLAY_MTU), "type", "veth",
                  "peer", "name", name, "mtu", str(OVERLAY_MTU), "netns", namespace.ip_ref)
        await run("ip", "-n", local.namespace, "link", "set", veth, "master", BRIDGE, "up")
        ip = address.partition("/")[0]
        await run("nsenter", f"--net={namespace.path}", _tool("ip") or "ip", "-batch", "-", stdin=(
            f"link set {name} address {mac_of(ip)}\naddr add {address} dev {name}\nlink set {name} up\n"))

    async def _apply_vips(self, attached: AttachedTask) -> None:
        vips = vip_backends(self._entries, attached.networks)
        if vips == attached.vips:
            return
        await run("nsenter", f"--net={attached.namespace.path}", _tool("nft") or "nft", "-f", "-",
                  stdin=render_vips(vips))
        attached.vips = vips
