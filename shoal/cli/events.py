"""`shoal events`: the swarm's events as they happen, printed as `docker events` prints them."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from shoal.api.client import filters_param
from shoal.cli.common import CliContext, CliError, parse_filters
from shoal.cli.formatter import parse_template, template_text
from shoal.cli.gotemplate import TemplateError
from shoal.errors import InvalidArgument
from shoal.timefmt import SECOND, format_event_time, parse_timestamp_ns
from shoal.types import Doc

JSON_FORMATS = ("json", "{{json .}}")


def register(commands: Any) -> None:
    parser = commands.add_parser("events", help="Get real time events from the server")
    parser.add_argument("--since", help="Show all events created since timestamp (Unix seconds, RFC 3339 "
                        "time, or a duration back from now such as 10m)")
    parser.add_argument("--until", help="Stream events until this timestamp")
    parser.add_argument("-f", "--filter", action="append",
                        help="Filter output based on conditions provided (type=service, event=update, node=…)")
    parser.add_argument("--format", help='Format the output using a Go template, or "json" for one line of JSON '
                        "per event")
    parser.set_defaults(handler=run_events)


def time_param(flag: str, value: str, now: float) -> str:
    """A --since/--until value as the docker CLI sends it: Unix seconds and nanoseconds, "%d.%09d"."""
    try:
        nanos = parse_timestamp_ns(value, now)
    except InvalidArgument as exc:
        raise CliError(f"invalid value for {flag}: {exc.message}") from None
    return f"{nanos // SECOND}.{nanos % SECOND:09d}"


def event_line(event: Doc, tz: datetime.tzinfo | None = None) -> str:
    """docker's `prettyPrintEvent`: time, type, action, actor ID, then the attributes sorted by key."""
    parts = []
    if event.get("timeNano"):
        parts.append(format_event_time(int(event["timeNano"]), tz))
    elif event.get("time"):
        parts.append(format_event_time(int(event["time"]) * SECOND, tz))
    actor = event.get("Actor") or {}
    parts.append(f"{event.get('Type', '')} {event.get('Action', '')} {actor.get('ID', '')}")
    line = " ".join(parts)
    attributes = actor.get("Attributes") or {}
    if attributes:
        line += " (" + ", ".join(f"{key}={attributes[key]}" for key in sorted(attributes)) + ")"
    return line


def go_fields(event: Doc) -> Doc:
    """An event as docker's templates see it: the Go struct's field names (`{{.Scope}}`, `{{.TimeNano}}`)."""
    return {"Type": event.get("Type", ""), "Action": event.get("Action", ""), "Actor": event.get("Actor") or {},
            "Scope": event.get("scope", ""), "Time": event.get("time", 0), "TimeNano": event.get("timeNano", 0),
            "Status": event.get("status", ""), "ID": event.get("id", ""), "From": event.get("from", "")}


def run_events(ctx: CliContext, args: argparse.Namespace) -> int:
    as_json = args.format in JSON_FORMATS
    template = parse_template(template_text(args.format)) if args.format and not as_json else None
    params: dict[str, str] = {}
    now = ctx.now()
    if args.since:
        params["since"] = time_param("--since", args.since, now)
    if args.until:
        params["until"] = time_param("--until", args.until, now)
    if args.filter:
        params["filters"] = filters_param(parse_filters(args.filter))
    for line in ctx.client().stream_lines("/events", params):
        try:
            event = json.loads(line)
        except ValueError:
            raise CliError(f"the daemon sent something that is not an event: {line[:80]!r}") from None
        if template is not None:
            try:
                ctx.print(template.execute(go_fields(event)))
            except TemplateError as exc:
                raise CliError(f"template: {exc.message}") from None
        else:
            ctx.print(line if as_json else event_line(event))
        ctx.out.flush()
    return 0
