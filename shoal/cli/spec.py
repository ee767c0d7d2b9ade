"""Turning `service create` / `service update` flags into a ServiceSpec, exactly as the docker CLI does.

Pure: parsed arguments in, a JSON document out. Every bad value raises CliError naming its flag, before
anything is sent to the daemon.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
from fractions import Fraction
from typing import Any

from shoal.cli.common import CliError
from shoal.cli.container_flags import (
    dns_config,
    effective_capabilities,
    log_driver,
    oom_score_adj,
    parse_dns_search,
    parse_dns_server,
    parse_host,
    parse_key_value,
    parse_mount,
    ram_in_bytes,
    ulimits,
    update_capabilities,
    update_dns_config,
    update_hosts,
    update_mounts,
    updated_groups,
    updated_sysctls,
)
from shoal.errors import InvalidArgument
from shoal.spec import (
    DEFAULT_RESTART_POLICY,
    DEFAULT_UPDATE_CONFIG,
    ENDPOINT_MODES,
    GLOBAL,
    GLOBAL_JOB,
    JOB_MODES,
    MODE_NAMES,
    PORT_PROTOCOLS,
    PUBLISH_MODES,
    REPLICATED,
    REPLICATED_JOB,
    RESTART_CONDITIONS,
    ROLLBACK_FAILURE_ACTIONS,
    UPDATE_FAILURE_ACTIONS,
    UPDATE_ORDERS,
    parse_spread_descriptor,
)
from shoal.timefmt import parse_duration
from shoal.types import Doc

# What Go's big.Rat reads for --limit-cpu: "0.5", "-1", "3/4", "1e-3" (Fraction alone would also take " 1_0 ").
_RATIONAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:/\d+)?")


def _bad(flag: str, value: str, why: str) -> CliError:
    return CliError(f'invalid argument "{value}" for "{flag}" flag: {why}')


# ---- flag registration ----------------------------------------------------------------------------------

def add_common_service_flags(parser: argparse.ArgumentParser) -> None:
    """Flags `service create` and `service update` share (docker's addServiceFlags)."""
    parser.add_argument("-d", "--detach", action="store_true",
                        help="Exit immediately instead of waiting for the service to converge")
    parser.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    parser.add_argument("-w", "--workdir", help="Working directory inside the container")
    parser.add_argument("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])")
    parser.add_argument("--entrypoint", help="Overwrite the default ENTRYPOINT of the image")
    parser.add_argument("--stop-grace-period", metavar="DURATION",
                        help="Time to wait before force killing a container (ns|us|ms|s|m|h) (default 10s)")
    parser.add_argument("--stop-signal", help="Signal to stop the container")
    parser.add_argument("--replicas", metavar="N", help="Number of tasks")
    parser.add_argument("--replicas-max-per-node", metavar="N",
                        help="Maximum number of tasks per node (default 0 = unlimited)")
    parser.add_argument("--max-concurrent", metavar="N",
                        help="Number of job tasks to run concurrently (default equal to --replicas)")
    parser.add_argument("--restart-condition", metavar="CONDITION",
                        help='Restart when condition is met ("none", "on-failure", "any") (default "any")')
    parser.add_argument("--restart-delay", metavar="DURATION",
                        help="Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)")
    parser.add_argument("--restart-max-attempts", metavar="N", help="Maximum number of restarts before giving up")
    parser.add_argument("--restart-window", metavar="DURATION",
                        help="Window used to evaluate the restart policy (ns|us|ms|s|m|h)")
    for kind, what in (("update", "updated"), ("rollback", "rolled back")):
        parser.add_argument(f"--{kind}-delay", metavar="DURATION",
                            help=f"Delay between task {kind}s (ns|us|ms|s|m|h) (default 0s)")
        parser.add_argument(f"--{kind}-parallelism", metavar="N",
                            help=f"Maximum number of tasks {what} simultaneously (0 for all at once) (default 1)")
        parser.add_argument(f"--{kind}-failure-action", metavar="ACTION",
                            help=f'Action on {kind} failure ("pause", "continue"'
                                 + (', "rollback"' if kind == "update" else "") + ') (default "pause")')
        parser.add_argument(f"--{kind}-monitor", metavar="DURATION",
                            help=f"Duration after each task {kind} to monitor for failure (default 5s)")
        parser.add_argument(f"--{kind}-max-failure-ratio", metavar="RATIO",
                            help=f"Failure rate to tolerate during a {kind} (default 0)")
        parser.add_argument(f"--{kind}-order", metavar="ORDER",
                            help=f'{kind.capitalize()} order ("start-first", "stop-first") (default "stop-first")')
    parser.add_argument("--health-cmd", metavar="CMD", help="Command to run to check health")
    parser.add_argument("--health-interval", metavar="DURATION", help="Time between running the check")
    parser.add_argument("--health-timeout", metavar="DURATION", help="Maximum time to allow one check to run")
    parser.add_argument("--health-retries", metavar="N", help="Consecutive failures needed to report unhealthy")
    parser.add_argument("--health-start-period", metavar="DURATION",
                        help="Start period for the container to initialize before counting retries")
    parser.add_argument("--no-healthcheck", action="store_true", help="Disable any container-specified HEALTHCHECK")
    parser.add_argument("--endpoint-mode", metavar="MODE", help='Endpoint mode (vip or dnsrr) (default "vip")')
    parser.add_argument("--limit-cpu", metavar="DECIMAL", help="Limit CPUs")
    parser.add_argument("--limit-memory", metavar="BYTES", help="Limit Memory")
    parser.add_argument("--limit-pids", metavar="N", help="Limit maximum number of processes (default 0 = unlimited)")
    parser.add_argument("--reserve-cpu", metavar="DECIMAL", help="Reserve CPUs")
    parser.add_argument("--reserve-memory", metavar="BYTES", help="Reserve Memory")
    parser.add_argument("--hostname", help="Container hostname")
    parser.add_argument("--cap-add", action="append", metavar="CAPABILITY", help="Add Linux capabilities")
    parser.add_argument("--cap-drop", action="append", metavar="CAPABILITY", help="Drop Linux capabilities")
    parser.add_argument("--log-driver", metavar="DRIVER", help="Logging driver for service")
    parser.add_argument("--log-opt", action="append", metavar="K=V", help="Logging driver options")
    # Bools that `service update` sets only when given (`--tty=false` clears), hence no False default.
    parser.add_argument("-t", "--tty", action="store_true", default=None, help="Allocate a pseudo-TTY")
    parser.add_argument("--read-only", action="store_true", default=None,
                        help="Mount the container's root filesystem as read only")
    parser.add_argument("--init", action="store_true", default=None,
                        help="Use an init inside each service container to forward signals and reap processes")
    parser.add_argument("--oom-score-adj", metavar="N", help="Tune host's OOM preferences (-1000 to 1000)")


def add_create_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="Service name")
    parser.add_argument("--mode", help='Service mode ("replicated", "global", "replicated-job", "global-job") '
                                       '(default "replicated")')
    parser.add_argument("-p", "--publish", action="append", metavar="PORT", help="Publish a port as a node port")
    parser.add_argument("-e", "--env", action="append", metavar="K=V", help="Set environment variables")
    parser.add_argument("-l", "--label", action="append", metavar="K=V", help="Service labels")
    parser.add_argument("--constraint", action="append", metavar="EXPR", help="Placement constraints")
    parser.add_argument("--placement-pref", action="append", metavar="PREF",
                        help="Add a placement preference, e.g. spread=node.labels.zone")
    parser.add_argument("--network", action="append", metavar="NETWORK",
                        help="Network attachments (NAME or name=NAME,alias=ALIAS,driver-opt=K=V)")
    parser.add_argument("--secret", action="append", metavar="SECRET",
                        help="Specify secrets to expose to the service (NAME or source=NAME,target=FILE,uid=,gid=,"
                             "mode=0400)")
    parser.add_argument("--config", action="append", metavar="CONFIG",
                        help="Specify configurations to expose to the service (NAME or source=NAME,target=PATH,"
                             "mode=0444)")
    parser.add_argument("--mount", action="append", metavar="MOUNT",
                        help="Attach a filesystem mount to the service (type=bind|volume|tmpfs,source=,target=,…)")
    parser.add_argument("--group", action="append", metavar="GROUP",
                        help="Set one or more supplementary user groups for the container")
    parser.add_argument("--dns", action="append", metavar="IP", help="Set custom DNS servers")
    parser.add_argument("--dns-option", action="append", metavar="OPTION", help="Set DNS options")
    parser.add_argument("--dns-search", action="append", metavar="DOMAIN", help="Set custom DNS search domains")
    # Not `host`: that is the CLI's own -H/--host, the daemon to talk to.
    parser.add_argument("--host", action="append", dest="extra_host", metavar="HOST:IP",
                        help="Set one or more custom host-to-IP mappings (host:ip)")
    parser.add_argument("--sysctl", action="append", metavar="K=V", help="Sysctl options")
    parser.add_argument("--ulimit", action="append", metavar="NAME=SOFT[:HARD]", help="Ulimit options")
    add_common_service_flags(parser)
    parser.add_argument("image", metavar="IMAGE")
    command = parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    command.required = False  # an image alone is a whole service


