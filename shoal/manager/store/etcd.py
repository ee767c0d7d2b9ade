"""The store on etcd v3, through the aetcd client, with TLS client certificates from the cluster CA."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc, watcher

from shoal.errors import Conflict, NoQuorum, NotLeader, SequenceConflict
from shoal.manager.store.base import (
    LEADER_KEY,
    PREFIX,
    Batch,
    Event,
    Op,
    Snapshot,
    decode,
    encode,
    split_key,
)
from shoal.types import KINDS, Doc

log = logging.getLogger(__name__)

# etcd refuses transactions with more operations than --max-txn-ops: shoal's own members allow 2048; an
# external cluster may have etcd's default of 128.
MAX_OPS_PER_TXN = 1000
EXTERNAL_MAX_OPS_PER_TXN = 100
# During an etcd leader election (or with quorum lost) a request hangs until its deadline, and callers retry;
# but a transaction of hundreds of writes on a loaded machine must not be cut off, so not too short.
REQUEST_TIMEOUT = 5.0


# The certificates name "localhost"; members are addressed by IP, so verify against that name.
# A snapshot of a large swarm is one range read of tens of megabytes (gRPC's default limit is 4 MB).
CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", "localhost"), ("grpc.keepalive_time_ms", 10000),
                   ("grpc.max_receive_message_length", 1 << 30)]


class EtcdClient(aetcd.Client):
    """aetcd's client over a TLS channel (aetcd itself only opens plaintext channels)."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> None:
        super().__init__(host="", port=0, timeout=timeout)
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self._target, self._credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=None)
        self._connected.set()

    def sync_channel(self) -> grpc.Channel:
        """A blocking channel to the same endpoints, for a thread of its own (the leader's lease keeper)."""
        if self._credentials is not None:
            return grpc.secure_channel(self._target, self._credentials, options=CHANNEL_OPTIONS)
        return grpc.insecure_channel(self._target, options=CHANNEL_OPTIONS)


def make_client(endpoints: list[str], cacert: bytes | None, cert: bytes | None, key: bytes | None,
                timeout: float = REQUEST_TIMEOUT) -> EtcdClient:
    """A client for `endpoints` ("https://10.0.0.1:2379", …); TLS when any endpoint is https."""
    hosts = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]
    target = hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)
    tls = any(e.startswith("https://") for e in endpoints)
    credentials = grpc.ssl_channel_credentials(cacert, key, cert) if tls else None
    return EtcdClient(target, credentials, timeout)


def _decode_all(kvs: list[Any]) -> dict[str, dict[str, Doc]]:
    docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
    for kv in kvs:
        parsed = split_key(kv.key.decode())
        if parsed and parsed[0] in docs:
            docs[parsed[0]][parsed[1]] = decode(kv.value, kv.mod_revision)
    return docs


def _wrap_errors(exc: Exception) -> Exception:
    if isinstance(exc, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError):
        return NoQuorum(f"store unreachable: {exc}")
    if isinstance(exc, aetcd.exceptions.ClientError):
        return NoQuorum(f"store error: {exc}")
    return exc


@dataclass
class StoreStats:
    """What the store has written, for the debug endpoint and the benchmarks."""

    transactions: int = 0
    operations: int = 0
    bytes: int = 0
    failed: int = 0  # refused (conflict, not leader) or not answered
    seconds: float = 0.0  # spent waiting for transactions
    largest: int = 0  # operations in the largest transaction

    def to_json(self) -> Doc:
        return {"transactions": self.transactions, "operations": self.operations, "bytes": self.bytes,
                "failed": self.failed, "seconds": round(self.seconds, 3), "largest": self.largest}


