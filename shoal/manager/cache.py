"""The manager's in-memory view of the store, fed by one snapshot and then the watch.

Indexed by kind and ID, tasks also by service and by node, services by name, so every control loop reads in
time proportional to what it asks for. Listeners hear each committed change after the cache has applied it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from shoal.manager.store.base import Event, Snapshot, Store
from shoal.types import CLUSTERS, KINDS, NODES, SERVICES, TASKS, Doc, version_of

log = logging.getLogger(__name__)

Listener = Callable[[Event, Doc | None], None]


class Cache:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        self.tasks_by_service: dict[str, dict[str, Doc]] = defaultdict(dict)
        self.tasks_by_node: dict[str, dict[str, Doc]] = defaultdict(dict)
        self.service_by_name: dict[str, str] = {}
        self.revision = 0
        self.ready = asyncio.Event()
        self._listeners: list[Listener] = []
        self._resync_listeners: list[Callable[[], None]] = []
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

    # ---- subscribing ------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener, on_resync: Callable[[], None] | None = None) -> None:
        self._listeners.append(listener)
        if on_resync is not None:
            self._resync_listeners.append(on_resync)

    async def wait_for_revision(self, revision: int, timeout: float = 5.0) -> None:
        """Read-your-writes: wait until the watch has delivered `revision`."""
        async with self._revision_changed:
            await asyncio.wait_for(self._revision_changed.wait_for(lambda: self.revision >= revision), timeout)

    # ---- feeding ----------------------------------------------------------------------------------------

    def load(self, snapshot: Snapshot) -> None:
        self.docs = {kind: dict(snapshot.docs.get(kind, {})) for kind in KINDS}
        self.tasks_by_service = defaultdict(dict)
        self.tasks_by_node = defaultdict(dict)
        self.service_by_name = {}
        for task in self.docs[TASKS].values():
            self._index_task(task)
        for service in self.docs[SERVICES].values():
            self.service_by_name[service["Spec"]["Name"]] = service["ID"]
        self.revision = snapshot.revision
        for listener in self._resync_listeners:
            listener()

    def apply(self, event: Event) -> None:
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
        self.revision = max(self.revision, event.revision)
        for listener in self._listeners:
            try:
                listener(event, prev)
            except Exception:
                log.exception("cache listener failed on %s %s", event.kind, event.obj_id)

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
                    for event in events:
                        self.apply(event)
                    await self._notify_revision()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store watch ended (%s); resyncing from a fresh snapshot", exc)
                await asyncio.sleep(0.5)

    def _index_task(self, task: Doc) -> None:
        self.tasks_by_service[task["ServiceID"]][task["ID"]] = task
        if task.get("NodeID"):
            self.tasks_by_node[task["NodeID"]][task["ID"]] = task

    def _unindex_task(self, task: Doc) -> None:
        self.tasks_by_service.get(task["ServiceID"], {}).pop(task["ID"], None)
        if task.get("NodeID"):
            self.tasks_by_node.get(task["NodeID"], {}).pop(task["ID"], None)
