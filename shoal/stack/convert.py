"""A compose document as the API objects of a stack: what `docker stack deploy` makes of it (docker/cli's
`cli/compose/convert`), pure but for reading the files that secrets and configs name.

Objects are named `<stack>_<key>` unless the file gives a `name` (or marks them `external`: then they must
exist and are used by name), and carry the label `com.docker.stack.namespace=<stack>`; services carry
`com.docker.stack.image` too. A service that names no network joins `<stack>_default`, created for it. Each
service is reachable on its networks by its short name (an alias) as well as by `<stack>_<service>`.

A service's `volumes` become mounts (docker/cli `convert/volume.go`): a named volume is the top-level volume
`<stack>_<key>` (its `name` if it gives one), made by the engine on first use with the stack's label and the
volume's driver and options; a path is a bind mount (relative to the compose file's folder); `tmpfs` a tmpfs.
The container settings (`cap_add`, `sysctls`, `ulimits`, `dns`, `extra_hosts`, `logging`, `init`, …) convert as
in `convert/service.go`; the docker executor acts on them, and a node with the process executor rejects such
tasks.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import InvalidArgument
from shoal.spec import MOUNT_PROPAGATIONS, MOUNT_TYPES, effective_capability_lists
from shoal.stack import IMAGE_LABEL, NAMESPACE_LABEL, StackError
from shoal.stack.compose import as_mapping
from shoal.stack.schema import IGNORED_SERVICE_KEYS
from shoal.timefmt import parse_duration
from shoal.types import Doc

DEFAULT_NETWORK = "default"
_MEMORY = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$")
_PORT = re.compile(r"^(?:(?P<ip>\d+\.\d+\.\d+\.\d+):)?(?:(?P<published>\d+(?:-\d+)?):)?(?P<target>\d+(?:-\d+)?)(?:/(?P<proto>tcp|udp))?$")


@dataclass
class StackObjects:
    """What one deploy of a stack asks for."""

    networks: dict[str, Doc] = field(default_factory=dict)  # name -> /networks/create body
    external_networks: list[str] = field(default_factory=list)
    secrets: dict[str, Doc] = field(default_factory=dict)  # name -> /secrets/create body
    external_secrets: list[str] = field(default_factory=list)
    configs: dict[str, Doc] = field(default_factory=dict)
    external_configs: list[str] = field(default_factory=list)
    services: dict[str, Doc] = field(default_factory=dict)  # name -> ServiceSpec (references by name)
    ignored: list[str] = field(default_factory=list)  # "build", "depends_on", … (sorted, once each)


def scoped(stack: str, name: str) -> str:
    return f"{stack}_{name}"


def memory_bytes(value: Any, where: str) -> int:
    """"512M", "1g", "100mb", "2GiB" or a number of bytes, in bytes (binary units, as docker reads them)."""
    if isinstance(value, int):
        return value
    match = _MEMORY.match(str(value))
    if not match:
        raise StackError(f'{where}: invalid memory size {value!r}: use a size such as "512M" or "1G"')
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


def nanoseconds(value: Any, where: str) -> int:
    try:
        return parse_duration(str(value))
    except InvalidArgument as exc:
        raise StackError(f"{where}: {exc.message}") from None


def _mapping(value: Any, environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """A list of "K=V" or a mapping, as a mapping of text; "K" alone takes its value from `environ` when given."""
    return {str(k): (environ.get(str(k)) if environ is not None else "") if v is None else _scalar(v)
            for k, v in as_mapping(value).items()}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _labels(value: Any, stack: str) -> dict[str, str]:
    labels = {k: v or "" for k, v in _mapping(value).items()}
    labels[NAMESPACE_LABEL] = stack
    return labels


def _words(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    try:
        return shlex.split(str(value))
    except ValueError as exc:
        raise StackError(f"{where}: {exc}") from None


def _range(text: str, where: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        numbers = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise StackError(f"{where}: invalid port {text!r}: give a number such as 8080") from None
    if not numbers or not all(0 < n < 65536 for n in numbers):
        raise StackError(f"{where}: invalid port {text!r}: ports are 1-65535")
    return numbers


def ports(entries: list[Any], where: str) -> list[Doc]:
    out: list[Doc] = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if isinstance(entry, dict):
            targets = _range(str(entry["target"]), at)
            numbers = _range(str(entry["published"]), at) if entry.get("published") else [0]
            if len(targets) > 1 or len(numbers) > 1:
                raise StackError(f"{at}: port ranges are given in the short syntax (\"8000-8001:80-81\"), one "
                                 "port per entry in the long one")
            target, published = targets[0], numbers[0]
            out.append({"Protocol": entry.get("protocol") or "tcp", "TargetPort": target,
                        "PublishedPort": published, "PublishMode": entry.get("mode") or "ingress"})
            continue
        match = _PORT.match(str(entry))
        if not match:
            raise StackError(f'{at}: invalid port {entry!r}: use "TARGET", "PUBLISHED:TARGET" or '
                             '"PUBLISHED:TARGET/udp"')
        targets = _range(match.group("target"), at)
        numbers = _range(match.group("published"), at) if match.group("published") else [0] * len(targets)
        if len(numbers) != len(targets):
            raise StackError(f"{at}: the published and target port ranges of {entry!r} differ in length")
        for number, target in zip(numbers, targets, strict=True):
            out.append({"Protocol": match.group("proto") or "tcp", "TargetPort": target,
                        "PublishedPort": number, "PublishMode": "ingress"})
    return out


def _update_config(config: Doc, where: str) -> Doc:
    out: Doc = {"Parallelism": int(config.get("parallelism", 1))}
    if "delay" in config:
        out["Delay"] = nanoseconds(config["delay"], f"{where}.delay")
    if "failure_action" in config:
        out["FailureAction"] = config["failure_action"]
    if "monitor" in config:
        out["Monitor"] = nanoseconds(config["monitor"], f"{where}.monitor")
    if "max_failure_ratio" in config:
        out["MaxFailureRatio"] = config["max_failure_ratio"]
    if "order" in config:
        out["Order"] = config["order"]
    return out


def _resources(resources: Doc, where: str) -> Doc:
    out: Doc = {"Limits": {}, "Reservations": {}}
    for key, name in (("limits", "Limits"), ("reservations", "Reservations")):
        part = resources.get(key) or {}
        if "cpus" in part:
            try:
                out[name]["NanoCPUs"] = int(float(part["cpus"]) * 1e9)
            except (ValueError, OverflowError):
                raise StackError(f"{where}.{key}.cpus: invalid number of CPUs {part['cpus']!r}") from None
        if "memory" in part:
            out[name]["MemoryBytes"] = memory_bytes(part["memory"], f"{where}.{key}.memory")
    return out


def _healthcheck(check: Doc, where: str) -> Doc:
    if check.get("disable"):
        return {"Test": ["NONE"]}
    out: Doc = {}
    if "test" in check:
        test = check["test"]
        out["Test"] = ["CMD-SHELL", test] if isinstance(test, str) else [str(t) for t in test]
    for key, name in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
        if key in check:
            out[name] = nanoseconds(check[key], f"{where}.{key}")
    if "retries" in check:
        out["Retries"] = int(check["retries"])
    return out


def _file_refs(kind: str, refs: list[Any], declared: Mapping[str, str], where: str) -> list[Doc]:
    """A service's secrets or configs: each names a top-level entry (`declared` maps it to its object name)."""
    out: list[Doc] = []
    for entry in refs:
        ref = entry if isinstance(entry, dict) else {"source": entry}
        source = str(ref["source"])
        if source not in declared:
            raise StackError(f"{where}: undefined {kind} {source!r}: declare it under the top-level '{kind}s'")
        default_target = source if kind == "secret" else f"/{source}"
        mode = ref.get("mode", 0o444)
        try:
            mode = int(mode, 8) if isinstance(mode, str) else int(mode)
        except ValueError:
            raise StackError(f"{where}: mode {mode!r} of {kind} {source} is not an octal file mode") from None
        name_key, id_key = ("SecretName", "SecretID") if kind == "secret" else ("ConfigName", "ConfigID")
        out.append({"File": {"Name": str(ref.get("target") or default_target), "UID": str(ref.get("uid", "0")),
                             "GID": str(ref.get("gid", "0")), "Mode": mode},
                    id_key: "", name_key: declared[source]})
    return out


