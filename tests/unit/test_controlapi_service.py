"""Service specs as clients send them: validation, normalisation, defaults, create / update / rollback."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import docker.types
import pytest

from shoal.errors import Conflict, InvalidArgument
from shoal.manager.controlapi.service import (
    effective_update_config,
    ingress_ports_in_use,
    insert_defaults,
    is_up_to_date,
    new_service,
    service_status,
    service_view,
    updated_service,
    validate_service_spec,
)
from shoal.spec import CONTAINER_SPEC_SUPPORT, Constraint, parse_constraint
from shoal.timefmt import SECOND, from_rfc3339
from shoal.types import Doc

NOW = 1_800_000_000.0
DIGEST = "sha256:" + "a" * 64

# ---- bodies recorded from docker CLI 28.2.2 and docker-py 7.1 (docs/docker-cli-trace.md) ----------------

CLI_CREATE_WEB = json.loads(
    '{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:1.25@' + DIGEST + '",'
    '"Args":["nginx","-g","daemon off;"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},'
    '"Placement":{"Platforms":[{"Architecture":"amd64","OS":"linux"},{"Architecture":"arm64","OS":"linux"}]},'
    '"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp",'
    '"TargetPort":80,"PublishedPort":80,"PublishMode":"ingress"}]}}'
)
CLI_CREATE_GLOBAL = json.loads(
    '{"Name":"agent","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"alpine:3.19@' + DIGEST + '",'
    '"Args":["sleep","1000"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},'
    '"Placement":{"Platforms":[{"Architecture":"amd64","OS":"linux"},{"Architecture":"arm64","OS":"linux"}]},'
    '"ForceUpdate":0},"Mode":{"Global":{}},"EndpointSpec":{"Mode":"vip"}}'
)
CLI_CREATE_UPDATE_FLAGS = json.loads(
    '{"Name":"web2","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:latest@' + DIGEST + '",'
    '"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},"Placement":{"Platforms":'
    '[{"Architecture":"amd64","OS":"linux"},{"Architecture":"arm64","OS":"linux"}]},"ForceUpdate":0},'
    '"Mode":{"Replicated":{}},"UpdateConfig":{"Parallelism":2,"Delay":10000000000,"FailureAction":"continue",'
    '"Monitor":5000000000,"MaxFailureRatio":0,"Order":"stop-first"},"EndpointSpec":{"Mode":"vip"}}'
)
# `docker service create -d --name web --mount type=volume,source=data,target=/data,volume-label=a=b,
# volume-driver=local,volume-opt=o=bind --mount type=bind,src=/srv,dst=/srv,readonly,bind-propagation=rslave
# --mount type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777 --cap-add NET_ADMIN --cap-drop mknod --dns 1.1.1.1
# --dns-search corp --dns-option ndots:2 --host db:10.0.0.1 --host gw:host-gateway --sysctl
# net.core.somaxconn=1024 --ulimit nofile=10:20 --ulimit nproc=5 --init -t --read-only --group video
# --log-driver json-file --log-opt max-size=1m --oom-score-adj 100 --hostname box busybox sleep 1`, recorded
# from docker CLI 28.2.2 (its registry look-up failed, so the image has no digest).
CLI_CREATE_CONTAINER_FLAGS = json.loads(
    '{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"busybox:latest","Args":["sleep","1"],'
    '"Hostname":"box","Groups":["video"],"Init":true,"TTY":true,"ReadOnly":true,"Mounts":[{"Type":"volume",'
    '"Source":"data","Target":"/data","VolumeOptions":{"Labels":{"a":"b"},"DriverConfig":{"Name":"local",'
    '"Options":{"o":"bind"}}}},{"Type":"bind","Source":"/srv","Target":"/srv","ReadOnly":true,"BindOptions":'
    '{"Propagation":"rslave"}},{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":1048576,"Mode":1023}}],'
    '"Hosts":["10.0.0.1 db","host-gateway gw"],"DNSConfig":{"Nameservers":["1.1.1.1"],"Search":["corp"],'
    '"Options":["ndots:2"]},"Sysctls":{"net.core.somaxconn":"1024"},"CapabilityAdd":["CAP_NET_ADMIN"],'
    '"CapabilityDrop":["CAP_MKNOD"],"Ulimits":[{"Name":"nofile","Hard":20,"Soft":10},{"Name":"nproc","Hard":5,'
    '"Soft":5}],"OomScoreAdj":100},"Resources":{"Limits":{},"Reservations":{}},"Placement":{},"LogDriver":'
    '{"Name":"json-file","Options":{"max-size":"1m"}},"ForceUpdate":0},"Mode":{"Replicated":{}},"EndpointSpec":'
    '{"Mode":"vip"}}'
)
STACK_CREATE_WEB = json.loads(
    '{"Name":"app_web","Labels":{"com.docker.stack.image":"nginx:1.25","com.docker.stack.namespace":"app"},'
    '"TaskTemplate":{"ContainerSpec":{"Image":"nginx:1.25@' + DIGEST + '","Labels":{"com.docker.stack.namespace":'
    '"app"},"Privileges":{"CredentialSpec":null,"SELinuxContext":null,"NoNewPrivileges":false},"Secrets":[{"File":'
    '{"Name":"db_pw","UID":"0","GID":"0","Mode":292},"SecretID":"8ca51e724fa3411ab06d55ae4","SecretName":'
    '"app_db_pw"}],"Configs":[{"File":{"Name":"/etc/site.conf","UID":"0","GID":"0","Mode":292},"ConfigID":'
    '"9ec1ecf65b3d4c7e85d3c9178","ConfigName":"app_site"}]},"Resources":{},"Placement":{"Platforms":[{"Architecture":'
    '"amd64","OS":"linux"},{"Architecture":"arm64","OS":"linux"}]},"Networks":[{"Target":"app_front","Aliases":'
    '["web"]}],"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"UpdateConfig":{"Parallelism":1,"Delay":'
    '5000000000,"MaxFailureRatio":0,"Order":""},"EndpointSpec":{"Ports":[{"Protocol":"tcp","TargetPort":80,'
    '"PublishedPort":8080,"PublishMode":"ingress"}]}}'
)
STACK_CREATE_WORKER = json.loads(
    '{"Name":"app_worker","Labels":{"com.docker.stack.image":"alpine:3.19","com.docker.stack.namespace":"app"},'
    '"TaskTemplate":{"ContainerSpec":{"Image":"alpine:3.19@' + DIGEST + '","Labels":{"com.docker.stack.namespace":'
    '"app"},"Args":["sleep","1000"],"Privileges":{"CredentialSpec":null,"SELinuxContext":null,"NoNewPrivileges":'
    'false}},"Resources":{},"Placement":{"Platforms":[{"Architecture":"amd64","OS":"linux"},{"Architecture":"arm64",'
    '"OS":"linux"}]},"Networks":[{"Target":"app_default","Aliases":["worker"]}],"ForceUpdate":0},"Mode":{"Global":'
    '{}},"EndpointSpec":{}}'
)
DOCKER_PY_CREATE = json.loads(
    '{"Name": "dockerpytest_x", "TaskTemplate": {"ContainerSpec": {"Image": "alpine:3.10", '
    '"Command": ["echo", "hello"], "Args": null}}}'
)


def minimal(**top: Any) -> Doc:
    spec: Doc = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "nginx"}}}
    spec.update(top)
    return spec


def with_container(**fields: Any) -> Doc:
    spec = minimal()
    spec["TaskTemplate"]["ContainerSpec"].update(fields)
    return spec


def with_template(**fields: Any) -> Doc:
    spec = minimal()
    spec["TaskTemplate"].update(fields)
    return spec


def with_ports(*ports: Doc, mode: str | None = None) -> Doc:
    endpoint: Doc = {"Ports": list(ports)}
    if mode is not None:
        endpoint["Mode"] = mode
    return minimal(EndpointSpec=endpoint)


# ---- recorded bodies validate and normalise -------------------------------------------------------------

def test_cli_replicated_body_is_kept_as_sent() -> None:
    spec = validate_service_spec(copy.deepcopy(CLI_CREATE_WEB))
    assert spec == CLI_CREATE_WEB  # already complete: nothing to change, image digest kept
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"].endswith(DIGEST)


def test_cli_global_body_keeps_global_mode_without_replicas() -> None:
    spec = validate_service_spec(CLI_CREATE_GLOBAL)
    assert spec["Mode"] == {"Global": {}}
    assert spec["EndpointSpec"] == {"Mode": "vip"}


def test_cli_body_without_replicas_gets_one_replica() -> None:
    spec = validate_service_spec(CLI_CREATE_UPDATE_FLAGS)
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["UpdateConfig"]["Parallelism"] == 2
    assert spec["UpdateConfig"]["FailureAction"] == "continue"


def test_stack_body_fills_endpoint_mode_and_default_order() -> None:
    spec = validate_service_spec(STACK_CREATE_WEB)
    assert spec["EndpointSpec"]["Mode"] == "vip"
    assert spec["UpdateConfig"]["Order"] == "stop-first"
    assert spec["UpdateConfig"]["Parallelism"] == 1
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "app_front", "Aliases": ["web"]}]
    # Secret references are kept as sent (the control API then resolves them against the store).
    assert spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretName"] == "app_db_pw"


def test_stack_global_body_with_empty_endpoint_spec() -> None:
    spec = validate_service_spec(STACK_CREATE_WORKER)
    assert spec["Mode"] == {"Global": {}}
    assert spec["EndpointSpec"] == {"Mode": "vip"}


def test_docker_py_minimal_body() -> None:
    spec = validate_service_spec(DOCKER_PY_CREATE)
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["Labels"] == {}
    assert spec["EndpointSpec"] == {"Mode": "vip"}
    assert spec["TaskTemplate"]["ContainerSpec"]["Command"] == ["echo", "hello"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Args"] is None


def test_validation_does_not_modify_the_body() -> None:
    body = copy.deepcopy(DOCKER_PY_CREATE)
    validate_service_spec(body)
    assert body == DOCKER_PY_CREATE


def test_port_defaults_are_filled() -> None:
    spec = validate_service_spec(with_ports({"TargetPort": 80}))
    assert spec["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 0, "PublishMode": "ingress"}
    ]


def test_unknown_fields_are_kept() -> None:
    spec = validate_service_spec(minimal(FutureField={"x": 1}))
    assert spec["FutureField"] == {"x": 1}


def test_missing_name_is_left_for_the_caller_to_generate() -> None:
    body = minimal()
    del body["Name"]
    assert validate_service_spec(body)["Name"] == ""


def test_null_mode_entries_are_dropped() -> None:
    spec = validate_service_spec(minimal(Mode={"Replicated": {"Replicas": 3}, "Global": None}))
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}


@pytest.mark.parametrize(
    "constraint",
    ["node.role==manager", "node.role != worker", "node.labels.zone==eu-1", "engine.labels.ssd==true",
     "node.hostname!=node1", "node.platform.os==linux", "node.platform.arch==x86_64", "node.id==abc"],
)
def test_valid_constraints(constraint: str) -> None:
    validate_service_spec(with_template(Placement={"Constraints": [constraint]}))


def test_parse_constraint() -> None:
    assert parse_constraint("node.labels.zone == eu-1") == Constraint("node.labels.zone", "==", "eu-1")
    assert parse_constraint("node.role!=manager") == Constraint("node.role", "!=", "manager")


# ---- each invalid body: one line naming the field ------------------------------------------------------

INVALID: list[tuple[str, object, str]] = [
    ("not an object", ["web"], "must be a JSON object"),
    ("replicas as text", minimal(Mode={"Replicated": {"Replicas": "three"}}), "Mode.Replicated.Replicas"),
    ("negative replicas", minimal(Mode={"Replicated": {"Replicas": -1}}), "Mode.Replicated.Replicas"),
    ("replicas as bool", minimal(Mode={"Replicated": {"Replicas": True}}), "Mode.Replicated.Replicas"),
    ("both modes", minimal(Mode={"Replicated": {"Replicas": 1}, "Global": {}}), "not Replicated and Global"),
    ("two job modes", minimal(Mode={"ReplicatedJob": {}, "GlobalJob": {}}), "not ReplicatedJob and GlobalJob"),
    ("job and replicated", minimal(Mode={"Replicated": {}, "GlobalJob": {}}), "not Replicated and GlobalJob"),
    ("negative max concurrent", minimal(Mode={"ReplicatedJob": {"MaxConcurrent": -1}}),
     "Mode.ReplicatedJob.MaxConcurrent must be a whole number from 0 to 100000"),
    ("completions as text", minimal(Mode={"ReplicatedJob": {"TotalCompletions": "5"}}),
     "Mode.ReplicatedJob.TotalCompletions"),
    ("completions too many", minimal(Mode={"ReplicatedJob": {"TotalCompletions": 100_001}}),
     "Mode.ReplicatedJob.TotalCompletions"),
    ("a job nothing may run", minimal(Mode={"ReplicatedJob": {"MaxConcurrent": 0, "TotalCompletions": 3}}),
     "MaxConcurrent is 0, so none of the job's 3 tasks would ever run"),
    ("job mode not object", minimal(Mode={"GlobalJob": 1}), "Mode.GlobalJob"),
    ("job with update config", minimal(Mode={"GlobalJob": {}}, UpdateConfig={"Parallelism": 1}),
     "UpdateConfig does not apply to jobs (Mode.GlobalJob)"),
    ("job with rollback config", minimal(Mode={"ReplicatedJob": {}}, RollbackConfig={}),
     "RollbackConfig does not apply to jobs (Mode.ReplicatedJob)"),
    ("mode not object", minimal(Mode="global"), "Mode"),
    ("bad name", minimal(Name="-web"), "invalid service name"),
    ("name with space", minimal(Name="my web"), "invalid service name"),
    ("name too long", minimal(Name="a" * 64), "at most 63"),
    ("name not string", minimal(Name=5), "Name"),
    ("labels not map", minimal(Labels=["a=b"]), "Labels"),
    ("no task template", {"Name": "web"}, "TaskTemplate is required"),
    ("no container spec", {"Name": "web", "TaskTemplate": {}}, "TaskTemplate.ContainerSpec is required"),
    ("empty image", with_container(Image=""), "TaskTemplate.ContainerSpec.Image"),
    ("image not string", with_container(Image=["nginx"]), "TaskTemplate.ContainerSpec.Image"),
    ("env not list", with_container(Env="A=1"), "TaskTemplate.ContainerSpec.Env"),
    ("env not strings", with_container(Env=["A=1", 2]), "TaskTemplate.ContainerSpec.Env"),
    ("args not list", with_container(Args="sleep 10"), "TaskTemplate.ContainerSpec.Args"),
    ("command not list", with_container(Command="sleep"), "TaskTemplate.ContainerSpec.Command"),
    ("tty not bool", with_container(TTY="yes"), "TaskTemplate.ContainerSpec.TTY"),
    ("negative stop grace", with_container(StopGracePeriod=-1), "TaskTemplate.ContainerSpec.StopGracePeriod"),
    ("duplicate mount", with_container(Mounts=[{"Source": "/d", "Target": "/d"}, {"Source": "/e", "Target": "/d"}]),
     "Mounts[1].Target"),
    ("bind mount without source", with_container(Mounts=[{"Type": "bind", "Target": "/d"}]),
     "TaskTemplate.ContainerSpec.Mounts[0].Source must be the path on the node for a bind mount"),
    ("bad bind propagation", with_container(Mounts=[{"Source": "/s", "Target": "/s",
                                                     "BindOptions": {"Propagation": "sideways"}}]),
     "TaskTemplate.ContainerSpec.Mounts[0].BindOptions.Propagation must be one of"),
    ("negative health interval", with_container(Healthcheck={"Interval": -5}),
     "TaskTemplate.ContainerSpec.Healthcheck.Interval"),
    ("negative health retries", with_container(Healthcheck={"Retries": -1}),
     "TaskTemplate.ContainerSpec.Healthcheck.Retries"),
    ("plugin runtime", with_template(PluginSpec={"Name": "x"}), "TaskTemplate.PluginSpec"),
    ("bad restart condition", with_template(RestartPolicy={"Condition": "always"}),
     "TaskTemplate.RestartPolicy.Condition"),
    ("negative restart delay", with_template(RestartPolicy={"Delay": -1}), "TaskTemplate.RestartPolicy.Delay"),
    ("negative max attempts", with_template(RestartPolicy={"MaxAttempts": -2}),
     "TaskTemplate.RestartPolicy.MaxAttempts"),
    ("negative window", with_template(RestartPolicy={"Window": -1}), "TaskTemplate.RestartPolicy.Window"),
    ("preference not spread", with_template(Placement={"Preferences": [{"Binpack": {}}]}),
     "TaskTemplate.Placement.Preferences[0] must be"),
    ("spread over a non-label", with_template(Placement={"Preferences": [
        {"Spread": {"SpreadDescriptor": "node.hostname"}}]}), 'invalid placement preference "spread=node.hostname"'),
    ("negative max replicas", with_template(Placement={"MaxReplicas": -1}), "TaskTemplate.Placement.MaxReplicas"),
    ("platform not an object", with_template(Placement={"Platforms": ["linux"]}), "TaskTemplate.Placement.Platforms"),
    ("generic resources", with_template(Resources={"Reservations": {"GenericResources": [{"DiscreteResourceSpec": {
        "Kind": "gpu", "Value": 1}}]}}), "TaskTemplate.Resources.Reservations.GenericResources is not supported"),
    ("single = constraint", with_template(Placement={"Constraints": ["node.role=manager"]}),
     'invalid constraint "node.role=manager": use KEY==VALUE or KEY!=VALUE, e.g. node.role==manager'),
    ("unknown constraint key", with_template(Placement={"Constraints": ["node.colour==red"]}),
     'unknown key "node.colour"'),
    ("empty constraint value", with_template(Placement={"Constraints": ["node.role=="]}), "invalid constraint"),
    ("bare label prefix", with_template(Placement={"Constraints": ["node.labels.==x"]}), "unknown key"),
    ("constraints not list", with_template(Placement={"Constraints": "node.role==manager"}),
     "TaskTemplate.Placement.Constraints"),
    ("tiny cpu limit", with_template(Resources={"Limits": {"NanoCPUs": 10}}),
     "TaskTemplate.Resources.Limits.NanoCPUs"),
    ("tiny memory", with_template(Resources={"Reservations": {"MemoryBytes": 1024}}),
     "TaskTemplate.Resources.Reservations.MemoryBytes"),
    ("network without target", with_template(Networks=[{"Aliases": ["x"]}]), "TaskTemplate.Networks[0].Target"),
    # Fields no executor acts on: refused by name, with what to do instead.
    ("credential spec", with_container(Privileges={"CredentialSpec": {"File": "spec.json"}}),
     "TaskTemplate.ContainerSpec.Privileges.CredentialSpec.File is not supported by shoal: remove it (credential "
     "specs are for Windows containers)"),
    ("selinux", with_container(Privileges={"SELinuxContext": {"Disable": False, "Type": "svirt_t"}}),
     "TaskTemplate.ContainerSpec.Privileges.SELinuxContext.Type is not supported by shoal"),
    ("hyperv isolation", with_container(Isolation="hyperv"),
     'TaskTemplate.ContainerSpec.Isolation is not supported by shoal: remove it or give "default"'),
    # Fields the docker executor acts on, with values it cannot pass on.
    ("privileges not object", with_container(Privileges=True), "TaskTemplate.ContainerSpec.Privileges must be"),
    ("unknown seccomp mode", with_container(Privileges={"Seccomp": {"Mode": "strict"}}),
     "TaskTemplate.ContainerSpec.Privileges.Seccomp.Mode must be one of"),
    ("custom seccomp without profile", with_container(Privileges={"Seccomp": {"Mode": "custom"}}),
     "TaskTemplate.ContainerSpec.Privileges.Seccomp.Profile must be a seccomp profile"),
    ("seccomp profile not base64 json", with_container(Privileges={"Seccomp": {"Mode": "custom", "Profile": "{}"}}),
     "Privileges.Seccomp.Profile must be a seccomp profile (its JSON, base64-encoded)"),
    ("seccomp profile without custom", with_container(Privileges={"Seccomp": {"Profile": "e30="}}),
     'Privileges.Seccomp.Profile is used with Mode "custom" only'),
    ("unknown apparmor mode", with_container(Privileges={"AppArmor": {"Mode": "enforce"}}),
     "TaskTemplate.ContainerSpec.Privileges.AppArmor.Mode must be one of"),
    ("host without name", with_container(Hosts=["10.0.0.1"]),
     'TaskTemplate.ContainerSpec.Hosts[0] must be "IP_ADDRESS NAME [ALIAS...]"'),
    ("host in docker's run syntax", with_container(Hosts=["db:10.0.0.1"]), "TaskTemplate.ContainerSpec.Hosts[0]"),
    ("host with a bad address", with_container(Hosts=["10.0.0 db"]), "TaskTemplate.ContainerSpec.Hosts[0]"),
    ("dns server not an address", with_container(DNSConfig={"Nameservers": ["dns.example"]}),
     "TaskTemplate.ContainerSpec.DNSConfig.Nameservers[0] must be an IP address"),
    ("dns search with a line break", with_container(DNSConfig={"Search": ["corp\nnameserver 6.6.6.6"]}),
     "TaskTemplate.ContainerSpec.DNSConfig.Search[0] must be one word"),
    ("capability not a name", with_container(CapabilityAdd=["NET ADMIN"]),
     "TaskTemplate.ContainerSpec.CapabilityAdd: \"NET ADMIN\" is not a capability"),
    ("sysctl value not text", with_container(Sysctls={"net.core.somaxconn": 1024}),
     "TaskTemplate.ContainerSpec.Sysctls must be an object of string values"),
    ("unknown ulimit", with_container(Ulimits=[{"Name": "files", "Soft": 1, "Hard": 1}]),
     "TaskTemplate.ContainerSpec.Ulimits[0].Name must be one of"),
    ("ulimit soft above hard", with_container(Ulimits=[{"Name": "nofile", "Soft": 2048, "Hard": 1024}]),
     "TaskTemplate.ContainerSpec.Ulimits[0]: the soft limit must be at most the hard limit"),
    ("ulimit given twice", with_container(Ulimits=[{"Name": "nproc", "Soft": 1, "Hard": 1},
                                                   {"Name": "nproc", "Soft": 2, "Hard": 2}]),
     'TaskTemplate.ContainerSpec.Ulimits[1].Name "nproc" is given twice'),
    ("oom score out of range", with_container(OomScoreAdj=1001),
     "TaskTemplate.ContainerSpec.OomScoreAdj must be a whole number from -1000 to 1000"),
    ("log options not text", with_template(LogDriver={"Name": "json-file", "Options": {"max-file": 3}}),
     "TaskTemplate.LogDriver.Options must be an object of string values"),
    ("plugin runtime name", with_template(Runtime="plugin"), 'TaskTemplate.Runtime "plugin" is not supported'),
    ("network driver options", with_template(Networks=[{"Target": "back", "DriverOpts": {"k": "v"}}]),
     "TaskTemplate.Networks[0].DriverOpts is not supported by shoal: remove it"),
    ("top-level network driver options", minimal(Networks=[{"Target": "back", "DriverOpts": {"k": "v"}}]),
     "Networks[0].DriverOpts is not supported by shoal"),
    ("named pipe mount", with_container(Mounts=[{"Type": "npipe", "Source": r"\\.\pipe\x", "Target": "/p"}]),
     'TaskTemplate.ContainerSpec.Mounts[0].Type "npipe" is not supported by shoal: use "bind", "volume" or "tmpfs"'),
    ("cluster volume mount", with_container(Mounts=[{"Type": "cluster", "Source": "vol", "Target": "/v"}]),
     'TaskTemplate.ContainerSpec.Mounts[0].Type "cluster" is not supported by shoal'),
    ("unknown mount type", with_container(Mounts=[{"Type": "overlay", "Target": "/v"}]),
     'Mounts[0].Type "overlay" is not supported by shoal'),
    ("volume options on a bind mount", with_container(Mounts=[{"Type": "bind", "Source": "/srv", "Target": "/s",
                                                               "VolumeOptions": {"NoCopy": True}}]),
     'TaskTemplate.ContainerSpec.Mounts[0].VolumeOptions is for volume mounts, not bind: remove it or set Type'),
    ("cluster options", with_container(Mounts=[{"Type": "volume", "Target": "/v", "ClusterOptions": {"x": 1}}]),
     "Mounts[0].ClusterOptions is for cluster mounts, not volume"),
    ("a mount without type is a bind", with_container(Mounts=[{"Target": "/t", "TmpfsOptions": {"SizeBytes": 1}}]),
     "Mounts[0].TmpfsOptions is for tmpfs mounts, not bind"),
    ("unknown mount option", with_container(Mounts=[{"Type": "bind", "Source": "/s", "Target": "/s",
                                                     "BindOptions": {"Bogus": True}}]),
     "TaskTemplate.ContainerSpec.Mounts[0].BindOptions.Bogus is not supported by shoal: remove it"),
    ("mount read-only not bool", with_container(Mounts=[{"Target": "/s", "ReadOnly": "yes"}]),
     "TaskTemplate.ContainerSpec.Mounts[0].ReadOnly must be true or false"),
    ("negative parallelism", minimal(UpdateConfig={"Parallelism": -1}), "UpdateConfig.Parallelism"),
    ("bad failure action", minimal(UpdateConfig={"FailureAction": "retry"}), "UpdateConfig.FailureAction"),
    ("rollback cannot roll back", minimal(RollbackConfig={"FailureAction": "rollback"}),
     "RollbackConfig.FailureAction"),
    ("ratio above one", minimal(UpdateConfig={"MaxFailureRatio": 1.5}), "UpdateConfig.MaxFailureRatio"),
    ("negative ratio", minimal(RollbackConfig={"MaxFailureRatio": -0.1}), "RollbackConfig.MaxFailureRatio"),
    ("bad order", minimal(UpdateConfig={"Order": "random"}), "UpdateConfig.Order"),
    ("negative delay", minimal(UpdateConfig={"Delay": -1}), "UpdateConfig.Delay"),
    ("negative monitor", minimal(RollbackConfig={"Monitor": -1}), "RollbackConfig.Monitor"),
    ("update config not object", minimal(UpdateConfig=[1]), "UpdateConfig"),
    ("bad endpoint mode", minimal(EndpointSpec={"Mode": "round-robin"}), "EndpointSpec.Mode"),
    ("target port zero", with_ports({"TargetPort": 0}), "EndpointSpec.Ports[0].TargetPort"),
    ("target port too big", with_ports({"TargetPort": 70000}), "EndpointSpec.Ports[0].TargetPort"),
    ("target port missing", with_ports({"PublishedPort": 80}), "EndpointSpec.Ports[0].TargetPort"),
    ("published port negative", with_ports({"TargetPort": 80, "PublishedPort": -1}),
     "EndpointSpec.Ports[0].PublishedPort"),
    ("published port too big", with_ports({"TargetPort": 80, "PublishedPort": 65536}),
     "EndpointSpec.Ports[0].PublishedPort"),
    ("bad protocol", with_ports({"TargetPort": 80, "Protocol": "http"}), "EndpointSpec.Ports[0].Protocol"),
    ("bad publish mode", with_ports({"TargetPort": 80, "PublishMode": "global"}),
     "EndpointSpec.Ports[0].PublishMode"),
    ("duplicate published port",
     with_ports({"TargetPort": 80, "PublishedPort": 8080}, {"TargetPort": 81, "PublishedPort": 8080}),
     "EndpointSpec.Ports[1]: published port 8080/tcp is given twice"),
    ("ingress with dnsrr", with_ports({"TargetPort": 80}, mode="dnsrr"), "dnsrr"),
    ("ports not list", minimal(EndpointSpec={"Ports": {"TargetPort": 80}}), "EndpointSpec.Ports"),
]


@pytest.mark.parametrize(("body", "expected"), [(body, expected) for _, body, expected in INVALID],
                         ids=[case for case, _, _ in INVALID])
def test_invalid_spec_is_refused_with_one_line_naming_the_field(body: object, expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_service_spec(body)
    message = caught.value.message
    assert expected in message
    assert "\n" not in message
    assert caught.value.status == 400


def test_same_published_port_on_different_protocols_is_fine() -> None:
    spec = validate_service_spec(with_ports(
        {"TargetPort": 53, "PublishedPort": 53, "Protocol": "tcp"},
        {"TargetPort": 53, "PublishedPort": 53, "Protocol": "udp"},
    ))
    assert [port["Protocol"] for port in spec["EndpointSpec"]["Ports"]] == ["tcp", "udp"]


def test_several_auto_published_ports_do_not_clash() -> None:
    validate_service_spec(with_ports({"TargetPort": 80}, {"TargetPort": 81}))


def test_host_ports_may_use_dnsrr() -> None:
    validate_service_spec(with_ports({"TargetPort": 80, "PublishedPort": 80, "PublishMode": "host"}, mode="dnsrr"))


# ---- fields shoal does not act on: refused, unless they hold their zero value ---------------------------

# A value that sets each ContainerSpec field no executor acts on (Privileges by member, as in the table).
UNSUPPORTED_VALUES: dict[str, object] = {
    "Privileges.CredentialSpec": {"Registry": "spec"},
    "Privileges.SELinuxContext": {"Level": "s0:c100,c200"},
    "Isolation": "process",
}


def test_every_field_no_executor_acts_on_has_a_refusal_case() -> None:
    assert set(UNSUPPORTED_VALUES) == {key for key, support in CONTAINER_SPEC_SUPPORT.items()
                                       if not support.executors}


def _container_with(field: str, value: object) -> Doc:
    parent, _, member = field.partition(".")
    return with_container(**{parent: {member: value} if member else value})


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED_VALUES.items(), ids=list(UNSUPPORTED_VALUES))
def test_a_field_no_executor_acts_on_is_refused_with_one_line_naming_it(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_service_spec(_container_with(field, value))
    message = caught.value.message
    assert message.startswith(f"TaskTemplate.ContainerSpec.{field}")
    assert "is not supported by shoal: remove it" in message and "\n" not in message


# A value that sets each field only the docker executor acts on, as the docker CLI, docker-py or stack deploy
# send them: the API takes them (the process executor rejects such tasks on its nodes).
DOCKER_ONLY_VALUES: dict[str, object] = {
    "Hostname": "web-1",
    "Groups": ["video"],
    "TTY": True,
    "OpenStdin": True,
    "ReadOnly": True,
    "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}],
    "Init": True,
    "Hosts": ["10.0.0.1 db db.local", "host-gateway gw", "fd00::1 v6"],
    "DNSConfig": {"Nameservers": ["10.0.0.2", "fd00::53"], "Search": ["corp.example", "."], "Options": ["ndots:2"]},
    "Sysctls": {"net.core.somaxconn": "1024"},
    "CapabilityAdd": ["CAP_NET_ADMIN", "sys_time"],
    "CapabilityDrop": ["ALL"],
    "Ulimits": [{"Name": "nofile", "Hard": 2048, "Soft": 1024}, {"Name": "core", "Hard": -1, "Soft": -1},
                {"Name": "stack", "Hard": -1, "Soft": 8192}],
    "OomScoreAdj": -500,
    "Privileges.NoNewPrivileges": True,
    "Privileges.Seccomp": {"Mode": "custom", "Profile": base64.b64encode(b'{"defaultAction": "SCMP_ACT_ALLOW"}')
                                                                .decode()},
    "Privileges.AppArmor": {"Mode": "disabled"},
}


def test_every_field_only_the_docker_executor_acts_on_has_an_acceptance_case() -> None:
    assert set(DOCKER_ONLY_VALUES) == {key for key, support in CONTAINER_SPEC_SUPPORT.items()
                                       if support.executors == {"docker"}}


@pytest.mark.parametrize(("field", "value"), DOCKER_ONLY_VALUES.items(), ids=list(DOCKER_ONLY_VALUES))
def test_a_field_only_the_docker_executor_acts_on_is_accepted_as_sent(field: str, value: object) -> None:
    spec = validate_service_spec(_container_with(field, value))
    assert spec["TaskTemplate"]["ContainerSpec"] == _container_with(field, value)["TaskTemplate"]["ContainerSpec"]


@pytest.mark.parametrize("driver", [{"Name": "json-file", "Options": {"max-size": "1m", "max-file": "3"}},
                                    {"Name": "syslog"}, {"Name": "", "Options": {"max-size": "1m"}}],
                         ids=["json-file with options", "syslog", "the engine's default with options"])
def test_a_log_driver_is_accepted_for_the_docker_executor(driver: Doc) -> None:
    assert validate_service_spec(with_template(LogDriver=driver))["TaskTemplate"]["LogDriver"] == driver


def test_zero_values_of_refused_fields_are_accepted() -> None:
    """What clients send when a flag is not given: null, false, 0, "", [], {} and objects of those."""
    zeros = {"Privileges": {"CredentialSpec": None, "SELinuxContext": {"Disable": False, "User": ""},
                            "Seccomp": {"Mode": "default", "Profile": None}, "AppArmor": {"Mode": ""},
                            "NoNewPrivileges": False},
             "Hosts": [], "DNSConfig": {"Nameservers": None, "Search": [], "Options": None}, "Isolation": "default",
             "Sysctls": {}, "CapabilityAdd": None, "CapabilityDrop": [], "Ulimits": [], "OomScoreAdj": 0}
    body = with_container(**zeros)
    body["TaskTemplate"].update(LogDriver={"Name": "", "Options": {}}, Runtime="container",
                                Networks=[{"Target": "back", "DriverOpts": {}}])
    body["TaskTemplate"]["ContainerSpec"]["Mounts"] = [
        {"Type": "bind", "Source": "/srv", "Target": "/srv", "VolumeOptions": {"NoCopy": False, "Labels": {}}}]
    spec = validate_service_spec(body)
    assert spec["TaskTemplate"]["ContainerSpec"]["Privileges"] == zeros["Privileges"]  # kept as sent
    assert validate_service_spec(with_container(Isolation=""))


def test_mounts_of_each_type_the_docker_executor_makes_are_accepted() -> None:
    """The API cannot know where a task lands: a process-executor node rejects such tasks itself."""
    body = with_container(Hostname="web-1", Groups=["video"], TTY=True, OpenStdin=True, ReadOnly=True, Init=True,
                          Mounts=[{"Type": "volume", "Source": "data", "Target": "/data",
                                   "VolumeOptions": {"NoCopy": True, "Labels": {"team": "a"},
                                                     "DriverConfig": {"Name": "local", "Options": {"o": "bind"}}}},
                                  {"Type": "bind", "Source": "/srv", "Target": "/srv",
                                   "BindOptions": {"Propagation": "rslave", "NonRecursive": True}},
                                  {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 1 << 20,
                                                                                       "Mode": 0o1777}},
                                  {"Source": "/var/log", "Target": "/logs", "ReadOnly": True}])
    assert validate_service_spec(body)["TaskTemplate"]["ContainerSpec"]["Mounts"][3] == {
        "Source": "/var/log", "Target": "/logs", "ReadOnly": True}


def _docker_py_body() -> Doc:
    """A service body as docker-py's types build it when callers pass the empty defaults they often do."""
    container = docker.types.ContainerSpec(
        "busybox", ["sleep", "1d"], init=False, privileges=docker.types.Privileges(),
        dns_config=docker.types.DNSConfig(), mounts=["data:/data:ro", "/srv:/srv"], hosts={}, cap_add=[],
        sysctls={}, tty=False, read_only=False, open_stdin=False, groups=[])
    template = docker.types.TaskTemplate(container, resources=docker.types.Resources(),
                                         restart_policy=docker.types.RestartPolicy(), force_update=0)
    return {"Name": "pyweb", "Labels": {}, "TaskTemplate": dict(template),
            "Mode": dict(docker.types.ServiceMode("replicated", 2)),
            "EndpointSpec": dict(docker.types.EndpointSpec(ports={8080: 80}))}


