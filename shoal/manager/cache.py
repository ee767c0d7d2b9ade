"""The manager's in-memory view of the store, fed by one snapshot and then the watch.

Indexed by kind and ID, tasks also by service, by service and slot, and by node, services by name, so every
control loop reads in time proportional to what it asks for; running tasks are counted per service and node,
so `service ls` needs no pass over the tasks. Listeners hear each committed change after the cache has
applied it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from shoal.manager.store.base import Event, Snapshot, Store
from shoal.timeouts import within
from shoal.types import CLUSTERS, KINDS, NODES, SERVICES, TASKS, Doc, task_slot, version_of

log = logging.getLogger(__name__)

Listener = Callable[[Event, Doc | None], None]
Docs = dict[str, dict[str, Doc]]
ReloadListener = Callable[[Docs, Docs], None]  # (documents before a reload, documents after)
YIELD_EVERY = 100  # events applied before other work on the loop gets a turn
CATCH_UP_WARNING = 5.0  # seconds between warnings while a loop waits for its own write to come back


class Cache:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        self.tasks_by_service: dict[str, dict[str, Doc]] = defaultdict(dict)
        self.tasks_by_node: dict[str, dict[str, Doc]] = defaultdict(dict)
        self.tasks_by_slot: dict[str, dict[int, dict[str, Doc]]] = defaultdict(lambda: defaultdict(dict))
        # Tasks observed and wanted running, per service and node.
        self.running: dict[str, Counter[str]] = defaultdict(Counter)
        self.service_by_name: dict[str, str] = {}
        self.revision = 0
        self.ready = asyncio.Event()
        self._listeners: list[Listener] = []
        self._resync_listeners: list[Callable[[], None]] = []
        self._reload_listeners: list[ReloadListener] = []
        self._loaded = False
        self._revision_changed = asyncio.Condition()

    # ---- reading ----------------------------------------------------------------------------------------

    def get(self, kind: str, obj_id: str) -> Doc | None:
        return self.docs[kind].get(obj_id)

    def nodes(self) -> dict[str, Doc]:
        return self.docs[NODES]

    def services(self) -> dict[str, Doc]:
        return self.docs[SERVICES]

    def tasks(self) -> dict[str, Doc]:
        return self.docs[TASKS]

    def cluster(self) -> Doc | None:
        return next(iter(self.docs[CLUSTERS].values()), None)

    def tasks_of_service(self, service_id: str) -> list[Doc]:
        return list(self.tasks_by_service.get(service_id, {}).values())

    def tasks_on_node(self, node_id: str) -> list[Doc]:
        return list(self.tasks_by_node.get(node_id, {}).values())

    def tasks_in_slots(self, service_id: str, slots: Iterable[int]) -> list[Doc]:
        by_slot = self.tasks_by_slot.get(service_id, {})
        return [task for slot in slots for task in by_slot.get(slot, {}).values()]

    def running_by_node(self, service_id: str) -> Counter[str]:
        """How many of the service's tasks each node runs (observed and wanted running)."""
        return self.running.get(service_id) or Counter()

    # ---- subscribing ------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener, on_resync: Callable[[], None] | None = None,
                  on_reload: ReloadListener | None = None) -> None:
        """`listener` hears every change; `on_resync` every load from a snapshot; `on_reload` every load but the
        first, with the documents before and after it (what changed while the watch was down)."""
        self._listeners.append(listener)
        if on_resync is not None:
            self._resync_listeners.append(on_resync)
        if on_reload is not None:
            self._reload_listeners.append(on_reload)

    async def caught_up(self, revision: int, who: str) -> None:
        """Wait, however long it takes, until the cache has `revision` (a loop's own write): deciding again from
        a cache without it would redo what was just written (a second task in a slot). Says so while waiting."""
        while True:
            try:
                await self.wait_for_revision(revision, timeout=CATCH_UP_WARNING)
                return
            except TimeoutError:
                log.warning("%s: waiting for the cache to reach revision %d (it has %d)", who, revision,
                            self.revision)

    async def wait_for_revision(self, revision: int, timeout: float = 5.0) -> None:
        """Read-your-writes: wait until the watch has delivered `revision`."""
        async with self._revision_changed:
            await within(self._revision_changed.wait_for(lambda: self.revision >= revision), timeout)

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until `condition` (read from the cache) holds; it is checked again after every change."""
        async with self._revision_changed:
            await within(self._revision_changed.wait_for(condition), timeout)

    # ---- feeding ----------------------------------------------------------------------------------------

    def load(self, snapshot: Snapshot) -> None:
        previous = self.docs
        self.docs = {kind: dict(snapshot.docs.get(kind, {})) for kind in KINDS}
        self.tasks_by_service = defaultdict(dict)
        self.tasks_by_node = defaultdict(dict)
        self.tasks_by_slot = defaultdict(lambda: defaultdict(dict))
        self.running = defaultdict(Counter)
        self.service_by_name = {}
        for task in self.docs[TASKS].values():
            self._index_task(task)
        for service in self.docs[SERVICES].values():
            self.service_by_name[service["Spec"]["Name"]] = service["ID"]
        self.revision = snapshot.revision
        for listener in self._resync_listeners:
            listener()
        if self._loaded:
            for on_reload in self._reload_listeners:
                try:
                    on_reload(previous, self.docs)
                except Exception:
                    log.exception("cache reload listener failed")
        self._loaded = True

    def apply(self, event: Event, advance: bool = True) -> None:
        """Apply one committed change. With `advance`, the cache then counts its revision as seen; a batch
        applies its events without, and advances once all of them are in (`_apply_batch`)."""
        prev = self.docs[event.kind].get(event.obj_id)
        if event.action == "put" and prev is not None and version_of(prev) >= event.revision:
            return  # already seen
        if event.kind == TASKS and prev is not None:
            self._unindex_task(prev)
        if event.kind == SERVICES and prev is not None:
            self.service_by_name.pop(prev["Spec"]["Name"], None)
        if event.action == "put":
            assert event.doc is not None
            self.docs[event.kind][event.obj_id] = event.doc
            if event.kind == TASKS:
                self._index_task(event.doc)
            elif event.kind == SERVICES:
                self.service_by_name[event.doc["Spec"]["Name"]] = event.obj_id
        else:
            self.docs[event.kind].pop(event.obj_id, None)
        if advance:
            self.revision = max(self.revision, event.revision)
        for listener in self._listeners:
            try:
                listener(event, prev)
            except Exception:
                log.exception("cache listener failed on %s %s", event.kind, event.obj_id)

    async def _apply_batch(self, events: list[Event]) -> None:
        """Apply a watch batch (whole transactions), letting other work run between every YIELD_EVERY events
        of a large one; its revision counts as seen only at the end, so `wait_for_revision` never returns
        while half a transaction is in."""
        for index, event in enumerate(events):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            self.apply(event, advance=False)
        if events:
            self.revision = max(self.revision, max(event.revision for event in events))
        await self._notify_revision()

    async def _notify_revision(self) -> None:
        async with self._revision_changed:
            self._revision_changed.notify_all()

    async def run(self, store: Store) -> None:
        """Snapshot, then follow the watch; on any watch failure start again from a fresh snapshot."""
        while True:
            snapshot = await store.snapshot()
            self.load(snapshot)
            self.ready.set()
            await self._notify_revision()
            try:
                async for events in store.watch(snapshot.revision):
                    await self._apply_batch(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store watch ended (%s); resyncing from a fresh snapshot", exc)
                await asyncio.sleep(0.5)

    def _index_task(self, task: Doc) -> None:
        service_id, task_id = task["ServiceID"], task["ID"]
        self.tasks_by_service[service_id][task_id] = task
        self.tasks_by_slot[service_id][task_slot(task)][task_id] = task
        if task.get("NodeID"):
            self.tasks_by_node[task["NodeID"]][task_id] = task
            if _counts_as_running(task):
                self.running[service_id][task["NodeID"]] += 1

    def _unindex_task(self, task: Doc) -> None:
        service_id, task_id = task["ServiceID"], task["ID"]
        by_service = self.tasks_by_service.get(service_id)
        if by_service is not None:
            by_service.pop(task_id, None)
            if not by_service:
                del self.tasks_by_service[service_id]
        by_slot = self.tasks_by_slot.get(service_id)
        if by_slot is not None:
            slot = by_slot.get(task_slot(task))
            if slot is not None:
                slot.pop(task_id, None)
                if not slot:
                    del by_slot[task_slot(task)]
            if not by_slot:
                del self.tasks_by_slot[service_id]
        if task.get("NodeID"):
            self.tasks_by_node.get(task["NodeID"], {}).pop(task_id, None)
            if _counts_as_running(task):
                counts = self.running[service_id]
                counts[task["NodeID"]] -= 1
                if counts[task["NodeID"]] <= 0:
                    del counts[task["NodeID"]]
                if not counts:
                    del self.running[service_id]


def _counts_as_running(task: Doc) -> bool:
    return (task.get("Status") or {}).get("State") == "running" and task.get("DesiredState") == "running"