def parse_volume(text: str, where: str) -> Doc:
    """The short syntax "[SOURCE:]TARGET[:MODE]" in the long one (docker/cli's ParseVolume, Linux paths): a
    source that is a path makes a bind mount, any other a named volume; MODE is a comma list of ro, rw, nocopy
    and a bind propagation (other words are ignored, as docker ignores them)."""
    if not text:
        raise StackError(f"{where}: invalid empty volume spec")
    parts = text.split(":")
    if len(parts) > 3 or any(not part for part in parts):
        why = "too many colons" if len(parts) > 3 else "empty section between colons"
        raise StackError(f"{where}: invalid spec: {text}: {why}")
    volume: Doc = {"target": parts[-1]} if len(parts) == 1 else {"source": parts[0], "target": parts[1]}
    for option in (parts[2].split(",") if len(parts) == 3 else []):
        if option in ("ro", "rw"):
            volume["read_only"] = option == "ro"
        elif option == "nocopy":
            volume["volume"] = {"nocopy": True}
        elif option in MOUNT_PROPAGATIONS:
            volume["bind"] = {"propagation": option}
    source = str(volume.get("source") or "")
    volume["type"] = "bind" if source[:1] in (".", "/", "~") else "volume"
    return volume


def _networks(service: Doc, short_name: str, declared: Mapping[str, str], where: str) -> list[Doc]:
    wanted = service.get("networks")
    if not wanted:  # none named (or an empty list): the stack's default network, as docker's CLI does
        wanted = {DEFAULT_NETWORK: None}
    elif isinstance(wanted, list):
        wanted = {name: None for name in wanted}
    out: list[Doc] = []
    for key, options in wanted.items():
        if key not in declared:
            raise StackError(f"{where}: undefined network {key!r}: declare it under the top-level 'networks'")
        aliases = [short_name] + [str(a) for a in (options or {}).get("aliases") or [] if a != short_name]
        out.append({"Target": declared[key], "Aliases": aliases})
    return sorted(out, key=lambda n: str(n["Target"]))


