"""`shoal stack deploy|ls|services|ps|rm`, as docker's: an application from compose files, by its namespace label.

A deploy reads and converts the files first (shoal.stack), so a bad file changes nothing. Then, as docker's
CLI: stale services go (`--prune`), missing networks, secrets and configs are made, and each service is created,
or updated when its spec differs from the one the swarm holds (a rolling update, as `service update`); an
unchanged service is left alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from shoal.api.client import ApiError, filters_param
from shoal.cli.common import CliContext, CliError, add_list_format_flag
from shoal.cli.format import SERVICE_LIST, STACK_LIST, service_rows, stack_rows
from shoal.cli.formatter import render_list
from shoal.cli.node import print_tasks
from shoal.cli.service import wait_for_service
from shoal.errors import ShoalError
from shoal.manager.controlapi.service import validate_service_spec
from shoal.stack import NAMESPACE_LABEL, StackError
from shoal.stack.compose import load
from shoal.stack.convert import StackObjects, convert
from shoal.types import Doc

NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def register(commands: Any) -> None:
    parser = commands.add_parser("stack", help="Manage swarm stacks")
    parser.set_defaults(handler=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    deploy = sub.add_parser("deploy", aliases=["up"], help="Deploy a new stack or update an existing stack")
    deploy.add_argument("-c", "--compose-file", action="append", metavar="FILE",
                        help="Path to a Compose file, or \"-\" to read from stdin (may be repeated)")
    deploy.add_argument("--prune", action="store_true", help="Prune services that are no longer referenced")
    deploy.add_argument("-d", "--detach", action="store_true", default=True,
                        help="Exit immediately instead of waiting for the stack services to converge (default "
                             "true; --detach=false waits)")
    deploy.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    deploy.add_argument("--resolve-image", default="always", choices=("always", "changed", "never"),
                        help="Query the registry to resolve image digest (shoal uses images as given)")
    deploy.add_argument("--with-registry-auth", action="store_true",
                        help="Send registry authentication details to Swarm agents (no registry in shoal)")
    deploy.add_argument("stack", metavar="STACK")
    deploy.set_defaults(handler=run_deploy)

    ls = sub.add_parser("ls", aliases=["list"], help="List stacks")
    add_list_format_flag(ls)
    ls.set_defaults(handler=run_ls)

    services = sub.add_parser("services", help="List the services in the stack")
    services.add_argument("-q", "--quiet", action="store_true", help="Only display IDs")
    add_list_format_flag(services)
    services.add_argument("stack", metavar="STACK")
    services.set_defaults(handler=run_services)

    ps = sub.add_parser("ps", help="List the tasks in the stack")
    ps.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    ps.add_argument("-q", "--quiet", action="store_true", help="Only display task IDs")
    add_list_format_flag(ps)
    ps.add_argument("stack", metavar="STACK")
    ps.set_defaults(handler=run_ps)

    rm = sub.add_parser("rm", aliases=["remove", "down"], help="Remove one or more stacks")
    rm.add_argument("stacks", nargs="+", metavar="STACK")
    rm.set_defaults(handler=run_rm)


def _label_filter(stack: str) -> dict[str, str]:
    return {"filters": filters_param({"label": [f"{NAMESPACE_LABEL}={stack}"]})}


def check_stack_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise CliError(f'invalid stack name "{name}": use letters, digits, "_", "." or "-", starting with a '
                       "letter or digit")
    return name


# ---- deploy ---------------------------------------------------------------------------------------------

def read_stack(args: argparse.Namespace) -> StackObjects:
    """The files read and converted: every problem is found here, before anything changes."""
    files = [Path(f) for f in args.compose_file or []]
    if not files:
        raise CliError('please specify a Compose file (with --compose-file / -c)')
    try:
        document = load(files)
        return convert(args.stack, document, files[0].parent if str(files[0]) != "-" else Path.cwd(),
                       dict(os.environ))
    except StackError as exc:
        raise CliError(str(exc)) from None


def run_deploy(ctx: CliContext, args: argparse.Namespace) -> int:
    stack = check_stack_name(args.stack)
    objects = read_stack(args)
    if objects.ignored:
        ctx.warn(f"Ignoring unsupported options: {', '.join(objects.ignored)}")
        ctx.warn("")
    done = _Progress(ctx)
    try:
        changed = _deploy(ctx, done, stack, objects, args.prune)
    except (ApiError, CliError) as exc:
        if not done.steps:
            raise
        raise CliError(f"{exc} (stack {stack} is deployed in part: {'; '.join(done.steps)}; deploy again once "
                       "this is fixed)") from None
    if args.detach:
        return 0
    for service_id in changed:
        wait_for_service(ctx, service_id, args.quiet)
    return 0


class _Progress:
    """What a deploy has changed so far: printed as it goes, and named if it stops half-way."""

    def __init__(self, ctx: CliContext) -> None:
        self.ctx = ctx
        self.steps: list[str] = []

    def __call__(self, text: str) -> None:
        self.ctx.print(text)
        self.steps.append(text[0].lower() + text[1:])


def _deploy(ctx: CliContext, done: _Progress, stack: str, objects: StackObjects, prune: bool) -> list[str]:
    """Everything a deploy changes, in docker's order; the IDs of the services created or updated."""
    client = ctx.client()
    existing = {str(s["Spec"]["Name"]): s for s in client.get("/services", params=_label_filter(stack)) or []}
    if prune:
        for name, service in sorted(existing.items()):
            if name not in objects.services:
                client.delete(f"/services/{service['ID']}")
                done(f"Removing service {name}")
    network_ids = _ensure_networks(ctx, done, stack, objects)
    secret_ids = _ensure_objects(ctx, done, "secret", objects.secrets, objects.external_secrets)
    config_ids = _ensure_objects(ctx, done, "config", objects.configs, objects.external_configs)
    changed: list[str] = []
    for name, spec in objects.services.items():
        spec = _resolved(spec, network_ids, secret_ids, config_ids)
        service = existing.get(name)
        if service is None:
            answer = client.post("/services/create", json=spec) or {}
            done(f"Creating service {name}")
            ctx.print_warnings(answer)
            changed.append(str(answer.get("ID") or name))
        elif _normalised(spec) != _normalised(service["Spec"]):
            answer = client.post(f"/services/{service['ID']}/update",
                                 params={"version": str(service["Version"]["Index"])}, json=spec)
            done(f"Updating service {name} (id: {service['ID']})")
            ctx.print_warnings(answer)
            changed.append(str(service["ID"]))
    return changed


