"""Leader election on an etcd lease: one manager at a time runs the control loops.

The leader key holds the leader's node ID and is attached to a lease the leader keeps alive. If the leader dies
or is cut off, the lease expires and the key disappears; another manager's transaction (create the key only if
it does not exist) then wins. Every leader-only write compares the key's value with its own ID in the same
transaction (fencing), so a deposed leader cannot write even before it notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import aetcd
import grpc
from aetcd import rpc

from shoal.manager.store.base import LEADER_KEY
from shoal.timeouts import within

log = logging.getLogger(__name__)

# The leader lease, in seconds. Long enough that a loaded machine (a hundred thousand tasks, every core busy)
# renews it in time; a leader that died is still replaced faster than this when its daemon's port refuses
# connections (`LeaderElection.end_dead_leader`), so only a silent leader (cut off, frozen) costs the whole TTL.
LEASE_TTL = 2
# The lease keeper stops refreshing once the event loop has made no progress for this long: a leader whose
# loops are wedged must give way, one that is merely busy must not.
MAX_LOOP_STALL = 10.0

ChannelFactory = Callable[[], grpc.Channel]


class LeaseKeeper:
    """Keeps the leader lease alive from a thread of its own, over a gRPC channel of its own.

    A leader's event loop can be busy for a second at a time (a large snapshot, a burst of a thousand task
    reports), which is as long as the lease lives. The keeper's refreshes do not wait for the loop, so load
    cannot cost the leadership; a frozen or killed process stops them at once, so failover stays as fast.
    It refreshes only while `progressing()` says the loop still ticks, and it reports the loss (the lease
    expired or could not be refreshed in time) to the loop through `on_lost`, early enough that the leader
    stops acting before the lease can have expired on etcd's side.
    """

    def __init__(self, channel: ChannelFactory, lease_id: int, ttl: float, progressing: Callable[[], bool],
                 on_lost: Callable[[str], None]) -> None:
        self._channel = channel
        self.lease_id = lease_id
        self.ttl = ttl
        self._progressing = progressing
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.refreshes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.ttl / 4
        # The lease was granted just before this started: etcd keeps it at least this long.
        valid_until = time.monotonic() + self.ttl
        channel = self._channel()
        try:
            stub = rpc.LeaseStub(channel)
            while not self._stop.is_set():
                if not self._progressing():
                    self._lost(f"the event loop made no progress for {MAX_LOOP_STALL:.0f}s")
                    return
                sent = time.monotonic()
                try:
                    replies = stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=self.lease_id)]),
                                                  timeout=interval * 2)
                    for reply in replies:
                        if reply.TTL <= 0:
                            self._lost("the lease expired")
                            return
                        valid_until = sent + reply.TTL
                        self.refreshes += 1
                except grpc.RpcError as exc:
                    log.warning("leader lease refresh failed: %s", exc.code() if hasattr(exc, "code") else exc)
                    # Stop acting with a margin before the lease can have expired on the store's side.
                    if time.monotonic() > valid_until - interval * 2:
                        self._lost("the lease could not be refreshed in time")
                        return
                self._stop.wait(max(0.0, interval - (time.monotonic() - sent)))
        finally:
            channel.close()

    def _lost(self, why: str) -> None:
        if not self._stop.is_set():
            self._on_lost(why)


class LeaderElection:
    def __init__(self, client: aetcd.Client, node_id: str, ttl: int = LEASE_TTL,
                 channel: ChannelFactory | None = None, progressing: Callable[[], bool] | None = None) -> None:
        self.client = client
        self.node_id = node_id
        self.ttl = ttl
        self.is_leader = False
        self.leader_id: str | None = None
        self.changed = asyncio.Event()
        self._channel = channel
        self._progressing = progressing or (lambda: True)
        self.elections_won = 0
        self.leaderships_lost = 0

    async def current_leader(self) -> str | None:
        kv = await self.client.get(LEADER_KEY.encode())
        return kv.value.decode() if kv is not None else None

    async def run(self, on_elected: Callable[[], Awaitable[None]], on_deposed: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; call the hooks on every change of this manager's leadership."""
        t = self.client.transactions
        while True:
            try:
                lease = await self.client.lease(self.ttl)
                won, _ = await self.client.transaction(
                    compare=[t.create(LEADER_KEY.encode()) == 0],
                    success=[t.put(LEADER_KEY.encode(), self.node_id.encode(), lease=lease.id)],
                    failure=[],
                )
                if won:
                    lost = self._keep_alive(lease.id)
                    self._set(True, self.node_id)
                    self.elections_won += 1
                    log.info("this manager (%s) is now the leader", self.node_id)
                    try:
                        await on_elected()
                        why = await lost
                        log.warning("this manager (%s) lost the leadership: %s", self.node_id, why)
                    finally:
                        lost.cancel()  # stops the keeper thread, whatever ended the leadership
                        self._set(False, None)
                        self.leaderships_lost += 1
                        await on_deposed()
                        with contextlib.suppress(Exception):
                            await within(lease.revoke(), 1)
                else:
                    with contextlib.suppress(Exception):
                        await lease.revoke()
                    self._set(False, await self.current_leader())
                    await self._wait_for_vacancy()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader election: %s", exc)
                self._set(False, None)
                await asyncio.sleep(0.3)

    def _keep_alive(self, lease_id: int) -> asyncio.Future[str]:
        """Start keeping the lease alive; the future gets the reason once the leadership is lost."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()

        def settle(why: str) -> None:
            if not lost.done():
                lost.set_result(why)

        def on_lost(why: str) -> None:
            loop.call_soon_threadsafe(settle, why)

        if self._channel is None:
            raise RuntimeError("LeaderElection needs a channel factory to keep its lease alive")
        keeper = LeaseKeeper(self._channel, lease_id, self.ttl, self._progressing, on_lost)
        keeper.start()
        lost.add_done_callback(lambda _: keeper.stop())
        return lost

    async def end_dead_leader(self, leader_id: str) -> bool:
        """End the lease of a leader whose daemon is known to be gone, so that the next one is elected now
        rather than when the lease expires. Only the lease that `leader_id` holds right now is revoked; a
        leader elected meanwhile is left alone. Returns whether a lease was revoked."""
        kv = await self.client.get(LEADER_KEY.encode())
        if kv is None or kv.value.decode() != leader_id or not kv.lease:
            return False
        await self.client.revoke_lease(kv.lease)
        log.warning("the leader %s is gone (its port refuses connections): its lease is revoked", leader_id)
        return True

    async def _wait_for_vacancy(self) -> None:
        """Return when the leader key is deleted (lease expired) or after a short poll interval."""
        watch = await self.client.watch(LEADER_KEY.encode())
        try:
            async def first_delete() -> None:
                async for ev in watch:
                    if ev.kind == "DELETE":
                        return
            # The key may have vanished between our read and the watch start: poll as a backstop.
            await within(first_delete(), timeout=self.ttl)
        except TimeoutError:
            pass
        finally:
            await watch.cancel()

    def _set(self, is_leader: bool, leader_id: str | None) -> None:
        if (self.is_leader, self.leader_id) != (is_leader, leader_id):
            self.is_leader = is_leader
            self.leader_id = leader_id
            self.changed.set()
            self.changed = asyncio.Event()
