"""Services as the control API sees them: the spec checked and normalised, defaults, create/update/rollback.

`validate_service_spec` turns a client's JSON body (docker CLI, docker-py, shoal CLI) into the normalised
spec that is stored; `new_service` and `updated_service` build the stored Service document around it;
`service_status` and `is_up_to_date` derive what `service ls` and the CLI's progress loop read.
Behaviour follows swarmkit's `manager/controlapi/service.go` and `api/defaults/service.go`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping

from shoal import codec
from shoal.errors import Conflict, InvalidArgument, TooLarge
from shoal.manager.controlapi import (
    field_path,
    optional_bool,
    optional_duration,
    optional_int,
    optional_number,
    optional_object,
    optional_object_list,
    optional_str,
    optional_str_list,
    optional_str_map,
    shown,
    without_private_fields,
)
from shoal.spec import (
    APPARMOR_MODES,
    CONTAINER_RUNTIME,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MOUNT_TYPE,
    DEFAULT_RESTART_DELAY,
    DEFAULT_STOP_GRACE_PERIOD,
    DEFAULT_UPDATE_CONFIG,
    ENDPOINT_MODES,
    GLOBAL,
    GLOBAL_JOB,
    HOST_GATEWAY,
    JOB_ITERATION,
    JOB_MODES,
    JOB_STATUS,
    MODES,
    MOUNT_OPTIONS,
    MOUNT_PROPAGATIONS,
    MOUNT_TYPES,
    PORT_PROTOCOLS,
    PUBLISH_MODES,
    REPLICATED,
    REPLICATED_JOB,
    RESTART_CONDITIONS,
    ROLLBACK_FAILURE_ACTIONS,
    SECCOMP_MODES,
    ULIMIT_NAMES,
    UNLIMITED,
    UPDATE_FAILURE_ACTIONS,
    UPDATE_ORDERS,
    ImageReference,
    effective_update_config,
    is_ip_address,
    is_job,
    is_replicated_job,
    is_unset,
    job_iteration,
    job_limits,
    parse_constraint,
    service_mode,
    spread_descriptors,
    unsupported_task_fields,
)
from shoal.task_files import BadReference, all_references
from shoal.timefmt import to_rfc3339
from shoal.types import Doc, NodeState, TaskState, clone, is_global, node_state, replicas

# ---- names and enums of the wire format ------------------------------------------------------------------

SERVICE_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
SERVICE_NAME_MAX_LENGTH = 63

# Published ports swarm hands out when a port is published as 0 (swarmkit's dynamic range).
DYNAMIC_PORT_FIRST = 30000
DYNAMIC_PORT_LAST = 32767

# swarmkit's minimums for resource values that are set at all.
MIN_NANO_CPUS = 1_000_000
MIN_MEMORY_BYTES = 4 * 1024 * 1024

# A Linux capability as the engine takes it: "CAP_NET_ADMIN", "net_admin", or "ALL".
CAPABILITY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

IngressPort = tuple[int, str]  # (published port, protocol), as held by the routing mesh


# ---- field names as Go's JSON decoder matches them -------------------------------------------------------

# The field names of Docker's ServiceSpec and everything under it (`api/types/swarm/*.go`, `mount`).
SERVICE_SPEC_FIELDS = frozenset({
    "Name", "Labels", "TaskTemplate", "Mode", "Replicated", "Global", "ReplicatedJob", "GlobalJob",
    "Replicas", "MaxConcurrent", "TotalCompletions", "UpdateConfig", "RollbackConfig", "Parallelism",
    "Delay", "FailureAction", "Monitor", "MaxFailureRatio", "Order", "Networks", "EndpointSpec", "Ports",
    "Protocol", "TargetPort", "PublishedPort", "PublishMode", "Target", "Aliases", "DriverOpts",
    "PluginSpec", "ContainerSpec", "NetworkAttachmentSpec", "Resources", "RestartPolicy", "Placement",
    "ForceUpdate", "Runtime", "LogDriver", "Options", "Image", "Command", "Args", "Hostname", "Env", "Dir",
    "User", "Groups", "Privileges", "CredentialSpec", "SELinuxContext", "Seccomp", "AppArmor",
    "NoNewPrivileges", "TTY", "OpenStdin", "ReadOnly", "Mounts", "StopSignal", "StopGracePeriod",
    "Healthcheck", "Hosts", "DNSConfig", "Nameservers", "Search", "Secrets", "Configs", "Isolation", "Init",
    "Sysctls", "CapabilityAdd", "CapabilityDrop", "Ulimits", "OomScoreAdj", "Type", "Source", "Consistency",
    "BindOptions", "VolumeOptions", "TmpfsOptions", "ClusterOptions", "Propagation", "NonRecursive",
    "CreateMountpoint", "ReadOnlyNonRecursive", "ReadOnlyForceRecursive", "NoCopy", "DriverConfig",
    "Subpath", "SizeBytes", "File", "UID", "GID", "SecretID", "SecretName", "ConfigID", "ConfigName",
    "Soft", "Hard", "Limits", "Reservations", "NanoCPUs", "MemoryBytes", "Pids", "GenericResources",
    "NamedResourceSpec", "DiscreteResourceSpec", "Kind", "Value", "Condition", "MaxAttempts", "Window",
    "Constraints", "Preferences", "Spread", "SpreadDescriptor", "MaxReplicas", "Platforms", "Architecture",
    "OS", "Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries", "Config", "Registry",
    "Disable", "Enabled", "Level", "Role", "Profile", "Remote", "Disabled", "Plugin", "ContainerID",
})

# Fields that hold the user's own keys (labels, driver options, sysctls): their contents keep their names.
FREE_FORM_FIELDS = frozenset({"Labels", "Options", "DriverOpts", "Sysctls"})
_FIELD_BY_FOLDED_NAME = {name.lower(): name for name in SERVICE_SPEC_FIELDS}


def go_field_names(value: object, free_form: bool = False) -> object:
    """A copy of a decoded JSON value with its keys named as Docker's Go types name them.

    Go's JSON decoder matches a key to a struct field case-insensitively when no field has the exact
    name, and docker-py relies on it: its ServiceMode sends `{"replicated": {"Replicas": 3}}`.
    """
    if isinstance(value, list):
        return [go_field_names(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, object] = {}
    for key, item in value.items():
        name = str(key)
        if not free_form and name not in SERVICE_SPEC_FIELDS:
            name = _FIELD_BY_FOLDED_NAME.get(name.lower(), name)
        # An exact name wins over a case-folded one, as in Go.
        if name not in out or name == key:
            out[name] = go_field_names(item, free_form=name in FREE_FORM_FIELDS)
    return out


# ---- validation -----------------------------------------------------------------------------------------

# The most replicas one service may ask for: the largest swarm measured (bench/scale.py, 100,000 tasks on 1,000
# nodes). Docker takes any uint64; shoal refuses a count it would take hours and gigabytes of store to reach.
MAX_REPLICAS = 100_000
# Every task carries a copy of its service's spec, so a spec's size is paid once per replica, in the store
# and on the wire to each node.
MAX_SPEC_BYTES = 256 * 1024

def validate_service_spec(spec: object) -> Doc:
    """Check a ServiceSpec body and return a normalised copy, or raise InvalidArgument naming the field.

    Normalising fills what Docker would report back anyway: Mode (Replicated with 1 replica), Replicas,
    Labels {}, EndpointSpec.Mode "vip", each port's Protocol/PublishMode/PublishedPort, and "" in the
    update configs' FailureAction/Order (Docker stores those as enums whose zero value is the default).
    A field of Docker's spec that shoal does not act on is refused by name unless it holds its zero value, which
    the clients send on every call (`shoal.spec.CONTAINER_SPEC_SUPPORT`: fields only some executors act on are
    accepted here and rejected by the executors that cannot). Fields shoal does not know are kept as sent; the
    image is kept as sent, digest included.
    A missing Name stays "": the caller gives the service a generated name.
    """
    if not isinstance(spec, dict):
        raise InvalidArgument(
            'the service spec must be a JSON object such as {"Name": "web", "TaskTemplate": '
            f'{{"ContainerSpec": {{"Image": "nginx"}}}}}} (got {shown(spec)})'
        )
    out = go_field_names(spec)
    assert isinstance(out, dict)
    name = optional_str(out, "Name", "") or ""
    if name:
        check_service_name(name)
    out["Name"] = name
    out["Labels"] = optional_str_map(out, "Labels", "") or {}
    out["TaskTemplate"] = _normalised_task_template(out.get("TaskTemplate"))
    out["Mode"] = _normalised_mode(out.get("Mode"))
    mode = service_mode(out)
    for key, actions in (("UpdateConfig", UPDATE_FAILURE_ACTIONS), ("RollbackConfig", ROLLBACK_FAILURE_ACTIONS)):
        config = optional_object(out, key, "")
        if config is None:
            out.pop(key, None)
        elif mode in JOB_MODES:
            # An update of a job runs it again from the start: there is no rollout to configure (swarmkit).
            raise InvalidArgument(f"{key} does not apply to jobs (Mode.{mode}): an update runs the job again "
                                  f"from the start; leave {key} out")
        else:
            _check_update_config(config, key, actions)
    out["EndpointSpec"] = _normalised_endpoint_spec(out.get("EndpointSpec"))
    _check_network_attachments(out, "")
    size = len(codec.dumps(out))
    if size > MAX_SPEC_BYTES:
        raise TooLarge(f"the service spec is {size} bytes; shoal keeps at most {MAX_SPEC_BYTES} (each task carries "
                       "a copy): keep large data such as long environment values out of the spec")
    return out


def check_service_name(name: str) -> None:
    """Docker's rule for service names: a DNS-label-like name of at most 63 characters."""
    if len(name) > SERVICE_NAME_MAX_LENGTH:
        raise InvalidArgument(
            f'invalid service name {shown(name)}: use at most {SERVICE_NAME_MAX_LENGTH} characters'
        )
    if not SERVICE_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f'invalid service name {shown(name)}: use letters, digits, "_", "." or "-", starting with a letter or digit'
        )


