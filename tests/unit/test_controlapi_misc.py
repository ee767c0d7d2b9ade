"""Nodes, the swarm object, task views and name / ID resolution in the control API."""

from __future__ import annotations

import json

import pytest

from shoal.errors import InvalidArgument, NotFound
from shoal.manager.controlapi.node import node_view, validate_node_spec_update
from shoal.manager.controlapi.resolve import node_names, resolve, service_name
from shoal.manager.controlapi.swarm import (
    default_swarm_spec,
    merge_swarm_spec,
    swarm_view,
    validate_swarm_spec,
    validate_swarm_spec_update,
)
from shoal.manager.controlapi.task import task_name, task_view
from shoal.timefmt import HOUR, SECOND
from shoal.types import Doc

# ---- nodes --------------------------------------------------------------------------------------------

MANAGER: Doc = {
    "ID": "efa69d1e1c5a42cca919206a1",
    "Version": {"Index": 11},
    "Spec": {"Labels": {}, "Role": "manager", "Availability": "active"},
    "Description": {"Hostname": "node1"},
    "Status": {"State": "ready", "Addr": "10.0.0.5"},
    "ManagerAddr": "10.0.0.5:2377",
    "ShoalSessionID": "secret-bookkeeping",
}
WORKER: Doc = {
    "ID": "bbb" + "2" * 22,
    "Spec": {"Labels": {}, "Role": "worker", "Availability": "active"},
    "Description": {"Hostname": "node2"},
    "Status": {"State": "ready", "Addr": "10.0.0.6"},
}


@pytest.mark.parametrize("body", [
    {"Labels": {}, "Role": "manager", "Availability": "drain"},  # docker node update --availability drain
    {"Labels": {}, "Role": "worker", "Availability": "drain"},  # docker node demote
])
def test_cli_node_update_bodies(body: Doc) -> None:
    assert validate_node_spec_update(MANAGER, body) == body


def test_node_update_keeps_current_role_and_availability_when_not_sent() -> None:
    spec = validate_node_spec_update(MANAGER, {"Labels": None, "Availability": ""})
    assert spec == {"Labels": {}, "Role": "manager", "Availability": "active"}


