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

from shoal.errors import NoQuorum, NotLeader, SequenceConflict
from shoal.manager.store.base import (
    LEADER_KEY,
    PREFIX,
    Batch,
    Event,
    Op,
    Snapshot,
    checked_keys,
    decode,
    encode,
    failed_checks,
    split_key,
)
from shoal.metrics import ManagerMetrics
from shoal.types import KINDS, Doc

log = logging.getLogger(__name__)

# etcd refuses transactions with more operations than --max-txn-ops: shoal's own members allow 2048; an
# external cluster may have etcd's default of 128.
MAX_OPS_PER_TXN = 1000
EXTERNAL_MAX_OPS_PER_TXN = 100
# During an etcd leader election (or with quorum lost) a request hangs until its deadline, and callers retry;
# but a transaction of hundreds of writes on a loaded machine must not be cut off, so not too short.
REQUEST_TIMEOUT = 6.0
# A write is sent again after this long without an answer (see EtcdStore.commit), within REQUEST_TIMEOUT.
ATTEMPT_TIMEOUT = 1.5
RETRIED_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
RETRY_PAUSE = 0.1
DECODE_SLICE = 500  # watch events decoded between two turns of the loop


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

    @property
    def request_timeout(self) -> float | None:
        return self._timeout


def channel_target(endpoints: list[str]) -> str:
    """The gRPC target for etcd endpoints ("https://10.0.0.1:2379", …)."""
    hosts = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]
    return hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)


