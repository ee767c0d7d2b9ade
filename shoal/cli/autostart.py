"""Starting a local daemon in the background for `swarm init` / `swarm join` when none answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shoal import config
from shoal.cli.common import CliContext, CliError

START_DEADLINE = 30.0


def start_daemon(state_dir: Path, socket: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Launch `python -m shoal daemon` detached from this terminal, logging to <state_dir>/daemon.log."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "daemon.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    except OSError as exc:
        raise CliError(f"cannot start the shoal daemon: {state_dir}: {exc.strerror or exc}") from exc
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal", "daemon", "--state-dir", str(state_dir), "--socket", str(socket)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    finally:
        log.close()
    return process, log_path


def wait_for(ready: Callable[[], bool], alive: Callable[[], bool], deadline: float,
             monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll `ready` until it holds, the process died, or the deadline passed."""
    end = monotonic() + deadline
    while monotonic() < end:
        if ready():
            return True
        if not alive():
            return ready()
        sleep(0.1)
    return ready()


def ensure_local_daemon(ctx: CliContext, state_dir: str | None) -> None:
    """Start a daemon on the local socket unless one answers (or the user pointed us at a host)."""
    client = ctx.client()
    if ctx.host_is_explicit or client.ping():
        return
    host = ctx.host or ""
    if not host.startswith("unix://"):
        return
    socket = Path(host[len("unix://"):])
    directory = Path(state_dir) if state_dir else config.DEFAULT_STATE_DIR
    process, log_path = start_daemon(directory, socket)
    if not wait_for(client.ping, lambda: process.poll() is None, START_DEADLINE):
        if process.poll() is None:
            raise CliError(f"the shoal daemon did not answer within {START_DEADLINE:.0f} seconds; see {log_path}")
        raise CliError(f"the shoal daemon exited with status {process.returncode}; see {log_path}")
    ctx.warn(f"Started the shoal daemon in the background (pid {process.pid}, log {log_path}).")