@pytest.mark.parametrize(("body", "field"), [
    ("drain", "node spec must be a JSON object"),
    ({"Role": "boss"}, "Role"),
    ({"Availability": "sleep"}, "Availability"),
    ({"Labels": {"zone": 1}}, "Labels"),
    ({"Labels": ["zone=eu"]}, "Labels"),
    ({"Role": 1}, "Role"),
])
def test_invalid_node_updates(body: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_node_spec_update(MANAGER, body)
    assert field in caught.value.message
    assert "\n" not in caught.value.message


def test_manager_view_has_manager_status_and_no_private_fields() -> None:
    view = node_view(MANAGER, leader_id=MANAGER["ID"], reachable=True)
    assert view["ManagerStatus"] == {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.5:2377"}
    assert "ManagerAddr" not in view
    assert "ShoalSessionID" not in view
    assert view["Description"] == MANAGER["Description"]
    assert "ManagerAddr" in MANAGER  # the stored document is untouched


def test_unreachable_follower_manager() -> None:
    view = node_view(MANAGER, leader_id="someone-else", reachable=False)
    assert view["ManagerStatus"]["Leader"] is False
    assert view["ManagerStatus"]["Reachability"] == "unreachable"


def test_manager_address_falls_back_to_status_address() -> None:
    node = {key: value for key, value in MANAGER.items() if key != "ManagerAddr"}
    assert node_view(node, None, True)["ManagerStatus"]["Addr"] == "10.0.0.5:2377"


def test_worker_view_has_no_manager_status() -> None:
    view = node_view(dict(WORKER, ManagerStatus={"Leader": False}), leader_id=MANAGER["ID"], reachable=True)
    assert "ManagerStatus" not in view


# ---- swarm --------------------------------------------------------------------------------------------

CLI_INIT_SPEC = json.loads(
    '{"Labels":null,"Orchestration":{},"Raft":{"ElectionTick":0,"HeartbeatTick":0},"Dispatcher":{},'
    '"CAConfig":{},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}}'
)
CLI_ROTATE_BODY = json.loads(
    '{"Name":"default","Labels":{},"Orchestration":{"TaskHistoryRetentionLimit":5},"Raft":{"SnapshotInterval":'
    '10000,"KeepOldSnapshots":0,"LogEntriesForSlowFollowers":500,"ElectionTick":10,"HeartbeatTick":1},'
    '"Dispatcher":{"HeartbeatPeriod":5000000000},"CAConfig":{"NodeCertExpiry":7776000000000000},"TaskDefaults":'
    '{},"EncryptionConfig":{"AutoLockManagers":false}}'
)


def test_default_swarm_spec() -> None:
    spec = default_swarm_spec()
    assert spec["Name"] == "default"
    assert spec["Orchestration"] == {"TaskHistoryRetentionLimit": 5}
    assert spec["Raft"] == {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                            "ElectionTick": 10, "HeartbeatTick": 1}
    assert spec["Dispatcher"] == {"HeartbeatPeriod": 1 * SECOND}
    assert spec["CAConfig"] == {"NodeCertExpiry": 90 * 24 * HOUR}
    assert spec["EncryptionConfig"] == {"AutoLockManagers": False}


def test_cli_init_zeros_mean_defaults() -> None:
    assert merge_swarm_spec(default_swarm_spec(), CLI_INIT_SPEC) == default_swarm_spec()


def test_docker_py_init_without_spec_gets_defaults() -> None:
    assert validate_swarm_spec(None) == default_swarm_spec()


def test_merge_keeps_sent_values_and_extra_keys() -> None:
    sent = {"Labels": {"env": "prod"}, "Raft": {"ElectionTick": 20},
            "CAConfig": {"ExternalCAs": [{"Protocol": "cfssl", "URL": "https://ca"}]},
            "Orchestration": {"TaskHistoryRetentionLimit": 0}}
    spec = merge_swarm_spec(default_swarm_spec(), sent)
    assert spec["Labels"] == {"env": "prod"}
    assert spec["Raft"]["ElectionTick"] == 20
    assert spec["Raft"]["HeartbeatTick"] == 1
    assert spec["CAConfig"] == {"NodeCertExpiry": 90 * 24 * HOUR,
                                "ExternalCAs": [{"Protocol": "cfssl", "URL": "https://ca"}]}
    # A pointer in Docker's types: 0 is a real choice, not "default".
    assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == 0


def test_cli_rotate_body_is_a_valid_update() -> None:
    assert validate_swarm_spec_update(CLI_ROTATE_BODY) == CLI_ROTATE_BODY


def test_unlimited_task_history_is_allowed() -> None:
    spec = validate_swarm_spec_update({"Orchestration": {"TaskHistoryRetentionLimit": -1}})
    assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == -1


@pytest.mark.parametrize(("body", "field"), [
    ([], "swarm spec must be a JSON object"),
    ({"Name": "other"}, "modification of cluster name is not allowed"),
    ({"Orchestration": {"TaskHistoryRetentionLimit": -2}}, "Orchestration.TaskHistoryRetentionLimit"),
    ({"Orchestration": {"TaskHistoryRetentionLimit": "5"}}, "Orchestration.TaskHistoryRetentionLimit"),
    ({"Dispatcher": {"HeartbeatPeriod": -1}}, "Dispatcher.HeartbeatPeriod"),
    ({"CAConfig": {"NodeCertExpiry": 60 * SECOND}}, "CAConfig.NodeCertExpiry"),
    ({"Raft": {"ElectionTick": "ten"}}, "Raft.ElectionTick"),
    ({"Labels": {"a": 1}}, "Labels"),
    ({"EncryptionConfig": {"AutoLockManagers": "yes"}}, "EncryptionConfig.AutoLockManagers"),
    ({"Raft": []}, "Raft"),
])
def test_invalid_swarm_updates(body: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_swarm_spec_update(body)
    assert field in caught.value.message
    assert "\n" not in caught.value.message


def test_swarm_view_hides_private_fields() -> None:
    cluster = {"ID": "c1", "Spec": default_swarm_spec(), "JoinTokens": {"Worker": "SWMTKN-1-w"},
               "ShoalRootCAKey": "-----BEGIN", "TLSInfo": {"TrustRoot": "x", "ShoalSerial": 3}}
    view = swarm_view(cluster)
    assert view == {"ID": "c1", "Spec": default_swarm_spec(), "JoinTokens": {"Worker": "SWMTKN-1-w"},
                    "TLSInfo": {"TrustRoot": "x"}}
    assert "ShoalRootCAKey" in cluster


# ---- tasks --------------------------------------------------------------------------------------------

def test_task_view_keeps_docker_keys_only_and_a_container_spec() -> None:
    stored = {"ID": "t1", "ServiceID": "s1", "Slot": 2, "NodeID": "n1", "DesiredState": "running",
              "Status": {"State": "running", "Timestamp": "2026-01-01T00:00:00Z"}, "Spec": {"ContainerSpec": None},
              "ShoalRestarts": 3, "Restarts": 1, "SpecVersion": {"Index": 4}, "CreatedAt": "x"}
    view = task_view(stored)
    assert view == {"ID": "t1", "ServiceID": "s1", "Slot": 2, "NodeID": "n1", "DesiredState": "running",
                    "Status": {"State": "running", "Timestamp": "2026-01-01T00:00:00Z"},
                    "Spec": {"ContainerSpec": {}}, "CreatedAt": "x", "Labels": {}}
    assert stored["Spec"] == {"ContainerSpec": None}


def test_task_view_of_a_task_without_spec() -> None:
    assert task_view({"ID": "t1"})["Spec"] == {"ContainerSpec": {}}


def test_task_names() -> None:
    assert task_name({"Slot": 3, "NodeID": "n1"}, "web") == "web.3"
    assert task_name({"Slot": 0, "NodeID": "n1"}, "agent") == "agent.n1"


# ---- resolution ---------------------------------------------------------------------------------------

def svc(service_id: str, name: str) -> Doc:
    return {"ID": service_id, "Spec": {"Name": name}}


SERVICES = [svc("abc111" + "0" * 19, "web"), svc("abc222" + "0" * 19, "api"), svc("zzz333" + "0" * 19, "abc")]


def test_resolve_by_full_id() -> None:
    assert resolve(SERVICES, SERVICES[1]["ID"], "service", service_name) is SERVICES[1]


def test_resolve_by_exact_name() -> None:
    assert resolve(SERVICES, "web", "service", service_name) is SERVICES[0]


def test_exact_name_wins_over_id_prefix() -> None:
    # "abc" is both a service name and a prefix of two IDs: the name wins, as in moby.
    assert resolve(SERVICES, "abc", "service", service_name) is SERVICES[2]


def test_resolve_by_unique_id_prefix() -> None:
    assert resolve(SERVICES, "abc2", "service", service_name) is SERVICES[1]


def test_ambiguous_prefix() -> None:
    with pytest.raises(InvalidArgument, match=r"^service ab is ambiguous \(2 matches found\)$"):
        resolve(SERVICES, "ab", "service", service_name)


@pytest.mark.parametrize("ref", ["nope", ""])
def test_not_found(ref: str) -> None:
    with pytest.raises(NotFound) as caught:
        resolve(SERVICES, ref, "service", service_name)
    assert caught.value.message == f"service {ref} not found"
    assert caught.value.status == 404


def test_nodes_resolve_by_hostname_or_spec_name() -> None:
    nodes = [MANAGER, dict(WORKER, Spec=dict(WORKER["Spec"], Name="edge"))]
    assert resolve(nodes, "node1", "node", node_names) is MANAGER
    assert resolve(nodes, "edge", "node", node_names) is nodes[1]
    assert resolve(nodes, "node2", "node", node_names) is nodes[1]
    with pytest.raises(NotFound, match="^node x not found$"):
        resolve(nodes, "x", "node", node_names)