class EtcdStore:
    def __init__(self, client: aetcd.Client, max_ops: int = MAX_OPS_PER_TXN) -> None:
        self.client = client
        self.max_ops = max_ops
        self.stats = StoreStats()

    async def close(self) -> None:
        await self.client.close()

    # ---- reads ------------------------------------------------------------------------------------------

    async def get(self, kind: str, obj_id: str) -> Doc | None:
        try:
            kv = await self.client.get(f"{PREFIX}{kind}/{obj_id}".encode())
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        return None if kv is None else decode(kv.value, kv.mod_revision)

    async def list_kind(self, kind: str) -> list[Doc]:
        try:
            result = await self.client.get_prefix(f"{PREFIX}{kind}/".encode())
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        return [decode(kv.value, kv.mod_revision) for kv in result]

    async def get_raw(self, key: str) -> bytes | None:
        try:
            kv = await self.client.get(key.encode())
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        return None if kv is None else bytes(kv.value)

    async def snapshot(self) -> Snapshot:
        """Every object at one revision (a single range read is consistent)."""
        try:
            result = await self.client.get_prefix(PREFIX.encode())
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        # Decoding a hundred thousand documents takes seconds: not on the event loop.
        docs = await asyncio.to_thread(_decode_all, list(result))
        return Snapshot(docs, int(result.header.revision))

    async def watch(self, from_revision: int) -> AsyncIterator[list[Event]]:
        """Committed changes after `from_revision`, in commit order."""
        watch = await self.client.watch_prefix(PREFIX.encode(), start_revision=from_revision + 1)
        try:
            async for ev in watch:
                parsed = split_key(ev.kv.key.decode())
                if parsed is None or parsed[0] not in KINDS:
                    continue
                rev = int(ev.kv.mod_revision)
                if ev.kind == "PUT":
                    yield [Event("put", parsed[0], parsed[1], decode(ev.kv.value, rev), rev)]
                else:
                    yield [Event("delete", parsed[0], parsed[1], None, rev)]
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        finally:
            await watch.cancel()

    # ---- writes -----------------------------------------------------------------------------------------

    def _compares_and_ops(self, ops: list[Op], fence: str | None) -> tuple[list[Any], list[Any], int]:
        """The transaction's compares and writes, and the bytes of the values it writes."""
        t = self.client.transactions
        compares: list[Any] = []
        writes: list[Any] = []
        size = 0
        if fence is not None:
            compares.append(t.value(LEADER_KEY.encode()) == fence.encode())
        for op in ops:
            key = op.key.encode()
            if op.kind == "create":
                assert op.doc is not None
                value = encode(op.doc)
                compares.append(t.create(key) == 0)
                writes.append(t.put(key, value))
                if op.name_key:
                    compares.append(t.create(op.name_key.encode()) == 0)
                    writes.append(t.put(op.name_key.encode(), op.doc["ID"].encode()))
            elif op.kind == "update":
                assert op.doc is not None
                value = encode(op.doc)
                if op.expect_version:
                    compares.append(t.mod(key) == op.expect_version)
                else:
                    compares.append(t.create(key) > 0)
                writes.append(t.put(key, value))
            elif op.kind == "delete":
                value = b""
                if op.expect_version:
                    compares.append(t.mod(key) == op.expect_version)
                writes.append(t.delete(key))
                if op.name_key:
                    writes.append(t.delete(op.name_key.encode()))
            else:
                assert op.raw is not None
                value = op.raw
                writes.append(t.put(key, value))
            size += len(key) + len(value)
        return compares, writes, size

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        if not batch.ops:
            return 0
        if len(batch.ops) > self.max_ops:
            raise ValueError(f"batch of {len(batch.ops)} operations is larger than {self.max_ops}")
        compares, writes, size = self._compares_and_ops(batch.ops, fence)
        started = time.monotonic()
        try:
            ok, responses = await self.client.transaction(compare=compares, success=writes, failure=[])
        except Exception as exc:
            self.stats.failed += 1
            raise _wrap_errors(exc) from exc
        finally:
            self.stats.seconds += time.monotonic() - started
        if not ok:
            self.stats.failed += 1
            await self._explain_failure(batch, fence)
        self.stats.transactions += 1
        self.stats.operations += len(batch.ops)
        self.stats.largest = max(self.stats.largest, len(batch.ops))
        self.stats.bytes += size
        # The header revision of a successful txn is the revision of its writes.
        header_rev = 0
        for r in responses:
            which = r.WhichOneof("response")
            header_rev = max(header_rev, int(getattr(r, which).header.revision))
        for op in batch.ops:
            if op.doc is not None and op.kind in ("create", "update"):
                op.doc["Version"] = {"Index": header_rev}
        return header_rev

    async def _explain_failure(self, batch: Batch, fence: str | None) -> None:
        if fence is not None:
            leader = await self.get_raw(LEADER_KEY)
            if leader != fence.encode():
                raise NotLeader()
        for op in batch.ops:
            if op.kind == "create" and op.name_key and await self.get_raw(op.name_key) is not None:
                name = op.name_key.rsplit("/", 1)[-1]
                raise Conflict(f"rpc error: code = AlreadyExists desc = name conflicts with an existing object: {name}")
            if op.kind == "create" and await self.get_raw(op.key) is not None:
                raise Conflict(f"object {op.key.rsplit('/', 1)[-1]} already exists")
        raise SequenceConflict()


__all__ = ["EtcdClient", "EtcdStore", "make_client"]
