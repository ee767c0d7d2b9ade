"""The swarm (cluster) object as the control API sees it: its default spec, init/update checks, GET view.

Docker's clients send zero values for everything they do not set (`"Raft":{"ElectionTick":0}`), and swarm
reads a zero as "use the default" both at init and at update, so `merge_swarm_spec` fills zeros from the
defaults.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from shoal.errors import InvalidArgument
from shoal.manager.controlapi import (
    field_path,
    optional_bool,
    optional_duration,
    optional_int,
    optional_object,
    optional_object_list,
    optional_str,
    optional_str_map,
    shown,
    without_private_fields,
)
from shoal.timefmt import HOUR, SECOND
from shoal.types import Doc

DEFAULT_SWARM_NAME = "default"
# shoal's dispatcher heartbeat; Docker's default is 5 s, shoal notices a lost node sooner.
DEFAULT_HEARTBEAT_PERIOD = 1 * SECOND
DEFAULT_NODE_CERT_EXPIRY = 90 * 24 * HOUR
MIN_NODE_CERT_EXPIRY = 1 * HOUR  # swarmkit's ca.MinNodeCertExpiration
DEFAULT_TASK_HISTORY_RETENTION = 5


def default_swarm_spec() -> Doc:
    """The SwarmSpec a new swarm starts with (swarmkit's defaults)."""
    return {
        "Name": DEFAULT_SWARM_NAME,
        "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": DEFAULT_TASK_HISTORY_RETENTION},
        "Raft": {
            "SnapshotInterval": 10000,
            "KeepOldSnapshots": 0,
            "LogEntriesForSlowFollowers": 500,
            "ElectionTick": 10,
            "HeartbeatTick": 1,
        },
        "Dispatcher": {"HeartbeatPeriod": DEFAULT_HEARTBEAT_PERIOD},
        "CAConfig": {"NodeCertExpiry": DEFAULT_NODE_CERT_EXPIRY},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


# Pointers in Docker's Go types: a sent 0 is a real 0 ("keep no task history"); only null means default.
_FIELDS_WHERE_ZERO_COUNTS = frozenset({"TaskHistoryRetentionLimit", "KeepOldSnapshots"})


def merge_swarm_spec(default: Doc, sent: Doc | None) -> Doc:
    """`sent` over `default`, where a missing, null, zero or empty value means "keep the default".

    Keys only in `sent` (e.g. CAConfig.ExternalCAs) are kept as sent.
    """
    out = copy.deepcopy(default)
    for key, value in (sent or {}).items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge_swarm_spec(out[key], value)
        elif key not in out or not _is_zero(value) or (key in _FIELDS_WHERE_ZERO_COUNTS and value is not None):
            out[key] = copy.deepcopy(value)
    return out


def _is_zero(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == {} or value == []


def validate_swarm_spec(spec: object, min_cert_expiry: int = MIN_NODE_CERT_EXPIRY) -> Doc:
    """Check a SwarmSpec (the body of `POST /swarm/update`, or `Spec` of `/swarm/init`) and fill defaults.
    `min_cert_expiry` (ns) is swarmkit's floor of an hour; tests lower it to watch certificates renew."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise InvalidArgument(f'the swarm spec must be a JSON object such as {{"Name": "default"}} (got {shown(spec)})')
    name = optional_str(spec, "Name", "")
    if name and name != DEFAULT_SWARM_NAME:
        raise InvalidArgument(f'modification of cluster name is not allowed: keep Name "{DEFAULT_SWARM_NAME}"')
    optional_str_map(spec, "Labels", "")
    orchestration = optional_object(spec, "Orchestration", "") or {}
    limit = orchestration.get("TaskHistoryRetentionLimit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < -1):
        raise InvalidArgument(
            "Orchestration.TaskHistoryRetentionLimit must be a whole number >= 0, or -1 to keep all task "
            f"history (got {shown(limit)})"
        )
    raft = optional_object(spec, "Raft", "") or {}
    for key in ("SnapshotInterval", "KeepOldSnapshots", "LogEntriesForSlowFollowers", "ElectionTick",
                "HeartbeatTick"):
        optional_int(raft, key, "Raft")
    dispatcher = optional_object(spec, "Dispatcher", "") or {}
    optional_duration(dispatcher, "HeartbeatPeriod", "Dispatcher")
    ca_config = optional_object(spec, "CAConfig", "") or {}
    expiry = optional_duration(ca_config, "NodeCertExpiry", "CAConfig")
    if expiry and expiry < min_cert_expiry:
        raise InvalidArgument(
            f"CAConfig.NodeCertExpiry must be at least {min_cert_expiry // SECOND}s ({min_cert_expiry} ns) or 0 for "
            f"the default (got {expiry})"
        )
    optional_object_list(ca_config, "ExternalCAs", "CAConfig")
    for key in ("SigningCACert", "SigningCAKey"):
        optional_str(ca_config, key, "CAConfig")
    optional_int(ca_config, "ForceRotate", "CAConfig")
    encryption = optional_object(spec, "EncryptionConfig", "") or {}
    optional_bool(encryption, "AutoLockManagers", "EncryptionConfig")
    task_defaults = optional_object(spec, "TaskDefaults", "") or {}
    log_driver = optional_object(task_defaults, "LogDriver", "TaskDefaults")
    if log_driver is not None:
        optional_str(log_driver, "Name", field_path("TaskDefaults", "LogDriver"))
        optional_str_map(log_driver, "Options", field_path("TaskDefaults", "LogDriver"))
    return merge_swarm_spec(default_swarm_spec(), spec)


def validate_swarm_spec_update(spec: object, min_cert_expiry: int = MIN_NODE_CERT_EXPIRY) -> Doc:
    """The body of `POST /swarm/update`, checked; zeros take the defaults as swarm does."""
    return validate_swarm_spec(spec, min_cert_expiry)


def node_cert_expiry_seconds(cluster: Doc | None) -> int:
    """How long the node certificates the CA issues are valid (`--cert-expiry`, 90 days by default)."""
    ns = (((cluster or {}).get("Spec") or {}).get("CAConfig") or {}).get("NodeCertExpiry") or DEFAULT_NODE_CERT_EXPIRY
    return max(1, int(ns) // SECOND)


def min_cert_expiry_from_environment() -> int:
    """The floor of NodeCertExpiry in ns: an hour, or SHOAL_MIN_CERT_EXPIRY seconds (a test's setting)."""
    text = os.environ.get("SHOAL_MIN_CERT_EXPIRY", "")
    return int(text) * SECOND if text.isdigit() and int(text) > 0 else MIN_NODE_CERT_EXPIRY


def swarm_view(cluster_doc: Doc) -> Doc:
    """The body of `GET /swarm`: the cluster document without shoal's private fields."""
    return without_private_fields(cluster_doc)
