"""The swarm-mode vocabulary, once: spec enums and defaults, shoal's private keys, image references, constraints.

Everything that reads or checks a ServiceSpec word takes it from here: the control API validates with these
parsers, the scheduler matches with them, the CLI offers these choices and the executors read images with them.
Two parsers of one word drift apart (the API once refused `node.ip==10.0.0.0/24`, which the scheduler took).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from shoal.errors import InvalidArgument
from shoal.timefmt import SECOND
from shoal.types import Availability, Doc, RestartCondition, Role

# ---- service modes and enums of the wire format ---------------------------------------------------------

REPLICATED = "Replicated"
GLOBAL = "Global"
REPLICATED_JOB = "ReplicatedJob"
GLOBAL_JOB = "GlobalJob"
JOB_MODES = (REPLICATED_JOB, GLOBAL_JOB)
MODES = (REPLICATED, GLOBAL, *JOB_MODES)
# The CLI's `--mode` words (and `service ls --filter mode=`), one per mode.
MODE_NAMES = {REPLICATED: "replicated", GLOBAL: "global", REPLICATED_JOB: "replicated-job", GLOBAL_JOB: "global-job"}

RESTART_CONDITIONS = tuple(condition.value for condition in RestartCondition)
UPDATE_FAILURE_ACTIONS = ("pause", "continue", "rollback")
ROLLBACK_FAILURE_ACTIONS = ("pause", "continue")
UPDATE_ORDERS = ("stop-first", "start-first")
ENDPOINT_MODES = ("vip", "dnsrr")
PORT_PROTOCOLS = ("tcp", "udp")  # what the routing mesh forwards (Docker also takes sctp)
PUBLISH_MODES = ("ingress", "host")
AVAILABILITIES = tuple(availability.value for availability in Availability)
ROLES = tuple(role.value for role in Role)

# ---- defaults (swarmkit `api/defaults/service.go`) --------------------------------------------------------

DEFAULT_STOP_GRACE_PERIOD = 10 * SECOND
DEFAULT_RESTART_DELAY = 5 * SECOND
DEFAULT_RESTART_POLICY: Doc = {"Condition": "any", "Delay": DEFAULT_RESTART_DELAY, "MaxAttempts": 0}
DEFAULT_UPDATE_CONFIG: Doc = {
    "Parallelism": 1,
    "FailureAction": "pause",
    "Monitor": 5 * SECOND,
    "MaxFailureRatio": 0,
    "Order": "stop-first",
}
DEFAULT_MAX_CONCURRENT = 1  # a replicated job's; its TotalCompletions defaults to its MaxConcurrent

def effective_update_config(spec: Doc, rollback: bool = False) -> Doc:
    """The spec's UpdateConfig (or RollbackConfig) with swarmkit's defaults for anything not sent."""
    sent = spec.get("RollbackConfig" if rollback else "UpdateConfig") or {}
    config = dict(sent)
    for key, default in DEFAULT_UPDATE_CONFIG.items():
        if config.get(key) in (None, ""):
            config[key] = default
    return config


# ---- which executor acts on which field ------------------------------------------------------------------
# Nothing is accepted and ignored: the control API refuses a field no executor acts on, and an executor rejects
# a task that sets a field it cannot honour (the API cannot know where a task will land). A field counts as set
# unless it holds its zero value: null, false, 0, "", [], {}, or an object of zero values (the docker CLI and
# stack deploy send `"Init": false`, `"DNSConfig": {}` and an all-null `Privileges` on every create and update).
# The sim executor simulates every field.

CONTAINER_RUNTIME = "container"  # TaskTemplate.Runtime: shoal runs containers (or processes) only
DOCKER_EXECUTOR = "docker"
PROCESS_EXECUTOR = "process"
_BOTH = frozenset({DOCKER_EXECUTOR, PROCESS_EXECUTOR})
_DOCKER_ONLY = frozenset({DOCKER_EXECUTOR})
_NONE: frozenset[str] = frozenset()
_ON_DOCKER = ", or run the service on nodes with the docker executor"


@dataclass(frozen=True)
class FieldSupport:
    """The executors that act on a field, and what to do instead where none does."""

    executors: frozenset[str]
    instead: str = "remove it"  # said by the API (no executor), or by the executors that cannot act on it
    defaults: tuple[str, ...] = ()  # values (or an object's member values) that mean the same as the zero value


# Every field of Docker's ContainerSpec (`api/types/swarm/container.go`); Privileges by member, as its members
# differ. ContainerSpec.Labels become the container's labels with the docker executor; a process has nothing to
# carry them, and they stay on the task (`docker inspect TASK`) with either executor, so they are never a
# reason to reject a task. The docker executor passes each field to the engine as swarm mode's executor does
# (moby `daemon/cluster/executor/container/container.go`).
CONTAINER_SPEC_SUPPORT: dict[str, FieldSupport] = {
    "Image": FieldSupport(_BOTH),
    "Labels": FieldSupport(_BOTH),
    "Command": FieldSupport(_BOTH),
    "Args": FieldSupport(_BOTH),
    "Env": FieldSupport(_BOTH),
    "Dir": FieldSupport(_BOTH),
    "User": FieldSupport(_BOTH),
    "StopSignal": FieldSupport(_BOTH),
    "StopGracePeriod": FieldSupport(_BOTH),
    "Healthcheck": FieldSupport(_BOTH),
    "Secrets": FieldSupport(_BOTH),
    "Configs": FieldSupport(_BOTH),
    "Hostname": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its node's hostname){_ON_DOCKER}"),
    "Groups": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its User's groups){_ON_DOCKER}"),
    "TTY": FieldSupport(_DOCKER_ONLY, f"remove it (a process writes to log files){_ON_DOCKER}"),
    "OpenStdin": FieldSupport(_DOCKER_ONLY, f"remove it (a process reads /dev/null){_ON_DOCKER}"),
    "ReadOnly": FieldSupport(_DOCKER_ONLY, f"remove it{_ON_DOCKER}"),
    "Mounts": FieldSupport(_DOCKER_ONLY, f"remove it (a process sees its node's files){_ON_DOCKER}"),
    "Init": FieldSupport(_DOCKER_ONLY, f"remove it (what a process leaves running is killed when it ends)"
                                       f"{_ON_DOCKER}"),
    "Hosts": FieldSupport(_DOCKER_ONLY, f"remove it (a process reads its node's /etc/hosts){_ON_DOCKER}"),
    "DNSConfig": FieldSupport(_DOCKER_ONLY, f"remove it (a process uses its node's resolver){_ON_DOCKER}"),
    "Sysctls": FieldSupport(_DOCKER_ONLY, f"remove it (a process shares its node's kernel settings){_ON_DOCKER}"),
    "CapabilityAdd": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its User's capabilities){_ON_DOCKER}"),
    "CapabilityDrop": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its User's capabilities){_ON_DOCKER}"),
    "Ulimits": FieldSupport(_DOCKER_ONLY, f"remove it (Resources.Limits.Pids limits the number of processes)"
                                          f"{_ON_DOCKER}"),
    "OomScoreAdj": FieldSupport(_DOCKER_ONLY, f"remove it{_ON_DOCKER}"),
    "Privileges.NoNewPrivileges": FieldSupport(_DOCKER_ONLY, f"remove it{_ON_DOCKER}"),
    "Privileges.Seccomp": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its agent's seccomp filter)"
                                                     f"{_ON_DOCKER}", ("default",)),
    "Privileges.AppArmor": FieldSupport(_DOCKER_ONLY, f"remove it (a process has its agent's AppArmor profile)"
                                                      f"{_ON_DOCKER}", ("default",)),
    "Privileges.CredentialSpec": FieldSupport(_NONE, "remove it (credential specs are for Windows containers)"),
    # The engine sets SELinux labels only where SELinux is on, and says nothing where it is not: a label shoal
    # passed on would be silently ignored on most nodes.
    "Privileges.SELinuxContext": FieldSupport(_NONE, "remove it (containers get the engine's SELinux labels)"),
    "Isolation": FieldSupport(_NONE, 'remove it or give "default" (Linux has no other isolation)', ("default",)),
}

# The TaskTemplate's own fields that only some executors act on (the API checks the rest itself: Runtime,
# Networks[].DriverOpts, PluginSpec).
TASK_SPEC_SUPPORT: dict[str, FieldSupport] = {
    "LogDriver": FieldSupport(_DOCKER_ONLY, "remove it (a process's output is kept in files on its node, which "
                                            f"`service logs` reads){_ON_DOCKER}"),
}


def is_unset(value: object) -> bool:
    """Whether a JSON value is its Go zero value: null, false, 0, "", [], {} or an object of zero values."""
    if isinstance(value, dict):
        return all(is_unset(item) for item in value.values())
    return value is None or value is False or value == 0 or value in ("", [])


def _is_default(value: object, defaults: tuple[str, ...]) -> bool:
    """Unset, one of `defaults`, or an object whose members are each unset or one of `defaults`
    ({"Mode": "default"} sets no seccomp profile)."""
    if isinstance(value, dict):
        return all(_is_default(item, defaults) for item in value.values())
    return is_unset(value) or (isinstance(value, str) and value in defaults)


def _set_path(key: str, value: object) -> str:
    """The dotted path to what is set in a field: an object's first set member ("Privileges.SELinuxContext.User")."""
    if isinstance(value, dict):
        for member, item in value.items():
            if not is_unset(item):
                return f"{key}.{member}"
    return key


