"""The store: the one source of truth (etcd), and an in-memory twin for unit tests."""

from shoal.manager.store.base import Batch, Event, Snapshot, Store
from shoal.manager.store.memory import MemoryStore

__all__ = ["Batch", "Event", "MemoryStore", "Snapshot", "Store"]
