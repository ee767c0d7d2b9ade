"""The routing mesh's userspace proxy, with real sockets on 127.0.0.1 and ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from shoal.mesh.table import Backend
from shoal.mesh.userspace import Balancer, TcpProxy, UdpProxy, accepts_connections
from tests.unit.waiting import wait_until

LOCAL = "127.0.0.1"
DEADLINE = 10.0


class LineServer:
    """A TCP backend that answers every line with its name and the line; counts its connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = 0
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def backend(self) -> Backend:
        return Backend(self.name, LOCAL, self.port)

    async def start(self) -> LineServer:
        self._server = await asyncio.start_server(self._serve, LOCAL, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()


class Client:
    """A client connection through the proxy, speaking lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        return cls(reader, writer)

    async def ask(self, line: str) -> str:
        self.writer.write(line.encode() + b"\n")
        async with asyncio.timeout(DEADLINE):
            reply = await self.reader.readline()
        return reply.decode().rstrip("\n")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def ask_once(port: int, line: str = "hi") -> str:
    client = await Client.connect(port)
    try:
        return await client.ask(line)
    finally:
        await client.close()


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Callable[[], Awaitable[Any]]]]:
    """Stop functions to await after the test, last registered first."""
    stops: list[Callable[[], Awaitable[Any]]] = []
    yield stops
    for stop in reversed(stops):
        await stop()


async def line_servers(cleanup: list[Callable[[], Awaitable[Any]]], *names: str) -> list[LineServer]:
    servers = [await LineServer(name).start() for name in names]
    cleanup.extend(server.stop for server in servers)
    return servers


async def tcp_backend(cleanup: list[Callable[[], Awaitable[Any]]], name: str,
                      handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Backend:
    """A TCP backend serving each connection with `handler`, stopped after the test."""
    server = await asyncio.start_server(handler, LOCAL, 0)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    cleanup.append(stop)
    return Backend(name, LOCAL, server.sockets[0].getsockname()[1])


async def tcp_proxy(cleanup: list[Callable[[], Awaitable[Any]]], backends: list[Backend],
                    connect_deadline: float = 3.0) -> TcpProxy:
    proxy = TcpProxy(LOCAL, 0, "web", connect_deadline=connect_deadline, first_pick=0)
    await proxy.start()
    cleanup.append(proxy.stop)
    proxy.set_backends(backends)
    return proxy


@contextlib.contextmanager
def refused_port() -> Any:
    """A port that refuses connections: bound, never listening, held for the test."""
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def silent_port() -> Any:
    """A port whose SYNs go unanswered: a listener with a full accept queue that never accepts."""
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(3):  # fill the queue; later connects hang
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((LOCAL, port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def recorded_loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    return errors


# ------------------------------------------------------------------------------------------ balancing


def test_balancer_prefers_fewest_open_then_round_robin() -> None:
    a, b, c = Backend("a", LOCAL, 1), Backend("b", LOCAL, 2), Backend("c", LOCAL, 3)
    balancer = Balancer()
    balancer.backends = (a, b, c)
    assert [balancer.pick() for _ in range(4)] == [a, b, c, a]
    balancer.acquire(a)
    balancer.acquire(b)
    assert [balancer.pick() for _ in range(2)] == [c, c]
    assert balancer.pick(exclude={c}) in (a, b)
    balancer.backends = ()
    assert balancer.pick() is None
    # Where the round robin starts is set per balancer (the proxies choose it at random).
    late = Balancer(start=1)
    late.backends = (a, b, c)
    assert [late.pick() for _ in range(3)] == [b, c, a]


async def test_tcp_sequential_connections_alternate_across_backends(cleanup: list[Any]) -> None:
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend, b.backend])

    answers = [(await ask_once(proxy.port)).split(":")[0] for _ in range(6)]

    assert answers in (["a", "b"] * 3, ["b", "a"] * 3)
    assert proxy.served == {"a": 3, "b": 3}
    await wait_until(lambda: proxy.open_connections() == {})


async def test_tcp_new_connections_go_to_the_backend_with_fewest_open(cleanup: list[Any]) -> None:
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend, b.backend])
    held = await Client.connect(proxy.port)
    cleanup.append(held.close)
    busy = (await held.ask("hold")).split(":")[0]
    idle = "b" if busy == "a" else "a"

    answers = []
    for _ in range(3):
        answers.append((await ask_once(proxy.port)).split(":")[0])
        await wait_until(lambda: proxy.open_connections() == {busy: 1})

    assert answers == [idle] * 3  # plain round robin would have sent one to the busy backend


# ------------------------------------------------------------------------------------------ backend set changes


async def test_tcp_removed_backend_gets_no_new_connections_but_open_ones_drain(cleanup: list[Any]) -> None:
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend])
    held = await Client.connect(proxy.port)
    assert await held.ask("one") == "a:one"

    proxy.set_backends([b.backend])

    assert [await ask_once(proxy.port) for _ in range(3)] == ["b:hi"] * 3
    assert await held.ask("two") == "a:two"  # still relayed to the removed backend
    assert proxy.open_connections() == {"a": 1}
    await held.close()
    await wait_until(lambda: proxy.open_connections() == {} and a.open == 0)
    assert proxy.served == {"a": 1, "b": 3}


async def test_tcp_added_backend_takes_the_very_next_connection(cleanup: list[Any]) -> None:
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend])
    assert await ask_once(proxy.port) == "a:hi"

    proxy.set_backends([b.backend])

    assert await ask_once(proxy.port) == "b:hi"


# ------------------------------------------------------------------------------------------ connect retry


async def test_tcp_refused_backend_is_skipped_without_the_client_noticing(cleanup: list[Any]) -> None:
    (live,) = await line_servers(cleanup, "live")
    with refused_port() as dead_port:
        proxy = await tcp_proxy(cleanup, [Backend("dead", LOCAL, dead_port), live.backend])

        answers = [await ask_once(proxy.port, f"n{i}") for i in range(6)]

    assert answers == [f"live:n{i}" for i in range(6)]
    assert proxy.served == {"live": 6}


async def test_tcp_backend_that_does_not_answer_is_given_up_after_a_second(cleanup: list[Any]) -> None:
    (live,) = await line_servers(cleanup, "live")
    with silent_port() as silent:
        proxy = await tcp_proxy(cleanup, [Backend("silent", LOCAL, silent), live.backend])
        started = time.monotonic()

        assert await ask_once(proxy.port) == "live:hi"  # the silent backend is tried first

    assert time.monotonic() - started >= 0.9
    assert proxy.served == {"live": 1}


async def test_tcp_data_sent_before_any_backend_exists_is_forwarded(cleanup: list[Any]) -> None:
    (late,) = await line_servers(cleanup, "late")
    proxy = await tcp_proxy(cleanup, [], connect_deadline=DEADLINE)
    client = await Client.connect(proxy.port)
    cleanup.append(client.close)
    client.writer.write(b"early\n")
    await wait_until(lambda: proxy.buffered_bytes() == len(b"early\n"))

    proxy.set_backends([late.backend])

    async with asyncio.timeout(DEADLINE):
        assert await client.reader.readline() == b"late:early\n"


async def test_tcp_retries_after_every_backend_failed_and_picks_up_new_ones(cleanup: list[Any]) -> None:
    (live,) = await line_servers(cleanup, "live")
    with refused_port() as dead_port:
        dead = Backend("dead", LOCAL, dead_port)
        proxy = await tcp_proxy(cleanup, [dead], connect_deadline=DEADLINE)
        client = await Client.connect(proxy.port)
        cleanup.append(client.close)
        client.writer.write(b"patience\n")
        await wait_until(lambda: proxy.buffered_bytes() == len(b"patience\n"))

        proxy.set_backends([dead, live.backend])

        async with asyncio.timeout(DEADLINE):
            assert await client.reader.readline() == b"live:patience\n"


async def test_tcp_client_is_closed_cleanly_when_no_backend_answers_by_the_deadline(cleanup: list[Any]) -> None:
    with refused_port() as dead_port:
        proxy = await tcp_proxy(cleanup, [Backend("dead", LOCAL, dead_port)], connect_deadline=0.3)
        started = time.monotonic()
        client = await Client.connect(proxy.port)
        client.writer.write(b"anyone?\n")

        async with asyncio.timeout(DEADLINE):
            assert await client.reader.read() == b""  # EOF, not a reset

    assert time.monotonic() - started >= 0.25
    await client.close()
    await wait_until(lambda: proxy.open_connections() == {})
    assert proxy.served == {}


# ------------------------------------------------------------------------------------------ relaying


async def test_tcp_half_close_reaches_the_backend_and_the_reply_still_comes_back(cleanup: list[Any]) -> None:
    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        writer.write(b"got " + str(len(request)).encode() + b" bytes: " + request.upper())
        await writer.drain()
        writer.close()

    backend = await tcp_backend(cleanup, "eof", reply_after_eof)
    proxy = await tcp_proxy(cleanup, [backend])

    reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
    writer.write(b"hello")
    writer.write_eof()
    async with asyncio.timeout(DEADLINE):
        assert await reader.read() == b"got 5 bytes: HELLO"
    writer.close()
    await wait_until(lambda: proxy.open_connections() == {})


async def test_tcp_client_eof_before_the_backend_connects_is_passed_on(cleanup: list[Any]) -> None:
    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo " + await reader.read())
        await writer.drain()
        writer.close()

    backend = await tcp_backend(cleanup, "eof", reply_after_eof)
    proxy = await tcp_proxy(cleanup, [], connect_deadline=DEADLINE)
    reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
    writer.write(b"ping")
    writer.write_eof()
    await wait_until(lambda: proxy.buffered_bytes() == 4)

    proxy.set_backends([backend])

    async with asyncio.timeout(DEADLINE):
        assert await reader.read() == b"echo ping"
    writer.close()


BULK = 32 * 1024 * 1024  # well beyond the kernel's socket buffers on loopback
PROXY_MEMORY_BOUND = 2 * 1024 * 1024


def pattern(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


async def test_tcp_slow_client_pauses_reading_from_the_backend(cleanup: list[Any]) -> None:
    async def send_bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(pattern(BULK))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    proxy = await tcp_proxy(cleanup, [await tcp_backend(cleanup, "bulk", send_bulk)])
    with socket.create_connection((LOCAL, proxy.port)) as sock:  # not read for now
        await wait_until(lambda: proxy.paused_directions() == 1)
        assert proxy.buffered_bytes() < PROXY_MEMORY_BOUND

        sock.setblocking(False)
        received = bytearray()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(DEADLINE):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                received += chunk
    assert received == pattern(BULK)
    assert proxy.paused_directions() == 0


async def test_tcp_slow_backend_pauses_reading_from_the_client(cleanup: list[Any]) -> None:
    may_read = asyncio.Event()
    received = bytearray()
    done = asyncio.Event()

    async def read_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await may_read.wait()
        while chunk := await reader.read(1 << 20):
            received.extend(chunk)
        done.set()
        writer.close()

    proxy = await tcp_proxy(cleanup, [await tcp_backend(cleanup, "slow", read_later)])
    reader, writer = await asyncio.open_connection(LOCAL, proxy.port)

    async def send_all() -> None:
        writer.write(pattern(BULK))
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send_all())
    await wait_until(lambda: proxy.paused_directions() == 1)
    assert proxy.buffered_bytes() < PROXY_MEMORY_BOUND
    assert not sending.done()

    may_read.set()
    async with asyncio.timeout(DEADLINE):
        await sending
        await done.wait()
    assert received == pattern(BULK)
    writer.close()


async def test_tcp_many_concurrent_connections_are_relayed_and_spread(cleanup: list[Any]) -> None:
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend, b.backend])

    answers = await asyncio.gather(*(ask_once(proxy.port, f"q{i}") for i in range(40)))

    assert sorted(answer.split(":")[1] for answer in answers) == sorted(f"q{i}" for i in range(40))
    assert proxy.served["a"] + proxy.served["b"] == 40
    assert abs(proxy.served["a"] - proxy.served["b"]) <= 2


# ------------------------------------------------------------------------------------------ errors, lifecycle


async def test_tcp_a_failing_backend_connection_is_logged_and_hurts_no_other(
        cleanup: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    loop_errors = recorded_loop_errors()
    (live,) = await line_servers(cleanup, "live")
    broken = Backend("broken", 12345, 1)  # type: ignore[arg-type]  # a malformed entry makes connect raise TypeError
    proxy = await tcp_proxy(cleanup, [broken, live.backend])
    held = await Client.connect(proxy.port)
    cleanup.append(held.close)
    assert await held.ask("first") == "live:first"

    with caplog.at_level(logging.ERROR, logger="shoal.mesh.userspace"):
        assert [await ask_once(proxy.port, f"n{i}") for i in range(3)] == [f"live:n{i}" for i in range(3)]

    assert any("broken" in record.getMessage() for record in caplog.records)
    assert await held.ask("still") == "live:still"
    assert loop_errors == []


async def test_tcp_a_client_reset_mid_transfer_hurts_no_other(cleanup: list[Any]) -> None:
    loop_errors = recorded_loop_errors()
    a, b = await line_servers(cleanup, "a", "b")
    proxy = await tcp_proxy(cleanup, [a.backend, b.backend])
    survivor = await Client.connect(proxy.port)
    cleanup.append(survivor.close)
    assert (await survivor.ask("before")).endswith(":before")

    rude = socket.create_connection((LOCAL, proxy.port))
    rude.sendall(b"x" * 100_000 + b"\n")
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rude.close()  # RST

    await wait_until(lambda: sum(proxy.open_connections().values()) == 1)
    assert (await survivor.ask("after")).endswith(":after")
    assert loop_errors == []


async def test_tcp_stop_closes_the_listener_and_open_connections(cleanup: list[Any]) -> None:
    (a,) = await line_servers(cleanup, "a")
    proxy = await tcp_proxy(cleanup, [a.backend])
    held = await Client.connect(proxy.port)
    assert await held.ask("hi") == "a:hi"

    await proxy.stop()

    async with asyncio.timeout(DEADLINE):
        with contextlib.suppress(ConnectionError):
            assert await held.reader.read() == b""
    assert not await accepts_connections(LOCAL, proxy.port)
    assert proxy.open_connections() == {}
    await wait_until(lambda: a.open == 0)
    await held.close()


async def test_tcp_start_reports_a_port_in_use(cleanup: list[Any]) -> None:
    proxy = await tcp_proxy(cleanup, [])
    second = TcpProxy(LOCAL, proxy.port, "web-again")

    with pytest.raises(OSError):
        await second.start()


async def test_accepts_connections() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), LOCAL, 0)
    port = server.sockets[0].getsockname()[1]
    assert await accepts_connections(LOCAL, port)
    server.close()
    await server.wait_closed()
    with refused_port() as dead_port:
        assert not await accepts_connections(LOCAL, dead_port)


# ------------------------------------------------------------------------------------------ UDP


class UdpEcho(asyncio.DatagramProtocol):
    """A UDP backend that answers every datagram with its name and the datagram."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name.encode() + b":" + data, addr)

    @property
    def backend(self) -> Backend:
        return Backend(self.name, LOCAL, self.port)


class UdpClient(asyncio.DatagramProtocol):
    """An unconnected client socket, so the test sees where replies come from."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait((data, addr))

    async def ask(self, port: int, data: bytes) -> tuple[bytes, Any]:
        assert self.transport is not None
        self.transport.sendto(data, (LOCAL, port))
        async with asyncio.timeout(DEADLINE):
            return await self.replies.get()


async def udp_echoes(cleanup: list[Any], *names: str) -> list[UdpEcho]:
    loop = asyncio.get_running_loop()
    echoes = []
    for name in names:
        transport, echo = await loop.create_datagram_endpoint(lambda n=name: UdpEcho(n),  # type: ignore[misc]
                                                              local_addr=(LOCAL, 0))
        cleanup.append(lambda t=transport: asyncio.sleep(0, t.close()))
        echoes.append(echo)
    return echoes


async def udp_clients(cleanup: list[Any], count: int) -> list[UdpClient]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        transport, client = await loop.create_datagram_endpoint(UdpClient, local_addr=(LOCAL, 0))
        cleanup.append(lambda t=transport: asyncio.sleep(0, t.close()))
        clients.append(client)
    return clients


async def udp_proxy(cleanup: list[Any], backends: list[Backend], idle_timeout: float = 30.0,
                    connect_deadline: float = 3.0) -> UdpProxy:
    proxy = UdpProxy(LOCAL, 0, "dns", connect_deadline=connect_deadline, idle_timeout=idle_timeout, first_pick=0)
    await proxy.start()
    cleanup.append(proxy.stop)
    proxy.set_backends(backends)
    return proxy


async def test_udp_each_client_gets_a_sticky_session_spread_round_robin(cleanup: list[Any]) -> None:
    a, b = await udp_echoes(cleanup, "a", "b")
    proxy = await udp_proxy(cleanup, [a.backend, b.backend])
    clients = await udp_clients(cleanup, 4)

    first = [await client.ask(proxy.port, b"one") for client in clients]
    second = [await client.ask(proxy.port, b"two") for client in clients]

    assert {addr for _, addr in first + second} == {(LOCAL, proxy.port)}  # replies come from the published port
    names = [data.split(b":")[0] for data, _ in first]
    assert sorted(names) == [b"a", b"a", b"b", b"b"]
    assert [data for data, _ in second] == [name + b":two" for name in names]  # same backend as before
    assert proxy.served == {"a": 2, "b": 2}
    assert proxy.open_connections() == {"a": 2, "b": 2}


async def test_udp_idle_sessions_are_closed(cleanup: list[Any]) -> None:
    (a,) = await udp_echoes(cleanup, "a")
    proxy = await udp_proxy(cleanup, [a.backend], idle_timeout=0.2)
    (client,) = await udp_clients(cleanup, 1)
    assert (await client.ask(proxy.port, b"x"))[0] == b"a:x"
    assert proxy.open_connections() == {"a": 1}

    await wait_until(lambda: proxy.open_connections() == {})

    assert (await client.ask(proxy.port, b"y"))[0] == b"a:y"  # a new session
    assert proxy.served == {"a": 2}


async def test_udp_sessions_of_a_removed_backend_move_to_the_others(cleanup: list[Any]) -> None:
    """A client that keeps sending from one port must not stay with a task that is gone (a DNS or statsd
    client after a rolling update): its session ends with the task, and its next datagram picks again."""
    a, b = await udp_echoes(cleanup, "a", "b")
    proxy = await udp_proxy(cleanup, [a.backend])
    old, new = await udp_clients(cleanup, 2)
    assert (await old.ask(proxy.port, b"1"))[0] == b"a:1"

    proxy.set_backends([b.backend])

    assert (await new.ask(proxy.port, b"2"))[0] == b"b:2"
    assert (await old.ask(proxy.port, b"3"))[0] == b"b:3"
    assert proxy.served == {"a": 1, "b": 2}


async def test_udp_datagrams_wait_for_a_backend_to_appear(cleanup: list[Any]) -> None:
    (late,) = await udp_echoes(cleanup, "late")
    proxy = await udp_proxy(cleanup, [], connect_deadline=DEADLINE)
    (client,) = await udp_clients(cleanup, 1)
    assert client.transport is not None
    client.transport.sendto(b"early", (LOCAL, proxy.port))
    await wait_until(lambda: len(proxy._sessions) == 1)

    proxy.set_backends([late.backend])

    async with asyncio.timeout(DEADLINE):
        assert (await client.replies.get())[0] == b"late:early"


async def test_udp_start_reports_a_port_in_use(cleanup: list[Any]) -> None:
    proxy = await udp_proxy(cleanup, [])

    with pytest.raises(OSError):
        await UdpProxy(LOCAL, proxy.port, "dns-again").start()


async def test_udp_stop_closes_sessions(cleanup: list[Any]) -> None:
    (a,) = await udp_echoes(cleanup, "a")
    proxy = await udp_proxy(cleanup, [a.backend])
    (client,) = await udp_clients(cleanup, 1)
    assert (await client.ask(proxy.port, b"x"))[0] == b"a:x"

    await proxy.stop()

    assert proxy.open_connections() == {}
    again = UdpProxy(LOCAL, proxy.port, "dns-again")
    await again.start()  # the port is free again
    await again.stop()


# ------------------------------------------------------------------------------------------ uvloop


def test_tcp_and_udp_relay_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        stops: list[Callable[[], Awaitable[Any]]] = []
        try:
            a, b = await line_servers(stops, "a", "b")
            proxy = await tcp_proxy(stops, [a.backend, b.backend])
            assert sorted([await ask_once(proxy.port) for _ in range(2)]) == ["a:hi", "b:hi"]
            (echo,) = await udp_echoes(stops, "u")
            udp = await udp_proxy(stops, [echo.backend])
            (client,) = await udp_clients(stops, 1)
            assert (await client.ask(udp.port, b"x"))[0] == b"u:x"
        finally:
            for stop in reversed(stops):
                await stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
