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
from collections.abc import Awaitable, Callable

import aetcd

from shoal.manager.store.base import LEADER_KEY

log = logging.getLogger(__name__)

LEASE_TTL = 1  # seconds; etcd allows it with a 500 ms election timeout (its minimum TTL is 1.5 election timeouts)


class LeaderElection:
    def __init__(self, client: aetcd.Client, node_id: str, ttl: int = LEASE_TTL) -> None:
        self.client = client
        self.node_id = node_id
        self.ttl = ttl
        self.is_leader = False
        self.leader_id: str | None = None
        self.changed = asyncio.Event()

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
                    self._set(True, self.node_id)
                    log.info("this manager (%s) is now the leader", self.node_id)
                    await on_elected()
                    try:
                        await self._keep_alive(lease)
                    finally:
                        self._set(False, None)
                        log.warning("this manager (%s) lost the leadership", self.node_id)
                        await on_deposed()
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(lease.revoke(), 1)
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

    async def _keep_alive(self, lease: aetcd.leases.Lease) -> None:
        interval = self.ttl / 4
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await asyncio.wait_for(lease.refresh(), interval * 2)
                if reply is None or reply.TTL <= 0:
                    return  # expired: someone else may already lead
                deadline = loop.time() + reply.TTL
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader lease refresh failed: %s", exc)
                # Stop acting before the lease can have expired on the store's side.
                if loop.time() > deadline - interval * 2:
                    return

    async def _wait_for_vacancy(self) -> None:
        """Return when the leader key is deleted (lease expired) or after a short poll interval."""
        watch = await self.client.watch(LEADER_KEY.encode())
        try:
            async def first_delete() -> None:
                async for ev in watch:
                    if ev.kind == "DELETE":
                        return
            # The key may have vanished between our read and the watch start: poll as a backstop.
            await asyncio.wait_for(first_delete(), timeout=self.ttl)
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
