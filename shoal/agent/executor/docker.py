"""The docker executor: each task runs as a container of the node's Docker Engine, through the docker SDK.

The container is made the way Docker swarm mode's own executor makes it (moby `daemon/cluster/executor/container`):

- Name `<service>.<slot>.<task id>` (a global task: `<service>.<node id>.<task id>`); labels
  `com.docker.swarm.{service.id, service.name, task.id, task.name, node.id}` over `ContainerSpec.Labels`.
- `ContainerSpec.Command` replaces the image's entrypoint and `Args` its command; with no Command, `Args` alone
  replace the command. Env, Dir, User, Hostname, TTY, OpenStdin, ReadOnly, Init, Groups, StopSignal,
  StopGracePeriod, Sysctls, CapabilityAdd/Drop, Ulimits and OomScoreAdj are passed through; Mounts of type bind,
  volume and tmpfs too, with their options. Hosts ("IP name [alias...]") become the engine's extra hosts, one
  per name; DNSConfig its DNS settings (see `dns_arguments` for tasks on swarm networks); Privileges' Seccomp,
  AppArmor and NoNewPrivileges its security options; `TaskTemplate.LogDriver` the container's log driver. A
  field no executor acts on (`shoal.spec.CONTAINER_SPEC_SUPPORT`; the API refuses them) rejects the task.
- Health: `ContainerSpec.Healthcheck` becomes the container's own health check, so Docker runs it and keeps the
  container's health status (`docker ps` shows it). `probe` does not run anything itself: it hands the worker's
  health monitor Docker's results one at a time (see `DockerController.probe`).
- Published ports in host mode (`task["Endpoint"]["Ports"]` with PublishMode "host") are bound on the node;
  PublishedPort 0 lets Docker choose. Ingress ports are bound on a port Docker chooses, which the routing mesh
  of every node forwards to.
- Swarm networks (`NetworksAttachments`): the container's way out (and its published ports) is a bridge of
  the engine's, `shoal_gwbridge`, on which containers cannot talk to each other (as Docker's docker_gwbridge),
  so two swarm networks never meet there; a container whose networks are all `--internal` and that publishes
  no port has none. It gets one more interface per network from the node's overlay (`shoal.overlay`) as soon
  as it has started, before the task is reported running; its resolver is the node's DNS server on the first
  network's gateway. A node without an overlay rejects such tasks.
- The image: used as it is when the engine has it, else pulled; a pull that fails rejects the task with
  Docker's "No such image: …".
- `prepare` creates the container (a task held at `ready` has its container created, not started), `start`
  starts it, `shutdown` sends the stop signal and kills after the grace period, `remove` deletes the container.
- Resources: `Limits` {NanoCPUs, MemoryBytes, Pids} become the container's limits (reservations are the
  scheduler's); a container the kernel killed for memory (`State.OOMKilled`) says so in the task's error.
- The exit code comes from Docker, also for a container adopted after an agent restart.

The SDK is synchronous. Short calls run in the default thread pool; the long ones (waiting for a container to
exit, following its logs) each get a thread of their own, so thirty running tasks cannot starve the pool.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions

from shoal.agent.executor.base import (
    Controller,
    ExecutorError,
    ExitStatusUnknown,
    LogLine,
    ProbeResult,
    TaskRejected,
    backend_port,
    cancelling,
    out_of_memory,
    refuse_unsupported_fields,
)
from shoal.agent.health import HealthStatus, health_check_of
from shoal.agent.task_files import PlacedFile, TaskFiles, files_off_loop
from shoal.errors import InvalidArgument, Unavailable
from shoal.mesh.table import published_ports
from shoal.overlay.linux import OverlayDataPath
from shoal.overlay.plan import OverlayError, OverlayNetwork
from shoal.spec import (
    DEFAULT_MOUNT_TYPE,
    DOCKER_EXECUTOR,
    MOUNT_OPTIONS,
    MOUNT_TYPES,
    ImageReference,
    is_unset,
)
from shoal.task_files import mounts_files
from shoal.task_networks import task_networks
from shoal.timefmt import SECOND, from_rfc3339
from shoal.timeouts import within
from shoal.types import Doc, task_slot

log = logging.getLogger(__name__)

EXECUTOR_NAME = DOCKER_EXECUTOR
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"
DEFAULT_STOP_SIGNAL = "SIGTERM"
# Connections kept to the engine: one per waiting or log-following thread, plus the short calls.
MAX_POOL_SIZE = 128
API_TIMEOUT_SECONDS = 60
# A thread blocked on Docker's wait API wakes up this often to see whether it is still wanted.
WAIT_CHUNK_SECONDS = 5
# After a SIGKILL a container normally ends at once; one stuck in the kernel may not.
KILL_WAIT_SECONDS = 30.0
# While a health probe waits for Docker's next result, the container is inspected this often.
HEALTH_POLL_SECONDS = 0.25
# How long past its interval and timeout a probe waits for Docker's next health result before failing.
HEALTH_RESULT_SLACK_SECONDS = 2.0
MAX_PROBE_OUTPUT = 4096  # as Docker keeps
# Once the task has ended, a followed log gets this long to deliver what Docker still has.
LOG_DRAIN_SECONDS = 1.0
LOG_STREAMS = ("stdout", "stderr")
PULL_ERROR_SHOWN = 200
# The engine's bridge for the way out of containers on swarm networks: no traffic between its containers.
GATEWAY_BRIDGE = "shoal_gwbridge"
GATEWAY_BRIDGE_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else tempfile.gettempdir()) / "shoal-gwbridge.lock"
GATEWAY_BRIDGE_OPTIONS = {"com.docker.network.bridge.enable_icc": "false",
                          "com.docker.network.bridge.enable_ip_masquerade": "true"}

T = TypeVar("T")


# ---- the container, from the task document (pure) ----------------------------------------------------------

def _container_spec(task: Doc) -> Doc:
    return ((task.get("Spec") or {}).get("ContainerSpec")) or {}


def service_name(task: Doc) -> str:
    return str(((task.get("ServiceAnnotations") or {}).get("Name")) or task.get("ServiceID") or "")


def container_name(task: Doc) -> str:
    """`<service>.<slot>.<task id>`; a global task (slot 0) has its node ID in place of the slot."""
    slot = task_slot(task)
    middle = str(slot) if slot else str(task.get("NodeID") or "")
    return f"{service_name(task)}.{middle}.{task['ID']}"


def container_labels(task: Doc) -> dict[str, str]:
    """ContainerSpec.Labels under Docker's swarm labels (which a spec cannot override)."""
    labels = {str(key): str(value) for key, value in (_container_spec(task).get("Labels") or {}).items()}
    labels.update({
        LABEL_SERVICE_ID: str(task.get("ServiceID") or ""),
        LABEL_SERVICE_NAME: service_name(task),
        LABEL_TASK_ID: str(task["ID"]),
        LABEL_TASK_NAME: container_name(task),
        LABEL_NODE_ID: str(task.get("NodeID") or ""),
    })
    return labels


