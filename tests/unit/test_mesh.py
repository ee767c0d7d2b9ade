"""The agent's routing mesh (shoal.mesh.mesh.RoutingMesh) with a fake kernel data path: newest table wins,
refused kernel rules fall back to the userspace listeners and are tried again, port errors are reported."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from shoal.errors import InvalidArgument
from shoal.mesh import mesh as mesh_module
from shoal.mesh.kernel import KernelPathError, KernelRule
from shoal.mesh.mesh import RoutingMesh
from shoal.mesh.table import Backend, Listener


class FakeKernel:
    """Records the rule sets applied, in the order they were applied; can hold or refuse one."""

    def __init__(self) -> None:
        self.applied: list[list[KernelRule]] = []
        self.cleared = 0
        self.hold: asyncio.Event | None = None
        self.refuse = False

    async def sync(self, rules: Sequence[KernelRule]) -> None:
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        if self.refuse:
            raise KernelPathError("nft failed (1): Error: Could not process rule")
        self.applied.append(list(rules))

    async def clear(self) -> None:
        self.cleared += 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listener(port: int, *task_ids: str) -> Listener:
    return Listener("tcp", port, 80, "ingress", "s1", "web",
                    tuple(Backend(task_id, "127.0.0.1", 1) for task_id in task_ids))


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[RoutingMesh, FakeKernel, list[list[str]]]]:
    reported: list[list[str]] = []
    mesh = RoutingMesh("node1", "127.0.0.1", "userspace", report_errors=reported.append)
    kernel = FakeKernel()
    mesh._kernel = kernel  # type: ignore[assignment]
    yield mesh, kernel, reported
    await mesh.stop()


async def test_a_newer_table_is_never_overwritten_by_an_older_one(
        mesh: tuple[RoutingMesh, FakeKernel, list[list[str]]]) -> None:
    routing, kernel, _ = mesh
    port = free_port()
    hold = kernel.hold = asyncio.Event()
    older = asyncio.create_task(routing.update([listener(port, "old")], set()))
    while kernel.hold is not None:  # the older update is now inside nft
        await asyncio.sleep(0.01)
    newer = asyncio.create_task(routing.update([listener(port, "new")], set()))
    await asyncio.sleep(0.05)
    assert not kernel.applied and not newer.done()  # the newer one waits for the older to finish
    hold.set()
    await asyncio.wait_for(asyncio.gather(older, newer), 5)
    assert [[b.task_id for b in rules[0].backends] for rules in kernel.applied] == [["old"], ["new"]]
    proxy = routing.local.proxies[(port, "tcp")]
    assert [b.task_id for b in proxy._balancer.backends] == ["new"]


async def test_refused_kernel_rules_are_removed_reported_and_tried_again(
        mesh: tuple[RoutingMesh, FakeKernel, list[list[str]]]) -> None:
    routing, kernel, reported = mesh
    port = free_port()
    kernel.refuse = True
    await routing.update([listener(port, "t1")], set())
    # The old rules would send connections to old tasks: gone, the userspace listener serves meanwhile.
    assert kernel.cleared == 1 and (port, "tcp") in routing.local.proxies
    assert "kernel rules not applied" in reported[-1][0] and "serving in userspace" in reported[-1][0]
    kernel.refuse = False
    await routing.retry()
    assert [[b.task_id for b in rules[0].backends] for rules in kernel.applied] == [["t1"]]
    assert reported[-1] == []


async def test_a_port_held_by_another_program_is_reported_then_served_once_free(
        mesh: tuple[RoutingMesh, FakeKernel, list[list[str]]]) -> None:
    routing, _, reported = mesh
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = int(squatter.getsockname()[1])
    await routing.update([listener(port, "t1")], set())
    assert reported[-1] == [f"port {port}/tcp is in use on this node: free it, or publish the service on "
                            "another port"]
    squatter.close()
    await routing.retry()
    assert (port, "tcp") in routing.local.proxies and reported[-1] == []


async def test_kernel_rules_outlive_a_daemon_restart_but_not_a_leave() -> None:
    for keep_rules, cleared in ((True, 0), (False, 1)):
        routing = RoutingMesh("node1", "127.0.0.1", "userspace")
        kernel = FakeKernel()
        routing._kernel = kernel  # type: ignore[assignment]
        await routing.update([listener(free_port(), "t1")], set())
        await routing.stop(keep_rules=keep_rules)
        assert kernel.cleared == cleared and routing.local.proxies == {}


async def test_a_forced_kernel_path_that_cannot_work_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_module, "kernel_available", lambda: "not running as root")
    routing = RoutingMesh("node1", "127.0.0.1", "kernel", workers=1)
    with pytest.raises(InvalidArgument, match="not running as root; use --routing-mesh userspace"):
        await routing.start()
