"""The scheduler: filter pipeline, explanations, spread ranking, preassigned global tasks, large inputs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.manager.orchestrator.common import new_task
from shoal.manager.scheduler.filters import AvailabilityFilter, ConstraintFilter, ReadyFilter
from shoal.manager.scheduler.pipeline import Pipeline, schedule
from shoal.spec import parse_constraints
from shoal.types import Doc

NOW = 1_800_000_000.0


def make_service(sid: str = "web", constraints: list[str] | None = None) -> Doc:
    template: Doc = {"ContainerSpec": {"Image": "nginx"}}
    if constraints:
        template["Placement"] = {"Constraints": constraints}
    return {"ID": sid, "Version": {"Index": 1},
            "Spec": {"Name": sid, "TaskTemplate": template, "Mode": {"Replicated": {"Replicas": 1}}}}


def make_node(nid: str, state: str = "ready", availability: str = "active", role: str = "worker") -> Doc:
    return {"ID": nid, "Spec": {"Role": role, "Availability": availability, "Labels": {}},
            "Description": {"Hostname": nid}, "Status": {"State": state}}


def pending(service: Doc, count: int, first_slot: int = 1, prefix: str = "t") -> list[Doc]:
    return [new_task(service, slot, "", NOW - 1, task_id=f"{prefix}{slot}")
            for slot in range(first_slot, first_slot + count)]


def running_on(service: Doc, node_id: str, tid: str) -> Doc:
    task = new_task(service, 1, node_id, NOW - 100, task_id=tid)
    task["Status"]["State"] = "running"
    return task


def spread(result_assigned: list[Doc]) -> dict[str, int]:
    return dict(Counter(t["NodeID"] for t in result_assigned))


# ---- pipeline and explanations --------------------------------------------------------------------------

def test_pipeline_counts_the_first_filter_that_refuses_each_node() -> None:
    pipeline = Pipeline([ReadyFilter(), AvailabilityFilter(),
                         ConstraintFilter(parse_constraints(["node.role==manager"]))])
    nodes = [make_node("down", state="down", availability="drain"), make_node("paused", availability="pause"),
             make_node("worker"), make_node("manager", role="manager")]
    assert [pipeline.check(n) for n in nodes] == [False, False, False, True]
    assert pipeline.failures == [1, 1, 1]
    # Down and paused read as one reason, as Docker phrases it; the largest count comes first.
    assert pipeline.explain() == "2 nodes not available for new tasks; 1 node with unsatisfied constraint"


def test_unplaceable_task_says_why() -> None:
    svc = make_service(constraints=["node.role==manager"])
    nodes = [make_node("a", state="down"), make_node("b", availability="drain"), make_node("c")]
    result = schedule(pending(svc, 1), nodes, {}, NOW)
    assert not result.assigned
    [task] = result.unassigned
    assert task["Status"]["Err"] == (
        "no suitable node (2 nodes not available for new tasks; 1 node with unsatisfied constraint)")
    assert task["Status"]["State"] == "pending" and task["NodeID"] == ""


def test_no_nodes_at_all() -> None:
    [task] = schedule(pending(make_service(), 1), [], {}, NOW).unassigned
    assert task["Status"]["Err"] == "no suitable node"


def test_unchanged_reason_is_not_written_again() -> None:
    nodes = [make_node("a", state="down")]
    [first] = schedule(pending(make_service(), 1), nodes, {}, NOW).unassigned
    again = schedule([first], nodes, {}, NOW + 5)
    assert again.unassigned == [] and again.assigned == []


# ---- placement and spread --------------------------------------------------------------------------------

def test_assigned_copies_carry_node_and_state() -> None:
    tasks = pending(make_service(), 1)
    [task] = schedule(tasks, [make_node("a")], {}, NOW).assigned
    assert task["NodeID"] == "a"
    assert task["Status"]["State"] == "assigned"
    assert task["Status"]["Message"] == "scheduler assigned task to node"
    assert tasks[0]["NodeID"] == "" and tasks[0]["Status"]["State"] == "pending", "inputs are not modified"


def test_six_tasks_on_three_equal_nodes_go_two_two_two() -> None:
    nodes = [make_node(n) for n in ("a", "b", "c")]
    result = schedule(pending(make_service(), 6), nodes, {}, NOW)
    assert spread(result.assigned) == {"a": 2, "b": 2, "c": 2}


def test_fewest_tasks_of_the_service_first_then_fewest_overall() -> None:
    web, db = make_service("web"), make_service("db")
    nodes = [make_node(n) for n in ("a", "b", "c")]
    existing = {"a": [running_on(web, "a", "w1")],
                "b": [running_on(db, "b", "d1"), running_on(db, "b", "d2")],
                "c": [running_on(db, "c", "d3")]}
    result = schedule(pending(web, 2), nodes, existing, NOW)
    # b and c run no web task; c has fewer tasks overall, so c first, then b.
    assert [t["NodeID"] for t in result.assigned] == ["c", "b"]


def test_ended_and_unwanted_tasks_do_not_count_as_load() -> None:
    svc = make_service()
    old = running_on(svc, "a", "old")
    old["Status"]["State"] = "failed"
    stopping = running_on(svc, "a", "stopping")
    stopping["DesiredState"] = "shutdown"
    result = schedule(pending(svc, 1), [make_node("a"), make_node("b")], {"a": [old, stopping]}, NOW)
    assert [t["NodeID"] for t in result.assigned] == ["a"], "a wins the node-ID tie"


def test_constraints_narrow_the_nodes() -> None:
    svc = make_service(constraints=["node.role==manager"])
    nodes = [make_node("a"), make_node("m1", role="manager"), make_node("m2", role="manager")]
    result = schedule(pending(svc, 4), nodes, {}, NOW)
    assert spread(result.assigned) == {"m1": 2, "m2": 2}


def test_tasks_that_are_not_pending_or_not_wanted_are_passed_over() -> None:
    svc = make_service()
    unwanted = pending(svc, 1)[0]
    unwanted["DesiredState"] = "shutdown"
    already = running_on(svc, "a", "r")
    result = schedule([unwanted, already], [make_node("a")], {}, NOW)
    assert result.assigned == [] and result.unassigned == []


# ---- preassigned (global) tasks -------------------------------------------------------------------------

def test_preassigned_task_is_confirmed_on_its_own_node_only() -> None:
    svc = make_service()
    ok = new_task(svc, 0, "a", NOW, task_id="g1")
    blocked = new_task(svc, 0, "p", NOW, task_id="g2")
    lost = new_task(svc, 0, "gone", NOW, task_id="g3")
    result = schedule([ok, blocked, lost], [make_node("a"), make_node("p", availability="pause")], {}, NOW)
    assert [(t["ID"], t["NodeID"], t["Status"]["State"]) for t in result.assigned] == [("g1", "a", "assigned")]
    assert [(t["ID"], t["NodeID"], t["Status"]["Err"]) for t in result.unassigned] == [
        ("g2", "p", "no suitable node (1 node not available for new tasks)")]


def test_result_as_a_plan() -> None:
    result = schedule(pending(make_service(), 2), [make_node("a")], {}, NOW)
    plan = result.plan()
    assert [t["ID"] for t in plan.update] == ["t1", "t2"] and not plan.create


# ---- scale ----------------------------------------------------------------------------------------------

def test_ten_thousand_tasks_on_a_thousand_nodes_spread_evenly() -> None:
    nodes = [make_node(f"n{i:04d}", role="manager" if i % 4 == 0 else "worker") for i in range(1000)]
    services = [make_service(f"s{i}", ["node.role==worker"] if i % 5 == 0 else None) for i in range(50)]
    tasks = [t for i, svc in enumerate(services) for t in pending(svc, 200, prefix=f"s{i}-")]
    result = schedule(tasks, nodes, {}, NOW)
    assert len(result.assigned) == 10_000 and not result.unassigned
    per_node = Counter(t["NodeID"] for t in result.assigned)
    assert max(per_node.values()) - min(per_node.values()) <= 1
    for svc in services:
        mine = Counter(t["NodeID"] for t in result.assigned if t["ServiceID"] == svc["ID"])
        assert max(mine.values()) == 1, "200 tasks over 750 or 1000 nodes: never two on one node"


# ---- property: the heap shortcut ranks exactly as a plain scan would -----------------------------------

def reference(tasks: list[Doc], nodes: list[Doc], existing: dict[str, list[Doc]]) -> list[tuple[str, str]]:
    """Each task, in group order, to the minimum (service count, total, node ID) among the nodes it fits."""
    total: Counter[str] = Counter()
    by_service: Counter[tuple[str, str]] = Counter()
    for node_id, node_tasks in existing.items():
        for t in node_tasks:
            total[node_id] += 1
            by_service[(t["ServiceID"], node_id)] += 1
    groups: dict[tuple[str, tuple[str, ...]], list[Doc]] = {}
    for t in tasks:
        key = (t["ServiceID"], tuple(sorted(t["Spec"].get("Placement", {}).get("Constraints", []))))
        groups.setdefault(key, []).append(t)
    placed = []
    for (service_id, exprs), group in groups.items():
        fits = [n["ID"] for n in nodes if Pipeline([ReadyFilter(), AvailabilityFilter(),
                                                     ConstraintFilter(parse_constraints(list(exprs)))]).check(n)]
        for t in group:
            if not fits:
                continue
            best = min(fits, key=lambda nid: (by_service[(service_id, nid)], total[nid], nid))
            total[best] += 1
            by_service[(service_id, best)] += 1
            placed.append((t["ID"], best))
    return placed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["ready", "down"]), st.sampled_from(["active", "pause"]),
                       st.sampled_from(["worker", "manager"])), max_size=8),
    st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]),
                       st.sampled_from([None, ["node.role==manager"], ["node.role!=manager"]])), max_size=30),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["s1", "s2", "s4"])), max_size=15),
)
def test_spread_matches_a_plain_scan(
    node_specs: list[tuple[str, str, str]],
    task_specs: list[tuple[str, list[str] | None]],
    existing_specs: list[tuple[int, str]],
) -> None:
    nodes = [make_node(f"n{i}", state, availability, role) for i, (state, availability, role) in enumerate(node_specs)]
    tasks = [new_task(make_service(sid, cons), i + 1, "", NOW, task_id=f"t{i}") for i, (sid, cons) in
             enumerate(task_specs)]
    existing: dict[str, list[Doc]] = {}
    for j, (index, sid) in enumerate(existing_specs):
        if index < len(nodes):
            node_id = nodes[index]["ID"]
            existing.setdefault(node_id, []).append(running_on(make_service(sid), node_id, f"e{j}"))
    result = schedule(tasks, nodes, existing, NOW)
    assert [(t["ID"], t["NodeID"]) for t in result.assigned] == reference(tasks, nodes, existing)
    assert len(result.assigned) + len(result.unassigned) == len(tasks)


# ---- host-mode published ports ------------------------------------------------------------------------------

def with_host_port(service: Doc, port: int = 8080, mode: str = "host") -> Doc:
    service["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port,
                                      "PublishMode": mode}]}
    return service


def test_tasks_binding_a_host_port_go_one_per_node_and_the_rest_wait_saying_why() -> None:
    service = with_host_port(make_service())
    nodes = [make_node("n1"), make_node("n2")]
    result = schedule(pending(service, 3), nodes, {}, NOW)
    assert sorted(t["NodeID"] for t in result.assigned) == ["n1", "n2"]
    [waiting] = result.unassigned
    assert waiting["Status"]["Err"] == "no suitable node (host-mode port already in use on 2 nodes)"


def test_a_host_port_another_service_binds_on_a_node_keeps_tasks_off_it() -> None:
    other = with_host_port(make_service("other"))
    service = with_host_port(make_service())
    nodes = [make_node("n1"), make_node("n2")]
    result = schedule(pending(service, 1), nodes, {"n1": [running_on(other, "n1", "o1")]}, NOW)
    assert [t["NodeID"] for t in result.assigned] == ["n2"]


def test_ingress_ports_and_host_port_zero_do_not_limit_placement() -> None:
    for service in (with_host_port(make_service(), mode="ingress"), with_host_port(make_service(), port=0)):
        result = schedule(pending(service, 4), [make_node("n1"), make_node("n2")], {}, NOW)
        assert len(result.assigned) == 4


def test_a_global_task_whose_host_port_is_taken_on_its_node_waits() -> None:
    other = with_host_port(make_service("other"))
    service = with_host_port(make_service())
    task = new_task(service, 0, "n1", NOW - 1, task_id="g1")
    result = schedule([task], [make_node("n1")], {"n1": [running_on(other, "n1", "o1")]}, NOW)
    assert result.assigned == []
    assert result.unassigned[0]["Status"]["Err"] == "no suitable node (host-mode port already in use on 1 node)"


# ---- resources, max replicas per node, platforms, preferences -------------------------------------------

GIB = 1024**3


def sized_node(nid: str, cpus: int = 2, memory: int = 4 * GIB, labels: dict[str, str] | None = None,
               arch: str = "x86_64") -> Doc:
    node = make_node(nid)
    node["Spec"]["Labels"] = labels or {}
    node["Description"].update(Resources={"NanoCPUs": cpus * 10**9, "MemoryBytes": memory},
                               Platform={"OS": "linux", "Architecture": arch})
    return node


def with_placement(service: Doc, **placement: Any) -> Doc:
    service["Spec"]["TaskTemplate"]["Placement"] = placement
    return service


def reserving(service: Doc, cpus: float = 0, memory: int = 0) -> Doc:
    service["Spec"]["TaskTemplate"]["Resources"] = {
        "Reservations": {"NanoCPUs": int(cpus * 10**9), "MemoryBytes": memory}}
    return service


def test_a_reservation_larger_than_any_node_waits_saying_so() -> None:
    svc = reserving(make_service(), memory=1024 * GIB)
    nodes = [sized_node(n) for n in ("a", "b", "c")]
    [task] = schedule(pending(svc, 1), nodes, {}, NOW).unassigned
    assert task["Status"]["Err"] == "no suitable node (insufficient resources on 3 nodes)"


def test_reservations_fill_nodes_and_the_rest_wait() -> None:
    svc = reserving(make_service(), cpus=1.5)
    nodes = [sized_node("a"), sized_node("b")]  # 2 CPUs each: one task of 1.5 per node
    result = schedule(pending(svc, 3), nodes, {}, NOW)
    assert spread(result.assigned) == {"a": 1, "b": 1}
    assert [t["Status"]["Err"] for t in result.unassigned] == ["no suitable node (insufficient resources on 2 nodes)"]


def test_what_placed_tasks_reserve_counts_against_a_node() -> None:
    svc = reserving(make_service(), memory=3 * GIB)
    placed = running_on(svc, "a", "old")
    result = schedule(pending(svc, 1), [sized_node("a"), sized_node("b")], {"a": [placed]}, NOW)
    assert spread(result.assigned) == {"b": 1}


def test_max_replicas_per_node_in_dockers_words() -> None:
    svc = with_placement(make_service(), MaxReplicas=2)
    result = schedule(pending(svc, 5), [sized_node("a"), sized_node("b")], {}, NOW)
    assert spread(result.assigned) == {"a": 2, "b": 2}
    assert [t["Status"]["Err"] for t in result.unassigned] == ["no suitable node (max replicas per node limit exceed)"]


def test_platforms_filter_nodes_by_os_and_architecture() -> None:
    svc = with_placement(make_service(), Platforms=[{"OS": "linux", "Architecture": "arm64"}])
    result = schedule(pending(svc, 2), [sized_node("x86"), sized_node("arm", arch="aarch64")], {}, NOW)
    assert spread(result.assigned) == {"arm": 2}
    svc = with_placement(make_service("other"), Platforms=[{"OS": "windows"}])
    [task] = schedule(pending(svc, 1), [sized_node("x86")], {}, NOW).unassigned
    assert task["Status"]["Err"] == "no suitable node (unsupported platform on 1 node)"


def spread_pref(*labels: str) -> list[Doc]:
    return [{"Spread": {"SpreadDescriptor": f"node.labels.{label}"}} for label in labels]


def test_spread_preference_evens_tasks_over_label_values_before_nodes() -> None:
    # Zone east has 3 nodes, west 1: plain spread would put 3 of 4 tasks in east; the preference puts 2 and 2.
    nodes = [sized_node(f"e{i}", labels={"zone": "east"}) for i in range(3)] + [
        sized_node("w0", labels={"zone": "west"})]
    svc = with_placement(make_service(), Preferences=spread_pref("zone"))
    result = schedule(pending(svc, 4), nodes, {}, NOW)
    by_zone = Counter("west" if t["NodeID"] == "w0" else "east" for t in result.assigned)
    assert by_zone == {"east": 2, "west": 2}
    assert len({t["NodeID"] for t in result.assigned if t["NodeID"] != "w0"}) == 2  # spread inside east too


def test_nodes_without_the_label_are_a_group_of_their_own() -> None:
    nodes = [sized_node("e0", labels={"zone": "east"}), sized_node("e1", labels={"zone": "east"}),
             sized_node("x0"), sized_node("x1")]
    svc = with_placement(make_service(), Preferences=spread_pref("zone"))
    result = schedule(pending(svc, 4), nodes, {}, NOW)
    assert Counter(t["NodeID"][0] for t in result.assigned) == {"e": 2, "x": 2}


def test_nested_preferences_spread_level_by_level() -> None:
    nodes = [sized_node(f"{zone}{rack}{i}", labels={"zone": zone, "rack": rack})
             for zone in ("a", "b") for rack in ("1", "2") for i in range(2 if zone == "a" else 1)]
    svc = with_placement(make_service(), Preferences=spread_pref("zone", "rack"))
    result = schedule(pending(svc, 8), nodes, {}, NOW)
    assert Counter(t["NodeID"][0] for t in result.assigned) == {"a": 4, "b": 4}
    assert Counter(t["NodeID"][:2] for t in result.assigned) == {"a1": 2, "a2": 2, "b1": 2, "b2": 2}


def test_a_full_branch_sends_the_rest_elsewhere() -> None:
    nodes = [sized_node("e0", cpus=1, labels={"zone": "east"}), sized_node("w0", cpus=8, labels={"zone": "west"})]
    svc = reserving(with_placement(make_service(), Preferences=spread_pref("zone")), cpus=1)
    result = schedule(pending(svc, 4), nodes, {}, NOW)
    assert spread(result.assigned) == {"e0": 1, "w0": 3}


@settings(max_examples=60, deadline=None)
@given(
    node_sizes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 16), st.sampled_from(["a", "b", "c", ""])),
                        min_size=1, max_size=8),
    groups=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(1, 12), st.integers(0, 3),
                              st.booleans()), min_size=1, max_size=4),
)
def test_no_node_is_ever_over_committed_and_limits_hold(
        node_sizes: list[tuple[int, int, str]], groups: list[tuple[int, int, int, int, bool]]) -> None:
    nodes = [sized_node(f"n{i}", cpus=cpus, memory=gib * GIB, labels={"zone": zone} if zone else {})
             for i, (cpus, gib, zone) in enumerate(node_sizes)]
    tasks: list[Doc] = []
    for index, (cpus, gib, count, most, prefer) in enumerate(groups):
        svc = reserving(make_service(f"s{index}"), cpus=cpus, memory=gib * GIB // 2)
        placement: Doc = {"MaxReplicas": most}
        if prefer:
            placement["Preferences"] = spread_pref("zone")
        with_placement(svc, **placement)
        tasks += pending(svc, count, prefix=f"s{index}-")
    result = schedule(tasks, nodes, {}, NOW)
    assert len(result.assigned) + len(result.unassigned) == len(tasks)
    by_id = {n["ID"]: n for n in nodes}
    used: dict[str, list[int]] = {n["ID"]: [0, 0] for n in nodes}
    per_service: Counter[tuple[str, str]] = Counter()
    for task in result.assigned:
        reserved = task["Spec"]["Resources"]["Reservations"]
        used[task["NodeID"]][0] += reserved["NanoCPUs"]
        used[task["NodeID"]][1] += reserved["MemoryBytes"]
        per_service[(task["ServiceID"], task["NodeID"])] += 1
        most = task["Spec"]["Placement"]["MaxReplicas"]
        assert not most or per_service[(task["ServiceID"], task["NodeID"])] <= most
    for node_id, (cpus, memory) in used.items():
        offered = by_id[node_id]["Description"]["Resources"]
        assert cpus <= offered["NanoCPUs"] and memory <= offered["MemoryBytes"]
    # A task waits only if no node could take it once the others landed.
    for task in result.unassigned:
        assert task["Status"]["Err"].startswith("no suitable node (")


@settings(max_examples=60, deadline=None)
@given(zones=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=10), count=st.integers(1, 40))
def test_spread_over_a_label_is_even_within_one(zones: list[str], count: int) -> None:
    nodes = [sized_node(f"n{i}", labels={"zone": zone}) for i, zone in enumerate(zones)]
    svc = with_placement(make_service(), Preferences=spread_pref("zone"))
    result = schedule(pending(svc, count), nodes, {}, NOW)
    assert len(result.assigned) == count
    zone_of = {n["ID"]: n["Spec"]["Labels"]["zone"] for n in nodes}
    per_zone = Counter(zone_of[t["NodeID"]] for t in result.assigned)
    counts = [per_zone.get(zone, 0) for zone in set(zones)]
    assert max(counts) - min(counts) <= 1


def test_a_stored_preference_the_api_would_refuse_makes_the_task_wait_and_the_tick_goes_on() -> None:
    # Older shoals stored any Preferences: such a service waits with the reason; the others are still placed.
    odd = with_placement(make_service("odd"), Preferences=[{"Spread": {"SpreadDescriptor": "node.hostname"}}])
    result = schedule(pending(odd, 1, prefix="o") + pending(make_service("fine"), 1, prefix="f"),
                      [sized_node("a")], {}, NOW)
    assert [t["ServiceID"] for t in result.assigned] == ["fine"]
    [waiting] = result.unassigned
    assert waiting["Status"]["Err"].startswith('no suitable node (invalid placement preference "spread=node.hostname"')
