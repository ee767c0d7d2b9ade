"""The store contract against a real etcd member: versions, compare-and-swap, unique names, fencing, watch."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.errors import Conflict, NotLeader, SequenceConflict
from shoal.manager.cache import Cache
from shoal.manager.store.base import LEADER_KEY, Batch
from shoal.manager.store.etcd import EtcdStore, make_client
from shoal.types import SERVICES, TASKS

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (apt-get install etcd-server)")

ADDRESS = "127.0.9.1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EtcdStore]:
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://{ADDRESS}:2379", "--advertise-client-urls", f"http://{ADDRESS}:2379",
         "--listen-peer-urls", f"http://{ADDRESS}:2380", "--initial-advertise-peer-urls", f"http://{ADDRESS}:2380",
         "--initial-cluster", f"t=http://{ADDRESS}:2380", "--log-level", "error", "--logger", "zap"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = make_client([f"http://{ADDRESS}:2379"], None, None, None)
    s = EtcdStore(client)
    try:
        for _ in range(200):
            try:
                await client.get(b"/probe")
                break
            except Exception:
                await asyncio.sleep(0.05)
        yield s
    finally:
        await s.close()
        proc.kill()
        proc.wait()


def service(sid: str, name: str) -> dict:
    return {"ID": sid, "Spec": {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "x"}}}}


async def test_create_then_update_with_version(store: EtcdStore) -> None:
    doc = service("s1", "web")
    await store.commit(Batch().create(SERVICES, doc, unique_name="web"))
    stored = await store.get(SERVICES, "s1")
    assert stored is not None and stored["Version"]["Index"] == doc["Version"]["Index"] > 0
    stored["Spec"]["Labels"] = {"a": "b"}
    await store.commit(Batch().update(SERVICES, stored))
    again = await store.get(SERVICES, "s1")
    assert again is not None and again["Spec"]["Labels"] == {"a": "b"}
    assert again["Version"]["Index"] > doc["Version"]["Index"]


async def test_stale_update_is_refused_and_changes_nothing(store: EtcdStore) -> None:
    await store.commit(Batch().create(SERVICES, service("s1", "web")))
    first = await store.get(SERVICES, "s1")
    second = await store.get(SERVICES, "s1")
    assert first and second
    first["Spec"]["Labels"] = {"writer": "one"}
    await store.commit(Batch().update(SERVICES, first))
    second["Spec"]["Labels"] = {"writer": "two"}
    with pytest.raises(SequenceConflict, match="update out of sequence"):
        await store.commit(Batch().update(SERVICES, second))
    final = await store.get(SERVICES, "s1")
    assert final and final["Spec"]["Labels"] == {"writer": "one"}


async def test_unique_names(store: EtcdStore) -> None:
    await store.commit(Batch().create(SERVICES, service("s1", "web"), unique_name="web"))
    with pytest.raises(Conflict, match="name conflicts"):
        await store.commit(Batch().create(SERVICES, service("s2", "web"), unique_name="web"))
    assert await store.get(SERVICES, "s2") is None
    s1 = await store.get(SERVICES, "s1")
    assert s1
    await store.commit(Batch().delete(SERVICES, s1, unique_name="web"))
    await store.commit(Batch().create(SERVICES, service("s2", "web"), unique_name="web"))


async def test_batch_is_atomic(store: EtcdStore) -> None:
    await store.commit(Batch().create(TASKS, {"ID": "t1", "ServiceID": "s"}))
    batch = Batch().create(TASKS, {"ID": "t2", "ServiceID": "s"}).create(TASKS, {"ID": "t1", "ServiceID": "s"})
    with pytest.raises(Conflict):
        await store.commit(batch)
    assert await store.get(TASKS, "t2") is None


async def test_a_refused_batch_names_every_operation_that_failed(store: EtcdStore) -> None:
    for tid in ("t1", "t2", "t3"):
        await store.commit(Batch().create(TASKS, {"ID": tid, "ServiceID": "s"}))
    read = {tid: await store.get(TASKS, tid) for tid in ("t1", "t2", "t3")}
    assert all(read.values())
    await store.commit(Batch().update(TASKS, dict(read["t2"] or {}, NodeID="elsewhere")))  # t2 goes stale
    batch = (Batch().update(TASKS, dict(read["t1"] or {}, NodeID="n1"))
             .update(TASKS, dict(read["t2"] or {}, NodeID="n1"))
             .create(TASKS, {"ID": "t3", "ServiceID": "s"})
             .create(TASKS, {"ID": "t4", "ServiceID": "s"}))

    with pytest.raises(Conflict) as refused:
        await store.commit(batch)

    assert refused.value.keys == ["/shoal/tasks/t2", "/shoal/tasks/t3"]
    assert await store.get(TASKS, "t4") is None  # nothing of the batch was written


async def test_fenced_write_needs_the_leader_key(store: EtcdStore) -> None:
    with pytest.raises(NotLeader):
        await store.commit(Batch().create(TASKS, {"ID": "t1", "ServiceID": "s"}), fence="node-a")
    await store.client.put(LEADER_KEY.encode(), b"node-a")
    await store.commit(Batch().create(TASKS, {"ID": "t1", "ServiceID": "s"}), fence="node-a")
    with pytest.raises(NotLeader):
        await store.commit(Batch().create(TASKS, {"ID": "t2", "ServiceID": "s"}), fence="node-b")


async def test_cache_follows_the_watch(store: EtcdStore) -> None:
    cache = Cache()
    runner = asyncio.create_task(cache.run(store))
    try:
        await asyncio.wait_for(cache.ready.wait(), 5)
        rev = await store.commit(Batch().create(TASKS, {"ID": "t1", "ServiceID": "s", "NodeID": "n1"}))
        await cache.wait_for_revision(rev)
        assert [t["ID"] for t in cache.tasks_on_node("n1")] == ["t1"]
        task = cache.get(TASKS, "t1")
        assert task is not None
        moved = dict(task, NodeID="n2")
        rev = await store.commit(Batch().update(TASKS, moved))
        await cache.wait_for_revision(rev)
        assert cache.tasks_on_node("n1") == [] and [t["ID"] for t in cache.tasks_on_node("n2")] == ["t1"]
        rev = await store.commit(Batch().delete(TASKS, cache.get(TASKS, "t1") or {}))
        await cache.wait_for_revision(rev)
        assert cache.tasks_of_service("s") == []
    finally:
        runner.cancel()
