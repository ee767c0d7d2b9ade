"""The userspace data path of the routing mesh: an asyncio TCP and UDP proxy per published port.

Every node listens on the published port and forwards each new connection to one of the service's running
tasks, on any node. Design choices:

- Least connections, ties round robin: a task stuck on slow requests gets fewer new ones, while sequential
  short connections still alternate evenly across tasks.
- Retry: the endpoint table lags reality by a moment (a task may just have died), so a failed connect moves on
  to the next task, then backs off and keeps trying (picking up tasks that arrive meanwhile) until a deadline.
  The client sees a close only when no task at all answered in time, never a reset because one task was down.
  What the client sent meanwhile is held and forwarded once a backend connection is up.
- Drain: `set_backends` only changes where new connections go; open connections to a removed task keep
  working until one side closes, so a rolling update does not cut requests in flight.
- Bytes are relayed by Protocols (no streams: this is the hot path), reading from one side pauses while the
  other side's write buffer is full, and a half-close (EOF) is passed on so request/reply-after-EOF works.
- UDP: one session per client address with its own connected socket to the chosen task; replies go back from
  the published port; a session idle for `idle_timeout` seconds is closed.

Callbacks never raise: an error is logged and ends only the connection (or session) it belongs to.
Only plain asyncio APIs are used, so the proxy runs on the default loop and on uvloop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from shoal.mesh.stats import PortStats
from shoal.mesh.table import Backend

log = logging.getLogger(__name__)

CONNECT_ATTEMPT_TIMEOUT = 1.0  # seconds one backend gets to accept before the next is tried
RETRY_BACKOFF = 0.05  # seconds between rounds once every backend failed (or there is none)
PENDING_LIMIT = 256 * 1024  # client bytes held before the backend is connected; reading pauses above this
UDP_IDLE_TIMEOUT = 30.0
UDP_PENDING_DATAGRAMS = 64  # datagrams held per session while it picks a backend; later ones are dropped
UDP_MAX_SESSIONS = 65536


class Balancer:
    """Which backend gets the next connection: fewest open connections, ties broken round robin.

    Counts are kept per task id and survive the task's removal, so draining connections stay visible.
    """

    def __init__(self, start: int = 0) -> None:
        self.backends: tuple[Backend, ...] = ()
        self.open: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self._next = start  # where the round-robin scan for a tie starts

    def pick(self, exclude: set[Backend] | frozenset[Backend] = frozenset()) -> Backend | None:
        count = len(self.backends)
        best: Backend | None = None
        best_index = 0
        for offset in range(count):
            index = (self._next + offset) % count
            candidate = self.backends[index]
            if candidate in exclude:
                continue
            if best is None or self.open.get(candidate.task_id, 0) < self.open.get(best.task_id, 0):
                best, best_index = candidate, index
        if best is not None:
            self._next = best_index + 1
        return best

    def acquire(self, backend: Backend) -> None:
        self.open[backend.task_id] = self.open.get(backend.task_id, 0) + 1

    def release(self, backend: Backend) -> None:
        left = self.open.get(backend.task_id, 0) - 1
        if left > 0:
            self.open[backend.task_id] = left
        else:
            self.open.pop(backend.task_id, None)

    def mark_served(self, backend: Backend) -> None:
        self.served[backend.task_id] = self.served.get(backend.task_id, 0) + 1


def _balancer_start(first_pick: int | None) -> int:
    # Every node, and every process of a node, has its own balancer: a random start (unless one is given) keeps
    # them from all sending their first connections to the same task.
    return random.randrange(1 << 16) if first_pick is None else first_pick


async def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to host:port succeeds within `timeout` seconds (the connection is closed at once)."""
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, host, port)
    except (OSError, TimeoutError):
        return False
    transport.close()
    return True


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pause_reading(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


def _resume_reading(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


# ---------------------------------------------------------------------------------------------------- TCP


class _TcpConnection:
    """One client connection and, once connected, its backend connection, relayed both ways."""

    # Reasons the client side's reading is paused; it resumes only when none is left.
    _PENDING_FULL = 1
    _BACKEND_WRITE_FULL = 2

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.backend_transport: asyncio.Transport | None = None
        self.backend: Backend | None = None  # counted in the balancer's open connections while set
        self.pending = bytearray()
        self.client_eof = False
        self.backend_eof = False
        self.client_read_blocks = 0
        self.backend_read_blocked = False
        self.closed = False
        self.connect_task: asyncio.Task[None] | None = None

    # ----- client side

    def client_connected(self, transport: asyncio.Transport) -> None:
        self.client = transport
        _set_nodelay(transport)
        self.proxy._connections.add(self)
        self.proxy.stats.connections += 1
        self.connect_task = asyncio.get_running_loop().create_task(self.proxy._connect(self))

    def client_data(self, data: bytes) -> None:
        backend = self.backend_transport
        if backend is not None:
            backend.write(data)
            return
        self.pending += data
        if len(self.pending) > PENDING_LIMIT:
            self._block_client(self._PENDING_FULL)

    def client_eof_received(self) -> None:
        self.client_eof = True
        if self.backend_transport is not None:
            self._shut_write(self.backend_transport)
        self._close_if_both_shut()

    # ----- backend side

    def backend_connected(self, transport: asyncio.Transport) -> None:
        """The connect loop found a backend: send what the client already sent, then relay."""
        self.backend_transport = transport
        _set_nodelay(transport)
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            transport.write(data)
        self._unblock_client(self._PENDING_FULL)
        if self.client_eof:
            self._shut_write(transport)

    def backend_eof_received(self) -> None:
        self.backend_eof = True
        if self.client is not None:
            self._shut_write(self.client)
        self._close_if_both_shut()

    # ----- flow control: a full write buffer on one side pauses reading on the other

    def client_write_full(self, full: bool) -> None:
        self.backend_read_blocked = full
        if full:
            _pause_reading(self.backend_transport)
        else:
            _resume_reading(self.backend_transport)

    def backend_write_full(self, full: bool) -> None:
        if full:
            self._block_client(self._BACKEND_WRITE_FULL)
        else:
            self._unblock_client(self._BACKEND_WRITE_FULL)

    def _block_client(self, reason: int) -> None:
        if not self.client_read_blocks:
            _pause_reading(self.client)
        self.client_read_blocks |= reason

    def _unblock_client(self, reason: int) -> None:
        if not self.client_read_blocks & reason:
            return
        self.client_read_blocks &= ~reason
        if not self.client_read_blocks:
            _resume_reading(self.client)

    def paused_directions(self) -> int:
        return int(self.backend_read_blocked) + int(bool(self.client_read_blocks & self._BACKEND_WRITE_FULL))

    def buffered_bytes(self) -> int:
        total = len(self.pending)
        for transport in (self.client, self.backend_transport):
            if transport is not None and not transport.is_closing():
                total += transport.get_write_buffer_size()
        return total

    # ----- ending

    def _shut_write(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            self.close()
            return
        try:
            transport.write_eof()
        except OSError as error:  # the peer is already gone (reset)
            log.debug("mesh %s: passing on EOF: %r", self.proxy.name, error)
            self.close(abort=True)

    def _close_if_both_shut(self) -> None:
        if self.client_eof and self.backend_eof:
            self.close()

    def close(self, abort: bool = False) -> None:
        """Ends both connections; with `abort`, at once (dropping unsent data), else after flushing."""
        if not self.closed:
            self.closed = True
            self.proxy._connections.discard(self)
            if self.connect_task is not None and not self.connect_task.done():
                self.connect_task.cancel()
            if self.backend is not None:
                self.proxy._balancer.release(self.backend)
                self.backend = None
        for transport in (self.client, self.backend_transport):
            if transport is None:
                continue
            if abort:
                transport.abort()
            elif not transport.is_closing():
                transport.close()

    def fail(self, what: str) -> None:
        log.exception("mesh %s: error %s; closing that connection", self.proxy.name, what)
        with contextlib.suppress(Exception):
            self.close(abort=True)


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: TcpProxy) -> None:
        self.connection = _TcpConnection(proxy)
        self.stats = proxy.stats

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        transport = cast(asyncio.Transport, base)
        try:
            self.connection.client_connected(transport)
        except Exception:
            self.connection.client = transport
            self.connection.fail("accepting a client")

    def data_received(self, data: bytes) -> None:
        try:
            # The hot path: straight to the backend once it is connected.
            self.stats.bytes_in += len(data)
            backend = self.connection.backend_transport
            if backend is not None:
                backend.write(data)
            else:
                self.connection.client_data(data)
        except Exception:
            self.connection.fail("relaying client data")

    def eof_received(self) -> bool:
        try:
            self.connection.client_eof_received()
        except Exception:
            self.connection.fail("passing on the client's EOF")
        return True  # keep the transport open: the reply may still come

    def pause_writing(self) -> None:
        try:
            self.connection.client_write_full(True)
        except Exception:
            self.connection.fail("pausing the backend")

    def resume_writing(self) -> None:
        try:
            self.connection.client_write_full(False)
        except Exception:
            self.connection.fail("resuming the backend")

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.connection.close()
        except Exception:
            log.exception("mesh %s: error closing a connection", self.connection.proxy.name)


class _BackendSide(asyncio.Protocol):
    def __init__(self, connection: _TcpConnection) -> None:
        self.connection = connection
        self.stats = connection.proxy.stats
        self.attached = False  # set once the connect loop hands this connection the relay
        self.lost_early = False  # the backend hung up before the connect loop got to attach it

    def data_received(self, data: bytes) -> None:
        try:
            self.stats.bytes_out += len(data)
            client = self.connection.client  # the hot path
            if client is not None:
                client.write(data)
        except Exception:
            self.connection.fail("relaying backend data")

    def eof_received(self) -> bool:
        try:
            self.connection.backend_eof_received()
        except Exception:
            self.connection.fail("passing on the backend's EOF")
        return True

    def pause_writing(self) -> None:
        try:
            self.connection.backend_write_full(True)
        except Exception:
            self.connection.fail("pausing the client")

    def resume_writing(self) -> None:
        try:
            self.connection.backend_write_full(False)
        except Exception:
            self.connection.fail("resuming the client")

    def connection_lost(self, exc: Exception | None) -> None:
        # Only once relaying started; a connect attempt that is abandoned is not ours to close.
        if not self.attached:
            self.lost_early = True
            return
        try:
            self.connection.close()
        except Exception:
            log.exception("mesh %s: error closing a connection", self.connection.proxy.name)


class TcpProxy:
    """Listens on host:port and relays every connection to one of the backends."""

    def __init__(self, host: str, port: int, name: str, connect_deadline: float = 3.0,
                 shared: bool = False, first_pick: int | None = None, stats: PortStats | None = None) -> None:
        self.host = host
        self.stats = stats if stats is not None else PortStats()  # kept by the caller across restarts
        self.shared = shared  # SO_REUSEPORT: worker processes listen on the same port, the kernel spreads
        self.port = port  # the bound port once started (useful when 0 asked for an ephemeral one)
        self.name = name
        self.connect_deadline = connect_deadline
        self._balancer = Balancer(start=_balancer_start(first_pick))
        self._connections: set[_TcpConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Binds host:port (SO_REUSEADDR); an OSError such as EADDRINUSE propagates."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(self), self.host, self.port,
                                                reuse_address=True, reuse_port=self.shared or None, backlog=1024)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("mesh %s: listening on %s:%d/tcp", self.name, self.host, self.port)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Where new connections go from now on; open connections to removed backends are left to drain."""
        self._balancer.backends = tuple(backends)

    async def stop(self, drain: float = 0.0) -> None:
        """Closes the listener, gives open connections up to `drain` seconds to finish, then closes the rest."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        connections = list(self._connections)
        for connection in connections:
            connection.close(abort=True)
        tasks = [c.connect_task for c in connections if c.connect_task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def open_connections(self) -> dict[str, int]:
        """task_id -> client connections open now (including ones still connecting to it)."""
        return dict(self._balancer.open)

    def open_count(self) -> int:
        """Client connections open now, connected to a task or not yet."""
        return len(self._connections)

    @property
    def served(self) -> dict[str, int]:
        """task_id -> connections ever forwarded to it."""
        return dict(self._balancer.served)

    def paused_directions(self) -> int:
        """How many connection directions are paused now because the receiving side's write buffer is full."""
        return sum(c.paused_directions() for c in self._connections)

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds in memory now (write buffers and data waiting for a backend)."""
        return sum(c.buffered_bytes() for c in self._connections)

    async def _connect(self, connection: _TcpConnection) -> None:
        """Connects the client to a backend, moving on past failures until the deadline; then closes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_deadline
        failed: set[Backend] = set()  # this round's failures; cleared after each full round
        while not connection.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            backend = self._balancer.pick(exclude=failed)
            if backend is None:
                await asyncio.sleep(min(RETRY_BACKOFF, remaining))
                failed.clear()
                continue
            if await self._try_backend(connection, backend, min(CONNECT_ATTEMPT_TIMEOUT, remaining)):
                return
            failed.add(backend)
        if not connection.closed:
            log.warning("mesh %s: no backend accepted a connection within %.1fs; closing the client",
                        self.name, self.connect_deadline)
            self.stats.dropped += 1
            connection.close()

    async def _try_backend(self, connection: _TcpConnection, backend: Backend, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        self._balancer.acquire(backend)
        transport: asyncio.Transport | None = None
        protocol = _BackendSide(connection)
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(lambda: protocol, backend.host, backend.port)
        except asyncio.CancelledError:
            self._balancer.release(backend)
            if transport is not None:
                transport.abort()
            raise
        except (OSError, TimeoutError) as error:
            self._balancer.release(backend)
            self.stats.failed_connects += 1
            log.debug("mesh %s: backend %s at %s:%s failed: %r", self.name, backend.task_id, backend.host,
                      backend.port, error)
            return False
        except Exception:
            self._balancer.release(backend)
            self.stats.failed_connects += 1
            log.exception("mesh %s: connecting to backend %s failed", self.name, backend.task_id)
            return False
        assert transport is not None
        if connection.closed:  # the client left while we were connecting
            self._balancer.release(backend)
            transport.abort()
            return True
        connection.backend = backend
        self._balancer.mark_served(backend)
        protocol.attached = True
        if protocol.lost_early:  # accepted, then hung up at once: pass the close on
            connection.close()
            return True
        try:
            connection.backend_connected(transport)
        except Exception:
            connection.fail("starting to relay")
        return True


# ---------------------------------------------------------------------------------------------------- UDP


class _UdpSession(asyncio.DatagramProtocol):
    """One client address's flow: its own UDP socket to its backend, closed after idling.

    The socket is not connected: a task listening on all addresses answers from whichever address the kernel
    picks (127.0.0.1 for a reply to loopback, not the node address we sent to), and a connected socket would
    drop that reply. Only the backend knows the socket's port, so whatever arrives on it is the reply."""

    def __init__(self, proxy: UdpProxy, client_address: Any) -> None:
        self.proxy = proxy
        self.client_address = client_address
        self.backend: Backend | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last_active = asyncio.get_running_loop().time()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.open_task: asyncio.Task[None] | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        if self.transport is not None and self.backend is not None:
            self.transport.sendto(data, (self.backend.host, self.backend.port))
        elif len(self.pending) < UDP_PENDING_DATAGRAMS:
            self.pending.append(data)

    def connected(self, backend: Backend, transport: asyncio.DatagramTransport) -> None:
        self.backend, self.transport = backend, transport
        for data in self.pending:
            transport.sendto(data, (backend.host, backend.port))
        self.pending.clear()
        self._arm_idle_timer(self.proxy.idle_timeout)

    def _arm_idle_timer(self, delay: float) -> None:
        self.idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        try:
            idle_for = asyncio.get_running_loop().time() - self.last_active
            if idle_for >= self.proxy.idle_timeout:
                log.debug("mesh %s: closing UDP session of %s (idle)", self.proxy.name, self.client_address)
                self.close()
            else:
                self._arm_idle_timer(self.proxy.idle_timeout - idle_for)
        except Exception:
            log.exception("mesh %s: error checking a UDP session", self.proxy.name)
            self.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if self.backend is None or addr[1] != self.backend.port:
                return  # not from the task: nobody else may answer for it
            self.last_active = asyncio.get_running_loop().time()
            self.proxy._reply(data, self.client_address)
        except Exception:
            log.exception("mesh %s: error relaying a UDP reply", self.proxy.name)

    def error_received(self, exc: Exception) -> None:
        # The backend's port is closed (ICMP): end the session so the client's next datagram picks again.
        log.debug("mesh %s: UDP session of %s: %r", self.proxy.name, self.client_address, exc)
        if isinstance(exc, ConnectionRefusedError):
            self.proxy.stats.failed_connects += 1
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proxy._sessions.get(self.client_address) is self:
            del self.proxy._sessions[self.client_address]
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.open_task is not None and not self.open_task.done():
            self.open_task.cancel()
        if self.backend is not None:
            self.proxy._balancer.release(self.backend)
        if self.transport is not None:
            self.transport.close()


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.proxy._from_client(data, addr)
        except Exception:
            log.exception("mesh %s: error handling a UDP datagram from %s", self.proxy.name, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("mesh %s: UDP listener: %r", self.proxy.name, exc)


class UdpProxy:
    """Listens on a UDP host:port and relays each client address's datagrams to one backend, both ways."""

    def __init__(self, host: str, port: int, name: str, connect_deadline: float = 3.0,
                 idle_timeout: float = UDP_IDLE_TIMEOUT, shared: bool = False,
                 first_pick: int | None = None, stats: PortStats | None = None) -> None:
        self.host = host
        self.stats = stats if stats is not None else PortStats()  # kept by the caller across restarts
        self.shared = shared  # SO_REUSEPORT: a client's datagrams hash to one worker process, always the same
        self.port = port  # the bound port once started
        self.name = name
        self.connect_deadline = connect_deadline  # how long a new session waits for a backend to appear
        self.idle_timeout = idle_timeout
        self._balancer = Balancer(start=_balancer_start(first_pick))
        self._sessions: dict[Any, _UdpSession] = {}
        self._listener: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Binds a UDP socket on host:port; an OSError such as EADDRINUSE propagates.

        No SO_REUSEADDR here: for UDP on Linux it would let two proxies share the port silently.
        """
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpListener(self),
                                                           local_addr=(self.host, self.port),
                                                           reuse_port=self.shared or None)
        self._listener = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        log.info("mesh %s: listening on %s:%d/udp", self.name, self.host, self.port)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Where sessions go from now on. A session whose task left is closed: UDP has no connection to
        finish, and a client that keeps sending from one port would otherwise keep a dead task forever."""
        self._balancer.backends = tuple(backends)
        keep = set(backends)
        for session in list(self._sessions.values()):
            if session.backend is not None and session.backend not in keep:
                session.close()

    async def stop(self, drain: float = 0.0) -> None:
        """Closes the listener and every session (UDP has nothing to drain)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        tasks = [s.open_task for s in sessions if s.open_task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def open_connections(self) -> dict[str, int]:
        """task_id -> open sessions now."""
        return dict(self._balancer.open)

    def open_count(self) -> int:
        """Sessions open now, with a task or still waiting for one."""
        return len(self._sessions)

    @property
    def served(self) -> dict[str, int]:
        """task_id -> sessions ever opened to it."""
        return dict(self._balancer.served)

    def _from_client(self, data: bytes, client_address: Any) -> None:
        session = self._sessions.get(client_address)
        if session is None:
            if self._listener is None or len(self._sessions) >= UDP_MAX_SESSIONS:
                return
            session = _UdpSession(self, client_address)
            self._sessions[client_address] = session
            self.stats.connections += 1
            session.open_task = asyncio.get_running_loop().create_task(self._open_session(session))
        self.stats.bytes_in += len(data)
        session.send(data)

    def _reply(self, data: bytes, client_address: Any) -> None:
        if self._listener is not None and not self._listener.is_closing():
            self.stats.bytes_out += len(data)
            self._listener.sendto(data, client_address)

    async def _open_session(self, session: _UdpSession) -> None:
        """Gives the session a connected socket to a backend, waiting up to the deadline for one to exist."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_deadline
        failed: set[Backend] = set()
        while not session.closed and loop.time() < deadline:
            backend = self._balancer.pick(exclude=failed)
            if backend is None:
                await asyncio.sleep(min(RETRY_BACKOFF, max(0.0, deadline - loop.time())))
                failed.clear()
                continue
            factory: Callable[[], asyncio.DatagramProtocol] = lambda: session  # noqa: E731
            try:
                transport, _ = await loop.create_datagram_endpoint(factory, local_addr=("0.0.0.0", 0))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("mesh %s: UDP backend %s failed: %r", self.name, backend.task_id, error)
                self.stats.failed_connects += 1
                failed.add(backend)
                continue
            if session.closed:
                transport.close()
                return
            self._balancer.acquire(backend)
            self._balancer.mark_served(backend)
            session.connected(backend, transport)
            return
        if not session.closed:
            log.warning("mesh %s: no UDP backend for %s within %.1fs", self.name, session.client_address,
                        self.connect_deadline)
            self.stats.dropped += 1
            session.close()
