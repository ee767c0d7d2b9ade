"""Leader election on an etcd lease: one manager at a time runs the control loops.

The leader key holds the leader's node ID and is attached to a lease the leader keeps alive. If the leader dies
or is cut off, the lease expires and the key disappears; another manager's transaction (create the key only if
it does not exist) then wins. Every leader-only write compares the key's value with its own ID in the same
transaction (fencing), so a deposed leader cannot write even before it notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import aetcd

from shoal.manager import lease_keeper
from shoal.manager.store.base import LEADER_KEY
from shoal.metrics import ManagerMetrics
from shoal.timeouts import within

log = logging.getLogger(__name__)

# The leader lease, in seconds. Long enough that a loaded machine (a hundred thousand tasks, every core busy)
# renews it in time; a leader that died is still replaced faster than this when its daemon's port refuses
# connections (`LeaderElection.end_dead_leader`), so only a silent leader (cut off, frozen) costs the whole TTL.
LEASE_TTL = 2
# The lease keeper stops refreshing once the event loop has made no progress for this long: a leader whose
# loops are wedged must give way, one that is merely busy must not.
MAX_LOOP_STALL = 10.0
KEEPER_NICENESS = -10
ATTEMPT_TIMEOUT = 1.5  # a store request of the election is given up (and made again) after this long  # the keeper's scheduling priority, where the daemon may raise it (as root)

class KeeperProcess:
    """The lease keeper process (`shoal.manager.lease_keeper`), fed ticks by a thread of this daemon, so the
    lease lives as long as the daemon is alive and its loop progresses, however busy the process is."""

    def __init__(self, target: str, ca: str | None, cert: str | None, key: str | None,
                 progressing: Callable[[], bool]) -> None:
        self.command = [sys.executable, "-m", "shoal.manager.lease_keeper", "--target", target]
        for flag, value in (("--ca", ca), ("--cert", cert), ("--key", key)):
            if value:
                self.command += [flag, value]
        self._progressing = progressing
        self._proc: asyncio.subprocess.Process | None = None
        self._write_fd = -1
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ticking = threading.Event()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    async def start(self) -> None:
        read_fd, self._write_fd = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=read_fd, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        finally:
            os.close(read_fd)
        with contextlib.suppress(OSError):  # only as root: renewals then get the CPU first on a busy machine
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, KEEPER_NICENESS)
        self._reader = asyncio.create_task(self._read(self._proc), name="lease-keeper-reader")
        self._ticking.set()
        threading.Thread(target=self._tick, args=(self._write_fd,), name="lease-keeper-ticks", daemon=True).start()

    def _tick(self, fd: int) -> None:
        """From a thread, not the loop: a busy loop must not look like a dead daemon (the tick says whether the
        loop progresses; a frozen or killed daemon sends none)."""
        while self._ticking.is_set() and fd == self._write_fd:
            self._send({"tick": True, "ok": self._progressing()})
            time.sleep(lease_keeper.TICK_INTERVAL)

    def _send(self, message: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # a keeper that died: its reader reports the loss
            os.write(self._write_fd, (json.dumps(message) + "\n").encode())  # one short line: written whole

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    message = json.loads(line)
                    waiting = self._waiting.pop(int(message["lost"]), None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(str(message.get("why") or "lost"))
        finally:
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_result("the lease keeper exited")
            self._waiting.clear()

    async def keep(self, lease_id: int, ttl: float) -> asyncio.Future[str]:
        """Keep the lease alive; the future gets the reason once it can no longer be (cancel it to stop)."""
        if not self.running:
            await self.close()
            await self.start()
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[lease_id] = lost
        self._send({"keep": lease_id, "ttl": ttl})

        def release(_: asyncio.Future[str]) -> None:
            self._waiting.pop(lease_id, None)
            self._send({"stop": lease_id})

        lost.add_done_callback(release)
        return lost

    async def close(self) -> None:
        """Stop the keeper; it revokes the leases it still keeps on its way out."""
        self._ticking.clear()
        if self._write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = -1
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            try:
                await within(proc.wait(), 3)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None


class LeaderElection:
    def __init__(self, client: aetcd.Client, node_id: str, keeper: KeeperProcess, ttl: int = LEASE_TTL,
                 metrics: ManagerMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics or ManagerMetrics()
        self.last_leader: str | None = None  # the last leader seen, kept while there is none
        self.node_id = node_id
        self.ttl = ttl
        self.is_leader = False
        self.leader_id: str | None = None
        self.changed = asyncio.Event()
        self.keeper = keeper
        self.elections_won = 0
        self.leaderships_lost = 0

    async def current_leader(self) -> str | None:
        kv = await self.client.get(LEADER_KEY.encode())
        return kv.value.decode() if kv is not None else None

    async def run(self, on_elected: Callable[[], Awaitable[None]], on_deposed: Callable[[], Awaitable[None]]) -> None:
        """Campaign whenever the leader key is free; follow the leader while it is not; call the hooks on every
        change of this manager's leadership. Store requests are made in short attempts: cut off from the
        store's majority, a request would otherwise hang for etcd's whole timeout, and a manager coming back
        would learn the leader that much later."""
        t = self.client.transactions
        while True:
            lost: asyncio.Future[str] | None = None
            try:
                await self._wait_for_vacancy()
                lease = await within(self.client.lease(self.ttl), ATTEMPT_TIMEOUT)
                # Kept alive from the moment it exists: the campaign itself may wait on a busy loop.
                lost = await self.keeper.keep(lease.id, self.ttl)
                won, _ = await within(self.client.transaction(
                    compare=[t.create(LEADER_KEY.encode()) == 0],
                    success=[t.put(LEADER_KEY.encode(), self.node_id.encode(), lease=lease.id)],
                    failure=[],
                ), ATTEMPT_TIMEOUT)
                if won:
                    self._set(True, self.node_id)
                    self.elections_won += 1
                    log.info("this manager (%s) is now the leader", self.node_id)
                    try:
                        await on_elected()
                        why = await lost
                        log.warning("this manager (%s) lost the leadership: %s", self.node_id, why)
                    finally:
                        lost.cancel()  # stops the renewals, whatever ended the leadership
                        self._set(False, None)
                        self.leaderships_lost += 1
                        await on_deposed()
                        with contextlib.suppress(Exception):
                            await within(lease.revoke(), 1)
                else:
                    lost.cancel()
                    with contextlib.suppress(Exception):
                        await within(lease.revoke(), ATTEMPT_TIMEOUT)
            except asyncio.CancelledError:
                if lost is not None:
                    lost.cancel()
                raise
            except Exception as exc:
                if lost is not None:
                    lost.cancel()
                log.warning("leader election: %s", exc or type(exc).__name__)
                self._set(False, None)
                await asyncio.sleep(0.3)

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
        """Follow the leader key until it is gone (the leader's lease ended): watched from the revision it was
        read at, so no change can slip between the read and the watch, and no follower campaigns in vain."""
        kv = await within(self.client.get(LEADER_KEY.encode()), ATTEMPT_TIMEOUT)
        if kv is None:
            return
        self._set(False, kv.value.decode())
        watch = await self.client.watch(LEADER_KEY.encode(), start_revision=kv.mod_revision + 1)
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    return
                self._set(False, event.kv.value.decode())
        finally:
            await watch.cancel()

    def _set(self, is_leader: bool, leader_id: str | None) -> None:
        if leader_id is not None and leader_id != self.last_leader:
            if self.last_leader is not None:  # the first leader this manager sees is no change
                self.metrics.leader_changes.inc()
            self.last_leader = leader_id
        if (self.is_leader, self.leader_id) != (is_leader, leader_id):
            self.is_leader = is_leader
            self.leader_id = leader_id
            self.changed.set()
            self.changed = asyncio.Event()
