"""`shoal daemon`: run this machine's shoal daemon in the foreground."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from typing import Any

from shoal import config
from shoal.cli.common import CliContext, CliError
from shoal.task_networks import DEFAULT_DATA_PATH_PORT


def register(commands: Any) -> None:
    daemon = commands.add_parser("daemon", help="Run the shoal daemon (shoald) in the foreground")
    daemon.add_argument("--state-dir", default=None, help=f"State directory (default {config.DEFAULT_STATE_DIR})")
    daemon.add_argument("--socket", default=None, help=f"API socket path (default {config.DEFAULT_SOCKET})")
    daemon.add_argument("--hostname", help="Node name shown by `node ls` (default: this machine's hostname)")
    daemon.add_argument("--executor", choices=("process", "docker", "sim"), default="process",
                        help="How tasks run: host processes, docker containers, or simulated (sim: nothing "
                             "runs, everything else is real; for benchmarks) (default process)")
    daemon.add_argument("--routing-mesh", choices=("auto", "kernel", "userspace"), default="auto",
                        help="The routing mesh's data path: nftables DNAT rules (kernel), an asyncio proxy "
                             "(userspace), or auto: kernel where nftables is usable, else userspace")
    daemon.add_argument("--mesh-workers", type=int, default=None, metavar="N",
                        help="Processes the userspace routing mesh forwards in (default: one per core)")
    daemon.add_argument("--publish-addr", default="0.0.0.0", metavar="IP",
                        help="Address published ports are served on (default 0.0.0.0: every address)")
    daemon.add_argument("--dns-port", type=int, default=53, metavar="PORT",
                        help="Port of the node's DNS server for service discovery, on its advertise address "
                             "(default 53; 0: none)")
    daemon.add_argument("--data-path-port", type=int, default=DEFAULT_DATA_PATH_PORT, metavar="PORT",
                        help="UDP port of the node's overlay (VXLAN) traffic, on its advertise address "
                             f"(default {DEFAULT_DATA_PATH_PORT}, Docker's; nodes sharing a host need one each)")
    daemon.add_argument("--metrics-addr", metavar="IP:PORT",
                        help="Serve Prometheus metrics at http://IP:PORT/metrics: plain HTTP, no authentication, "
                             "so give a loopback or management address (default: not served)")
    daemon.add_argument("--etcd-endpoints", metavar="URL,URL", help="Use an external etcd cluster")
    daemon.add_argument("--etcd-cacert", metavar="FILE", help="CA certificate of the external etcd")
    daemon.add_argument("--etcd-cert", metavar="FILE", help="Client certificate for the external etcd")
    daemon.add_argument("--etcd-key", metavar="FILE", help="Client key for the external etcd")
    daemon.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="Log level (default info)")
    daemon.set_defaults(handler=run_daemon)


def daemon_config(args: argparse.Namespace) -> config.DaemonConfig:
    external = None
    if args.etcd_endpoints:
        urls = [u.strip() for u in args.etcd_endpoints.split(",") if u.strip()]
        if not urls:
            raise CliError("--etcd-endpoints needs at least one URL")
        external = config.EtcdEndpoints(urls=urls, cacert=args.etcd_cacert, cert=args.etcd_cert, key=args.etcd_key)
    elif args.etcd_cacert or args.etcd_cert or args.etcd_key:
        raise CliError("--etcd-cacert/--etcd-cert/--etcd-key need --etcd-endpoints")
    if args.mesh_workers is not None and args.mesh_workers < 1:
        raise CliError(f"--mesh-workers must be 1 or more (got {args.mesh_workers})")
    if not 0 <= args.dns_port <= 65535:
        raise CliError(f"--dns-port must be a port number, or 0 for none (got {args.dns_port})")
    if not 1 <= args.data_path_port <= 65535:
        raise CliError(f"--data-path-port must be a port number (got {args.data_path_port})")
    metrics_addr = metrics_address(args.metrics_addr) if args.metrics_addr is not None else None
    return config.DaemonConfig(
        state_dir=Path(args.state_dir) if args.state_dir else config.DEFAULT_STATE_DIR,
        socket=Path(args.socket) if args.socket else config.DEFAULT_SOCKET,
        hostname=args.hostname,
        executor=args.executor,
        routing_mesh=args.routing_mesh,
        publish_addr=args.publish_addr,
        mesh_workers=args.mesh_workers,
        dns_port=args.dns_port,
        data_path_port=args.data_path_port,
        metrics_addr=metrics_addr,
        external_etcd=external,
        log_level=args.log_level,
    )


def metrics_address(text: str) -> tuple[str, int]:
    """`--metrics-addr`: "IP:PORT", or "[IPv6]:PORT"."""
    host, sep, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        if not sep or (":" in host and not bracketed):
            raise ValueError
        ipaddress.ip_address(host)
    except ValueError:
        raise CliError(f"invalid --metrics-addr {text!r}: give an IP address and a port, e.g. 127.0.0.1:9323 "
                       "(an IPv6 address in brackets: [::1]:9323)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CliError(f"invalid --metrics-addr {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def run_daemon(ctx: CliContext, args: argparse.Namespace) -> int:
    cfg = daemon_config(args)
    # The daemon forks only to exec programs (nft, ip), never to use gRPC in the child: gRPC's fork handlers
    # would only log a line for each of them. Read when gRPC loads, so set before the store's client is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from shoal import daemon

    return int(daemon.run(cfg) or 0)