def _normalised_task_template(template: object) -> Doc:
    if template is None:
        raise InvalidArgument(
            'TaskTemplate is required: give at least the image, e.g. {"TaskTemplate": {"ContainerSpec": '
            '{"Image": "nginx"}}}'
        )
    if not isinstance(template, dict):
        raise InvalidArgument(f"TaskTemplate must be a JSON object (got {shown(template)})")
    path = "TaskTemplate"
    for other_runtime in ("PluginSpec", "NetworkAttachmentSpec"):
        if template.get(other_runtime) is not None:
            raise InvalidArgument(
                f"{path}.{other_runtime} is not supported by shoal: give a {path}.ContainerSpec instead"
            )
    _check_container_spec(template.get("ContainerSpec"), field_path(path, "ContainerSpec"))
    _check_resources(template, path)
    _check_restart_policy(template, path)
    _check_placement(template, path)
    optional_int(template, "ForceUpdate", path)
    runtime = optional_str(template, "Runtime", path)
    if runtime and runtime != CONTAINER_RUNTIME:
        raise InvalidArgument(f'{path}.Runtime {shown(runtime)} is not supported by shoal: leave it out or give '
                              f'"{CONTAINER_RUNTIME}"')
    _check_network_attachments(template, path)
    log_driver = optional_object(template, "LogDriver", path)
    if log_driver is not None:
        # Docker leaves the driver's name and options to the engine, which refuses a driver it does not have
        # when the task's container is created.
        optional_str(log_driver, "Name", field_path(path, "LogDriver"))
        optional_str_map(log_driver, "Options", field_path(path, "LogDriver"))
    for field, instead in unsupported_task_fields(template, executor=None):
        raise InvalidArgument(f"{path}.{field} is not supported by shoal: {instead}")
    return template


