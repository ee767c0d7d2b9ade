"""`--format`, as docker's formatter package reads it (cli/command/formatter, cli/command/inspect).

List commands (`service ls`, `node ls`, `secret ls`, …) give a template one *row* per object: the fields of
docker's formatter context for that command (`{{.Name}} {{.Replicas}}`, `{{.Label "k"}}`), the same values
their default table prints. `table TEMPLATE` adds a header row of docker's column names and aligns the
columns; `json` prints each row as a JSON object; `table` alone is the default table.

Inspect commands give the template the API's JSON document (`{{.Spec.Mode.Replicated.Replicas}}`,
`{{json .Spec}}`); timestamps and durations in it print as Go prints them. Where docker, which decodes into
Go structs, prints a struct (`{<nil> 0xc000…}`) shoal prints the map (`map[Replicated:map[Replicas:2]]`),
and a field the document lacks prints `<no value>` where docker prints the field's zero value.

Pure: templates and objects in, text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.cli.common import CliError
from shoal.cli.gotemplate import (
    HEADER_FUNCTIONS,
    MISSING,
    GoValue,
    Template,
    TemplateError,
    go_json,
    go_sprint,
)
from shoal.timefmt import format_duration
from shoal.types import Doc

# docker's tables go through text/tabwriter with minwidth 10 and padding 3.
TABLE_MIN_WIDTH = 10
TABLE_PADDING = 3

TABLE = "table"
JSON = "json"
RAW = "raw"
PRETTY = "pretty"
QUIET_FORMAT = "{{.ID}}"


def tabwrite(text: str, min_width: int = TABLE_MIN_WIDTH, padding: int = TABLE_PADDING) -> str:
    """Go's text/tabwriter with docker's settings: a tab ends a cell; a column is a run of consecutive lines
    that have a cell there, as wide as its widest cell plus the padding (at least min_width); the text after
    a line's last tab is not aligned."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []

    def write(first: int, end: int, widths: list[int]) -> None:
        for number in range(first, end):
            cells = lines[number]
            out.append("".join(cell.ljust(widths[i]) if i < len(widths) else cell for i, cell in enumerate(cells)))
            if number + 1 < len(lines):
                out.append("\n")

    def align(first: int, end: int, widths: list[int]) -> None:
        column = len(widths)
        line = first
        while line < end:
            if column >= len(lines[line]) - 1:
                line += 1
                continue
            write(first, line, widths)
            first = line
            width = min_width
            while line < end and column < len(lines[line]) - 1:
                width = max(width, len(lines[line][column]) + padding)
                line += 1
            align(first, line, [*widths, width])
            first = line
        write(first, end, widths)

    align(0, len(lines), [])
    return "".join(out)


