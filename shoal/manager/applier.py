"""The one place leader decisions are written: plans become fenced, version-checked store batches.

A plan is written in chunks (etcd caps operations per transaction). When a chunk fails on a stale version, the
store names the operations that failed and the others are committed again at once, so a single conflicting
task does not hold back the rest; conflicts are counted and the loop that made the plan decides again from the
fresh cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from shoal.errors import Conflict, NotLeader
from shoal.manager.store.base import Batch, Op, Store, encode
from shoal.types import TASKS, Plan

log = logging.getLogger(__name__)

# Operations per transaction: large enough that a plan of thousands of tasks is a handful of transactions (etcd
# raft-commits each as one entry), small enough to stay far below etcd's request size limit.
CHUNK = 500
# And bytes per transaction: a service with a large spec has large tasks. Below the request limit of etcd's
# default configuration (1.5 MiB), which an external cluster may keep.
CHUNK_BYTES = 1024 * 1024


@dataclass
class ApplyResult:
    written: int = 0
    conflicts: int = 0
    revision: int = 0  # the store revision of the last write, to wait for in the cache
    failed_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"written={self.written} conflicts={self.conflicts}"

    def merge(self, other: ApplyResult) -> None:
        self.written += other.written
        self.conflicts += other.conflicts
        self.revision = max(self.revision, other.revision)
        self.failed_keys += other.failed_keys


def plan_batch(plan: Plan, kind: str = TASKS, batch: Batch | None = None) -> Batch:
    """The plan's creates, updates and deletes of `kind` documents, added to `batch` (or a new one)."""
    batch = Batch() if batch is None else batch
    for doc in plan.create:
        batch.create(kind, doc)
    for doc in plan.update:
        batch.update(kind, doc)
    for doc in plan.delete:
        batch.delete(kind, doc)
    return batch


def chunks(ops: list[Op], most_ops: int, most_bytes: int) -> Iterator[list[Op]]:
    """`ops` in order, in pieces of at most `most_ops` operations and about `most_bytes` (a piece holds at least
    one operation, however large). Each document is encoded here once; the store sends what was encoded."""
    chunk: list[Op] = []
    size = 0
    for op in ops:
        if op.doc is not None and op.kind != "delete" and op.raw is None:
            op.raw = encode(op.doc)
        op_size = len(op.key) + len(op.raw or b"")
        if chunk and (len(chunk) >= most_ops or size + op_size > most_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += op_size
    if chunk:
        yield chunk


class Applier:
    def __init__(self, store: Store, fence: Callable[[], str | None]) -> None:
        self.store = store
        self.fence = fence

    async def apply(self, plan: Plan, kind: str = TASKS) -> ApplyResult:
        return await self.write(plan_batch(plan, kind))

    async def write(self, batch: Batch) -> ApplyResult:
        result = ApplyResult()
        fence = self.fence()
        for chunk in chunks(batch.ops, min(CHUNK, self.store.max_ops), CHUNK_BYTES):
            await self._write_chunk(chunk, fence, result)
        return result

    async def _write_chunk(self, ops: list[Op], fence: str | None, result: ApplyResult) -> None:
        """Commit the chunk; when some of its operations meet a stale version, set those aside and commit the
        rest again (the store names the failing keys), so a conflict costs one more transaction, not one per
        operation."""
        while ops:
            try:
                result.revision = await self.store.commit(Batch(ops), fence=fence)
                result.written += len(ops)
                return
            except NotLeader:
                raise
            except Conflict as exc:
                failed = set(exc.keys)
                refused = [op for op in ops if op.key in failed or op.name_key in failed]
                if not refused:
                    await self._write_one_by_one(ops, fence, result)
                    return
                for op in refused:
                    result.conflicts += 1
                    result.failed_keys.append(op.key)
                    log.debug("applier: %s on %s", exc.message, op.key)
                ops = [op for op in ops if op not in refused]

    async def _write_one_by_one(self, ops: list[Op], fence: str | None, result: ApplyResult) -> None:
        """For a store that cannot say which operations failed."""
        for op in ops:
            try:
                result.revision = await self.store.commit(Batch([op]), fence=fence)
                result.written += 1
            except NotLeader:
                raise
            except Conflict as exc:
                result.conflicts += 1
                result.failed_keys.append(op.key)
                log.debug("applier: %s on %s", exc.message, op.key)