def _check_container_spec(container: object, path: str) -> None:
    if container is None:
        raise InvalidArgument(f'{path} is required: give the image to run, e.g. {{"Image": "nginx"}}')
    if not isinstance(container, dict):
        raise InvalidArgument(f"{path} must be a JSON object (got {shown(container)})")
    image = container.get("Image")
    if not isinstance(image, str) or not image.strip():
        raise InvalidArgument(f'{path}.Image must name the image to run, e.g. "nginx:1.25" (got {shown(image)})')
    try:
        ImageReference.parse(image)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}.Image: {exc.message}") from None
    optional_str_map(container, "Labels", path)
    optional_str_list(container, "Command", path, '["nginx", "-g", "daemon off;"]')
    optional_str_list(container, "Args", path, '["-g", "daemon off;"]')
    optional_str_list(container, "Env", path, '["KEY=value"]')
    optional_str_list(container, "Groups", path)
    _check_hosts(container, path)
    for key in ("CapabilityAdd", "CapabilityDrop"):
        for capability in optional_str_list(container, key, path, '["CAP_NET_ADMIN"]') or []:
            if not CAPABILITY_PATTERN.fullmatch(capability):
                raise InvalidArgument(f'{path}.{key}: {shown(capability)} is not a capability: give its name, e.g. '
                                      '"CAP_NET_ADMIN" or "NET_ADMIN", or "ALL"')
    for key in ("Hostname", "Dir", "User", "StopSignal", "Isolation"):
        optional_str(container, key, path)
    for key in ("TTY", "OpenStdin", "ReadOnly", "Init"):
        optional_bool(container, key, path)
    optional_duration(container, "StopGracePeriod", path)
    optional_int(container, "OomScoreAdj", path, minimum=-1000, maximum=1000)
    for key in optional_str_map(container, "Sysctls", path) or {}:
        if not key or any(char.isspace() for char in key):
            raise InvalidArgument(f'{path}.Sysctls: {shown(key)} is not a sysctl name, e.g. "net.core.somaxconn"')
    _check_privileges(container, path)
    try:
        all_references(container, path)
    except BadReference as exc:
        raise InvalidArgument(str(exc)) from None
    _check_ulimits(container, path)
    _check_dns_config(container, path)
    _check_mounts(container, path)
    health = optional_object(container, "Healthcheck", path)
    if health is not None:
        health_path = field_path(path, "Healthcheck")
        optional_str_list(health, "Test", health_path, '["CMD", "curl", "-f", "http://localhost/"]')
        for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
            optional_duration(health, key, health_path)
        optional_int(health, "Retries", health_path)


def _check_hosts(container: Doc, path: str) -> None:
    """Each entry a line of /etc/hosts: an address (or "host-gateway") and at least one name."""
    for index, entry in enumerate(optional_str_list(container, "Hosts", path, '["10.0.0.1 db"]') or []):
        words = entry.split()
        if len(words) < 2 or (not is_ip_address(words[0]) and words[0] != HOST_GATEWAY):
            raise InvalidArgument(f'{path}.Hosts[{index}] must be "IP_ADDRESS NAME [ALIAS...]", e.g. '
                                  f'"10.0.0.1 db" (got {shown(entry)})')
        if any(":" in name for name in words[1:]):
            raise InvalidArgument(f"{path}.Hosts[{index}]: a host name has no \":\" (got {shown(entry)})")


