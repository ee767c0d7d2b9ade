"""The JSON schema a compose file is checked against (after interpolation), in the compose specification's terms.

It is the part of the compose specification that swarm mode reads, with the types the specification gives
them, plus the keys swarm mode ignores (accepted, then reported as ignored, as `docker stack deploy` does).
Anything else is refused with the path of the offending key. Extension keys (`x-…`) are allowed everywhere
the specification allows them.
"""

from __future__ import annotations

from typing import Any

from shoal.spec import (
    ENDPOINT_MODES,
    PORT_PROTOCOLS,
    PUBLISH_MODES,
    RESTART_CONDITIONS,
    UPDATE_FAILURE_ACTIONS,
    UPDATE_ORDERS,
)

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
DURATION: Schema = {"type": "string"}  # "10s", "1m30s": checked when converted
NUMBERISH: Schema = {"type": ["number", "string"]}
STRINGS: Schema = {"type": "array", "items": STRING}
STRING_OR_LIST: Schema = {"oneOf": [STRING, STRINGS]}
# `environment`, `labels`, …: a list of "K=V" or a mapping of K to a scalar (or null).
LIST_OR_DICT: Schema = {"oneOf": [
    {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
    STRINGS,
]}
EXTENSIONS: Schema = {"^x-": {}}

RESOURCE: Schema = {"type": "object", "properties": {
    "cpus": NUMBERISH, "memory": STRING, "pids": {"type": "integer"},
    "devices": {}, "generic_resources": {},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

UPDATE_CONFIG: Schema = {"type": "object", "properties": {
    "parallelism": {"type": "integer", "minimum": 0}, "delay": DURATION,
    "failure_action": {"enum": list(UPDATE_FAILURE_ACTIONS)}, "monitor": DURATION,
    "max_failure_ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "order": {"enum": list(UPDATE_ORDERS)},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

DEPLOY: Schema = {"type": "object", "properties": {
    "mode": {"enum": ["replicated", "global", "replicated-job", "global-job"]},
    "replicas": {"type": "integer", "minimum": 0},
    "endpoint_mode": {"enum": list(ENDPOINT_MODES)},
    "labels": LIST_OR_DICT,
    "update_config": UPDATE_CONFIG,
    "rollback_config": UPDATE_CONFIG,
    "restart_policy": {"type": "object", "properties": {
        "condition": {"enum": list(RESTART_CONDITIONS)}, "delay": DURATION,
        "max_attempts": {"type": "integer", "minimum": 0}, "window": DURATION,
    }, "additionalProperties": False, "patternProperties": EXTENSIONS},
    "placement": {"type": "object", "properties": {
        "constraints": STRINGS,
        "preferences": {"type": "array", "items": {"type": "object", "properties": {"spread": STRING},
                                                   "additionalProperties": False}},
        "max_replicas_per_node": {"type": "integer", "minimum": 0},
    }, "additionalProperties": False, "patternProperties": EXTENSIONS},
    "resources": {"type": "object", "properties": {"limits": RESOURCE, "reservations": RESOURCE},
                  "additionalProperties": False, "patternProperties": EXTENSIONS},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

PORT_LONG: Schema = {"type": "object", "properties": {
    "target": {"type": ["integer", "string"]}, "published": {"type": ["integer", "string"]},
    "protocol": {"enum": list(PORT_PROTOCOLS)}, "mode": {"enum": list(PUBLISH_MODES)}, "name": STRING,
    "host_ip": STRING, "app_protocol": STRING,
}, "required": ["target"], "additionalProperties": False, "patternProperties": EXTENSIONS}

FILE_REFS: Schema = {"type": "array", "items": {"oneOf": [STRING, {"type": "object", "properties": {
    "source": STRING, "target": STRING, "uid": STRING, "gid": STRING, "mode": {"type": ["integer", "string"]},
}, "required": ["source"], "additionalProperties": False, "patternProperties": EXTENSIONS}]}}

HEALTHCHECK: Schema = {"type": "object", "properties": {
    "test": STRING_OR_LIST, "interval": DURATION, "timeout": DURATION, "start_period": DURATION,
    "start_interval": DURATION, "retries": {"type": "integer", "minimum": 0}, "disable": {"type": "boolean"},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

SERVICE_NETWORKS: Schema = {"oneOf": [
    STRINGS,
    {"type": "object", "additionalProperties": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
        "aliases": STRINGS, "ipv4_address": STRING, "ipv6_address": STRING, "priority": {"type": "number"},
        "driver_opts": {"type": "object"},
    }, "additionalProperties": False, "patternProperties": EXTENSIONS}]}},
]}

# A service's `volumes` entry in the long syntax (the short one, "SOURCE:TARGET[:MODE]", is a string).
SERVICE_VOLUME: Schema = {"type": "object", "properties": {
    "type": {"enum": ["bind", "volume", "tmpfs", "npipe", "cluster", "image"]}, "source": STRING, "target": STRING,
    "read_only": {"type": "boolean"}, "consistency": STRING,
    "bind": {"type": "object", "properties": {"propagation": STRING}, "additionalProperties": False,
             "patternProperties": EXTENSIONS},
    "volume": {"type": "object", "properties": {"nocopy": {"type": "boolean"}, "subpath": STRING},
               "additionalProperties": False, "patternProperties": EXTENSIONS},
    "tmpfs": {"type": "object", "properties": {"size": {"type": ["integer", "string"]}},
              "additionalProperties": False, "patternProperties": EXTENSIONS},
}, "required": ["type"], "additionalProperties": False, "patternProperties": EXTENSIONS}

ULIMITS: Schema = {"type": "object", "additionalProperties": {"oneOf": [
    {"type": "integer"},
    {"type": "object", "properties": {"soft": {"type": "integer"}, "hard": {"type": "integer"}},
     "required": ["soft", "hard"], "additionalProperties": False, "patternProperties": EXTENSIONS},
]}}

# Keys of a service that swarm mode does not use: accepted and reported (docker's "Ignoring unsupported options").
IGNORED_SERVICE_KEYS = frozenset({
    "build", "cgroup_parent", "container_name", "depends_on", "devices", "external_links", "links",
    "network_mode", "restart", "security_opt", "userns_mode", "privileged", "pid", "ipc", "shm_size",
    "expose", "volumes_from", "profiles", "pull_policy", "mem_limit", "cpus", "cpu_shares", "platform",
    "extends", "tmpfs", "domainname", "mac_address", "env_file",
})

SERVICE: Schema = {"type": "object", "properties": {
    "image": STRING,
    "command": {"oneOf": [STRING, STRINGS, {"type": "null"}]},
    "entrypoint": {"oneOf": [STRING, STRINGS, {"type": "null"}]},
    "environment": LIST_OR_DICT,
    "labels": LIST_OR_DICT,
    "deploy": DEPLOY,
    "ports": {"type": "array", "items": {"oneOf": [{"type": "integer"}, STRING, PORT_LONG]}},
    "networks": SERVICE_NETWORKS,
    "secrets": FILE_REFS,
    "configs": FILE_REFS,
    "healthcheck": HEALTHCHECK,
    "hostname": STRING,
    "user": STRING,
    "working_dir": STRING,
    "stop_grace_period": DURATION,
    "stop_signal": STRING,
    "tty": {"type": "boolean"},
    "stdin_open": {"type": "boolean"},
    "read_only": {"type": "boolean"},
    "init": {"type": "boolean"},
    "isolation": STRING,
    "volumes": {"type": "array", "items": {"oneOf": [STRING, SERVICE_VOLUME]}},
    "cap_add": STRINGS,
    "cap_drop": STRINGS,
    "sysctls": LIST_OR_DICT,
    "ulimits": ULIMITS,
    "oom_score_adj": {"type": "integer", "minimum": -1000, "maximum": 1000},
    "dns": STRING_OR_LIST,
    "dns_search": STRING_OR_LIST,
    "extra_hosts": {"oneOf": [STRINGS, {"type": "object", "additionalProperties": STRING}]},
    "logging": {"type": "object", "properties": {
        "driver": STRING,
        "options": {"type": "object", "additionalProperties": {"type": ["string", "number", "null"]}},
    }, "additionalProperties": False, "patternProperties": EXTENSIONS},
    **{key: {} for key in IGNORED_SERVICE_KEYS},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}  # `image` may come from a later file

NETWORK: Schema = {"type": ["object", "null"], "properties": {
    "name": STRING, "driver": STRING, "driver_opts": {"type": "object"},
    "external": {"oneOf": [{"type": "boolean"}, {"type": "object", "properties": {"name": STRING}}]},
    "internal": {"type": "boolean"}, "attachable": {"type": "boolean"}, "labels": LIST_OR_DICT,
    "ipam": {"type": "object", "properties": {
        "driver": STRING,
        "config": {"type": "array", "items": {"type": "object", "properties": {
            "subnet": STRING, "gateway": STRING, "ip_range": STRING, "aux_addresses": {"type": "object"},
        }, "additionalProperties": False}},
    }, "additionalProperties": False},
    "enable_ipv6": {"type": "boolean"},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

VOLUME: Schema = {"type": ["object", "null"], "properties": {
    "name": STRING, "driver": STRING, "driver_opts": {"type": "object"},
    "external": {"oneOf": [{"type": "boolean"}, {"type": "object", "properties": {"name": STRING}}]},
    "labels": LIST_OR_DICT,
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

FILE_OBJECT: Schema = {"type": "object", "properties": {
    "name": STRING, "file": STRING, "environment": STRING, "content": STRING,
    "external": {"oneOf": [{"type": "boolean"}, {"type": "object", "properties": {"name": STRING}}]},
    "labels": LIST_OR_DICT, "template_driver": STRING, "driver": STRING, "driver_opts": {"type": "object"},
}, "additionalProperties": False, "patternProperties": EXTENSIONS}

COMPOSE: Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "version": STRING,
        "name": STRING,
        "services": {"type": "object", "additionalProperties": SERVICE},
        "networks": {"type": "object", "additionalProperties": NETWORK},
        "secrets": {"type": "object", "additionalProperties": FILE_OBJECT},
        "configs": {"type": "object", "additionalProperties": FILE_OBJECT},
        "volumes": {"type": "object", "additionalProperties": VOLUME},
    },
    "additionalProperties": False,
    "patternProperties": EXTENSIONS,
}
