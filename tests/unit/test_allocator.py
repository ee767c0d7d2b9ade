"""Network addresses: services' virtual IPs and tasks' addresses, never two alike, given back when let go."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from shoal.manager.allocator import (
    AddressesExhausted,
    AddressPool,
    AllocatorLoop,
    NetworkAddresses,
    holds_addresses,
)
from shoal.manager.controlapi.network import new_network, validate_create
from shoal.manager.orchestrator.loop import OrchestratorLoop
from shoal.manager.scheduler.loop import SchedulerLoop
from shoal.manager.store.base import Batch, Event
from shoal.types import NETWORKS, SERVICES, TASKS, Doc, TaskState, task_state
from tests.unit.manager_fixtures import Harness, make_node, make_service, make_task, running_harness


def network(network_id: str, subnet: str = "10.0.1.0/24") -> Doc:
    spec = validate_create({"Name": network_id, "Driver": "overlay", "IPAM": {"Config": [{"Subnet": subnet}]}}, [])
    return new_network(spec, network_id, 0.0, [])


def on(service: Doc, *networks: str, mode: str = "vip") -> Doc:
    spec = dict(service["Spec"])
    spec["TaskTemplate"] = {**spec["TaskTemplate"], "Networks": [{"Target": n} for n in networks]}
    spec["EndpointSpec"] = {"Mode": mode}
    return {**service, "Spec": spec}


def task_on(task_id: str, *networks: str, state: TaskState = TaskState.PENDING) -> Doc:
    task = make_task(task_id, "web", state=state)
    task["Spec"] = {**task["Spec"], "Networks": [{"Target": n} for n in networks]}
    return task


def addresses_with(*networks: Doc) -> NetworkAddresses:
    addresses = NetworkAddresses()
    addresses.rebuild(networks, [], [])
    return addresses


# ---- the pool ---------------------------------------------------------------------------------------------


def test_a_pool_hands_out_host_addresses_in_turn_skipping_the_gateway() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.0.9.0/29"), ipaddress.IPv4Address("10.0.9.1"))
    taken = [pool.take() for _ in range(5)]
    assert taken == ["10.0.9.2/29", "10.0.9.3/29", "10.0.9.4/29", "10.0.9.5/29", "10.0.9.6/29"]
    with pytest.raises(AddressesExhausted):
        pool.take()


def test_an_address_given_back_is_not_handed_out_again_before_the_others() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.0.9.0/29"), ipaddress.IPv4Address("10.0.9.1"))
    first = pool.take()
    pool.release(first)
    assert pool.take() == "10.0.9.3/29"


def test_a_pool_wraps_around_to_the_addresses_given_back() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.0.9.0/29"), ipaddress.IPv4Address("10.0.9.1"))
    taken = [pool.take() for _ in range(5)]
    pool.release(taken[1])
    assert pool.take() == taken[1]


# ---- virtual IPs ------------------------------------------------------------------------------------------


def test_a_service_gets_one_vip_per_attached_network_in_the_order_of_its_spec() -> None:
    addresses = addresses_with(network("back"), network("front", "10.0.2.0/24"))
    vips = addresses.vips_for(on(make_service("s1", "web"), "front", "back"))
    assert vips == [{"NetworkID": "front", "Addr": "10.0.2.2/24"}, {"NetworkID": "back", "Addr": "10.0.1.2/24"}]


def test_a_service_already_holding_its_vips_needs_no_change() -> None:
    addresses = addresses_with(network("back"))
    service = on(make_service("s1", "web"), "back")
    service["Endpoint"] = {"VirtualIPs": addresses.vips_for(service)}
    assert addresses.vips_for(service) is None


def test_a_network_removed_from_a_service_gives_its_vip_back_and_the_others_keep_theirs() -> None:
    addresses = addresses_with(network("back"), network("front", "10.0.2.0/24"))
    service = on(make_service("s1", "web"), "back", "front")
    service["Endpoint"] = {"VirtualIPs": addresses.vips_for(service)}
    vips = addresses.vips_for(on(service, "front"))
    assert vips == [{"NetworkID": "front", "Addr": "10.0.2.2/24"}]
    assert addresses.pools["back"].used == set()


def test_dnsrr_services_and_services_without_networks_get_no_vip() -> None:
    addresses = addresses_with(network("back"))
    assert addresses.vips_for(on(make_service("s1", "web"), "back", mode="dnsrr")) is None
    assert addresses.vips_for(make_service("s1", "web")) is None


def test_two_services_never_share_a_vip_and_a_deleted_service_gives_its_back() -> None:
    addresses = addresses_with(network("back"))
    first = addresses.vips_for(on(make_service("s1", "a"), "back"))
    second = addresses.vips_for(on(make_service("s2", "b"), "back"))
    assert first and second and first[0]["Addr"] != second[0]["Addr"]
    addresses.observe(Event("delete", SERVICES, "s1", None, 9))
    assert len(addresses.pools["back"].used) == 1


# ---- task addresses ---------------------------------------------------------------------------------------


def test_a_task_gets_an_address_on_each_of_its_networks_with_the_network_document() -> None:
    back, front = network("back"), network("front", "10.0.2.0/24")
    addresses = addresses_with(back, front)
    attached = addresses.attach(task_on("t1", "back", "front"))
    assert attached["NetworksAttachments"] == [{"Network": back, "Addresses": ["10.0.1.2/24"]},
                                               {"Network": front, "Addresses": ["10.0.2.2/24"]}]
    assert addresses.attach(attached) is attached  # already attached: unchanged


def test_a_task_holds_its_address_until_it_has_stopped() -> None:
    addresses = addresses_with(network("back"))
    attached = addresses.attach(task_on("t1", "back"))
    running = {**attached, "Status": {**attached["Status"], "State": TaskState.RUNNING.wire}}
    addresses.observe(Event("put", TASKS, "t1", running, 5))
    assert len(addresses.pools["back"].used) == 1
    failed = {**attached, "Status": {**attached["Status"], "State": TaskState.FAILED.wire}}
    assert not holds_addresses(failed)
    addresses.observe(Event("put", TASKS, "t1", failed, 6))
    assert addresses.pools["back"].used == set()


def test_a_full_network_refuses_the_task_and_gives_back_what_it_took_on_the_others() -> None:
    addresses = addresses_with(network("big", "10.0.2.0/24"), network("tiny", "10.0.9.0/29"))
    for index in range(5):
        addresses.attach(task_on(f"filler{index}", "tiny"))
    with pytest.raises(AddressesExhausted, match="no free address on network tiny"):
        addresses.attach(task_on("t1", "big", "tiny"))
    assert addresses.pools["big"].used == set()


def test_a_rebuild_holds_what_the_documents_hold() -> None:
    back = network("back")
    source = addresses_with(back)
    service = on(make_service("s1", "web"), "back")
    service["Endpoint"] = {"VirtualIPs": source.vips_for(service)}
    running = source.attach(task_on("t1", "back", state=TaskState.RUNNING))
    ended = source.attach(task_on("t2", "back", state=TaskState.COMPLETE))

    rebuilt = NetworkAddresses()
    rebuilt.rebuild([back], [service], [running, ended])

    assert rebuilt.held_by("s1") == [("back", "10.0.1.2/24")]
    assert rebuilt.held_by("t1") == [("back", "10.0.1.3/24")]
    assert rebuilt.held_by("t2") == []


# ---- through the loops ------------------------------------------------------------------------------------


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness() as running:
        yield running


async def test_the_allocator_writes_vips_and_the_scheduler_gives_tasks_addresses_when_it_places_them(
        harness: Harness) -> None:
    await harness.commit(Batch().create(NETWORKS, network("back")))
    allocator = AllocatorLoop(harness.cache, harness.applier)
    allocator._on_resync()
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    scheduler = SchedulerLoop(harness.cache, harness.applier, harness.clock, allocator.addresses)
    await harness.add_nodes(make_node("n1"))
    await harness.add_service(on(make_service("web", "web", replicas=3), "back"))

    assert await allocator.run_once() == 1
    await orchestrator.run_once()
    await scheduler.run_once()

    service = harness.cache.get(SERVICES, "web")
    assert service is not None
    assert service["Endpoint"]["VirtualIPs"] == [{"NetworkID": "back", "Addr": "10.0.1.2/24"}]
    tasks = harness.tasks_of("web")
    assert all(task_state(t) == TaskState.ASSIGNED for t in tasks)
    addresses = sorted(t["NetworksAttachments"][0]["Addresses"][0] for t in tasks)
    assert addresses == ["10.0.1.3/24", "10.0.1.4/24", "10.0.1.5/24"]
    assert await allocator.run_once() == 0  # nothing left to change


async def test_a_task_that_finds_its_network_full_waits_pending_saying_so(harness: Harness) -> None:
    await harness.commit(Batch().create(NETWORKS, network("tiny", "10.0.9.0/29")))
    allocator = AllocatorLoop(harness.cache, harness.applier)
    allocator._on_resync()
    orchestrator = OrchestratorLoop(harness.cache, harness.applier, harness.clock)
    scheduler = SchedulerLoop(harness.cache, harness.applier, harness.clock, allocator.addresses)
    await harness.add_nodes(make_node("n1"))
    await harness.add_service(on(make_service("web", "web", replicas=6), "tiny", mode="dnsrr"))
    await orchestrator.run_once()

    await scheduler.run_once()

    tasks = harness.tasks_of("web")
    states = sorted(task_state(t).name for t in tasks)
    assert states == ["ASSIGNED"] * 5 + ["PENDING"]
    waiting = next(t for t in tasks if task_state(t) == TaskState.PENDING)
    assert "no free address on network tiny" in waiting["Status"]["Err"]
    assert "NetworksAttachments" not in waiting


async def test_a_service_refused_a_vip_on_a_full_network_gets_one_once_an_address_comes_free(
        harness: Harness) -> None:
    await harness.commit(Batch().create(NETWORKS, network("tiny", "10.0.9.0/29")))
    allocator = AllocatorLoop(harness.cache, harness.applier)
    allocator._on_resync()
    fillers = [allocator.addresses.attach(task_on(f"f{index}", "tiny", state=TaskState.RUNNING))
               for index in range(5)]
    await harness.add_tasks(*fillers)
    await harness.add_service(on(make_service("web", "web"), "tiny"))
    await allocator.run_once()
    assert not (harness.cache.get(SERVICES, "web") or {}).get("Endpoint", {}).get("VirtualIPs")

    await harness.report("f0", TaskState.FAILED)  # its address is free again
    assert await allocator.run_once() == 1

    service = harness.cache.get(SERVICES, "web")
    assert service is not None and service["Endpoint"]["VirtualIPs"] == [
        {"NetworkID": "tiny", "Addr": fillers[0]["NetworksAttachments"][0]["Addresses"][0]}]