def _check_dns_config(container: Doc, path: str) -> None:
    """Addresses for Nameservers (Docker decodes them as such); words without blanks for the search domains and
    options, which become lines of the container's resolv.conf."""
    dns = optional_object(container, "DNSConfig", path)
    if dns is None:
        return
    dns_path = field_path(path, "DNSConfig")
    for index, nameserver in enumerate(optional_str_list(dns, "Nameservers", dns_path, '["10.0.0.2"]') or []):
        if not is_ip_address(nameserver):
            raise InvalidArgument(f"{dns_path}.Nameservers[{index}] must be an IP address (got {shown(nameserver)})")
    for key, example in (("Search", '["example.com"]'), ("Options", '["ndots:2"]')):
        for index, word in enumerate(optional_str_list(dns, key, dns_path, example) or []):
            if not word or any(char.isspace() for char in word):
                raise InvalidArgument(f"{dns_path}.{key}[{index}] must be one word, without blanks "
                                      f"(got {shown(word)})")


def _check_ulimits(container: Doc, path: str) -> None:
    """Each ulimit names a resource once, with soft <= hard (-1 is unlimited), as the engine requires."""
    names: set[str] = set()
    for index, limit in enumerate(optional_object_list(container, "Ulimits", path) or []):
        limit_path = f"{path}.Ulimits[{index}]"
        name = optional_str(limit, "Name", limit_path, ULIMIT_NAMES)
        if not name:
            raise InvalidArgument(f"{limit_path}.Name must name the resource, one of {', '.join(ULIMIT_NAMES)}")
        if name in names:
            raise InvalidArgument(f'{limit_path}.Name "{name}" is given twice: give each ulimit once')
        names.add(name)
        soft = optional_int(limit, "Soft", limit_path, minimum=UNLIMITED) or 0
        hard = optional_int(limit, "Hard", limit_path, minimum=UNLIMITED) or 0
        if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
            raise InvalidArgument(f"{limit_path}: the soft limit must be at most the hard limit (soft {soft}, "
                                  f"hard {hard}; -1 is unlimited)")


def _check_privileges(container: Doc, path: str) -> None:
    """Seccomp and AppArmor modes as Docker names them, and a custom seccomp profile with its mode; what no
    executor acts on (CredentialSpec, SELinuxContext) is refused by the support table."""
    privileges = optional_object(container, "Privileges", path)
    if privileges is None:
        return
    privileges_path = field_path(path, "Privileges")
    for key in ("CredentialSpec", "SELinuxContext"):
        optional_object(privileges, key, privileges_path)
    optional_bool(privileges, "NoNewPrivileges", privileges_path)
    apparmor = optional_object(privileges, "AppArmor", privileges_path)
    if apparmor is not None:
        optional_str(apparmor, "Mode", field_path(privileges_path, "AppArmor"), APPARMOR_MODES)
    seccomp = optional_object(privileges, "Seccomp", privileges_path)
    if seccomp is None:
        return
    seccomp_path = field_path(privileges_path, "Seccomp")
    mode = optional_str(seccomp, "Mode", seccomp_path, SECCOMP_MODES)
    profile = optional_str(seccomp, "Profile", seccomp_path)
    if mode == "custom":
        try:
            json.loads(base64.b64decode(profile or "", validate=True))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f'{seccomp_path}.Profile must be a seccomp profile (its JSON, base64-encoded) with '
                                  'Mode "custom"') from None
    elif profile:
        raise InvalidArgument(f'{seccomp_path}.Profile is used with Mode "custom" only: set the Mode or remove '
                              "the Profile")


def _check_mounts(container: Doc, path: str) -> None:
    """Each mount: a target used once, a type shoal mounts, and only the options of that type."""
    targets: set[str] = set()
    for index, mount in enumerate(optional_object_list(container, "Mounts", path) or []):
        mount_path = f"{path}.Mounts[{index}]"
        target = optional_str(mount, "Target", mount_path)
        if not target:
            raise InvalidArgument(f'{mount_path}.Target must be the path inside the task, e.g. "/data"')
        if target in targets:
            raise InvalidArgument(f'{mount_path}.Target "{target}" is mounted twice: use each mount point once')
        targets.add(target)
        source = optional_str(mount, "Source", mount_path)
        optional_bool(mount, "ReadOnly", mount_path)
        optional_str(mount, "Consistency", mount_path)
        kind = optional_str(mount, "Type", mount_path) or DEFAULT_MOUNT_TYPE
        if kind not in MOUNT_TYPES:
            types = ", ".join(f'"{name}"' for name in MOUNT_TYPES[:-1]) + f' or "{MOUNT_TYPES[-1]}"'
            raise InvalidArgument(f"{mount_path}.Type {shown(kind)} is not supported by shoal: use {types}")
        for other, (block, _) in MOUNT_OPTIONS.items():
            if other != kind and not is_unset(mount.get(block)):
                raise InvalidArgument(f'{mount_path}.{block} is for {other} mounts, not {kind}: remove it or '
                                      f'set Type "{other}"')
        if kind == "bind" and not source:
            raise InvalidArgument(f'{mount_path}.Source must be the path on the node for a bind mount, e.g. "/srv"')
        block, known = MOUNT_OPTIONS[kind]
        options = optional_object(mount, block, mount_path) or {}
        for key, value in options.items():
            if key not in known and not is_unset(value):
                raise InvalidArgument(f"{mount_path}.{block}.{key} is not supported by shoal: remove it")
        if kind == "bind":
            optional_str(options, "Propagation", f"{mount_path}.{block}", MOUNT_PROPAGATIONS)