def _stack_body_with_volumes() -> Doc:
    """A `docker stack deploy` body for a service with a named volume, a bind mount and a tmpfs, as docker/cli's
    compose converter (`cli/compose/convert/volume.go`) builds them: a named volume always carries VolumeOptions
    with the stack's label."""
    body = copy.deepcopy(STACK_CREATE_WORKER)
    body["TaskTemplate"]["ContainerSpec"]["Mounts"] = [
        {"Type": "volume", "Source": "app_data", "Target": "/data", "VolumeOptions": {
            "Labels": {"com.docker.stack.namespace": "app"}}},
        {"Type": "bind", "Source": "/srv", "Target": "/srv", "Consistency": ""},
        {"Type": "tmpfs", "Target": "/run/cache", "TmpfsOptions": {"SizeBytes": 1 << 20}}]
    return body


RECORDED_BODIES = {"cli create": CLI_CREATE_WEB, "cli create global": CLI_CREATE_GLOBAL,
                   "cli update flags": CLI_CREATE_UPDATE_FLAGS, "cli container flags": CLI_CREATE_CONTAINER_FLAGS,
                   "stack web": STACK_CREATE_WEB,
                   "stack worker": STACK_CREATE_WORKER, "docker-py create": DOCKER_PY_CREATE}


@pytest.mark.parametrize("body", [*RECORDED_BODIES.values(), _docker_py_body(), _stack_body_with_volumes()],
                         ids=[*RECORDED_BODIES, "docker-py types", "stack with volumes"])