def _field_value(doc: Doc, path: str) -> object:
    """The value at a dotted path ("Privileges.Seccomp"), None where a step is missing or not an object."""
    value: object = doc
    for step in path.split("."):
        value = value.get(step) if isinstance(value, dict) else None
    return value


def _unsupported(doc: Doc, table: dict[str, FieldSupport], executor: str | None) -> list[tuple[str, str]]:
    out = []
    for key, support in table.items():
        value = _field_value(doc, key)
        if _is_default(value, support.defaults):
            continue
        acted_on = bool(support.executors) if executor is None else executor in support.executors
        if not acted_on:
            out.append((_set_path(key, value), support.instead))
    return out


def unsupported_container_fields(container: Doc, executor: str | None) -> list[tuple[str, str]]:
    """The fields a ContainerSpec sets that `executor` does not act on (None: that no executor acts on), each as
    (its path within the ContainerSpec, what to do instead), in the table's order."""
    return _unsupported(container, CONTAINER_SPEC_SUPPORT, executor)


def unsupported_task_fields(template: Doc, executor: str | None) -> list[tuple[str, str]]:
    """`unsupported_container_fields` for a whole TaskTemplate: paths within it ("ContainerSpec.Sysctls",
    "LogDriver")."""
    container = template.get("ContainerSpec")
    fields = unsupported_container_fields(container, executor) if isinstance(container, dict) else []
    return [(f"ContainerSpec.{path}", instead) for path, instead in fields] + _unsupported(
        template, TASK_SPEC_SUPPORT, executor)