def _check_resources(template: Doc, path: str) -> None:
    resources = optional_object(template, "Resources", path)
    if resources is None:
        return
    for part in ("Limits", "Reservations"):
        part_path = field_path(field_path(path, "Resources"), part)
        values = optional_object(resources, part, field_path(path, "Resources"))
        if values is None:
            continue
        cpus = optional_int(values, "NanoCPUs", part_path)
        if cpus and cpus < MIN_NANO_CPUS:
            raise InvalidArgument(f"{part_path}.NanoCPUs must be at least {MIN_NANO_CPUS} (0.001 CPU) or 0 "
                                  f"(got {cpus})")
        memory = optional_int(values, "MemoryBytes", part_path)
        if memory and memory < MIN_MEMORY_BYTES:
            raise InvalidArgument(f"{part_path}.MemoryBytes must be at least 4MiB ({MIN_MEMORY_BYTES}) or 0 "
                                  f"(got {memory})")
        optional_int(values, "Pids", part_path, minimum=0)
        if optional_object_list(values, "GenericResources", part_path):
            raise InvalidArgument(f"{part_path}.GenericResources is not supported by shoal: reserve NanoCPUs and "
                                  "MemoryBytes instead")


def _check_restart_policy(template: Doc, path: str) -> None:
    policy = optional_object(template, "RestartPolicy", path)
    if policy is None:
        return
    policy_path = field_path(path, "RestartPolicy")
    optional_str(policy, "Condition", policy_path, RESTART_CONDITIONS)
    optional_duration(policy, "Delay", policy_path)
    optional_int(policy, "MaxAttempts", policy_path)
    optional_duration(policy, "Window", policy_path)


def _check_placement(template: Doc, path: str) -> None:
    placement = optional_object(template, "Placement", path)
    if placement is None:
        return
    placement_path = field_path(path, "Placement")
    for constraint in optional_str_list(placement, "Constraints", placement_path, '["node.role==manager"]') or []:
        parse_constraint(constraint)
    optional_object_list(placement, "Preferences", placement_path)
    try:
        spread_descriptors(placement)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}.{exc.message}" if exc.message.startswith("Placement") else exc.message) from None
    optional_int(placement, "MaxReplicas", placement_path, minimum=0)
    for index, platform in enumerate(optional_object_list(placement, "Platforms", placement_path) or []):
        optional_str(platform, "OS", f"{placement_path}.Platforms[{index}]")
        optional_str(platform, "Architecture", f"{placement_path}.Platforms[{index}]")


def _check_network_attachments(doc: Doc, path: str) -> None:
    for index, network in enumerate(optional_object_list(doc, "Networks", path) or []):
        network_path = f"{field_path(path, 'Networks')}[{index}]"
        if not optional_str(network, "Target", network_path):
            raise InvalidArgument(f"{network_path}.Target must name the network to attach (got "
                                  f"{shown(network.get('Target'))})")
        optional_str_list(network, "Aliases", network_path)
        if optional_str_map(network, "DriverOpts", network_path):
            raise InvalidArgument(f"{network_path}.DriverOpts is not supported by shoal: remove it")


def _normalised_mode(mode: object) -> Doc:
    if mode is None:
        return {REPLICATED: {"Replicas": 1}}
    if not isinstance(mode, dict):
        raise InvalidArgument(f'Mode must be a JSON object such as {{"Replicated": {{"Replicas": 2}}}} '
                              f"or {{\"Global\": {{}}}} (got {shown(mode)})")
    out = {key: value for key, value in mode.items() if not (key in MODES and value is None)}
    chosen = [key for key in MODES if key in out]
    if len(chosen) > 1:
        raise InvalidArgument(f"Mode must set one of {', '.join(MODES[:-1])} or {MODES[-1]}, "
                              f"not {' and '.join(chosen)}")
    for key in chosen:
        optional_object(out, key, "Mode")
    if GLOBAL in out or GLOBAL_JOB in out:
        return out
    if REPLICATED_JOB in out:
        _normalise_replicated_job(out[REPLICATED_JOB])
        return out
    replicated = out.setdefault(REPLICATED, {})
    count = optional_int(replicated, "Replicas", "Mode.Replicated", maximum=MAX_REPLICAS)
    replicated["Replicas"] = 1 if count is None else count
    return out