def test_what_the_docker_cli_stack_deploy_and_docker_py_send_is_accepted(body: Doc) -> None:
    spec = validate_service_spec(copy.deepcopy(body))
    # `service update` and `rollback` send back what they read, with or without the defaults inserted.
    validate_service_spec(copy.deepcopy(spec))
    validate_service_spec(insert_defaults(spec))


# ---- defaults -------------------------------------------------------------------------------------------

def test_insert_defaults_fills_swarmkit_defaults() -> None:
    spec = insert_defaults(validate_service_spec(DOCKER_PY_CREATE))
    template = spec["TaskTemplate"]
    assert template["ContainerSpec"]["StopGracePeriod"] == 10 * SECOND
    assert template["ContainerSpec"]["DNSConfig"] == {}
    assert template["RestartPolicy"] == {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0}
    assert template["Resources"] == {"Limits": {}, "Reservations": {}}
    assert template["Placement"] == {}
    expected = {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * SECOND, "MaxFailureRatio": 0,
                "Order": "stop-first"}
    assert spec["UpdateConfig"] == expected
    assert spec["RollbackConfig"] == expected


def test_insert_defaults_keeps_what_was_sent_and_fills_partial_configs() -> None:
    body = copy.deepcopy(STACK_CREATE_WEB)
    body["TaskTemplate"]["RestartPolicy"] = {"Condition": "on-failure", "MaxAttempts": 3}
    spec = insert_defaults(validate_service_spec(body))
    assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "on-failure", "MaxAttempts": 3,
                                                      "Delay": 5 * SECOND}
    assert spec["UpdateConfig"] == {"Parallelism": 1, "Delay": 5 * SECOND, "MaxFailureRatio": 0,
                                    "Order": "stop-first", "FailureAction": "pause", "Monitor": 5 * SECOND}


