"""`shoal playground up|ls|down`: a local cluster of daemons on loopback addresses (thin wrappers)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from shoal.cli.common import CliContext
from shoal.cli.format import render_table

PLAYGROUND_HEADER = ("NAME", "ROLE", "ADDRESS", "PID", "SOCKET")


def register(commands: Any) -> None:
    playground = commands.add_parser("playground", help="Run a local cluster of shoal daemons on this machine")
    playground.set_defaults(handler=None)
    sub = playground.add_subparsers(title="commands", metavar="COMMAND")

    up = sub.add_parser("up", help="Start a local cluster")
    up.add_argument("--managers", type=_positive_int, default=1, metavar="M", help="Number of managers (default 1)")
    up.add_argument("--workers", type=_non_negative_int, default=2, metavar="W", help="Number of workers (default 2)")
    up.add_argument("--executor", choices=["process", "docker", "sim"], default="process",
                    help="Run tasks as host processes (default), as containers on this machine's Docker Engine, "
                         "or simulated (nothing runs; for trying scale)")
    up.add_argument("--sim-nodes", type=_non_negative_int, default=0, metavar="N",
                    help="Also run N simulated nodes (real sessions, simulated tasks) in one more process")
    up.add_argument("--routing-mesh", choices=["auto", "kernel", "userspace"], default="auto",
                    help="The routing mesh's data path (default auto: nftables where usable, else userspace)")
    up.add_argument("--subnet", type=_loopback_prefix, default="127.0.0", metavar="127.X.Y",
                    help="Loopback block for the nodes' addresses (default 127.0.0: nodes on .2, .3, …)")
    up.add_argument("--metrics", action="store_true",
                    help="Every node serves Prometheus metrics on its own address, port 9323")
    up.set_defaults(handler=run_up)

    ls = sub.add_parser("ls", aliases=["list"], help="List the playground's nodes")
    ls.add_argument("--json", action="store_true", help="Print the nodes as JSON")
    ls.set_defaults(handler=run_ls)

    down = sub.add_parser("down", help="Stop the local cluster and remove its state")
    down.set_defaults(handler=run_down)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be a non-negative integer")
    return int(text)


def _loopback_prefix(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"invalid subnet {text!r}: give the first three numbers of a loopback "
                                         "address, e.g. 127.0.5")
    return text


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a cluster needs at least one manager")
    return value


def playground_table(nodes: Sequence[Any], with_state: bool = False) -> str:
    header = PLAYGROUND_HEADER + (("STATE",) if with_state else ())
    rows = []
    for node in nodes:
        row = [str(node.name), str(node.role), str(node.address), str(node.pid or ""), str(node.socket)]
        if with_state:
            row.append("running" if getattr(node, "alive", True) else "stopped")
        rows.append(row)
    return render_table(header, rows)


def node_json(node: Any) -> dict[str, Any]:
    out = {"name": node.name, "role": node.role, "address": node.address, "pid": node.pid,
           "socket": str(node.socket), "state_dir": str(node.state_dir)}
    if getattr(node, "metrics_url", ""):
        out["metrics"] = node.metrics_url
    return out


def print_metrics(ctx: CliContext, nodes: Sequence[Any]) -> None:
    urls = [(node.name, node.metrics_url) for node in nodes if getattr(node, "metrics_url", "")]
    if urls:
        ctx.print()
        ctx.print("Prometheus metrics (plain HTTP, no authentication):")
        for name, url in urls:
            ctx.print(f"    {name}: {url}")


def run_up(ctx: CliContext, args: argparse.Namespace) -> int:
    from shoal import playground

    nodes = playground.up(managers=args.managers, workers=args.workers, progress=ctx.print, subnet=args.subnet,
                          executor=args.executor, routing_mesh=args.routing_mesh, sim_nodes=args.sim_nodes,
                          metrics=args.metrics)
    ctx.out.write(playground_table(nodes))
    print_metrics(ctx, nodes)
    managers = [n for n in nodes if n.role == "manager"]
    if managers:
        ctx.print()
        ctx.print("shoal now talks to the first manager by default; to name it explicitly (scripts, other tools):")
        ctx.print(f"    export SHOAL_HOST=unix://{managers[0].socket}")
    return 0


def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    from shoal import playground

    nodes = playground.status()
    if args.json:
        ctx.print(json.dumps([node_json(n) for n in nodes], indent=4))
    else:
        ctx.out.write(playground_table(nodes, with_state=True))
        print_metrics(ctx, nodes)
    return 0


def run_down(ctx: CliContext, args: argparse.Namespace) -> int:
    from shoal import playground

    playground.down(progress=ctx.print)
    return 0