# Mount types shoal mounts (the docker executor; the process executor mounts nothing), and the block of options
# Docker's Mount has for each type, passed to the engine as swarm mode's executor passes them. A mount without a
# Type is a bind mount, as in swarmkit (whose enum starts with BIND); npipe (Windows) and cluster (CSI volumes)
# are refused.
MOUNT_TYPES = ("bind", "volume", "tmpfs")
DEFAULT_MOUNT_TYPE = "bind"
MOUNT_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bind": ("BindOptions", ("Propagation", "NonRecursive", "CreateMountpoint", "ReadOnlyNonRecursive",
                             "ReadOnlyForceRecursive")),
    "volume": ("VolumeOptions", ("NoCopy", "Labels", "DriverConfig", "Subpath")),
    "tmpfs": ("TmpfsOptions", ("SizeBytes", "Mode", "Options")),
    "cluster": ("ClusterOptions", ()),
}

MOUNT_PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")

# Privileges.Seccomp.Mode and Privileges.AppArmor.Mode ("default", like "", sets nothing).
SECCOMP_MODES = ("default", "unconfined", "custom")
APPARMOR_MODES = ("default", "disabled")

# The resources a ulimit may name (go-units' ulimitNameMapping, which the docker CLI and the engine read).
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
                "rtprio", "rttime", "sigpending", "stack")