def add_update_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="Service image tag")
    parser.add_argument("--args", metavar="COMMAND", help="Service command args")
    parser.add_argument("--env-add", action="append", metavar="K=V", help="Add or update an environment variable")
    parser.add_argument("--env-rm", action="append", metavar="K", help="Remove an environment variable")
    parser.add_argument("--constraint-add", action="append", metavar="EXPR", help="Add or update a placement constraint")
    parser.add_argument("--constraint-rm", action="append", metavar="EXPR", help="Remove a constraint")
    parser.add_argument("--placement-pref-add", action="append", metavar="PREF", help="Add a placement preference")
    parser.add_argument("--placement-pref-rm", action="append", metavar="PREF", help="Remove a placement preference")
    parser.add_argument("--publish-add", action="append", metavar="PORT", help="Add or update a published port")
    parser.add_argument("--publish-rm", action="append", metavar="PORT", help="Remove a published port by its target port")
    parser.add_argument("--label-add", action="append", metavar="K=V", help="Add or update a service label")
    parser.add_argument("--label-rm", action="append", metavar="K", help="Remove a label by its key")
    parser.add_argument("--force", action="store_true", help="Force update even if no changes require it")
    parser.add_argument("--network-add", action="append", metavar="NETWORK", help="Add a network")
    parser.add_argument("--network-rm", action="append", metavar="NETWORK", help="Remove a network")
    for kind in ("secret", "config"):
        parser.add_argument(f"--{kind}-add", action="append", metavar=kind.upper(),
                            help=f"Add or update a {kind} on a service")
        parser.add_argument(f"--{kind}-rm", action="append", metavar="NAME", help=f"Remove a {kind}")
    for name, add_metavar, rm_metavar, what in (
            ("mount", "MOUNT", "TARGET", "a mount (removed by its target path)"),
            ("group", "GROUP", "GROUP", "a supplementary user group"),
            ("dns", "IP", "IP", "a custom DNS server"), ("dns-option", "OPTION", "OPTION", "a DNS option"),
            ("dns-search", "DOMAIN", "DOMAIN", "a custom DNS search domain"),
            ("host", "HOST:IP", "HOST[:IP]", 'a custom host-to-IP mapping ("host:ip")'),
            ("sysctl", "K=V", "K", "a Sysctl option"), ("ulimit", "NAME=SOFT[:HARD]", "NAME", "a ulimit option")):
        parser.add_argument(f"--{name}-add", action="append", metavar=add_metavar, help=f"Add or update {what}")
        parser.add_argument(f"--{name}-rm", action="append", metavar=rm_metavar, help=f"Remove {what}")
    add_common_service_flags(parser)
    parser.add_argument("service", metavar="SERVICE")


