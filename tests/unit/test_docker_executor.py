"""The docker executor against the machine's real Docker Engine (skipped, saying why, when none answers), and its
pure translation of a task into a container.

Every container a test makes carries the label `shoal.test.run=<unique>` and is removed by the fixture.
The images are the local busybox ones of `tests/dockerimages.py` (no registry is reachable here).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from shoal.agent.executor.base import ExitStatusUnknown, LogLine, TaskRejected
from shoal.agent.executor.docker import (
    LABEL_NODE_ID,
    LABEL_SERVICE_ID,
    LABEL_SERVICE_NAME,
    LABEL_TASK_ID,
    LABEL_TASK_NAME,
    DockerController,
    DockerExecutor,
    bound_ports,
    container_exit_cause,
    container_name,
    create_arguments,
    dns_arguments,
    docker_healthcheck,
    extra_hosts,
    host_config_arguments,
    log_driver,
    parse_log_line,
    port_bindings,
    security_options,
)
from shoal.agent.health import ERR_UNHEALTHY, HealthMonitor, HealthStatus, health_check_of
from shoal.agent.task_files import SHM, TaskFiles
from shoal.agent.worker import Worker
from shoal.clock import SystemClock
from shoal.ids import new_id
from shoal.spec import ImageReference
from shoal.timefmt import MILLISECOND, SECOND
from shoal.types import Doc
from tests.dockerimages import IMAGE_1, IMAGE_2, ImagesUnavailable, ensure_busybox_images
from tests.unit.agent_fixtures import Reports
from tests.unit.waiting import wait_until

DEADLINE = 20.0
RUN_LABEL = "shoal.test.run"
FOREVER = ["sh", "-c", "while true; do sleep 0.1; done"]


def make_task(argv: list[str] | None = None, run_label: str = "", slot: int = 1, node_id: str | None = None,
              image: str = IMAGE_1, **container_spec: object) -> Doc:
    """A task as the manager assigns it; argv goes to Args (the busybox image has no entrypoint)."""
    spec: Doc = {"Image": image, "Labels": {RUN_LABEL: run_label}, "StopGracePeriod": 5 * SECOND,
                 **container_spec}
    if argv is not None:
        spec["Args"] = argv
    return {"ID": new_id(), "ServiceID": new_id(), "Slot": slot, "NodeID": node_id or new_id(),
            "Spec": {"ContainerSpec": spec, "RestartPolicy": {"Condition": "none"}},
            "DesiredState": "running", "Status": {"State": "assigned"}, "ServiceAnnotations": {"Name": "web"}}


# ---- the task → container translation (no engine needed) --------------------------------------------------

def test_container_is_named_service_slot_task_and_global_tasks_use_the_node_id() -> None:
    task = make_task(["true"], slot=3)
    assert container_name(task) == f"web.3.{task['ID']}"
    global_task = make_task(["true"], slot=0, node_id="node1")
    assert container_name(global_task) == f"web.node1.{global_task['ID']}"


def test_command_replaces_the_entrypoint_and_args_the_command_as_in_swarm() -> None:
    both = create_arguments(make_task(["-c", "echo hi"], Command=["sh"]))
    assert (both["entrypoint"], both["command"]) == (["sh"], ["-c", "echo hi"])
    args_only = create_arguments(make_task(["echo", "hi"]))
    assert "entrypoint" not in args_only and args_only["command"] == ["echo", "hi"]
    neither = create_arguments(make_task(None))
    assert "entrypoint" not in neither and "command" not in neither


def test_swarm_labels_win_over_spec_labels() -> None:
    task = make_task(["true"], Labels={LABEL_TASK_ID: "forged", "team": "blue"})
    labels = create_arguments(task)["labels"]
    assert labels[LABEL_TASK_ID] == task["ID"] and labels["team"] == "blue"


def test_host_ports_bind_their_number_and_ingress_ports_a_port_docker_chooses() -> None:
    task = make_task(["true"])
    task["Endpoint"] = {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 0, "PublishMode": "host"},
        {"Protocol": "tcp", "TargetPort": 443, "PublishedPort": 30000, "PublishMode": "ingress"},
    ]}
    assert port_bindings(task) == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                                   "53/udp": [{"HostIp": "", "HostPort": ""}],
                                   "443/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert create_arguments(task)["ports"] == [("80", "tcp"), ("53", "udp"), ("443", "tcp")]
    assert host_config_arguments(task)["port_bindings"] == port_bindings(task)


def test_bound_ports_read_the_host_ports_docker_chose_and_probe_the_container() -> None:
    task = make_task(["true"])
    task["Endpoint"] = {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
        {"Protocol": "tcp", "TargetPort": 443, "PublishedPort": 30000, "PublishMode": "ingress"},
    ]}
    inspected = {"NetworkSettings": {"IPAddress": "172.17.0.5", "Ports": {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostIp": "::", "HostPort": "49153"}]}}}
    ports = bound_ports(task, inspected)
    assert [(p["PublishMode"], p["Port"], p["ProbeHost"], p["ProbePort"]) for p in ports] == [
        ("host", 8080, "172.17.0.5", 80), ("ingress", 49153, "172.17.0.5", 443)]


def test_healthcheck_keeps_nanoseconds_and_none_is_passed_on() -> None:
    check = docker_healthcheck({"Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2 * SECOND,
                                                "Timeout": SECOND, "Retries": 4, "StartPeriod": 3 * SECOND}})
    assert check is not None
    assert (check.test, check.interval, check.timeout, check.retries, check.start_period) == (
        ["CMD-SHELL", "true"], 2 * SECOND, SECOND, 4, 3 * SECOND)
    off = docker_healthcheck({"Healthcheck": {"Test": ["NONE"]}})
    assert off is not None and off.test == ["NONE"]
    assert docker_healthcheck({}) is None


def test_healthcheck_start_interval_reaches_docker() -> None:
    check = docker_healthcheck({"Healthcheck": {"Test": ["CMD", "true"], "StartPeriod": 30 * SECOND,
                                                "StartInterval": SECOND}})
    assert check is not None and check["StartInterval"] == SECOND
    plain = docker_healthcheck({"Healthcheck": {"Test": ["CMD", "true"]}})
    assert plain is not None and "StartInterval" not in plain


def test_mounts_keep_their_type_and_options_as_swarm_mode_passes_them() -> None:
    volume = {"Type": "volume", "Source": "app_data", "Target": "/data", "ReadOnly": True, "VolumeOptions": {
        "NoCopy": True, "Labels": {"com.docker.stack.namespace": "app"}, "DriverConfig": {"Name": "local"},
        "Subpath": ""}}
    bind = {"Type": "bind", "Source": "/srv", "Target": "/srv", "Consistency": "cached",
            "BindOptions": {"Propagation": "rslave", "NonRecursive": True}}
    tmpfs = {"Type": "tmpfs", "Target": "/cache", "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777}}
    untyped = {"Source": "/var/log", "Target": "/logs", "VolumeOptions": {"NoCopy": False}}  # zero options
    mounts = host_config_arguments(make_task(["true"], Mounts=[volume, bind, tmpfs, untyped]))["mounts"]
    assert [dict(mount) for mount in mounts] == [
        {"Target": "/data", "Source": "app_data", "Type": "volume", "ReadOnly": True, "VolumeOptions": {
            "NoCopy": True, "Labels": {"com.docker.stack.namespace": "app"}, "DriverConfig": {"Name": "local"}}},
        {"Target": "/srv", "Source": "/srv", "Type": "bind", "ReadOnly": False, "Consistency": "cached",
         "BindOptions": {"Propagation": "rslave", "NonRecursive": True}},
        {"Target": "/cache", "Source": None, "Type": "tmpfs", "ReadOnly": False,
         "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777}},
        {"Target": "/logs", "Source": "/var/log", "Type": "bind", "ReadOnly": False},  # no Type: bind, as in swarm
    ]


@pytest.mark.parametrize(("mount", "field"), [
    ({"Type": "npipe", "Source": "p", "Target": "/p"}, "Mounts[0].Type 'npipe'"),
    ({"Type": "bind", "Source": "/s", "Target": "/s", "TmpfsOptions": {"SizeBytes": 1}}, "Mounts[0].TmpfsOptions"),
    ({"Type": "bind", "Source": "/s", "Target": "/s", "BindOptions": {"Bogus": 1}}, "Mounts[0].BindOptions.Bogus"),
])
def test_a_mount_the_engine_would_not_make_as_asked_rejects_the_task(mount: Doc, field: str) -> None:
    with pytest.raises(TaskRejected) as caught:
        host_config_arguments(make_task(["true"], Mounts=[mount]))
    assert str(caught.value).startswith(f"TaskTemplate.ContainerSpec.{field} is not supported by the docker executor")


@pytest.mark.parametrize(("field", "value"), [("Privileges", {"CredentialSpec": {"File": "spec.json"}}),
                                              ("Privileges", {"SELinuxContext": {"Type": "svirt_t"}}),
                                              ("Isolation", "hyperv")])
def test_a_field_no_executor_acts_on_rejects_the_task(field: str, value: object) -> None:
    """The API refuses these; a task of a spec stored before it did is rejected rather than run without them."""
    with pytest.raises(TaskRejected) as caught:
        create_arguments(make_task(["true"], **{field: value}))
    assert str(caught.value).startswith(f"TaskTemplate.ContainerSpec.{field}")
    assert "is not supported by the docker executor: remove it" in str(caught.value)


def test_capabilities_sysctls_ulimits_and_oom_score_reach_the_host_config_as_sent() -> None:
    task = make_task(["true"], CapabilityAdd=["CAP_NET_ADMIN", "SYS_TIME"], CapabilityDrop=["ALL"],
                     Sysctls={"net.core.somaxconn": "1024"}, OomScoreAdj=-500,
                     Ulimits=[{"Name": "nofile", "Hard": 2048, "Soft": 1024}, {"Name": "core", "Hard": -1, "Soft": -1}])
    host = host_config_arguments(task)
    assert (host["cap_add"], host["cap_drop"]) == (["CAP_NET_ADMIN", "SYS_TIME"], ["ALL"])
    assert host["sysctls"] == {"net.core.somaxconn": "1024"} and host["oom_score_adj"] == -500
    assert [dict(limit) for limit in host["ulimits"]] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                                                          {"Name": "core", "Soft": -1, "Hard": -1}]


def test_hosts_become_extra_hosts_one_per_name() -> None:
    """Swarm mode's executor keeps a line's first name only; shoal gives the aliases their entries too."""
    task = make_task(["true"], Hosts=["10.0.0.1 db db.local", "host-gateway gw", "fd00::1  v6"])
    assert extra_hosts(task["Spec"]["ContainerSpec"]) == ["db:10.0.0.1", "db.local:10.0.0.1", "gw:host-gateway",
                                                          "v6:fd00::1"]
    assert host_config_arguments(task)["extra_hosts"] == extra_hosts(task["Spec"]["ContainerSpec"])
    assert "extra_hosts" not in host_config_arguments(make_task(["true"], Hosts=[]))


def test_dns_config_is_the_containers_resolver_settings() -> None:
    task = make_task(["true"], DNSConfig={"Nameservers": ["10.0.0.2"], "Search": ["corp.example"],
                                          "Options": ["ndots:2", "timeout:1"]})
    assert dns_arguments(task) == {"dns": ["10.0.0.2"], "dns_search": ["corp.example"],
                                   "dns_opt": ["ndots:2", "timeout:1"]}
    assert dns_arguments(make_task(["true"], DNSConfig={})) == {}


def test_a_task_on_swarm_networks_asks_its_nodes_dns_server_which_forwards_to_its_nameservers() -> None:
    """Docker's embedded DNS: the container's resolver answers swarm names and forwards the rest to the task's
    Nameservers (`shoal.discovery`); search domains and options stay the container's."""
    task = make_task(["true"], DNSConfig={"Nameservers": ["10.0.0.2"], "Search": ["corp.example"]})
    task["NetworksAttachments"] = [{"Network": {"ID": "net1", "VXLANID": 4097, "Spec": {
        "Name": "front", "IPAM": {"Config": [{"Subnet": "10.0.9.0/24", "Gateway": "10.0.9.1"}]}}},
        "Addresses": ["10.0.9.5/24"]}]
    assert dns_arguments(task) == {"dns": ["10.0.9.1"], "dns_search": ["corp.example"]}


