"""Published ports of a process task that runs in a namespace of its own (it is on swarm networks): the node port
the routing mesh connects to is served on the host and each connection is carried to the task's target port
inside its namespace, as Docker's proxy carries a published port into a container.

The host port opens only once the task accepts connections inside its namespace, so the agent's check that a
task listens (before the mesh sends it traffic) still means what it says. Sockets inside the namespace come
from one thread that stays there (`NamespaceSockets`): no thread of a pool ever changes namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import socket
import threading

from shoal.overlay.netns import enter_namespace, settle_socket

log = logging.getLogger(__name__)

LISTEN_POLL_SECONDS = 0.05
CONNECT_TIMEOUT_SECONDS = 5.0
COPY_CHUNK = 65536
RETRY_SECONDS = 2.0


class NamespaceSockets:
    """Makes TCP sockets inside one network namespace, on a thread that entered it once."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._requests: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Future[socket.socket]] | None] = (
            queue.Queue())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="netns-sockets", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            enter_namespace(self.namespace)
        except OSError as exc:
            failure: OSError | None = exc
        else:
            failure = None
        while (request := self._requests.get()) is not None:
            loop, future = request
            try:
                if failure is not None:
                    raise failure
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
            except OSError as exc:
                loop.call_soon_threadsafe(settle_socket, future, None, exc)
            else:
                loop.call_soon_threadsafe(settle_socket, future, sock, None)
        # Closed: whoever still waits for a socket gets an error rather than waiting for ever.
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                loop, future = request
                loop.call_soon_threadsafe(settle_socket, future, None, OSError("the task's namespace is closed"))

    async def connect(self, port: int) -> socket.socket:
        """A socket connected to 127.0.0.1:`port` inside the namespace."""
        if self._closed:
            raise OSError("the task's namespace is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[socket.socket] = loop.create_future()
        self._requests.put((loop, future))
        sock = await future
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), CONNECT_TIMEOUT_SECONDS)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._closed = True
        self._requests.put(None)


class PortForwarder:
    """Host ports (every address) → the same task's target ports inside its namespace (TCP)."""

    def __init__(self, namespace: str, ports: dict[int, int]) -> None:
        self.ports = ports  # target port -> host port
        self._sockets = NamespaceSockets(namespace)
        self._servers: list[asyncio.Server] = []
        self._opening: asyncio.Task[None] | None = None
        self._copies: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._opening = asyncio.create_task(self._open(), name="port-forwarder")

    async def _open(self) -> None:
        for target, host_port in self.ports.items():
            while True:  # until the task listens inside (its agent's port check waits for the host port)
                try:
                    probe = await self._sockets.connect(target)
                    probe.close()
                    break
                except (OSError, TimeoutError):
                    await asyncio.sleep(LISTEN_POLL_SECONDS)
            while True:
                try:
                    server = await asyncio.start_server(functools.partial(self._serve, target=target), "0.0.0.0",
                                                        host_port, reuse_address=True)
                    break
                except OSError as exc:  # e.g. taken meanwhile: the task shows as not listening, and we say why
                    log.warning("port %d of the task cannot be served on node port %d: %s; retrying", target,
                                host_port, exc)
                    await asyncio.sleep(RETRY_SECONDS)
            self._servers.append(server)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                     target: int) -> None:
        try:
            sock = await self._sockets.connect(target)
        except (OSError, TimeoutError) as exc:
            log.debug("forwarding to port %d inside the task failed: %s", target, exc)
            client_writer.close()
            return
        task_reader, task_writer = await asyncio.open_connection(sock=sock)
        copies = [asyncio.create_task(_copy(client_reader, task_writer)),
                  asyncio.create_task(_copy(task_reader, client_writer))]
        self._copies.update(copies)
        try:
            await asyncio.gather(*copies)
        finally:
            self._copies.difference_update(copies)
            for writer in (client_writer, task_writer):
                writer.close()

    def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        for server in self._servers:
            server.close()
        for copy in list(self._copies):
            copy.cancel()
        self._sockets.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

