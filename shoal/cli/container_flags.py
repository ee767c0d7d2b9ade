"""The container flags of `service create` / `service update` (--mount, --dns…, --host, --cap-add, --sysctl,
--ulimit, --group, --log-driver, …), read and applied as the docker CLI 28 does (docker/cli `opts/mount.go`,
`opts/hosts.go`, `opts/capabilities.go`, go-units' `ParseUlimit`, `cli/command/service/update.go`).

Pure: flag values in, ContainerSpec pieces out. A bad value raises CliError worded as docker words it
(`invalid argument "…" for "--mount" flag: …`). Where docker sends what the engine will refuse later (a mount
type shoal does not make, `--sysctl` without a value, `--log-opt` without `--log-driver`, an OOM score out of
range), shoal says so at once instead.
"""

from __future__ import annotations

import copy
import csv
import ipaddress
import os
import re
from typing import Any

from shoal.cli.common import CliError
from shoal.cli.flags import parse_bool
from shoal.spec import (
    HOST_GATEWAY,
    MOUNT_PROPAGATIONS,
    MOUNT_TYPES,
    ULIMIT_NAMES,
    UNLIMITED,
    capability_list,
    effective_capability_lists,
    is_ip_address,
    normalise_capability,
)
from shoal.types import Doc

_RAM_SIZE = re.compile(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")
# docker/cli's validateDomain (opts.go), for --dns-search.
_DOMAIN = re.compile(r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])"
                     r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))*\.?\s*")
_INT = re.compile(r"[+-]?\d+")
# `service update --cap-add RESET`: forget the capabilities added so far (`normalise_capability` keeps it).
RESET_CAPABILITIES = "RESET"
OOM_SCORE_RANGE = (-1000, 1000)


def bad(flag: str, value: str, why: str) -> CliError:
    return CliError(f'invalid argument "{value}" for "{flag}" flag: {why}')


