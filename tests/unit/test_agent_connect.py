"""The agent's connection to a manager: a handshake that runs out of time is given more time on the next try
(a new leader taking a thousand agents in at once is slow, not gone)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest

from shoal.agent import agent as agent_module
from shoal.agent.agent import Agent
from shoal.agent.executor.sim import SimExecutor
from shoal.clock import SystemClock


async def test_a_manager_whose_handshake_runs_out_of_time_gets_twice_as_long_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "CONNECT_TIMEOUT", 0.05)
    monkeypatch.setattr(agent_module, "HANDSHAKE_TIMEOUT", 0.15)
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts, never answers the TLS hello: a manager too busy to shake hands

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    agent = Agent("node1", [addr], ssl.create_default_context(), tmp_path, SimExecutor(), SystemClock(),
                  lambda: {}, lambda managers: None)
    try:
        waits = []
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await agent._run_session(addr)
            waits.append(agent._connect_timeouts[addr])
        assert waits == [0.1, 0.15, 0.15], "doubled, up to the handshake timeout"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_leader_a_follower_named_gets_the_whole_handshake_time_once_its_port_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "CONNECT_TIMEOUT", 0.05)
    monkeypatch.setattr(agent_module, "HANDSHAKE_TIMEOUT", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    busy = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    closed_socket = socket.socket()
    closed_socket.bind(("127.0.0.1", 0))
    gone = f"127.0.0.1:{closed_socket.getsockname()[1]}"  # bound, not listening: refused
    agent = Agent("node1", [busy, gone], ssl.create_default_context(), tmp_path, SimExecutor(), SystemClock(),
                  lambda: {}, lambda managers: None)
    try:
        agent._preferred = busy
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await agent._run_session(busy)
        assert time.monotonic() - started >= 0.45, "patient with the named leader"
        agent._preferred = gone
        with pytest.raises(OSError):
            await agent._run_session(gone)
        assert gone not in agent._connect_timeouts
    finally:
        closed_socket.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