def port_bindings(task: Doc) -> dict[str, list[dict[str, str]]]:
    """Docker's HostConfig.PortBindings for the published ports: {"80/tcp": [{"HostPort": "8080"}]}.

    A host-mode port is bound on its published port (0: Docker chooses); an ingress port on a port Docker
    chooses, which the routing mesh connects to from any node.
    """
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in published_ports(task):
        key = f"{int(port['TargetPort'])}/{port.get('Protocol') or 'tcp'}"
        published = int(port.get("PublishedPort") or 0) if port.get("PublishMode") == "host" else 0
        bindings.setdefault(key, []).append({"HostIp": "", "HostPort": str(published) if published else ""})
    return bindings


def bound_ports(task: Doc, inspected: Doc) -> list[Doc]:
    """The task's `backend_ports` from its inspected container: the host port Docker bound for each published
    port, checked for listening at the container's own address."""
    settings = inspected.get("NetworkSettings") or {}
    container_ip = str(settings.get("IPAddress") or "")
    out: list[Doc] = []
    taken: set[tuple[str, int]] = set()
    for port in published_ports(task):
        key = f"{int(port['TargetPort'])}/{port.get('Protocol') or 'tcp'}"
        wanted = int(port.get("PublishedPort") or 0) if port.get("PublishMode") == "host" else 0
        for binding in (settings.get("Ports") or {}).get(key) or []:
            number = int(binding.get("HostPort") or 0)
            if not number or (key, number) in taken or (wanted and number != wanted):
                continue
            taken.add((key, number))
            probe = (container_ip, int(port["TargetPort"])) if container_ip else ("127.0.0.1", number)
            out.append(backend_port(port, number, *probe))
            break
    return out


def docker_healthcheck(spec: Doc) -> docker.types.Healthcheck | None:
    """ContainerSpec.Healthcheck as the SDK's Healthcheck (durations stay nanoseconds); None when not set.
    ["NONE"] is passed on: it switches off a check the image declares, as in swarm mode."""
    config = spec.get("Healthcheck")
    if not config:
        return None
    fields: dict[str, Any] = {"test": [str(part) for part in config.get("Test") or []]}
    for key, name in (("Interval", "interval"), ("Timeout", "timeout"), ("StartPeriod", "start_period")):
        if config.get(key):
            fields[name] = int(config[key])
    if config.get("Retries"):
        fields["retries"] = int(config["Retries"])
    check = docker.types.Healthcheck(**fields)
    if config.get("StartInterval"):
        check["StartInterval"] = int(config["StartInterval"])  # the SDK has no argument for it (API 1.44)
    return check


def docker_mounts(spec: Doc) -> list[docker.types.Mount]:
    """ContainerSpec.Mounts of type bind, volume and tmpfs (a mount without a Type is a bind mount, as in swarm
    mode), each with its type's options (BindOptions, VolumeOptions, TmpfsOptions) passed on as given; another
    type, or options the engine would not apply, reject the task."""
    mounts = []
    for index, mount in enumerate(spec.get("Mounts") or []):
        where = f"TaskTemplate.ContainerSpec.Mounts[{index}]"
        kind = str(mount.get("Type") or DEFAULT_MOUNT_TYPE)
        if kind not in MOUNT_TYPES:
            raise TaskRejected(f"{where}.Type {kind!r} is not supported by the docker executor")
        made = docker.types.Mount(target=str(mount.get("Target") or ""), source=mount.get("Source") or None,
                                  type=kind, read_only=bool(mount.get("ReadOnly")),
                                  consistency=mount.get("Consistency") or None)
        for block_type, (block, known) in MOUNT_OPTIONS.items():
            options = mount.get(block) or {}
            if is_unset(options):
                continue
            unknown = [key for key, value in options.items() if key not in known and not is_unset(value)]
            if block_type != kind or unknown:
                what = f"{block}.{unknown[0]}" if block_type == kind else block
                raise TaskRejected(f"{where}.{what} is not supported by the docker executor for a {kind} mount")
            made[block] = {key: value for key, value in options.items() if not is_unset(value)}
        mounts.append(made)
    return mounts


