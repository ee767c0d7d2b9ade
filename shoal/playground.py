"""A whole swarm on this machine: several daemons on distinct loopback addresses (127.0.0.2, .3, …), each
with its own state directory, socket and node name. For the demo, for trying shoal, and for cluster tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from shoal.config import DEFAULT_PORT, PLAYGROUND_DIR
from shoal.errors import ShoalError, Unavailable

FIRST_ADDRESS = 2  # 127.0.0.2: leave 127.0.0.1 to whatever else runs here
START_TIMEOUT = 60.0
METRICS_PORT = 9323  # `up --metrics`: each node serves Prometheus metrics on its own address (Docker's port)


@dataclass
class PlaygroundNode:
    name: str
    role: str
    address: str
    pid: int
    socket: str
    state_dir: str
    alive: bool = True
    data_path_port: int = 0  # its overlay's UDP port (nodes sharing a host each need one); kept for restarts
    metrics_addr: str = ""  # "ip:port" of its Prometheus metrics (`up --metrics`), else ""

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_addr}/metrics" if self.metrics_addr else ""


def _state_file(base: Path) -> Path:
    return base / "playground.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def status(base: Path = PLAYGROUND_DIR) -> list[PlaygroundNode]:
    try:
        raw = json.loads(_state_file(base).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    nodes = [PlaygroundNode(**{k: v for k, v in item.items() if k != "alive"}) for item in raw]
    for node in nodes:
        node.alive = _alive(node.pid)
    return nodes


def default_socket(base: Path = PLAYGROUND_DIR) -> str | None:
    """The first manager's socket of a running playground, which the CLI uses when given no host."""
    for node in status(base):
        if node.role == "manager" and node.alive:
            return node.socket
    return None


def api(socket_path: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://shoal", timeout=timeout)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("message")
        except ValueError:
            message = response.text
        raise Unavailable(f"{response.request.method} {response.request.url.path}: {message}")
    return response


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def free_udp_port() -> int:
    """A UDP port free on every address: the nodes of a playground share the host, so each needs its own
    data-path (VXLAN) port, which the kernel binds on every address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


def start_daemon(name: str, base: Path, extra: list[str] | None = None,
                 wrapper: list[str] | None = None) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start one node's daemon; `wrapper` goes before its command line (e.g. `ip netns exec NS` to run it in
    a network namespace of its own; the wrapper must exec the daemon, so that the PID is the daemon's)."""
    state_dir = base / name
    state_dir.mkdir(parents=True, exist_ok=True)
    sock = state_dir / "shoal.sock"
    log_file = open(state_dir / "daemon.log", "ab")  # noqa: SIM115 — handed to the child
    try:
        proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "shoal", "daemon", "--state-dir", str(state_dir),
             "--socket", str(sock), "--hostname", name, *(extra or [])],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        log_file.close()
    return proc, state_dir, sock


def wait_for_socket(sock: Path, proc: subprocess.Popen[bytes] | None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"the daemon for {sock.parent.name} exited early; see {sock.parent / 'daemon.log'}")
        if sock.exists():
            try:
                with api(str(sock), timeout=2) as client:
                    if client.get("/_ping").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise Unavailable(f"the daemon for {sock.parent.name} did not answer within {timeout:.0f}s")


def up(managers: int = 1, workers: int = 2, progress: Callable[[str], None] = print,
       base: Path = PLAYGROUND_DIR, subnet: str = "127.0.0", executor: str = "process",
       routing_mesh: str = "auto", sim_nodes: int = 0, metrics: bool = False) -> list[PlaygroundNode]:
    """Start the daemons, init the swarm on the first manager and join the others, then `sim_nodes` hollow
    nodes (shoal.sim) in one more process; returns the nodes (the hollow process as one entry). With
    `metrics`, every daemon serves Prometheus metrics on its own address, port METRICS_PORT."""
    if managers < 1:
        raise ShoalError("a playground needs at least one manager: use --managers 1 or more")
    if workers < 0 or managers + workers > 200:
        raise ShoalError("use between 0 and 199 workers")
    if not 0 <= sim_nodes <= 10_000:
        raise ShoalError("use between 0 and 10000 simulated nodes")
    running = [n for n in status(base) if n.alive]
    if running:
        raise ShoalError(f"a playground is already running here ({len(running)} nodes): "
                         "stop it with \"shoal playground down\" first")
    down(lambda _: None, base)
    base.mkdir(parents=True, exist_ok=True)
    try:
        nodes = _start(managers, workers, progress, base, subnet, ["--executor", executor,
                                                                   "--routing-mesh", routing_mesh],
                       metrics_port=METRICS_PORT if metrics else None)
        if sim_nodes:
            nodes.append(start_hollow(nodes, sim_nodes, base, progress))
        return nodes
    except BaseException:
        # Leave nothing half-started behind.
        down(lambda _: None, base)
        raise


