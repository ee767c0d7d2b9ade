"""`shoal node ls|inspect|update|rm|promote|demote|ps`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shoal.api.client import ApiError, filters_param
from shoal.cli.common import (
    CliContext,
    CliError,
    add_inspect_format_flag,
    add_list_format_flag,
    inspect_objects,
    node_name_resolver,
    node_reference,
    parse_filters,
    self_node_id,
)
from shoal.cli.format import NODE_LIST, TASK_LIST, bytes_size, capitalize, go_time, node_rows, task_rows
from shoal.cli.formatter import QUIET_FORMAT, TABLE, inspect_mode, list_template, render_list
from shoal.cli.rebalance import rebalance_all
from shoal.spec import AVAILABILITIES, ROLES
from shoal.types import Doc


def register(commands: Any) -> None:
    node = commands.add_parser("node", help="Manage swarm nodes")
    node.set_defaults(handler=None)
    sub = node.add_subparsers(title="commands", metavar="COMMAND")

    ls = sub.add_parser("ls", aliases=["list"], help="List nodes in the swarm")
    ls.add_argument("-q", "--quiet", action="store_true", help="Only display IDs")
    add_list_format_flag(ls)
    ls.add_argument("-f", "--filter", action="append", metavar="K=V", help="Filter output based on conditions")
    ls.set_defaults(handler=run_ls)

    inspect = sub.add_parser("inspect", help="Display detailed information on one or more nodes")
    inspect.add_argument("--pretty", action="store_true", help="Print the information in a human friendly format")
    add_inspect_format_flag(inspect)
    inspect.add_argument("nodes", nargs="+", metavar="NODE", help='Node ID, name, or "self"')
    inspect.set_defaults(handler=run_inspect)

    update = sub.add_parser("update", help="Update a node")
    update.add_argument("--availability", choices=AVAILABILITIES,
                        help='Availability of the node ("active", "pause", "drain")')
    update.add_argument("--role", choices=ROLES, help='Role of the node ("worker", "manager")')
    update.add_argument("--label-add", action="append", metavar="K=V", help="Add or update a node label")
    update.add_argument("--label-rm", action="append", metavar="K", help="Remove a node label if exists")
    update.add_argument("--rebalance", action="store_true",
                        help="Then move tasks of replicated services back to an even spread (shoal only)")
    update.add_argument("node", metavar="NODE")
    update.set_defaults(handler=run_update)

    rm = sub.add_parser("rm", aliases=["remove"], help="Remove one or more nodes from the swarm")
    rm.add_argument("-f", "--force", action="store_true", help="Force remove a node from the swarm")
    rm.add_argument("nodes", nargs="+", metavar="NODE")
    rm.set_defaults(handler=run_rm)

    promote = sub.add_parser("promote", help="Promote one or more nodes to manager in the swarm")
    promote.add_argument("nodes", nargs="+", metavar="NODE")
    promote.set_defaults(handler=run_promote)

    demote = sub.add_parser("demote", help="Demote one or more nodes from manager in the swarm")
    demote.add_argument("nodes", nargs="+", metavar="NODE")
    demote.set_defaults(handler=run_demote)

    ps = sub.add_parser("ps", help="List tasks running on one or more nodes, defaults to current node")
    ps.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    ps.add_argument("-q", "--quiet", action="store_true", help="Only display task IDs")
    ps.add_argument("-f", "--filter", action="append", metavar="K=V", help="Filter output based on conditions")
    add_list_format_flag(ps)
    ps.add_argument("nodes", nargs="*", metavar="NODE")
    ps.set_defaults(handler=run_ps)


def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    filters = parse_filters(args.filter)
    params = {"filters": filters_param(filters)} if filters else None
    nodes: list[Doc] = client.get("/nodes", params=params) or []
    swarm: Doc = {}
    if nodes and (not args.quiet or args.format):
        swarm = (client.get("/info") or {}).get("Swarm") or {}
    rows = node_rows(nodes, str(swarm.get("NodeID") or ""), (swarm.get("Cluster") or {}).get("TLSInfo"))
    ctx.out.write(render_list(args.format, NODE_LIST, rows, args.quiet))
    return 0


def run_inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    pretty, template = inspect_mode(args.pretty, args.format)
    return inspect_objects(ctx, args.nodes, lambda ref: client.get(f"/nodes/{node_reference(ctx, ref)}"),
                           node_pretty if pretty else None, template)


def node_pretty(node: Doc) -> str:
    """docker's nodeInspectPrettyTemplate."""
    spec = node.get("Spec") or {}
    description = node.get("Description") or {}
    status = node.get("Status") or {}
    lines = [f"ID:\t\t\t{node['ID']}"]
    if spec.get("Name"):
        lines.append(f"Name:\t\t\t{spec['Name']}")
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" - {k}={v}" if v else f" - {k}" for k, v in sorted(spec["Labels"].items())]
    lines.append(f"Hostname:              \t{description.get('Hostname', '')}")
    lines.append(f"Joined at:             \t{go_time(str(node.get('CreatedAt') or ''))}")
    lines.append("Status:")
    lines.append(f" State:\t\t\t{capitalize(str(status.get('State') or ''))}")
    if status.get("Message"):
        lines.append(f" Message:              \t{capitalize(str(status['Message']))}")
    lines.append(f" Availability:         \t{capitalize(str(spec.get('Availability') or ''))}")
    if status.get("Addr"):
        lines.append(f" Address:\t\t{status['Addr']}")
    manager = node.get("ManagerStatus")
    if manager:
        lines.append("Manager Status:")
        lines.append(f" Address:\t\t{manager.get('Addr', '')}")
        lines.append(f" Raft Status:\t\t{capitalize(str(manager.get('Reachability') or ''))}")
        lines.append(f" Leader:\t\t{'Yes' if manager.get('Leader') else 'No'}")
    platform = description.get("Platform") or {}
    resources = description.get("Resources") or {}
    engine = description.get("Engine") or {}
    lines.append("Platform:")
    lines.append(f" Operating System:\t{platform.get('OS', '')}")
    lines.append(f" Architecture:\t\t{platform.get('Architecture', '')}")
    lines.append("Resources:")
    lines.append(f" CPUs:\t\t\t{int(resources.get('NanoCPUs') or 0) // 1_000_000_000}")
    memory = int(resources.get("MemoryBytes") or 0)
    lines.append(f" Memory:\t\t{bytes_size(memory) if memory else ''}")
    plugins: dict[str, list[str]] = {}
    for plugin in engine.get("Plugins") or []:
        plugins.setdefault(plugin.get("Type", ""), []).append(plugin.get("Name", ""))
    if plugins:
        lines.append("Plugins:")
        lines += [f" {kind}:\t\t{', '.join(names)}" for kind, names in sorted(plugins.items())]
    lines.append(f"Engine Version:\t\t{engine.get('EngineVersion', '')}")
    if engine.get("Labels"):
        lines.append("Engine Labels:")
        lines += [f" - {k}={v}" if v else f" - {k}" for k, v in sorted(engine["Labels"].items())]
    tls = description.get("TLSInfo") or {}
    if any(tls.values()):
        lines.append("TLS Info:")
        lines.append(" TrustRoot:")
        lines.append(str(tls.get("TrustRoot") or ""))
        lines.append(f" Issuer Subject:\t{tls.get('CertIssuerSubject') or ''}")
        lines.append(f" Issuer Public Key:\t{tls.get('CertIssuerPublicKey') or ''}")
    return "\n".join(lines)


