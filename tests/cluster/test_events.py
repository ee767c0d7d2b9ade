"""Events and `docker info` on a real swarm: `shoal events` streams what happens, in order, filtered, and
replays it with `--since`; the real docker CLI reads the same stream and the Swarm section of `docker info`."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.protocol import DEBUG_PATH
from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for
from tests.cluster.test_docker_cli import DOCKERS

pytestmark = pytest.mark.cluster

Event = dict[str, Any]


@pytest.fixture(scope="module")
def swarm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One manager, two workers, for every test here (they only add and remove their own objects)."""
    cluster = make_cluster(tmp_path_factory)
    try:
        yield cluster
    finally:
        if any(item.stash.get(FAILED_KEY, False) for item in request.session.items
               if item.module is request.module):
            dump_logs(cluster)
        cluster.down()


class EventStream:
    """`shoal events --format json …` running in the background; its events are read from a thread."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        env = dict(os.environ, SHOAL_HOST=f"unix://{cluster.manager.socket}")
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal", "events", "--format", "json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: list[Event] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, what: str, done: Callable[[Event], bool], timeout: float = 30.0) -> list[Event]:
        """Collect events until `done(event)` holds for one; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.events}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            event = json.loads(line)
            self.events.append(event)
            if done(event):
                return self.events

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def subscribers(cluster: Cluster) -> int:
    return int(cluster.get(DEBUG_PATH)["Manager"]["Events"]["Subscribers"])


def brief(event: Event) -> tuple[str, str, str, dict[str, str]]:
    return event["Type"], event["Action"], event["Actor"]["ID"], event["Actor"]["Attributes"]


def in_order(events: list[Event], *wanted: tuple[str, str, str, dict[str, str]]) -> bool:
    """Whether `wanted` occur in `events` in this order (each: type, action, ID, attributes it includes)."""
    position = 0
    for event in events:
        kind, action, actor, attributes = brief(event)
        want = wanted[position]
        if (kind, action, actor) == want[:3] and all(attributes.get(k) == v for k, v in want[3].items()):
            position += 1
            if position == len(wanted):
                return True
    return False


def unix_time(nanos: int) -> str:
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def test_events_arrive_in_order_filtered_and_replayed(swarm: Cluster) -> None:
    cluster = swarm
    before = subscribers(cluster)
    everything = EventStream(cluster)
    services_only = EventStream(cluster, "--filter", "type=service")
    try:
        # Both streams are subscribed before anything happens (nothing is replayed without --since).
        wait_for("both event streams to subscribe", lambda: subscribers(cluster) == before + 2)
        started = time.time_ns()
        cluster.ok("service", "create", "-d", "--name", "evweb", "--replicas", "1", "busybox", "sleep", "600")
        service_id = cluster.get("/services/evweb")["ID"]
        worker1 = cluster.node_ids()["worker1"]
        cluster.ok("service", "scale", "-d", "evweb=3")
        cluster.ok("node", "update", "--availability", "drain", "worker1")
        cluster.ok("service", "rm", "evweb")

        def removed(event: Event) -> bool:
            return event["Type"] == "service" and event["Action"] == "remove" and event["Actor"]["ID"] == service_id

        events = everything.until("the service's remove event", removed)
        only_services = services_only.until("the service's remove event (filtered stream)", removed)
    finally:
        everything.stop()
        services_only.stop()
        cluster.ok("node", "update", "--availability", "active", "worker1")
    # Clients that went away hold nothing on the manager.
    wait_for("the stopped streams to unsubscribe", lambda: subscribers(cluster) == before)

    assert in_order(events,
                    ("service", "create", service_id, {"name": "evweb"}),
                    ("service", "update", service_id, {"name": "evweb", "replicas.old": "1", "replicas.new": "3"}),
                    ("node", "update", worker1, {"name": "worker1", "availability.old": "active",
                                                 "availability.new": "drain"}),
                    ("service", "remove", service_id, {"name": "evweb"})), events
    assert all(e["scope"] == "swarm" and e["time"] == e["timeNano"] // 1_000_000_000 for e in events)
    times = [e["timeNano"] for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert not [e for e in events if e["Type"] == "task"]  # tasks make no events, as with Docker

    # The filtered stream: the same service events, no node event.
    assert {e["Type"] for e in only_services} == {"service"}
    assert [brief(e) for e in only_services if e["Actor"]["ID"] == service_id] == \
        [brief(e) for e in events if e["Actor"]["ID"] == service_id]

    # --since replays what the live stream showed from then on; --until in the past ends the stream.
    ended = events[-1]["timeNano"]
    replay = cluster.ok("events", "--format", "json", "--since", unix_time(started), "--until", unix_time(ended))
    assert [json.loads(line) for line in replay.splitlines()] == [e for e in events if e["timeNano"] >= started]

    # The real docker CLI, live stream format, filtered and bounded the same way.
    for docker in DOCKERS:
        env = dict(os.environ, DOCKER_HOST=f"unix://{cluster.manager.socket}")
        env.pop("DOCKER_CONTEXT", None)
        out = subprocess.run([docker, "events", "--filter", "type=service", "--since", unix_time(started),
                              "--until", unix_time(ended)], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(?:Z|[+-]\d\d:\d\d) service (\w+) (\w+) \((.*)\)$")
        printed = [pattern.match(line) for line in out.stdout.splitlines()]
        assert all(printed), out.stdout
        mine = [(m.group(1), m.group(3)) for m in printed if m is not None and m.group(2) == service_id]
        assert mine[0] == ("create", "name=evweb"), out.stdout
        assert ("update", "name=evweb, replicas.new=3, replicas.old=1") in mine, out.stdout
        assert mine[-1] == ("remove", "name=evweb"), out.stdout


@pytest.mark.skipif(not DOCKERS, reason="no docker CLI installed")
def test_docker_info_shows_the_swarm(swarm: Cluster) -> None:
    cluster = swarm
    env = dict(os.environ, DOCKER_HOST=f"unix://{cluster.manager.socket}")
    env.pop("DOCKER_CONTEXT", None)
    docker = DOCKERS[-1]  # the newest: /usr/local/bin/docker when both are installed
    out = subprocess.run([docker, "info", "--format", "{{json .Swarm}}"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    manager_id = cluster.node_ids()["manager1"]
    assert (info["Nodes"], info["Managers"]) == (3, 1)
    assert info["Cluster"]["ID"] == cluster.get("/swarm")["ID"]
    assert (info["NodeID"], info["NodeAddr"], info["LocalNodeState"]) == (manager_id, cluster.manager.address,
                                                                          "active")
    assert info["ControlAvailable"] is True and "JoinTokens" not in info["Cluster"]
    assert info["RemoteManagers"] == [{"NodeID": manager_id, "Addr": f"{cluster.manager.address}:2377"}]
    text = subprocess.run([docker, "info"], capture_output=True, text=True, env=env, timeout=60)
    assert text.returncode == 0 and " Swarm: active" in text.stdout and "  Nodes: 3" in text.stdout