class Converter:
    def __init__(self, stack: str, document: Doc, base_dir: Path, environ: Mapping[str, str],
                 read_file: Callable[[Path], bytes] | None = None) -> None:
        self.stack = stack
        self.document = document
        self.base_dir = base_dir
        self.environ = environ
        self.read_file = read_file or (lambda path: path.read_bytes())
        self.out = StackObjects()

    def run(self) -> StackObjects:
        services = self.document.get("services") or {}
        uses_default = any(not service.get("networks") for service in services.values())
        networks = self._networks(uses_default)
        secrets = self._file_objects("secret")
        configs = self._file_objects("config")
        ignored: set[str] = set()
        for short_name, service in sorted(services.items()):
            ignored.update(key for key in service if key in IGNORED_SERVICE_KEYS)
            name = scoped(self.stack, short_name)
            self.out.services[name] = self._service(short_name, service, networks, secrets, configs)
        self.out.ignored = sorted(ignored)
        return self.out

    def _networks(self, uses_default: bool) -> dict[str, str]:
        declared = dict(self.document.get("networks") or {})
        if uses_default and DEFAULT_NETWORK not in declared:
            declared[DEFAULT_NETWORK] = None
        names: dict[str, str] = {}
        for key, network in declared.items():
            network = network or {}
            external = network.get("external")
            if external:
                name = str((external.get("name") if isinstance(external, dict) else None)
                           or network.get("name") or key)
                names[key] = name
                self.out.external_networks.append(name)
                continue
            name = str(network.get("name") or scoped(self.stack, key))
            names[key] = name
            ipam: Doc = {"Driver": "default", "Config": []}
            for config in (network.get("ipam") or {}).get("config") or []:
                entry = {"Subnet": config.get("subnet")} if config.get("subnet") else {}
                if config.get("gateway"):
                    entry["Gateway"] = config["gateway"]
                ipam["Config"].append(entry)
            self.out.networks[name] = {
                "Name": name, "Driver": network.get("driver") or "overlay", "Scope": "swarm",
                "EnableIPv6": bool(network.get("enable_ipv6")), "IPAM": ipam,
                "Internal": bool(network.get("internal")), "Attachable": bool(network.get("attachable")),
                "Ingress": False, "Options": {str(k): _scalar(v) for k, v in
                                              (network.get("driver_opts") or {}).items()},
                "Labels": _labels(network.get("labels"), self.stack)}
        return names

    def _file_objects(self, kind: str) -> dict[str, str]:
        declared = self.document.get(f"{kind}s") or {}
        names: dict[str, str] = {}
        for key, obj in declared.items():
            where = f"{kind}s.{key}"
            external = obj.get("external")
            if external:
                name = str((external.get("name") if isinstance(external, dict) else None) or obj.get("name") or key)
                names[key] = name
                getattr(self.out, f"external_{kind}s").append(name)
                continue
            name = str(obj.get("name") or scoped(self.stack, key))
            names[key] = name
            getattr(self.out, f"{kind}s")[name] = {
                "Name": name, "Labels": _labels(obj.get("labels"), self.stack),
                "Data": base64.b64encode(self._data(obj, where)).decode()}
        return names

    def _data(self, obj: Doc, where: str) -> bytes:
        if "file" in obj:
            path = Path(str(obj["file"])).expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            try:
                return self.read_file(path)
            except OSError as exc:
                raise StackError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
        if "environment" in obj:
            variable = str(obj["environment"])
            if variable not in self.environ:
                raise StackError(f"{where}: environment variable {variable} is not set")
            return self.environ[variable].encode()
        if "content" in obj:
            return str(obj["content"]).encode()
        raise StackError(f"{where}: give its value with 'file', 'environment' or 'content', or mark it external")

    def _service(self, short_name: str, service: Doc, networks: dict[str, str], secrets: dict[str, str],
                 configs: dict[str, str]) -> Doc:
        where = f"services.{short_name}"
        deploy = service.get("deploy") or {}
        image = str(service["image"])
        container: Doc = {"Image": image, "Labels": _labels(service.get("labels"), self.stack)}
        if service.get("entrypoint") is not None:
            container["Command"] = _words(service["entrypoint"], f"{where}.entrypoint")
        if service.get("command") is not None:
            container["Args"] = _words(service["command"], f"{where}.command")
        for key, name in (("hostname", "Hostname"), ("working_dir", "Dir"), ("user", "User"),
                          ("stop_signal", "StopSignal")):
            if service.get(key):
                container[name] = str(service[key])
        env = _mapping(service.get("environment"), self.environ)
        if env:
            container["Env"] = sorted(f"{k}={v}" for k, v in env.items() if v is not None)
        if service.get("tty"):
            container["TTY"] = True
        if service.get("read_only"):
            container["ReadOnly"] = True
        if "stop_grace_period" in service:
            container["StopGracePeriod"] = nanoseconds(service["stop_grace_period"], f"{where}.stop_grace_period")
        if service.get("healthcheck"):
            container["Healthcheck"] = _healthcheck(service["healthcheck"], f"{where}.healthcheck")
        if service.get("secrets"):
            container["Secrets"] = _file_refs("secret", service["secrets"], secrets, f"{where}.secrets")
        if service.get("configs"):
            container["Configs"] = _file_refs("config", service["configs"], configs, f"{where}.configs")
        self._container_settings(service, container, where)

        task: Doc = {"ContainerSpec": container,
                     "Resources": _resources(deploy.get("resources") or {}, f"{where}.deploy.resources")}
        if deploy.get("restart_policy"):
            policy = deploy["restart_policy"]
            restart: Doc = {"Condition": policy.get("condition") or "any"}
            if "delay" in policy:
                restart["Delay"] = nanoseconds(policy["delay"], f"{where}.deploy.restart_policy.delay")
            if "max_attempts" in policy:
                restart["MaxAttempts"] = int(policy["max_attempts"])
            if "window" in policy:
                restart["Window"] = nanoseconds(policy["window"], f"{where}.deploy.restart_policy.window")
            task["RestartPolicy"] = restart
        placement = deploy.get("placement") or {}
        task["Placement"] = {}
        if placement.get("constraints"):
            task["Placement"]["Constraints"] = list(placement["constraints"])
        if placement.get("preferences"):
            task["Placement"]["Preferences"] = [{"Spread": {"SpreadDescriptor": p["spread"]}}
                                                for p in placement["preferences"]]
        if placement.get("max_replicas_per_node"):
            task["Placement"]["MaxReplicas"] = int(placement["max_replicas_per_node"])
        task["Networks"] = _networks(service, short_name, networks, where)
        if service.get("logging") is not None:
            logging = service["logging"]
            driver: Doc = {"Name": str(logging.get("driver") or "")}
            if logging.get("options"):
                driver["Options"] = {str(k): "" if v is None else _scalar(v) for k, v in logging["options"].items()}
            task["LogDriver"] = driver

        kind = deploy.get("mode") or "replicated"
        if kind in ("global", "global-job"):
            if "replicas" in deploy:
                raise StackError(f"{where}.deploy: replicas can only be used with replicated or replicated-job mode")
            mode: Doc = {"Global": {}} if kind == "global" else {"GlobalJob": {}}
        elif kind == "replicated-job":  # as docker's: replicas is both the completions and the concurrency
            count = int(deploy.get("replicas", 1))
            mode = {"ReplicatedJob": {"MaxConcurrent": count, "TotalCompletions": count}}
        else:
            mode = {"Replicated": {"Replicas": int(deploy.get("replicas", 1))}}
        spec: Doc = {"Name": scoped(self.stack, short_name),
                     "Labels": {**_labels(deploy.get("labels"), self.stack), IMAGE_LABEL: image},
                     "TaskTemplate": task, "Mode": mode}
        if deploy.get("update_config"):
            spec["UpdateConfig"] = _update_config(deploy["update_config"], f"{where}.deploy.update_config")
        if deploy.get("rollback_config"):
            spec["RollbackConfig"] = _update_config(deploy["rollback_config"], f"{where}.deploy.rollback_config")
        endpoint: Doc = {"Mode": deploy.get("endpoint_mode") or "vip"}
        if service.get("ports"):
            endpoint["Ports"] = ports(service["ports"], f"{where}.ports")
        spec["EndpointSpec"] = endpoint
        return spec


    def _container_settings(self, service: Doc, container: Doc, where: str) -> None:
        """What docker/cli's convert.Service sets beyond the command and files: mounts, DNS, hosts, kernel
        settings, capabilities, limits, init (each only when the file gives it)."""
        if service.get("stdin_open"):
            container["OpenStdin"] = True
        if service.get("init") is not None:
            container["Init"] = bool(service["init"])
        if service.get("isolation"):
            container["Isolation"] = str(service["isolation"])
        if service.get("volumes"):
            container["Mounts"] = [self._mount(entry, f"{where}.volumes[{index}]")
                                   for index, entry in enumerate(service["volumes"])]
        hosts = service.get("extra_hosts") or []
        pairs = list(hosts.items()) if isinstance(hosts, dict) else [_host_pair(str(entry), where) for entry in hosts]
        if pairs:
            container["Hosts"] = [f"{address} {name}" for name, address in pairs]  # /etc/hosts lines, as swarm's
        dns: Doc = {}
        for key, name in (("dns", "Nameservers"), ("dns_search", "Search")):
            values = service.get(key)
            if values is not None:
                dns[name] = [str(value) for value in (values if isinstance(values, list) else [values])]
        if dns:
            container["DNSConfig"] = dns
        if service.get("sysctls"):
            container["Sysctls"] = {k: v or "" for k, v in _mapping(service["sysctls"]).items()}
        add, drop = effective_capability_lists(list(service.get("cap_add") or []), list(service.get("cap_drop") or []))
        if add:
            container["CapabilityAdd"] = add
        if drop:
            container["CapabilityDrop"] = drop
        if service.get("ulimits"):
            container["Ulimits"] = [_ulimit(name, value) for name, value in sorted(service["ulimits"].items())]
        if service.get("oom_score_adj"):
            container["OomScoreAdj"] = int(service["oom_score_adj"])

    def _mount(self, entry: Any, where: str) -> Doc:
        """One `volumes` entry as a Mount (docker/cli's convertVolumeToMount), keys in Docker's order."""
        mount = self._mount_fields(entry, where)
        order = ("Type", "Source", "Target", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions")
        return {key: mount[key] for key in order if key in mount}

    def _mount_fields(self, entry: Any, where: str) -> Doc:
        volume = parse_volume(entry, where) if isinstance(entry, str) else dict(entry)
        kind, source = str(volume["type"]), str(volume.get("source") or "")
        if kind not in MOUNT_TYPES:
            raise StackError(f"{where}: mount type {kind!r} is not supported by shoal: use bind, volume or tmpfs")
        for other in ("bind", "volume", "tmpfs"):
            if other != kind and volume.get(other) is not None:
                raise StackError(f"{where}: {other} options are incompatible with type {kind}")
        mount: Doc = {"Type": kind, "Target": str(volume.get("target") or "")}
        if not mount["Target"]:
            raise StackError(f"{where}: give the path inside the container as 'target'")
        if volume.get("read_only"):
            mount["ReadOnly"] = True
        if volume.get("consistency"):
            mount["Consistency"] = str(volume["consistency"])
        if kind == "tmpfs":
            if source:
                raise StackError(f"{where}: invalid tmpfs source, source must be empty")
            size = (volume.get("tmpfs") or {}).get("size")
            if size is not None:
                mount["TmpfsOptions"] = {"SizeBytes": memory_bytes(size, f"{where}.tmpfs.size")}
            return mount
        if kind == "bind":
            if not source:
                raise StackError(f"{where}: invalid bind source, source cannot be empty")
            mount["Source"] = self._host_path(source)
            if (volume.get("bind") or {}).get("propagation"):
                mount["BindOptions"] = {"Propagation": str(volume["bind"]["propagation"])}
            return mount
        if not source:
            return mount  # an anonymous volume
        declared = self.document.get("volumes") or {}
        if source not in declared:
            raise StackError(f"{where}: undefined volume {source!r}: declare it under the top-level 'volumes'")
        top = declared[source] or {}
        external = top.get("external")
        if external:  # used by its own name, as external networks are
            mount["Source"] = str((external.get("name") if isinstance(external, dict) else None)
                                  or top.get("name") or source)
        else:
            mount["Source"] = str(top.get("name") or scoped(self.stack, source))
        options: Doc = {}
        nocopy = bool((volume.get("volume") or {}).get("nocopy"))
        if nocopy:
            options["NoCopy"] = True
        if (volume.get("volume") or {}).get("subpath"):
            options["Subpath"] = str(volume["volume"]["subpath"])
        if not external:
            options["Labels"] = _labels(top.get("labels"), self.stack)
            if top.get("driver") or top.get("driver_opts"):
                driver: Doc = {"Name": str(top.get("driver") or "")}
                if top.get("driver_opts"):
                    driver["Options"] = {str(k): _scalar(v) for k, v in top["driver_opts"].items()}
                options["DriverConfig"] = driver
        mount["VolumeOptions"] = options
        return mount

    def _host_path(self, source: str) -> str:
        """A bind mount's source on the nodes: "~" is $HOME, a relative path is relative to the compose file's
        folder (joined, not resolved: docker does not follow links either)."""
        if source.startswith("~") and "HOME" in self.environ:
            source = self.environ["HOME"] + source[1:]
        return os.path.abspath(os.path.join(self.base_dir, source))


def _host_pair(entry: str, where: str) -> tuple[str, str]:
    """An `extra_hosts` entry, "name:address" or "name=address", as (name, address)."""
    name, has_equals, address = entry.partition("=")
    if not has_equals:
        name, _, address = entry.partition(":")
    if not name or not address:
        raise StackError(f'{where}.extra_hosts: {entry!r} is not "NAME:ADDRESS", e.g. "db:10.0.0.5"')
    return name, address


def _ulimit(name: str, value: Any) -> Doc:
    """A `ulimits` entry: a number is both limits, else {soft, hard}."""
    if isinstance(value, dict):
        return {"Name": name, "Hard": int(value["hard"]), "Soft": int(value["soft"])}
    return {"Name": name, "Hard": int(value), "Soft": int(value)}


def convert(stack: str, document: Doc, base_dir: Path, environ: Mapping[str, str],
            read_file: Callable[[Path], bytes] | None = None) -> StackObjects:
    """The stack's objects; StackError for a reference to something the file does not declare."""
    return Converter(stack, document, base_dir, environ, read_file).run()
