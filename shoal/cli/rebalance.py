"""`shoal service rebalance` and `shoal node update --rebalance`: tasks back to an even spread, on request.

Docker leaves tasks where they are when a node returns; shoal moves them when asked, one batch at a time under
the service's update policy (`shoal.manager.orchestrator.rebalance`). The CLI shows the moves, then the
tasks per node until the move is over.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from shoal.api.client import ApiError, Client
from shoal.cli.common import CliContext, CliError
from shoal.cli.format import truncate_id
from shoal.types import Doc

WAIT_LIMIT = 600.0  # seconds: a rebalance is a rolling update, which may take long with a long delay
POLL = 0.5


def rebalance(ctx: CliContext, client: Client, service_ref: str) -> list[Doc]:
    """Ask the managers to rebalance one service; print and return the moves."""
    service = client.get(f"/services/{service_ref}")
    name = service["Spec"]["Name"]
    answer = client.post(f"/services/{service['ID']}/rebalance", params={"version": service["Version"]["Index"]})
    moves = list((answer or {}).get("Moves") or [])
    if not moves:
        ctx.print(f"{name}: already evenly spread, nothing to move")
        return []
    ctx.print(f"{name}: moving {len(moves)} task{'s' if len(moves) != 1 else ''}: " + ", ".join(
        f"{name}.{m['Slot']} ({truncate_id(str(m['TaskID']))}) from {m.get('Node') or m['NodeID']}" for m in moves))
    return moves


def spread_line(tasks: list[Doc], node_names: dict[str, str]) -> str:
    counts = Counter(node_names.get(str(t.get("NodeID")), str(t.get("NodeID")))
                     for t in tasks if (t.get("Status") or {}).get("State") == "running"
                     and t.get("DesiredState") == "running")
    return ", ".join(f"{node}: {count}" for node, count in sorted(counts.items()))


def wait_for_rebalance(ctx: CliContext, client: Client, service_id: str, quiet: bool) -> None:
    """Until the service's update status says the move is over; each change of the spread is printed."""
    node_names = {n["ID"]: (n.get("Description") or {}).get("Hostname") or n["ID"] for n in client.get("/nodes")}
    deadline = time.monotonic() + WAIT_LIMIT
    shown = ""
    while time.monotonic() < deadline:
        service = client.get(f"/services/{service_id}")
        status = service.get("UpdateStatus") or {}
        tasks = client.get("/tasks", params={"filters": '{"service":["' + service_id + '"]}'})
        line = spread_line(tasks, node_names)
        if line != shown and not quiet:
            ctx.print(f"  running tasks per node: {line}")
            shown = line
        if status.get("State") == "completed":
            ctx.print(f"{service['Spec']['Name']}: rebalanced")
            return
        if status.get("State") in ("paused", "rollback_started", "rollback_paused"):
            raise CliError(f"rebalance of {service['Spec']['Name']} stopped: {status.get('Message') or status['State']}"
                           " (see `shoal service ps`)")
        time.sleep(POLL)
    raise CliError(f"rebalance still running after {WAIT_LIMIT:.0f}s: follow it with `shoal service ps {service_id}`")


def run_rebalance(ctx: CliContext, args: Any) -> int:
    client = ctx.client()
    service = client.get(f"/services/{args.service}")
    if rebalance(ctx, client, service["ID"]) and not args.detach:
        wait_for_rebalance(ctx, client, service["ID"], args.quiet)
    return 0


def rebalance_all(ctx: CliContext, client: Client) -> int:
    """Every replicated service that can be rebalanced (`node update --rebalance`); the others are named on
    stderr. Returns how many were refused."""
    refused = 0
    for service in client.get("/services"):
        if (service["Spec"].get("Mode") or {}).get("Replicated") is None:
            continue
        try:
            rebalance(ctx, client, service["ID"])
        except ApiError as exc:
            ctx.warn(f"{service['Spec']['Name']}: not rebalanced: {exc}")
            refused += 1
    return refused