@pytest.mark.parametrize(("privileges", "options"), [
    ({"NoNewPrivileges": True}, ["no-new-privileges=true"]),
    ({"Seccomp": {"Mode": "unconfined"}, "AppArmor": {"Mode": "disabled"}},
     ["seccomp=unconfined", "apparmor=unconfined"]),
    ({"Seccomp": {"Mode": "custom", "Profile": base64.b64encode(b'{"defaultAction":"SCMP_ACT_ALLOW"}').decode()}},
     ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']),
    ({"Seccomp": {"Mode": "default"}, "AppArmor": {"Mode": "default"}, "NoNewPrivileges": False}, []),
], ids=["no new privileges", "unconfined", "custom seccomp profile", "defaults"])
def test_privileges_become_security_options_as_swarm_words_them(privileges: Doc, options: list[str]) -> None:
    task = make_task(["true"], Privileges=privileges)
    assert security_options(task["Spec"]["ContainerSpec"]) == options
    assert host_config_arguments(task).get("security_opt", []) == options


def test_the_log_driver_is_the_containers_log_config() -> None:
    task = make_task(["true"])
    assert log_driver(task) is None and "log_config" not in host_config_arguments(task)
    task["Spec"]["LogDriver"] = {"Name": "json-file", "Options": {"max-size": "1m", "max-file": "2"}}
    assert dict(host_config_arguments(task)["log_config"]) == {
        "Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}
    task["Spec"]["LogDriver"] = {"Name": "", "Options": {}}  # what some clients send for "not set"
    assert log_driver(task) is None


def test_zero_values_and_fields_only_docker_acts_on_are_taken() -> None:
    task = make_task(["true"], Init=True, Hostname="box", TTY=True, OpenStdin=True, ReadOnly=True, Groups=["video"],
                     DNSConfig={}, Privileges={"CredentialSpec": None, "SELinuxContext": None,
                                               "NoNewPrivileges": False}, Isolation="default", Sysctls={},
                     CapabilityAdd=[], Ulimits=[], OomScoreAdj=0, Hosts=[])
    arguments = create_arguments(task)
    assert (arguments["hostname"], arguments["tty"], arguments["stdin_open"]) == ("box", True, True)
    host = host_config_arguments(task)
    assert (host["init"], host["read_only"], host["group_add"]) == (True, True, ["video"])
    assert set(host) == {"init", "read_only", "group_add"}  # nothing for the zero values


def test_image_pull_reference_names_a_tag_or_digest() -> None:
    digest = "sha256:" + "ab" * 32
    assert ImageReference.parse("busybox").pull() == ("busybox", "latest")
    assert ImageReference.parse("registry:5000/team/app:1.2").pull() == ("registry:5000/team/app", "1.2")
    assert ImageReference.parse(f"nginx:1.25@{digest}").pull() == ("nginx", digest)


def with_resources(task: Doc, limits: Doc, reservations: Doc | None = None) -> Doc:
    task["Spec"]["Resources"] = {"Limits": limits, "Reservations": reservations or {}}
    return task


def test_limits_become_the_containers_limits_and_reservations_stay_the_schedulers() -> None:
    task = with_resources(make_task(["true"]), {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 100},
                          {"NanoCPUs": 250_000_000, "MemoryBytes": 32 << 20})
    arguments = host_config_arguments(task)
    assert {key: arguments[key] for key in ("nano_cpus", "mem_limit", "pids_limit")} == {
        "nano_cpus": 500_000_000, "mem_limit": 64 << 20, "pids_limit": 100}
    assert "mem_reservation" not in arguments and "cpu_shares" not in arguments  # as swarm mode's executor
    # Zero or missing: the engine's defaults (no limit).
    for limits in ({}, {"NanoCPUs": 0, "MemoryBytes": 0, "Pids": 0}):
        arguments = host_config_arguments(with_resources(make_task(["true"]), limits))
        assert not {"nano_cpus", "mem_limit", "pids_limit"} & set(arguments)
    assert not {"nano_cpus", "mem_limit", "pids_limit"} & set(host_config_arguments(make_task(["true"])))


def test_an_oom_killed_container_says_so_with_its_limit() -> None:
    task = with_resources(make_task(["true"]), {"MemoryBytes": 64 << 20})
    assert container_exit_cause(task, {"ExitCode": 137, "OOMKilled": True}) == (
        "out of memory: OOM killed at its memory limit of 64MiB")
    assert container_exit_cause(make_task(["true"]), {"ExitCode": 137, "OOMKilled": True}) == (
        "out of memory: OOM killed")
    assert container_exit_cause(task, {"ExitCode": 137, "OOMKilled": False}) == ""


def test_log_lines_carry_dockers_timestamp() -> None:
    stamp, line = parse_log_line(b"2024-05-07T21:09:36.500000000Z hello world\n")
    assert line == b"hello world\n" and stamp == pytest.approx(1715116176.5)


# ---- against the real engine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def executor() -> Iterator[DockerExecutor]:
    try:
        ensure_busybox_images()
    except ImagesUnavailable as exc:
        pytest.skip(f"no Docker Engine to run containers: {exc}")
    engine = DockerExecutor.connect()
    yield engine
    engine.client.close()


@pytest.fixture
def run_label(executor: DockerExecutor) -> Iterator[str]:
    """A label for this test's containers; whatever carries it is removed afterwards."""
    label = f"test-{uuid.uuid4().hex[:12]}"
    yield label
    for container in executor.api.containers(all=True, filters={"label": f"{RUN_LABEL}={label}"}):
        with contextlib.suppress(docker.errors.NotFound):
            executor.api.remove_container(container["Id"], force=True, v=True)


def containers_of(executor: DockerExecutor, task: Doc) -> list[Doc]:
    return list(executor.api.containers(all=True, filters={"label": f"{LABEL_TASK_ID}={task['ID']}"}))


async def started(executor: DockerExecutor, task: Doc) -> DockerController:
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    return controller


async def collect(lines: AsyncIterator[LogLine]) -> list[LogLine]:
    return [line async for line in lines]


def never() -> bool:
    return False


async def test_secrets_and_configs_are_read_only_files_at_their_targets_from_a_tmpfs(executor: DockerExecutor,
                                                                                      run_label: str) -> None:
    files = TaskFiles(SHM / "shoal-test" / new_id()[:12])
    executor.task_files = files
    files.receive({"secrets": [{"ID": "s1", "Data": base64.b64encode(b"hunter2").decode()}],
                   "configs": [{"ID": "c1", "Data": base64.b64encode(b"port=80").decode()}]})
    script = ('cat /run/secrets/db_password; echo; stat -c "%a %u %g" /run/secrets/db_password; cat /etc/app.conf; '
              'echo; (echo x > /run/secrets/db_password) 2>/dev/null && echo writable || echo read-only')
    task = make_task(["-c", script], run_label, Command=["sh"],
                     Secrets=[{"SecretID": "s1", "SecretName": "db", "File": {"Name": "db_password", "UID": "100",
                                                                              "GID": "101", "Mode": 0o400}}],
                     Configs=[{"ConfigID": "c1", "ConfigName": "app",
                               "File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o444}}])
    try:
        controller = await started(executor, task)
        assert await controller.wait() == 0
        output = await collect(executor.logs(task["ID"], None, False, never, time.time))
        assert [line for _, _, line in output] == [b"hunter2\n", b"400 100 101\n", b"port=80\n", b"read-only\n"]
        mounts = executor.api.inspect_container(controller.container_id)["Mounts"]
        assert {m["Destination"]: (m["Source"].startswith(str(files.root)), m["RW"]) for m in mounts} == {
            "/run/secrets/db_password": (True, False), "/etc/app.conf": (True, False)}
        assert not files.task_dir(task["ID"]).exists(), "gone when the task ended"
        await controller.remove()
    finally:
        executor.task_files = None
        shutil.rmtree(files.root, ignore_errors=True)


async def test_task_runs_as_a_container_with_swarms_name_labels_and_settings(executor: DockerExecutor,
                                                                            run_label: str) -> None:
    task = make_task(["-c", 'echo "$(id -u) $(pwd) $(hostname) $GREETING"'], run_label, Command=["sh"],
                     Env=["GREETING=hello"], Dir="/tmp", User="nobody", Hostname="box1")
    controller = await started(executor, task)
    assert await controller.wait() == 0
    inspected = executor.api.inspect_container(controller.container_id)
    assert inspected["Name"] == f"/web.1.{task['ID']}"
    assert {key: inspected["Config"]["Labels"][key] for key in (
        LABEL_SERVICE_ID, LABEL_SERVICE_NAME, LABEL_TASK_ID, LABEL_TASK_NAME, LABEL_NODE_ID, RUN_LABEL)} == {
        LABEL_SERVICE_ID: task["ServiceID"], LABEL_SERVICE_NAME: "web", LABEL_TASK_ID: task["ID"],
        LABEL_TASK_NAME: f"web.1.{task['ID']}", LABEL_NODE_ID: task["NodeID"], RUN_LABEL: run_label}
    output = await collect(executor.logs(task["ID"], None, False, never, time.time))
    assert [line for _, _, line in output] == [b"65534 /tmp box1 hello\n"]
    assert controller.handle() == {"Executor": "docker", "ContainerID": controller.container_id}
    await controller.remove()
    assert containers_of(executor, task) == []


async def test_mount_options_reach_the_engine(executor: DockerExecutor, run_label: str) -> None:
    """A named volume is made with the labels stack deploy gives it; a tmpfs gets its size."""
    volume = f"shoal-test-{run_label}"
    task = make_task(["-c", "touch /data/x && df -k /scratch | tail -1"], run_label, Command=["sh"], Mounts=[
        {"Type": "volume", "Source": volume, "Target": "/data",
         "VolumeOptions": {"NoCopy": False, "Labels": {RUN_LABEL: run_label}}},
        {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 2 << 20}}])
    try:
        controller = await started(executor, task)
        assert await controller.wait() == 0
        output = await collect(executor.logs(task["ID"], None, False, never, time.time))
        assert [line.split()[1] for _, _, line in output] == [b"2048"]  # 1K-blocks of the tmpfs
        assert executor.api.inspect_volume(volume)["Labels"] == {RUN_LABEL: run_label}
        await controller.remove()
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            for container in executor.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_label}"}):
                executor.api.remove_container(container["Id"], force=True)
            executor.api.remove_volume(volume, force=True)


async def test_container_settings_reach_the_engine_and_hold_inside(executor: DockerExecutor, run_label: str) -> None:
    """Capabilities, sysctls, ulimits, DNS, extra hosts, init, a read-only root, no new privileges, the OOM score
    and a log driver with an option: in the container's HostConfig, and in effect inside it."""
    script = ("cat /proc/sys/net/core/somaxconn; ulimit -n; grep -c '^10.0.0.7' /etc/hosts; "
              "grep -E '^(nameserver|search|options)' /etc/resolv.conf | sort | tr '\\n' ' '; echo; "
              "cat /proc/1/comm; touch /x 2>/dev/null || echo read-only")
    task = make_task(["-c", script], run_label, Command=["sh"], CapabilityAdd=["CAP_NET_ADMIN"],
                     CapabilityDrop=["CAP_MKNOD"], Sysctls={"net.core.somaxconn": "512"}, ReadOnly=True, Init=True,
                     Ulimits=[{"Name": "nofile", "Soft": 321, "Hard": 654}], Hosts=["10.0.0.7 db db.local"],
                     DNSConfig={"Nameservers": ["192.0.2.53"], "Search": ["corp.example"], "Options": ["ndots:3"]},
                     Privileges={"NoNewPrivileges": True}, OomScoreAdj=100)
    task["Spec"]["LogDriver"] = {"Name": "json-file", "Options": {"max-size": "1m"}}
    controller = await started(executor, task)
    assert await controller.wait() == 0
    host = executor.api.inspect_container(controller.container_id)["HostConfig"]
    assert (host["CapAdd"], host["CapDrop"], host["Sysctls"]) == (
        ["CAP_NET_ADMIN"], ["CAP_MKNOD"], {"net.core.somaxconn": "512"})
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 321, "Hard": 654}]
    assert (host["Dns"], host["DnsSearch"], host["DnsOptions"]) == (["192.0.2.53"], ["corp.example"], ["ndots:3"])
    assert sorted(host["ExtraHosts"]) == ["db.local:10.0.0.7", "db:10.0.0.7"]
    assert (host["Init"], host["ReadonlyRootfs"], host["OomScoreAdj"]) == (True, True, 100)
    assert host["SecurityOpt"] == ["no-new-privileges=true"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    output = await collect(executor.logs(task["ID"], None, False, never, time.time))
    assert [line.decode().strip() for _, _, line in output] == [
        "512", "321", "2", "nameserver 192.0.2.53 options ndots:3 search corp.example", "docker-init", "read-only"]
    await controller.remove()


async def test_exit_code_comes_from_docker(executor: DockerExecutor, run_label: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "exit 3"], run_label))
    assert await controller.wait() == 3


