"""The swarm networks a service or task is on, read the same way by the leader (addresses, names) and the agent
(which network a question comes from).

A spec names its networks in `TaskTemplate.Networks` (a task's `Spec` is a copy of the template), each
`{"Target": network ID, "Aliases": [...]}`; a placed task carries Docker's `NetworksAttachments`:
`[{"Network": {"ID": …, …}, "Addresses": ["10.0.1.5/24"]}]`.
"""

from __future__ import annotations

from shoal.types import Doc

# In a node's Description: the UDP port its overlay takes VXLAN traffic on (shoal.overlay). Docker uses one
# port for the whole swarm (4789); shoal lets each node say its own, so that several nodes can share a host.
DEFAULT_DATA_PATH_PORT = 4789


def attached_networks(spec: Doc) -> list[str]:
    """The network IDs a service spec (or a task's spec) is attached to, in order."""
    template = spec.get("TaskTemplate", spec) or {}
    return [str(a["Target"]) for a in template.get("Networks") or [] if isinstance(a, dict) and a.get("Target")]


def task_addresses(task: Doc) -> list[tuple[str, str]]:
    """(network ID, "a.b.c.d/len") for each address of a task's attachments."""
    return [(str(a["Network"]["ID"]), str(address)) for a in task.get("NetworksAttachments") or []
            for address in a.get("Addresses") or []]


def task_networks(task: Doc) -> list[tuple[Doc, str]]:
    """(network document, "a.b.c.d/len") for each attachment of a placed task, in order."""
    return [(a["Network"], str(address)) for a in task.get("NetworksAttachments") or []
            for address in (a.get("Addresses") or [])[:1]]