def _normalise_replicated_job(job: Doc) -> None:
    """MaxConcurrent defaults to 1 and TotalCompletions to MaxConcurrent (Docker's API defaults)."""
    path = f"Mode.{REPLICATED_JOB}"
    concurrent = optional_int(job, "MaxConcurrent", path, maximum=MAX_REPLICAS)
    total = optional_int(job, "TotalCompletions", path, maximum=MAX_REPLICAS)
    job["MaxConcurrent"] = DEFAULT_MAX_CONCURRENT if concurrent is None else concurrent
    job["TotalCompletions"] = job["MaxConcurrent"] if total is None else total
    if job["MaxConcurrent"] == 0 < job["TotalCompletions"]:
        raise InvalidArgument(f"{path}.MaxConcurrent is 0, so none of the job's {job['TotalCompletions']} "
                              "tasks would ever run: give at least 1")


def _check_update_config(config: Doc, path: str, failure_actions: tuple[str, ...]) -> None:
    optional_int(config, "Parallelism", path)
    optional_duration(config, "Delay", path)
    optional_duration(config, "Monitor", path)
    optional_number(config, "MaxFailureRatio", path, 0.0, 1.0)
    # "" is how Docker's enums say "default"; store the default itself, as Docker reports it.
    if optional_str(config, "FailureAction", path, failure_actions) == "":
        config["FailureAction"] = DEFAULT_UPDATE_CONFIG["FailureAction"]
    if optional_str(config, "Order", path, UPDATE_ORDERS) == "":
        config["Order"] = DEFAULT_UPDATE_CONFIG["Order"]


def _normalised_endpoint_spec(endpoint: object) -> Doc:
    if endpoint is None:
        endpoint = {}
    if not isinstance(endpoint, dict):
        raise InvalidArgument(f'EndpointSpec must be a JSON object such as {{"Mode": "vip"}} (got {shown(endpoint)})')
    mode = optional_str(endpoint, "Mode", "EndpointSpec", ENDPOINT_MODES) or "vip"
    endpoint["Mode"] = mode
    ports = optional_object_list(endpoint, "Ports", "EndpointSpec")
    if ports is None:
        endpoint.pop("Ports", None)
        return endpoint
    published: set[IngressPort] = set()
    for index, port in enumerate(ports):
        port_path = f"EndpointSpec.Ports[{index}]"
        optional_str(port, "Name", port_path)
        protocol = optional_str(port, "Protocol", port_path, PORT_PROTOCOLS) or "tcp"
        publish_mode = optional_str(port, "PublishMode", port_path, PUBLISH_MODES) or "ingress"
        target = optional_int(port, "TargetPort", port_path, minimum=1, maximum=65535)
        if target is None:
            raise InvalidArgument(f"{port_path}.TargetPort must be the port the task listens on, from 1 to 65535")
        public = optional_int(port, "PublishedPort", port_path, minimum=0, maximum=65535) or 0
        if mode == "dnsrr" and publish_mode == "ingress":
            raise InvalidArgument(
                f'{port_path}: ports published in ingress mode cannot be used with EndpointSpec.Mode "dnsrr": '
                'use Mode "vip" or PublishMode "host"'
            )
        if public and (public, protocol) in published:
            raise InvalidArgument(
                f"{port_path}: published port {public}/{protocol} is given twice: publish each port once"
            )
        if public:
            published.add((public, protocol))
        port.update(Protocol=protocol, TargetPort=target, PublishedPort=public, PublishMode=publish_mode)
    return endpoint


# ---- defaults (GET /services/{id}?insertDefaults=true) ----------------------------------------------------

def insert_defaults(spec: Doc) -> Doc:
    """A copy of a normalised ServiceSpec with swarmkit's defaults filled in (`?insertDefaults=true`)."""
    out = clone(spec)
    template = out.setdefault("TaskTemplate", {})
    container = template.get("ContainerSpec")
    if isinstance(container, dict):
        if container.get("StopGracePeriod") is None:
            container["StopGracePeriod"] = DEFAULT_STOP_GRACE_PERIOD
        if container.get("DNSConfig") is None:
            container["DNSConfig"] = {}
    resources = template.get("Resources") or {}
    for part in ("Limits", "Reservations"):
        if resources.get(part) is None:
            resources[part] = {}
    template["Resources"] = resources
    policy = template.get("RestartPolicy") or {}
    if not policy.get("Condition"):
        policy["Condition"] = "any"
    if policy.get("Delay") is None:
        policy["Delay"] = DEFAULT_RESTART_DELAY
    if policy.get("MaxAttempts") is None:
        policy["MaxAttempts"] = 0
    template["RestartPolicy"] = policy
    if template.get("Placement") is None:
        template["Placement"] = {}
    if service_mode(out) not in JOB_MODES:  # a job takes none (a spec read back and sent again must pass)
        out["UpdateConfig"] = effective_update_config(out)
        out["RollbackConfig"] = effective_update_config(out, rollback=True)
    return out


# ---- the stored Service document ----------------------------------------------------------------------

