"""The `shoal` command: argument parsing, host selection and the one place errors are printed."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import traceback
from typing import Any, NoReturn

import shoal
from shoal.api.client import ApiError, DaemonUnreachable
from shoal.cli import daemon, dashboard, events, network, node, playground, secret, service, stack, swarm
from shoal.cli.common import CliContext, CliError, resolve_host, resolve_tls
from shoal.cli.flags import FlagError, normalise_args
from shoal.cli.format import bytes_size
from shoal.errors import ShoalError
from shoal.spec import go_architecture

API_VERSION = "1.47"


class UsageError(Exception):
    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class ShoalArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as two lines (the error, a help hint) instead of a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is None:
            return super().parse_known_args(args, namespace)
        # Read as docker's flag parser reads them: `--detach=false`, `--restart-delay -5s` (shoal.cli.flags).
        try:
            args, bool_flags = normalise_args(self._actions, list(args))
        except FlagError as exc:
            self.error(exc.message)
        namespace, extra = super().parse_known_args(args, namespace)
        for dest, value in bool_flags:
            setattr(namespace, dest, value)
        return namespace, extra


def build_parser() -> ShoalArgumentParser:
    parser = ShoalArgumentParser(prog="shoal", description="Swarm mode in Python: a pool of machines "
                                 "that keeps services at their declared state.")
    parser.add_argument("-H", "--host", help="Daemon to connect to (unix:///path or tcp://host:port); "
                        "default $SHOAL_HOST, a running playground, or the local socket")
    parser.add_argument("--tlscacert", metavar="FILE", help="Trust certs signed only by this CA")
    parser.add_argument("--tlscert", metavar="FILE", help="Path to TLS certificate file")
    parser.add_argument("--tlskey", metavar="FILE", help="Path to TLS key file")
    parser.add_argument("-v", "--version", action="store_true", help="Print version information and quit")
    parser.set_defaults(handler=None, parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    swarm.register(commands)
    node.register(commands)
    service.register(commands)
    secret.register(commands)
    network.register(commands)
    stack.register(commands)
    daemon.register(commands)
    playground.register(commands)
    events.register(commands)
    dashboard.register(commands)
    version = commands.add_parser("version", help="Show the shoal version information")
    version.set_defaults(handler=run_version)
    info = commands.add_parser("info", help="Display system-wide information")
    info.set_defaults(handler=run_info)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command records its own parser, so usage errors and help name the right command."""
    parser.set_defaults(parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _remember_parsers(sub)


def run_version(ctx: CliContext, args: argparse.Namespace) -> int:
    ctx.print("Client:")
    ctx.print(f" Version:           {shoal.__version__}")
    ctx.print(f" API version:       {API_VERSION}")
    ctx.print(f" Python version:    {platform.python_version()}")
    ctx.print(f" OS/Arch:           {sys.platform}/{go_architecture(platform.machine())}")
    ctx.out.flush()
    server = ctx.client().get("/version") or {}
    ctx.print()
    ctx.print("Server:")
    ctx.print(" Engine:")
    ctx.print(f"  Version:          {server.get('Version', '')}")
    minimum = f" (minimum version {server['MinAPIVersion']})" if server.get("MinAPIVersion") else ""
    ctx.print(f"  API version:      {server.get('ApiVersion', '')}{minimum}")
    ctx.print(f"  OS/Arch:          {server.get('Os', '')}/{server.get('Arch', '')}")
    return 0


def run_info(ctx: CliContext, args: argparse.Namespace) -> int:
    info = ctx.client().get("/info") or {}
    swarm_info = info.get("Swarm") or {}
    state = swarm_info.get("LocalNodeState") or "inactive"
    lines = ["Server:", f" Name: {info.get('Name', '')}", f" Server Version: {info.get('ServerVersion', '')}",
             f" Swarm: {state}"]
    if state not in ("inactive", "locked"):
        lines.append(f"  NodeID: {swarm_info.get('NodeID', '')}")
        if swarm_info.get("Error"):
            lines.append(f"  Error: {swarm_info['Error']}")
        lines.append(f"  Is Manager: {'true' if swarm_info.get('ControlAvailable') else 'false'}")
        cluster = swarm_info.get("Cluster")
        if cluster and swarm_info.get("ControlAvailable"):
            lines.append(f"  ClusterID: {cluster.get('ID', '')}")
            lines.append(f"  Managers: {swarm_info.get('Managers', 0)}")
            lines.append(f"  Nodes: {swarm_info.get('Nodes', 0)}")
            limit = ((cluster.get("Spec") or {}).get("Orchestration") or {}).get("TaskHistoryRetentionLimit")
            lines.append(f"  Orchestration:\n   Task History Retention Limit: {limit if limit is not None else 5}")
        lines.append(f"  Node Address: {swarm_info.get('NodeAddr', '')}")
        managers = swarm_info.get("RemoteManagers") or []
        if managers:
            lines.append("  Manager Addresses:")
            lines += [f"   {m.get('Addr', '')}" for m in sorted(managers, key=lambda m: m.get("Addr", ""))]
    lines.append(f" OSType: {info.get('OSType', '')}")
    lines.append(f" Architecture: {info.get('Architecture', '')}")
    lines.append(f" CPUs: {info.get('NCPU', '')}")
    lines.append(f" Total Memory: {bytes_size(int(info.get('MemTotal') or 0))}")
    lines.append(f" ID: {info.get('ID', '')}")
    for line in lines:
        ctx.print(line)
    return 0


def _usage_hint(prog: str) -> str:
    return f"See '{prog} --help'."


def run(argv: list[str], ctx: CliContext) -> int:
    """Parse `argv` and run the command; every failure becomes one message on ctx.err."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            command_parser = getattr(args, "parser", parser)
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}", command_parser.prog)
    except UsageError as exc:
        ctx.err.write(f"shoal: error: {exc.message}\n{_usage_hint(exc.prog)}\n")
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2

    if args.version:
        ctx.print(f"shoal version {shoal.__version__}")
        return 0
    if args.handler is None:
        args.parser.print_help(ctx.out)
        return 0

    try:
        if args.host:
            ctx.host, ctx.host_is_explicit = resolve_host(args.host)
        ctx.tls = resolve_tls(args.tlscacert, args.tlscert, args.tlskey)
        return int(args.handler(ctx, args) or 0)
    except ApiError as exc:
        ctx.err.write(f"{exc}\n")
    except DaemonUnreachable as exc:
        ctx.err.write(f"{exc}\n")
    except (CliError, ShoalError) as exc:
        ctx.err.write(f"{exc.message}\n")
    except KeyboardInterrupt:
        ctx.err.write("\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`shoal service logs -f | head`): stop quietly, also at interpreter exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("SHOAL_DEBUG"):
            traceback.print_exc(file=ctx.err)
        else:
            ctx.err.write(f"shoal: unexpected error: {type(exc).__name__}: {exc} "
                          "(set SHOAL_DEBUG=1 for details)\n")
    finally:
        ctx.close()
    return 1


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else list(argv), CliContext())
