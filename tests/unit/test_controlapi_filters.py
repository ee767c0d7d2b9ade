"""List filters: both encodings clients send, and matching services, tasks and nodes as Docker does."""

from __future__ import annotations

import copy

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.controlapi.filters import match_node, match_service, match_task, parse_filters
from shoal.types import Doc

# ---- parsing ------------------------------------------------------------------------------------------

def test_map_form_from_the_go_cli() -> None:
    raw = '{"_up-to-date":{"true":true},"service":{"794c177dfbae4f6784a4fa4f8":true}}'
    assert parse_filters(raw) == {"_up-to-date": ["true"], "service": ["794c177dfbae4f6784a4fa4f8"]}


def test_list_form_from_docker_py() -> None:
    assert parse_filters('{"name": ["dockerpytest_"]}') == {"name": ["dockerpytest_"]}


def test_both_forms_give_the_same_filters() -> None:
    assert parse_filters('{"label":{"a=b":true,"c":true}}') == parse_filters('{"label":["a=b","c"]}')


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_absent_filters_are_empty(raw: str | None) -> None:
    assert parse_filters(raw) == {}


@pytest.mark.parametrize("raw", ['{"name":', "[1,2]", '{"name": 5}', '{"name": [1]}'])
def test_malformed_filters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filters(raw)
    assert "\n" not in caught.value.message


# ---- services -----------------------------------------------------------------------------------------

def service(service_id: str, name: str, labels: dict[str, str] | None = None, global_mode: bool = False,
            image: str = "nginx", mode: Doc | None = None) -> Doc:
    mode = mode or ({"Global": {}} if global_mode else {"Replicated": {"Replicas": 1}})
    return {"ID": service_id, "Spec": {"Name": name, "Labels": labels or {}, "Mode": mode,
                                       "TaskTemplate": {"ContainerSpec": {"Image": image}}}}


WEB = service("abc123" + "0" * 19, "web", {"com.docker.stack.namespace": "app", "tier": "front"})
WEBAPI = service("abd456" + "0" * 19, "webapi", {"tier": "back"})
AGENT = service("xyz789" + "0" * 19, "agent", global_mode=True)
BATCH = service("job111" + "0" * 19, "batch", mode={"ReplicatedJob": {"TotalCompletions": 3}})
SERVICES = [WEB, WEBAPI, AGENT, BATCH]


def names(filters_json: str) -> list[str]:
    filters = parse_filters(filters_json)
    return [s["Spec"]["Name"] for s in SERVICES if match_service(s, filters)]


@pytest.mark.parametrize(
    ("filters_json", "expected"),
    [
        ("{}", ["web", "webapi", "agent", "batch"]),
        ('{"name":{"web":true}}', ["web", "webapi"]),  # name is a prefix
        ('{"name":["webapi","agent"]}', ["webapi", "agent"]),  # values are alternatives
        ('{"id":{"ab":true}}', ["web", "webapi"]),
        ('{"id":["abd"]}', ["webapi"]),
        ('{"label":{"com.docker.stack.namespace=app":true}}', ["web"]),
        ('{"label":["tier"]}', ["web", "webapi"]),  # key alone: present with any value
        ('{"label":["tier=back"]}', ["webapi"]),
        ('{"label":["tier","com.docker.stack.namespace=app"]}', ["web"]),  # every label must hold
        ('{"mode":["global"]}', ["agent"]),
        ('{"mode":{"replicated":true}}', ["web", "webapi"]),  # a replicated job is not "replicated"
        ('{"mode":["replicated-job"]}', ["batch"]),
        ('{"mode":["global-job","global"]}', ["agent"]),
        ('{"name":["web"],"mode":["global"]}', []),  # different keys must all hold
        ('{"runtime":["container"]}', ["web", "webapi", "agent", "batch"]),
    ],
)
def test_service_filters(filters_json: str, expected: list[str]) -> None:
    assert names(filters_json) == expected


