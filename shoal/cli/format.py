"""How the CLI prints things, the way the docker CLI does: tab-aligned tables, "5 seconds ago",
"7.451GiB", natural name order, truncated IDs, and the rows of the list commands (`node ls`, `service ls`,
`service ps`, `secret ls`, `network ls`, `stack ls`): each object as docker's formatter context shows it to a
`--format` template, which the default tables print too (shoal.cli.formatter).

Everything here is pure: data in, strings out (the current time is an argument).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from shoal.cli.formatter import (
    ListFormat,
    Row,
    go_time_string,
    label_method,
    labels_text,
    render_list,
    tabwrite,
)
from shoal.spec import familiar_image
from shoal.timefmt import from_rfc3339
from shoal.types import Doc

SHORT_ID = 12
MAX_ERROR_WIDTH = 30


# ---- generic text ---------------------------------------------------------------------------------------

def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like Go's tabwriter(minwidth=10, padding=3); the last column is not padded."""
    lines = [list(header), *[list(row) for row in rows]]
    return tabwrite("".join("\t".join(line) + "\n" for line in lines))


def capitalize(text: str) -> str:
    """docker's PrettyPrint: first letter upper case, the rest lower case ("ready" -> "Ready")."""
    return text[:1].upper() + text[1:].lower()


def truncate_id(object_id: str) -> str:
    return object_id[:SHORT_ID]


def ellipsis(text: str, width: int) -> str:
    """Cut `text` to `width` characters, the last one being "…" when it was cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width == 1:
        return text[0]
    return text[: width - 1] + "…"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: "Less than a second", "5 seconds", "About a minute", "3 hours", "2 weeks"."""
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def time_ago(timestamp: str | None, now: float) -> str:
    """"5 seconds ago" for an RFC 3339 timestamp, lower case as in `service ps`."""
    if not timestamp:
        return ""
    try:
        then = from_rfc3339(timestamp)
    except Exception:
        return ""
    return human_duration(max(0.0, now - then)).lower() + " ago"


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def bytes_size(size: float) -> str:
    """go-units BytesSize: binary units with 4 significant digits ("7.451GiB")."""
    unit = 0
    while size >= 1024 and unit < len(_BINARY_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.4g}{_BINARY_UNITS[unit]}"


def go_time(timestamp: str) -> str:
    """An RFC 3339 timestamp as docker's PrettyPrint(time.Time) shows it: "2026-11-27 14:09:33.914683 +0000 utc"."""
    return capitalize(go_time_string(timestamp or ""))


def natural_less(left: str, right: str) -> bool:
    """fvbommel/sortorder NaturalLess: runs of digits compare as numbers and sort before other bytes."""
    a, b = left.encode(), right.encode()
    i = j = 0
    while i < len(a) and j < len(b):
        digit_a, digit_b = a[i:i + 1].isdigit(), b[j:j + 1].isdigit()
        if digit_a != digit_b:
            return digit_a
        if not digit_a:
            if a[i] != b[j]:
                return a[i] < b[j]
            i += 1
            j += 1
            continue
        while i < len(a) and a[i:i + 1] == b"0":
            i += 1
        while j < len(b) and b[j:j + 1] == b"0":
            j += 1
        start_a, start_b = i, j
        while i < len(a) and a[i:i + 1].isdigit():
            i += 1
        while j < len(b) and b[j:j + 1].isdigit():
            j += 1
        if i - start_a != j - start_b:
            return i - start_a < j - start_b
        if a[start_a:i] != b[start_b:j]:
            return a[start_a:i] < b[start_b:j]
        if start_a != start_b:
            return start_a < start_b
    return len(a) < len(b)


def _natural_cmp(left: str, right: str) -> int:
    if natural_less(left, right):
        return -1
    if natural_less(right, left):
        return 1
    return 0


natural_key = functools.cmp_to_key(_natural_cmp)


# ---- nodes ----------------------------------------------------------------------------------------------

NODE_LIST = ListFormat(
    table="table {{.ID}} {{if .Self}}*{{else}} {{ end }}\t{{.Hostname}}\t{{.Status}}\t{{.Availability}}"
          "\t{{.ManagerStatus}}\t{{.EngineVersion}}",
    headers={"ID": "ID", "Self": "", "Hostname": "HOSTNAME", "Status": "STATUS", "Availability": "AVAILABILITY",
             "ManagerStatus": "MANAGER STATUS", "EngineVersion": "ENGINE VERSION", "TLSStatus": "TLS STATUS"},
    raw="node_id: {{.ID}}\\nhostname: {{.Hostname}}\\nstatus: {{.Status}}\\navailability: {{.Availability}}"
        "\\nmanager_status: {{.ManagerStatus}}\\n",
    raw_quiet="node_id: {{.ID}}",
)


