"""`shoal secret create|ls|inspect|rm` and `shoal config create|ls|inspect|rm`, as docker's."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
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
from shoal.cli.format import CONFIG_LIST, SECRET_LIST, go_time, secret_rows
from shoal.cli.formatter import inspect_mode, render_list
from shoal.cli.spec import labels_map
from shoal.types import Doc

KINDS = {"secret": "secrets", "config": "configs"}


def register(commands: Any) -> None:
    for noun, kind in KINDS.items():
        parser = commands.add_parser(noun, help=f"Manage swarm {noun}s")
        parser.set_defaults(handler=None)
        sub = parser.add_subparsers(title="commands", metavar="COMMAND")

        create = sub.add_parser("create", help=f"Create a {noun} from a file or STDIN as content")
        create.add_argument("-l", "--label", action="append", help=f"{noun.capitalize()} labels")
        create.add_argument("name", metavar=noun.upper())
        create.add_argument("file", metavar="file|-", help='Path to the content, or "-" to read STDIN')
        create.set_defaults(handler=run_create, kind=kind, noun=noun)

        ls = sub.add_parser("ls", aliases=["list"], help=f"List {noun}s")
        ls.add_argument("-q", "--quiet", action="store_true", help="Only display IDs")
        ls.add_argument("-f", "--filter", action="append", help="Filter output based on conditions provided")
        add_list_format_flag(ls)
        ls.set_defaults(handler=run_ls, kind=kind, noun=noun)

        inspect = sub.add_parser("inspect", help=f"Display detailed information on one or more {noun}s")
        inspect.add_argument("--pretty", action="store_true", help="Print the information in a human friendly format")
        add_inspect_format_flag(inspect)
        inspect.add_argument("refs", nargs="+", metavar=noun.upper())
        inspect.set_defaults(handler=run_inspect, kind=kind, noun=noun)

        rm = sub.add_parser("rm", aliases=["remove"], help=f"Remove one or more {noun}s")
        rm.add_argument("refs", nargs="+", metavar=noun.upper())
        rm.set_defaults(handler=run_rm, kind=kind, noun=noun)


def run_create(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"error reading content from {args.file!r}: {exc.strerror}") from None
    body = {"Name": args.name, "Labels": labels_map(args.label), "Data": base64.b64encode(data).decode()}
    answer = ctx.client().post(f"/{args.kind}/create", json=body)
    ctx.print(str(answer["ID"]))
    return 0


def run_ls(ctx: CliContext, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    params = {"filters": filters_param(filters)} if filters else None
    objects: list[Doc] = ctx.client().get(f"/{args.kind}", params=params) or []
    kind = SECRET_LIST if args.noun == "secret" else CONFIG_LIST
    ctx.out.write(render_list(args.format, kind, secret_rows(objects, args.noun, ctx.now()), args.quiet))
    return 0


def run_inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    show_pretty, template = inspect_mode(args.pretty, args.format)
    return inspect_objects(ctx, args.refs, lambda ref: client.get(f"/{args.kind}/{ref}"),
                           (lambda obj: pretty(obj, args.noun)) if show_pretty else None, template)


def pretty(obj: Doc, noun: str) -> str:
    """docker's secret/config inspect --pretty."""
    spec = obj.get("Spec") or {}
    lines = [f"ID:              {obj['ID']}", f"Name:              {spec.get('Name', '')}"]
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" - {k}={v}" for k, v in sorted(spec["Labels"].items())]
    if noun == "secret":
        lines.append(f"Driver:            {(spec.get('Driver') or {}).get('Name') or ''}")
    lines.append(f"Created at:        {go_time(str(obj.get('CreatedAt') or ''))}")
    lines.append(f"Updated at:        {go_time(str(obj.get('UpdatedAt') or ''))}")
    if noun == "config" and spec.get("Data"):
        lines.append("Data:")
        lines.append(base64.b64decode(spec["Data"]).decode(errors="replace").rstrip("\n"))
    return "\n".join(lines)


def run_rm(ctx: CliContext, args: argparse.Namespace) -> int:
    return remove_objects(ctx, args.refs, f"/{args.kind}")
