"""`shoal network create|ls|inspect|rm`, as docker's, for swarm (overlay) networks."""

from __future__ import annotations

import argparse
from typing import Any

from shoal.api.client import filters_param
from shoal.cli.common import (
    CliContext,
    CliError,
    add_inspect_format_flag,
    add_list_format_flag,
    inspect_objects,
    parse_filters,
    remove_objects,
)
from shoal.cli.format import NETWORK_LIST, network_rows
from shoal.cli.formatter import render_list
from shoal.cli.spec import labels_map
from shoal.types import Doc


def register(commands: Any) -> None:
    parser = commands.add_parser("network", help="Manage swarm networks")
    parser.set_defaults(handler=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    create = sub.add_parser("create", help="Create a network")
    create.add_argument("-d", "--driver", default="overlay", help='Driver to manage the Network (default "overlay")')
    create.add_argument("--subnet", help='Subnet in CIDR format, e.g. "10.0.9.0/24"')
    create.add_argument("--gateway", help="IPv4 Gateway for the subnet")
    create.add_argument("--attachable", action="store_true", help="Enable manual container attachment")
    create.add_argument("--internal", action="store_true", help="Restrict external access to the network")
    create.add_argument("--label", action="append", help="Set metadata on a network")
    create.add_argument("-o", "--opt", action="append", metavar="K=V", help="Set driver specific options")
    create.add_argument("name", metavar="NETWORK")
    create.set_defaults(handler=run_create)

    ls = sub.add_parser("ls", aliases=["list"], help="List networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="Only display network IDs")
    ls.add_argument("--no-trunc", action="store_true", help="Do not truncate the output")
    ls.add_argument("-f", "--filter", action="append", help="Provide filter values (e.g. 'driver=overlay')")
    add_list_format_flag(ls)
    ls.set_defaults(handler=run_ls)

    inspect = sub.add_parser("inspect", help="Display detailed information on one or more networks")
    add_inspect_format_flag(inspect)
    inspect.add_argument("refs", nargs="+", metavar="NETWORK")
    inspect.set_defaults(handler=run_inspect)

    rm = sub.add_parser("rm", aliases=["remove"], help="Remove one or more networks")
    rm.add_argument("refs", nargs="+", metavar="NETWORK")
    rm.set_defaults(handler=run_rm)


def create_body(args: argparse.Namespace) -> Doc:
    """The body docker's `network create` sends, for the flags shoal knows."""
    if args.gateway and not args.subnet:
        raise CliError("every ip-range or gateway must have a corresponding subnet")
    ipam: Doc = {"Driver": "default", "Config": []}
    if args.subnet:
        config = {"Subnet": args.subnet}
        if args.gateway:
            config["Gateway"] = args.gateway
        ipam["Config"] = [config]
    return {"Name": args.name, "Driver": args.driver, "Scope": "", "EnableIPv6": False, "IPAM": ipam,
            "Internal": args.internal, "Attachable": args.attachable, "Ingress": False, "ConfigOnly": False,
            "ConfigFrom": None, "Options": labels_map(args.opt, "-o, --opt"), "Labels": labels_map(args.label)}


def run_create(ctx: CliContext, args: argparse.Namespace) -> int:
    answer = ctx.client().post("/networks/create", json=create_body(args))
    ctx.print(str(answer["Id"]))
    return 0


def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    params = {"filters": filters_param(filters)} if filters else None
    networks: list[Doc] = ctx.client().get("/networks", params=params) or []
    ctx.out.write(render_list(args.format, NETWORK_LIST, network_rows(networks, args.no_trunc), args.quiet))
    return 0


def run_inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    return inspect_objects(ctx, args.refs, lambda ref: client.get(f"/networks/{ref}"), None, args.format or "")


def run_rm(ctx: CliContext, args: argparse.Namespace) -> int:
    return remove_objects(ctx, args.refs, "/networks")