@pytest.mark.parametrize(("filters_json", "message"), [
    ('{"foo":["x"]}', "invalid filter 'foo'"),
    ('{"mode":["job"]}', "invalid filter 'mode=job'"),
])
def test_bad_service_filters(filters_json: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        match_service(WEB, parse_filters(filters_json))


# ---- tasks --------------------------------------------------------------------------------------------

NODE_1: Doc = {"ID": "node1" + "1" * 20, "Spec": {"Role": "manager"}, "Description": {"Hostname": "alpha"}}
NODE_2: Doc = {"ID": "node2" + "2" * 20, "Spec": {"Role": "worker", "Name": "beta-name"},
          "Description": {"Hostname": "beta"}}
NODES = {n["ID"]: n for n in (NODE_1, NODE_2)}


def task(task_id: str, svc: Doc, node: Doc, slot: int, desired: str = "running", state: str = "running",
         spec: Doc | None = None) -> Doc:
    template = svc["Spec"]["TaskTemplate"]
    return {"ID": task_id, "ServiceID": svc["ID"], "NodeID": node["ID"], "Slot": slot, "DesiredState": desired,
            "Status": {"State": state}, "Spec": copy.deepcopy(spec if spec is not None else template)}


OLD_SPEC = {"ContainerSpec": {"Image": "nginx:old"}}
TASKS = [
    task("t1" + "a" * 23, WEB, NODE_1, 1),
    task("t2" + "a" * 23, WEB, NODE_2, 2),
    task("t3" + "a" * 23, WEB, NODE_1, 1, desired="shutdown", state="shutdown", spec=OLD_SPEC),
    task("t4" + "b" * 23, WEBAPI, NODE_2, 1),
    task("u5" + "c" * 23, AGENT, NODE_1, 0),
]
SERVICES_BY_ID = {s["ID"]: s for s in SERVICES}


def task_ids(filters_json: str, self_node_id: str | None = NODE_1["ID"]) -> list[str]:
    filters = parse_filters(filters_json)
    return [t["ID"][:2] for t in TASKS if match_task(t, filters, SERVICES_BY_ID, NODES, self_node_id)]


@pytest.mark.parametrize(
    ("filters_json", "expected"),
    [
        ("{}", ["t1", "t2", "t3", "t4", "u5"]),
        ('{"id":["t"]}', ["t1", "t2", "t3", "t4"]),
        ('{"id":{"u5":true}}', ["u5"]),
        ('{"service":{"' + WEB["ID"] + '":true}}', ["t1", "t2", "t3"]),  # full ID
        ('{"service":["abd4"]}', ["t4"]),  # ID prefix
        ('{"service":["agent"]}', ["u5"]),  # service name
        ('{"service":["we"]}', []),  # a name is matched exactly
        ('{"node":["' + NODE_2["ID"] + '"]}', ["t2", "t4"]),
        ('{"node":["alpha"]}', ["t1", "t3", "u5"]),  # hostname
        ('{"node":["beta-name"]}', ["t2", "t4"]),  # Spec.Name
        ('{"node":["self"]}', ["t1", "t3", "u5"]),
        ('{"desired-state":["running"]}', ["t1", "t2", "t4", "u5"]),
        ('{"desired-state":{"shutdown":true}}', ["t3"]),
        ('{"desired-state":["running","shutdown"]}', ["t1", "t2", "t3", "t4", "u5"]),
        ('{"desired-state":["accepted"]}', []),
        ('{"label":{"com.docker.stack.namespace=app":true}}', ["t1", "t2", "t3"]),  # the service's labels
        ('{"name":["web.1"]}', ["t1", "t3"]),
        ('{"name":["web"]}', ["t1", "t2", "t3", "t4"]),  # a prefix: webapi.1 too
        ('{"name":["agent.' + NODE_1["ID"] + '"]}', ["u5"]),  # global tasks are named by node
        ('{"_up-to-date":{"true":true},"service":{"' + WEB["ID"] + '":true}}', ["t1", "t2"]),
        ('{"_up-to-date":["1"]}', ["t1", "t2", "t4", "u5"]),
    ],
)
def test_task_filters(filters_json: str, expected: list[str]) -> None:
    assert task_ids(filters_json) == expected


def test_node_self_without_a_local_node_matches_nothing() -> None:
    assert task_ids('{"node":["self"]}', self_node_id=None) == []


def test_up_to_date_follows_a_service_update() -> None:
    updated_web = copy.deepcopy(WEB)
    updated_web["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = "nginx:new"
    services = dict(SERVICES_BY_ID, **{WEB["ID"]: updated_web})
    filters = parse_filters('{"_up-to-date":{"true":true}}')
    assert not match_task(TASKS[0], filters, services, NODES, None)


def test_task_of_a_deleted_service_is_never_up_to_date() -> None:
    assert not match_task(TASKS[0], {"_up-to-date": ["true"]}, {}, NODES, None)


@pytest.mark.parametrize(("filters_json", "message"), [
    ('{"mode":["global"]}', "invalid filter 'mode'"),
    ('{"desired-state":["sleeping"]}', "invalid filter 'desired-state=sleeping'"),
])
def test_bad_task_filters(filters_json: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        match_task(TASKS[0], parse_filters(filters_json), SERVICES_BY_ID, NODES, None)


# ---- nodes --------------------------------------------------------------------------------------------

NODE_LIST: list[Doc] = [
    {"ID": "aaa" + "1" * 22, "Spec": {"Role": "manager", "Labels": {"zone": "eu"}},
     "Description": {"Hostname": "node1", "Engine": {"Labels": {"ssd": "true"}}}},
    {"ID": "aab" + "2" * 22, "Spec": {"Role": "worker", "Labels": {"zone": "us"}},
     "Description": {"Hostname": "node2", "Engine": {"Labels": {}}}},
    {"ID": "ccc" + "3" * 22, "Spec": {"Role": "worker", "Labels": {}, "Name": "edge"},
     "Description": {"Hostname": "other"}},
]


def hostnames(filters_json: str) -> list[str]:
    filters = parse_filters(filters_json)
    return [n["Description"]["Hostname"] for n in NODE_LIST if match_node(n, filters, NODE_LIST[1]["ID"])]


@pytest.mark.parametrize(
    ("filters_json", "expected"),
    [
        ("{}", ["node1", "node2", "other"]),
        ('{"role": ["manager"]}', ["node1"]),  # docker-py's node list call
        ('{"role":{"worker":true}}', ["node2", "other"]),
        ('{"name":["node"]}', ["node1", "node2"]),
        ('{"name":["edge"]}', ["other"]),
        ('{"id":["aa"]}', ["node1", "node2"]),
        ('{"id":["self"]}', ["node2"]),
        ('{"membership":["accepted"]}', ["node1", "node2", "other"]),
        ('{"membership":["pending"]}', []),
        ('{"node.label":["zone"]}', ["node1", "node2"]),
        ('{"node.label":["zone=us"]}', ["node2"]),
        ('{"label":["ssd=true"]}', ["node1"]),  # engine labels, as in Docker
    ],
)
def test_node_filters(filters_json: str, expected: list[str]) -> None:
    assert hostnames(filters_json) == expected


@pytest.mark.parametrize(("filters_json", "message"), [
    ('{"foo":["x"]}', "invalid filter 'foo'"),
    ('{"role":["boss"]}', "invalid filter 'role=boss'"),
    ('{"membership":["maybe"]}', "invalid filter 'membership=maybe'"),
])
def test_bad_node_filters(filters_json: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        match_node(NODE_LIST[0], parse_filters(filters_json), None)