def _start(managers: int, workers: int, progress: Callable[[str], None], base: Path,
           subnet: str, daemon_args: list[str], metrics_port: int | None = None) -> list[PlaygroundNode]:
    plan = [(f"manager{i + 1}", "manager") for i in range(managers)]
    plan += [(f"worker{i + 1}", "worker") for i in range(workers)]
    nodes: list[PlaygroundNode] = []
    for index, (name, role) in enumerate(plan):
        address = f"{subnet}.{FIRST_ADDRESS + index}"
        if role == "manager" and not all(_port_free(address, p) for p in (DEFAULT_PORT, 2379, 2380)):
            raise Unavailable(f"ports 2377/2379/2380 on {address} are in use: is another cluster running?")
        metrics_addr = ""
        if metrics_port is not None:
            if not _port_free(address, metrics_port):
                raise Unavailable(f"port {metrics_port} on {address} is in use: the playground's metrics need it")
            metrics_addr = f"{address}:{metrics_port}"
        data_path_port = free_udp_port()
        proc, state_dir, sock = start_daemon(name, base, [
            *daemon_args, "--publish-addr", address, "--data-path-port", str(data_path_port),
            *(["--metrics-addr", metrics_addr] if metrics_addr else [])])
        nodes.append(PlaygroundNode(name, role, address, proc.pid, str(sock), str(state_dir),
                                    data_path_port=data_path_port, metrics_addr=metrics_addr))
        _state_file(base).write_text(json.dumps([asdict(n) for n in nodes], indent=2))
        wait_for_socket(sock, proc)
        with api(str(sock), timeout=90) as client:
            if index == 0:
                progress(f"{name}: initialising the swarm on {address}:{DEFAULT_PORT}")
                _check(client.post("/swarm/init", json={"AdvertiseAddr": address,
                                                        "ListenAddr": f"{address}:{DEFAULT_PORT}"}))
                with api(str(sock)) as first:
                    tokens = _check(first.get("/swarm")).json()["JoinTokens"]
            else:
                progress(f"{name}: joining as a {role} from {address}")
                token = tokens["Manager" if role == "manager" else "Worker"]
                _check(client.post("/swarm/join", json={
                    "AdvertiseAddr": address, "ListenAddr": f"{address}:{DEFAULT_PORT}",
                    "RemoteAddrs": [f"{nodes[0].address}:{DEFAULT_PORT}"], "JoinToken": token}))
    wait_ready(nodes[0].socket, len(nodes))
    progress(f"all {len(nodes)} nodes are ready")
    return nodes


HOLLOW = "hollow"  # the role (and name) of the process that runs the simulated nodes


def start_hollow(nodes: list[PlaygroundNode], count: int, base: Path, progress: Callable[[str], None] = print,
                 start_delay: float = 0.01) -> PlaygroundNode:
    """Start `count` hollow nodes (`python -m shoal.sim`) joined to the swarm of `nodes`; wait until the
    managers see them all ready."""
    first = next(n for n in nodes if n.role == "manager")
    with api(first.socket) as client:
        token = _check(client.get("/swarm")).json()["JoinTokens"]["Worker"]
    state_dir = base / HOLLOW
    state_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(state_dir / "hollow.log", "ab")  # noqa: SIM115 — handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.sim", "--manager", f"{first.address}:{DEFAULT_PORT}", "--token", token,
             "--nodes", str(count), "--state-dir", str(state_dir), "--advertise-addr", first.address,
             "--start-delay", str(start_delay)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log_file.close()
    hollow = PlaygroundNode(HOLLOW, HOLLOW, first.address, proc.pid, "", str(state_dir))
    _state_file(base).write_text(json.dumps([asdict(n) for n in [*nodes, hollow]], indent=2))
    progress(f"{count} simulated nodes: joining (log: {state_dir / 'hollow.log'})")
    total = len(nodes) + count
    wait_ready(first.socket, total, timeout=START_TIMEOUT + count * 0.1, process=proc)
    progress(f"all {total} nodes are ready")
    return hollow