def manager_status(node: Doc) -> str:
    status = node.get("ManagerStatus")
    if not status:
        return ""
    return "Leader" if status.get("Leader") else capitalize(str(status.get("Reachability") or ""))


def tls_status(node: Doc, cluster_tls: Doc | None) -> str:
    """Whether the node's certificate comes from the swarm's current root: "Ready", "Needs Rotation", or
    "Unknown" when either side is not known."""
    node_tls = (node.get("Description") or {}).get("TLSInfo") or {}
    if not cluster_tls or not any(cluster_tls.values()) or not any(node_tls.values()):
        return "Unknown"
    keys = ("TrustRoot", "CertIssuerSubject", "CertIssuerPublicKey")
    if all((node_tls.get(k) or "") == (cluster_tls.get(k) or "") for k in keys):
        return "Ready"
    return "Needs Rotation"


def node_rows(nodes: Sequence[Doc], self_id: str, cluster_tls: Doc | None = None) -> list[Row]:
    """`node ls`, sorted naturally by hostname."""
    ordered = sorted(nodes, key=lambda n: natural_key(_hostname(n)))
    return [Row("*node.nodeContext", {
        "ID": node["ID"],
        "Self": node["ID"] == self_id,
        "Hostname": _hostname(node),
        "Status": capitalize(str((node.get("Status") or {}).get("State") or "")),
        "Availability": capitalize(str((node.get("Spec") or {}).get("Availability") or "")),
        "ManagerStatus": manager_status(node),
        "EngineVersion": str(((node.get("Description") or {}).get("Engine") or {}).get("EngineVersion") or ""),
        "TLSStatus": tls_status(node, cluster_tls),
    }) for node in ordered]


def node_table(nodes: Sequence[Doc], self_id: str) -> str:
    """`node ls`: full IDs with " *" on this node, sorted naturally by hostname."""
    return render_list(None, NODE_LIST, node_rows(nodes, self_id))


def _hostname(node: Doc) -> str:
    return str(((node.get("Description") or {}).get("Hostname")) or "")


def node_display_name(node: Doc) -> str:
    """What task tables show for a node: its Spec.Name, else its hostname, else its ID."""
    return str((node.get("Spec") or {}).get("Name") or _hostname(node) or node.get("ID") or "")


# ---- services -------------------------------------------------------------------------------------------

SERVICE_LIST = ListFormat(
    table="table {{.ID}}\t{{.Name}}\t{{.Mode}}\t{{.Replicas}}\t{{.Image}}\t{{.Ports}}",
    headers={"ID": "ID", "Name": "NAME", "Mode": "MODE", "Replicas": "REPLICAS", "Image": "IMAGE",
             "Ports": "PORTS"},
    raw="id: {{.ID}}\\nname: {{.Name}}\\nmode: {{.Mode}}\\nreplicas: {{.Replicas}}\\nimage: {{.Image}}"
        "\\nports: {{.Ports}}\\n",
    raw_quiet="id: {{.ID}}",
)


def service_mode(service: Doc) -> str:
    mode = service["Spec"].get("Mode") or {}
    for key, text in (("Global", "global"), ("Replicated", "replicated"),
                      ("ReplicatedJob", "replicated job"), ("GlobalJob", "global job")):
        if mode.get(key) is not None:
            return text
    return ""


def service_replicas(service: Doc) -> str:
    status = service.get("ServiceStatus") or {}
    running = int(status.get("RunningTasks") or 0)
    desired = int(status.get("DesiredTasks") or 0)
    completed = int(status.get("CompletedTasks") or 0)
    mode = service["Spec"].get("Mode") or {}
    if mode.get("ReplicatedJob") is not None:
        total = int(mode["ReplicatedJob"].get("TotalCompletions") or 0)
        return f"{running}/{desired} ({completed}/{total} completed)"
    if mode.get("GlobalJob") is not None:
        return f"{running}/{desired} ({completed}/{desired + completed} completed)"
    placement = (service["Spec"].get("TaskTemplate") or {}).get("Placement") or {}
    max_per_node = int(placement.get("MaxReplicas") or 0)
    if service_mode(service) == "replicated" and max_per_node > 0:
        return f"{running}/{desired} (max {max_per_node} per node)"
    return f"{running}/{desired}"


