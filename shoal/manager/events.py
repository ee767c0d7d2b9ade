"""Cluster events in Docker's shape: what `docker events` shows of a swarm.

Docker's daemon turns swarm's store watch into events (moby `daemon/events.go`, `generateClusterEvent`): one
per create, update or remove of a node, service, secret, config or network, never of a task, scoped "swarm",
with the object's `name` and, on an update, what changed of a few fields (a service's image, replicas and
update state; a node's availability, role and state) as `<field>.old` / `<field>.new` attributes. shoal derives
the same events from each manager's cache, which applies the store's watch: `derive_event` decides, from the
object before and after a committed change, with no I/O; `EventJournal` stamps them, keeps the last
`BUFFER_EVENTS` for `since`, and hands them to each streaming client through a bounded queue of its own.

Differences from Docker, on purpose:
- an update that changes nothing a client can read (only shoal's private bookkeeping) is no event;
- an event's time is when this manager saw the change committed (Docker reads the object's UpdatedAt, which
  not every shoal write sets), strictly increasing per manager, so `since=<last timeNano + 1>` resumes a stream;
- a client whose queue fills is dropped (its connection is cut) rather than sent a stream with holes (Docker
  skips, for a subscriber, an event it does not take within 100 ms);
- a node's `leader` and `reachability` changes are not reported (shoal computes them when read, not in the store);
- an unknown filter key is refused rather than ignored.

Beyond Docker, task events (type "task"), for a viewer that shows tasks moving (the dashboard): only a client
whose `type` filter names "task" gets them, so a Docker client never sees one. They are derived from the
changes of a task a viewer sees (created, observed or desired state, node, scheduling error, removed), not
from its other writes (the agent's timestamps); nothing is derived while no client asks for them, and they
are never kept for `since` (a viewer reads the tasks when it connects): a hundred thousand task changes
never push the swarm's own events out of the buffer.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shoal import codec
from shoal.clock import Clock
from shoal.errors import InvalidArgument
from shoal.manager.controlapi import without_private_fields
from shoal.manager.controlapi.filters import Filters, parse_filters
from shoal.manager.store.base import Event
from shoal.spec import REPLICATED, service_mode
from shoal.timefmt import SECOND
from shoal.types import CONFIGS, NETWORKS, NODES, SECRETS, SERVICES, TASKS, Doc

# Store kinds that make events, and Docker's name for each (`Type`).
EVENT_TYPES: Mapping[str, str] = {SERVICES: "service", NODES: "node", SECRETS: "secret", CONFIGS: "config",
                                  NETWORKS: "network"}
SCOPE = "swarm"
TASK_TYPE = "task"  # shoal's own: only for a client whose filters ask for it
# The fields of a task whose change is a task event, with the attribute each is shown as.
TASK_FIELDS = (("state", "state"), ("desired", "desiredstate"), ("node", "node.id"), ("err", "err"))
BUFFER_EVENTS = 10_000  # kept for `since`; Docker keeps 256
CLIENT_QUEUE = 1_000  # events waiting for one streaming client; past it the client is dropped

# Docker's event filter keys (moby `daemon/events/filter.go`). Those naming an object match its ID or name by
# prefix, for every event: `service=web` also leaves out every node event, as with Docker.
OBJECT_FILTERS = ("container", "daemon", "plugin", "volume", "network", "node", "service", "secret", "config")
EVENT_FILTERS = frozenset({"type", "event", "scope", "image", "label", *OBJECT_FILTERS})
# Actions whose filter value matches as a prefix (`health_status` matches `health_status: healthy`), as Docker.
_PREFIX_ACTIONS = frozenset({"health_status", "exec_create", "exec_start"})

Docs = Mapping[str, Mapping[str, Doc]]


@dataclass(frozen=True)
class ClusterEvent:
    """One event, as Docker's `events.Message` without the legacy fields swarm events never carry."""

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str]
    time_nano: int
    scope: str = SCOPE

    def message(self) -> Doc:
        return {"Type": self.type, "Action": self.action,
                "Actor": {"ID": self.actor_id, "Attributes": dict(sorted(self.attributes.items()))},  # Go sorts
                "scope": self.scope, "time": self.time_nano // SECOND, "timeNano": self.time_nano}

    @functools.cached_property
    def line(self) -> bytes:
        """The event on the wire: one JSON object per line, as Docker streams them (encoded once for all)."""
        return codec.dumps(self.message()) + b"\n"


# ---- deciding: which event a committed change is -----------------------------------------------------------

def derive_event(kind: str, before: Doc | None, after: Doc | None, time_nano: int) -> ClusterEvent | None:
    """The event for an object of `kind` going from `before` to `after` (None: absent), or None when Docker
    would show none (tasks, the cluster object) or nothing a client can read changed."""
    event_type = EVENT_TYPES.get(kind)
    if event_type is None or (before is None and after is None):
        return None
    if after is None:
        assert before is not None
        return ClusterEvent(event_type, "remove", str(before.get("ID", "")), {"name": _name(kind, before)},
                            time_nano)
    attributes = {"name": _name(kind, after)}
    if before is None:
        return ClusterEvent(event_type, "create", str(after.get("ID", "")), attributes, time_nano)
    if _readable(before) == _readable(after):
        return None
    if kind == SERVICES:
        attributes.update(service_changes(before, after))
    elif kind == NODES:
        attributes.update(node_changes(before, after))
    return ClusterEvent(event_type, "update", str(after.get("ID", "")), attributes, time_nano)


def service_changes(before: Doc, after: Doc) -> dict[str, str]:
    """A service update's attributes: image, replicas (replicated mode only) and update state, as Docker."""
    changes: dict[str, str] = {}
    old_image, new_image = _image(before), _image(after)
    if old_image != new_image:
        changes.update({"image.old": old_image, "image.new": new_image})
    old_spec, new_spec = before.get("Spec") or {}, after.get("Spec") or {}
    if service_mode(old_spec) == REPLICATED and service_mode(new_spec) == REPLICATED:
        old_replicas, new_replicas = _replicas(old_spec), _replicas(new_spec)
        if old_replicas != new_replicas:
            changes.update({"replicas.old": str(old_replicas), "replicas.new": str(new_replicas)})
    new_state = _update_state(after)
    old_state = _update_state(before)
    if new_state is not None:
        if old_state is None:
            changes["updatestate.new"] = new_state  # Docker names no old state when there was no update
        elif old_state != new_state:
            changes.update({"updatestate.old": old_state, "updatestate.new": new_state})
    return changes


def node_changes(before: Doc, after: Doc) -> dict[str, str]:
    """A node update's attributes: availability, role and state, lowercase as Docker prints them."""
    changes: dict[str, str] = {}
    for field_name, read in (("availability", _availability), ("role", _role), ("state", _state)):
        old, new = read(before), read(after)
        if old != new:
            changes.update({f"{field_name}.old": old, f"{field_name}.new": new})
    return changes


def derive_task_event(before: Doc | None, after: Doc | None, time_nano: int) -> ClusterEvent | None:
    """The task event for a task going from `before` to `after` (None: absent), or None when nothing a viewer
    follows changed. Its attributes say where the task is now (name, service, slot, node, states, image,
    scheduling error); an update also names what it was (`state.old`, `node.id.old`, …)."""
    if after is None:
        if before is None:
            return None
        return ClusterEvent(TASK_TYPE, "remove", str(before.get("ID", "")), task_attributes(before), time_nano)
    attributes = task_attributes(after)
    if before is None:
        return ClusterEvent(TASK_TYPE, "create", str(after.get("ID", "")), attributes, time_nano)
    old, new = _task_fields(before), _task_fields(after)
    if old == new:
        return None
    for (_, name), old_value, new_value in zip(TASK_FIELDS, old, new, strict=True):
        if old_value != new_value and name != "err":
            attributes[f"{name}.old"] = old_value
    return ClusterEvent(TASK_TYPE, "update", str(after.get("ID", "")), attributes, time_nano)


def task_attributes(task: Doc) -> dict[str, str]:
    """What a viewer shows of a task, as event attributes (strings, as all of Docker's)."""
    service_name = str((task.get("ServiceAnnotations") or {}).get("Name") or "")
    slot = int(task.get("Slot") or 0)
    node_id = str(task.get("NodeID") or "")
    state, desired, _, err = _task_fields(task)
    attributes = {
        # Docker's task name: `web.2`, or `agent.<node id>` for a global service's task.
        "name": f"{service_name}.{slot if slot else node_id}",
        "service.id": str(task.get("ServiceID") or ""), "service.name": service_name, "slot": str(slot),
        "node.id": node_id, "state": state, "desiredstate": desired,
        "image": str(((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image") or ""),
    }
    if err:
        attributes["err"] = err
    return attributes


def _task_fields(task: Doc) -> tuple[str, str, str, str]:
    status = task.get("Status") or {}
    return (str(status.get("State") or ""), str(task.get("DesiredState") or ""), str(task.get("NodeID") or ""),
            str(status.get("Err") or ""))


def reload_task_events(previous: Mapping[str, Doc], current: Mapping[str, Doc],
                       time_nano: int) -> list[ClusterEvent]:
    """The task events a manager missed while its watch was down (its tasks before and after the reload):
    creates and updates, then removes."""
    events = [event for task_id, after in current.items()
              if (event := derive_task_event(previous.get(task_id), after, time_nano)) is not None]
    events += [event for task_id, before in previous.items()
               if task_id not in current and (event := derive_task_event(before, None, time_nano)) is not None]
    return events


def reload_events(previous: Docs, current: Docs, time_nano: int) -> list[ClusterEvent]:
    """The events a manager missed while its watch was down, from its cache before and after it reloaded from
    a fresh snapshot: creates and updates in the order they were written, then removes. One time for all (the
    reload's): when each happened is not known."""
    written: list[tuple[int, ClusterEvent]] = []
    removed: list[ClusterEvent] = []
    for kind in EVENT_TYPES:
        old_docs, new_docs = previous.get(kind) or {}, current.get(kind) or {}
        for obj_id, after in new_docs.items():
            before = old_docs.get(obj_id)
            if before is not None and _version(before) == _version(after):
                continue
            event = derive_event(kind, before, after, time_nano)
            if event is not None:
                written.append((_version(after), event))
        for obj_id, before in old_docs.items():
            if obj_id not in new_docs and (event := derive_event(kind, before, None, time_nano)) is not None:
                removed.append(event)
    return [event for _, event in sorted(written, key=lambda pair: pair[0])] + removed


def _readable(doc: Doc) -> Doc:
    """What a client can read of a document, but its Version (which every write moves)."""
    view = without_private_fields(doc)
    view.pop("Version", None)
    return view


def _version(doc: Doc) -> int:
    return int((doc.get("Version") or {}).get("Index") or 0)


def _name(kind: str, doc: Doc) -> str:
    spec = doc.get("Spec") or {}
    name = spec.get("Name") or ""
    if kind == NODES and not name:
        name = (doc.get("Description") or {}).get("Hostname") or ""
    return str(name)


def _image(service: Doc) -> str:
    task_template = (service.get("Spec") or {}).get("TaskTemplate") or {}
    return str((task_template.get("ContainerSpec") or {}).get("Image") or "")


def _replicas(spec: Doc) -> int:
    replicas = ((spec.get("Mode") or {}).get(REPLICATED) or {}).get("Replicas")
    return 1 if replicas is None else int(replicas)


def _update_state(service: Doc) -> str | None:
    status = service.get("UpdateStatus")
    if not isinstance(status, dict) or not status.get("State"):
        return None
    return str(status["State"]).lower()


def _availability(node: Doc) -> str:
    return str((node.get("Spec") or {}).get("Availability") or "").lower()


def _role(node: Doc) -> str:
    return str((node.get("Spec") or {}).get("Role") or "").lower()


def _state(node: Doc) -> str:
    return str((node.get("Status") or {}).get("State") or "").lower()


# ---- filtering: Docker's event filters ---------------------------------------------------------------------

def wants_task_events(filters: Filters) -> bool:
    """Task events go only to a client that names them in its `type` filter (a Docker client never does)."""
    return TASK_TYPE in (filters.get("type") or ())


def parse_event_filters(raw: str | None) -> Filters:
    """The `filters` query parameter of `GET /events`, either encoding; an unknown key is refused."""
    filters = parse_filters(raw)
    for key in filters:
        if key not in EVENT_FILTERS:
            raise InvalidArgument(f"invalid filter '{key}': events filter by {', '.join(sorted(EVENT_FILTERS))}")
    return filters


def event_matches(filters: Filters, event: ClusterEvent) -> bool:
    """moby's `Filter.Include`: every key given must match; within a key, any of its values."""
    actions = filters.get("event")
    if actions:
        prefix = any(value in _PREFIX_ACTIONS for value in actions)
        if not any(event.action == value or (prefix and event.action.startswith(value)) for value in actions):
            return False
    if not _exact(filters, "type", event.type) or not _exact(filters, "scope", event.scope):
        return False
    name = event.attributes.get("name", "")
    for key in OBJECT_FILTERS:
        values = filters.get(key)
        if values and not any(event.actor_id.startswith(v) or name.startswith(v) for v in values):
            # A task event also matches its service or node by ID (`service=web` matches `web.1` by name).
            owner = event.attributes.get(f"{key}.id", "") if event.type == TASK_TYPE else ""
            if not owner or not any(owner.startswith(v) for v in values):
                return False
    images = filters.get("image")
    if images and event.actor_id not in images and event.attributes.get("image", "") not in images:
        return False
    return _labels_match(filters.get("label"), event.attributes)


def _exact(filters: Filters, key: str, value: str) -> bool:
    values = filters.get(key)
    return not values or value in values


def _labels_match(wanted: list[str] | None, attributes: Mapping[str, str]) -> bool:
    """moby's `MatchKVList` over the attributes: every `key` present, with `value` when `key=value`."""
    if not wanted:
        return True
    for item in wanted:
        key, has_value, value = item.partition("=")
        if key not in attributes or (has_value and attributes[key] != value):
            return False
    return True


def buffered_events(events: Sequence[ClusterEvent], since: int | None, until: int | None,
                    filters: Filters) -> list[ClusterEvent]:
    """The kept events a new stream starts with: none unless `since` or `until` is given (as Docker), else
    those from `since` to `until` (both included) that pass the filters, oldest first."""
    if since is None and until is None:
        return []
    low = since or 0
    found: list[ClusterEvent] = []
    for event in reversed(events):
        if event.time_nano < low:
            break
        if (until is None or event.time_nano <= until) and event_matches(filters, event):
            found.append(event)
    found.reverse()
    return found


# ---- keeping and fanning out -------------------------------------------------------------------------------

@dataclass(eq=False)
class Subscription:
    """One streaming client's events, encoded: a bounded queue, and whether the client fell too far behind
    and was dropped. Lines from elsewhere (the node's own engine) can join the same queue."""

    filters: Filters
    limit: int = CLIENT_QUEUE
    pending: deque[bytes] = field(default_factory=deque)
    dropped: bool = False
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: ClusterEvent) -> None:
        if not self.dropped and event_matches(self.filters, event):
            self.offer_line(event.line)

    def offer_line(self, line: bytes) -> None:
        if self.dropped:
            return
        if len(self.pending) >= self.limit:
            # Never block the cache's loop, never grow: the client loses its stream, not events in the middle.
            self.dropped = True
            self.pending.clear()
        else:
            self.pending.append(line)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    async def next_lines(self, timeout: float) -> list[bytes]:
        """What arrived (at once if something waits), or [] after `timeout` seconds or a `wake()`."""
        if not self.pending and not self.dropped:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        self._ready.clear()
        batch = list(self.pending)
        self.pending.clear()
        return batch


class EventJournal:
    """A manager's cluster events: derived from its cache's changes, kept for `since`, streamed to clients.

    Everything runs on the event loop and nothing here waits: the cache calls `apply` for each committed
    change, and each client's handler reads its own `Subscription`."""

    def __init__(self, clock: Clock, keep: int = BUFFER_EVENTS, client_queue: int = CLIENT_QUEUE) -> None:
        self.clock = clock
        self.kept: deque[ClusterEvent] = deque(maxlen=keep)
        self.client_queue = client_queue
        self.subscriptions: set[Subscription] = set()
        self.task_subscriptions: set[Subscription] = set()  # those that asked for task events too
        self.dropped_clients = 0
        self._last_nano = 0

    def _now_nano(self) -> int:
        self._last_nano = max(int(self.clock.now() * SECOND), self._last_nano + 1)
        return self._last_nano

    def on_change(self, change: Event, before: Doc | None) -> None:
        """A committed change the cache applied (a cache listener: called for every kind, tasks return at once)."""
        if change.kind in EVENT_TYPES:
            self.publish_change(change.kind, before, change.doc)
        elif change.kind == TASKS and self.task_subscriptions:
            event = derive_task_event(before, change.doc, self._now_nano())
            if event is not None:
                self.publish(event)

    def publish_change(self, kind: str, before: Doc | None, after: Doc | None) -> None:
        event = derive_event(kind, before, after, self._now_nano())
        if event is not None:
            self.publish(event)

    def reload(self, previous: Docs, current: Docs) -> None:
        """The cache reloaded from a fresh snapshot: publish what changed meanwhile."""
        for event in reload_events(previous, current, self._now_nano()):
            self.publish(event)
        if self.task_subscriptions:
            for event in reload_task_events(previous.get(TASKS) or {}, current.get(TASKS) or {},
                                            self._now_nano()):
                self.publish(event)

    def publish(self, event: ClusterEvent) -> None:
        if event.type == TASK_TYPE:
            receivers = self.task_subscriptions  # never kept: see the module's docstring
        else:
            self.kept.append(event)
            receivers = self.subscriptions
        for subscription in list(receivers):
            subscription.offer(event)
            if subscription.dropped:  # its handler cuts the connection and says so
                self.unsubscribe(subscription)
                self.dropped_clients += 1

    def subscribe(self, filters: Filters, since: int | None, until: int | None) -> tuple[list[ClusterEvent],
                                                                                          Subscription]:
        """The kept events a stream starts with and its subscription to what follows, taken together so no
        event falls between the two."""
        subscription = Subscription(filters, self.client_queue)
        self.subscriptions.add(subscription)
        if wants_task_events(filters):
            self.task_subscriptions.add(subscription)
        return buffered_events(self.kept, since, until, filters), subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        self.task_subscriptions.discard(subscription)

    def stats(self) -> Doc:
        """For `GET /shoal/debug`: streaming clients now, events kept, clients dropped for falling behind."""
        return {"Subscribers": len(self.subscriptions), "TaskSubscribers": len(self.task_subscriptions),
                "Kept": len(self.kept), "DroppedClients": self.dropped_clients}


__all__ = [
    "EVENT_FILTERS", "EVENT_TYPES", "TASK_TYPE", "ClusterEvent", "EventJournal", "Subscription", "buffered_events",
    "derive_event", "derive_task_event", "event_matches", "node_changes", "parse_event_filters", "reload_events",
    "reload_task_events", "service_changes", "task_attributes", "wants_task_events",
]