def ingress_ports_in_use(services: Iterable[Doc], except_service_id: str | None = None) -> set[IngressPort]:
    """The (port, protocol) pairs the routing mesh already serves, to pass as `used_ports`."""
    used: set[IngressPort] = set()
    for service in services:
        if service.get("ID") == except_service_id:
            continue
        used |= _own_published_ports(service)
    return used


def _own_published_ports(service: Doc) -> set[IngressPort]:
    ports = list((service.get("Endpoint") or {}).get("Ports") or [])
    ports += ((service.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or []
    return {(int(port["PublishedPort"]), str(port.get("Protocol") or "tcp"))
            for port in ports if port.get("PublishedPort") and (port.get("PublishMode") or "ingress") == "ingress"}


def new_service(spec: Doc, service_id: str, now: float, used_ports: set[IngressPort]) -> Doc:
    """The Service document for a validated spec; ingress ports published as 0 get a free port.

    `used_ports` are the ingress (port, protocol) pairs of the other services (see `ingress_ports_in_use`).
    """
    timestamp = to_rfc3339(now)
    service = {
        "ID": service_id,
        "Version": {"Index": 0},
        "CreatedAt": timestamp,
        "UpdatedAt": timestamp,
        "Spec": clone(spec),
        "Endpoint": _endpoint(spec, [], used_ports),
    }
    if service_mode(spec) in JOB_MODES:
        service[JOB_STATUS] = {JOB_ITERATION: {"Index": 0}, "LastExecution": timestamp}
    return service


def updated_service(current: Doc, new_spec: Doc, now: float, used_ports: set[IngressPort],
                    rollback: bool = False) -> Doc:
    """The Service document after an update, or after a manual rollback (`?rollback=previous`).

    An update keeps the old spec as PreviousSpec (when it changed) and clears UpdateStatus so the update
    orchestrator starts afresh; a rollback swaps PreviousSpec back in, ignoring `new_spec` as Docker does.
    Ports already allocated to this service keep their number. Every update of a job, a rollback included,
    starts its next iteration: the job runs again from the start (swarmkit's JobIteration).
    """
    out = clone(current)
    old_spec = current["Spec"]
    name = old_spec.get("Name", "")
    timestamp = to_rfc3339(now)
    if rollback:
        previous = current.get("PreviousSpec")
        if not previous:
            raise InvalidArgument(f"service {name} does not have a previous spec: there is nothing to roll back to")
        target = clone(previous)
        out["PreviousSpec"] = clone(old_spec)
        if not is_job(current):  # a job has no rollout for an updater to carry to "rollback_completed"
            out["UpdateStatus"] = {"State": "rollback_started", "StartedAt": timestamp,
                                   "Message": "manually requested rollback"}
    else:
        target = clone(new_spec)
        if not target.get("Name"):
            target["Name"] = name  # a body without a name means "this service"
        if target["Name"] != name:
            raise InvalidArgument(f'renaming services is not supported: keep the name "{name}" '
                                  "or create a new service")
        if service_mode(target) != service_mode(old_spec):
            raise InvalidArgument("service mode change is not allowed: remove the service and create it again "
                                  "in the new mode")
        if target != old_spec:
            out["PreviousSpec"] = clone(old_spec)
            out.pop("UpdateStatus", None)
    out["Spec"] = target
    own_ports = list((current.get("Endpoint") or {}).get("Ports") or [])
    # Our own ports cannot conflict with us, whether or not the caller left them out of `used_ports`.
    others = set(used_ports) - _own_published_ports(current)
    out["Endpoint"] = _endpoint(target, own_ports, others)
    vips = (current.get("Endpoint") or {}).get("VirtualIPs")
    if vips:  # the allocator's (shoal.manager.allocator): kept, so a service keeps its addresses
        out["Endpoint"]["VirtualIPs"] = clone(vips)
    out["UpdatedAt"] = timestamp
    if JOB_STATUS in current:
        out[JOB_STATUS] = {JOB_ITERATION: {"Index": job_iteration(current) + 1}, "LastExecution": timestamp}
    return out


def _endpoint(spec: Doc, allocated: list[Doc], used_ports: set[IngressPort]) -> Doc:
    endpoint_spec = clone(spec.get("EndpointSpec") or {"Mode": "vip"})
    ports: list[Doc] = []
    taken = set(used_ports)
    wanted = [clone(port) for port in endpoint_spec.get("Ports") or []]
    for port in wanted:
        key = (int(port.get("PublishedPort") or 0), str(port.get("Protocol") or "tcp"))
        if key[0] and port.get("PublishMode", "ingress") == "ingress" and key in used_ports:
            raise Conflict(
                f"port {key[0]}/{key[1]} is already published by another service: choose another "
                "PublishedPort, or 0 to get a free one"
            )
        if key[0]:
            taken.add(key)
    reusable = [port for port in allocated if port.get("PublishMode", "ingress") == "ingress"]
    for port in wanted:
        if port.get("PublishMode", "ingress") == "ingress" and not port.get("PublishedPort"):
            port["PublishedPort"] = _reuse_or_allocate(port, reusable, taken)
        ports.append(port)
    return {"Spec": endpoint_spec, "Ports": ports}


def _reuse_or_allocate(port: Doc, allocated: list[Doc], taken: set[IngressPort]) -> int:
    protocol = str(port.get("Protocol") or "tcp")
    for old in allocated:
        same = (old.get("TargetPort"), old.get("Protocol"), old.get("Name")) == (
            port.get("TargetPort"), protocol, port.get("Name"))
        number = int(old.get("PublishedPort") or 0)
        if same and DYNAMIC_PORT_FIRST <= number <= DYNAMIC_PORT_LAST and (number, protocol) not in taken:
            allocated.remove(old)
            taken.add((number, protocol))
            return number
    for number in range(DYNAMIC_PORT_FIRST, DYNAMIC_PORT_LAST + 1):
        if (number, protocol) not in taken:
            taken.add((number, protocol))
            return number
    raise InvalidArgument(
        f"no free {protocol} port left in {DYNAMIC_PORT_FIRST}-{DYNAMIC_PORT_LAST} to publish: "
        "give an explicit PublishedPort"
    )


# ---- derived read views -------------------------------------------------------------------------------

def service_status(service: Doc, tasks: Iterable[Doc], nodes_by_id: Mapping[str, Doc]) -> Doc:
    """`ServiceStatus` for `GET /services?status=true` (swarmkit's ListServiceStatuses).

    Desired is Replicas for a replicated service; for a global one, its tasks wanted running on nodes
    that are not down. Running counts the service's tasks whose observed state is running.
    """
    if is_job(service):
        return job_service_status(service, tasks, nodes_by_id)
    service_id = service.get("ID")
    running = desired = 0
    global_mode = is_global(service)
    for task in tasks:
        if task.get("ServiceID") != service_id:
            continue
        status = task.get("Status") or {}
        node = nodes_by_id.get(str(task.get("NodeID") or ""))
        node_up = node is not None and node_state(node) != NodeState.DOWN
        # A task left on a down node, or one being stopped, no longer counts as running.
        if (status.get("State") == TaskState.RUNNING.wire and task.get("DesiredState") == TaskState.RUNNING.wire
                and node_up):
            running += 1
        if global_mode and task.get("DesiredState") == TaskState.RUNNING.wire and node_up:
            desired += 1
    if not global_mode:
        desired = replicas(service)
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": 0}


def job_service_status(service: Doc, tasks: Iterable[Doc], nodes_by_id: Mapping[str, Doc]) -> Doc:
    """`ServiceStatus` of a job, over the tasks of its current iteration only (swarmkit's rules).

    CompletedTasks counts the completed ones. Desired is MaxConcurrent for a replicated job; for a global job,
    the tasks still to finish (wanted running, or given up and wanted no more) that have not completed, so
    `service ls` shows Desired + Completed as the job's size.
    """
    service_id = service.get("ID")
    iteration = job_iteration(service)
    running = completed = unfinished = 0
    for task in tasks:
        if task.get("ServiceID") != service_id or job_iteration(task) != iteration:
            continue
        state, desired = (task.get("Status") or {}).get("State"), task.get("DesiredState")
        if state == TaskState.COMPLETE.wire:
            completed += 1
            continue
        node = nodes_by_id.get(str(task.get("NodeID") or ""))
        if (state == TaskState.RUNNING.wire and desired == TaskState.RUNNING.wire and node is not None
                and node_state(node) != NodeState.DOWN):
            running += 1
        if desired in (TaskState.RUNNING.wire, TaskState.COMPLETE.wire):
            unfinished += 1
    desired_tasks = job_limits(service)[0] if is_replicated_job(service) else unfinished
    return {"RunningTasks": running, "DesiredTasks": desired_tasks, "CompletedTasks": completed}


def counted_status(service: Doc, running_by_node: Mapping[str, int], nodes_by_id: Mapping[str, Doc]) -> Doc:
    """`service_status` of a replicated service from the cache's running counts per node: no pass over the
    tasks, so `service ls` costs the same with a hundred thousand tasks."""
    running = 0
    for node_id, count in running_by_node.items():
        node = nodes_by_id.get(node_id)
        if node is not None and node_state(node) != NodeState.DOWN:
            running += count
    return {"RunningTasks": running, "DesiredTasks": replicas(service), "CompletedTasks": 0}


def is_up_to_date(service: Doc, task: Doc) -> bool:
    """Whether a task runs the service's current TaskTemplate (the `_up-to-date` task filter)."""
    return bool(task.get("Spec") == (service.get("Spec") or {}).get("TaskTemplate"))


def service_view(service: Doc, *, with_defaults: bool = False, status: Doc | None = None) -> Doc:
    """The body of `GET /services/{id}`: private fields dropped, defaults inserted if asked, status added."""
    out = without_private_fields(service)
    if with_defaults:
        out["Spec"] = insert_defaults(out["Spec"])
        if out.get("PreviousSpec"):
            out["PreviousSpec"] = insert_defaults(out["PreviousSpec"])
    if status is not None:
        out["ServiceStatus"] = dict(status)
    return out