def make_client(endpoints: list[str], cacert: bytes | None, cert: bytes | None, key: bytes | None,
                timeout: float = REQUEST_TIMEOUT) -> EtcdClient:
    """A client for `endpoints` ("https://10.0.0.1:2379", …); TLS when any endpoint is https."""
    target = channel_target(endpoints)
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
    if isinstance(exc, grpc.aio.AioRpcError):  # a request made with the client's stub directly
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return NoQuorum(f"store unreachable: {exc.code().name.replace('_', ' ').lower()}")
        return NoQuorum(f"store error: {exc.details()}")
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
    def __init__(self, client: aetcd.Client, max_ops: int = MAX_OPS_PER_TXN,
                 metrics: ManagerMetrics | None = None) -> None:
        self.client = client
        self.max_ops = max_ops
        self.stats = StoreStats()
        self.metrics = metrics or ManagerMetrics()

    async def close(self) -> None:
        await self.client.close()

    # ---- reads ------------------------------------------------------------------------------------------

    async def get(self, kind: str, obj_id: str) -> Doc | None:
        with self.metrics.store_request("get"):
            try:
                kv = await self.client.get(f"{PREFIX}{kind}/{obj_id}".encode())
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        return None if kv is None else decode(kv.value, kv.mod_revision)

    async def list_kind(self, kind: str) -> list[Doc]:
        with self.metrics.store_request("list"):
            try:
                result = await self.client.get_prefix(f"{PREFIX}{kind}/".encode())
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        return [decode(kv.value, kv.mod_revision) for kv in result]

    async def get_raw(self, key: str) -> bytes | None:
        with self.metrics.store_request("get"):
            try:
                kv = await self.client.get(key.encode())
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        return None if kv is None else bytes(kv.value)

    async def put_raw_if_absent(self, key: str, value: bytes) -> bytes:
        """Write `key` unless it exists; returns what it holds then (ours, or what another writer put first)."""
        with self.metrics.store_request("commit"):
            try:
                await self.client.connect()
                response = await self.client.kvstub.Txn(rpc.TxnRequest(
                    compare=[_created(key.encode(), rpc.Compare.EQUAL)], success=[_put(key.encode(), value)],
                    failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode()))]),
                    timeout=self.client.request_timeout)
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        if response.succeeded:
            return value
        return bytes(response.responses[0].response_range.kvs[0].value)

    async def list_raw(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix` with its value (keys that are not objects: the store CA's records)."""
        with self.metrics.store_request("list"):
            try:
                result = await self.client.get_prefix(prefix.encode())
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        return {kv.key.decode(): bytes(kv.value) for kv in result}

    async def follow_raw(self, key: str) -> AsyncIterator[bytes | None]:
        """The value of `key` now and after every change (None once deleted). The watch starts before the
        first read, so no change falls between them; a value may be told twice."""
        try:
            await self.client.connect()
            call = rpc.WatchStub(self.client.channel).Watch()
            await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=key.encode())))
            if (await call.read()) is grpc.aio.EOF:  # the "created" answer
                raise NoQuorum("store watch ended")
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        try:
            yield await self.get_raw(key)
            while True:
                try:
                    response = await call.read()
                except Exception as exc:
                    raise _wrap_errors(exc) from exc
                if response is grpc.aio.EOF or response.canceled:
                    raise NoQuorum("store watch ended")
                for event in response.events:
                    yield bytes(event.kv.value) if event.type == rpc.Event.PUT else None
        finally:
            call.cancel()

    async def snapshot(self) -> Snapshot:
        """Every object at one revision (a single range read is consistent)."""
        with self.metrics.store_request("snapshot"):
            try:
                result = await self.client.get_prefix(PREFIX.encode())
            except Exception as exc:
                raise _wrap_errors(exc) from exc
        # Decoding a hundred thousand documents takes seconds: not on the event loop.
        docs = await asyncio.to_thread(_decode_all, list(result))
        return Snapshot(docs, int(result.header.revision))

    async def watch(self, from_revision: int) -> AsyncIterator[list[Event]]:
        """Committed changes after `from_revision`, in commit order, one watch response at a time: etcd never
        splits a revision's events across responses, so each batch holds whole transactions (the cache counts
        a revision as seen only once all of it is applied)."""
        try:
            await self.client.connect()
            call = rpc.WatchStub(self.client.channel).Watch()
            end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
            await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=PREFIX.encode(), range_end=end.encode(), start_revision=from_revision + 1)))
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        try:
            while True:
                try:
                    response = await call.read()
                except Exception as exc:
                    raise _wrap_errors(exc) from exc
                if response is grpc.aio.EOF:
                    raise NoQuorum("store watch ended")
                if response.canceled:
                    # E.g. the revision was compacted: the cache starts again from a fresh snapshot.
                    raise NoQuorum(f"store watch cancelled: {response.cancel_reason or 'compacted'}")
                # A response can carry thousands of events (several large transactions): decoded a slice at a
                # time, with the loop serving sessions in between, then handed on whole.
                raw = response.events
                events: list[Event] = []
                for start in range(0, len(raw), DECODE_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    events += [event for ev in raw[start:start + DECODE_SLICE] if (event := _event(ev)) is not None]
                if events:
                    yield events
        finally:
            call.cancel()

    # ---- writes -----------------------------------------------------------------------------------------

    def _request(self, ops: list[Op], fence: str | None) -> tuple[rpc.TxnRequest, int]:
        """The transaction for a batch, and the bytes of the values it writes."""
        compare: list[rpc.Compare] = []
        success: list[rpc.RequestOp] = []
        size = 0
        if fence is not None:
            compare.append(rpc.Compare(key=LEADER_KEY.encode(), result=rpc.Compare.EQUAL,
                                       target=rpc.Compare.VALUE, value=fence.encode()))
        for op in ops:
            key = op.key.encode()
            value = b""
            if op.kind == "create":
                assert op.doc is not None
                value = op.raw if op.raw is not None else encode(op.doc)  # the applier may have encoded it
                compare.append(_created(key, rpc.Compare.EQUAL))
                success.append(_put(key, value))
                if op.name_key:
                    compare.append(_created(op.name_key.encode(), rpc.Compare.EQUAL))
                    success.append(_put(op.name_key.encode(), op.doc["ID"].encode()))
            elif op.kind == "update":
                assert op.doc is not None
                value = op.raw if op.raw is not None else encode(op.doc)
                compare.append(_modified(key, op.expect_version) if op.expect_version
                               else _created(key, rpc.Compare.GREATER))
                success.append(_put(key, value))
            elif op.kind == "delete":
                if op.expect_version:
                    compare.append(_modified(key, op.expect_version))
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
                if op.name_key:
                    success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                        key=op.name_key.encode())))
            else:
                assert op.raw is not None
                value = op.raw
                success.append(_put(key, value))
            size += len(key) + len(value)
        return rpc.TxnRequest(compare=compare, success=success), size

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        if not batch.ops:
            return 0
        with self.metrics.store_request("commit"):
            return await self._commit(batch, fence)

    async def _commit(self, batch: Batch, fence: str | None) -> int:
        if len(batch.ops) > self.max_ops:
            raise ValueError(f"batch of {len(batch.ops)} operations is larger than {self.max_ops}")
        request, size = self._request(batch.ops, fence)
        started = time.monotonic()
        retried = False
        try:
            await self.client.connect()
            while True:
                try:
                    response = await self.client.kvstub.Txn(request, timeout=ATTEMPT_TIMEOUT)
                    break
                except grpc.aio.AioRpcError as exc:
                    # Sent while the store elects a new leader, a write waits out etcd's whole request timeout
                    # (6 s) although the election takes well under a second: give up on the attempt early and
                    # send it again (its compares make a second application impossible).
                    if (exc.code() not in RETRIED_CODES
                            or time.monotonic() - started + ATTEMPT_TIMEOUT > (self.client.request_timeout or 0)):
                        raise
                    retried = True
                    await asyncio.sleep(RETRY_PAUSE)
        except Exception as exc:
            self.stats.failed += 1
            raise _wrap_errors(exc) from exc
        finally:
            self.stats.seconds += time.monotonic() - started
        if not response.succeeded and retried and (landed := await self._landed(batch)):
            response = landed  # the attempt that seemed lost was applied after all
        if not response.succeeded:
            self.stats.failed += 1
            raise await self._why_refused(batch, fence)
        self.stats.transactions += 1
        self.stats.operations += len(batch.ops)
        self.stats.largest = max(self.stats.largest, len(batch.ops))
        self.stats.bytes += size
        # A successful transaction's writes are at the revision its header carries.
        revision = int(response.header.revision)
        for op in batch.ops:
            if op.doc is not None and op.kind in ("create", "update"):
                op.doc["Version"] = {"Index": revision}
        return revision

    async def _landed(self, batch: Batch) -> rpc.TxnResponse | None:
        """After a retry was refused: whether an earlier attempt of the batch was applied (every key holds
        what the batch wrote, every deleted one is gone); a response carrying its revision if so."""
        written = {op.key: encode(op.doc) for op in batch.ops if op.doc is not None and op.kind != "delete"}
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode())) for op in batch.ops]
        try:
            response = await self.client.kvstub.Txn(rpc.TxnRequest(success=reads),
                                                    timeout=self.client.request_timeout)
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        revision = 0
        for op, result in zip(batch.ops, response.responses, strict=True):
            kvs = result.response_range.kvs
            if op.kind == "delete":
                if kvs:
                    return None
                continue
            if not kvs or kvs[0].value != written.get(op.key, op.raw):
                return None
            revision = max(revision, int(kvs[0].mod_revision))
        return rpc.TxnResponse(succeeded=True, header=rpc.ResponseHeader(revision=revision))

    async def _why_refused(self, batch: Batch, fence: str | None) -> Exception:
        """Which operations of a refused batch failed, read in one more request (paid only on a refusal), so a
        writer of 500 retries the other 499 at once."""
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode(), keys_only=True))
                 for k in checked_keys(batch.ops)]
        if fence is not None:
            reads.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=LEADER_KEY.encode())))
        try:
            response = await self.client.kvstub.Txn(rpc.TxnRequest(success=reads),
                                                    timeout=self.client.request_timeout)
        except Exception as exc:
            raise _wrap_errors(exc) from exc
        ranges = [r.response_range.kvs for r in response.responses]
        if fence is not None:
            leader = ranges.pop()
            if not leader or leader[0].value != fence.encode():
                return NotLeader()
        revisions = {kvs[0].key.decode(): int(kvs[0].mod_revision) for kvs in ranges if kvs}
        # Compared a moment later than the transaction: a key may have changed back meanwhile.
        return failed_checks(batch.ops, revisions) or SequenceConflict()


def _event(ev: Any) -> Event | None:
    parsed = split_key(ev.kv.key.decode())
    if parsed is None or parsed[0] not in KINDS:
        return None
    revision = int(ev.kv.mod_revision)
    if ev.type == rpc.Event.PUT:
        return Event("put", parsed[0], parsed[1], decode(ev.kv.value, revision), revision)
    return Event("delete", parsed[0], parsed[1], None, revision)


def _put(key: bytes, value: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def _created(key: bytes, result: int) -> rpc.Compare:
    """create_revision compared to 0: EQUAL means the key does not exist, GREATER that it does."""
    return rpc.Compare(key=key, result=result, target=rpc.Compare.CREATE, create_revision=0)


def _modified(key: bytes, revision: int) -> rpc.Compare:
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=revision)


__all__ = ["EtcdClient", "EtcdStore", "make_client"]