# ---- value parsers --------------------------------------------------------------------------------------

def duration_flag(flag: str, value: str) -> int:
    try:
        return parse_duration(value)
    except InvalidArgument as exc:
        raise _bad(flag, value, exc.message) from None


def uint_flag(flag: str, value: str) -> int:
    text = value.strip()
    if not re.fullmatch(r"\d+", text):
        raise _bad(flag, value, "must be a non-negative integer")
    return int(text)


def float_flag(flag: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _bad(flag, value, "must be a number") from None
    if not 0 <= number <= 1:
        raise _bad(flag, value, "must be between 0 and 1")
    return number


def cpus_flag(flag: str, value: str) -> int:
    """docker's opts.NanoCPUs: a rational number of CPUs ("0.5", "1.25", "3/4", "1e-3") → NanoCPUs."""
    text = value.strip()
    try:
        cpus = Fraction(text) if _RATIONAL.fullmatch(text) else None
    except (ValueError, ZeroDivisionError):
        cpus = None
    if cpus is None:
        raise _bad(flag, value, f"failed to parse {value} as a rational number")
    nano = cpus * 1_000_000_000
    if nano.denominator != 1:
        raise _bad(flag, value, "value is too precise (the unit is a billionth of a CPU)")
    if nano < 0:
        raise _bad(flag, value, "must not be negative")
    return int(nano)


def memory_flag(flag: str, value: str) -> int:
    """docker's opts.MemBytes (go-units RAMInBytes, `ram_in_bytes`)."""
    size = ram_in_bytes(value)
    if size is None:
        raise _bad(flag, value, f"invalid size: '{value}'")
    return size


def choice_flag(flag: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _bad(flag, value, "must be one of " + ", ".join(f'"{c}"' for c in choices))
    return value


def env_entry(value: str) -> str:
    """docker's ValidateEnv: "K=V" as is; a bare "K" takes its value from this shell if set."""
    if "=" in value:
        if value.startswith("="):
            raise CliError(f"invalid environment variable: {value}")
        return value
    return f"{value}={os.environ[value]}" if value in os.environ else value


def labels_map(values: list[str] | None, flag: str = "--label") -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values or []:
        key, _, val = value.partition("=")
        if not key:
            raise _bad(flag, value, "label key is empty")
        labels[key] = val
    return labels


def _port_range(flag: str, spec: str, text: str, what: str, allow_zero: bool) -> list[int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise _bad(flag, spec, f"invalid {what}: {text}")
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else start
    low = 0 if allow_zero else 1
    if not (low <= start <= 65535 and low <= end <= 65535) or end < start:
        raise _bad(flag, spec, f"invalid {what}: {text}")
    return list(range(start, end + 1))


def _port(protocol: str, target: int, published: int, mode: str = "ingress") -> Doc:
    return {"Protocol": protocol, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}


def parse_publish(value: str, flag: str = "-p, --publish") -> list[Doc]:
    """`8080:80`, `80`, `8080:80/udp`, `8080-8081:80-81`, or `published=8080,target=80,protocol=tcp,mode=host`."""
    if re.search(r"\w+=\w+", value):
        return [_parse_long_publish(value, flag)]
    text, _, protocol = value.partition("/")
    protocol = protocol.lower() or "tcp"
    if protocol not in PORT_PROTOCOLS:
        raise _bad(flag, value, f"invalid proto: {protocol} (the routing mesh forwards tcp and udp)")
    parts = text.split(":")
    if len(parts) == 3:
        if parts[0]:
            raise _bad(flag, value, "hostip is not supported")
        parts = parts[1:]
    if len(parts) > 2 or not parts[-1]:
        raise _bad(flag, value, "invalid port format, use [published:]target[/protocol]")
    targets = _port_range(flag, value, parts[-1], "containerPort", allow_zero=False)
    published_text = parts[0] if len(parts) == 2 else ""
    if not published_text:
        return [_port(protocol, t, 0) for t in targets]
    published = _port_range(flag, value, published_text, "hostPort", allow_zero=True)
    if len(targets) == len(published):
        return [_port(protocol, t, p) for t, p in zip(targets, published, strict=True)]
    if len(targets) == 1:
        return [_port(protocol, targets[0], p) for p in published]
    raise _bad(flag, value, f"invalid ranges specified for container and host Ports: {parts[-1]} and {published_text}")


def _parse_long_publish(value: str, flag: str) -> Doc:
    port: Doc = {"Protocol": "", "TargetPort": 0, "PublishedPort": 0, "PublishMode": ""}
    for field in value.split(","):
        key, sep, val = field.partition("=")
        if not sep or not key:
            raise _bad(flag, value, f"invalid field: {field}")
        key = key.lower()
        if key == "protocol":
            if val not in PORT_PROTOCOLS:
                raise _bad(flag, value, f"invalid protocol value '{val}': use tcp or udp")
            port["Protocol"] = val
        elif key == "mode":
            if val not in PUBLISH_MODES:
                raise _bad(flag, value, f"invalid publish mode value ({val}): must be either 'ingress' or 'host'")
            port["PublishMode"] = val
        elif key == "target":
            port["TargetPort"] = _single_port(flag, value, val)
        elif key == "published":
            port["PublishedPort"] = _single_port(flag, value, val)
        else:
            raise _bad(flag, value, f"invalid field key: {key}")
    if not port["TargetPort"]:
        raise _bad(flag, value, "missing mandatory field 'target'")
    port["Protocol"] = port["Protocol"] or "tcp"
    port["PublishMode"] = port["PublishMode"] or "ingress"
    return port


def _single_port(flag: str, spec: str, text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) > 65535:
        raise _bad(flag, spec, f"invalid port value: {text}")
    return int(text)


# ---- spec pieces ----------------------------------------------------------------------------------------

def _flag(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def default_update_config() -> Doc:
    """swarmkit's defaults, which docker fills in before applying any update/rollback flag."""
    return {**DEFAULT_UPDATE_CONFIG, "Delay": 0}


def _update_flags_set(args: argparse.Namespace, kind: str) -> bool:
    return any(_flag(args, f"{kind}_{name}") is not None
               for name in ("parallelism", "delay", "monitor", "failure_action", "max_failure_ratio", "order"))


def apply_update_config(args: argparse.Namespace, kind: str, current: Doc | None) -> Doc | None:
    """UpdateConfig (kind "update") or RollbackConfig (kind "rollback") with the flags applied."""
    if not _update_flags_set(args, kind):
        return current
    config = copy.deepcopy(current) if current else default_update_config()
    value = _flag(args, f"{kind}_parallelism")
    if value is not None:
        config["Parallelism"] = uint_flag(f"--{kind}-parallelism", value)
    value = _flag(args, f"{kind}_delay")
    if value is not None:
        config["Delay"] = duration_flag(f"--{kind}-delay", value)
    value = _flag(args, f"{kind}_failure_action")
    if value is not None:
        actions = UPDATE_FAILURE_ACTIONS if kind == "update" else ROLLBACK_FAILURE_ACTIONS
        config["FailureAction"] = choice_flag(f"--{kind}-failure-action", value, actions)
    value = _flag(args, f"{kind}_monitor")
    if value is not None:
        config["Monitor"] = duration_flag(f"--{kind}-monitor", value)
    value = _flag(args, f"{kind}_max_failure_ratio")
    if value is not None:
        config["MaxFailureRatio"] = float_flag(f"--{kind}-max-failure-ratio", value)
    value = _flag(args, f"{kind}_order")
    if value is not None:
        config["Order"] = choice_flag(f"--{kind}-order", value, UPDATE_ORDERS)
    return config


def apply_restart_policy(args: argparse.Namespace, current: Doc | None) -> Doc | None:
    names = ("restart_condition", "restart_delay", "restart_max_attempts", "restart_window")
    if all(_flag(args, n) is None for n in names):
        return current
    policy = copy.deepcopy(current or DEFAULT_RESTART_POLICY)
    if args.restart_condition is not None:
        policy["Condition"] = choice_flag("--restart-condition", args.restart_condition, RESTART_CONDITIONS)
    if args.restart_delay is not None:
        policy["Delay"] = duration_flag("--restart-delay", args.restart_delay)
    if args.restart_max_attempts is not None:
        policy["MaxAttempts"] = uint_flag("--restart-max-attempts", args.restart_max_attempts)
    if args.restart_window is not None:
        policy["Window"] = duration_flag("--restart-window", args.restart_window)
    return policy


def apply_healthcheck(args: argparse.Namespace, current: Doc | None) -> Doc | None:
    settings = ("health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period")
    have_settings = any(_flag(args, n) is not None for n in settings)
    if args.no_healthcheck:
        if have_settings:
            raise CliError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not have_settings:
        return current
    health = copy.deepcopy(current) if current else {}
    if health.get("Test") and health["Test"][0] == "NONE":
        health.pop("Test")
    if args.health_cmd is not None:
        if args.health_cmd:
            health["Test"] = ["CMD-SHELL", args.health_cmd]
        else:
            health.pop("Test", None)
    for name, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
        value = _flag(args, f"health_{name}")
        if value is not None:
            health[key] = duration_flag(f"--health-{name.replace('_', '-')}", value)
    if args.health_retries is not None:
        health["Retries"] = uint_flag("--health-retries", args.health_retries)
    # docker omits zero fields of HealthConfig.
    return {k: v for k, v in health.items() if v not in (0, None, [])}


def _apply_container_flags(args: argparse.Namespace, container: Doc) -> None:
    """The flags `service create` and `service update` both take, each set as given (an empty or false value
    clears a field: docker omits zero values)."""
    if args.entrypoint is not None:
        container["Command"] = _shell_words("--entrypoint", args.entrypoint)
    for name, key in (("hostname", "Hostname"), ("tty", "TTY"), ("read_only", "ReadOnly")):
        value = _flag(args, name)
        if value:
            container[key] = value
        elif value is not None:
            container.pop(key, None)
    if args.init is not None:
        container["Init"] = bool(args.init)
    if args.oom_score_adj is not None:
        score = oom_score_adj("--oom-score-adj", args.oom_score_adj)
        if score:
            container["OomScoreAdj"] = score
        else:
            container.pop("OomScoreAdj", None)
    if args.workdir is not None:
        container["Dir"] = args.workdir
    if args.user is not None:
        container["User"] = args.user
    if args.stop_signal is not None:
        container["StopSignal"] = args.stop_signal
    if args.stop_grace_period is not None:
        container["StopGracePeriod"] = duration_flag("--stop-grace-period", args.stop_grace_period)
    health = apply_healthcheck(args, container.get("Healthcheck"))
    if health is not None:
        container["Healthcheck"] = health


def _apply_create_container_flags(args: argparse.Namespace, container: Doc) -> None:
    """The container flags only `service create` takes (update has their -add / -rm forms)."""
    mounts = [parse_mount("--mount", value) for value in args.mount or []]
    if mounts:
        container["Mounts"] = mounts
    if args.group:
        container["Groups"] = list(args.group)
    container["DNSConfig"] = dns_config([parse_dns_server("--dns", value) for value in args.dns or []],
                                        [parse_dns_search("--dns-search", value) for value in args.dns_search or []],
                                        list(args.dns_option or []))
    hosts = [parse_host("--host", value) for value in args.extra_host or []]
    if hosts:
        container["Hosts"] = hosts
    sysctls = dict(parse_key_value("--sysctl", value, "net.core.somaxconn=1024") for value in args.sysctl or [])
    if sysctls:
        container["Sysctls"] = sysctls
    cap_add, cap_drop = effective_capabilities(args.cap_add, args.cap_drop)
    if cap_add:
        container["CapabilityAdd"] = cap_add
    if cap_drop:
        container["CapabilityDrop"] = cap_drop
    limits = ulimits("--ulimit", args.ulimit)
    if limits:
        container["Ulimits"] = limits


def _set_or_drop(container: Doc, key: str, value: Any) -> None:
    """docker omits an empty list or map: a field updated to nothing leaves the spec."""
    if value:
        container[key] = value
    else:
        container.pop(key, None)


def _apply_update_container_flags(args: argparse.Namespace, container: Doc) -> None:
    """The -add / -rm forms of the container flags, and --cap-add / --cap-drop, applied as docker's
    updateService applies them (each only when one of its flags is given)."""
    if args.mount_add or args.mount_rm:
        _set_or_drop(container, "Mounts", update_mounts(list(container.get("Mounts") or []), args.mount_add,
                                                        args.mount_rm))
    if args.group_add or args.group_rm:
        _set_or_drop(container, "Groups", updated_groups(list(container.get("Groups") or []), args.group_add,
                                                         args.group_rm))
    if any(_flag(args, f"{name}_{change}") for name in ("dns", "dns_option", "dns_search") for change in ("add", "rm")):
        container["DNSConfig"] = update_dns_config(container.get("DNSConfig"), args)
    if args.host_add or args.host_rm:
        _set_or_drop(container, "Hosts", update_hosts(list(container.get("Hosts") or []), args.host_add,
                                                       args.host_rm))
    if args.sysctl_add or args.sysctl_rm:
        _set_or_drop(container, "Sysctls", updated_sysctls(container.get("Sysctls"), args.sysctl_add,
                                                           args.sysctl_rm))
    if args.ulimit_add or args.ulimit_rm:
        _set_or_drop(container, "Ulimits", ulimits("--ulimit-add", args.ulimit_add, container.get("Ulimits"),
                                                   args.ulimit_rm))
    if args.cap_add or args.cap_drop:
        update_capabilities(container, args.cap_add, args.cap_drop)


def parse_placement_pref(flag: str, value: str) -> Doc:
    """`spread=node.labels.zone` → a Placement.Preferences entry (spread is the only strategy Docker has)."""
    strategy, found, argument = value.partition("=")
    if not found or not argument:
        raise _bad(flag, value, 'must be of the format "<strategy>=<arg>", e.g. spread=node.labels.zone')
    if strategy.lower() != "spread":
        raise _bad(flag, value, f"unsupported placement preference {strategy} (only spread is supported)")
    try:
        descriptor = parse_spread_descriptor(argument)
    except InvalidArgument as exc:
        raise CliError(exc.message) from None
    return {"Spread": {"SpreadDescriptor": descriptor}}


def _apply_placement_flags(args: argparse.Namespace, placement: Doc, add_flag: str) -> None:
    """Preferences added and removed (by value, as docker's --placement-pref-rm) and --replicas-max-per-node."""
    add, remove = _flag(args, add_flag.lstrip("-").replace("-", "_")), _flag(args, "placement_pref_rm")
    if add or remove:
        removed = [parse_placement_pref("--placement-pref-rm", value) for value in remove or []]
        preferences = [p for p in placement.get("Preferences") or [] if p not in removed]
        preferences += [parse_placement_pref(add_flag, value) for value in add or []]
        if preferences:
            placement["Preferences"] = preferences
        else:
            placement.pop("Preferences", None)
    most = _flag(args, "replicas_max_per_node")
    if most is not None:
        placement["MaxReplicas"] = uint_flag("--replicas-max-per-node", most)


# (flag attribute, part of Resources, key, parser): the five resource flags, as docker's resourceOptions.
_RESOURCE_FLAGS = (
    ("limit_cpu", "Limits", "NanoCPUs", cpus_flag),
    ("limit_memory", "Limits", "MemoryBytes", memory_flag),
    ("limit_pids", "Limits", "Pids", uint_flag),
    ("reserve_cpu", "Reservations", "NanoCPUs", cpus_flag),
    ("reserve_memory", "Reservations", "MemoryBytes", memory_flag),
)


def apply_resources(args: argparse.Namespace, current: Doc | None) -> Doc:
    """TaskTemplate.Resources with the given --limit-* / --reserve-* flags applied; the others keep their value
    (0 clears a value: docker omits zero fields)."""
    resources = copy.deepcopy(current) if current else {}
    for name, part, key, parse in _RESOURCE_FLAGS:
        value = _flag(args, name)
        if value is None:
            continue
        number = parse(f"--{name.replace('_', '-')}", value)
        values = resources.get(part) or {}
        if number:
            values[key] = number
        else:
            values.pop(key, None)
        resources[part] = values
    return resources


def _resource_flags_given(args: argparse.Namespace) -> bool:
    return any(_flag(args, name) is not None for name, *_ in _RESOURCE_FLAGS)


def _shell_words(flag: str, value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise _bad(flag, value, str(exc)) from None


_CONTAINER_ORDER = ("Image", "Labels", "Command", "Args", "Hostname", "Env", "Dir", "User", "Groups",
                    "Privileges", "Init", "StopSignal", "TTY", "OpenStdin", "ReadOnly", "Mounts",
                    "StopGracePeriod", "Healthcheck", "Hosts", "DNSConfig", "Secrets", "Configs", "Isolation",
                    "Sysctls", "CapabilityAdd", "CapabilityDrop", "Ulimits", "OomScoreAdj")


def _ordered(doc: Doc, order: tuple[str, ...]) -> Doc:
    """Keys in the Go struct's order (as docker sends them), unknown keys last."""
    known = {k: doc[k] for k in order if k in doc}
    return known | {k: v for k, v in doc.items() if k not in known}


# ---- secrets and configs --------------------------------------------------------------------------------

_FILE_REF_KEYS = {"secret": ("Secrets", "SecretName"), "config": ("Configs", "ConfigName")}


def parse_file_ref(kind: str, flag: str, value: str) -> Doc:
    """docker's SecretOpt / ConfigOpt: "NAME", or "source=NAME,target=…,uid=…,gid=…,mode=0400" (csv).

    Only the name is sent; the daemon resolves it to the object's ID and refuses an unknown one.
    """
    fields = {"source": "", "target": "", "uid": "0", "gid": "0", "mode": "0444"}
    if "=" not in value and "," not in value:
        fields["source"] = value.strip()
    else:
        for part in value.split(","):
            key, sep, text = part.partition("=")
            key = key.strip().lower()
            if not sep:
                raise _bad(flag, value, f"invalid field '{part}' must be a key=value pair")
            if key == "src":
                key = "source"
            if key not in fields:
                raise _bad(flag, value, f"invalid field key '{key}': use source, target, uid, gid or mode")
            fields[key] = text.strip()
    if not fields["source"]:
        raise _bad(flag, value, "source is required")
    for key in ("uid", "gid"):
        if not fields[key].isdigit():
            raise _bad(flag, value, f"{key} must be a numeric id")
    try:
        mode = int(fields["mode"], 8)
    except ValueError:
        raise _bad(flag, value, f"mode {fields['mode']!r} is not an octal file mode such as 0400") from None
    if not 0 <= mode <= 0o7777:
        raise _bad(flag, value, f"mode {fields['mode']!r} is not a file mode")
    _, name_key = _FILE_REF_KEYS[kind]
    target = fields["target"] or fields["source"]
    return {"File": {"Name": target, "UID": fields["uid"], "GID": fields["gid"], "Mode": mode},
            name_key: fields["source"]}


def file_refs(kind: str, flag: str, values: list[str] | None) -> list[Doc]:
    refs = [parse_file_ref(kind, flag, value) for value in values or []]
    _check_targets(kind, refs)
    return refs


def _check_targets(kind: str, refs: list[Doc]) -> None:
    seen: set[str] = set()
    for ref in refs:
        target = str(ref["File"]["Name"])
        if target in seen:
            raise CliError(f"duplicate {kind} target for {ref[_FILE_REF_KEYS[kind][1]]} not allowed")
        seen.add(target)


def update_file_refs(kind: str, current: list[Doc], add: list[str] | None, remove: list[str] | None) -> list[Doc]:
    """docker's getUpdatedSecrets / getUpdatedConfigs: drop the removed names, then add (a new reference with
    the target of an old one replaces it, which is how a secret is rotated)."""
    _, name_key = _FILE_REF_KEYS[kind]
    added = file_refs(kind, f"--{kind}-add", add)
    removed = set(remove or [])
    targets = {str(ref["File"]["Name"]) for ref in added}
    kept = [ref for ref in current if ref.get(name_key) not in removed and ref.get(f"{kind.capitalize()}ID")
            not in removed and str((ref.get("File") or {}).get("Name")) not in targets]
    return kept + added


# ---- networks ---------------------------------------------------------------------------------------------

def parse_network(flag: str, value: str) -> Doc:
    """docker's NetworkOpt: "NAME", or "name=NAME,alias=A,alias=B,driver-opt=K=V" (csv)."""
    if "=" not in value:
        if not value.strip():
            raise _bad(flag, value, "network name is required")
        return {"Target": value.strip()}
    target, aliases, options = "", [], {}
    for part in value.split(","):
        key, sep, text = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise _bad(flag, value, f"invalid field '{part}' must be a key=value pair")
        if key in ("name", "target"):
            target = text.strip()
        elif key == "alias":
            aliases.append(text.strip())
        elif key == "driver-opt":
            opt_key, opt_sep, opt_value = text.partition("=")
            if not opt_sep:
                raise _bad(flag, value, f"invalid driver-opt '{text}': use driver-opt=KEY=VALUE")
            options[opt_key] = opt_value
        else:
            raise _bad(flag, value, f"invalid field key '{key}': use name, alias or driver-opt")
    if not target:
        raise _bad(flag, value, "network name is required")
    attachment: Doc = {"Target": target}
    if aliases:
        attachment["Aliases"] = aliases
    if options:
        attachment["DriverOpts"] = options
    return attachment


def _endpoint_mode(args: argparse.Namespace, endpoint: Doc) -> None:
    if args.endpoint_mode is not None:
        endpoint["Mode"] = choice_flag("--endpoint-mode", args.endpoint_mode, ENDPOINT_MODES)


# ---- create ---------------------------------------------------------------------------------------------

def service_mode_flags(args: argparse.Namespace) -> Doc:
    """Spec.Mode from --mode, --replicas and --max-concurrent (docker's ToServiceMode)."""
    by_name = {name: key for key, name in MODE_NAMES.items()}
    kind = by_name.get(args.mode or MODE_NAMES[REPLICATED])
    if kind is None:
        raise CliError(f"Unknown mode: {args.mode}, only {', '.join(MODE_NAMES.values())} supported")
    replicas = None if args.replicas is None else uint_flag("--replicas", args.replicas)
    concurrent = None if args.max_concurrent is None else uint_flag("--max-concurrent", args.max_concurrent)
    if concurrent is not None and kind != REPLICATED_JOB:
        raise CliError("max-concurrent can only be used with replicated-job mode")
    if replicas is not None and kind in (GLOBAL, GLOBAL_JOB):
        raise CliError("replicas can only be used with replicated or replicated-job mode")
    if kind in (GLOBAL, GLOBAL_JOB):
        return {kind: {}}
    if kind == REPLICATED:
        return {REPLICATED: {} if replicas is None else {"Replicas": replicas}}
    # --replicas is the number of completions, and how many run at once unless --max-concurrent says.
    job: Doc = {}
    if concurrent is not None or replicas is not None:
        job["MaxConcurrent"] = replicas if concurrent is None else concurrent
    if replicas is not None:
        job["TotalCompletions"] = replicas
    return {REPLICATED_JOB: job}


def build_service_spec(args: argparse.Namespace) -> Doc:
    """The ServiceSpec `service create` sends (docker's ToService), validating every flag first."""
    mode = service_mode_flags(args)
    if next(iter(mode)) in JOB_MODES and (_update_flags_set(args, "update") or _update_flags_set(args, "rollback")):
        raise CliError("update and rollback configuration is not supported for jobs")

    ports = [port for value in args.publish or [] for port in parse_publish(value)]
    env: list[str] = []
    for value in args.env or []:
        entry = env_entry(value)
        key = entry.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != key] + [entry]

    container: Doc = {"Image": args.image}
    if args.command:
        container["Args"] = list(args.command)
    if env:
        container["Env"] = env
    container["Init"] = False
    for kind in ("secret", "config"):
        refs = file_refs(kind, f"--{kind}", getattr(args, kind))
        if refs:
            container[_FILE_REF_KEYS[kind][0]] = refs
    _apply_container_flags(args, container)
    _apply_create_container_flags(args, container)

    task: Doc = {"ContainerSpec": _ordered(container, _CONTAINER_ORDER),
                 "Resources": apply_resources(args, {"Limits": {}, "Reservations": {}})}
    restart = apply_restart_policy(args, None)
    if restart is not None:
        task["RestartPolicy"] = restart
    task["Placement"] = {"Constraints": list(args.constraint)} if args.constraint else {}
    _apply_placement_flags(args, task["Placement"], "--placement-pref")
    networks = [parse_network("--network", value) for value in args.network or []]
    if networks:
        task["Networks"] = networks
    driver = log_driver(args.log_driver, args.log_opt, None)
    if driver is not None:
        task["LogDriver"] = driver
    task["ForceUpdate"] = 0

    spec: Doc = {}
    if args.name:
        spec["Name"] = args.name
    spec["Labels"] = labels_map(args.label)
    spec["TaskTemplate"] = task
    spec["Mode"] = mode
    update_config = apply_update_config(args, "update", None)
    if update_config is not None:
        spec["UpdateConfig"] = update_config
    rollback_config = apply_update_config(args, "rollback", None)
    if rollback_config is not None:
        spec["RollbackConfig"] = rollback_config
    endpoint: Doc = {"Mode": "vip"}
    _endpoint_mode(args, endpoint)
    if ports:
        endpoint["Ports"] = ports
    spec["EndpointSpec"] = endpoint
    return spec


# ---- update ---------------------------------------------------------------------------------------------

def _port_key(port: Doc) -> str:
    return (f"{port.get('PublishedPort', 0)}:{port.get('TargetPort', 0)}/"
            f"{port.get('Protocol') or 'tcp'}/{port.get('PublishMode') or 'ingress'}")


def _update_ports(current: list[Doc], add: list[str] | None, remove: list[str] | None) -> list[Doc]:
    by_key: dict[str, Doc] = {}
    for port in current:
        by_key.setdefault(_port_key(port), port)
    to_remove = [p for value in remove or [] for p in parse_publish(value, "--publish-rm")]
    kept = [
        port for port in by_key.values()
        if not any((port.get("Protocol") or "tcp") == r["Protocol"] and port.get("TargetPort") == r["TargetPort"]
                   and (port.get("PublishMode") or "ingress") == r["PublishMode"] for r in to_remove)
    ]
    for value in add or []:
        for port in parse_publish(value, "--publish-add"):
            if _port_key(port) not in by_key:
                kept.append(port)
    return sorted(kept, key=_port_key)


def apply_service_update(spec: Doc, args: argparse.Namespace) -> Doc:
    """The spec `service update` sends: the current one with every given flag applied (docker's updateService)."""
    spec = copy.deepcopy(spec)
    task = spec.setdefault("TaskTemplate", {})
    container = task.setdefault("ContainerSpec", {})

    if args.image is not None:
        container["Image"] = args.image
    if args.args is not None:
        container["Args"] = _shell_words("--args", args.args)
    if args.env_rm or args.env_add:
        removed = set(args.env_rm or [])
        env = [e for e in container.get("Env") or [] if e.split("=", 1)[0] not in removed]
        for value in args.env_add or []:
            entry = env_entry(value)
            key = entry.split("=", 1)[0]
            replaced = False
            for i, existing in enumerate(env):
                if existing.split("=", 1)[0] == key:
                    env[i] = entry
                    replaced = True
            if not replaced:
                env.append(entry)
        container["Env"] = env
    _apply_container_flags(args, container)
    _apply_update_container_flags(args, container)
    if args.log_driver is not None or args.log_opt:
        driver = log_driver(args.log_driver, args.log_opt, task.get("LogDriver"))
        if driver is not None:
            task["LogDriver"] = driver
    for kind in ("secret", "config"):
        add, remove = getattr(args, f"{kind}_add"), getattr(args, f"{kind}_rm")
        if add or remove:
            list_key = _FILE_REF_KEYS[kind][0]
            container[list_key] = update_file_refs(kind, list(container.get(list_key) or []), add, remove)

    if args.replicas is not None:
        replicas = uint_flag("--replicas", args.replicas)
        mode = spec.get("Mode") or {}
        if mode.get(REPLICATED) is not None:
            mode[REPLICATED]["Replicas"] = replicas
        elif mode.get(REPLICATED_JOB) is not None:
            mode[REPLICATED_JOB]["TotalCompletions"] = replicas
        else:
            raise CliError("replicas can only be used with replicated or replicated-job mode")
    if args.max_concurrent is not None:
        # docker accepts the flag on update and ignores it; shoal applies it.
        concurrent = uint_flag("--max-concurrent", args.max_concurrent)
        job = (spec.get("Mode") or {}).get(REPLICATED_JOB)
        if job is None:
            raise CliError("max-concurrent can only be used with replicated-job mode")
        job["MaxConcurrent"] = concurrent

    if args.constraint_add or args.constraint_rm:
        placement = task.get("Placement") or {}
        removed = set(args.constraint_rm or [])
        constraints = list(placement.get("Constraints") or []) + list(args.constraint_add or [])
        placement["Constraints"] = sorted(c for c in constraints if c not in removed)
        task["Placement"] = placement
    task["Placement"] = task.get("Placement") or {}
    _apply_placement_flags(args, task["Placement"], "--placement-pref-add")

    if args.publish_add or args.publish_rm or args.endpoint_mode is not None:
        endpoint = spec.get("EndpointSpec") or {"Mode": "vip"}
        if args.publish_add or args.publish_rm:
            endpoint["Ports"] = _update_ports(list(endpoint.get("Ports") or []), args.publish_add,
                                              args.publish_rm)
        _endpoint_mode(args, endpoint)
        spec["EndpointSpec"] = endpoint

    if args.network_add or args.network_rm:
        # `network_rm` holds names and IDs (the caller adds the IDs of the names, as the docker CLI does).
        removed = set(args.network_rm or [])
        networks = [n for n in task.get("Networks") or spec.pop("Networks", None) or [] if n.get("Target") not in removed]
        targets = {n.get("Target") for n in networks}
        for value in args.network_add or []:
            attachment = parse_network("--network-add", value)
            if attachment["Target"] in targets:
                raise CliError(f"service is already attached to network {attachment['Target']}")
            networks.append(attachment)
        task["Networks"] = networks

    if args.label_rm and spec.get("Labels"):
        for key in args.label_rm:
            spec["Labels"].pop(key, None)
    if args.label_add:
        spec["Labels"] = (spec.get("Labels") or {}) | labels_map(args.label_add, "--label-add")

    if _resource_flags_given(args):
        task["Resources"] = apply_resources(args, task.get("Resources"))
    restart = apply_restart_policy(args, task.get("RestartPolicy"))
    if restart is not None:
        task["RestartPolicy"] = restart
    update_config = apply_update_config(args, "update", spec.get("UpdateConfig"))
    if update_config is not None:
        spec["UpdateConfig"] = update_config
    rollback_config = apply_update_config(args, "rollback", spec.get("RollbackConfig"))
    if rollback_config is not None:
        spec["RollbackConfig"] = rollback_config

    if args.force:
        task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
    return spec