def test_insert_defaults_fills_empty_order_of_an_unnormalised_spec() -> None:
    assert effective_update_config({"UpdateConfig": {"Order": "", "Parallelism": 0}}) == {
        "Parallelism": 0, "FailureAction": "pause", "Monitor": 5 * SECOND, "MaxFailureRatio": 0,
        "Order": "stop-first"}


def test_insert_defaults_does_not_change_its_argument() -> None:
    spec = validate_service_spec(DOCKER_PY_CREATE)
    before = copy.deepcopy(spec)
    insert_defaults(spec)
    assert spec == before


# ---- create, update, rollback ----------------------------------------------------------------------------

def test_new_service_document() -> None:
    spec = validate_service_spec(CLI_CREATE_WEB)
    service = new_service(spec, "s" * 25, NOW, set())
    assert service["ID"] == "s" * 25
    assert service["Version"] == {"Index": 0}
    assert from_rfc3339(service["CreatedAt"]) == pytest.approx(NOW)
    assert service["CreatedAt"] == service["UpdatedAt"]
    assert service["Spec"] == spec
    assert service["Endpoint"] == {"Spec": spec["EndpointSpec"], "Ports": spec["EndpointSpec"]["Ports"]}
    assert "PreviousSpec" not in service


def test_new_service_assigns_a_free_published_port() -> None:
    spec = validate_service_spec(with_ports({"TargetPort": 80}, {"TargetPort": 443}))
    service = new_service(spec, "s1", NOW, used_ports={(30000, "tcp"), (30002, "tcp"), (30001, "udp")})
    assert [port["PublishedPort"] for port in service["Endpoint"]["Ports"]] == [30001, 30003]
    # The spec says what the user asked for; only the endpoint carries the assignment.
    assert [port["PublishedPort"] for port in service["Spec"]["EndpointSpec"]["Ports"]] == [0, 0]


