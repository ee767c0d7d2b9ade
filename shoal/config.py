"""Where a node keeps its state and how its daemon is reached."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal.task_networks import DEFAULT_DATA_PATH_PORT

DEFAULT_STATE_DIR = Path(os.environ.get("SHOAL_STATE_DIR", "/var/lib/shoal"))
DEFAULT_SOCKET = Path(os.environ.get("SHOAL_SOCKET", "/run/shoal/shoal.sock"))
DEFAULT_PORT = 2377
PLAYGROUND_DIR = Path(os.environ.get("SHOAL_PLAYGROUND_DIR", "/tmp/shoal-playground"))


@dataclass
class EtcdEndpoints:
    """An external etcd cluster the managers use instead of running their own members."""

    urls: list[str]
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass
class DaemonConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    socket: Path = DEFAULT_SOCKET
    # The node's name (HOSTNAME in `node ls`); defaults to the machine's hostname.
    hostname: str | None = None
    executor: str = "process"
    external_etcd: EtcdEndpoints | None = None
    log_level: str = "info"
    # Engine labels reported in the node description (constraint `engine.labels.X`).
    engine_labels: dict[str, str] = field(default_factory=dict)
    # The routing mesh's data path: "auto" (nftables where usable, else userspace), "kernel" or "userspace".
    routing_mesh: str = "auto"
    # Where the routing mesh listens for published ports: every address, as Docker does, unless given one
    # (the playground gives each node its own loopback address).
    publish_addr: str = "0.0.0.0"
    # Processes the userspace mesh forwards in (the agent and helpers on the same ports); None: one per core.
    mesh_workers: int | None = None
    # The port of the node's DNS server for service discovery, on its advertise address; 0: none.
    dns_port: int = 53
    # The UDP port this node takes overlay (VXLAN) traffic on, on its advertise address (shoal.overlay).
    data_path_port: int = DEFAULT_DATA_PATH_PORT
    # Where Prometheus metrics are served (plain HTTP, `shoal.metrics`): (IP, port), or None for nowhere.
    metrics_addr: tuple[str, int] | None = None