async def test_limits_reach_the_container_and_an_oom_kill_is_told(executor: DockerExecutor, run_label: str) -> None:
    limits = {"NanoCPUs": 500_000_000, "MemoryBytes": 32 << 20, "Pids": 50}
    task = with_resources(make_task(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], run_label), limits)
    controller = await started(executor, task)
    host_config = executor.api.inspect_container(controller.container_id)["HostConfig"]
    assert (host_config["NanoCpus"], host_config["Memory"], host_config["PidsLimit"]) == (500_000_000, 32 << 20, 50)
    assert await controller.wait() == 137
    assert controller.exit_cause() == "out of memory: OOM killed at its memory limit of 32MiB"
    # Without the limit the same command gets its 200 MB and ends well.
    free = await started(executor, make_task(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], run_label))
    assert await free.wait() == 0 and free.exit_cause() == ""


async def test_stop_sends_the_stop_signal_first(executor: DockerExecutor, run_label: str) -> None:
    script = "trap 'exit 7' USR1; while true; do sleep 0.1; done"
    controller = await started(executor, make_task(["sh", "-c", script], run_label, StopSignal="SIGUSR1"))
    exited = asyncio.ensure_future(controller.wait())
    began = time.monotonic()
    await controller.shutdown(10.0, "SIGUSR1")
    assert time.monotonic() - began < 5.0
    assert await exited == 7