UNLIMITED = -1  # a ulimit's Soft or Hard

# Capabilities as the docker CLI writes them into a spec ("net_admin" → "CAP_NET_ADMIN"); ALL stands for all.
ALL_CAPABILITIES = "ALL"


def normalise_capability(name: str) -> str:
    """docker's NormalizeCapability: upper case with the CAP_ prefix; ALL, and the CLI's RESET, as they are."""
    name = name.strip().upper()
    if name in (ALL_CAPABILITIES, "RESET") or name.startswith("CAP_"):
        return name
    return f"CAP_{name}"


def capability_list(names: set[str]) -> list[str]:
    """A set of capabilities as a spec lists them: sorted, or ALL alone."""
    return [ALL_CAPABILITIES] if ALL_CAPABILITIES in names else sorted(names)


def effective_capability_lists(add: list[str], drop: list[str]) -> tuple[list[str], list[str]]:
    """CapabilityAdd and CapabilityDrop from the capabilities to add and drop, as `docker service create` and
    `docker stack deploy` make them (EffectiveCapAddCapDrop): normalised, sorted, ALL standing for all, and a
    capability both added and dropped only added."""
    added = {normalise_capability(name) for name in add}
    dropped = {normalise_capability(name) for name in drop}
    if ALL_CAPABILITIES in added:
        added = {ALL_CAPABILITIES}
    if ALL_CAPABILITIES in dropped:
        dropped = {ALL_CAPABILITIES}
    return sorted(added), sorted(dropped - added)


# ContainerSpec.Hosts entries are /etc/hosts lines, "IP name [alias...]"; the engine puts this word in place of
# the address of the node's gateway (Docker's `--host name:host-gateway`).
HOST_GATEWAY = "host-gateway"


# ---- platforms ------------------------------------------------------------------------------------------

# Go's names for machine architectures, which Docker reports and placement platforms use (`linux/amd64`).
GO_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386",
                    "ppc64le": "ppc64le", "s390x": "s390x"}


def go_architecture(name: str) -> str:
    """`uname -m`'s name (or Go's own) as Go names it: "x86_64" → "amd64"."""
    lowered = name.lower()
    return GO_ARCHITECTURES.get(lowered, lowered)


# ---- shoal's own keys on stored documents ----------------------------------------------------------------
# Every key that starts with PRIVATE is bookkeeping: the API drops it from every view.

PRIVATE = "Shoal"
BACKEND_PORTS = "ShoalBackendPorts"  # a task's published target ports as its node's mesh reaches them
DATA_PATH_PORT = "ShoalDataPathPort"  # a node's VXLAN port, in its Description
MESH_ERRORS = "ShoalMeshErrors"  # a node's routing-mesh failures, in its Status
SEALED_DATA = "ShoalSealedData"  # a secret's data, sealed with the cluster's data key
TRUST_BUNDLE = "ShoalTrustBundle"  # the roots nodes trust now (PEM)
CA_CHAIN = "ShoalCAChain"  # appended to every certificate issued during a CA rotation: the cross-signed new root
SIGNING_ISSUER = "ShoalSigningIssuer"  # who signs node certificates now (TLSInfo's issuer fields)
UNLOCK_KEY_ID = "ShoalUnlockKeyID"
RESTARTING_UNTIL = "ShoalRestartingUntil"  # a node whose daemon restarts keeps its tasks until then
SPEC_DIGEST = "ShoalSpecDigest"
DOWN_SINCE = "ShoalDownSince"
RUNNING_SINCE = "ShoalRunningSince"


# ---- jobs (Docker's `JobStatus` / `JobIteration`) ----------------------------------------------------------

JOB_STATUS = "JobStatus"  # on a job's Service: {"JobIteration": {"Index": n}, "LastExecution": time}
JOB_ITERATION = "JobIteration"  # on a job's task: {"Index": n}, the run of the job it belongs to


