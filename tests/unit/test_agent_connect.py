"""The agent's connection to a manager: a handshake that runs out of time is given more time on the next try
(a new leader taking a thousand agents in at once is slow, not gone)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent import agent as agent_module
from shoal.agent.agent import Agent
from shoal.agent.executor.sim import SimExecutor
from shoal.clock import SystemClock


@pytest.fixture
async def busy_manager() -> AsyncIterator[str]:
    """The address of a manager that accepts connections and never answers the TLS hello (too busy)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def agent_for(managers: list[str], state_dir: Path) -> Agent:
    return Agent("node1", managers, ssl.create_default_context(), state_dir, SimExecutor(), SystemClock(),
                 lambda: {}, lambda managers: None)


async def test_a_manager_whose_handshake_runs_out_of_time_gets_twice_as_long_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_manager: str) -> None:
    monkeypatch.setattr(agent_module, "CONNECT_TIMEOUT", 0.05)
    monkeypatch.setattr(agent_module, "HANDSHAKE_TIMEOUT", 0.15)
    agent = agent_for([busy_manager], tmp_path)
    waits = []
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await agent._run_session(busy_manager)
        waits.append(agent._connect_timeouts[busy_manager])
    assert waits == [0.1, 0.15, 0.15], "doubled, up to the handshake timeout"


async def test_the_leader_a_follower_named_gets_the_whole_handshake_time_once_its_port_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_manager: str) -> None:
    monkeypatch.setattr(agent_module, "CONNECT_TIMEOUT", 0.05)
    monkeypatch.setattr(agent_module, "HANDSHAKE_TIMEOUT", 0.5)
    closed_socket = socket.socket()
    closed_socket.bind(("127.0.0.1", 0))
    gone = f"127.0.0.1:{closed_socket.getsockname()[1]}"  # bound, not listening: refused
    agent = agent_for([busy_manager, gone], tmp_path)
    try:
        agent._preferred = busy_manager
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await agent._run_session(busy_manager)
        assert time.monotonic() - started >= 0.45, "patient with the named leader"
        agent._preferred = gone
        with pytest.raises(OSError):
            await agent._run_session(gone)
        assert gone not in agent._connect_timeouts
    finally:
        closed_socket.close()