def wait_ready(manager_socket: str, count: int, timeout: float = START_TIMEOUT,
               process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise Unavailable(f"the simulated nodes' process exited ({process.returncode}); see its log")
        with api(manager_socket) as client:
            nodes = _check(client.get("/nodes")).json()
        ready = sum(1 for n in nodes if n["Status"]["State"] == "ready")
        if ready >= count:
            return
        time.sleep(0.1 if count < 50 else 0.5)
    raise Unavailable(f"only {ready} of {count} nodes became ready within {timeout:.0f}s")


def processes_under(base: Path) -> list[int]:
    """PIDs whose standard output goes to a file under `base`: daemons, etcd members and task processes."""
    prefix = str(base.resolve()) + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "fd" / "1").startswith(prefix):
                pids.append(int(entry.name))
    return pids


def kill_node(node: PlaygroundNode) -> None:
    """SIGKILL a node's daemon and what it started (etcd member, task processes): a machine crashing."""
    for pid in {node.pid, *processes_under(Path(node.state_dir))}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_node_leftovers(nodes: list[PlaygroundNode]) -> None:
    """What the nodes leave behind outside their state directories: kernel mesh rules and overlay namespaces
    (a stopped daemon keeps them for its restart; a killed one could not remove them) and the containers of
    the docker executor. A removed playground has no use for any of them."""
    import asyncio

    from shoal.mesh.kernel import KernelDataPath, KernelPathError
    from shoal.overlay.linux import node_namespaces
    from shoal.overlay.plan import vxlan_table

    node_ids: list[str] = []
    for node in nodes:
        try:
            node_ids.append(str(json.loads((Path(node.state_dir) / "state.json").read_text())["node_id"]))
        except (OSError, ValueError, KeyError):
            continue
    for node_id in node_ids:
        with contextlib.suppress(KernelPathError):
            asyncio.run(KernelDataPath(node_id, "").clear())
    _remove_containers(node_ids)
    sbin = "/usr/sbin:/sbin:/usr/bin:/bin"
    for node_id in node_ids:
        for name in node_namespaces(node_id):
            subprocess.run([shutil.which("ip", path=sbin) or "ip", "netns", "del", name], capture_output=True,
                           check=False)
    for node in nodes:
        if node.data_path_port:
            subprocess.run([shutil.which("nft", path=sbin) or "nft", "delete", "table", "ip",
                            vxlan_table(node.data_path_port)], capture_output=True, check=False)


def _remove_containers(node_ids: list[str]) -> None:
    """The docker executor's containers of these nodes, on this machine's engine (if it has one)."""
    if not node_ids:
        return
    try:
        import docker
        import docker.errors

        client = docker.from_env(timeout=30)
        try:
            for container in client.containers.list(all=True, filters={"label": "com.docker.swarm.node.id"}):
                if container.labels.get("com.docker.swarm.node.id") in node_ids:
                    with contextlib.suppress(docker.errors.DockerException):
                        container.remove(force=True)
        finally:
            client.close()
    except Exception:  # no engine here, or it does not answer: nothing of ours runs on it
        return


def down(progress: Callable[[str], None] = print, base: Path = PLAYGROUND_DIR) -> None:
    nodes = status(base)
    for node in sorted(nodes, key=lambda n: n.role == "manager"):
        if node.alive:
            progress(f"{node.name}: stopping")
            with contextlib.suppress(OSError):
                os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(n.pid) for n in nodes):
        time.sleep(0.05)
    # Tasks outlive their daemon by design (a restarted agent adopts them); a playground's must go too.
    for _ in range(3):
        leftovers = processes_under(base) if base.exists() else []
        if not leftovers:
            break
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _remove_node_leftovers(nodes)
    if base.exists():
        shutil.rmtree(base, ignore_errors=True)
    if nodes:
        progress(f"playground removed ({len(nodes)} nodes)")
