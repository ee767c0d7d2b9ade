"""The kernel data path for real: nftables rules applied with `nft` inside throwaway network namespaces.

Nothing is added to the machine's own namespace. Each test creates `shoal-kt-<random>` namespaces, runs the
scenario functions below inside them (`ip netns exec NS python -c ...`) and deletes them afterwards. The
scenarios print their observations as JSON; the assertions are made here, so a failure shows what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.mesh.kernel import KernelDataPath, KernelRule, kernel_available
from shoal.mesh.table import Backend

REPO = Path(__file__).resolve().parents[2]


def _missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables tables"
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"needs the {tool!r} program (Debian packages nftables, iproute2)"
    return None


pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))]

LISTEN_HOST = "127.0.0.5"
TCP_PORT = 18080
UDP_PORT = 18081


# ---- run inside a namespace -------------------------------------------------------------------------------


class _Named(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = ""


class _Answer(socketserver.BaseRequestHandler):
    """Answers with the server's name (and the address the connection came from), then closes."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Named)
        self.request.sendall(f"{server.name} from {self.client_address[0]}".encode())


class _UdpNamed(socketserver.ThreadingUDPServer):
    daemon_threads = True
    name = ""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        server = self.server
        assert isinstance(server, _UdpNamed)
        sock.sendto(f"{server.name}:".encode() + data, self.client_address)


