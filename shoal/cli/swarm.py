"""`shoal swarm init|join|join-token|leave|update|inspect|unlock|unlock-key|ca`."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from shoal import config
from shoal.api.client import ApiError
from shoal.cli.autostart import ensure_local_daemon
from shoal.cli.common import CliContext, CliError, print_json
from shoal.cli.spec import duration_flag, uint_flag


def register(commands: Any) -> None:
    swarm = commands.add_parser("swarm", help="Manage the swarm")
    swarm.set_defaults(handler=None)
    sub = swarm.add_subparsers(title="commands", metavar="COMMAND")

    init = sub.add_parser("init", help="Initialize a swarm")
    init.add_argument("--advertise-addr", metavar="IP", help="Advertised address (format: <ip|interface>[:port])")
    init.add_argument("--listen-addr", metavar="IP:PORT",
                      help="Listen address (default: the advertised address, port 2377)")
    init.add_argument("--force-new-cluster", action="store_true", help="Force create a new cluster from current state")
    init.add_argument("--cert-expiry", metavar="DURATION",
                      help="Validity period for node certificates (ns|us|ms|s|m|h) (default 2160h0m0s)")
    init.add_argument("--autolock", action="store_true",
                      help="Enable manager autolocking (requiring an unlock key to start a stopped manager)")
    init.add_argument("--task-history-limit", metavar="N", help="Task history retention limit (default 5)")
    init.add_argument("--state-dir", help="State directory of a daemon started for this command")
    init.set_defaults(handler=run_init)

    join = sub.add_parser("join", help="Join a swarm as a node and/or manager")
    join.add_argument("--token", required=True, help="Token for entry into the swarm")
    join.add_argument("--advertise-addr", metavar="IP", help="Advertised address (format: <ip|interface>[:port])")
    join.add_argument("--listen-addr", metavar="IP:PORT",
                      help="Listen address (default: the advertised address, port 2377)")
    join.add_argument("--state-dir", help="State directory of a daemon started for this command")
    join.add_argument("remote", metavar="HOST:PORT")
    join.set_defaults(handler=run_join)

    token = sub.add_parser("join-token", help="Manage join tokens")
    token.add_argument("-q", "--quiet", action="store_true", help="Only display token")
    token.add_argument("--rotate", action="store_true", help="Rotate join token")
    token.add_argument("role", metavar="(worker|manager)")
    token.set_defaults(handler=run_join_token)

    leave = sub.add_parser("leave", help="Leave the swarm")
    leave.add_argument("-f", "--force", action="store_true",
                       help="Force this node to leave the swarm, ignoring warnings")
    leave.set_defaults(handler=run_leave)

    update = sub.add_parser("update", help="Update the swarm")
    update.add_argument("--task-history-limit", metavar="N", help="Task history retention limit")
    update.add_argument("--cert-expiry", metavar="DURATION",
                        help="Validity period for node certificates (ns|us|ms|s|m|h)")
    # A bool flag, as docker's: `--autolock`, `--autolock=false`; None when not given.
    update.add_argument("--autolock", action="store_true", default=None,
                        help="Change manager autolocking setting (--autolock=true|false)")
    update.set_defaults(handler=run_update)

    inspect = sub.add_parser("inspect", help="Display the swarm's details")
    inspect.set_defaults(handler=run_inspect)

    unlock = sub.add_parser("unlock", help="Unlock swarm")
    unlock.set_defaults(handler=run_unlock)

    ca = sub.add_parser("ca", help="Display and rotate the root CA")
    ca.add_argument("--rotate", action="store_true", help="Rotate the swarm CA: a new root for every node")
    ca.add_argument("-d", "--detach", action="store_true",
                    help="Exit immediately instead of waiting for the root rotation to finish")
    ca.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    ca.set_defaults(handler=run_ca)

    unlock_key = sub.add_parser("unlock-key", help="Manage the unlock key")
    unlock_key.add_argument("-q", "--quiet", action="store_true", help="Only display the key")
    unlock_key.add_argument("--rotate", action="store_true", help="Rotate the unlock key")
    unlock_key.set_defaults(handler=run_unlock_key)


def default_listen_addr(advertise: str | None) -> str:
    """The advertised address on port 2377, so several nodes can share one machine (docker: 0.0.0.0:2377)."""
    if not advertise:
        return f"0.0.0.0:{config.DEFAULT_PORT}"
    if advertise.startswith("["):  # [v6]:port or [v6]
        return advertise if "]:" in advertise else f"{advertise}:{config.DEFAULT_PORT}"
    if advertise.count(":") == 1:
        return advertise
    if ":" in advertise:  # bare IPv6 address
        return f"[{advertise}]:{config.DEFAULT_PORT}"
    return f"{advertise}:{config.DEFAULT_PORT}"


def init_request(args: argparse.Namespace) -> dict[str, Any]:
    orchestration: dict[str, Any] = {}
    if args.task_history_limit is not None:
        orchestration["TaskHistoryRetentionLimit"] = uint_flag("--task-history-limit", args.task_history_limit)
    return {
        "ListenAddr": args.listen_addr or default_listen_addr(args.advertise_addr),
        "AdvertiseAddr": args.advertise_addr or "",
        "DataPathAddr": "",
        "DataPathPort": 0,
        "ForceNewCluster": bool(args.force_new_cluster),
        "Spec": {
            "Labels": None,
            "Orchestration": orchestration,
            "Raft": {"ElectionTick": 0, "HeartbeatTick": 0},
            "Dispatcher": {},
            "CAConfig": ({"NodeCertExpiry": duration_flag("--cert-expiry", args.cert_expiry)}
                         if args.cert_expiry else {}),
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": bool(args.autolock)},
        },
        "AutoLockManagers": bool(args.autolock),
        "Availability": "",
        "DefaultAddrPool": [],
        "SubnetSize": 24,
    }


def join_request(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "ListenAddr": args.listen_addr or default_listen_addr(args.advertise_addr),
        "AdvertiseAddr": args.advertise_addr or "",
        "DataPathAddr": "",
        "RemoteAddrs": [args.remote],
        "JoinToken": args.token,
        "Availability": "",
    }


def print_join_command(ctx: CliContext, node_id: str, worker: bool, manager: bool) -> None:
    client = ctx.client()
    node = client.get(f"/nodes/{node_id}")
    swarm = client.get("/swarm")
    manager_status = node.get("ManagerStatus")
    if not manager_status:
        return
    address = manager_status.get("Addr", "")
    tokens = swarm.get("JoinTokens") or {}
    for role, wanted in (("worker", worker), ("manager", manager)):
        if wanted:
            ctx.print(f"To add a {role} to this swarm, run the following command:\n\n"
                      f"    shoal swarm join --token {tokens.get(role.capitalize(), '')} {address}\n")


def run_init(ctx: CliContext, args: argparse.Namespace) -> int:
    body = init_request(args)
    ensure_local_daemon(ctx, args.state_dir)
    try:
        node_id = ctx.client().post("/swarm/init", json=body)
    except ApiError as exc:
        if "could not choose an IP address to advertise" in exc.message:
            exc.message += " - specify one with --advertise-addr"
        raise
    ctx.print(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    print_join_command(ctx, str(node_id), worker=True, manager=False)
    ctx.print("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n")
    if args.autolock:
        print_unlock_key(ctx, str(ctx.client().get("/swarm/unlockkey")["UnlockKey"]))
    return 0


def print_unlock_key(ctx: CliContext, key: str) -> None:
    ctx.print("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n"
              "command and provide the following key:\n\n"
              f"    {key}\n\n"
              "Please remember to store this key in a password manager, since without it you\n"
              "will not be able to restart the manager.")


def run_join(ctx: CliContext, args: argparse.Namespace) -> int:
    body = join_request(args)
    ensure_local_daemon(ctx, args.state_dir)
    client = ctx.client()
    client.post("/swarm/join", json=body)
    info = client.get("/info") or {}
    role = "manager" if (info.get("Swarm") or {}).get("ControlAvailable") else "worker"
    ctx.print(f"This node joined a swarm as a {role}.")
    return 0


def run_join_token(ctx: CliContext, args: argparse.Namespace) -> int:
    role = args.role
    if role not in ("worker", "manager"):
        raise CliError(f"unknown role {role}")
    client = ctx.client()
    if args.rotate:
        swarm = client.get("/swarm")
        params = {
            "rotateManagerToken": "true" if role == "manager" else "false",
            "rotateManagerUnlockKey": "false",
            "rotateWorkerToken": "true" if role == "worker" else "false",
            "version": swarm["Version"]["Index"],
        }
        client.post("/swarm/update", params=params, json=swarm["Spec"])
        if not args.quiet:
            ctx.print(f"Successfully rotated {role} join token.\n")
    swarm = client.get("/swarm")
    if args.quiet:
        ctx.print(str((swarm.get("JoinTokens") or {}).get(role.capitalize(), "")))
        return 0
    info = client.get("/info") or {}
    print_join_command(ctx, str((info.get("Swarm") or {}).get("NodeID") or ""),
                       worker=role == "worker", manager=role == "manager")
    return 0


def run_leave(ctx: CliContext, args: argparse.Namespace) -> int:
    ctx.client().post("/swarm/leave", params={"force": "1"} if args.force else None)
    ctx.print("Node left the swarm.")
    return 0


def run_update(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.task_history_limit is None and args.autolock is None and args.cert_expiry is None:
        raise CliError("nothing to update: use --task-history-limit N, --cert-expiry DURATION or "
                       "--autolock=true|false")
    client = ctx.client()
    swarm = client.get("/swarm")
    spec = swarm["Spec"]
    if args.task_history_limit is not None:
        limit = uint_flag("--task-history-limit", args.task_history_limit)
        spec.setdefault("Orchestration", {})["TaskHistoryRetentionLimit"] = limit
    if args.cert_expiry is not None:
        spec.setdefault("CAConfig", {})["NodeCertExpiry"] = duration_flag("--cert-expiry", args.cert_expiry)
    was_locked = bool((spec.get("EncryptionConfig") or {}).get("AutoLockManagers"))
    if args.autolock is not None:
        spec.setdefault("EncryptionConfig", {})["AutoLockManagers"] = args.autolock
    params = {"rotateManagerToken": "false", "rotateManagerUnlockKey": "false", "rotateWorkerToken": "false",
              "version": swarm["Version"]["Index"]}
    client.post("/swarm/update", params=params, json=spec)
    ctx.print("Swarm updated.")
    if args.autolock and not was_locked:
        print_unlock_key(ctx, str(client.get("/swarm/unlockkey")["UnlockKey"]))
    return 0


def run_unlock(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    state = ((client.get("/info") or {}).get("Swarm") or {}).get("LocalNodeState")
    if state != "locked":
        raise CliError("swarm is not locked: nothing to unlock")
    key = getpass.getpass("Please enter unlock key: ") if sys.stdin.isatty() else sys.stdin.readline()
    client.post("/swarm/unlock", json={"UnlockKey": key.strip()})
    return 0


def run_unlock_key(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    if args.rotate:
        swarm = client.get("/swarm")
        if not (swarm["Spec"].get("EncryptionConfig") or {}).get("AutoLockManagers"):
            raise CliError("cannot rotate because autolock is not turned on: turn it on with \"shoal swarm update --autolock=true\"")
        params = {"rotateManagerToken": "false", "rotateManagerUnlockKey": "true", "rotateWorkerToken": "false",
                  "version": swarm["Version"]["Index"]}
        client.post("/swarm/update", params=params, json=swarm["Spec"])
        if not args.quiet:
            ctx.print("Successfully rotated manager unlock key.\n")
    key = str(client.get("/swarm/unlockkey")["UnlockKey"])
    if args.quiet:
        ctx.print(key)
    else:
        print_unlock_key(ctx, key)
    return 0


def run_inspect(ctx: CliContext, args: argparse.Namespace) -> int:
    print_json(ctx, ctx.client().get("/swarm"))
    return 0


ROTATION_POLL = 0.5


def run_ca(ctx: CliContext, args: argparse.Namespace) -> int:
    client = ctx.client()
    swarm = client.get("/swarm")
    if args.rotate:
        spec = swarm["Spec"]
        ca_config = spec.setdefault("CAConfig", {})
        ca_config["ForceRotate"] = int(ca_config.get("ForceRotate") or 0) + 1
        params = {"rotateManagerToken": "false", "rotateManagerUnlockKey": "false", "rotateWorkerToken": "false",
                  "version": swarm["Version"]["Index"]}
        client.post("/swarm/update", params=params, json=spec)
        if args.detach:
            return 0
        swarm = wait_for_rotation(ctx, args.quiet)
    ctx.print(str((swarm.get("TLSInfo") or {}).get("TrustRoot") or "").rstrip("\n"))
    return 0


def wait_for_rotation(ctx: CliContext, quiet: bool) -> dict[str, Any]:
    """Show how many nodes run on a certificate of the new root until the rotation ends (as docker does)."""
    client = ctx.client()
    shown = ""
    while True:
        swarm = client.get("/swarm")
        if not swarm.get("RootRotationInProgress"):
            return dict(swarm)
        nodes = [n for n in client.get("/nodes") if (n.get("Status") or {}).get("State") != "down"]
        line = f"rotated TLS certificates: {_on_new_root(swarm, nodes)}/{len(nodes)} nodes"
        if line != shown and not quiet:
            print(line, file=sys.stderr, flush=True)
            shown = line
        time.sleep(ROTATION_POLL)


def _on_new_root(swarm: dict[str, Any], nodes: list[dict[str, Any]]) -> int:
    """Nodes whose certificate no longer comes from the old root (GET /swarm names it until the end)."""
    old = (swarm.get("TLSInfo") or {}).get("CertIssuerPublicKey")
    issuers = [((n.get("Description") or {}).get("TLSInfo") or {}).get("CertIssuerPublicKey") for n in nodes]
    return sum(1 for issuer in issuers if issuer and issuer != old)