def test_auto_assignment_skips_ports_published_explicitly_in_the_same_spec() -> None:
    spec = validate_service_spec(with_ports({"TargetPort": 80}, {"TargetPort": 81, "PublishedPort": 30000}))
    service = new_service(spec, "s1", NOW, used_ports=set())
    assert [port["PublishedPort"] for port in service["Endpoint"]["Ports"]] == [30001, 30000]


def test_host_mode_port_zero_is_not_assigned() -> None:
    spec = validate_service_spec(with_ports({"TargetPort": 80, "PublishMode": "host"}))
    assert new_service(spec, "s1", NOW, set())["Endpoint"]["Ports"][0]["PublishedPort"] == 0


def test_new_service_refuses_a_port_another_service_publishes() -> None:
    spec = validate_service_spec(CLI_CREATE_WEB)
    with pytest.raises(Conflict, match="port 80/tcp is already published by another service"):
        new_service(spec, "s1", NOW, used_ports={(80, "tcp")})


def test_ingress_ports_in_use_lists_other_services_ports() -> None:
    web = new_service(validate_service_spec(CLI_CREATE_WEB), "web1", NOW, set())
    auto = new_service(validate_service_spec(minimal(Name="auto", EndpointSpec={"Ports": [{"TargetPort": 9}]})),
                       "auto1", NOW, set())
    assert ingress_ports_in_use([web, auto]) == {(80, "tcp"), (30000, "tcp")}
    assert ingress_ports_in_use([web, auto], except_service_id="web1") == {(30000, "tcp")}