async def test_stop_kills_after_the_grace_period_a_container_that_ignores_the_signal(
        executor: DockerExecutor, run_label: str) -> None:
    script = "trap '' TERM; while true; do sleep 0.1; done"
    controller = await started(executor, make_task(["sh", "-c", script], run_label))
    exited = asyncio.ensure_future(controller.wait())
    began = time.monotonic()
    await controller.shutdown(1.0, "SIGTERM")
    assert time.monotonic() - began >= 1.0
    assert await exited == 137


async def test_missing_image_is_rejected_with_dockers_error(executor: DockerExecutor, run_label: str) -> None:
    controller = executor.controller(make_task(["true"], run_label, image="shoal-nosuchimage:404"))
    with pytest.raises(TaskRejected, match="No such image: shoal-nosuchimage:404"):
        await controller.prepare()


async def test_missing_program_is_rejected_at_start(executor: DockerExecutor, run_label: str) -> None:
    controller = executor.controller(make_task(["no-such-program"], run_label))
    await controller.prepare()
    with pytest.raises(TaskRejected, match="no-such-program"):
        await controller.start()


async def test_logs_tail_counts_both_streams_and_follow_ends_with_the_container(executor: DockerExecutor,
                                                                               run_label: str) -> None:
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done; echo oops >&2; sleep 1000"
    task = make_task(["sh", "-c", script], run_label)
    controller = await started(executor, task)

    async def line_count() -> int:
        return len(await collect(executor.logs(task["ID"], None, False, never, time.time)))

    deadline = time.monotonic() + DEADLINE
    while await line_count() < 6:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    tail = await collect(executor.logs(task["ID"], 3, False, never, time.time))
    assert [(stream, line) for stream, _, line in tail] == [
        ("stdout", b"line4\n"), ("stdout", b"line5\n"), ("stderr", b"oops\n")]
    assert tail[0][1] <= tail[1][1] <= tail[2][1] and tail[0][1] > time.time() - 60

    follower = executor.logs(task["ID"], 1, True, never, time.time)
    assert (await follower.__anext__())[2] == b"oops\n"
    executor.api.kill(controller.container_id, signal="SIGKILL")
    # The stream ends by itself once the container has stopped.
    assert await asyncio.wait_for(collect(follower), DEADLINE) == []