class Row(GoValue):
    """One object of a list command as docker's formatter context shows it to a template: fields by docker's
    names, and methods taking arguments (`{{.Label "k"}}`). `{{json .}}` writes the fields in key order."""

    def __init__(self, go_type: str, fields: Mapping[str, Any],
                 methods: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.go_type = go_type
        self.fields = dict(fields)
        self.methods = dict(methods or {})

    def go_member(self, name: str) -> Any:
        if name in self.fields:
            return self.fields[name]
        return self.methods[name]

    def go_string(self) -> str:
        return "&{" + " ".join(go_sprint(v) for v in self.fields.values()) + "}"

    def go_json(self) -> Any:
        return dict(sorted(self.fields.items()))

    def go_json_text(self) -> str:
        # The contexts' MarshalJSON uses json.Marshal, which escapes HTML ("*:80-\u003e80/tcp").
        text = go_json(self.go_json())
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    def __repr__(self) -> str:
        return f"Row({self.fields!r})"


def labels_text(labels: Mapping[str, str] | None) -> str:
    """The `Labels` field of docker's list contexts: k=v pairs, sorted, comma separated."""
    return ",".join(sorted(f"{k}={v}" for k, v in (labels or {}).items()))


def label_method(labels: Mapping[str, str] | None) -> Callable[[str], str]:
    """`{{.Label "k"}}`: the label's value, "" when it has none."""
    def label(name: str) -> str:
        return str((labels or {}).get(name, ""))
    return label


class _HeaderRow(GoValue):
    """docker's SubHeaderContext: a map of field name to column name, with a `Label` method for
    `{{.Label "com.example.key"}}` columns (the key's last part, "-" and "_" as spaces)."""

    go_type = "formatter.SubHeaderContext"

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def go_member(self, name: str) -> Any:
        if name == "Label":
            return lambda key: str(key).split(".")[-1].replace("-", " ").replace("_", " ")
        return self.headers.get(name, MISSING)


@dataclass(frozen=True)
class ListFormat:
    """What docker's formatter knows of one list command: its default table, column names and raw format."""

    table: str
    headers: Mapping[str, str]
    raw: str | None = None
    raw_quiet: str | None = None


def list_template(source: str | None, kind: ListFormat, quiet: bool) -> str:
    """docker's NewListFormat: "" and "table" are the default table (the IDs with -q); "json" a JSON object
    per row; "raw" the command's raw format; anything else is the user's template (-q does not change it)."""
    if not source or source == TABLE:
        return QUIET_FORMAT if quiet else kind.table
    if source == RAW and kind.raw is not None:
        return (kind.raw_quiet or "") if quiet else kind.raw
    return source


def template_text(source: str) -> str:
    """docker's Format.templateString: no "table" prefix, spaces trimmed, `\\t` and `\\n` as typed become
    a tab and a newline."""
    if source == JSON:
        return "{{json .}}"
    text = source.removeprefix(TABLE) if source.startswith(TABLE) else source
    return text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")


def parse_template(text: str) -> Template:
    try:
        return Template(text)
    except TemplateError as exc:
        raise CliError(f"template parsing error: {exc.message}") from None


def render_list(source: str | None, kind: ListFormat, rows: Sequence[Row], quiet: bool = False) -> str:
    """The output of a list command for `--format source`: one line per row, after a header and aligned
    for a table format."""
    chosen = list_template(source, kind, quiet)
    template = parse_template(template_text(chosen))
    body = []
    for row in rows:
        try:
            body.append(template.execute(row) + "\n")
        except TemplateError as exc:
            raise CliError(f"template parsing error: {exc.message}") from None
    if not chosen.startswith(TABLE):
        return "".join(body)
    header = template.execute_partial(_HeaderRow(kind.headers), HEADER_FUNCTIONS)
    return tabwrite(header + "\n" + "".join(body))


# ---- inspect --------------------------------------------------------------------------------------------

def go_time_string(timestamp: str) -> str:
    """An RFC 3339 timestamp as Go's Time.String() prints it: "2026-11-27 14:09:33.914683 +0000 UTC"."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", timestamp)
    if not m:
        return timestamp
    date, clock, fraction, zone = m.groups()
    fraction = (fraction or "")[:9].rstrip("0")
    text = f"{date} {clock}" + (f".{fraction}" if fraction else "")
    if zone == "Z":
        return text + " +0000 UTC"
    offset = zone.replace(":", "")
    return text + f" {offset} {offset}"


class GoTime(GoValue):
    """A time.Time of a document: prints as Go's Time.String(), encodes as the RFC 3339 text it came as."""

    go_type = "time.Time"

    def __init__(self, text: str) -> None:
        self.text = text

    def go_string(self) -> str:
        return go_time_string(self.text)

    def go_json(self) -> Any:
        return self.text


class GoDuration(GoValue):
    """A time.Duration of a document (nanoseconds): prints as "1m30s", encodes and compares as its number."""

    go_type = "time.Duration"

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def go_string(self) -> str:
        return format_duration(self.ns)

    def go_json(self) -> Any:
        return self.ns

    def go_truth(self) -> bool:
        return self.ns != 0


# The keys of swarm documents that Go decodes into a time.Time or a time.Duration.
_TIME_KEYS = frozenset({"CreatedAt", "UpdatedAt", "Timestamp", "StartedAt", "CompletedAt", "Created"})
_DURATION_KEYS = frozenset({"Delay", "Monitor", "Window", "StopGracePeriod", "Interval", "Timeout",
                            "StartPeriod", "StartInterval", "NodeCertExpiry", "HeartbeatPeriod"})


def inspect_view(value: Any, key: str = "") -> Any:
    """A document as a template sees it: its times and durations typed as Go's."""
    if isinstance(value, dict):
        return {k: inspect_view(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [inspect_view(v) for v in value]
    if key in _TIME_KEYS and isinstance(value, str) and value:
        return GoTime(value)
    if key in _DURATION_KEYS and isinstance(value, int) and not isinstance(value, bool):
        return GoDuration(value)
    return value


@dataclass
class Inspected:
    """The output of an inspect command with `--format`, and an error line per object it failed on."""

    text: str
    errors: list[str] = field(default_factory=list)


def render_inspect(source: str, documents: Sequence[Doc]) -> Inspected:
    """docker's inspect.Inspect: "json" is one compact JSON array; a template runs once per document (a line
    each; a blank line when nothing was printed)."""
    if source == JSON:
        return Inspected(json.dumps(list(documents), ensure_ascii=False, separators=(",", ":")) + "\n")
    template = parse_template(source)
    out: list[str] = []
    errors: list[str] = []
    for document in documents:
        try:
            out.append(template.execute(inspect_view(document)) + "\n")
        except TemplateError as exc:
            errors.append(f"template parsing error: {exc.message}")
    return Inspected("".join(out) or "\n", errors)


def inspect_mode(pretty: bool, source: str | None, has_pretty: bool = True) -> tuple[bool, str]:
    """docker's inspect flags: (whether to print --pretty's text, the template or "" for indented JSON)."""
    if pretty and source:
        raise CliError("--format is incompatible with human friendly format")
    if has_pretty and source == PRETTY:
        return True, ""
    if has_pretty and source and source.startswith(PRETTY):
        raise CliError("cannot supply extra formatting options to the pretty template")
    return pretty, source or ""
