"""`shoal dashboard`: the swarm in a browser, through a bridge on a loopback port (`shoal.ui.bridge`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import webbrowser
from typing import Any

from shoal.api.client import Endpoint
from shoal.cli.common import CliContext, CliError
from shoal.ui import bridge


def register(commands: Any) -> None:
    parser = commands.add_parser("dashboard", help="Open a live web dashboard of the swarm in a browser")
    parser.add_argument("--no-browser", action="store_true",
                        help="Print the dashboard's link without opening a browser")
    parser.add_argument("--port", type=_port, default=0,
                        help="Loopback port of the dashboard (default: a free one)")
    parser.set_defaults(handler=run_dashboard)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: give a number from 0 to 65535")
    return int(value)


def has_display() -> bool:
    """Whether a graphical browser can open here; elsewhere `webbrowser` would start a text browser in this
    terminal (or nothing)."""
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_dashboard(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    client.get("/nodes")  # the daemon answers and is a manager: else its one-line error, before any link
    assert ctx.host is not None
    try:
        endpoint = Endpoint.of(ctx.host, ctx.tls)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from exc
    try:
        sock = bridge.loopback_socket(args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    open_browser = not args.no_browser and has_display()

    def announce(url: str) -> None:
        ctx.print(f"Dashboard of {ctx.host}: {url}")
        ctx.print("The link works once. Press Ctrl-C to stop the dashboard.")
        if not args.no_browser and not open_browser:
            ctx.print("No display here: open the link in a browser (from another machine: run with --port N "
                      "and `ssh -L N:127.0.0.1:N` to this one).")
        ctx.out.flush()
        if open_browser:
            # On a thread: some browsers' launchers wait for the browser.
            asyncio.get_running_loop().run_in_executor(None, webbrowser.open, url)

    try:
        asyncio.run(bridge.serve(endpoint, ctx.host, sock, announce))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0