def create_arguments(task: Doc) -> dict[str, Any]:
    """The arguments of the SDK's `APIClient.create_container` for a task, without `host_config`, which needs
    the client (see `host_config_arguments`)."""
    refuse_unsupported_fields(task, EXECUTOR_NAME)
    spec = _container_spec(task)
    image = str(spec.get("Image") or "")
    if not image:
        raise TaskRejected("the task's ContainerSpec has no Image")
    arguments: dict[str, Any] = {
        "image": image,
        "name": container_name(task),
        "labels": container_labels(task),
        "environment": [str(entry) for entry in spec.get("Env") or []],
        "tty": bool(spec.get("TTY")),
        "stdin_open": bool(spec.get("OpenStdin")),
        "stop_signal": str(spec.get("StopSignal") or DEFAULT_STOP_SIGNAL),
    }
    command = [str(part) for part in spec.get("Command") or []]
    args = [str(part) for part in spec.get("Args") or []]
    if command:
        arguments["entrypoint"] = command
        arguments["command"] = args
    elif args:
        arguments["command"] = args
    for key, name in (("Dir", "working_dir"), ("User", "user"), ("Hostname", "hostname")):
        if spec.get(key):
            arguments[name] = str(spec[key])
    if spec.get("StopGracePeriod") is not None:
        arguments["stop_timeout"] = max(0, -(-int(spec["StopGracePeriod"]) // SECOND))  # whole seconds, up
    healthcheck = docker_healthcheck(spec)
    if healthcheck is not None:
        arguments["healthcheck"] = healthcheck
    bindings = port_bindings(task)
    if bindings:
        arguments["ports"] = [tuple(key.split("/", 1)) for key in bindings]
    return arguments


def host_config_arguments(task: Doc, files: Sequence[PlacedFile] = (), bridge: str = GATEWAY_BRIDGE
                          ) -> dict[str, Any]:
    """The arguments of the SDK's `create_host_config` for a task; `files` are its secrets and configs, each
    bind-mounted read-only from the node's tmpfs at its container path; `bridge` the gateway bridge (its ID)."""
    spec = _container_spec(task)
    arguments: dict[str, Any] = {}
    bindings = port_bindings(task)
    if bindings:
        arguments["port_bindings"] = bindings
    mounts = docker_mounts(spec)
    mounts += [docker.types.Mount(target=placed.ref.container_path, source=str(placed.path), type="bind",
                                  read_only=True) for placed in files]
    if mounts:
        arguments["mounts"] = mounts
    if spec.get("ReadOnly"):
        arguments["read_only"] = True
    if spec.get("Init") is not None:
        arguments["init"] = bool(spec["Init"])
    if spec.get("Groups"):
        arguments["group_add"] = [str(group) for group in spec["Groups"]]
    for key, name in (("CapabilityAdd", "cap_add"), ("CapabilityDrop", "cap_drop")):
        if spec.get(key):
            arguments[name] = [str(capability) for capability in spec[key]]
    if spec.get("Sysctls"):
        arguments["sysctls"] = {str(key): str(value) for key, value in spec["Sysctls"].items()}
    if spec.get("Ulimits"):
        arguments["ulimits"] = [docker.types.Ulimit(name=str(limit.get("Name") or ""), soft=int(limit.get("Soft") or 0),
                                                    hard=int(limit.get("Hard") or 0)) for limit in spec["Ulimits"]]
    if spec.get("OomScoreAdj"):
        arguments["oom_score_adj"] = int(spec["OomScoreAdj"])
    hosts = extra_hosts(spec)
    if hosts:
        arguments["extra_hosts"] = hosts
    options = security_options(spec)
    if options:
        arguments["security_opt"] = options
    log_config = log_driver(task)
    if log_config is not None:
        arguments["log_config"] = log_config
    if task_networks(task):
        arguments["network_mode"] = bridge if has_way_out(task) else "none"
    arguments.update(dns_arguments(task))
    arguments.update(resource_arguments(task))
    return arguments


def extra_hosts(spec: Doc) -> list[str]:
    """ContainerSpec.Hosts, lines of /etc/hosts ("10.0.0.1 db db.local"), as the engine's extra hosts
    ("db:10.0.0.1"), one per name. Swarm mode's executor keeps the first name only and drops the aliases; shoal
    gives them too rather than ignore part of the spec."""
    out = []
    for entry in spec.get("Hosts") or []:
        address, *names = str(entry).split() or [""]
        out += [f"{name}:{address}" for name in names]
    return out


def dns_arguments(task: Doc) -> dict[str, Any]:
    """`create_host_config` arguments for ContainerSpec.DNSConfig. A task on swarm networks asks the node's DNS
    server (on its first network's gateway), which answers swarm names and forwards other questions to the
    task's Nameservers, as Docker's embedded DNS server does (to the node's own resolvers when it has none);
    any other container has its Nameservers in its resolv.conf. Search domains and options are the container's
    either way."""
    config = _container_spec(task).get("DNSConfig") or {}
    arguments: dict[str, Any] = {}
    networks = [OverlayNetwork.of(network) for network, _ in task_networks(task)]
    nameservers = [networks[0].gateway] if networks else [str(ip) for ip in config.get("Nameservers") or []]
    for name, values in (("dns", nameservers), ("dns_search", config.get("Search")), ("dns_opt", config.get("Options"))):
        if values:
            arguments[name] = [str(value) for value in values]
    return arguments


def security_options(spec: Doc) -> list[str]:
    """ContainerSpec.Privileges as the engine's security options, worded as swarm mode's executor words them;
    "default" modes set nothing. A custom seccomp profile is the JSON text itself (base64 on the wire)."""
    privileges = spec.get("Privileges") or {}
    out = []
    seccomp = privileges.get("Seccomp") or {}
    if seccomp.get("Mode") == "unconfined":
        out.append("seccomp=unconfined")
    elif seccomp.get("Mode") == "custom":
        try:
            profile = base64.b64decode(str(seccomp.get("Profile") or ""), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TaskRejected("TaskTemplate.ContainerSpec.Privileges.Seccomp.Profile is not base64-encoded "
                               "JSON text") from None
        out.append(f"seccomp={profile}")
    if (privileges.get("AppArmor") or {}).get("Mode") == "disabled":
        out.append("apparmor=unconfined")
    if privileges.get("NoNewPrivileges"):
        out.append("no-new-privileges=true")
    return out


def log_driver(task: Doc) -> docker.types.LogConfig | None:
    """`TaskTemplate.LogDriver` as the container's log configuration; None when not set (the engine's default
    driver). A Name of "" with Options is the engine's default driver with those options, as in swarm mode."""
    driver = (task.get("Spec") or {}).get("LogDriver") or {}
    if is_unset(driver):
        return None
    options = {str(key): str(value) for key, value in (driver.get("Options") or {}).items()}
    return docker.types.LogConfig(type=str(driver.get("Name") or ""), config=options)


def resource_arguments(task: Doc) -> dict[str, Any]:
    """`create_host_config` arguments for `TaskTemplate.Resources.Limits`, as swarm mode's executor sets them:
    NanoCPUs, MemoryBytes (the engine then allows as much swap again) and Pids, each only when above 0.
    Reservations are left to the scheduler, as Docker leaves them (no mem_reservation)."""
    limits = (((task.get("Spec") or {}).get("Resources")) or {}).get("Limits") or {}
    arguments: dict[str, Any] = {}
    for key, name in (("NanoCPUs", "nano_cpus"), ("MemoryBytes", "mem_limit"), ("Pids", "pids_limit")):
        value = int(limits.get(key) or 0)
        if value > 0:
            arguments[name] = value
    return arguments


def container_exit_cause(task: Doc, state: Doc) -> str:
    """Why the container ended, beyond its exit code, from its inspected `State`: the kernel's OOM kill."""
    if not state.get("OOMKilled"):
        return ""
    limits = (((task.get("Spec") or {}).get("Resources")) or {}).get("Limits") or {}
    return out_of_memory(int(limits.get("MemoryBytes") or 0))


def has_way_out(task: Doc) -> bool:
    """Whether a task on swarm networks gets the gateway bridge: one of its networks is not internal, or it
    publishes ports (which the engine binds there)."""
    networks = [OverlayNetwork.of(network) for network, _ in task_networks(task)]
    return not all(network.internal for network in networks) or bool(published_ports(task))


def first_overlay_interface(task: Doc) -> int:
    """The index of the task's first overlay interface: eth0 is the gateway bridge's when it has one."""
    return 1 if has_way_out(task) else 0


def hosts_with_address(hosts: str, hostname: str, address: str) -> str:
    """The container's hosts file with its own name on its first overlay address (as in swarm mode), not on
    the gateway bridge's: a program that asks for its own address gets the one other tasks reach it on."""
    kept = [line for line in hosts.splitlines() if hostname not in line.split()[1:]]
    return "\n".join([*kept, f"{address}\t{hostname}"]) + "\n"


def _name_overlay_address(inspected: Doc, address: str) -> None:
    path = str(inspected.get("HostsPath") or "")
    hostname = str((inspected.get("Config") or {}).get("Hostname") or "")
    if not path or not hostname:
        return
    hosts = Path(path)
    hosts.write_text(hosts_with_address(hosts.read_text(), hostname, address.partition("/")[0]))


def parse_log_line(raw: bytes) -> tuple[float, bytes]:
    """A line of Docker's logs with timestamps ("2024-05-07T21:09:36.123456789Z hello\\n") → (time, line)."""
    stamp, sep, line = raw.partition(b" ")
    try:
        return from_rfc3339(stamp.decode()), line if sep else b""
    except (InvalidArgument, UnicodeDecodeError):
        return 0.0, raw


# ---- talking to the engine ----------------------------------------------------------------------------------

def _describe_api_error(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


async def _in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A short SDK call, off the event loop; an unreachable engine is a temporary ExecutorError."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except docker.errors.APIError:
        raise
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise ExecutorError(f"the Docker Engine cannot be reached: {exc}") from exc


class _ExitWatcher:
    """A thread blocked on Docker's wait API for one container; its exit code lands in an asyncio future.

    The thread waits in chunks so that `close` ends it within WAIT_CHUNK_SECONDS; a removed container resolves
    the future with ExitStatusUnknown.
    """

    def __init__(self, api: docker.APIClient, container_id: str) -> None:
        self._api = api
        self._container_id = container_id
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[int] = self._loop.create_future()
        self._closed = threading.Event()
        threading.Thread(target=self._run, name=f"docker-wait:{container_id[:12]}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                answer = self._api.wait(self._container_id, timeout=WAIT_CHUNK_SECONDS)
            except docker.errors.NotFound:
                self._deliver(ExitStatusUnknown(f"container {self._container_id[:12]} was removed"))
                return
            except docker.errors.APIError as exc:
                self._deliver(ExecutorError(f"waiting for container {self._container_id[:12]}: "
                                            f"{_describe_api_error(exc)}"))
                return
            except (requests.exceptions.RequestException, OSError) as exc:
                if not isinstance(exc, requests.exceptions.Timeout):
                    self._closed.wait(1.0)  # the engine is away (restarting?): ask again shortly
                continue
            self._deliver(int(answer.get("StatusCode", -1)))
            return

    def _deliver(self, outcome: int | Exception) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if isinstance(outcome, Exception):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody is waiting
            self._loop.call_soon_threadsafe(settle)


async def _exit_code(api: docker.APIClient, container_id: str, timeout: float | None) -> int:
    """Wait for the container to exit (up to `timeout` seconds: TimeoutError) and return its exit code."""
    watcher = _ExitWatcher(api, container_id)
    try:
        return await within(watcher.future, timeout=timeout)
    finally:
        watcher.close()


# ---- the executor -------------------------------------------------------------------------------------------

@dataclass
class EngineFacts:
    """What `describe` reports of the engine (read once; the engine does not change under a running agent)."""

    version: str
    architecture: str
    os: str
    cpus: int
    memory: int
    labels: dict[str, str]


class DockerExecutor:
    """Runs tasks as containers of one Docker Engine."""

    def __init__(self, client: docker.DockerClient, task_files: TaskFiles | None = None) -> None:
        self.client = client
        self.api: docker.APIClient = client.api
        self.task_files = task_files  # where tasks' secrets and configs come from (None: refused)
        self._facts: EngineFacts | None = None
        # The node's overlay, set by the daemon; without it, why tasks cannot go on swarm networks here.
        self.overlay: OverlayDataPath | None = None
        self.overlay_problem = "the node has no overlay"
        self._gateway_bridge = ""  # its ID, once known

    async def place_files(self, task: Doc) -> list[PlacedFile]:
        """Write the task's secrets and configs to the node's tmpfs (they are bind-mounted from there)."""
        files = self.task_files
        if files is None:
            if mounts_files(task):
                raise TaskRejected("this node was not given a place for secrets and configs")
            return []
        return await files_off_loop(files.write, task, None)

    async def remove_files(self, task_id: str) -> None:
        if self.task_files is not None:
            await files_off_loop(self.task_files.remove, task_id)

    async def gateway_bridge(self) -> str:
        """The ID of the engine's gateway bridge, created unless the engine has it."""
        if not self._gateway_bridge:
            try:
                self._gateway_bridge = await _in_thread(self._find_or_create_gateway_bridge)
            except docker.errors.APIError as exc:
                raise ExecutorError(f"the engine's bridge {GATEWAY_BRIDGE}: {_describe_api_error(exc)}") from exc
        return self._gateway_bridge

    def forget_gateway_bridge(self) -> None:
        self._gateway_bridge = ""

    def _find_or_create_gateway_bridge(self) -> str:
        # Nodes sharing an engine share a host: a lock there keeps two of them from making it at once (the
        # engine allows two networks of one name, and then refuses to start a container on either).
        with open(GATEWAY_BRIDGE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = [n for n in self.api.networks(names=[GATEWAY_BRIDGE]) if n.get("Name") == GATEWAY_BRIDGE]
            if not found:
                self.api.create_network(GATEWAY_BRIDGE, driver="bridge", check_duplicate=True,
                                        options=GATEWAY_BRIDGE_OPTIONS, labels={"shoal": "gateway-bridge"})
                found = [n for n in self.api.networks(names=[GATEWAY_BRIDGE]) if n.get("Name") == GATEWAY_BRIDGE]
            found.sort(key=lambda n: (str(n.get("Created") or ""), str(n["Id"])))
            for extra in found[1:]:  # made by an older shoal without the lock: unusable, so gone if unused
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_network(extra["Id"])
            if not found:
                raise ExecutorError(f"the engine's bridge {GATEWAY_BRIDGE} vanished as it was made; retrying")
            return str(found[0]["Id"])

    @classmethod
    def connect(cls, base_url: str | None = None, task_files: TaskFiles | None = None) -> DockerExecutor:
        """An executor for the engine at `base_url` ("unix:///var/run/docker.sock", "tcp://…"), or the one the
        environment names (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH; default the local socket).
        Raises Unavailable when the engine does not answer."""
        try:
            if base_url:
                client = docker.DockerClient(base_url=base_url, version="auto", timeout=API_TIMEOUT_SECONDS,
                                             max_pool_size=MAX_POOL_SIZE)
            else:
                client = docker.from_env(version="auto", timeout=API_TIMEOUT_SECONDS, max_pool_size=MAX_POOL_SIZE)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            where = base_url or "DOCKER_HOST or unix:///var/run/docker.sock"
            raise Unavailable(f"the docker executor cannot reach a Docker Engine at {where}: {exc}") from exc
        return cls(client, task_files)

    # -- what the node offers --

    def engine_facts(self) -> EngineFacts:
        if self._facts is None:
            version = self.api.version()
            info = self.api.info()
            labels = dict(str(entry).partition("=")[::2] for entry in info.get("Labels") or [])
            self._facts = EngineFacts(
                version=str(version.get("Version") or ""),
                architecture=str(info.get("Architecture") or ""),
                os=str(info.get("OSType") or "linux"),
                cpus=int(info.get("NCPU") or 0),
                memory=int(info.get("MemTotal") or 0),
                labels=labels,
            )
        return self._facts

    def describe(self) -> Doc:
        try:
            facts = self.engine_facts()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            # Said at every session hello until the engine answers again; the node still shows up meanwhile.
            log.warning("the Docker Engine does not answer: %s", exc)
            return {"Engine": {"EngineVersion": "", "Labels": {}}}
        return {
            "Engine": {"EngineVersion": facts.version, "Labels": dict(facts.labels)},
            "Platform": {"Architecture": facts.architecture, "OS": facts.os},
            "Resources": {"NanoCPUs": facts.cpus * 1_000_000_000, "MemoryBytes": facts.memory},
        }

    # -- tasks --

    def controller(self, task: Doc) -> DockerController:
        return DockerController(self, task)

    def recover(self, task: Doc, handle: Doc) -> DockerController:
        """Re-attach to the task's container: by the saved ID, else by its task label. Synchronous (one inspect)
        because the worker calls it while loading its records; raises ExitStatusUnknown when the container is
        gone or no longer running (its exit code is in the message)."""
        task_id = str(task["ID"])
        candidates = [str(handle["ContainerID"])] if handle.get("ContainerID") else []
        try:
            candidates += [c["Id"] for c in self.api.containers(all=True, filters={"label": f"{LABEL_TASK_ID}={task_id}"})]
            for container_id in candidates:
                with contextlib.suppress(docker.errors.NotFound):
                    state = self.api.inspect_container(container_id)
                    if state["Config"]["Labels"].get(LABEL_TASK_ID) != task_id:
                        continue
                    if not state["State"].get("Running"):
                        raise ExitStatusUnknown(
                            f"container {container_id[:12]} of task {task_id} is not running "
                            f"(exit code {state['State'].get('ExitCode')})")
                    controller = DockerController(self, task)
                    controller.adopt(state)
                    return controller
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise ExitStatusUnknown(f"task {task_id}: the Docker Engine cannot be asked: {exc}") from exc
        raise ExitStatusUnknown(f"task {task_id} has no container any more")

    async def remove_orphans(self, node_id: str, keep_task_ids: Collection[str]) -> list[str]:
        """Remove (killing if needed) the containers labelled with this node's ID whose task is not in
        `keep_task_ids`: tasks this node no longer owns, whose record the agent lost. Returns their names."""
        if not node_id:
            return []
        listed = await _in_thread(self.api.containers, all=True, filters={"label": f"{LABEL_NODE_ID}={node_id}"})
        removed = []
        for container in listed:
            labels = container.get("Labels") or {}
            if not labels.get(LABEL_TASK_ID) or labels[LABEL_TASK_ID] in keep_task_ids:
                continue
            name = str((container.get("Names") or ["?"])[0]).lstrip("/")
            log.info("removing container %s: task %s is not this node's any more", name, labels[LABEL_TASK_ID])
            await self.remove_container(container["Id"])
            removed.append(name)
        return removed

    async def remove_container(self, container_id: str) -> None:
        try:
            await _in_thread(self.api.remove_container, container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "in progress" in _describe_api_error(exc):
                return  # someone else is removing it
            raise ExecutorError(f"cannot remove container {container_id[:12]}: {_describe_api_error(exc)}") from exc

    async def task_containers(self, task_id: str) -> list[Doc]:
        """The containers labelled with a task, oldest first."""
        listed = await _in_thread(self.api.containers, all=True, filters={"label": f"{LABEL_TASK_ID}={task_id}"})
        return sorted(listed, key=lambda container: int(container.get("Created") or 0))

    async def ensure_image(self, image: str) -> None:
        """Pull the image unless the engine has it; a failed pull rejects the task."""
        try:
            await _in_thread(self.api.inspect_image, image)
            return
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise TaskRejected(f"invalid image {image!r}: {_describe_api_error(exc)}") from exc
        try:
            repository, tag = ImageReference.parse(image).pull()
        except InvalidArgument as exc:
            raise TaskRejected(f"invalid image {image!r}: {exc.message}") from None
        log.info("pulling image %s", image)
        try:
            await _in_thread(self.api.pull, repository, tag=tag)
        except docker.errors.APIError as exc:
            reason = _describe_api_error(exc)[:PULL_ERROR_SHOWN]
            raise TaskRejected(f"No such image: {image} (pull failed: {reason})") from exc

    # -- logs --

    async def logs(self, task_id: str, tail: int | None, follow: bool, ended: Callable[[], bool],
                   now: Callable[[], float]) -> AsyncIterator[LogLine]:
        """The container's output with Docker's timestamps. stdout and stderr are read as two streams (the SDK
        does not tell them apart in one) and merged by time; `tail` counts lines of both together. Following,
        the lines written so far are read up to a cut-off time, then both streams are followed from it."""
        try:
            containers = await self.task_containers(task_id)
        except ExecutorError as exc:
            log.warning("logs of task %s: %s", task_id, exc)
            return
        if not containers:
            return
        container_id = str(containers[-1]["Id"])
        cutoff = time.time()
        backlog: list[tuple[float, int, LogLine]] = []
        for index, stream in enumerate(LOG_STREAMS):
            lines = await _in_thread(self._read_logs, container_id, stream, tail, cutoff if follow else None)
            backlog += [(stamp, index, (stream, stamp, line)) for stamp, line in lines]
        backlog.sort(key=lambda entry: (entry[0], entry[1]))
        if tail is not None:
            backlog = backlog[-tail:] if tail > 0 else []
        for _, _, old_line in backlog:
            yield old_line
        if not follow:
            return
        async for line in self._follow(container_id, cutoff, ended):
            yield line

    def _read_logs(self, container_id: str, stream: str, tail: int | None, until: float | None) -> list[tuple[float, bytes]]:
        try:
            output = self.api.logs(container_id, stdout=stream == "stdout", stderr=stream == "stderr",
                                   timestamps=True, tail="all" if tail is None else max(tail, 0),
                                   **({"until": until} if until is not None else {}))
        except docker.errors.NotFound:
            return []
        return [parse_log_line(raw) for raw in output.splitlines(keepends=True)]

    async def _follow(self, container_id: str, since: float, ended: Callable[[], bool]) -> AsyncIterator[LogLine]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue()
        followers = [_LogFollower(self.api, container_id, stream, since, loop, queue) for stream in LOG_STREAMS]
        open_streams = len(followers)
        drain_deadline: float | None = None
        try:
            while open_streams:
                try:
                    item = await within(queue.get(), timeout=LOG_DRAIN_SECONDS / 4)
                except TimeoutError:
                    if drain_deadline is None and ended():
                        drain_deadline = loop.time() + LOG_DRAIN_SECONDS
                    if drain_deadline is not None and loop.time() > drain_deadline:
                        return
                    continue
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for follower in followers:
                follower.close()


class _LogFollower:
    """One followed log stream of a container, read by a thread of its own into an asyncio queue (None when
    the stream ends: Docker ends it when the container stops)."""

    def __init__(self, api: docker.APIClient, container_id: str, stream: str, since: float,
                 loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[LogLine | None]) -> None:
        self._api = api
        self._container_id = container_id
        self._stream = stream
        self._since = since
        self._loop = loop
        self._queue = queue
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        threading.Thread(target=self._run, name=f"docker-logs:{container_id[:12]}:{stream}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()  # the SDK's CancellableStream: closes the socket the thread reads

    def _run(self) -> None:
        try:
            for line in self._lines():
                self._put((self._stream, *parse_log_line(line)))
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            if not self._closed.is_set():
                log.warning("following the %s of container %s: %s", self._stream, self._container_id[:12], exc)
        finally:
            self._put(None)

    def _lines(self) -> Iterator[bytes]:
        # docker-py's params: `since` is exclusive-ish at nanosecond precision; lines at the cut-off itself
        # were read with the backlog (`until` is inclusive), so a line is never yielded twice in practice.
        response = self._api.logs(self._container_id, stdout=self._stream == "stdout",
                                  stderr=self._stream == "stderr", timestamps=True, stream=True, follow=True,
                                  since=self._since + 1e-6)
        with self._lock:
            if self._closed.is_set():
                response.close()
                return
            self._response = response
        partial = b""
        for chunk in response:
            lines = (partial + chunk).splitlines(keepends=True)
            partial = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            yield from lines
        if partial:
            yield partial

    def _put(self, item: LogLine | None) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


class DockerController(Controller):
    """One task's container: created and started by us, or adopted from a saved handle after an agent restart."""

    def __init__(self, executor: DockerExecutor, task: Doc) -> None:
        self._executor = executor
        self._api = executor.api
        self._task = task
        self._task_id = str(task["ID"])
        self._spec = _container_spec(task)
        self._container_id = ""
        self._pid = 0
        self._adopted = False  # taken over after an agent restart: its networks are attached again
        # The end time of the last Docker health result handed to the worker's monitor.
        self._health_seen_until = 0.0
        self._exit_cause = ""  # why the container ended, beyond its exit code (see exit_cause)

    @property
    def container_id(self) -> str:
        return self._container_id

    # -- steps --

    async def prepare(self) -> None:
        """Pull the image if needed and create the container (or take the one an earlier prepare created)."""
        arguments = create_arguments(self._task)
        networked = bool(task_networks(self._task))
        if networked and self._executor.overlay is None:
            raise TaskRejected(f"this node cannot put containers on swarm networks: {self._executor.overlay_problem}")
        bridge = await self._executor.gateway_bridge() if networked and has_way_out(self._task) else ""
        placed = await self._executor.place_files(self._task)
        host_config = self._api.create_host_config(**host_config_arguments(self._task, placed, bridge))
        await self._executor.ensure_image(arguments["image"])
        for container in await self._executor.task_containers(self._task_id):
            self._container_id = str(container["Id"])
            return
        try:
            created = await _in_thread(self._api.create_container, host_config=host_config, **arguments)
        except docker.errors.APIError as exc:
            text = _describe_api_error(exc)
            if bridge and "network" in text:
                self._executor.forget_gateway_bridge()  # removed behind our back: found or made again next time
            if exc.status_code == 404:
                raise TaskRejected(text) from exc
            if exc.is_client_error():
                raise TaskRejected(f"creating container: {text}") from exc
            raise ExecutorError(f"creating container: {text}") from exc
        self._container_id = str(created["Id"])

    async def start(self) -> None:
        if not self._container_id:
            await self.prepare()
        try:
            await _in_thread(self._api.start, self._container_id)
        except docker.errors.APIError as exc:
            # e.g. the OCI runtime's "exec: \"x\": executable file not found in $PATH", an unknown user.
            raise TaskRejected(f"starting container: {_describe_api_error(exc)}") from exc
        with contextlib.suppress(docker.errors.APIError, ExecutorError):
            state = await _in_thread(self._api.inspect_container, self._container_id)
            self._pid = int(state["State"].get("Pid") or 0)
        await self._attach_networks()

    async def _attach_networks(self) -> None:
        """Put the started container on its swarm networks; one that cannot be attached is killed."""
        overlay = self._executor.overlay
        if overlay is None or not task_networks(self._task) or not self._pid:
            return  # no process: it has ended already (its exit is what the task reports)
        try:
            namespace = await overlay.name_container(self._task_id, self._pid)
            await overlay.attach(self._task, namespace, first_overlay_interface(self._task))
        except OverlayError as exc:
            with contextlib.suppress(ExecutorError):
                await self._signal("SIGKILL")
            raise ExecutorError(f"attaching the container to its networks: {exc}") from exc
        with contextlib.suppress(docker.errors.APIError, ExecutorError, OSError):
            inspected = await _in_thread(self._api.inspect_container, self._container_id)
            await _in_thread(_name_overlay_address, inspected, task_networks(self._task)[0][1])

    async def wait(self) -> int:
        if self._adopted:
            self._adopted = False
            with contextlib.suppress(ExecutorError):  # a container that cannot be attached is killed
                await self._attach_networks()
        try:
            code = await _exit_code(self._api, self._container_id, timeout=None)
            if code != 0:
                with contextlib.suppress(docker.errors.APIError, ExecutorError):
                    state = (await _in_thread(self._api.inspect_container, self._container_id))["State"]
                    self._exit_cause = container_exit_cause(self._task, state)
            return code
        finally:
            if not cancelling():
                if self._executor.overlay is not None:
                    with contextlib.suppress(OverlayError):
                        await self._executor.overlay.release(self._task_id)
                await self._executor.remove_files(self._task_id)  # the task ended: its secrets go

    async def shutdown(self, grace_seconds: float, signal_name: str) -> None:
        """The stop signal, then SIGKILL after `grace_seconds` (Docker's `stop`, with a grace finer than its
        whole seconds)."""
        if not self._container_id:
            return
        if not await self._signal(signal_name or DEFAULT_STOP_SIGNAL):
            return
        try:
            await _exit_code(self._api, self._container_id, timeout=max(grace_seconds, 0.0))
            return
        except TimeoutError:
            log.info("task %s did not stop within %.1fs of %s: killing it", self._task_id, grace_seconds,
                     signal_name)
        except ExitStatusUnknown:
            return
        if not await self._signal("SIGKILL"):
            return
        try:
            await _exit_code(self._api, self._container_id, timeout=KILL_WAIT_SECONDS)
        except TimeoutError:
            raise ExecutorError(f"container {self._container_id[:12]} survived SIGKILL for "
                                f"{KILL_WAIT_SECONDS:.0f}s") from None
        except ExitStatusUnknown:
            return

    async def remove(self) -> None:
        """Remove the task's container (every one labelled with the task, if an earlier agent left two)."""
        ids = {self._container_id} if self._container_id else set()
        ids |= {str(c["Id"]) for c in await self._executor.task_containers(self._task_id)}
        for container_id in ids:
            await self._executor.remove_container(container_id)
        if self._executor.overlay is not None:
            with contextlib.suppress(OverlayError):
                await self._executor.overlay.release(self._task_id)
        await self._executor.remove_files(self._task_id)

    async def probe(self, command: Sequence[str], timeout_seconds: float) -> ProbeResult:
        """Docker's next health check result not yet handed over (the container was created with the check, so
        Docker runs it; `command` is that same check). Results are handed over one at a time and in order, so
        the worker's monitor, whose rules are Docker's, counts exactly the runs Docker made; when it falls
        behind it catches up, as each call returns at once while older results wait. Waits up to the interval
        plus the timeout (and a little) for a result, else reports a failure."""
        check = health_check_of(self._task)
        patience = (check.interval if check else 0.0) + timeout_seconds + HEALTH_RESULT_SLACK_SECONDS
        deadline = time.monotonic() + patience
        while True:
            try:
                state = (await _in_thread(self._api.inspect_container, self._container_id))["State"]
            except (docker.errors.APIError, ExecutorError) as exc:
                return ProbeResult(exit_code=-1, output=f"cannot read the container's health: {exc}")
            if not state.get("Running"):
                return ProbeResult(exit_code=-1, output="the container is not running")
            health = state.get("Health")
            if not health:
                return ProbeResult(exit_code=-1, output="Docker runs no health check for this container")
            for entry in health.get("Log") or []:
                ended_at = _timestamp(entry.get("End"))
                if ended_at > self._health_seen_until:
                    self._health_seen_until = ended_at
                    output = str(entry.get("Output") or "")
                    return ProbeResult(exit_code=int(entry.get("ExitCode", -1)), output=output[:MAX_PROBE_OUTPUT])
            if time.monotonic() > deadline:
                return ProbeResult(exit_code=-1, output=f"no health check result from Docker in {patience:g}s")
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def health_status(self) -> HealthStatus | None:
        """Docker's own health status of the container (None: it has no health check)."""
        state = (await _in_thread(self._api.inspect_container, self._container_id))["State"]
        status = (state.get("Health") or {}).get("Status")
        return HealthStatus(status) if status in {s.value for s in HealthStatus} else None

    async def backend_ports(self) -> list[Doc]:
        if not published_ports(self._task):
            return []
        inspected = await _in_thread(self._api.inspect_container, self._container_id)
        return bound_ports(self._task, inspected)

    def exit_cause(self) -> str:
        """"out of memory: …" when the kernel killed the container's process at its memory limit."""
        return self._exit_cause

    def handle(self) -> Doc:
        return {"Executor": EXECUTOR_NAME, "ContainerID": self._container_id}

    def pid(self) -> int:
        return self._pid

    # -- helpers --

    def adopt(self, inspected: Doc) -> None:
        """Take over a running container (from `inspect_container`); health results it already has are old."""
        self._container_id = str(inspected["Id"])
        self._pid = int(inspected["State"].get("Pid") or 0)
        self._adopted = True
        log_entries = ((inspected["State"].get("Health") or {}).get("Log")) or []
        self._health_seen_until = max((_timestamp(entry.get("End")) for entry in log_entries), default=0.0)

    async def _signal(self, signal_name: str) -> bool:
        """Send a signal to the container; False when it is not running (nothing to stop)."""
        try:
            await _in_thread(self._api.kill, self._container_id, signal=signal_name)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "Container … is not running"
                return False
            if exc.is_client_error() and signal_name not in ("SIGKILL", DEFAULT_STOP_SIGNAL):
                log.warning("task %s: stop signal %r refused (%s), using SIGTERM", self._task_id, signal_name,
                            _describe_api_error(exc))
                return await self._signal(DEFAULT_STOP_SIGNAL)
            raise ExecutorError(f"signalling container {self._container_id[:12]}: {_describe_api_error(exc)}") \
                from exc
        return True


def _timestamp(text: object) -> float:
    try:
        return from_rfc3339(str(text))
    except InvalidArgument:
        return 0.0