def _update_nodes(ctx: CliContext, refs: list[str], change: Callable[[str, Doc], bool],
                  success: Callable[[str], None]) -> None:
    """GET each node, let `change` edit its spec (False: nothing to do), POST the spec with its version."""
    client = ctx.client()
    for ref in refs:
        node = client.get(f"/nodes/{ref}")
        spec = node["Spec"]
        if not change(ref, spec):
            continue
        client.post(f"/nodes/{node['ID']}/update", params={"version": node["Version"]["Index"]}, json=spec)
        success(ref)


def run_update(ctx: CliContext, args: argparse.Namespace) -> int:
    def change(ref: str, spec: Doc) -> bool:
        if args.role:
            spec["Role"] = args.role
        if args.availability:
            spec["Availability"] = args.availability
        labels = spec.get("Labels") or {}
        for value in args.label_add or []:
            key, _, val = value.partition("=")
            if not key:
                raise CliError(f'invalid argument "{value}" for "--label-add" flag: label key is empty')
            labels[key] = val
        for key in args.label_rm or []:
            if key not in labels:
                raise CliError(f"key {key} doesn't exist in node's labels")
            del labels[key]
        spec["Labels"] = labels
        return True

    _update_nodes(ctx, [args.node], change, ctx.print)
    if args.rebalance and rebalance_all(ctx, ctx.client()):
        return 1
    return 0