def _serve_tcp(name: str, host: str, port: int) -> int:
    server = _Named((host, port), _Answer)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _serve_udp(name: str, host: str, port: int) -> int:
    server = _UdpNamed((host, port), _Echo)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _ask_tcp(host: str, port: int) -> str:
    """The answer to one new connection, or how it failed and how fast."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            chunks = []
            while chunk := sock.recv(1024):
                chunks.append(chunk)
            return b"".join(chunks).decode().split(" from ")[0]
    except OSError as exc:
        return f"{type(exc).__name__} after {time.monotonic() - started:.2f}s"


def _ask_udp(host: str, port: int) -> str:
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect((host, port))
        try:
            sock.send(b"ping")
            return sock.recv(1024).decode()
        except OSError as exc:
            return f"{type(exc).__name__} after {time.monotonic() - started:.2f}s"


async def _loopback_scenario() -> dict[str, Any]:
    alpha = Backend("task-alpha", "127.0.0.1", _serve_tcp("alpha", "127.0.0.1", 0))
    bravo = Backend("task-bravo", "127.0.0.1", _serve_tcp("bravo", "127.0.0.1", 0))
    echo = Backend("task-echo", "127.0.0.1", _serve_udp("echo", "127.0.0.1", 0))
    # Something listening on the published ports themselves: it must never answer while the table is there
    # (DNAT wins, and an empty port is rejected), and answers once the table is gone.
    _serve_tcp("direct", "0.0.0.0", TCP_PORT)
    _serve_udp("direct", "0.0.0.0", UDP_PORT)
    path = KernelDataPath("loopbacknode-0123456789", LISTEN_HOST)
    seen: dict[str, Any] = {"unavailable because": kernel_available()}

    await path.sync([KernelRule("tcp", TCP_PORT, (alpha, bravo)), KernelRule("udp", UDP_PORT, (echo,))])
    seen["two backends"] = [_ask_tcp(LISTEN_HOST, TCP_PORT) for _ in range(10)]
    seen["udp"] = _ask_udp(LISTEN_HOST, UDP_PORT)
    seen["other address"] = _ask_tcp("127.0.0.6", TCP_PORT)  # not the listen address: not ours

    await path.sync([KernelRule("tcp", TCP_PORT, (bravo,)), KernelRule("udp", UDP_PORT, (echo,))])
    seen["one backend"] = [_ask_tcp(LISTEN_HOST, TCP_PORT) for _ in range(10)]

    await path.sync([KernelRule("tcp", TCP_PORT, ()), KernelRule("udp", UDP_PORT, ())])
    seen["no backends"] = _ask_tcp(LISTEN_HOST, TCP_PORT)
    seen["udp no backends"] = _ask_udp(LISTEN_HOST, UDP_PORT)
    seen["table"] = _nft("list", "table", "ip", path.table)

    await path.clear()
    await path.clear()  # a missing table is fine
    seen["cleared"] = _ask_tcp(LISTEN_HOST, TCP_PORT)
    seen["tables after clear"] = _nft("list", "tables")
    return seen


def loopback_scenario() -> None:
    print(json.dumps(asyncio.run(_loopback_scenario())))


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=True).stdout


def serve_backend(host: str, port: int) -> None:
    """The backend machine: answers with who connected, until killed."""
    _serve_tcp("backend", host, port)
    print("ready", flush=True)
    threading.Event().wait()


def apply_rules(node_id: str, listen_host: str, rules_json: str) -> None:
    rules = [KernelRule(protocol, port, tuple(Backend(*backend) for backend in backends))
             for protocol, port, backends in json.loads(rules_json)]
    asyncio.run(KernelDataPath(node_id, listen_host).sync(rules))


def ask_raw(host: str, port: int) -> None:
    """Print the full answer, including the address the backend saw."""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            print(sock.recv(1024).decode())
    except OSError as exc:
        print(type(exc).__name__)


# ---- drive from the test process --------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def _namespaces(*roles: str) -> Iterator[dict[str, str]]:
    """Fresh network namespaces with loopback up, one per role, deleted on the way out."""
    suffix = secrets.token_hex(4)
    made: dict[str, str] = {}
    try:
        for role in roles:
            name = f"shoal-kt-{suffix}-{role}"
            try:
                _ip("netns", "add", name)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
            made[role] = name
            _ip("-n", name, "link", "set", "lo", "up")
        yield made
    finally:
        for name in made.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def _python_in(namespace: str, call: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, "-c",
            f"from tests.cluster.test_mesh_kernel_netns import *; {call}"]


def _run_in(namespace: str, call: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(_python_in(namespace, call), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{call} failed in {namespace}:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def test_dnat_spreads_follows_and_rejects_on_loopback() -> None:
    with _namespaces("node") as ns:
        seen = json.loads(_run_in(ns["node"], "loopback_scenario()").splitlines()[-1])

    assert seen["unavailable because"] is None, seen
    assert sorted(set(seen["two backends"])) == ["alpha", "bravo"], seen
    assert seen["two backends"].count("alpha") == 5, seen  # numgen inc: strictly in turn
    assert seen["udp"] == "echo:ping", seen
    assert seen["other address"] == "direct", seen
    assert set(seen["one backend"]) == {"bravo"}, seen
    assert seen["no backends"].startswith("ConnectionRefusedError after 0.0"), seen
    # Rejected in the output hook, the datagram is dropped before it leaves: send() fails with EPERM at once
    # (a client on another machine gets ICMP port unreachable, i.e. ConnectionRefusedError).
    fast_failures = ("PermissionError after 0.0", "ConnectionRefusedError after 0.0")
    assert seen["udp no backends"].startswith(fast_failures), seen
    assert "reject with tcp reset" in seen["table"], seen["table"]
    assert seen["cleared"] == "direct", seen
    assert "shoal_" not in seen["tables after clear"], seen


def test_dnat_to_another_machine_is_masqueraded() -> None:
    """client -> node (wildcard listen, prerouting DNAT, forward) -> backend that has no route to the client:
    the answer only comes back if the node masqueraded the connection."""
    with _namespaces("client", "node", "backend") as ns:
        _ip("-n", ns["node"], "link", "add", "to_client", "type", "veth", "peer", "name", "to_node",
            "netns", ns["client"])
        _ip("-n", ns["node"], "link", "add", "to_backend", "type", "veth", "peer", "name", "to_node",
            "netns", ns["backend"])
        for role, device, address in [("client", "to_node", "10.231.0.1/24"),
                                      ("node", "to_client", "10.231.0.2/24"),
                                      ("node", "to_backend", "10.231.1.2/24"),
                                      ("backend", "to_node", "10.231.1.1/24")]:
            _ip("-n", ns[role], "address", "add", address, "dev", device)
            _ip("-n", ns[role], "link", "set", device, "up")
        # ip_forward is per namespace: this changes only the throwaway node namespace.
        subprocess.run(["ip", "netns", "exec", ns["node"], "sh", "-c",
                        "echo 1 > /proc/sys/net/ipv4/ip_forward"], check=True, timeout=30)

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        backend = subprocess.Popen(_python_in(ns["backend"], "serve_backend('10.231.1.1', 9000)"),
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert backend.stdout is not None and backend.stdout.readline().strip() == "ready"
            before = _run_in(ns["client"], f"ask_raw('10.231.0.2', {TCP_PORT})")
            rules = json.dumps([["tcp", TCP_PORT, [["task-b", "10.231.1.1", 9000]]]])
            _run_in(ns["node"], f"apply_rules('crossnode', '0.0.0.0', {rules!r})")
            through = _run_in(ns["client"], f"ask_raw('10.231.0.2', {TCP_PORT})")
        finally:
            backend.kill()
            backend.wait(timeout=30)

    assert before == "ConnectionRefusedError"
    assert through == "backend from 10.231.1.2", through  # masqueraded to the node's address on that side
