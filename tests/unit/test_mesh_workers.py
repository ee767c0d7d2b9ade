"""The userspace mesh's helper processes: they serve the ports they are told, on the agent's ports
(SO_REUSEPORT), come back when they die, and go when the agent stops or dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator

import pytest

from shoal.mesh.table import Backend, Serving
from shoal.mesh.workers import ProxySet, ProxyWorkers, plan_from_wire, plan_to_wire
from tests.unit.waiting import wait_until

LOCAL = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the task\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, LOCAL, 0)
    yield Backend("t1", LOCAL, int(server.sockets[0].getsockname()[1]))
    server.close()
    await server.wait_closed()


async def ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_plans_survive_the_pipe() -> None:
    plan = [Serving("tcp", 8080, (Backend("t1", "10.0.0.2", 41000),)), Serving("udp", 53, ())]
    assert plan_from_wire(plan_to_wire(plan)) == plan


async def test_a_helper_serves_beside_the_agent_comes_back_and_goes(backend: Backend) -> None:
    port = free_port()
    plan = [Serving("tcp", port, (backend,))]
    agent = ProxySet(LOCAL, shared=True, drain_seconds=0)
    helpers = ProxyWorkers(1, LOCAL, drain_seconds=0)
    helpers.start()
    try:
        assert await agent.apply(plan) == {}
        await helpers.send(plan)
        # Both processes listen on the port; every connection is answered, whichever takes it.
        await wait_until(lambda: len(helpers.pids()) == 1)
        for _ in range(20):
            assert await ask(port) == b"hello from the task\n"
        await agent.stop()  # only the helper listens now
        first = helpers.pids()[0]

        async def helper_answers() -> bool:
            try:
                return await ask(port) == b"hello from the task\n"
            except OSError:
                return False

        async with asyncio.timeout(20):
            while not await helper_answers():
                await asyncio.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: helpers.pids() not in ([], [first]))
        async with asyncio.timeout(20):
            while not await helper_answers():
                await asyncio.sleep(0.05)  # started again and given the plan
    finally:
        await helpers.stop()
        await agent.stop()
    assert helpers.pids() == []
    with pytest.raises(OSError):
        await ask(port)


async def test_a_helpers_counts_reach_the_agent_and_outlive_the_helper(backend: Backend) -> None:
    port = free_port()
    helpers = ProxyWorkers(1, LOCAL, drain_seconds=0)
    helpers.start()
    try:
        await wait_until(lambda: len(helpers.pids()) == 1)
        await helpers.send([Serving("tcp", port, (backend,))])  # only the helper listens: it takes them all

        async def answered() -> bool:
            try:
                return await ask(port) == b"hello from the task\n"
            except OSError:
                return False

        async with asyncio.timeout(20):
            while not await answered():
                await asyncio.sleep(0.05)
        for _ in range(3):
            assert await ask(port) == b"hello from the task\n"

        def connections() -> int:
            stats = helpers.totals.total().get((port, "tcp"))
            return stats.connections if stats is not None else 0

        await wait_until(lambda: connections() >= 4)
        counted = helpers.totals.total()[(port, "tcp")]
        assert counted.bytes_out >= 4 * len(b"hello from the task\n")
        first, last_report = helpers.pids()[0], helpers.totals.latest[0]
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: helpers.pids() not in ([], [first]))
        # The new helper's first report, counted from 0.
        await wait_until(lambda: helpers.totals.latest.get(0) not in (None, last_report))
        assert connections() >= 4  # what the dead one counted stays
    finally:
        await helpers.stop()
