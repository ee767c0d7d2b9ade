"""`shoal service create|ls|ps|inspect|rm|scale|logs|update|rollback`."""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import Any
from urllib.parse import unquote_plus

from shoal.api.client import STDERR, ApiError, filters_param
from shoal.cli.common import (
    CliContext,
    CliError,
    add_inspect_format_flag,
    add_list_format_flag,
    node_name_resolver,
    parse_filters,
    print_inspected,
    self_node_id,
)
from shoal.cli.format import (
    SERVICE_LIST,
    bytes_size,
    human_duration,
    render_table,
    service_rows,
    truncate_id,
)
from shoal.cli.formatter import inspect_mode, render_list
from shoal.cli.gotemplate import go_float
from shoal.cli.node import print_tasks
from shoal.cli.progress import ProgressFailed, wait_on_service
from shoal.cli.rebalance import run_rebalance
from shoal.cli.spec import add_create_flags, add_update_flags, apply_service_update, build_service_spec
from shoal.timefmt import format_duration, from_rfc3339
from shoal.types import Doc


def register(commands: Any) -> None:
    service = commands.add_parser("service", help="Manage swarm services")
    service.set_defaults(handler=None)
    sub = service.add_subparsers(title="commands", metavar="COMMAND")

    create = sub.add_parser("create", help="Create a new service")
    add_create_flags(create)
    create.add_argument("--dry-run", action="store_true",
                        help="Print where each task would go, or why it could not be placed; create nothing")
    create.set_defaults(handler=run_create)

    ls = sub.add_parser("ls", aliases=["list"], help="List services")
    ls.add_argument("-q", "--quiet", action="store_true", help="Only display IDs")
    ls.add_argument("-f", "--filter", action="append", metavar="K=V", help="Filter output based on conditions")
    add_list_format_flag(ls)
    ls.set_defaults(handler=run_ls)

    ps = sub.add_parser("ps", help="List the tasks of one or more services")
    ps.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    ps.add_argument("-q", "--quiet", action="store_true", help="Only display task IDs")
    ps.add_argument("-f", "--filter", action="append", metavar="K=V", help="Filter output based on conditions")
    add_list_format_flag(ps)
    ps.add_argument("services", nargs="+", metavar="SERVICE")
    ps.set_defaults(handler=run_ps)

    inspect = sub.add_parser("inspect", help="Display detailed information on one or more services")
    inspect.add_argument("--pretty", action="store_true", help="Print the information in a human friendly format")
    add_inspect_format_flag(inspect)
    inspect.add_argument("services", nargs="+", metavar="SERVICE")
    inspect.set_defaults(handler=run_inspect)

    rm = sub.add_parser("rm", aliases=["remove"], help="Remove one or more services")
    rm.add_argument("services", nargs="+", metavar="SERVICE")
    rm.set_defaults(handler=run_rm)

    scale = sub.add_parser("scale", help="Scale one or multiple replicated services")
    scale.add_argument("-d", "--detach", action="store_true",
                       help="Exit immediately instead of waiting for the service to converge")
    scale.add_argument("scales", nargs="+", metavar="SERVICE=REPLICAS")
    scale.set_defaults(handler=run_scale)

    logs = sub.add_parser("logs", help="Fetch the logs of a service or task")
    logs.add_argument("-f", "--follow", action="store_true", help="Follow log output")
    logs.add_argument("-n", "--tail", default="all", help="Number of lines to show from the end of the logs")
    logs.add_argument("-t", "--timestamps", action="store_true", help="Show timestamps")
    logs.add_argument("--since", help="Show logs since timestamp or relative duration")
    logs.add_argument("--raw", action="store_true", help="Do not neatly format logs")
    logs.add_argument("--no-task-ids", action="store_true", help="Do not include task IDs in output")
    logs.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    logs.add_argument("--no-resolve", action="store_true", help="Do not map IDs to Names in output")
    logs.add_argument("--details", action="store_true", help="Show extra details provided to logs")
    logs.add_argument("target", metavar="SERVICE|TASK")
    logs.set_defaults(handler=run_logs)

    update = sub.add_parser("update", help="Update a service")
    add_update_flags(update)
    update.add_argument("--rollback", action="store_true", help="Rollback to previous specification")
    update.add_argument("--dry-run", action="store_true",
                        help="Print which tasks the update would replace, batch by batch, and where; change nothing")
    update.set_defaults(handler=run_update)

    rollback = sub.add_parser("rollback", help="Revert changes to a service's configuration")
    rollback.add_argument("-d", "--detach", action="store_true",
                          help="Exit immediately instead of waiting for the service to converge")
    rollback.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    rollback.add_argument("service", metavar="SERVICE")
    rollback.set_defaults(handler=run_rollback)

    rebalance = sub.add_parser("rebalance", help="Move tasks back to an even spread over the nodes (shoal only)")
    rebalance.add_argument("-d", "--detach", action="store_true",
                           help="Exit once the moves are decided instead of waiting for them")
    rebalance.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    rebalance.add_argument("service", metavar="SERVICE")
    rebalance.set_defaults(handler=run_rebalance)


