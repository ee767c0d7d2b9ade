"""How the CLI prints things, the way the docker CLI does: tab-aligned tables, "5 seconds ago",
"7.451GiB", natural name order, truncated IDs, and the rows of `node ls`, `service ls` and `service ps`.

Everything here is pure: data in, strings out (the current time is an argument).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from shoal.spec import familiar_image
from shoal.timefmt import from_rfc3339
from shoal.types import Doc

SHORT_ID = 12
MAX_ERROR_WIDTH = 30
# docker's tables go through text/tabwriter with minwidth 10 and padding 3.
TABLE_MIN_WIDTH = 10
TABLE_PADDING = 3


# ---- generic text ---------------------------------------------------------------------------------------

def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like Go's tabwriter(minwidth=10, padding=3); the last column is not padded."""
    lines = [list(header), *[list(row) for row in rows]]
    columns = len(header)
    widths = [
        max(TABLE_MIN_WIDTH, max(len(line[i]) for line in lines) + TABLE_PADDING) for i in range(columns - 1)
    ]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append("".join(cells) + line[-1])
    return "\n".join(out) + "\n"


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


def go_float(value: float) -> str:
    """A float as Go's %v prints it (0 -> "0", 0.5 -> "0.5")."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def go_time(timestamp: str) -> str:
    """An RFC 3339 timestamp as docker's PrettyPrint(time.Time) shows it: "2026-11-27 14:09:33.914683 +0000 utc"."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", timestamp or "")
    if not m:
        return capitalize(timestamp or "")
    date, clock, fraction, zone = m.groups()
    fraction = (fraction or "")[:9].rstrip("0")
    text = f"{date} {clock}" + (f".{fraction}" if fraction else "")
    if zone == "Z":
        text += " +0000 UTC"
    else:
        offset = zone.replace(":", "")
        text += f" {offset} {offset}"
    return capitalize(text)


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

NODE_HEADER = ("ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION")


def manager_status(node: Doc) -> str:
    status = node.get("ManagerStatus")
    if not status:
        return ""
    return "Leader" if status.get("Leader") else capitalize(str(status.get("Reachability") or ""))


def node_table(nodes: Sequence[Doc], self_id: str) -> str:
    """`node ls`: full IDs with " *" on this node, sorted naturally by hostname."""
    ordered = sorted(nodes, key=lambda n: natural_key(_hostname(n)))
    rows = []
    for node in ordered:
        rows.append((
            node["ID"] + (" *" if node["ID"] == self_id else "  "),
            _hostname(node),
            capitalize(str((node.get("Status") or {}).get("State") or "")),
            capitalize(str((node.get("Spec") or {}).get("Availability") or "")),
            manager_status(node),
            str(((node.get("Description") or {}).get("Engine") or {}).get("EngineVersion") or ""),
        ))
    return render_table(NODE_HEADER, rows)


def _hostname(node: Doc) -> str:
    return str(((node.get("Description") or {}).get("Hostname")) or "")


def node_display_name(node: Doc) -> str:
    """What task tables show for a node: its Spec.Name, else its hostname, else its ID."""
    return str((node.get("Spec") or {}).get("Name") or _hostname(node) or node.get("ID") or "")


# ---- services -------------------------------------------------------------------------------------------

SERVICE_HEADER = ("ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")


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


def service_table(services: Sequence[Doc]) -> str:
    ordered = sorted(services, key=lambda s: natural_key(str(s["Spec"].get("Name") or "")))
    rows = [
        (truncate_id(s["ID"]), str(s["Spec"].get("Name") or ""), service_mode(s), service_replicas(s),
         service_image(s), service_ports(s))
        for s in ordered
    ]
    return render_table(SERVICE_HEADER, rows)


# ---- tasks ----------------------------------------------------------------------------------------------

TASK_HEADER = ("ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS")


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


def task_table(tasks: Sequence[Doc], service_names: dict[str, str], node_names: dict[str, str],
               now: float, no_trunc: bool = False) -> str:
    """`service ps` / `node ps`: history rows (same name as the row above) are prefixed " \\_ "."""
    rows = []
    previous = ""
    for name, task in sort_tasks(tasks, service_names):
        shown_name = f" \\_ {name}" if name == previous else name
        previous = name
        rows.append(_task_row(task, shown_name, node_names, now, no_trunc))
    return render_table(TASK_HEADER, rows)


def task_ids(tasks: Sequence[Doc], service_names: dict[str, str], no_trunc: bool = False) -> str:
    ids = [t["ID"] if no_trunc else truncate_id(t["ID"]) for _, t in sort_tasks(tasks, service_names)]
    return "".join(f"{i}\n" for i in ids)


def _task_row(task: Doc, name: str, node_names: dict[str, str], now: float, no_trunc: bool) -> tuple[str, ...]:
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
    return (
        task["ID"] if no_trunc else truncate_id(task["ID"]),
        name,
        image,
        node_names.get(node_id, node_id),
        capitalize(str(task.get("DesiredState") or "")),
        f"{state} {since}" if since else state,
        f'"{error}"' if error else "",
        ",".join(f"*:{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol')}" for p in ports),
    )