def make_web(replicas: int = 2) -> Doc:
    spec = validate_service_spec(minimal(Mode={"Replicated": {"Replicas": replicas}},
                                         EndpointSpec={"Ports": [{"TargetPort": 80}]}))
    return new_service(spec, "w" * 25, NOW, set())


def changed_image(service: Doc, image: str) -> Doc:
    spec = copy.deepcopy(service["Spec"])
    spec["TaskTemplate"]["ContainerSpec"]["Image"] = image
    return validate_service_spec(spec)


def test_update_keeps_previous_spec_and_allocated_ports() -> None:
    web = make_web()
    web["UpdateStatus"] = {"State": "completed"}
    updated = updated_service(web, changed_image(web, "nginx:1.26"), NOW + 10, used_ports={(30000, "tcp")})
    assert updated["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "nginx:1.26"
    assert updated["PreviousSpec"] == web["Spec"]
    assert "UpdateStatus" not in updated
    assert updated["Endpoint"]["Ports"][0]["PublishedPort"] == 30000  # its own port, kept
    assert updated["CreatedAt"] == web["CreatedAt"]
    assert from_rfc3339(updated["UpdatedAt"]) == pytest.approx(NOW + 10)


def test_update_with_unchanged_spec_keeps_the_older_previous_spec() -> None:
    web = make_web()
    once = updated_service(web, changed_image(web, "nginx:1.26"), NOW + 1, set())
    again = updated_service(once, copy.deepcopy(once["Spec"]), NOW + 2, set())
    assert again["PreviousSpec"] == web["Spec"]


def test_update_without_a_name_means_this_service() -> None:
    web = make_web()
    spec = changed_image(web, "nginx:1.26")
    spec["Name"] = ""
    assert updated_service(web, spec, NOW, set())["Spec"]["Name"] == "web"


def test_update_refuses_renaming() -> None:
    web = make_web()
    spec = copy.deepcopy(web["Spec"])
    spec["Name"] = "web2"
    with pytest.raises(InvalidArgument, match="renaming services is not supported"):
        updated_service(web, spec, NOW, set())


def test_update_refuses_mode_change() -> None:
    web = make_web()
    spec = copy.deepcopy(web["Spec"])
    spec["Mode"] = {"Global": {}}
    with pytest.raises(InvalidArgument, match="service mode change is not allowed"):
        updated_service(web, spec, NOW, set())


def test_rollback_swaps_previous_spec_in() -> None:
    web = make_web()
    updated = updated_service(web, changed_image(web, "nginx:1.26"), NOW + 1, set())
    rolled = updated_service(updated, copy.deepcopy(updated["Spec"]), NOW + 2, set(), rollback=True)
    assert rolled["Spec"] == web["Spec"]
    assert rolled["PreviousSpec"] == updated["Spec"]
    assert rolled["UpdateStatus"]["State"] == "rollback_started"
    assert rolled["UpdateStatus"]["Message"] == "manually requested rollback"
    assert from_rfc3339(rolled["UpdateStatus"]["StartedAt"]) == pytest.approx(NOW + 2)


def test_rollback_without_previous_spec_is_refused() -> None:
    web = make_web()
    with pytest.raises(InvalidArgument,
                       match="service web does not have a previous spec: there is nothing to roll back to"):
        updated_service(web, web["Spec"], NOW, set(), rollback=True)


def test_update_that_adds_a_port_gets_a_fresh_one() -> None:
    web = make_web()
    spec = copy.deepcopy(web["Spec"])
    spec["EndpointSpec"]["Ports"].append({"TargetPort": 443})
    updated = updated_service(web, validate_service_spec(spec), NOW, used_ports={(30001, "tcp")})
    assert [port["PublishedPort"] for port in updated["Endpoint"]["Ports"]] == [30000, 30002]


# ---- derived views ----------------------------------------------------------------------------------

def task(service_id: str, state: str, desired: str = "running", node: str = "n1", slot: int = 1,
         spec: Doc | None = None) -> Doc:
    return {"ID": f"t-{state}-{node}-{slot}", "ServiceID": service_id, "NodeID": node, "Slot": slot,
            "DesiredState": desired, "Status": {"State": state}, "Spec": spec or {}}


def test_service_status_for_a_replicated_service() -> None:
    web = make_web(replicas=3)
    tasks = [task(web["ID"], "running"), task(web["ID"], "running", slot=2), task(web["ID"], "preparing", slot=3),
             task(web["ID"], "shutdown", desired="shutdown"), task("other", "running")]
    nodes = {"n1": {"Status": {"State": "ready"}}, "n2": {"Status": {"State": "down"}}}
    assert service_status(web, tasks, nodes) == {"RunningTasks": 2, "DesiredTasks": 3, "CompletedTasks": 0}
    # Left behind on a node that went down, or being stopped: no longer counted as running.
    tasks += [task(web["ID"], "running", node="n2", slot=4), task(web["ID"], "running", desired="shutdown", slot=5)]
    assert service_status(web, tasks, nodes)["RunningTasks"] == 2


def test_service_status_for_a_global_service_skips_down_nodes() -> None:
    spec = validate_service_spec(CLI_CREATE_GLOBAL)
    agent = new_service(spec, "g" * 25, NOW, set())
    nodes = {"n1": {"Status": {"State": "ready"}}, "n2": {"Status": {"State": "ready"}},
             "n3": {"Status": {"State": "down"}}}
    tasks = [task(agent["ID"], "running", node="n1", slot=0), task(agent["ID"], "starting", node="n2", slot=0),
             task(agent["ID"], "running", node="n3", slot=0),
             task(agent["ID"], "shutdown", desired="shutdown", node="n1", slot=0)]
    assert service_status(agent, tasks, nodes) == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0}