def service_image(service: Doc) -> str:
    container = (service["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return familiar_image(str(container.get("Image") or ""))


def service_ports(service: Doc) -> str:
    """Ingress ports from Endpoint.Ports, consecutive ones grouped: "*:80->80/tcp, *:8080-8081->80-81/tcp"."""
    ports = (service.get("Endpoint") or {}).get("Ports")
    if not ports:
        return ""
    ordered = sorted(ports, key=lambda p: (str(p.get("Protocol") or ""), int(p.get("PublishedPort") or 0)))
    groups: list[str] = []
    current: dict[str, Any] | None = None
    for port in ordered:
        if port.get("PublishMode", "ingress") != "ingress":
            continue
        protocol = str(port.get("Protocol") or "tcp")
        published = int(port.get("PublishedPort") or 0)
        target = int(port.get("TargetPort") or 0)
        if current is not None:
            is_range = current["t_end"] != current["t_start"]
            contiguous = (0 <= published - current["p_end"] <= 1) and (0 <= target - current["t_end"] <= 1)
            overlaps = target <= current["t_end"]
            if protocol == current["protocol"] and contiguous and not (is_range and overlaps):
                current["p_end"], current["t_end"] = published, target
                continue
            if current["p_start"] > 0:
                groups.append(_port_range_text(current))
        current = {"p_start": published, "p_end": published, "t_start": target, "t_end": target,
                   "protocol": protocol}
    if current is not None and current["p_start"] > 0:
        groups.append(_port_range_text(current))
    return ", ".join(groups)


def _port_range_text(r: dict[str, Any]) -> str:
    published = f"{r['p_start']}-{r['p_end']}" if r["p_end"] > r["p_start"] else str(r["p_start"])
    target = f"{r['t_start']}-{r['t_end']}" if r["t_end"] > r["t_start"] else str(r["t_start"])
    return f"*:{published}->{target}/{r['protocol']}"


def service_rows(services: Sequence[Doc]) -> list[Row]:
    """`service ls` and `stack services`, sorted naturally by name."""
    ordered = sorted(services, key=lambda s: natural_key(str(s["Spec"].get("Name") or "")))
    return [Row("*service.serviceContext", {
        "ID": truncate_id(s["ID"]), "Name": str(s["Spec"].get("Name") or ""), "Mode": service_mode(s),
        "Replicas": service_replicas(s), "Image": service_image(s), "Ports": service_ports(s),
    }) for s in ordered]


def service_table(services: Sequence[Doc]) -> str:
    return render_list(None, SERVICE_LIST, service_rows(services))


# ---- tasks ----------------------------------------------------------------------------------------------

TASK_LIST = ListFormat(
    table="table {{.ID}}\t{{.Name}}\t{{.Image}}\t{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}"
          "\t{{.Ports}}",
    headers={"ID": "ID", "Name": "NAME", "Image": "IMAGE", "Node": "NODE", "DesiredState": "DESIRED STATE",
             "CurrentState": "CURRENT STATE", "Error": "ERROR", "Ports": "PORTS"},
    raw="id: {{.ID}}\\nname: {{.Name}}\\nimage: {{.Image}}\\nnode: {{.Node}}\\ndesired_state: {{.DesiredState}}"
        "\\ncurrent_state: {{.CurrentState}}\\nerror: {{.Error}}\\nports: {{.Ports}}\\n",
    raw_quiet="id: {{.ID}}",
)


def task_name(task: Doc, service_name: str) -> str:
    """`web.2` for a replicated task, `agent.<node id>` for a global one."""
    slot = int(task.get("Slot") or 0)
    return f"{service_name}.{slot}" if slot else f"{service_name}.{task.get('NodeID') or ''}"


def sort_tasks(tasks: Sequence[Doc], service_names: dict[str, str]) -> list[tuple[str, Doc]]:
    """(name, task) sorted by name naturally, then newest CreatedAt first (history follows its slot)."""
    named = []
    for task in tasks:
        service_id = str(task.get("ServiceID") or "")
        named.append((task_name(task, service_names.get(service_id, service_id)), task))

    def created(task: Doc) -> float:
        try:
            return from_rfc3339(task.get("CreatedAt") or "")
        except Exception:
            return 0.0

    named.sort(key=lambda pair: -created(pair[1]))
    named.sort(key=lambda pair: natural_key(pair[0]))
    return named


def task_rows(tasks: Sequence[Doc], service_names: dict[str, str], node_names: dict[str, str], now: float,
              no_trunc: bool = False, indent: bool = True) -> list[Row]:
    """`service ps`, `node ps`, `stack ps`: sorted by name; in a table (`indent`) a task of the same slot as the
    row above, an older one, is named " \\_ web.1"."""
    rows = []
    previous = ""
    for name, task in sort_tasks(tasks, service_names):
        shown_name = f" \\_ {name}" if name == previous and indent else name
        previous = name
        rows.append(_task_row(task, shown_name, node_names, now, no_trunc))
    return rows


def task_table(tasks: Sequence[Doc], service_names: dict[str, str], node_names: dict[str, str],
               now: float, no_trunc: bool = False) -> str:
    """`service ps` / `node ps`: history rows (same name as the row above) are prefixed " \\_ "."""
    return render_list(None, TASK_LIST, task_rows(tasks, service_names, node_names, now, no_trunc))


def _task_row(task: Doc, name: str, node_names: dict[str, str], now: float, no_trunc: bool) -> Row:
    status = task.get("Status") or {}
    spec = (task.get("Spec") or {}).get("ContainerSpec") or {}
    image = str(spec.get("Image") or "")
    error = str(status.get("Err") or "")
    if not no_trunc:
        image = familiar_image(image)
        error = ellipsis(error, MAX_ERROR_WIDTH)
    state = capitalize(str(status.get("State") or ""))
    since = time_ago(status.get("Timestamp"), now)
    ports = ((status.get("PortStatus") or {}).get("Ports")) or []
    node_id = str(task.get("NodeID") or "")
    return Row("*task.taskContext", {
        "ID": task["ID"] if no_trunc else truncate_id(task["ID"]),
        "Name": name,
        "Image": image,
        "Node": node_names.get(node_id, node_id),
        "DesiredState": capitalize(str(task.get("DesiredState") or "")),
        "CurrentState": f"{state} {since}" if since else state,
        "Error": f'"{error}"' if error else "",
        "Ports": ",".join(f"*:{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol')}" for p in ports),
    })


# ---- secrets and configs, networks, stacks --------------------------------------------------------------

SECRET_LIST = ListFormat(
    table="table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.CreatedAt}}\t{{.UpdatedAt}}",
    headers={"ID": "ID", "Name": "NAME", "Driver": "DRIVER", "CreatedAt": "CREATED", "UpdatedAt": "UPDATED",
             "Labels": "LABELS"},
)
CONFIG_LIST = ListFormat(
    table="table {{.ID}}\t{{.Name}}\t{{.CreatedAt}}\t{{.UpdatedAt}}",
    headers={"ID": "ID", "Name": "NAME", "CreatedAt": "CREATED", "UpdatedAt": "UPDATED", "Labels": "LABELS"},
)


def secret_rows(objects: Sequence[Doc], noun: str, now: float) -> list[Row]:
    """`secret ls` or `config ls` (`noun`), sorted by name; only secrets have a driver."""
    rows = []
    for obj in sorted(objects, key=lambda o: str(o["Spec"]["Name"])):
        spec = obj["Spec"]
        fields = {"ID": str(obj["ID"]), "Name": str(spec["Name"])}
        if noun == "secret":
            fields["Driver"] = str((spec.get("Driver") or {}).get("Name") or "")
        fields |= {"CreatedAt": time_ago(obj.get("CreatedAt"), now), "UpdatedAt": time_ago(obj.get("UpdatedAt"), now),
                   "Labels": labels_text(spec.get("Labels"))}
        rows.append(Row(f"*{noun}.{noun}Context", fields, {"Label": label_method(spec.get("Labels"))}))
    return rows


NETWORK_LIST = ListFormat(
    table="table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}",
    headers={"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "IPv4": "IPV4",
             "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT"},
    raw="network_id: {{.ID}}\\nname: {{.Name}}\\ndriver: {{.Driver}}\\nscope: {{.Scope}}\\n",
    raw_quiet="network_id: {{.ID}}",
)


def network_rows(networks: Sequence[Doc], no_trunc: bool = False) -> list[Row]:
    """`network ls`, sorted by name."""
    rows = []
    for network in sorted(networks, key=lambda n: str(n["Name"])):
        labels = network.get("Labels")
        rows.append(Row("*network.networkContext", {
            "ID": str(network["Id"]) if no_trunc else truncate_id(str(network["Id"])),
            "Name": str(network["Name"]),
            "Driver": str(network.get("Driver") or ""),
            "Scope": str(network.get("Scope") or ""),
            # A swarm network without the field (an API before 1.47's) has IPv4 all the same.
            "IPv4": _go_bool(network.get("EnableIPv4", True)),
            "IPv6": _go_bool(network.get("EnableIPv6")),
            "Internal": _go_bool(network.get("Internal")),
            "Labels": labels_text(labels),
            "CreatedAt": go_time_string(str(network.get("Created") or "")),
        }, {"Label": label_method(labels)}))
    return rows


def _go_bool(value: Any) -> str:
    return "true" if value else "false"


STACK_LIST = ListFormat(table="table {{.Name}}\t{{.Services}}", headers={"Name": "NAME", "Services": "SERVICES"})


def stack_rows(service_counts: dict[str, int]) -> list[Row]:
    """`stack ls`: each stack and how many services it has, by name."""
    return [Row("*stack.stackContext", {"Name": name, "Services": str(count)})
            for name, count in sorted(service_counts.items())]