def _normalised(spec: Doc) -> Doc:
    try:
        return validate_service_spec(copy.deepcopy(spec))
    except ShoalError:
        return spec


def _ensure_networks(ctx: CliContext, done: _Progress, stack: str, objects: StackObjects) -> dict[str, str]:
    client = ctx.client()
    ids: dict[str, str] = {}
    for name in objects.external_networks:
        try:
            network = client.get(f"/networks/{name}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            network = None
        if not network or network.get("Scope") != "swarm":
            raise CliError(f'network "{name}" is declared as external, but could not be found. You need to '
                           "create a swarm-scoped network before the stack is deployed")
        ids[name] = str(network["Id"])
    have = {str(n["Name"]): str(n["Id"]) for n in client.get("/networks", params=_label_filter(stack)) or []}
    for name, body in objects.networks.items():
        if name not in have:
            have[name] = str((client.post("/networks/create", json=body) or {}).get("Id") or name)
            done(f"Creating network {name}")
        ids[name] = have[name]
    return ids


def _ensure_objects(ctx: CliContext, done: _Progress, kind: str, bodies: dict[str, Doc],
                    external: list[str]) -> dict[str, str]:
    """Secrets or configs: each made when missing. One that exists may only change its labels: a changed value
    is refused (as Docker's swarm refuses it: give the new value a new name)."""
    client = ctx.client()
    ids: dict[str, str] = {}
    for name in external:
        try:
            ids[name] = str(client.get(f"/{kind}s/{name}")["ID"])
        except ApiError as exc:
            if exc.not_found:
                raise CliError(f'{kind} "{name}" is declared as external, but could not be found: create it '
                               f"with `shoal {kind} create {name} FILE` first") from None
            raise
    for name, body in bodies.items():
        try:
            current = client.get(f"/{kind}s/{name}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            ids[name] = str((client.post(f"/{kind}s/create", json=body) or {}).get("ID") or name)
            done(f"Creating {kind} {name}")
            continue
        ids[name] = str(current["ID"])
        if kind == "config" and current["Spec"].get("Data") != body["Data"]:
            raise CliError(f"config {name} already exists with other content, and a config cannot change: give "
                           "the new content a new name (the config's `name:` in the compose file) or remove the "
                           "stack first")
        if kind == "secret":
            # Its value is never served back: the swarm compares the one sent and refuses a different one.
            try:
                client.post(f"/secrets/{current['ID']}/update",
                            params={"version": str(current["Version"]["Index"])},
                            json={"Name": name, "Labels": body["Labels"], "Data": body["Data"]})
            except ApiError as exc:
                raise CliError(f"secret {name}: {exc}") from None
            if (current["Spec"].get("Labels") or {}) != body["Labels"]:
                done(f"Updating secret {name}")
        elif (current["Spec"].get("Labels") or {}) != body["Labels"]:
            client.post(f"/configs/{current['ID']}/update", params={"version": str(current["Version"]["Index"])},
                        json={"Name": name, "Labels": body["Labels"], "Data": body["Data"]})
            done(f"Updating config {name}")
    return ids


def _resolved(spec: Doc, networks: dict[str, str], secrets: dict[str, str], configs: dict[str, str]) -> Doc:
    """The spec with its networks, secrets and configs named by ID as well (as the swarm stores them)."""
    out = copy.deepcopy(spec)
    template = out["TaskTemplate"]
    for attachment in template.get("Networks") or []:
        attachment["Target"] = networks.get(attachment["Target"], attachment["Target"])
    container = template["ContainerSpec"]
    for key, id_key, name_key, ids in (("Secrets", "SecretID", "SecretName", secrets),
                                       ("Configs", "ConfigID", "ConfigName", configs)):
        for ref in container.get(key) or []:
            ref[id_key] = ids.get(ref[name_key], "")
    return out


# ---- ls / services / ps / rm ----------------------------------------------------------------------------

def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    services = ctx.client().get("/services", params={"filters": filters_param({"label": [NAMESPACE_LABEL]})}) or []
    counts = Counter(str(s["Spec"]["Labels"][NAMESPACE_LABEL]) for s in services)
    ctx.out.write(render_list(args.format, STACK_LIST, stack_rows(dict(counts))))
    return 0


def _stack_services(ctx: CliContext, stack: str, status: bool = False) -> list[Doc]:
    params = _label_filter(stack) | ({"status": "true"} if status else {})
    services: list[Doc] = ctx.client().get("/services", params=params) or []
    return services


def run_services(ctx: CliContext, args: argparse.Namespace) -> int:
    services = _stack_services(ctx, args.stack, status=not args.quiet or bool(args.format))
    if not services:
        ctx.warn(f"Nothing found in stack: {args.stack}")
        return 0
    # -q prints the IDs short, as `service ls -q` and docker's `stack services -q` do.
    ctx.out.write(render_list(args.format, SERVICE_LIST, service_rows(services), args.quiet))
    return 0


def run_ps(ctx: CliContext, args: argparse.Namespace) -> int:
    tasks = ctx.client().get("/tasks", params=_label_filter(args.stack)) or []
    if not tasks:
        raise CliError(f"nothing found in stack: {args.stack}")
    print_tasks(ctx, tasks, quiet=args.quiet, no_trunc=args.no_trunc, source=args.format)
    return 0


def run_rm(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    errors: list[str] = []
    for stack in args.stacks:
        services = _stack_services(ctx, stack)
        secrets = client.get("/secrets", params=_label_filter(stack)) or []
        configs = client.get("/configs", params=_label_filter(stack)) or []
        networks = client.get("/networks", params=_label_filter(stack)) or []
        if not (services or secrets or configs or networks):
            ctx.warn(f"Nothing found in stack: {stack}")
            continue
        steps = ([("service", str(s["Spec"]["Name"]), f"/services/{s['ID']}") for s in services]
                 + [("secret", str(s["Spec"]["Name"]), f"/secrets/{s['ID']}") for s in secrets]
                 + [("config", str(c["Spec"]["Name"]), f"/configs/{c['ID']}") for c in configs]
                 + [("network", str(n["Name"]), f"/networks/{n['Id']}") for n in networks])
        for kind, name, path in sorted(steps, key=lambda s: (_RM_ORDER.index(s[0]), s[1])):
            ctx.print(f"Removing {kind} {name}")
            try:
                client.delete(path)
            except ApiError as exc:
                errors.append(f"Failed to remove {kind} {name}: {exc}")
    if errors:
        raise CliError("\n".join(errors))
    return 0


_RM_ORDER = ("service", "secret", "config", "network")