def test_is_up_to_date_compares_task_spec_with_template() -> None:
    web = make_web()
    current = task(web["ID"], "running", spec=copy.deepcopy(web["Spec"]["TaskTemplate"]))
    assert is_up_to_date(web, current)
    updated = updated_service(web, changed_image(web, "nginx:1.26"), NOW, set())
    assert not is_up_to_date(updated, current)


def test_service_view_inserts_defaults_and_status_and_hides_private_fields() -> None:
    web = make_web()
    web["ShoalSpecVersion"] = 3
    updated = updated_service(web, changed_image(web, "nginx:1.26"), NOW, set())
    view = service_view(updated, with_defaults=True, status={"RunningTasks": 1, "DesiredTasks": 2,
                                                            "CompletedTasks": 0})
    assert "ShoalSpecVersion" not in view
    assert view["Spec"]["UpdateConfig"]["Order"] == "stop-first"
    assert view["PreviousSpec"]["RollbackConfig"]["FailureAction"] == "pause"
    assert view["ServiceStatus"]["DesiredTasks"] == 2
    plain = service_view(updated)
    assert "UpdateConfig" not in plain["Spec"]
    assert "ServiceStatus" not in plain


def test_update_does_not_conflict_with_its_own_published_port() -> None:
    web = new_service(validate_service_spec(CLI_CREATE_WEB), "web1", NOW, set())
    spec = changed_image(web, "nginx:1.26")
    updated = updated_service(web, spec, NOW, used_ports=ingress_ports_in_use([web]))  # own port included
    assert updated["Endpoint"]["Ports"][0]["PublishedPort"] == 80


