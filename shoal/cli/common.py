"""What every command shares: where the daemon is, the client, the output streams, and CliError."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shoal import config
from shoal.api.client import ApiError, Client, TlsFiles
from shoal.types import Doc


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def playground_socket() -> str | None:
    """The first manager's socket of a running playground, if there is one."""
    try:
        from shoal import playground  # written separately; may not exist yet

        socket = playground.default_socket()
    except (ImportError, AttributeError):
        return None
    except Exception:  # a broken playground state must not stop the CLI from reaching a daemon
        return None
    return str(socket) if socket else None


def resolve_host(flag: str | None, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """(host URL, whether the user chose it): -H, else SHOAL_HOST, else a playground, else the default socket."""
    env = os.environ if environ is None else environ
    if flag:
        return flag, True
    if env.get("SHOAL_HOST"):
        return env["SHOAL_HOST"], True
    socket = playground_socket()
    if socket:
        return socket if "://" in socket else f"unix://{socket}", False
    return f"unix://{config.DEFAULT_SOCKET}", False


def resolve_tls(cacert: str | None, cert: str | None, key: str | None,
                environ: dict[str, str] | None = None) -> TlsFiles | None:
    env = os.environ if environ is None else environ
    base = Path(env["SHOAL_CERT_PATH"]) if env.get("SHOAL_CERT_PATH") else None
    if not (cacert or cert or key or base):
        return None
    defaults = TlsFiles.from_dir(base) if base else None
    ca_path = Path(cacert) if cacert else (defaults.ca if defaults else None)
    cert_path = Path(cert) if cert else (defaults.cert if defaults else None)
    key_path = Path(key) if key else (defaults.key if defaults else None)
    if ca_path is None or cert_path is None or key_path is None:
        raise CliError("TLS needs all of --tlscacert, --tlscert and --tlskey (or SHOAL_CERT_PATH)")
    return TlsFiles(ca=ca_path, cert=cert_path, key=key_path)


@dataclass
class CliContext:
    """Streams, the daemon address and a lazily made client for one CLI invocation."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    host: str | None = None
    host_is_explicit: bool = False
    tls: TlsFiles | None = None
    now: Callable[[], float] = time.time
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            if self.host is None:
                self.host, self.host_is_explicit = resolve_host(None)
            try:
                self._client = Client.for_host(self.host, self.tls)
            except (ValueError, OSError) as exc:
                raise CliError(str(exc)) from exc
        return self._client

    def set_client(self, client: Client) -> None:
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")

    def isatty(self) -> bool:
        try:
            return self.out.isatty()
        except (AttributeError, ValueError):
            return False

    def print_warnings(self, response: Any) -> None:
        if isinstance(response, dict):
            for warning in response.get("Warnings") or []:
                self.warn(str(warning))


def print_json(ctx: CliContext, value: Any) -> None:
    """JSON as docker prints inspect output: 4-space indent, non-ASCII kept."""
    ctx.print(json.dumps(value, indent=4, ensure_ascii=False))


def remove_objects(ctx: CliContext, refs: list[str], path: str) -> int:
    """docker's rm of several objects (`path` is "/secrets", "/networks", …): each name printed once removed,
    then one error line for each that could not be."""
    client = ctx.client()
    errors: list[str] = []
    for ref in refs:
        try:
            client.delete(f"{path}/{ref}")
            ctx.print(ref)
        except ApiError as exc:
            errors.append(str(exc))
    if errors:
        raise CliError("\n".join(errors))
    return 0


def inspect_objects(ctx: CliContext, refs: list[str], fetch: Callable[[str], Doc],
                    pretty: Callable[[Doc], str] | None, template: str = "") -> int:
    """docker's inspect of several objects: the JSON (or `--pretty` text, or `--format` template's lines) of
    those found, then one error line for each reference that was not (with --pretty the first miss is the
    error)."""
    found: list[Doc] = []
    errors: list[str] = []
    for ref in refs:
        try:
            found.append(fetch(ref))
        except ApiError as exc:
            if pretty is not None:
                raise
            errors.append(str(exc))
    if pretty is not None:
        ctx.out.write("\n\n".join(pretty(obj) for obj in found) + "\n")
    else:
        errors += print_inspected(ctx, found, template)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def print_inspected(ctx: CliContext, found: list[Doc], template: str) -> list[str]:
    """The objects as indented JSON, or through `--format`'s template; the errors of the template."""
    if not template:
        print_json(ctx, found)
        return []
    from shoal.cli.formatter import render_inspect

    inspected = render_inspect(template, found)
    ctx.out.write(inspected.text)
    return inspected.errors


FORMAT_HELP = ("Format output using a custom template: 'table' (default), 'table TEMPLATE' (with column headers), "
               "'json', or a Go template such as '{{.ID}}: {{.Name}}'")
INSPECT_FORMAT_HELP = "Format output using a custom template: 'json', or a Go template such as '{{.Spec.Name}}'"


def add_list_format_flag(parser: Any) -> None:
    """A list command's `--format` (no shorthand: -f is --filter)."""
    parser.add_argument("--format", metavar="FORMAT", help=FORMAT_HELP)


def add_inspect_format_flag(parser: Any) -> None:
    parser.add_argument("-f", "--format", metavar="FORMAT", help=INSPECT_FORMAT_HELP)


def self_node_id(ctx: CliContext) -> str:
    info = ctx.client().get("/info") or {}
    node_id = str((info.get("Swarm") or {}).get("NodeID") or "")
    if not node_id:
        raise CliError("node ID not found in /info")
    return node_id


def node_reference(ctx: CliContext, ref: str) -> str:
    """`self` means this node; anything else is passed to the daemon, which resolves names and prefixes."""
    return self_node_id(ctx) if ref == "self" else ref


def parse_filters(values: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise CliError(f"bad format of filter (expected name=value): {value}")
        filters.setdefault(key.strip().lower(), []).append(val.strip())
    return filters


def node_name_resolver(ctx: CliContext) -> Callable[[str], str]:
    """node ID -> display name (Spec.Name, else hostname); errors are ignored and show the ID, like docker."""
    from shoal.api.client import ApiError
    from shoal.cli.format import node_display_name

    cache: dict[str, str] = {}

    def resolve(node_id: str) -> str:
        if not node_id:
            return ""
        if node_id not in cache:
            try:
                node: Doc = ctx.client().get(f"/nodes/{node_id}")
                cache[node_id] = node_display_name(node)
            except ApiError:
                cache[node_id] = node_id
        return cache[node_id]

    return resolve