async def test_follow_yields_new_lines_as_they_come(executor: DockerExecutor, run_label: str) -> None:
    script = "sleep 0.5; for i in 1 2 3; do echo late$i; sleep 0.1; done"
    task = make_task(["sh", "-c", script], run_label)
    await started(executor, task)
    lines = await asyncio.wait_for(collect(executor.logs(task["ID"], None, True, never, time.time)), DEADLINE)
    assert [line for _, _, line in lines] == [b"late1\n", b"late2\n", b"late3\n"]


async def test_follow_stops_soon_after_the_task_ended(executor: DockerExecutor, run_label: str) -> None:
    task = make_task(FOREVER, run_label)
    await started(executor, task)
    lines = await asyncio.wait_for(collect(executor.logs(task["ID"], None, True, lambda: True, time.time)), 5.0)
    assert lines == []


def healthcheck(test: str) -> Doc:
    return {"Test": ["CMD-SHELL", test], "Interval": 300 * MILLISECOND, "Timeout": 2 * SECOND, "Retries": 2}


async def test_dockers_health_results_drive_the_health_monitor(executor: DockerExecutor, run_label: str) -> None:
    healthy = make_task(FOREVER, run_label, Healthcheck=healthcheck("test -d /tmp"))
    sick = make_task(FOREVER, run_label, Healthcheck=healthcheck("echo broken; exit 1"))
    outcomes = []
    for task in (healthy, sick):
        controller = await started(executor, task)
        check = health_check_of(task)
        assert check is not None
        changes: list[HealthStatus] = []
        monitor = HealthMonitor("test", check, controller.probe, time.time, time.time(), on_change=changes.append)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(monitor.run(), timeout=10.0)
        outcomes.append((changes, await controller.health_status(), monitor.results[-1].output))
    assert outcomes[0][:2] == ([HealthStatus.HEALTHY], HealthStatus.HEALTHY)
    assert outcomes[1] == ([HealthStatus.UNHEALTHY], HealthStatus.UNHEALTHY, "broken\n")