# ---- jobs -------------------------------------------------------------------------------------------

# What `docker service create --mode replicated-job --replicas 5 --max-concurrent 2 …` sends (opts.go).
CLI_CREATE_REPLICATED_JOB = json.loads(
    '{"Name":"batch","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"busybox:latest@' + DIGEST + '",'
    '"Args":["sh","-c","sleep 0.5"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},'
    '"Placement":{},"ForceUpdate":0},"Mode":{"ReplicatedJob":{"MaxConcurrent":2,"TotalCompletions":5}},'
    '"EndpointSpec":{"Mode":"vip"}}'
)


@pytest.mark.parametrize(("mode", "normalised"), [
    ({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}},
     {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}),
    # Docker's API defaults: MaxConcurrent 1, TotalCompletions = MaxConcurrent.
    ({"ReplicatedJob": {}}, {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}),
    ({"ReplicatedJob": {"MaxConcurrent": 3}}, {"ReplicatedJob": {"MaxConcurrent": 3, "TotalCompletions": 3}}),
    ({"ReplicatedJob": {"TotalCompletions": 7}}, {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 7}}),
    ({"ReplicatedJob": {"MaxConcurrent": 0, "TotalCompletions": 0}},
     {"ReplicatedJob": {"MaxConcurrent": 0, "TotalCompletions": 0}}),
    ({"GlobalJob": {}}, {"GlobalJob": {}}),
    # docker-py writes the mode in lower case; null entries are dropped.
    ({"replicatedjob": {"maxconcurrent": 2}, "Replicated": None},
     {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}}),
])
def test_job_modes_are_accepted_with_docker_defaults(mode: Doc, normalised: Doc) -> None:
    assert validate_service_spec(minimal(Mode=mode))["Mode"] == normalised


def test_the_docker_cli_replicated_job_body_is_kept_as_sent() -> None:
    spec = validate_service_spec(copy.deepcopy(CLI_CREATE_REPLICATED_JOB))
    assert spec["Mode"] == CLI_CREATE_REPLICATED_JOB["Mode"]
    assert "UpdateConfig" not in spec and "RollbackConfig" not in spec


def make_job(mode: Doc | None = None) -> Doc:
    spec = validate_service_spec(minimal(Name="batch", Mode=mode or {"ReplicatedJob": {"MaxConcurrent": 2,
                                                                                       "TotalCompletions": 5}}))
    return new_service(spec, "j" * 25, NOW, set())


def test_a_new_job_starts_at_iteration_zero() -> None:
    job = make_job()
    assert job["JobStatus"]["JobIteration"] == {"Index": 0}
    assert from_rfc3339(job["JobStatus"]["LastExecution"]) == pytest.approx(NOW)
    assert "JobStatus" not in make_web()


def test_every_update_of_a_job_starts_its_next_iteration() -> None:
    job = make_job()
    forced = copy.deepcopy(job["Spec"])
    forced["TaskTemplate"]["ForceUpdate"] = 1
    once = updated_service(job, forced, NOW + 5, set())
    assert once["JobStatus"]["JobIteration"] == {"Index": 1}
    assert from_rfc3339(once["JobStatus"]["LastExecution"]) == pytest.approx(NOW + 5)
    # Even an update that changes nothing runs the job again, as in swarmkit.
    again = updated_service(once, copy.deepcopy(once["Spec"]), NOW + 6, set())
    assert again["JobStatus"]["JobIteration"] == {"Index": 2}
    rolled = updated_service(again, again["Spec"], NOW + 7, set(), rollback=True)
    assert rolled["JobStatus"]["JobIteration"] == {"Index": 3}
    assert rolled["Spec"] == job["Spec"]
    assert "UpdateStatus" not in rolled  # no updater would ever complete it for a job


@pytest.mark.parametrize(("before", "after"), [
    ({"ReplicatedJob": {}}, {"Replicated": {"Replicas": 1}}),
    ({"ReplicatedJob": {}}, {"GlobalJob": {}}),
    ({"GlobalJob": {}}, {"Global": {}}),
])
def test_a_job_cannot_change_mode(before: Doc, after: Doc) -> None:
    job = make_job(before)
    spec = copy.deepcopy(job["Spec"])
    spec["Mode"] = after
    with pytest.raises(InvalidArgument, match="service mode change is not allowed"):
        updated_service(job, validate_service_spec(spec), NOW, set())


def test_a_replicated_service_cannot_become_a_job() -> None:
    web = make_web()
    spec = copy.deepcopy(web["Spec"])
    spec["Mode"] = {"ReplicatedJob": {}}
    with pytest.raises(InvalidArgument, match="service mode change is not allowed"):
        updated_service(web, validate_service_spec(spec), NOW, set())


def test_insert_defaults_gives_a_job_no_update_config() -> None:
    job = make_job()
    filled = insert_defaults(job["Spec"])
    assert "UpdateConfig" not in filled and "RollbackConfig" not in filled
    assert filled["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    validate_service_spec(filled)  # a spec read back with defaults is accepted when sent again


def job_task(service_id: str, state: str, iteration: int, desired: str = "running", node: str = "n1",
             slot: int = 0) -> Doc:
    doc = task(service_id, state, desired, node, slot)
    doc["ID"] += f"-{iteration}"
    doc["JobIteration"] = {"Index": iteration}
    return doc


def test_service_status_of_a_replicated_job_counts_its_current_iteration() -> None:
    job = updated_service(make_job(), make_job()["Spec"], NOW, set())  # iteration 1
    nodes = {"n1": {"Status": {"State": "ready"}}}
    tasks = [job_task(job["ID"], "complete", 1, desired="complete", slot=0),
             job_task(job["ID"], "complete", 1, slot=1),  # not marked by the orchestrator yet
             job_task(job["ID"], "running", 1, slot=2),
             job_task(job["ID"], "failed", 1, desired="shutdown", slot=3),
             job_task(job["ID"], "complete", 0, desired="complete", slot=4),  # an older run
             job_task(job["ID"], "running", 0, slot=5)]
    # Docker's `service ls` shows "1/2 (2/5 completed)": Desired is MaxConcurrent.
    assert service_status(job, tasks, nodes) == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 2}


def test_service_status_of_a_global_job_desires_what_is_left_to_finish() -> None:
    job = make_job({"GlobalJob": {}})
    nodes = {n: {"Status": {"State": "ready"}} for n in ("n1", "n2", "n3", "n4")}
    tasks = [job_task(job["ID"], "complete", 0, desired="complete", node="n1"),
             job_task(job["ID"], "running", 0, node="n2"),
             job_task(job["ID"], "failed", 0, desired="complete", node="n3"),  # given up: never completes
             job_task(job["ID"], "failed", 0, desired="shutdown", node="n4")]  # replaced: history
    # `service ls`: "1/2 (1/3 completed)".
    assert service_status(job, tasks, nodes) == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 1}
