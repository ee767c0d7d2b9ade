"""The store on etcd v3, through the aetcd client, with TLS client certificates from the cluster CA."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
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

# etcd refuses transactions with more operations than --max-txn-ops (default 128).
MAX_OPS_PER_TXN = 120
# Short: during an etcd leader election a request can hang until its deadline; callers retry.
REQUEST_TIMEOUT = 2.0


class _TLSClient(aetcd.Client):
    """aetcd's client over a TLS channel (aetcd itself only opens plaintext channels)."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> None:
        super().__init__(host="", port=0, timeout=timeout)
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        # The certificates name "localhost"; members are addressed by IP, so verify against that name.
        options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.keepalive_time_ms", 10000)]
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self._target, self._credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self._target, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=None)
        self._connected.set()


def make_client(endpoints: list[str], cacert: bytes | None, cert: bytes | None, key: bytes | None,
                timeout: float = REQUEST_TIMEOUT) -> aetcd.Client:
    """A client for `endpoints` ("https://10.0.0.1:2379", …); TLS when any endpoint is https."""
    hosts = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]
    target = hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)
    tls = any(e.startswith("https://") for e in endpoints)
    credentials = grpc.ssl_channel_credentials(cacert, key, cert) if tls else None
    return _TLSClient(target, credentials, timeout)


def _wrap_errors(exc: Exception) -> Exception:
    if isinstance(exc, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError):
        return NoQuorum(f"store unreachable: {exc}")
    if isinstance(exc, aetcd.exceptions.ClientError):
        return NoQuorum(f"store error: {exc}")
    return exc


class EtcdStore:
    def __init__(self, client: aetcd.Client) -> None:
        self.client = client

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
        docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        for kv in result:
            parsed = split_key(kv.key.decode())
            if parsed and parsed[0] in docs:
                docs[parsed[0]][parsed[1]] = decode(kv.value, kv.mod_revision)
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

    def _compares_and_ops(self, ops: list[Op], fence: str | None) -> tuple[list[Any], list[Any]]:
        t = self.client.transactions
        compares: list[Any] = []
        writes: list[Any] = []
        if fence is not None:
            compares.append(t.value(LEADER_KEY.encode()) == fence.encode())
        for op in ops:
            key = op.key.encode()
            if op.kind == "create":
                assert op.doc is not None
                compares.append(t.create(key) == 0)
                writes.append(t.put(key, encode(op.doc)))
                if op.name_key:
                    compares.append(t.create(op.name_key.encode()) == 0)
                    writes.append(t.put(op.name_key.encode(), op.doc["ID"].encode()))
            elif op.kind == "update":
                assert op.doc is not None
                if op.expect_version:
                    compares.append(t.mod(key) == op.expect_version)
                else:
                    compares.append(t.create(key) > 0)
                writes.append(t.put(key, encode(op.doc)))
            elif op.kind == "delete":
                if op.expect_version:
                    compares.append(t.mod(key) == op.expect_version)
                writes.append(t.delete(key))
                if op.name_key:
                    writes.append(t.delete(op.name_key.encode()))
            else:
                assert op.raw is not None
                writes.append(t.put(key, op.raw))
        return compares, writes

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        if not batch.ops:
            return 0
        if len(batch.ops) > MAX_OPS_PER_TXN:
            raise ValueError(f"batch of {len(batch.ops)} operations is larger than {MAX_OPS_PER_TXN}")
        compares, writes = self._compares_and_ops(batch.ops, fence)
        try:
            ok, responses = await self.client.transaction(compare=compares, success=writes, failure=[])
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        if not ok:
            await self._explain_failure(batch, fence)
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


__all__ = ["EtcdStore", "make_client"]