async def test_a_new_executor_reattaches_to_the_running_container(executor: DockerExecutor, run_label: str) -> None:
    task = make_task(["sh", "-c", "trap 'exit 5' TERM; while true; do sleep 0.1; done"], run_label)
    first = await started(executor, task)
    handle = first.handle()
    second_executor = DockerExecutor.connect()
    try:
        adopted = second_executor.recover(task, handle)
        assert adopted.container_id == first.container_id and adopted.pid() == first.pid() > 0
        # Found by its label too, when the saved handle lost the ID.
        assert second_executor.recover(task, {"Executor": "docker"}).container_id == first.container_id
        exited = asyncio.ensure_future(adopted.wait())
        await adopted.shutdown(5.0, "SIGTERM")
        assert await exited == 5  # Docker knows the exit code even of an adopted container
        with pytest.raises(ExitStatusUnknown, match="not running"):
            second_executor.recover(task, handle)
        assert len(containers_of(executor, task)) == 1
    finally:
        second_executor.client.close()


async def test_containers_of_tasks_the_node_no_longer_owns_are_removed(executor: DockerExecutor,
                                                                       run_label: str) -> None:
    node_id = new_id()
    kept, orphan = make_task(FOREVER, run_label, node_id=node_id), make_task(FOREVER, run_label, node_id=node_id)
    other_node = make_task(FOREVER, run_label)
    for task in (kept, orphan, other_node):
        await started(executor, task)
    removed = await executor.remove_orphans(node_id, {kept["ID"]})
    assert removed == [container_name(orphan)]
    assert containers_of(executor, orphan) == []
    assert len(containers_of(executor, kept)) == 1 and len(containers_of(executor, other_node)) == 1


