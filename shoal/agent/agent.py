"""The agent: this node's side of the session with the leader's dispatcher.

It keeps one WebSocket open to a manager (mutual TLS with the node certificate), sends heartbeats and task
status, receives assignments and hands them to the worker. The manager answers every heartbeat, so a manager
that went silent (cut off, frozen) is noticed within a few heartbeat periods, not when TCP gives up. When the
session drops or goes silent the agent reconnects — to the leader a follower names, or to the next manager it
knows — while the tasks keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import secrets
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from shoal import codec
from shoal.agent.executor.base import Executor
from shoal.agent.worker import Worker
from shoal.certs import csr_for_key, make_key_and_csr
from shoal.clock import Clock
from shoal.discovery.names import NameEntry
from shoal.discovery.node import NodeDiscovery
from shoal.mesh.mesh import RoutingMesh
from shoal.mesh.table import Listener
from shoal.metrics import NodeMetrics
from shoal.overlay.linux import OverlayDataPath
from shoal.protocol import ATTEMPT_HEADER, SESSION_PATH
from shoal.supervise import Supervisor
from shoal.timeouts import within
from shoal.types import Doc

log = logging.getLogger(__name__)

STATUS_BATCH_INTERVAL = 0.05
# A session whose manager says nothing for this many heartbeat periods (plus the manager's own reported loop
# lag, up to MAX_LAG_ALLOWANCE) is given up for another manager: the leader answers every heartbeat.
SILENCE_PERIODS = 3.0
MAX_LAG_ALLOWANCE = 10.0
SILENCE_CHECK_INTERVAL = 0.2
CONNECT_TIMEOUT = 1.0
HANDSHAKE_TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024 * 1024
# How often published ports this node could not listen on are tried again.
MESH_RETRY_INTERVAL = 5.0


class Agent:
    def __init__(self, node_id: str, managers: list[str], ssl_context: ssl.SSLContext, state_dir: Path,
                 executor: Executor, clock: Clock, description: Callable[[], Doc],
                 on_managers: Callable[[list[str]], None],
                 on_certificate: Callable[[Doc, bytes], Coroutine[Any, Any, None]] | None = None,
                 listen_port: int = 2377, mesh: RoutingMesh | None = None,
                 liveness: Callable[[], float] | None = None, loop_lag: Callable[[], float] | None = None,
                 on_manager_gone: Callable[[str], Coroutine[Any, Any, None]] | None = None,
                 on_trust: Callable[[str, bool], Coroutine[Any, Any, None]] | None = None,
                 discovery: NodeDiscovery | None = None, overlay: OverlayDataPath | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.node_id = node_id
        self.managers = list(managers)
        self.ssl_context = ssl_context
        self.executor = executor
        self.clock = clock
        self.description = description
        self.on_managers = on_managers
        self.on_certificate = on_certificate
        self.on_trust = on_trust
        self.listen_port = listen_port
        self._pending_key: bytes | None = None
        self._role_change: asyncio.Task[None] | None = None
        self.worker = Worker(state_dir, executor, self._report, clock, metrics=metrics)
        self.loops = Supervisor("agent")
        self.connected = asyncio.Event()
        self.current_manager: str | None = None
        self.heartbeat_period = 1.0
        self._status: dict[str, Doc] = {}
        self._status_ready = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._log_streams: dict[int, asyncio.Task[None]] = {}
        self._preferred: str | None = None
        self._suspect: str | None = None  # the manager that last went silent on us: tried last
        self._connect_timeouts: dict[str, float] = {}  # managers whose handshake ran out of time: longer now
        self._instance = secrets.token_hex(8)  # this agent's session attempts, in order (ATTEMPT_HEADER)
        self._attempts = itertools.count(1)
        # Liveness is timed on a clock that stops while this process's loop is stalled (shoal.loopmonitor).
        self._alive = liveness or clock.monotonic
        self._loop_lag = loop_lag or (lambda: 0.0)
        self._last_heard = 0.0
        self._manager_lag = 0.0
        # Told when a session that was open ends without the manager saying why (its daemon may be gone).
        self._on_manager_gone = on_manager_gone
        self._ended_by_manager = False
        self._checks: set[asyncio.Task[None]] = set()
        self.mesh = mesh
        self.discovery = discovery
        self.overlay = overlay
        self._mesh_errors: list[str] | None = None  # to send to the manager
        if mesh is not None:
            mesh.report_errors = self._report_mesh_errors

    async def start(self) -> None:
        if self.mesh is not None:
            await self.mesh.start()
        if self.discovery is not None:
            await self.discovery.start()
        await self.worker.start()
        self.loops.start("session", self._session_loop)
        if self.mesh is not None:
            self.loops.start("mesh-retry", self._mesh_retry_loop)
        if self.overlay is not None:
            self.loops.start("overlay", self.overlay.run)

    async def stop(self, kill_tasks: bool = False) -> None:
        """Stop the session and the worker. Without `kill_tasks` (a daemon restart) the manager is told the
        node is restarting, so it waits longer before moving its tasks, which keep running meanwhile."""
        ws = self._ws
        if not kill_tasks and ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await within(ws.send_str('{"type":"bye","restarting":true}'), 1)
        await self.loops.stop()
        for task in self._log_streams.values():
            task.cancel()
        await self.worker.stop(kill_tasks=kill_tasks)
        if self.mesh is not None:
            await self.mesh.stop(keep_rules=not kill_tasks)
        if self.overlay is not None:
            await self.overlay.close(remove=kill_tasks)
        if self.discovery is not None:
            self.discovery.stop()

    def _report(self, task_id: str, status: Doc) -> None:
        self._status[task_id] = status
        self._status_ready.set()

    def _report_mesh_errors(self, errors: list[str]) -> None:
        self._mesh_errors = list(errors)
        self._status_ready.set()

    async def _mesh_retry_loop(self) -> None:
        assert self.mesh is not None
        while True:
            await asyncio.sleep(MESH_RETRY_INTERVAL)
            try:
                await self.mesh.retry()
            except Exception:
                log.exception("routing mesh: retry failed")

    # ---- the session ------------------------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        """The managers to try: the leader a follower named first (even one not yet in our list), a manager
        that just went silent last."""
        order = [m for m in self.managers if m != self._suspect]
        if self._preferred and self._preferred != self._suspect:
            if self._preferred in order:
                order.remove(self._preferred)
            order.insert(0, self._preferred)
        if self._suspect:
            order.append(self._suspect)
        return order

    async def _session_loop(self) -> None:
        """Keep a session open: try the managers in turn, going straight to the leader a follower names."""
        backoff = 0.1
        while True:
            for addr in self._candidates():
                redirected_from = self._preferred
                try:
                    log.debug("opening a session with %s", addr)
                    await self._run_session(addr)
                    log.info("session with %s closed by the manager", addr)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.info("session with %s ended: %s", addr, str(exc) or type(exc).__name__)
                finally:
                    if self.connected.is_set() and not self._ended_by_manager and self._suspect != addr:
                        self._manager_gone(addr)
                    self.connected.clear()
                    self._ws = None
                if self._preferred and self._preferred != redirected_from:
                    backoff = 0.1
                    break  # a follower named the leader: start over with it first
            else:
                # Jittered, so a thousand agents whose leader died do not knock on the new one in step.
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                # Short: right after a leader change, followers know the new leader within a second or two.
                backoff = min(backoff * 2, 0.4)
                continue
            await asyncio.sleep(0.05)

    async def _run_session(self, addr: str) -> None:
        # aiohttp's connect timeout covers the TLS handshake too, which needs the manager's loop: short at first
        # (a cut-off manager is given up on quickly), but doubled for a manager each time it runs out, so a new
        # leader busy taking a thousand agents in is not given up on forever (seen in bench.scale: every agent
        # timed out against it, and was marked down).
        connect = self._connect_timeouts.get(addr, CONNECT_TIMEOUT)
        if addr == self._preferred and connect < HANDSHAKE_TIMEOUT:
            # The leader a follower just named gets the whole handshake time at once, once its port answers (a
            # new leader has a thousand agents to take in, and each attempt given up on is work for nothing;
            # a follower may still name a leader that is cut off, which the port check finds out in a second).
            await _port_answers(addr)
            connect = HANDSHAKE_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                ws = await within(http.ws_connect(
                    f"https://{addr}{SESSION_PATH}", ssl=self.ssl_context, max_msg_size=MAX_MESSAGE,
                    autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
                    headers={ATTEMPT_HEADER: f"{self._instance}:{next(self._attempts)}"}), HANDSHAKE_TIMEOUT)
            except TimeoutError:  # aiohttp's ConnectionTimeoutError is one
                self._connect_timeouts[addr] = min(connect * 2, HANDSHAKE_TIMEOUT)
                raise
            self._connect_timeouts.pop(addr, None)
            self._ws = ws
            self._last_heard = self._alive()
            self._manager_lag = 0.0
            self._ended_by_manager = False
            await ws.send_str(json.dumps({"type": "hello", "description": self.description()}))
            # What this node runs, at once (even nothing): the manager counts it ready only after hearing it.
            await self.worker.persist()
            current = self.worker.current_statuses()
            for task_id in current:
                self._status.pop(task_id, None)
            await ws.send_str(codec.dumps_text({"type": "status", "updates": [
                {"TaskID": task_id, "Status": status} for task_id, status in current.items()]}))
            parts = [asyncio.create_task(self._read(ws, addr), name="agent-read"),
                     asyncio.create_task(self._heartbeat_loop(ws), name="agent-heartbeat"),
                     asyncio.create_task(self._send_loop(ws), name="agent-send"),
                     asyncio.create_task(self._watch_silence(addr), name="agent-silence")]
            try:
                done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
                for part in done:
                    part.result()
            finally:
                for part in parts:
                    part.cancel()
                await asyncio.gather(*parts, return_exceptions=True)
                if not ws.closed:
                    _drop(ws)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, addr: str) -> None:
        async for msg in ws:
            self._last_heard = self._alive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            if await self._handle(codec.loads(msg.data), addr) is False:
                return

    def silence_allowed(self) -> float:
        """How long the manager may say nothing before this agent gives up on the session: a few heartbeat
        periods (it answers every heartbeat), plus the lag it last reported for its own loop."""
        return SILENCE_PERIODS * self.heartbeat_period + min(self._manager_lag, MAX_LAG_ALLOWANCE)

    async def _watch_silence(self, addr: str) -> None:
        """Return (ending the session) once the manager has been silent too long: a manager that is cut off or
        frozen keeps its TCP connection looking open for many seconds, and the agent must move on to the
        leader well before that. Silence is measured on the liveness clock, which stops while this process's
        own loop is stalled, so a busy agent does not blame its manager for its own lateness."""
        while True:
            await asyncio.sleep(SILENCE_CHECK_INTERVAL)
            silent = self._alive() - self._last_heard
            if silent > self.silence_allowed():
                log.warning("manager %s said nothing for %.1fs; trying another manager", addr, silent)
                self._suspect = addr
                if self._preferred == addr:
                    self._preferred = None
                ws = self._ws
                if ws is not None and not ws.closed:
                    # If it is only slow, it learns the node is not gone (a dead one hears nothing anyway).
                    with contextlib.suppress(Exception):
                        await within(ws.send_str('{"type":"bye","silent":true}'), 0.5)
                return
            if silent < self.heartbeat_period and self._suspect == addr:
                self._suspect = None

    async def _handle(self, message: Doc, addr: str) -> bool:
        kind = message.get("type")
        if kind == "welcome":
            self.heartbeat_period = float(message.get("heartbeat_period") or 1.0)
            self.current_manager = addr
            self._set_managers(message.get("managers") or [])
            if self.mesh is not None:
                self.mesh.resend_errors()
            self.connected.set()
            log.info("session open with manager %s", addr)
        elif kind == "assignments":
            # The secrets and configs its new tasks use come first; those no task needs any more go last.
            files = getattr(self.executor, "task_files", None)
            if files is not None:
                files.receive(message)
            tasks = message.get("tasks") or []
            await self.worker.assign(tasks, full=bool(message.get("full")))
            remove_orphans = getattr(self.executor, "remove_orphans", None)
            if message.get("full") and remove_orphans is not None:
                # Containers of tasks this node no longer owns (their record lost with an agent crash).
                keep = {t["ID"] for t in tasks} | self.worker.known_task_ids()
                with contextlib.suppress(Exception):
                    await remove_orphans(self.node_id, keep)
            for task_id in message.get("remove") or []:
                await self.worker.forget(task_id)
            if self.discovery is not None:
                self.discovery.track(tasks, full=bool(message.get("full")), removed=message.get("remove") or [])
            if files is not None:
                files.forget(message)
        elif kind == "role" and self.on_certificate is not None:
            # Promoted or demoted: ask for a certificate with the new role, on a fresh key.
            await self.request_certificate()
        elif kind == "certificate" and self.on_certificate is not None and self._pending_key is not None:
            key, self._pending_key = self._pending_key, None
            # The daemon changes role outside the session (it may stop the manager this session talks to).
            self._role_change = asyncio.create_task(self.on_certificate(message, key), name="role-change")
        elif kind == "trust" and self.on_trust is not None:
            # The roots to trust (a root rotation adds the new one, then drops the old), and whether to renew.
            await self.on_trust(str(message.get("bundle") or ""), bool(message.get("renew")))
        elif kind == "endpoints" and self.mesh is not None:
            try:
                table = [Listener.from_wire(doc) for doc in message.get("listeners") or []]
                await self.mesh.update(table, self.worker.known_task_ids())
            except Exception as exc:
                # The session and the tasks must go on; the manager hears of it in the node's status.
                log.exception("routing mesh: could not apply the endpoint table")
                self._report_mesh_errors([f"could not apply the endpoint table: {exc}"])
        elif kind == "names":
            entries = [NameEntry.from_wire(entry) for entry in message.get("entries") or []]
            if self.discovery is not None:
                self.discovery.update(entries)
            if self.overlay is not None:
                self.overlay.update(entries)
        elif kind == "heartbeat":
            self._manager_lag = float(message.get("lag") or 0.0)
            self.heartbeat_period = float(message.get("period") or self.heartbeat_period)
        elif kind == "managers":
            self._set_managers(message.get("managers") or [])
        elif kind == "redirect":
            # This manager is not the leader; it names the leader when it knows it.
            log.info("manager %s is not the leader; it names %s", addr, message.get("leader") or "none yet")
            self._preferred = message.get("leader") or self._preferred
            self._ended_by_manager = True
            return True  # the manager closes the session; its close frame ends the loop
        elif kind == "rejected":
            self._ended_by_manager = True
            log.error("the manager refused this node: %s", message.get("message"))
            await asyncio.sleep(2)
            return False
        elif kind == "logs":
            req = int(message["req"])
            self._log_streams[req] = asyncio.create_task(self._stream_logs(req, message), name=f"logs:{req}")
        elif kind == "logs_cancel":
            stream = self._log_streams.pop(int(message["req"]), None)
            if stream is not None:
                stream.cancel()
        return True

    def _manager_gone(self, addr: str) -> None:
        """Let the daemon check, beside the reconnecting, whether the manager's daemon died."""
        if self._on_manager_gone is None:
            return
        check = asyncio.create_task(self._on_manager_gone(addr), name=f"manager-gone:{addr}")
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def request_certificate(self, key_pem: bytes | None = None) -> bool:
        """Ask the manager for a certificate for the node's current role: on a fresh key after a role change, on
        the node's own key (`key_pem`) to renew it before it expires. False when no session is open."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        if key_pem is None:
            key_pem, csr_pem = make_key_and_csr()
        else:
            csr_pem = csr_for_key(key_pem)
        self._pending_key = key_pem
        await ws.send_str(json.dumps({"type": "renew", "csr": csr_pem.decode(), "listen_port": self.listen_port}))
        return True

    def use_certificate(self, ssl_context: ssl.SSLContext) -> None:
        """A renewed certificate: the next session presents it (the current one goes on)."""
        self.ssl_context = ssl_context

    async def reconnect(self, ssl_context: ssl.SSLContext, managers: list[str]) -> None:
        """Use a new certificate (and manager list): end the current session so the next one presents it."""
        self.ssl_context = ssl_context
        self.managers = list(managers)
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    def _set_managers(self, managers: list[str]) -> None:
        if managers and sorted(managers) != sorted(self.managers):
            self.managers = list(managers)
            self.on_managers(self.managers)

    async def _heartbeat_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A heartbeat every period, from a task of its own: never behind a status batch waiting for the task
        record to reach the disk (bench.scale saw heartbeats 15 s apart that way, and the nodes marked down)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            # The loop lag lets the leader allow a busy node more time before declaring it down.
            lag = round(self._loop_lag(), 3)
            await ws.send_str(f'{{"type":"heartbeat","lag":{lag}}}')
            await asyncio.sleep(max(0.0, started + self.heartbeat_period - loop.time()))

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Task status batched every few tens of milliseconds, and mesh errors."""
        while True:
            await self._status_ready.wait()
            if self._mesh_errors is not None:
                errors, self._mesh_errors = self._mesh_errors, None
                await ws.send_str(json.dumps({"type": "mesh", "errors": errors}))
            if self._status:
                await asyncio.sleep(STATUS_BATCH_INTERVAL)
                updates, self._status = self._status, {}
                self._status_ready.clear()
                # The manager must never hear of a state this node would forget after a crash.
                await self.worker.persist()
                await ws.send_str(codec.dumps_text({"type": "status", "updates": [
                    {"TaskID": task_id, "Status": status} for task_id, status in updates.items()]}))
            else:
                self._status_ready.clear()

    async def _stream_logs(self, req: int, message: Doc) -> None:
        ws = self._ws
        try:
            tail = int(message.get("tail", -1))
            follow = bool(message.get("follow"))
            streams = [self._one_task_logs(ws, req, task_id, None if tail < 0 else tail, follow)
                       for task_id in message.get("tasks") or []]
            await asyncio.gather(*streams)
        finally:
            self._log_streams.pop(req, None)
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.send_str(json.dumps({"type": "log_end", "req": req}))

    async def _one_task_logs(self, ws: aiohttp.ClientWebSocketResponse | None, req: int, task_id: str,
                             tail: int | None, follow: bool) -> None:
        if ws is None:
            return
        async for stream, ts, line in self.worker.logs(task_id, tail, follow):
            await ws.send_str(json.dumps({"type": "log", "req": req, "task": task_id,
                                          "stream": 1 if stream == "stdout" else 2, "ts": ts,
                                          "line": line.decode(errors="replace")}))


def _drop(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close the connection at once: a close handshake with a silent manager would wait out its timeout.
    (aiohttp does the same when its own heartbeat gets no pong.)"""
    response = getattr(ws, "_response", None)
    if response is not None:
        response.close()


async def _port_answers(addr: str) -> None:
    """A bare TCP connection to "ip:port", closed at once: the kernel answers it however busy the manager is.
    Raises TimeoutError or OSError when nothing answers within CONNECT_TIMEOUT."""
    host, _, port = addr.rpartition(":")
    _, writer = await within(asyncio.open_connection(host.strip("[]"), int(port)), CONNECT_TIMEOUT)
    writer.close()