def wait_for_service(ctx: CliContext, service_ref: str, quiet: bool, fail_on_rollback: bool = False) -> None:
    try:
        wait_on_service(ctx.client(), service_ref, ctx.out, quiet=quiet, tty=ctx.isatty(),
                        fail_on_rollback=fail_on_rollback)
    except ProgressFailed as exc:
        raise CliError(str(exc)) from exc


# ---- create / update / rollback / scale -----------------------------------------------------------------

def run_create(ctx: CliContext, args: argparse.Namespace) -> int:
    spec = build_service_spec(args)  # validates every flag before anything is sent
    if args.dry_run:
        plan = ctx.client().post("/services/create", params={"dryRun": "1"}, json=spec) or {}
        ctx.print(dry_run_text(plan.get("DryRun") or {}, "create"))
        return 0
    response = ctx.client().post("/services/create", json=spec) or {}
    ctx.print_warnings(response)
    service_id = str(response.get("ID") or "")
    ctx.print(service_id)
    if not args.detach:
        wait_for_service(ctx, service_id, args.quiet)
    return 0


def run_update(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.rollback:
        _refuse_flags_beside_rollback(args)
        return run_rollback(ctx, args)
    client = ctx.client()
    service = client.get(f"/services/{args.service}")
    if args.network_rm:
        # The spec names networks by ID: look the names up, as the docker CLI does.
        args.network_rm = [*args.network_rm, *(_network_id(client, ref) for ref in args.network_rm)]
    spec = apply_service_update(service["Spec"], args)
    if args.dry_run:
        plan = client.post(f"/services/{service['ID']}/update",
                           params={"version": service["Version"]["Index"], "dryRun": "1"}, json=spec) or {}
        ctx.print(dry_run_text(plan.get("DryRun") or {}, "update"))
        return 0
    response = client.post(f"/services/{service['ID']}/update",
                           params={"version": service["Version"]["Index"]}, json=spec)
    ctx.print_warnings(response)
    ctx.print(args.service)
    if not args.detach:
        wait_for_service(ctx, args.service, args.quiet, fail_on_rollback=True)
    return 0


def dry_run_text(plan: Doc, action: str) -> str:
    """A dry run's batches as a table: each task started (where, replacing what) or stopped, or why it waits."""
    name = str(plan.get("Name") or "")
    rows = []
    for number, batch in enumerate(plan.get("Batches") or [], 1):
        for entry in batch.get("Tasks") or []:
            replaces = ""
            if entry.get("Replaces"):
                replaces = truncate_id(str(entry["Replaces"])) + (f" on {entry['ReplacesNode']}"
                                                                 if entry.get("ReplacesNode") else "")
            node = str(entry.get("Node") or entry.get("NodeID") or "")
            rows.append((str(number), "start", f"{name}.{entry.get('Slot') or ''}".rstrip("."), node or "-",
                         replaces, str(entry.get("Error") or "")))
        for entry in batch.get("Stops") or []:
            rows.append((str(number), "stop", f"{name}.{entry.get('Slot') or ''}".rstrip("."),
                         str(entry.get("Node") or entry.get("NodeID") or ""), truncate_id(str(entry["TaskID"])), ""))
    batches = len(plan.get("Batches") or [])
    lines = [f"Dry run: nothing was changed. The {action} of service {name} would make "
             f"{batches} batch{'es' if batches != 1 else ''}" + (":" if rows else ".")]
    if rows:
        lines.append(render_table(("BATCH", "ACTION", "TASK", "NODE", "REPLACES", "ERROR"), rows).rstrip("\n"))
    if plan.get("Truncated"):
        lines.append("... and more: the plan was cut short (too many batches to work out)")
    lines += [str(note) for note in plan.get("Notes") or []]
    return "\n".join(lines)


def _refuse_flags_beside_rollback(args: argparse.Namespace) -> None:
    """`update --rollback` is `service rollback`: any flag that would change the spec too is an error (docker)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_update_flags(parser)
    defaults = vars(parser.parse_args([args.service]))
    changed = sorted(name for name, default in defaults.items()
                     if name not in ("service", "detach", "quiet") and getattr(args, name, default) != default)
    if args.dry_run:
        changed.append("dry_run")
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise CliError(f"other flags may not be combined with --rollback ({flags}): run the update and the "
                       "rollback as two commands")


def _network_id(client: Any, ref: str) -> str:
    try:
        return str(client.get(f"/networks/{ref}", params={"scope": "swarm"})["Id"])
    except ApiError:
        return ref


def run_rollback(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    service = client.get(f"/services/{args.service}")
    response = client.post(f"/services/{service['ID']}/update",
                           params={"rollback": "previous", "version": service["Version"]["Index"]},
                           json=service["Spec"])
    ctx.print_warnings(response)
    ctx.print(args.service)
    if not args.detach:
        wait_for_service(ctx, args.service, args.quiet)
    return 0


def parse_scale(value: str) -> tuple[str, str]:
    name, sep, count = value.partition("=")
    if not sep or not name or not count:
        raise CliError(f"Invalid scale specifier '{value}'. Use SERVICE=REPLICAS, e.g. web=3.\n"
                       "See 'shoal service scale --help'.")
    return name, count


def run_scale(ctx: CliContext, args: argparse.Namespace) -> int:
    requests = [parse_scale(value) for value in args.scales]
    client = ctx.client()
    errors: list[str] = []
    scaled: list[str] = []
    for name, count in requests:
        if not re.fullmatch(r"\d+", count):
            errors.append(f"{name}: invalid replicas value {count}: must be a non-negative integer")
            continue
        replicas = int(count)
        try:
            service = client.get(f"/services/{name}")
            mode = service["Spec"].get("Mode") or {}
            if mode.get("Replicated") is not None:
                mode["Replicated"]["Replicas"] = replicas
            elif mode.get("ReplicatedJob") is not None:
                mode["ReplicatedJob"]["TotalCompletions"] = replicas
            else:
                errors.append(f"{name}: scale can only be used with replicated or replicated-job mode")
                continue
            response = client.post(f"/services/{service['ID']}/update",
                                   params={"version": service["Version"]["Index"]}, json=service["Spec"])
        except ApiError as exc:
            errors.append(f"{name}: {exc}")
            continue
        ctx.print_warnings(response)
        ctx.print(f"{name} scaled to {replicas}")
        scaled.append(name)
    if not args.detach:
        for name in scaled:
            try:
                wait_for_service(ctx, name, quiet=False)
            except (CliError, ApiError) as exc:
                errors.append(f"{name}: {exc}")
    if errors:
        raise CliError("\n".join(errors))
    return 0


# ---- ls / ps / rm ---------------------------------------------------------------------------------------

def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    params: dict[str, str] = {}
    if filters:
        params["filters"] = filters_param(filters)
    if not args.quiet or args.format:
        params["status"] = "true"
    services: list[Doc] = ctx.client().get("/services", params=params or None) or []
    ctx.out.write(render_list(args.format, SERVICE_LIST, service_rows(services), args.quiet))
    return 0


def resolve_service_ids(ctx: CliContext, refs: list[str]) -> tuple[list[str], list[str]]:
    """docker's `service ps` lookup: exact ID, then exact name, then a unique ID prefix. (ids, not-found errors)"""
    client = ctx.client()
    ids: list[str] = []
    not_found: list[str] = []
    for ref in refs:
        by_id = client.get("/services", params={"filters": filters_param({"id": [ref]})}) or []
        by_name = client.get("/services", params={"filters": filters_param({"name": [ref]})}) or []
        exact = [s["ID"] for s in by_id if s["ID"] == ref] or [s["ID"] for s in by_name if s["Spec"].get("Name") == ref]
        if exact:
            ids.append(exact[0])
            continue
        prefixed = [s["ID"] for s in by_id if s["ID"].startswith(ref)]
        if len(prefixed) > 1:
            raise CliError(f"multiple services found with provided prefix: {ref}")
        if prefixed:
            ids.append(prefixed[0])
        else:
            not_found.append(f"no such service: {ref}")
    return ids, not_found


def run_ps(ctx: CliContext, args: argparse.Namespace) -> int:
    ids, not_found = resolve_service_ids(ctx, args.services)
    if not ids:
        raise CliError("\n".join(not_found))
    filters = parse_filters(args.filter)
    if "node" in filters:
        filters["node"] = [self_node_id(ctx) if n == "self" else n for n in filters["node"]]
    filters["service"] = ids
    tasks = ctx.client().get("/tasks", params={"filters": filters_param(filters)}) or []
    print_tasks(ctx, tasks, quiet=args.quiet, no_trunc=args.no_trunc, source=args.format)
    if not_found:
        raise CliError("\n".join(not_found))
    return 0


def run_rm(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    errors = []
    for ref in args.services:
        try:
            client.delete(f"/services/{ref}")
        except ApiError as exc:
            errors.append(str(exc))
            continue
        ctx.print(ref)
    if errors:
        raise CliError("\n".join(errors))
    return 0


# ---- inspect --------------------------------------------------------------------------------------------

def run_inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    pretty, template = inspect_mode(args.pretty, args.format)
    found: list[Doc] = []
    errors: list[str] = []
    for ref in args.services:
        try:
            found.append(client.get(f"/services/{ref}", params={"insertDefaults": "true"}))
        except ApiError as exc:
            if not exc.not_found:
                raise
            errors.append(f"no such service: {ref}")
    if pretty:
        for service in found:
            ctx.out.write(service_pretty(service, ctx.now()) + "\n")
    else:
        errors += print_inspected(ctx, found, template)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def _duration(ns: Any) -> str:
    return format_duration(int(ns or 0))


def _ago(timestamp: str, now: float) -> str:
    return human_duration(max(0.0, now - from_rfc3339(timestamp))) + " ago"


def _update_config_lines(config: Doc, title: str, order_label: str) -> list[str]:
    lines = [f"\n{title}:", f"\n Parallelism:\t{int(config.get('Parallelism') or 0)}"]
    if int(config.get("Delay") or 0) > 0:
        lines.append(f"\n Delay:\t\t{_duration(config['Delay'])}")
    lines.append(f"\n On failure:\t{config.get('FailureAction') or ''}")
    if int(config.get("Monitor") or 0) > 0:
        lines.append(f"\n Monitoring Period: {_duration(config['Monitor'])}")
    lines.append(f"\n Max failure ratio: {go_float(float(config.get('MaxFailureRatio') or 0))}")
    lines.append(f"\n {order_label} {config.get('Order') or ''}")
    return lines


def service_pretty(service: Doc, now: float) -> str:
    """docker's serviceInspectPrettyTemplate, line for line (including its stray blanks)."""
    spec = service.get("Spec") or {}
    task = spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    mode = spec.get("Mode") or {}
    out = [f"\nID:\t\t{service.get('ID', '')}\nName:\t\t{spec.get('Name', '')}"]
    if spec.get("Labels"):
        out.append("\nLabels:")
        out += [f"\n {k}={v}" if v else f"\n {k}" for k, v in sorted(spec["Labels"].items())]
    out.append("\nService Mode:")
    if mode.get("Global") is not None:
        out.append("\tGlobal")
    elif mode.get("Replicated") is not None:
        out.append("\tReplicated")
        if mode["Replicated"].get("Replicas") is not None:
            out.append(f"\n Replicas:\t{mode['Replicated']['Replicas']}")
    # docker's template prints nothing after "Service Mode:" for a job; shoal names it, in the same layout.
    elif mode.get("ReplicatedJob") is not None:
        job = mode["ReplicatedJob"]
        out.append(f"\tReplicated job\n Max concurrent:\t{job.get('MaxConcurrent', '')}"
                   f"\n Total completions:\t{job.get('TotalCompletions', '')}")
    elif mode.get("GlobalJob") is not None:
        out.append("\tGlobal job")
    update_status = service.get("UpdateStatus") or {}
    if update_status.get("State"):
        out.append(f"\nUpdateStatus:\n State:\t\t{update_status['State']}")
        if update_status.get("StartedAt"):
            out.append(f"\n Started:\t{_ago(update_status['StartedAt'], now)}")
        if update_status["State"] == "completed" and update_status.get("CompletedAt"):
            out.append(f"\n Completed:\t{_ago(update_status['CompletedAt'], now)}")
        out.append(f"\n Message:\t{update_status.get('Message', '')}")
    placement = task.get("Placement") or {}
    out.append("\nPlacement:")
    if placement.get("Constraints"):
        out.append(f"\n Constraints:\t[{' '.join(placement['Constraints'])}]")
    preferences = [f"spread={p['Spread'].get('SpreadDescriptor', '')}"
                   for p in placement.get("Preferences") or [] if p.get("Spread")]
    if preferences:
        out.append(f"\n Preferences:   [{' '.join(preferences)}]")
    if placement.get("MaxReplicas"):
        out.append(f"\n Max Replicas Per Node:   {placement['MaxReplicas']}")
    if spec.get("UpdateConfig") is not None:
        out += _update_config_lines(spec["UpdateConfig"], "UpdateConfig", "Update order:     ")
    if spec.get("RollbackConfig") is not None:
        out += _update_config_lines(spec["RollbackConfig"], "RollbackConfig", "Rollback order:   ")
    out.append(f"\nContainerSpec:\n Image:\t\t{container.get('Image', '')}")
    if container.get("Args"):
        out.append("\n Args:\t\t" + "".join(f"{a} " for a in container["Args"]))
    if container.get("Env"):
        out.append("\n Env:\t\t" + "".join(f"{e} " for e in container["Env"]))
    if container.get("Dir"):
        out.append(f"\n Dir:\t\t{container['Dir']}")
    if container.get("Init") is not None:
        out.append(f"\n Init:\t\t{'true' if container['Init'] else 'false'}")
    if container.get("User"):
        out.append(f"\n User: {container['User']}")
    if container.get("CapabilityAdd") or container.get("CapabilityDrop"):
        out.append("\nCapabilities:")
        if container.get("CapabilityAdd"):
            out.append(f"\n Add: {', '.join(container['CapabilityAdd'])}")
        if container.get("CapabilityDrop"):
            out.append(f"\n Drop: {', '.join(container['CapabilityDrop'])}")
    if container.get("Sysctls"):
        out.append("\nSysCtls:")
        out += [f"\n {k}: {v}" if v else f"\n {k}" for k, v in sorted(container["Sysctls"].items())]
    if container.get("Ulimits"):
        out.append("\nUlimits:")
        limits = {u.get("Name", ""): f"{u.get('Soft', 0)}:{u.get('Hard', 0)}" for u in container["Ulimits"]}
        out += [f"\n {k}: {v}" for k, v in sorted(limits.items())]
    if container.get("Mounts"):
        out.append("\nMounts:")
        for m in container["Mounts"]:
            read_only = "true" if m.get("ReadOnly") else "false"
            out.append(f"\n Target:\t{m.get('Target', '')}\n  Source:\t{m.get('Source', '')}"
                       f"\n  ReadOnly:\t{read_only}\n  Type:\t\t{m.get('Type', '')}")
    for key, title, name_key in (("Configs", "Configs", "ConfigName"), ("Secrets", "Secrets", "SecretName")):
        if container.get(key):
            out.append(f"\n{title}:")
            for ref in container[key]:
                out.append(f"\n Target:\t{(ref.get('File') or {}).get('Name', '')}\n  Source:\t{ref.get(name_key, '')}")
    log_driver = task.get("LogDriver")
    if log_driver is not None:
        out.append("\nLog Driver:")
        if log_driver.get("Name"):
            out.append(f"\n Name:\t\t{log_driver['Name']}")
        if log_driver.get("Options"):
            out.append("\n LogOpts:")
            out += [f"\n  {k}:       {v}" if v else f"\n  {k}" for k, v in sorted(log_driver["Options"].items())]
        out.append("\n")
    resources = task.get("Resources")
    limits = (resources or {}).get("Limits") or {}
    if resources is not None:
        out.append("\nResources:")
        reservations = resources.get("Reservations") or {}
        if int(reservations.get("NanoCPUs") or 0) > 0 or int(reservations.get("MemoryBytes") or 0) > 0:
            out.append("\n Reservations:")
            if int(reservations.get("NanoCPUs") or 0) > 0:
                out.append(f"\n  CPU:\t\t{go_float(int(reservations['NanoCPUs']) / 1e9)}")
            if int(reservations.get("MemoryBytes") or 0) > 0:
                out.append(f"\n  Memory:\t{bytes_size(int(reservations['MemoryBytes']))}")
        if any(int(limits.get(k) or 0) > 0 for k in ("NanoCPUs", "MemoryBytes", "Pids")):
            out.append("\n Limits:")
            if int(limits.get("NanoCPUs") or 0) > 0:
                out.append(f"\n  CPU:\t\t{go_float(int(limits['NanoCPUs']) / 1e9)}")
            if int(limits.get("MemoryBytes") or 0) > 0:
                out.append(f"\n  Memory:\t{bytes_size(int(limits['MemoryBytes']))}")
    if int(limits.get("Pids") or 0) > 0:
        out.append(f"\n  PIDs:\t\t{limits['Pids']}")
    networks = [n.get("Target", "") for n in task.get("Networks") or []]
    if networks:
        out.append("\nNetworks:" + "".join(f" {n}" for n in networks) + " ")
    out.append(f"\nEndpoint Mode:\t{(spec.get('EndpointSpec') or {}).get('Mode', '')}")
    ports = (service.get("Endpoint") or {}).get("Ports") or []
    if ports:
        out.append("\nPorts:")
        for p in ports:
            out.append(f"\n PublishedPort = {p.get('PublishedPort', 0)}\n  Protocol = {p.get('Protocol', '')}"
                       f"\n  TargetPort = {p.get('TargetPort', 0)}\n  PublishMode = {p.get('PublishMode', '')}")
        out.append(" ")
    health = container.get("Healthcheck")
    if health:
        out.append(f"\n Healthcheck:\n  Interval = {_duration(health.get('Interval'))}"
                   f"\n  Retries = {int(health.get('Retries') or 0)}"
                   f"\n  StartPeriod =\t{_duration(health.get('StartPeriod'))}"
                   f"\n  Timeout =\t{_duration(health.get('Timeout'))}")
        if health.get("Test"):
            out.append("\n  Tests:" + "".join(f"\n\t Test = {t}" for t in health["Test"]) + " ")
    out.append("\n")
    return "".join(out)


# ---- logs -----------------------------------------------------------------------------------------------

def parse_log_details(text: str) -> dict[str, str]:
    """The `k=v,k=v` (URL-query-escaped) details docker puts before each log message."""
    if not text:
        raise CliError("invalid details format")
    details: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError("invalid details format")
        details[unquote_plus(key)] = unquote_plus(value)
    return details


class LogFormatter:
    """Prefixes each line with `service.slot.task@node` (padded to the widest slot), resolving IDs once."""

    def __init__(self, ctx: CliContext, args: argparse.Namespace, padding: int) -> None:
        self.ctx = ctx
        self.args = args
        self.padding = padding
        self.cache: dict[tuple[str, str, str], str] = {}
        self.node_name = node_name_resolver(ctx) if not args.no_resolve else (lambda node_id: node_id)

    def context(self, node_id: str, service_id: str, task_id: str) -> str:
        key = (node_id, service_id, task_id)
        if key not in self.cache:
            client = self.ctx.client()
            service_name = service_id
            if not self.args.no_resolve:
                with contextlib.suppress(ApiError):
                    service_name = str(client.get(f"/services/{service_id}")["Spec"].get("Name") or service_id)
            task = client.get(f"/tasks/{task_id}")
            slot = int(task.get("Slot") or 0)
            name = f"{service_name}.{slot}"
            if not self.args.no_task_ids:
                name += "." + (task["ID"] if self.args.no_trunc else truncate_id(task["ID"]))
            self.cache[key] = f"{name}@{self.node_name(node_id)}" + " " * max(0, self.padding - len(str(slot)))
        return self.cache[key]

    def format(self, line: bytes) -> bytes:
        parts = line.split(b" ", 2 if self.args.timestamps else 1)
        if len(parts) != (3 if self.args.timestamps else 2):
            raise CliError(f"invalid context in log message: {line.decode(errors='replace')}")
        details = parse_log_details(parts[-2].decode())
        try:
            node_id = details.pop("com.docker.swarm.node.id")
            service_id = details.pop("com.docker.swarm.service.id")
            task_id = details.pop("com.docker.swarm.task.id")
        except KeyError as exc:
            raise CliError(f"missing {exc.args[0]} in log details") from None
        out = parts[0] + b" " if self.args.timestamps else b""
        out += (self.context(node_id, service_id, task_id) + "    | ").encode()
        if self.args.details:
            out += ",".join(sorted(f"{k}={v}" for k, v in details.items())).encode() + b" "
        return out + parts[-1]


def run_logs(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    target = args.target
    padding = 1
    try:
        service = client.get(f"/services/{target}")
        path = f"/services/{target}/logs"
        tty = bool(((service["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("TTY"))
        replicated = (service["Spec"].get("Mode") or {}).get("Replicated") or {}
        if replicated.get("Replicas") is not None:
            padding = len(str(replicated["Replicas"]))
    except ApiError as exc:
        if not exc.not_found:
            raise
        try:
            task = client.get(f"/tasks/{target}")
        except ApiError as task_exc:
            if task_exc.not_found:
                raise CliError(f"no such task or service: {target}") from None
            raise
        path = f"/tasks/{target}/logs"
        tty = bool(((task.get("Spec") or {}).get("ContainerSpec") or {}).get("TTY"))
        padding = len(str(int(task.get("Slot") or 0)))
    if tty and not args.raw:
        raise CliError("tty service logs only supported with --raw")

    params = {"stdout": "1", "stderr": "1", "tail": args.tail}
    if args.details or not args.raw:
        params["details"] = "1"
    if args.follow:
        params["follow"] = "1"
    if args.timestamps:
        params["timestamps"] = "1"
    if args.since:
        params["since"] = args.since
    formatter = None if args.raw else LogFormatter(ctx, args, padding)
    stdout = _binary(ctx.out)
    stderr = _binary(ctx.err)
    pending: dict[int, bytes] = {}
    for stream_id, payload in client.stream(path, params):
        sink = stderr if stream_id == STDERR else stdout
        if formatter is None:
            sink.write(payload)
            sink.flush()
            continue
        # Frames usually hold whole lines; keep any partial line until its end arrives.
        data = pending.pop(stream_id, b"") + payload
        *lines, rest = data.split(b"\n")
        if rest:
            pending[stream_id] = rest
        for line in lines:
            sink.write(formatter.format(line) + b"\n")
        sink.flush()
    for stream_id, rest in pending.items():
        sink = stderr if stream_id == STDERR else stdout
        if formatter is not None:
            sink.write(formatter.format(rest) + b"\n")
    return 0


class _TextSink:
    """Bytes written to a text stream (for tests with StringIO)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode(errors="replace"))

    def flush(self) -> None:
        self.stream.flush()


def _binary(stream: Any) -> Any:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()
        return buffer
    return _TextSink(stream)


__all__ = ["register", "service_pretty", "parse_log_details", "resolve_service_ids"]
