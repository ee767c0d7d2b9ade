"""Placement constraint parsing and matching."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import matches
from shoal.spec import Constraint, parse_constraint, parse_constraints
from shoal.types import Doc

NODE: Doc = {
    "ID": "abc123",
    "Spec": {"Role": "manager", "Availability": "active", "Labels": {"zone": "East", "Disk": "ssd"}},
    "Description": {"Hostname": "Node-1", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                    "Engine": {"EngineVersion": "27.0", "Labels": {"gpu": "yes"}}},
    "Status": {"State": "ready", "Addr": "10.0.0.7"},
}


def test_parse_both_operators_and_trims_spaces() -> None:
    assert parse_constraint("node.role == manager") == Constraint("node.role", "==", "manager")
    assert parse_constraint("node.labels.zone!=east") == Constraint("node.labels.zone", "!=", "east")
    assert parse_constraint("NODE.Labels.Zone==x").key == "node.labels.Zone", "label names keep their case"


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("node.role=manager", "use KEY==VALUE or KEY!=VALUE, e.g. node.role==manager"),
        ("node.role", "use KEY==VALUE or KEY!=VALUE"),
        ("==manager", 'key "" is invalid'),
        ("node.role==", 'value "" is invalid'),
        ("node.role==a<b", 'value "a<b" is invalid'),
        ("node.colour==red", 'unknown key "node.colour"'),
        ("node.labels.==x", 'unknown key "node.labels."'),
        ("node.ip==not-an-ip", "node.ip takes an address or a network"),
    ],
)
def test_malformed_expressions_raise_one_clear_line(expr: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_constraint(expr)
    assert caught.value.status == 400
    assert caught.value.message.startswith(f'invalid constraint "{expr}"')
    assert fragment in caught.value.message
    assert "\n" not in caught.value.message


def test_the_example_message_exactly() -> None:
    with pytest.raises(InvalidArgument, match=r'^invalid constraint "node.role=manager": use KEY==VALUE or '
                                              r'KEY!=VALUE, e.g. node.role==manager$'):
        parse_constraint("node.role=manager")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("node.id==abc123", True),
        ("node.id!=abc123", False),
        ("node.hostname==node-1", True),
        ("node.role==MANAGER", True),
        ("node.role!=worker", True),
        ("node.platform.os==linux", True),
        ("node.platform.arch==x86_64", True),
        ("node.labels.zone==east", True),
        ("node.labels.Disk==ssd", True),
        ("node.labels.disk==ssd", False),  # label names are case-sensitive
        ("node.labels.missing!=x", True),
        ("node.labels.missing==x", False),
        ("engine.labels.gpu==yes", True),
        ("engine.labels.gpu!=yes", False),
        ("node.ip==10.0.0.7", True),
        ("node.ip==10.0.0.0/24", True),
        ("node.ip!=10.0.1.0/24", True),
    ],
)
def test_matching(expr: str, expected: bool) -> None:
    assert matches([parse_constraint(expr)], NODE) is expected


def test_all_constraints_must_hold() -> None:
    assert matches(parse_constraints(["node.role==manager", "node.labels.zone==east"]), NODE)
    assert not matches(parse_constraints(["node.role==manager", "node.labels.zone==west"]), NODE)
    assert matches([], NODE)


def test_missing_description_reads_as_empty() -> None:
    bare: Doc = {"ID": "x", "Spec": {}, "Status": {}}
    assert matches(parse_constraints(["node.hostname!=h", "engine.labels.a!=b", "node.platform.os!=linux"]), bare)
    assert not matches([parse_constraint("node.platform.os==linux")], bare)


# ---- one parser: the API accepts exactly what the scheduler can place -----------------------------------

# (expression, whether NODE satisfies it, or None when the expression is malformed)
SHARED_TABLE: list[tuple[str, bool | None]] = [
    ("node.role==manager", True),
    ("Node.Role==manager", True),  # keys are case-insensitive: the API once refused this
    ("node.ip==10.0.0.0/24", True),  # a network: the API once refused this too
    ("node.ip==10.0.1.7", False),
    ("node.hostname==node-1", True),
    ("node.labels.zone!=east", False),
    ("engine.labels.gpu==yes", True),
    ("node.platform.os==linux", True),
    ("node.role=manager", None),
    ("node.colour==red", None),
    ("node.ip==not-an-ip", None),
    ("node.labels.==x", None),
    ("node.role==a<b", None),
]


@pytest.mark.parametrize(("expr", "satisfied"), SHARED_TABLE)
def test_the_api_and_the_scheduler_read_constraints_alike(expr: str, satisfied: bool | None) -> None:
    from shoal.manager.controlapi.service import validate_service_spec
    from shoal.manager.scheduler.pipeline import schedule

    body = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
                                            "Placement": {"Constraints": [expr]}}}
    task: Doc = {"ID": "t1", "ServiceID": "s1", "Slot": 1, "DesiredState": "running",
                 "Status": {"State": "pending"}, "Spec": body["TaskTemplate"]}
    result = schedule([task], [NODE], {}, now=0.0)
    if satisfied is None:
        with pytest.raises(InvalidArgument, match="invalid constraint"):
            validate_service_spec(body)
        assert not result.assigned
        assert "invalid constraint" in result.unassigned[0]["Status"]["Err"]
        return
    validate_service_spec(body)
    assert bool(result.assigned) is satisfied
