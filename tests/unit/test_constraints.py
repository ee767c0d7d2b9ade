"""Placement constraint parsing and matching."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import Constraint, matches, parse_constraint, parse_constraints
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