def service_mode(spec: Doc) -> str:
    """The mode a ServiceSpec sets (one of MODES); Replicated when it sets none, as Docker defaults."""
    mode = spec.get("Mode") or {}
    return next((key for key in MODES if mode.get(key) is not None), REPLICATED)


def is_job(service: Doc) -> bool:
    return service_mode(service.get("Spec") or {}) in JOB_MODES


def is_replicated_job(service: Doc) -> bool:
    return service_mode(service.get("Spec") or {}) == REPLICATED_JOB


def is_global_job(service: Doc) -> bool:
    return service_mode(service.get("Spec") or {}) == GLOBAL_JOB


def job_iteration(doc: Doc) -> int:
    """The run of a job a service is at (its JobStatus), or a task belongs to (its JobIteration); -1 for none."""
    iteration = (doc.get(JOB_STATUS) or {}).get(JOB_ITERATION) if JOB_STATUS in doc else doc.get(JOB_ITERATION)
    if not isinstance(iteration, dict):
        return -1
    return int(iteration.get("Index") or 0)


def job_limits(service: Doc) -> tuple[int, int]:
    """A replicated job's (MaxConcurrent, TotalCompletions), defaults filled in."""
    job = (service["Spec"].get("Mode") or {}).get(REPLICATED_JOB) or {}
    concurrent = job.get("MaxConcurrent")
    concurrent = DEFAULT_MAX_CONCURRENT if concurrent is None else int(concurrent)
    total = job.get("TotalCompletions")
    return concurrent, concurrent if total is None else int(total)


# ---- image references -----------------------------------------------------------------------------------

# The grammar of distribution/reference: [domain/]path[:tag][@digest], path components lowercase.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_PATH_COMPONENT_ONLY = re.compile(_PATH_COMPONENT)
_DEFAULT_DOMAINS = ("docker.io", "index.docker.io")


@dataclass(frozen=True)
class ImageReference:
    """An image reference split as Docker splits it: "registry:5000/team/app:v2@sha256:…"."""

    domain: str  # "" when the reference names none (Docker Hub)
    path: str
    tag: str
    digest: str

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse a reference, or raise InvalidArgument saying what a valid one looks like."""
        match = _IMAGE_REFERENCE.fullmatch(text) if len(text) <= 255 else None
        if match is None:
            raise InvalidArgument(
                f'"{text}" is not a valid repository/tag: use a lowercase name with an optional tag or digest, '
                'e.g. "busybox", "busybox:1.36" or "registry.example.com:5000/team/app:v2"'
            )
        domain, path = match["domain"] or "", match["path"]
        # "team/app" has no domain: a first component is a registry only with a dot, a port, or "localhost".
        if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
            if not _PATH_COMPONENT_ONLY.fullmatch(domain):
                raise InvalidArgument(f'"{text}" is not a valid repository/tag: path components are lowercase')
            domain, path = "", f"{domain}/{path}"
        return cls(domain=domain, path=path, tag=match["tag"] or "", digest=match["digest"] or "")

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def pull(self) -> tuple[str, str]:
        """(repository, tag or digest) to pull: "busybox" → ("busybox", "latest"); a digest wins over a tag."""
        return self.repository, self.digest or self.tag or "latest"

    @property
    def program(self) -> str:
        """The program the image names for the process executor: ".../nginx:1.11@sha256:…" → "nginx"."""
        return self.path.rsplit("/", 1)[-1]

    def familiar(self) -> str:
        """As `service ls`/`service ps` show it: Docker Hub's domain and "library/" dropped, the digest dropped
        when there is a tag; an untagged reference is shown whole."""
        if not self.tag:
            return str(self)
        path = self.path
        if self.domain in _DEFAULT_DOMAINS or not self.domain:
            path = path.removeprefix("library/") if self.domain else path
            return f"{path}:{self.tag}"
        return f"{self.domain}/{path}:{self.tag}"

    def __str__(self) -> str:
        text = self.repository + (f":{self.tag}" if self.tag else "")
        return text + (f"@{self.digest}" if self.digest else "")


def familiar_image(image: str) -> str:
    """`ImageReference.familiar`, for text that may not be a valid reference (shown as it is then)."""
    try:
        return ImageReference.parse(image).familiar()
    except InvalidArgument:
        return image


def is_ip_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (a host line's, a nameserver's)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---- placement constraints ------------------------------------------------------------------------------

EQ = "=="
NE = "!="
NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."
CONSTRAINT_KEYS = ("node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch")

# The character sets swarmkit accepts; values exclude characters of present or future operators (<, >, ~).
_KEY = re.compile(r"[a-z_][a-z0-9\-_.]+", re.IGNORECASE)
_VALUE = re.compile(r"[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+", re.IGNORECASE)
_HOW = "use KEY==VALUE or KEY!=VALUE, e.g. node.role==manager"


@dataclass(frozen=True)
class Constraint:
    """One placement constraint, `key op value`. The key is lower-cased except for a label's name
    (label names are case-sensitive); values compare case-insensitively, as swarmkit's do."""

    key: str
    operator: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"