def run_promote(ctx: CliContext, args: argparse.Namespace) -> int:
    def change(ref: str, spec: Doc) -> bool:
        if spec.get("Role") == "manager":
            ctx.print(f"Node {ref} is already a manager.")
            return False
        spec["Role"] = "manager"
        return True

    _update_nodes(ctx, args.nodes, change, lambda ref: ctx.print(f"Node {ref} promoted to a manager in the swarm."))
    return 0


def run_demote(ctx: CliContext, args: argparse.Namespace) -> int:
    def change(ref: str, spec: Doc) -> bool:
        if spec.get("Role") == "worker":
            ctx.print(f"Node {ref} is already a worker.")
            return False
        spec["Role"] = "worker"
        return True

    _update_nodes(ctx, args.nodes, change, lambda ref: ctx.print(f"Manager {ref} demoted in the swarm."))
    return 0


def run_rm(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    errors = []
    for ref in args.nodes:
        try:
            client.delete(f"/nodes/{ref}", params={"force": "1"} if args.force else None)
        except ApiError as exc:
            errors.append(str(exc))
            continue
        ctx.print(ref)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def run_ps(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    refs = args.nodes or ["self"]
    filters = parse_filters(args.filter)
    tasks: list[Doc] = []
    errors: list[str] = []
    for ref in refs:
        try:
            node = client.get(f"/nodes/{node_reference(ctx, ref)}")
        except ApiError as exc:
            errors.append(str(exc))
            continue
        query = dict(filters) | {"node": [node["ID"]]}
        tasks += client.get("/tasks", params={"filters": filters_param(query)}) or []
    print_tasks(ctx, tasks, quiet=args.quiet, no_trunc=args.no_trunc, source=args.format)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def print_tasks(ctx: CliContext, tasks: list[Doc], quiet: bool, no_trunc: bool, source: str | None = None) -> None:
    """The tasks of `service ps`, `node ps` and `stack ps` as a table or as `--format source` says (service and
    node names looked up once each)."""
    client = ctx.client()
    service_names: dict[str, str] = {}
    for service_id in dict.fromkeys(t.get("ServiceID", "") for t in tasks):
        try:
            service_names[service_id] = str(client.get(f"/services/{service_id}")["Spec"].get("Name") or service_id)
        except ApiError:
            service_names[service_id] = service_id
    template = list_template(source, TASK_LIST, quiet)
    node_names: dict[str, str] = {}
    if template != QUIET_FORMAT:
        resolve = node_name_resolver(ctx)
        node_names = {node_id: resolve(node_id) for node_id in dict.fromkeys(t.get("NodeID", "") for t in tasks)}
    rows = task_rows(tasks, service_names, node_names, ctx.now(), no_trunc, indent=template.startswith(TABLE))
    ctx.out.write(render_list(template, TASK_LIST, rows))


__all__ = ["register", "node_pretty", "print_tasks", "self_node_id"]