def _parse_int(text: str) -> int:
    """Go's strconv.ParseInt(text, 10, 64), with its error text."""
    if not _INT.fullmatch(text):
        raise ValueError(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    number = int(text)
    if not -(1 << 63) <= number < 1 << 63:
        raise ValueError(f'strconv.ParseInt: parsing "{text}": value out of range')
    return number


# ---- --mount ----------------------------------------------------------------------------------------------

def ram_in_bytes(text: str) -> int | None:
    """go-units' RAMInBytes: "512m", "1g", "1.5GiB", "64 MB", "100" (bytes); units b, k, m, g, t, p in any case,
    each 1024 times the one before, with an optional "i" and "b" after. None when it is no size."""
    match = _RAM_SIZE.fullmatch(text)
    if match is None:
        return None
    try:
        number = float(match.group(1))
    except ValueError:
        return None
    return int(number * 1024 ** " kmgtp".index((match.group(2) or " ").lower()))


def _mount_bool(key: str, value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"invalid value for {key}: {value}") from None


def parse_mount(flag: str, value: str) -> Doc:
    """docker's MountOpt: "type=bind,source=/srv,target=/srv,readonly", csv fields, a volume mount unless
    `type` says otherwise; options of one type (bind-*, volume-*, tmpfs-*) only with that type. Keys in the
    order of Docker's Mount, so that the body is the one docker sends."""
    try:
        return _parse_mount(value)
    except ValueError as exc:
        raise bad(flag, value, str(exc)) from None


def _parse_mount(value: str) -> Doc:
    try:
        fields = next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise ValueError(str(exc)) from None
    mount: Doc = {"Type": "volume"}
    # An option block exists once one of its options is given (even as false), as in docker's MountOpt.
    bind: Doc | None = None
    volume: Doc | None = None
    tmpfs: Doc | None = None
    image = False
    for field in fields:
        key, has_value, text = field.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                mount["ReadOnly"] = True
            elif key == "volume-nocopy":
                volume = volume or {"DriverConfig": {}}
                volume["NoCopy"] = True
            elif key == "bind-nonrecursive":
                bind = bind or {}
                bind["NonRecursive"] = True
            else:
                raise ValueError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "type":
            mount["Type"] = text.lower()
        elif key in ("source", "src"):
            # A relative path that starts with "." is made absolute here, as docker does for bind mounts.
            mount["Source"] = os.path.abspath(text) if text.startswith(".") else text
        elif key in ("target", "dst", "destination"):
            mount["Target"] = text
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _mount_bool(key, text)
        elif key == "consistency":
            mount["Consistency"] = text.lower()
        elif key == "bind-propagation":
            bind = bind or {}
            bind["Propagation"] = text.lower()
        elif key == "bind-nonrecursive":
            bind = bind or {}
            bind["NonRecursive"] = _mount_bool(key, text)
        elif key == "bind-recursive":
            recursive = {"enabled": "", "disabled": "NonRecursive", "writable": "ReadOnlyNonRecursive",
                         "readonly": "ReadOnlyForceRecursive"}
            if text not in recursive:
                raise ValueError(f'invalid value for {key}: {text} (must be "enabled", "disabled", "writable", '
                                 'or "readonly")')
            if recursive[text]:  # "enabled" is the engine's default
                bind = bind or {}
                bind[recursive[text]] = True
        elif key in ("volume-subpath", "volume-nocopy", "volume-label", "volume-driver", "volume-opt"):
            volume = volume or {"DriverConfig": {}}
            _volume_option(volume, key, text)
        elif key == "image-subpath":
            image = True
        elif key == "tmpfs-size":
            size = ram_in_bytes(text)
            if size is None:
                raise ValueError(f"invalid value for {key}: {text}")
            tmpfs = tmpfs or {}
            tmpfs["SizeBytes"] = size
        elif key == "tmpfs-mode":
            if not re.fullmatch(r"[0-7]+", text) or int(text, 8) >= 1 << 32:
                raise ValueError(f"invalid value for {key}: {text}")
            tmpfs = tmpfs or {}
            tmpfs["Mode"] = int(text, 8)
        else:
            raise ValueError(f"unexpected key '{key}' in '{field}'")
    return _checked_mount(mount, bind, volume, tmpfs, image)


def _volume_option(volume: Doc, key: str, text: str) -> None:
    if key == "volume-subpath":
        volume["Subpath"] = text
    elif key == "volume-nocopy":
        try:
            volume["NoCopy"] = parse_bool(text)
        except ValueError:
            raise ValueError(f"invalid value for volume-nocopy: {text}") from None
    elif key == "volume-label":
        name, _, label = text.partition("=")
        if name:
            volume.setdefault("Labels", {})[name] = label
    elif key == "volume-driver":
        volume["DriverConfig"]["Name"] = text
    else:
        name, _, option = text.partition("=")
        if name:
            volume["DriverConfig"].setdefault("Options", {})[name] = option


def _checked_mount(mount: Doc, bind: Doc | None, volume: Doc | None, tmpfs: Doc | None, image: bool) -> Doc:
    kind = str(mount["Type"])
    if not kind:
        raise ValueError("type is required")
    if not mount.get("Target"):
        raise ValueError("target is required")
    for prefix, given in (("volume", volume is not None), ("image", image), ("bind", bind is not None),
                          ("tmpfs", tmpfs is not None)):
        if given and kind != prefix:
            raise ValueError(f"cannot mix '{prefix}-*' options with mount type '{kind}'")
    bind = bind or {}
    if kind not in MOUNT_TYPES:
        kinds = ", ".join(f"'{name}'" for name in MOUNT_TYPES[:-1]) + f" or '{MOUNT_TYPES[-1]}'"
        raise ValueError(f"mount type '{kind}' is not supported by shoal: use {kinds}")
    if bind.get("ReadOnlyNonRecursive") and not mount.get("ReadOnly"):
        raise ValueError("option 'bind-recursive=writable' requires 'readonly' to be specified in conjunction")
    if bind.get("ReadOnlyForceRecursive"):
        if not mount.get("ReadOnly"):
            raise ValueError("option 'bind-recursive=readonly' requires 'readonly' to be specified in conjunction")
        if bind.get("Propagation") != "rprivate":
            raise ValueError("option 'bind-recursive=readonly' requires 'bind-propagation=rprivate' to be "
                             "specified in conjunction")
    propagation = bind.get("Propagation")
    if propagation and propagation not in MOUNT_PROPAGATIONS:
        raise ValueError(f"invalid bind-propagation: {propagation} (use one of {', '.join(MOUNT_PROPAGATIONS)})")
    # Zero values left out, as Go's encoder leaves out the fields of Docker's types that say omitempty.
    if not mount.get("ReadOnly"):
        mount.pop("ReadOnly", None)
    if kind == "bind" and bind:
        mount["BindOptions"] = {key: bind[key] for key in _BIND_ORDER if bind.get(key)}
    if volume is not None:
        mount["VolumeOptions"] = {key: volume[key] for key in _VOLUME_ORDER
                                  if volume.get(key) or key == "DriverConfig"}
    if tmpfs:
        mount["TmpfsOptions"] = {key: tmpfs[key] for key in ("SizeBytes", "Mode") if tmpfs.get(key)}
    return {key: mount[key] for key in _MOUNT_ORDER if key in mount}


# The fields of Docker's Mount and its option blocks, in their Go order (as docker sends them).
_MOUNT_ORDER = ("Type", "Source", "Target", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions")
_BIND_ORDER = ("Propagation", "NonRecursive", "CreateMountpoint", "ReadOnlyNonRecursive", "ReadOnlyForceRecursive")
_VOLUME_ORDER = ("NoCopy", "Labels", "Subpath", "DriverConfig")


def update_mounts(current: list[Doc], add: list[str] | None, remove: list[str] | None) -> list[Doc]:
    """docker's updateMounts: a mount added replaces the one at its target, removed ones go by target; the result
    sorted by source, then target."""
    by_target: dict[str, Doc] = {}
    for value in add or []:
        mount = parse_mount("--mount-add", value)
        if mount["Target"] in by_target:
            raise CliError("duplicate mount target")
        by_target[mount["Target"]] = mount
    for mount in current:
        by_target.setdefault(str(mount.get("Target") or ""), mount)
    removed = set(remove or [])
    kept = [mount for target, mount in by_target.items() if target not in removed]
    return sorted(kept, key=lambda mount: (str(mount.get("Source") or ""), str(mount.get("Target") or "")))


# ---- --host, --dns, --dns-search ----------------------------------------------------------------------------

def parse_host(flag: str, value: str) -> str:
    """docker's ValidateExtraHost, "name:IP" (or "name=IP", the address maybe in brackets, or "host-gateway"),
    as the swarm spec's /etc/hosts line "IP name"."""
    name, has_equals, address = value.partition("=")
    if not has_equals:
        name, has_colon, address = value.partition(":")
        if not has_colon:
            name = ""
    if not name or ":" in name:
        raise bad(flag, value, f'bad format for add-host: "{value}"')
    if address != HOST_GATEWAY:
        if len(address) > 2 and address[0] == "[" and address[-1] == "]":
            address = address[1:-1]
        if not is_ip_address(address.strip()):
            raise bad(flag, value, f'invalid IP address in add-host: "{address}"')
    return f"{address} {name}"


def update_hosts(current: list[str], add: list[str] | None, remove: list[str] | None) -> list[str]:
    """docker's updateHosts: `--host-rm name` takes the name off every line (`name:IP` off that address's only);
    a line left without names goes; added lines follow, duplicates dropped."""
    removals = [(entry.partition(":")[0], entry.partition(":")[2]) for entry in remove or []]
    out: list[str] = []
    for entry in current:
        words = entry.split()
        if not words:
            continue
        address, names = words[0], words[1:]
        for name, only_at in removals:
            if not only_at or only_at == address:
                names = [other for other in names if other != name]
        if names:
            out.append(" ".join([address, *names]))
    out += [parse_host("--host-add", value) for value in add or []]
    return list(dict.fromkeys(out))


def parse_dns_server(flag: str, value: str) -> str:
    """docker's ValidateIPAddress: an address, in its canonical form."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise bad(flag, value, f"IP address is not correctly formatted: {value}") from None


def parse_dns_search(flag: str, value: str) -> str:
    """docker's ValidateDNSSearch: a domain name, or "." for none."""
    text = value.strip(" ")
    if text == ".":
        return text
    if not re.search(r"[a-zA-Z]", text) or not _DOMAIN.fullmatch(text) or len(text.rstrip()) >= 255:
        raise bad(flag, value, f"{text} is not a valid domain")
    return text.rstrip()


def dns_config(nameservers: list[str], search: list[str], options: list[str]) -> Doc:
    """A DNSConfig with the lists that are not empty (docker omits the others)."""
    config: Doc = {}
    for key, values in (("Nameservers", nameservers), ("Search", search), ("Options", options)):
        if values:
            config[key] = values
    return config


def update_dns_config(current: Doc | None, args: Any) -> Doc:
    """docker's updateDNSConfig: each list with its -add values (checked) and without its -rm values, duplicates
    dropped, sorted."""
    current = current or {}

    def updated(key: str, add: list[str], remove: list[str] | None) -> list[str]:
        values = list(dict.fromkeys([*(current.get(key) or []), *add]))
        return sorted(value for value in values if value not in set(remove or []))

    return dns_config(
        updated("Nameservers", [parse_dns_server("--dns-add", v) for v in args.dns_add or []], args.dns_rm),
        updated("Search", [parse_dns_search("--dns-search-add", v) for v in args.dns_search_add or []],
                args.dns_search_rm),
        updated("Options", list(args.dns_option_add or []), args.dns_option_rm))


# ---- --cap-add / --cap-drop ---------------------------------------------------------------------------------

def effective_capabilities(add: list[str] | None, drop: list[str] | None) -> tuple[list[str], list[str]]:
    """`service create`'s --cap-add and --cap-drop (docker's EffectiveCapAddCapDrop), where RESET means nothing."""
    def kept(names: list[str] | None) -> list[str]:
        return [name for name in names or [] if normalise_capability(name) != RESET_CAPABILITIES]

    return effective_capability_lists(kept(add), kept(drop))


def update_capabilities(container: Doc, add: list[str] | None, drop: list[str] | None) -> None:
    """docker's updateCapabilities: dropping a capability the service adds takes it off the added ones (and
    adding one it drops off the dropped ones) rather than listing it twice; RESET forgets a list first."""
    current_add = {normalise_capability(name) for name in container.get("CapabilityAdd") or []}
    current_drop = {normalise_capability(name) for name in container.get("CapabilityDrop") or []}
    to_add = {normalise_capability(name) for name in add or []}
    to_drop = {normalise_capability(name) for name in drop or []}
    if RESET_CAPABILITIES in to_add:
        current_add, to_add = set(), to_add - {RESET_CAPABILITIES}
    if RESET_CAPABILITIES in to_drop:
        current_drop, to_drop = set(), to_drop - {RESET_CAPABILITIES}
    for name in to_drop - to_add:
        if name in current_add:
            current_add.discard(name)
        else:
            current_drop.add(name)
    for name in to_add:
        if name in current_drop:
            current_drop.discard(name)
        else:
            current_add.add(name)
    for key, names in (("CapabilityAdd", current_add), ("CapabilityDrop", current_drop)):
        if names:
            container[key] = capability_list(names)
        else:
            container.pop(key, None)


# ---- --sysctl, --ulimit, --log-opt, --oom-score-adj -----------------------------------------------------

def parse_key_value(flag: str, value: str, example: str) -> tuple[str, str]:
    """A "KEY=VALUE" flag value. Docker also takes a bare KEY (as KEY with an empty value, or for --log-opt
    this shell's variable KEY), which the engine then refuses or ignores; shoal asks for the value."""
    key, has_value, text = value.partition("=")
    if not key or not has_value:
        raise bad(flag, value, f"use KEY=VALUE, e.g. {example}")
    return key, text


def parse_ulimit(flag: str, value: str) -> Doc:
    """go-units' ParseUlimit: "nofile=1024:2048" or "nproc=512" (soft = hard); -1 is unlimited."""
    name, has_value, limits = value.partition("=")
    if not has_value:
        raise bad(flag, value, f"invalid ulimit argument: {value}")
    if name not in ULIMIT_NAMES:
        raise bad(flag, value, f"invalid ulimit type: {name}")
    parts = limits.split(":")
    if len(parts) > 2:
        raise bad(flag, value, f"too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`")
    try:
        hard = _parse_int(parts[1]) if len(parts) == 2 else None
        soft = _parse_int(parts[0])
    except ValueError as exc:
        raise bad(flag, value, str(exc)) from None
    hard = soft if hard is None else hard
    if hard != UNLIMITED:
        if soft == UNLIMITED:
            raise bad(flag, value, "ulimit soft limit must be less than or equal to hard limit: soft: -1 "
                                   f"(unlimited), hard: {hard}")
        if soft > hard:
            raise bad(flag, value, f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
    return {"Name": name, "Hard": hard, "Soft": soft}


def ulimits(flag: str, values: list[str] | None, current: list[Doc] | None = None,
            remove: list[str] | None = None) -> list[Doc]:
    """Ulimits by name (a later one wins, removed names go), sorted by name, as docker's UlimitOpt and
    updateUlimits keep them."""
    by_name = {str(limit.get("Name")): limit for limit in current or []}
    for name in remove or []:
        by_name.pop(name.partition("=")[0], None)
    for value in values or []:
        limit = parse_ulimit(flag, value)
        by_name[limit["Name"]] = limit
    return [by_name[name] for name in sorted(by_name)]


def oom_score_adj(flag: str, value: str) -> int:
    try:
        score = _parse_int(value)
    except ValueError as exc:
        raise bad(flag, value, str(exc)) from None
    low, high = OOM_SCORE_RANGE
    if not low <= score <= high:
        raise bad(flag, value, f"must be from {low} to {high}")
    return score


def log_driver(name: str | None, options: list[str] | None, current: Doc | None) -> Doc | None:
    """TaskTemplate.LogDriver from --log-driver and --log-opt (docker's toLogDriver / updateLogDriver: a driver
    replaces the one before, options and all; no driver leaves it as it is)."""
    opts = dict(parse_key_value("--log-opt", value, "max-size=10m") for value in options or [])
    if not name:
        if opts:
            raise CliError("--log-opt needs --log-driver: give the driver too, e.g. --log-driver json-file "
                           "--log-opt max-size=10m")
        return current
    driver: Doc = {"Name": name}
    if opts:
        driver["Options"] = opts
    return driver


def updated_groups(current: list[str], add: list[str] | None, remove: list[str] | None) -> list[str]:
    """docker's updateGroups: added, removed, sorted."""
    removed = set(remove or [])
    return sorted(group for group in [*current, *(add or [])] if group not in removed)


def updated_sysctls(current: Doc | None, add: list[str] | None, remove: list[str] | None) -> Doc:
    sysctls = copy.deepcopy(current) or {}
    for value in remove or []:
        sysctls.pop(value.partition("=")[0], None)
    sysctls.update(parse_key_value("--sysctl-add", value, "net.core.somaxconn=1024") for value in add or [])
    return sysctls