def _normalized_key(key: str) -> str | None:
    lowered = key.lower()
    if lowered in CONSTRAINT_KEYS:
        return lowered
    for prefix in (NODE_LABEL_PREFIX, ENGINE_LABEL_PREFIX):
        if lowered.startswith(prefix) and len(key) > len(prefix):
            return prefix + key[len(prefix):]
    return None


def parse_constraint(expr: str) -> Constraint:
    """Parse `KEY==VALUE` or `KEY!=VALUE`, or raise InvalidArgument saying what is wrong in one line."""
    for operator in (EQ, NE):
        if operator in expr:
            raw_key, raw_value = (part.strip() for part in expr.split(operator, 1))
            break
    else:
        raise InvalidArgument(f'invalid constraint "{expr}": {_HOW}')
    if not _KEY.fullmatch(raw_key):
        raise InvalidArgument(f'invalid constraint "{expr}": key "{raw_key}" is invalid; {_HOW}')
    key = _normalized_key(raw_key)
    if key is None:
        known = ", ".join((*CONSTRAINT_KEYS, NODE_LABEL_PREFIX + "NAME", ENGINE_LABEL_PREFIX + "NAME"))
        raise InvalidArgument(f'invalid constraint "{expr}": unknown key "{raw_key}" (use one of {known})')
    if not _VALUE.fullmatch(raw_value):
        raise InvalidArgument(f'invalid constraint "{expr}": value "{raw_value}" is invalid; {_HOW}')
    if key == "node.ip":
        try:
            ipaddress.ip_network(raw_value, strict=False)
        except ValueError:
            raise InvalidArgument(
                f'invalid constraint "{expr}": node.ip takes an address or a network, e.g. node.ip==10.0.0.0/24'
            ) from None
    return Constraint(key=key, operator=operator, value=raw_value)


def parse_constraints(exprs: list[str]) -> list[Constraint]:
    return [parse_constraint(e) for e in exprs]


# ---- placement preferences ------------------------------------------------------------------------------

def parse_spread_descriptor(descriptor: str) -> str:
    """The label a `spread=` preference spreads over, normalised like a constraint key ("node.labels.zone"),
    or InvalidArgument: swarmkit spreads over node and engine labels only."""
    key = _normalized_key(descriptor.strip())
    if key is None or not key.startswith((NODE_LABEL_PREFIX, ENGINE_LABEL_PREFIX)):
        raise InvalidArgument(f'invalid placement preference "spread={descriptor}": spread over a label, '
                              "e.g. spread=node.labels.zone or spread=engine.labels.rack")
    return key


def spread_descriptors(placement: Doc | None) -> list[str]:
    """The labels of `Placement.Preferences`, outermost first; InvalidArgument for any other preference."""
    out = []
    for index, preference in enumerate((placement or {}).get("Preferences") or []):
        spread = preference.get("Spread") if isinstance(preference, dict) else None
        descriptor = spread.get("SpreadDescriptor") if isinstance(spread, dict) else None
        if not isinstance(descriptor, str):
            raise InvalidArgument(f"Placement.Preferences[{index}] must be "
                                  '{"Spread": {"SpreadDescriptor": "node.labels.NAME"}}: spread is the only preference')
        out.append(parse_spread_descriptor(descriptor))
    return out
