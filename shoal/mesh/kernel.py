"""The routing mesh's kernel data path: nftables DNAT rules kept in step with the endpoint table.

Instead of accepting connections and copying bytes, the node asks the kernel to rewrite the destination of
each new connection to a published port: `dnat to numgen inc mod N map {0: host . port, …}` picks the
service's backends in turn (per connection; conntrack keeps a connection on the backend it got). The rules
live in one nftables table per node, `ip shoal_<node id>`:

- `nat_prerouting` (connections from other machines) and `nat_output` (connections made on this machine, as
  the tests and the playground make them, to 127.x addresses; when listening on every address, not those from
  a loopback source, which the userspace listener serves) jump to `services`, which matches the
  destination (`ip daddr <listen host>`, or `fib daddr type local` when listening on every address) and the
  published port, marks the connection and DNATs it.
- A published port with no backends is rejected in `filter_input` / `filter_output` (TCP reset, ICMP port
  unreachable for UDP), so a client fails fast instead of waiting for a timeout.
- `nat_postrouting` masquerades the connections this table DNATed (`ct status dnat` and our ct mark bit)
  when they leave through a real interface, so a backend on another machine answers through this node and
  conntrack can undo the DNAT. Not on loopback (`oifname "lo"`): loopback addresses cannot be masqueraded,
  and there the backend answers to this host anyway.

One table per node because several shoal nodes can share one network namespace (the playground runs them
all on loopback addresses); each node replaces only its own table. Every sync renders the whole table and
applies it with one `nft -f -` that adds, deletes and recreates it in a single transaction, so packets see
either the old rules or the new ones, never a half-built table, and no rule from an earlier sync lingers.

Limits: IPv4 only. Forwarding to a backend on another machine needs `net.ipv4.ip_forward=1` and a host
firewall that accepts the forwarded traffic — Docker sets the FORWARD policy to DROP, which blocks it unless
a rule accepts it. DNAT in `output` to a 127.x backend works without `route_localnet`; DNAT of traffic from
other machines to a 127.x backend does not (the kernel drops such packets as martians).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.mesh.table import Backend

# The ct mark bit set on connections this table DNATed; postrouting masquerades only those.
DNAT_MARK = 0x00100000

WILDCARD_HOSTS = ("", "0.0.0.0")
PROTOCOLS = ("tcp", "udp")

Runner = Callable[[str], Awaitable[None]]


class KernelPathError(Exception):
    """nft refused a script, is missing, or the rules cannot express what was asked."""


@dataclass(frozen=True)
class KernelRule:
    """One published port and the backends its new connections are spread over."""

    protocol: str  # "tcp" | "udp"
    published_port: int
    backends: tuple[Backend, ...]  # may be empty: connections are rejected


def table_name(node_id: str) -> str:
    """The node's own nftables table: several nodes may share a network namespace."""
    safe = re.sub(r"[^a-z0-9]", "_", node_id.lower())[:12]
    return f"shoal_{safe}"


def _ipv4(address: str, what: str) -> str:
    # Only parsed addresses reach the script, so no text from the store is ever spliced into nft syntax.
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise KernelPathError(f"{what} {address!r} is not an IPv4 address") from None


def _port(port: int, what: str) -> int:
    if not 0 < port < 65536:
        raise KernelPathError(f"{what} {port} is not a port number")
    return port


def _destination_match(listen_host: str) -> str:
    if listen_host in WILDCARD_HOSTS:
        return "fib daddr type local"
    return f"ip daddr {_ipv4(listen_host, 'listen address')}"


def _dnat_rule(destination: str, rule: KernelRule) -> str:
    targets = ", ".join(
        f"{index} : {_ipv4(backend.host, 'backend address')} . {_port(backend.port, 'backend port')}"
        for index, backend in enumerate(rule.backends))
    return (f"{destination} {rule.protocol} dport {rule.published_port} "
            f"ct mark set ct mark or {DNAT_MARK:#010x} "
            f"dnat to numgen inc mod {len(rule.backends)} map {{ {targets} }}")


def _reject_rule(destination: str, rule: KernelRule) -> str:
    how = "reject with tcp reset" if rule.protocol == "tcp" else "reject"
    return f"{destination} {rule.protocol} dport {rule.published_port} {how}"