async def test_host_mode_port_is_bound_on_the_node(executor: DockerExecutor, run_label: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = make_task(["httpd", "-f", "-p", "80", "-h", "/www"], run_label)
    task["Endpoint"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port,
                                   "PublishMode": "host"}]}
    await started(executor, task)
    body = b""
    deadline = time.monotonic() + DEADLINE
    while not body:
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read())
        except OSError:
            assert time.monotonic() < deadline, "nothing answered on the published port"
            await asyncio.sleep(0.1)
    assert body == b"shoal-busybox 1\n"


def test_describe_reports_the_engine_version(executor: DockerExecutor) -> None:
    description = executor.describe()
    assert description["Engine"]["EngineVersion"] == docker.from_env(version="auto").version()["Version"]
    assert description["Resources"]["NanoCPUs"] > 0 and description["Platform"]["OS"] == "linux"


def test_the_second_image_differs_in_a_file(executor: DockerExecutor) -> None:
    outputs = [executor.client.containers.run(image, ["cat", "/etc/shoal-image"], remove=True,
                                              labels={RUN_LABEL: "images"}) for image in (IMAGE_1, IMAGE_2)]
    assert outputs == [b"1\n", b"2\n"]


# ---- the worker driving docker containers ------------------------------------------------------------------

async def test_worker_reports_a_killed_container_with_its_exit_code(executor: DockerExecutor, run_label: str,
                                                                    tmp_path: Path) -> None:
    reports = Reports()
    worker = Worker(tmp_path, executor, reports, SystemClock())
    await worker.start()
    task = make_task(FOREVER, run_label)
    try:
        await worker.assign([task], full=True)
        await reports.reach(task["ID"], "running")
        executor.api.kill(containers_of(executor, task)[0]["Id"], signal="SIGKILL")
        failed = await reports.reach(task["ID"], "failed")
        assert failed["Err"] == "task: non-zero exit (137)"
        assert failed["ContainerStatus"]["ExitCode"] == 137
    finally:
        await worker.stop(kill_tasks=True)
    assert containers_of(executor, task) == []


