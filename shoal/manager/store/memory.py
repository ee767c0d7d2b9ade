"""An in-memory store with the same contract as EtcdStore, for unit tests of loops and the API."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

from shoal.errors import NotLeader
from shoal.manager.store.base import (
    LEADER_KEY,
    Batch,
    Event,
    Snapshot,
    checked_keys,
    decode,
    encode,
    failed_checks,
    split_key,
)
from shoal.types import KINDS, Doc


class MemoryStore:
    max_ops = 1000

    def __init__(self) -> None:
        self.revision = 1
        # key -> (value, mod_revision)
        self._kv: dict[str, tuple[bytes, int]] = {}
        self._subscribers: list[asyncio.Queue[list[Event]]] = []
        self._history: list[Event] = []

    async def close(self) -> None:
        pass

    async def get(self, kind: str, obj_id: str) -> Doc | None:
        entry = self._kv.get(f"/shoal/{kind}/{obj_id}")
        return None if entry is None else decode(*entry)

    async def list_kind(self, kind: str) -> list[Doc]:
        prefix = f"/shoal/{kind}/"
        return [decode(v, r) for k, (v, r) in sorted(self._kv.items()) if k.startswith(prefix)]

    async def get_raw(self, key: str) -> bytes | None:
        entry = self._kv.get(key)
        return None if entry is None else entry[0]

    async def put_raw_if_absent(self, key: str, value: bytes) -> bytes:
        if key not in self._kv:
            await self.commit(Batch().put_raw(key, value))
        return self._kv[key][0]

    async def snapshot(self) -> Snapshot:
        docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        for key, (value, rev) in self._kv.items():
            parsed = split_key(key)
            if parsed and parsed[0] in docs:
                docs[parsed[0]][parsed[1]] = decode(value, rev)
        return Snapshot(docs, self.revision)

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        if fence is not None and self._kv.get(LEADER_KEY, (b"", 0))[0] != fence.encode():
            raise NotLeader()
        revisions = {key: self._kv[key][1] for key in checked_keys(batch.ops) if key in self._kv}
        error = failed_checks(batch.ops, revisions)
        if error is not None:
            raise error
        self.revision += 1
        rev = self.revision
        events: list[Event] = []
        for op in batch.ops:
            parsed = split_key(op.key)
            if op.kind in ("create", "update"):
                assert op.doc is not None
                self._kv[op.key] = (encode(op.doc), rev)
                if op.name_key:
                    self._kv[op.name_key] = (op.doc["ID"].encode(), rev)
                op.doc["Version"] = {"Index": rev}
                if parsed:
                    events.append(Event("put", parsed[0], parsed[1], copy.deepcopy(op.doc), rev))
            elif op.kind == "delete":
                self._kv.pop(op.key, None)
                if op.name_key:
                    self._kv.pop(op.name_key, None)
                if parsed:
                    events.append(Event("delete", parsed[0], parsed[1], None, rev))
            else:
                assert op.raw is not None
                self._kv[op.key] = (op.raw, rev)
        self._history.extend(events)
        for q in self._subscribers:
            q.put_nowait(events)
        return rev

    def set_leader(self, node_id: str) -> None:
        self.revision += 1
        self._kv[LEADER_KEY] = (node_id.encode(), self.revision)

    async def watch(self, from_revision: int) -> AsyncIterator[list[Event]]:
        queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        backlog = [e for e in self._history if e.revision > from_revision]
        if backlog:
            queue.put_nowait(backlog)
        self._subscribers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)