def render(table: str, listen_host: str, rules: Sequence[KernelRule]) -> str:
    """The nft script that replaces the whole table in one transaction (pure).

    Rules are ordered by port and protocol, so the same rule set always renders the same text.
    """
    destination = _destination_match(listen_host)
    seen: set[tuple[int, str]] = set()
    dnat_rules: list[str] = []
    reject_rules: list[str] = []
    for rule in sorted(rules, key=lambda r: (r.published_port, r.protocol)):
        if rule.protocol not in PROTOCOLS:
            raise KernelPathError(f"protocol {rule.protocol!r} is not tcp or udp")
        _port(rule.published_port, "published port")
        if (rule.published_port, rule.protocol) in seen:
            raise KernelPathError(f"published port {rule.published_port}/{rule.protocol} appears twice")
        seen.add((rule.published_port, rule.protocol))
        if rule.backends:
            dnat_rules.append(_dnat_rule(destination, rule))
        else:
            reject_rules.append(_reject_rule(destination, rule))

    def chain(name: str, header: str | None, body: list[str]) -> list[str]:
        lines = [f"\tchain {name} {{"]
        if header:
            lines.append(f"\t\t{header}")
        lines.extend(f"\t\t{line}" for line in body)
        lines.append("\t}")
        return lines

    lines = [f"add table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    lines += chain("nat_prerouting", "type nat hook prerouting priority dstnat; policy accept;",
                   ["jump services"])
    # A local client of 127.0.0.1 sent to another machine would leave with a loopback source, which the kernel
    # will not route (without route_localnet): those connections are left to the userspace listener, which
    # is bound on every address too. A node listening on one address is matched by that address alone.
    output_jump = "ip saddr != 127.0.0.0/8 jump services" if listen_host in WILDCARD_HOSTS else "jump services"
    lines += chain("nat_output", "type nat hook output priority -100; policy accept;", [output_jump])
    lines += chain("services", None, dnat_rules)
    ours = f"ct status dnat ct mark and {DNAT_MARK:#010x} == {DNAT_MARK:#010x}"
    lines += chain("nat_postrouting", "type nat hook postrouting priority srcnat; policy accept;",
                   [f'{ours} oifname != "lo" masquerade'])
    lines += chain("filter_input", "type filter hook input priority filter; policy accept;",
                   ["jump no_backends"])
    lines += chain("filter_output", "type filter hook output priority filter; policy accept;",
                   ["jump no_backends"])
    # The filter hooks run after DNAT: a connection already sent to a backend is not ours to reject.
    lines += chain("no_backends", None, ["ct status dnat return", *reject_rules])
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft_binary() -> str | None:
    # /usr/sbin is often missing from PATH for non-login shells and services.
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")


async def run_nft(script: str) -> None:
    """Apply a script with `nft -f`; raise KernelPathError with nft's complaint when it fails."""
    nft = _nft_binary()
    if nft is None:
        raise KernelPathError("the nft program is not installed")
    # The script goes in a file, not a pipe: nft failing early must not turn into a write on a closed pipe.
    with tempfile.NamedTemporaryFile("w", prefix="shoal-nft-", suffix=".nft") as script_file:
        script_file.write(script)
        script_file.flush()
        try:
            process = await asyncio.create_subprocess_exec(
                nft, "-f", script_file.name, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            _, stderr = await process.communicate()
        except (OSError, RuntimeError) as exc:  # e.g. out of file descriptors
            raise KernelPathError(f"nft could not run: {exc}") from exc
    if process.returncode != 0:
        raise KernelPathError(f"nft failed ({process.returncode}): {stderr.decode(errors='replace').strip()}")


def kernel_available() -> str | None:
    """None when this process can program nftables here, else why not.

    Checked for real: a probe table using every kind of rule `render` writes is created and deleted in one
    transaction, so a kernel without the nat, fib, numgen or reject support says so here.
    """
    if os.geteuid() != 0:
        return "not running as root"
    nft = _nft_binary()
    if nft is None:
        return "the nft program is not installed (Debian package nftables)"
    probe = f"shoal_probe_{secrets.token_hex(4)}"
    rules = [KernelRule("tcp", 1, (Backend("probe", "127.0.0.1", 1),)), KernelRule("udp", 1, ())]
    script = render(probe, "0.0.0.0", rules) + f"delete table ip {probe}\n"
    try:
        result = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nft could not run: {exc}"
    if result.returncode != 0:
        complaint = result.stderr.strip() or f"exit status {result.returncode}"
        return f"nft cannot create a table here: {complaint}"
    return None


def forwarding_problem() -> str | None:
    """None when connections DNATed to a task on another node would be forwarded, else why not.

    Docker sets the FORWARD policy to drop; a packet dropped by any forward chain is gone, whatever our own
    table says, so with that policy the kernel path would only work for tasks on the node itself.
    """
    try:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
            return "net.ipv4.ip_forward is 0, so connections to tasks on other nodes would not be forwarded"
    except OSError as exc:
        return f"cannot read net.ipv4.ip_forward: {exc}"
    nft = _nft_binary()
    listed = subprocess.run([nft, "list", "chains"], capture_output=True, text=True, timeout=10,
                            check=False).stdout if nft else ""
    if any("hook forward" in line and "policy drop" in line for line in listed.splitlines()):
        return ("a forward chain drops by default (Docker sets the FORWARD policy to DROP), so connections "
                "to tasks on other nodes would be dropped")
    return None


class KernelDataPath:
    """Keeps this node's nftables table equal to the rules it was last given."""

    def __init__(self, node_id: str, listen_host: str, runner: Runner | None = None) -> None:
        self.table = table_name(node_id)
        self.listen_host = listen_host
        self._run = runner or run_nft
        self._applied: str | None = None  # the script nft last accepted; None: unknown, apply next time
        self._lock = asyncio.Lock()

    async def sync(self, rules: Sequence[KernelRule]) -> None:
        """Replace the table when the rules differ from the ones last applied.

        After a failed apply nothing counts as applied, so the next sync tries again.
        """
        script = render(self.table, self.listen_host, rules)
        async with self._lock:
            if script == self._applied:
                return
            self._applied = None
            await self._run(script)
            self._applied = script

    async def clear(self) -> None:
        """Remove the table. Adding it first makes the delete succeed when it is not there."""
        async with self._lock:
            self._applied = None
            await self._run(f"add table ip {self.table}\ndelete table ip {self.table}\n")