async def test_worker_holds_a_task_starting_until_docker_says_healthy_and_fails_it_when_unhealthy(
        executor: DockerExecutor, run_label: str, tmp_path: Path) -> None:
    reports = Reports()
    worker = Worker(tmp_path, executor, reports, SystemClock())
    await worker.start()
    script = "touch /tmp/ok; sleep 2; rm /tmp/ok; while true; do sleep 0.1; done"
    task = make_task(["sh", "-c", script], run_label, Healthcheck=healthcheck("test -f /tmp/ok"))
    try:
        await worker.assign([task], full=True)
        await reports.reach(task["ID"], "running")
        assert reports.states(task["ID"]).index("starting") < reports.states(task["ID"]).index("running")
        failed = await reports.reach(task["ID"], "failed")
        assert ERR_UNHEALTHY in failed["Err"]
    finally:
        await worker.stop(kill_tasks=True)


async def test_a_restarted_worker_adopts_its_container_instead_of_starting_another(
        executor: DockerExecutor, run_label: str, tmp_path: Path) -> None:
    task = make_task(FOREVER, run_label)
    first_reports = Reports()
    first = Worker(tmp_path, executor, first_reports, SystemClock())
    await first.start()
    await first.assign([task], full=True)
    await first_reports.reach(task["ID"], "running")
    await first.stop(kill_tasks=False)  # the agent goes away; the container keeps running

    second_executor = DockerExecutor.connect()
    reports = Reports()
    second = Worker(tmp_path, second_executor, reports, SystemClock())
    try:
        assert await second.start() == "re-adopted 1, lost 0, resumed 0"
        await second.assign([task], full=True)
        assert len(containers_of(executor, task)) == 1
        assert executor.api.inspect_container(containers_of(executor, task)[0]["Id"])["State"]["Running"]
        await second.assign([], full=True)  # the manager took the task away: stopped and removed
        await wait_until(lambda: containers_of(executor, task) == [])
        assert reports.states(task["ID"])[-1] == "shutdown"
    finally:
        await second.stop(kill_tasks=True)
        second_executor.client.close()


async def test_image_of_the_second_tag_is_used(executor: DockerExecutor, run_label: str) -> None:
    task = make_task(["cat", "/etc/shoal-image"], run_label, image=IMAGE_2)
    controller = await started(executor, task)
    assert await controller.wait() == 0
    lines = await collect(executor.logs(task["ID"], None, False, never, time.time))
    assert [line for _, _, line in lines] == [b"2\n"]
