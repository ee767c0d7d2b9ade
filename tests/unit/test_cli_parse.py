"""Command lines -> the requests the CLI sends (bodies shaped like the docker CLI's), and bad input -> one
error line with nothing sent."""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shoal.api.client import Client
from shoal.cli.common import CliContext
from shoal.cli.main import run
from shoal.cli.spec import cpus_flag, memory_flag, parse_publish
from shoal.spec import go_architecture

SERVICE_ID = "794c177dfbae4f6784a4fa4f8"
Route = Callable[[httpx.Request], Any]


class FakeDaemon:
    """An in-process daemon behind httpx.MockTransport that records every request."""

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        if key not in self.routes:
            return httpx.Response(404, json={"message": f"no route {key}"})
        answer = self.routes[key]
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(201 if key == "POST /services/create" else 200, json=answer)

    def bodies(self, key: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if f"{r.method} {r.url.path}" == key]

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        ctx = CliContext(out=out, err=err, now=lambda: 0.0)
        ctx.set_client(Client("http://shoal", transport=httpx.MockTransport(self.handle)))
        code = run(list(argv), ctx)
        return code, out.getvalue(), err.getvalue()


def created() -> FakeDaemon:
    return FakeDaemon({"POST /services/create": {"ID": SERVICE_ID, "Warnings": None}})


def test_create_sends_the_body_docker_sends() -> None:
    daemon = created()
    code, out, err = daemon.cli("service", "create", "-d", "--name", "web", "--replicas", "2", "-p", "80:80",
                                "nginx:1.25", "nginx", "-g", "daemon off;")
    assert (code, out, err) == (0, SERVICE_ID + "\n", "")
    assert daemon.bodies("POST /services/create") == [{
        "Name": "web", "Labels": {},
        "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1.25", "Args": ["nginx", "-g", "daemon off;"],
                                           "Init": False, "DNSConfig": {}},
                         "Resources": {"Limits": {}, "Reservations": {}}, "Placement": {}, "ForceUpdate": 0},
        "Mode": {"Replicated": {"Replicas": 2}},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80,
                                                   "PublishMode": "ingress"}]},
    }]
    # The body keeps docker's key order too.
    assert list(daemon.bodies("POST /services/create")[0]) == ["Name", "Labels", "TaskTemplate", "Mode", "EndpointSpec"]


def test_create_global_unnamed_with_update_flags() -> None:
    daemon = created()
    code, _, _ = daemon.cli("service", "create", "-d", "--mode", "global", "--update-delay", "10s",
                            "--update-parallelism", "2", "--update-failure-action", "continue", "alpine:3.19",
                            "sleep", "1000")
    body = daemon.bodies("POST /services/create")[0]
    assert code == 0
    assert "Name" not in body  # the server generates the name
    assert body["Mode"] == {"Global": {}}
    assert body["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "1000"]
    assert body["UpdateConfig"] == {"Parallelism": 2, "Delay": 10_000_000_000, "FailureAction": "continue",
                                    "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}
    assert "RollbackConfig" not in body
    assert body["EndpointSpec"] == {"Mode": "vip"}


@pytest.mark.parametrize(("argv", "mode"), [
    # docker's ToServiceMode: --replicas is TotalCompletions, and MaxConcurrent too unless --max-concurrent.
    (["--mode", "replicated-job", "--replicas", "5", "--max-concurrent", "2"],
     {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}),
    (["--mode", "replicated-job", "--replicas", "5"], {"ReplicatedJob": {"MaxConcurrent": 5, "TotalCompletions": 5}}),
    (["--mode", "replicated-job", "--max-concurrent", "3"], {"ReplicatedJob": {"MaxConcurrent": 3}}),
    (["--mode", "replicated-job"], {"ReplicatedJob": {}}),  # the server's defaults: 1 and 1
    (["--mode", "global-job"], {"GlobalJob": {}}),
])
def test_create_a_job(argv: list[str], mode: dict) -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", *argv, "busybox", "sh", "-c", "sleep 0.5")
    assert (code, err) == (0, "")
    body = daemon.bodies("POST /services/create")[0]
    assert body["Mode"] == mode
    assert "UpdateConfig" not in body and "RollbackConfig" not in body


def test_update_of_a_replicated_job_sets_completions_and_concurrency() -> None:
    daemon = updatable(current_service(Mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}))
    code, _, err = daemon.cli("service", "update", "-d", "--replicas", "8", "--max-concurrent", "4", "web")
    assert (code, err) == (0, "")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["Mode"] == {
        "ReplicatedJob": {"MaxConcurrent": 4, "TotalCompletions": 8}}


def test_update_max_concurrent_of_a_replicated_service_is_refused() -> None:
    daemon = updatable()
    code, _, err = daemon.cli("service", "update", "-d", "--max-concurrent", "4", "web")
    assert (code, err) == (1, "max-concurrent can only be used with replicated-job mode\n")
    assert [r.method for r in daemon.requests] == ["GET"]


def test_create_without_replicas_leaves_them_to_the_server() -> None:
    daemon = created()
    daemon.cli("service", "create", "-d", "nginx")
    assert daemon.bodies("POST /services/create")[0]["Mode"] == {"Replicated": {}}


def test_create_passes_shell_commands_through() -> None:
    daemon = created()
    daemon.cli("service", "create", "-d", "busybox", "sh", "-c", "echo hi; sleep 100")
    assert daemon.bodies("POST /services/create")[0]["TaskTemplate"]["ContainerSpec"]["Args"] == \
        ["sh", "-c", "echo hi; sleep 100"]


def test_create_container_restart_rollback_and_health_flags() -> None:
    daemon = created()
    code, _, err = daemon.cli(
        "service", "create", "-d", "--name", "api", "-e", "A=1", "--env", "B=2", "-e", "A=3", "--label", "tier=web",
        "--constraint", "node.role==worker", "--entrypoint", "python -u", "--workdir", "/srv", "--user", "nobody",
        "--stop-grace-period", "30s", "--stop-signal", "SIGINT", "--restart-condition", "on-failure",
        "--restart-max-attempts", "3", "--rollback-order", "start-first", "--health-cmd", "curl -f localhost",
        "--health-interval", "5s", "--health-retries", "3",
        "-p", "published=8080,target=80,protocol=udp,mode=host", "python:3.12", "app.py")
    assert (code, err) == (0, "")
    body = daemon.bodies("POST /services/create")[0]
    container = body["TaskTemplate"]["ContainerSpec"]
    assert container["Command"] == ["python", "-u"]
    assert container["Args"] == ["app.py"]
    assert container["Env"] == ["B=2", "A=3"]
    assert (container["Dir"], container["User"], container["StopSignal"]) == ("/srv", "nobody", "SIGINT")
    assert container["StopGracePeriod"] == 30_000_000_000
    assert container["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000,
                                        "Retries": 3}
    assert body["Labels"] == {"tier": "web"}
    assert body["TaskTemplate"]["Placement"] == {"Constraints": ["node.role==worker"]}
    assert body["TaskTemplate"]["RestartPolicy"] == {"Condition": "on-failure", "Delay": 5_000_000_000,
                                                     "MaxAttempts": 3}
    assert body["RollbackConfig"]["Order"] == "start-first"
    assert body["RollbackConfig"]["FailureAction"] == "pause"
    assert "UpdateConfig" not in body
    assert body["EndpointSpec"]["Ports"] == [{"Protocol": "udp", "TargetPort": 80, "PublishedPort": 8080,
                                              "PublishMode": "host"}]


def test_no_healthcheck() -> None:
    daemon = created()
    daemon.cli("service", "create", "-d", "--no-healthcheck", "nginx")
    assert daemon.bodies("POST /services/create")[0]["TaskTemplate"]["ContainerSpec"]["Healthcheck"] == \
        {"Test": ["NONE"]}


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "global", "--replicas", "2"], "replicas can only be used with replicated or replicated-job mode"),
    (["--mode", "global-job", "--replicas", "2"], "replicas can only be used with replicated or replicated-job mode"),
    (["--max-concurrent", "2"], "max-concurrent can only be used with replicated-job mode"),
    (["--mode", "global-job", "--max-concurrent", "2"], "max-concurrent can only be used with replicated-job mode"),
    (["--mode", "replicated-job", "--max-concurrent", "x"], 'invalid argument "x" for "--max-concurrent" flag'),
    (["--mode", "replicated-job", "--update-delay", "1s"],
     "update and rollback configuration is not supported for jobs"),
    (["--mode", "global-job", "--rollback-order", "start-first"],
     "update and rollback configuration is not supported for jobs"),
    (["--replicas", "-1"], 'invalid argument "-1" for "--replicas" flag'),
    (["--replicas", "two"], 'invalid argument "two" for "--replicas" flag'),
    (["--mode", "batch"], "Unknown mode: batch"),
    (["-p", "80:http"], 'invalid argument "80:http" for "-p, --publish" flag'),
    (["-p", "70000:80"], 'invalid argument "70000:80" for "-p, --publish" flag'),
    (["-p", "1.2.3.4:80:80"], "hostip is not supported"),
    (["-p", "target=80,bogus=1"], "invalid field key: bogus"),
    (["-p", "published=80"], "missing mandatory field 'target'"),
    (["--update-delay", "10x"], 'invalid argument "10x" for "--update-delay" flag'),
    (["--restart-delay", "-5s"], 'invalid argument "-5s" for "--restart-delay" flag'),
    (["--update-failure-action", "explode"], 'invalid argument "explode" for "--update-failure-action" flag'),
    (["--restart-condition", "always"], 'invalid argument "always" for "--restart-condition" flag'),
    (["--no-healthcheck", "--health-cmd", "true"], "--no-healthcheck conflicts with --health-* options"),
    (["--secret", "target=x"], 'invalid argument "target=x" for "--secret" flag: source is required'),
    (["--secret", "source=db,mode=rw"], "is not an octal file mode"),
    (["--secret", "source=db,owner=me"], "invalid field key 'owner'"),
    (["--secret", "source=db,uid=root"], "uid must be a numeric id"),
    (["--config", "src=a,target=/x", "--config", "src=b,target=/x"], "duplicate config target for b not allowed"),
    (["--limit-memory", "12x"], 'invalid argument "12x" for "--limit-memory" flag: invalid size: \'12x\''),
    (["--reserve-memory", "-1g"], 'invalid argument "-1g" for "--reserve-memory" flag: invalid size'),
    (["--limit-memory", "1.2.3m"], 'invalid argument "1.2.3m" for "--limit-memory" flag: invalid size'),
    (["--limit-cpu", "half"], 'invalid argument "half" for "--limit-cpu" flag: failed to parse half as a rational'),
    (["--limit-cpu", "1/0"], 'invalid argument "1/0" for "--limit-cpu" flag: failed to parse'),
    (["--reserve-cpu", "0.0000000001"], 'invalid argument "0.0000000001" for "--reserve-cpu" flag: value is too '
                                        "precise"),
    (["--limit-cpu", "-1"], 'invalid argument "-1" for "--limit-cpu" flag: must not be negative'),
    (["--limit-pids", "many"], 'invalid argument "many" for "--limit-pids" flag: must be a non-negative integer'),
    # The container flags, worded as docker CLI 28 words them.
    (["--mount", "foo"], 'invalid argument "foo" for "--mount" flag: invalid field \'foo\' must be a key=value pair'),
    (["--mount", "type=volume"], 'invalid argument "type=volume" for "--mount" flag: target is required'),
    (["--mount", "type=bind,target=/x,volume-label=a=b"],
     "for \"--mount\" flag: cannot mix 'volume-*' options with mount type 'bind'"),
    (["--mount", "type=tmpfs,target=/x,tmpfs-size=zz"], "flag: invalid value for tmpfs-size: zz"),
    (["--mount", "type=tmpfs,target=/x,tmpfs-mode=99"], "flag: invalid value for tmpfs-mode: 99"),
    (["--mount", "type=bind,target=/x,readonly=maybe"], "flag: invalid value for readonly: maybe"),
    (["--mount", "type=bind,target=/x,bogus=1"], "flag: unexpected key 'bogus' in 'bogus=1'"),
    (["--mount", "target=/x,bind-recursive=foo"],
     'flag: invalid value for bind-recursive: foo (must be "enabled", "disabled", "writable", or "readonly")'),
    (["--mount", "type=bind,target=/x,bind-recursive=readonly,ro"],
     "flag: option 'bind-recursive=readonly' requires 'bind-propagation=rprivate' to be specified in conjunction"),
    (["--mount", "type=npipe,target=/x"],
     "flag: mount type 'npipe' is not supported by shoal: use 'bind', 'volume' or 'tmpfs'"),
    (["--mount", "type=bind,src=/s,target=/x,bind-propagation=sideways"], "flag: invalid bind-propagation: sideways"),
    (["--dns", "1.2.3"], 'invalid argument "1.2.3" for "--dns" flag: IP address is not correctly formatted: 1.2.3'),
    (["--dns-search", "a..b"], 'invalid argument "a..b" for "--dns-search" flag: a..b is not a valid domain'),
    (["--host", "foo"], 'invalid argument "foo" for "--host" flag: bad format for add-host: "foo"'),
    (["--host", "foo:1.2.3"], 'invalid argument "foo:1.2.3" for "--host" flag: invalid IP address in add-host: '
                              '"1.2.3"'),
    (["--ulimit", "nofile"], 'invalid argument "nofile" for "--ulimit" flag: invalid ulimit argument: nofile'),
    (["--ulimit", "bogus=1:2"], "flag: invalid ulimit type: bogus"),
    (["--ulimit", "nofile=5:2"], "flag: ulimit soft limit must be less than or equal to hard limit: 5 > 2"),
    (["--ulimit", "nofile=a:b"], 'flag: strconv.ParseInt: parsing "b": invalid syntax'),
    (["--oom-score-adj", "x"], 'invalid argument "x" for "--oom-score-adj" flag: strconv.ParseInt: parsing "x"'),
    (["--oom-score-adj", "2000"], 'invalid argument "2000" for "--oom-score-adj" flag: must be from -1000 to 1000'),
    (["--sysctl", "net.core.somaxconn"], 'for "--sysctl" flag: use KEY=VALUE, e.g. net.core.somaxconn=1024'),
    (["--log-driver", "json-file", "--log-opt", "max-size"], 'for "--log-opt" flag: use KEY=VALUE'),
    (["--log-opt", "max-size=1m"], "--log-opt needs --log-driver: give the driver too"),
])
def test_bad_create_input_is_one_error_and_nothing_is_sent(argv: list[str], message: str) -> None:
    daemon = created()
    code, out, err = daemon.cli("service", "create", "-d", *argv, "nginx")
    assert (code, out) == (1, "")
    assert message in err
    assert err.count("\n") == 1
    assert daemon.requests == []


def test_create_with_container_flags_sends_the_body_docker_28_sends() -> None:
    """The body recorded from docker CLI 28.2.2 for the same command line (tests/unit/test_controlapi_service.py,
    CLI_CREATE_CONTAINER_FLAGS), key order included."""
    daemon = created()
    code, _, err = daemon.cli(
        "service", "create", "-d", "--name", "web",
        "--mount", "type=volume,source=data,target=/data,volume-label=a=b,volume-driver=local,volume-opt=o=bind",
        "--mount", "type=bind,src=/srv,dst=/srv,readonly,bind-propagation=rslave",
        "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777", "--cap-add", "NET_ADMIN",
        "--cap-drop", "mknod", "--dns", "1.1.1.1", "--dns-search", "corp", "--dns-option", "ndots:2",
        "--host", "db:10.0.0.1", "--host", "gw:host-gateway", "--sysctl", "net.core.somaxconn=1024",
        "--ulimit", "nofile=10:20", "--ulimit", "nproc=5", "--init", "-t", "--read-only", "--group", "video",
        "--log-driver", "json-file", "--log-opt", "max-size=1m", "--oom-score-adj", "100", "--hostname", "box",
        "busybox:latest", "sleep", "1")
    assert (code, err) == (0, "")
    sent = daemon.bodies("POST /services/create")[0]
    assert json.dumps(sent) == (
        '{"Name": "web", "Labels": {}, "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": '
        '["sleep", "1"], "Hostname": "box", "Groups": ["video"], "Init": true, "TTY": true, "ReadOnly": true, '
        '"Mounts": [{"Type": "volume", "Source": "data", "Target": "/data", "VolumeOptions": {"Labels": {"a": "b"}, '
        '"DriverConfig": {"Name": "local", "Options": {"o": "bind"}}}}, {"Type": "bind", "Source": "/srv", '
        '"Target": "/srv", "ReadOnly": true, "BindOptions": {"Propagation": "rslave"}}, {"Type": "tmpfs", "Target": '
        '"/t", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 1023}}], "Hosts": ["10.0.0.1 db", "host-gateway gw"], '
        '"DNSConfig": {"Nameservers": ["1.1.1.1"], "Search": ["corp"], "Options": ["ndots:2"]}, "Sysctls": '
        '{"net.core.somaxconn": "1024"}, "CapabilityAdd": ["CAP_NET_ADMIN"], "CapabilityDrop": ["CAP_MKNOD"], '
        '"Ulimits": [{"Name": "nofile", "Hard": 20, "Soft": 10}, {"Name": "nproc", "Hard": 5, "Soft": 5}], '
        '"OomScoreAdj": 100}, "Resources": {"Limits": {}, "Reservations": {}}, "Placement": {}, "LogDriver": '
        '{"Name": "json-file", "Options": {"max-size": "1m"}}, "ForceUpdate": 0}, "Mode": {"Replicated": {}}, '
        '"EndpointSpec": {"Mode": "vip"}}')


def test_the_host_flag_of_service_create_leaves_the_daemon_address_alone() -> None:
    """`--host db:10.0.0.1` is an extra host; the daemon is still the one -H or $SHOAL_HOST names."""
    from shoal.cli.main import build_parser
    args = build_parser().parse_args(["-H", "unix:///run/x.sock", "service", "create", "--host", "db:10.0.0.1",
                                      "busybox"])
    assert (args.host, args.extra_host) == ("unix:///run/x.sock", ["db:10.0.0.1"])


@pytest.mark.parametrize(("mount", "sent"), [
    ("target=/cache", {"Type": "volume", "Target": "/cache"}),  # an anonymous volume
    ("type=volume,target=/x,volume-nocopy", {"Type": "volume", "Target": "/x",
                                             "VolumeOptions": {"NoCopy": True, "DriverConfig": {}}}),
    ("type=bind,src=/s,target=/x,ro=1,bind-nonrecursive", {"Type": "bind", "Source": "/s", "Target": "/x",
                                                           "ReadOnly": True, "BindOptions": {"NonRecursive": True}}),
    ("type=bind,src=/s,dst=/x,bind-recursive=enabled,consistency=CACHED",
     {"Type": "bind", "Source": "/s", "Target": "/x", "Consistency": "cached"}),
    ("Type=TMPFS,destination=/t,readonly=false", {"Type": "tmpfs", "Target": "/t"}),
    ('"type=bind","src=/a,b",target=/x', {"Type": "bind", "Source": "/a,b", "Target": "/x"}),  # csv quoting
])
def test_mounts_are_read_as_docker_reads_them(mount: str, sent: dict) -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", "--mount", mount, "busybox")
    assert (code, err) == (0, "")
    assert daemon.bodies("POST /services/create")[0]["TaskTemplate"]["ContainerSpec"]["Mounts"] == [sent]


def test_capabilities_are_normalised_and_all_wins_as_in_docker() -> None:
    daemon = created()
    daemon.cli("service", "create", "-d", "--cap-add", "net_admin", "--cap-add", "CAP_SYS_TIME", "--cap-drop", "all",
               "--cap-drop", "sys_time", "busybox")
    container = daemon.bodies("POST /services/create")[0]["TaskTemplate"]["ContainerSpec"]
    assert (container["CapabilityAdd"], container["CapabilityDrop"]) == (["CAP_NET_ADMIN", "CAP_SYS_TIME"], ["ALL"])


def test_create_with_resource_flags_sends_dockers_resources() -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", "--limit-cpu", "0.5", "--limit-memory", "64m",
                              "--limit-pids", "100", "--reserve-cpu", "1/4", "--reserve-memory", "1.5GiB", "nginx")
    assert (code, err) == (0, "")
    assert daemon.bodies("POST /services/create")[0]["TaskTemplate"]["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 100},
        "Reservations": {"NanoCPUs": 250_000_000, "MemoryBytes": 3 << 29},
    }


@pytest.mark.parametrize(("value", "size"), [
    ("512", 512), ("512b", 512), ("1k", 1024), ("1K", 1024), ("2kb", 2048), ("2KiB", 2048), ("512m", 512 << 20),
    ("64 MB", 64 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("1t", 1 << 40), ("1p", 1 << 50), ("0", 0),
    ("1.5", 1),
])
def test_memory_sizes_are_read_as_docker_reads_them(value: str, size: int) -> None:
    assert memory_flag("--limit-memory", value) == size


@pytest.mark.parametrize(("value", "nano"), [
    ("0.5", 500_000_000), ("2", 2_000_000_000), ("1.25", 1_250_000_000), ("3/4", 750_000_000),
    ("1e-3", 1_000_000), (".5", 500_000_000), ("0", 0), ("0.000000001", 1),
])
def test_cpus_are_read_as_docker_reads_them(value: str, nano: int) -> None:
    assert cpus_flag("--limit-cpu", value) == nano


def test_update_changes_only_the_resource_flags_given() -> None:
    resources = {"Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 64 << 20},
                 "Reservations": {"MemoryBytes": 32 << 20}}
    task = current_service()["Spec"]["TaskTemplate"] | {"Resources": resources}
    daemon = updatable(current_service(TaskTemplate=task))
    code, _, err = daemon.cli("service", "update", "-d", "--limit-memory", "128m", "--limit-pids", "50",
                              "--reserve-cpu", "0.25", "web")
    assert (code, err) == (0, "")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["Resources"] == {
        "Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 128 << 20, "Pids": 50},
        "Reservations": {"MemoryBytes": 32 << 20, "NanoCPUs": 250_000_000},
    }


def test_update_with_zero_clears_a_limit_and_without_resources_adds_them() -> None:
    daemon = updatable()
    code, _, _ = daemon.cli("service", "update", "-d", "--limit-cpu", "0", "--limit-memory", "1g", "web")
    assert code == 0
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["Resources"] == {
        "Limits": {"MemoryBytes": 1 << 30}}
    resources = {"Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 64 << 20}, "Reservations": {}}
    daemon = updatable(current_service(TaskTemplate=current_service()["Spec"]["TaskTemplate"]
                                       | {"Resources": resources}))
    daemon.cli("service", "update", "-d", "--limit-cpu", "0", "web")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["Resources"] == {
        "Limits": {"MemoryBytes": 64 << 20}, "Reservations": {}}


def test_bad_update_resource_flag_is_one_error_and_nothing_is_sent() -> None:
    daemon = updatable()
    code, _, err = daemon.cli("service", "update", "-d", "--reserve-memory", "lots", "web")
    assert code == 1
    assert err == 'invalid argument "lots" for "--reserve-memory" flag: invalid size: \'lots\'\n'
    assert [r.method for r in daemon.requests] == ["GET"]


def test_create_with_secrets_and_configs_sends_dockers_references() -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", "--secret", "db", "--secret",
                              "source=tls,target=server.key,uid=100,gid=101,mode=0400",
                              "--config", "src=app,target=/etc/app.conf", "nginx")
    assert (code, err) == (0, "")
    container = daemon.bodies("POST /services/create")[0]["TaskTemplate"]["ContainerSpec"]
    assert container["Secrets"] == [
        {"File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 0o444}, "SecretName": "db"},
        {"File": {"Name": "server.key", "UID": "100", "GID": "101", "Mode": 0o400}, "SecretName": "tls"}]
    assert container["Configs"] == [
        {"File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o444}, "ConfigName": "app"}]


def test_update_rotates_a_secret_by_removing_one_and_adding_another_at_the_same_target() -> None:
    old = {"SecretID": "id-old", "SecretName": "db_v1", "File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 292}}
    keep = {"SecretID": "id-k", "SecretName": "other", "File": {"Name": "other", "UID": "0", "GID": "0", "Mode": 292}}
    service = current_service()
    service["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"] = [old, keep]
    daemon = updatable(service)
    code, _, err = daemon.cli("service", "update", "-d", "--secret-rm", "db_v1", "--secret-add",
                              "source=db_v2,target=db", "--config-add", "app", "web")
    assert (code, err) == (0, "")
    container = daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["ContainerSpec"]
    assert container["Secrets"] == [keep, {"File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 292},
                                           "SecretName": "db_v2"}]
    assert container["Configs"] == [{"File": {"Name": "app", "UID": "0", "GID": "0", "Mode": 292},
                                     "ConfigName": "app"}]


def test_create_with_networks_and_endpoint_mode() -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", "--network", "back", "--network",
                              "name=front,alias=web,alias=www,driver-opt=com.example=1", "--endpoint-mode", "dnsrr",
                              "nginx")
    assert (code, err) == (0, "")
    body = daemon.bodies("POST /services/create")[0]
    assert body["TaskTemplate"]["Networks"] == [
        {"Target": "back"}, {"Target": "front", "Aliases": ["web", "www"], "DriverOpts": {"com.example": "1"}}]
    assert body["EndpointSpec"] == {"Mode": "dnsrr"}
    code, _, err = created().cli("service", "create", "-d", "--network", "alias=x", "nginx")
    assert code == 1 and "network name is required" in err


def test_update_adds_and_removes_networks_by_name_or_id() -> None:
    service = current_service()
    service["Spec"]["TaskTemplate"]["Networks"] = [{"Target": "netid-back", "Aliases": []},
                                                   {"Target": "netid-keep"}]
    daemon = updatable(service)
    daemon.routes["GET /networks/back"] = {"Id": "netid-back", "Name": "back"}
    code, _, err = daemon.cli("service", "update", "-d", "--network-rm", "back", "--network-add", "front", "web")
    assert (code, err) == (0, "")
    spec = daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "netid-keep"}, {"Target": "front"}]


def test_network_create_sends_dockers_body_and_prints_the_id() -> None:
    daemon = FakeDaemon({"POST /networks/create": {"Id": "n" * 25, "Warning": ""}})
    code, out, err = daemon.cli("network", "create", "-d", "overlay", "--subnet", "10.9.0.0/24", "--attachable",
                                "--label", "team=a", "back")
    assert (code, out, err) == (0, "n" * 25 + "\n", "")
    body = daemon.bodies("POST /networks/create")[0]
    assert (body["Name"], body["Driver"], body["Attachable"], body["Labels"]) == ("back", "overlay", True,
                                                                                    {"team": "a"})
    assert body["IPAM"] == {"Driver": "default", "Config": [{"Subnet": "10.9.0.0/24"}]}
    code, _, err = daemon.cli("network", "create", "--gateway", "10.9.0.1", "x")
    assert code == 1 and "corresponding subnet" in err


def test_network_ls_has_dockers_columns() -> None:
    daemon = FakeDaemon({"GET /networks": [
        {"Id": "b" * 25, "Name": "back", "Driver": "overlay", "Scope": "swarm"},
        {"Id": "a" * 25, "Name": "ingress", "Driver": "overlay", "Scope": "swarm"}]})
    code, out, _ = daemon.cli("network", "ls")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"], ["b" * 12, "back", "overlay", "swarm"],
        ["a" * 12, "ingress", "overlay", "swarm"]]


def test_usage_errors_exit_2_with_a_hint_and_send_nothing() -> None:
    daemon = created()
    code, out, err = daemon.cli("service", "create", "--bogus", "nginx")
    assert (code, out) == (2, "")
    assert err == "shoal: error: unrecognized arguments: --bogus\nSee 'shoal service create --help'.\n"
    code, _, err = daemon.cli("node", "update", "--availability", "asleep", "node1")
    assert code == 2
    assert err.startswith("shoal: error: argument --availability: invalid choice: 'asleep'")
    assert err.endswith("See 'shoal node update --help'.\n")
    assert daemon.requests == []


def test_parse_publish_forms() -> None:
    assert parse_publish("8080:80/udp") == [{"Protocol": "udp", "TargetPort": 80, "PublishedPort": 8080,
                                             "PublishMode": "ingress"}]
    assert parse_publish("80") == [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 0, "PublishMode": "ingress"}]
    assert [(p["PublishedPort"], p["TargetPort"]) for p in parse_publish("8080-8081:80-81")] == [(8080, 80), (8081, 81)]
    assert [p["PublishedPort"] for p in parse_publish("published=9000,target=90")] == [9000]


def current_service(**spec_changes: Any) -> dict:
    spec = {
        "Name": "web", "Labels": {"old": "1"},
        "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1.25", "Args": ["nginx"], "Env": ["A=1", "B=2"]},
                         "Placement": {"Constraints": ["node.role==worker"]}, "ForceUpdate": 1},
        "Mode": {"Replicated": {"Replicas": 2}},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80,
                                                   "PublishMode": "ingress"}]},
    } | spec_changes
    return {"ID": SERVICE_ID, "Version": {"Index": 25}, "Spec": spec}


def updatable(service: dict | None = None) -> FakeDaemon:
    return FakeDaemon({
        "GET /services/web": service or current_service(),
        f"POST /services/{SERVICE_ID}/update": {"Warnings": None},
    })


def test_update_modifies_the_current_spec() -> None:
    daemon = updatable()
    code, out, err = daemon.cli(
        "service", "update", "-d", "--image", "nginx:1.26", "--args", "nginx -g 'daemon off;'", "--env-add", "B=3",
        "--env-add", "C=4", "--env-rm", "A", "--replicas", "4", "--constraint-add", "node.labels.zone==a",
        "--constraint-rm", "node.role==worker", "--publish-add", "8080:8080", "--publish-rm", "80",
        "--label-add", "new=2", "--label-rm", "old", "--force", "--update-parallelism", "2",
        "--update-monitor", "2s", "--restart-delay", "1s", "web")
    assert (code, out, err) == (0, "web\n", "")
    request = [r for r in daemon.requests if r.method == "POST"][0]
    assert dict(request.url.params) == {"version": "25"}
    spec = daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == "nginx:1.26"
    assert container["Args"] == ["nginx", "-g", "daemon off;"]
    assert container["Env"] == ["B=3", "C=4"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 4}}
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.zone==a"]
    assert spec["EndpointSpec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8080,
                                              "PublishMode": "ingress"}]
    assert spec["Labels"] == {"new": "2"}
    assert spec["TaskTemplate"]["ForceUpdate"] == 2
    assert spec["UpdateConfig"] == {"Parallelism": 2, "Delay": 0, "FailureAction": "pause",
                                    "Monitor": 2_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}
    assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 1_000_000_000, "MaxAttempts": 0}


def container_service() -> dict:
    return current_service(TaskTemplate={"ContainerSpec": {
        "Image": "busybox", "Init": False, "DNSConfig": {"Nameservers": ["9.9.9.9"], "Options": ["ndots:2"]},
        "Hosts": ["10.0.0.1 db db.local", "10.0.0.2 cache"], "CapabilityAdd": ["CAP_NET_ADMIN"],
        "Sysctls": {"a.b": "1"}, "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 20}], "Groups": ["video"],
        "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}], "TTY": True},
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}}, "ForceUpdate": 0})


@pytest.mark.parametrize(("argv", "changed"), [
    (["--mount-add", "type=bind,src=/a,dst=/x", "--mount-rm", "/data"],
     {"Mounts": [{"Type": "bind", "Source": "/a", "Target": "/x"}]}),
    (["--mount-add", "type=volume,src=new,dst=/data", "--mount-add", "type=tmpfs,dst=/t"],
     {"Mounts": [{"Type": "tmpfs", "Target": "/t"}, {"Type": "volume", "Source": "new", "Target": "/data"}]}),
    (["--mount-rm", "/data"], {"Mounts": None}),
    (["--group-add", "b", "--group-add", "a", "--group-rm", "video"], {"Groups": ["a", "b"]}),
    (["--dns-add", "1.1.1.1", "--dns-rm", "9.9.9.9", "--dns-search-add", "corp", "--dns-option-rm", "ndots:2"],
     {"DNSConfig": {"Nameservers": ["1.1.1.1"], "Search": ["corp"]}}),
    (["--host-add", "x:1.2.3.4", "--host-rm", "db"], {"Hosts": ["10.0.0.1 db.local", "10.0.0.2 cache", "1.2.3.4 x"]}),
    (["--host-rm", "cache:10.0.0.2", "--host-rm", "db:10.9.9.9"], {"Hosts": ["10.0.0.1 db db.local"]}),
    (["--sysctl-add", "c.d=2", "--sysctl-rm", "a.b"], {"Sysctls": {"c.d": "2"}}),
    (["--ulimit-add", "nproc=3", "--ulimit-add", "nofile=1:2"],
     {"Ulimits": [{"Name": "nofile", "Hard": 2, "Soft": 1}, {"Name": "nproc", "Hard": 3, "Soft": 3}]}),
    (["--ulimit-rm", "nofile"], {"Ulimits": None}),
    # Dropping an added capability takes it off the added ones rather than listing it twice (docker).
    (["--cap-add", "sys_time", "--cap-drop", "net_admin"], {"CapabilityAdd": ["CAP_SYS_TIME"]}),
    (["--cap-drop", "all"], {"CapabilityDrop": ["ALL"]}),
    (["--cap-add", "RESET", "--cap-add", "mknod"], {"CapabilityAdd": ["CAP_MKNOD"]}),
    (["--init", "--read-only", "--hostname", "h", "--oom-score-adj", "-5"],
     {"Init": True, "ReadOnly": True, "Hostname": "h", "OomScoreAdj": -5}),
    (["--tty=false", "--init=false", "--oom-score-adj", "0"], {"TTY": None}),
])
def test_update_container_flags_add_and_remove_as_docker_does(argv: list[str], changed: dict) -> None:
    daemon = updatable(container_service())
    code, _, err = daemon.cli("service", "update", "-d", *argv, "web")
    assert (code, err) == (0, "")
    expected = container_service()["Spec"]["TaskTemplate"]["ContainerSpec"]
    for key, value in changed.items():
        if value is None:
            expected.pop(key)
        else:
            expected[key] = value
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["ContainerSpec"] == expected


def test_update_log_driver_replaces_the_driver_and_its_options() -> None:
    daemon = updatable(container_service())
    daemon.cli("service", "update", "-d", "--log-driver", "syslog", "--log-opt", "tag=web", "web")
    daemon.cli("service", "update", "-d", "--log-driver", "local", "web")
    sent = daemon.bodies(f"POST /services/{SERVICE_ID}/update")
    assert [body["TaskTemplate"]["LogDriver"] for body in sent] == [{"Name": "syslog", "Options": {"tag": "web"}},
                                                                    {"Name": "local"}]


@pytest.mark.parametrize(("argv", "message"), [
    (["--mount-add", "type=bind,dst=/x", "--mount-add", "type=volume,dst=/x"], "duplicate mount target"),
    (["--dns-add", "one.one"], 'invalid argument "one.one" for "--dns-add" flag: IP address is not correctly'),
    (["--host-add", "db"], 'invalid argument "db" for "--host-add" flag: bad format for add-host: "db"'),
    (["--ulimit-add", "nofile=2:1"], 'for "--ulimit-add" flag: ulimit soft limit must be less than or equal'),
    (["--log-opt", "tag=x"], "--log-opt needs --log-driver"),
])
def test_bad_update_container_flag_is_one_error_and_nothing_is_sent(argv: list[str], message: str) -> None:
    daemon = updatable(container_service())
    code, _, err = daemon.cli("service", "update", "-d", *argv, "web")
    assert code == 1 and message in err and err.count("\n") == 1
    assert [r.method for r in daemon.requests] == ["GET"]


def test_update_without_flags_resends_the_spec_unchanged() -> None:
    daemon = updatable()
    daemon.cli("service", "update", "-d", "web")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update") == [current_service()["Spec"]]


def test_update_replicas_on_a_global_service_is_refused() -> None:
    daemon = updatable(current_service(Mode={"Global": {}}))
    code, _, err = daemon.cli("service", "update", "-d", "--replicas", "3", "web")
    assert code == 1
    assert err == "replicas can only be used with replicated or replicated-job mode\n"
    assert [r.method for r in daemon.requests] == ["GET"]


def test_rollback_posts_the_current_spec_with_rollback_previous() -> None:
    daemon = updatable()
    code, out, _ = daemon.cli("service", "rollback", "-d", "web")
    assert (code, out) == (0, "web\n")
    request = [r for r in daemon.requests if r.method == "POST"][0]
    assert dict(request.url.params) == {"rollback": "previous", "version": "25"}
    assert json.loads(request.content) == current_service()["Spec"]


def test_scale() -> None:
    daemon = updatable()
    code, out, err = daemon.cli("service", "scale", "-d", "web=3")
    assert (code, out, err) == (0, "web scaled to 3\n", "")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["Mode"] == {"Replicated": {"Replicas": 3}}


def test_scale_of_a_replicated_job_sets_its_completions() -> None:
    daemon = updatable(current_service(Mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}))
    code, out, _ = daemon.cli("service", "scale", "-d", "web=9")
    assert (code, out) == (0, "web scaled to 9\n")
    assert daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["Mode"] == {
        "ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 9}}


@pytest.mark.parametrize("mode", [{"Global": {}}, {"GlobalJob": {}}])
def test_scale_of_a_global_service_or_job_is_refused_as_docker_refuses_it(mode: dict) -> None:
    daemon = updatable(current_service(Mode=mode))
    code, out, err = daemon.cli("service", "scale", "-d", "web=3")
    assert (code, out, err) == (1, "", "web: scale can only be used with replicated or replicated-job mode\n")
    assert [r.method for r in daemon.requests] == ["GET"]


@pytest.mark.parametrize("arg", ["web=x", "web=-1"])
def test_scale_rejects_bad_counts(arg: str) -> None:
    daemon = updatable()
    code, out, err = daemon.cli("service", "scale", "-d", arg)
    assert (code, out) == (1, "")
    assert err.startswith(f"web: invalid replicas value {arg.split('=')[1]}")
    assert daemon.requests == []


def test_scale_needs_name_equals_count() -> None:
    daemon = updatable()
    code, _, err = daemon.cli("service", "scale", "web")
    assert code == 1 and "Invalid scale specifier 'web'" in err
    assert daemon.requests == []


def test_swarm_init_body_and_output() -> None:
    node_id = "efa69d1e1c5a42cca919206a1"
    daemon = FakeDaemon({
        "GET /_ping": httpx.Response(200, text="OK"),
        "POST /swarm/init": node_id,
        f"GET /nodes/{node_id}": {"ID": node_id, "ManagerStatus": {"Addr": "10.0.0.5:2377"}},
        "GET /swarm": {"JoinTokens": {"Worker": "SWMTKN-1-worker", "Manager": "SWMTKN-1-manager"}},
    })
    code, out, err = daemon.cli("-H", "unix:///unused", "swarm", "init", "--advertise-addr", "10.0.0.5",
                                "--task-history-limit", "3")
    assert (code, err) == (0, "")
    assert out == (
        f"Swarm initialized: current node ({node_id}) is now a manager.\n\n"
        "To add a worker to this swarm, run the following command:\n\n"
        "    shoal swarm join --token SWMTKN-1-worker 10.0.0.5:2377\n\n"
        "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n\n"
    )
    body = daemon.bodies("POST /swarm/init")[0]
    assert body["ListenAddr"] == "10.0.0.5:2377"
    assert body["AdvertiseAddr"] == "10.0.0.5"
    assert body["Spec"]["Orchestration"] == {"TaskHistoryRetentionLimit": 3}
    assert body["ForceNewCluster"] is False


def test_swarm_join_and_join_token() -> None:
    daemon = FakeDaemon({
        "POST /swarm/join": httpx.Response(200),
        "GET /info": {"Swarm": {"NodeID": "n1", "ControlAvailable": False}},
        "GET /swarm": {"Version": {"Index": 11}, "Spec": {"Name": "default"},
                       "JoinTokens": {"Worker": "SWMTKN-1-worker", "Manager": "SWMTKN-1-manager"}},
        "POST /swarm/update": httpx.Response(200),
        "GET /nodes/n1": {"ID": "n1", "ManagerStatus": {"Addr": "127.0.0.2:2377"}},
    })
    code, out, _ = daemon.cli("-H", "unix:///unused", "swarm", "join", "--token", "SWMTKN-1-x",
                              "--advertise-addr", "127.0.0.3", "127.0.0.2:2377")
    assert (code, out) == (0, "This node joined a swarm as a worker.\n")
    assert daemon.bodies("POST /swarm/join") == [{
        "ListenAddr": "127.0.0.3:2377", "AdvertiseAddr": "127.0.0.3", "DataPathAddr": "",
        "RemoteAddrs": ["127.0.0.2:2377"], "JoinToken": "SWMTKN-1-x", "Availability": ""}]

    code, out, _ = daemon.cli("swarm", "join-token", "-q", "worker")
    assert out == "SWMTKN-1-worker\n"
    code, out, _ = daemon.cli("swarm", "join-token", "--rotate", "manager")
    assert out == ("Successfully rotated manager join token.\n\n"
                   "To add a manager to this swarm, run the following command:\n\n"
                   "    shoal swarm join --token SWMTKN-1-manager 127.0.0.2:2377\n\n")
    rotate = [r for r in daemon.requests if r.url.path == "/swarm/update"][0]
    assert dict(rotate.url.params) == {"rotateManagerToken": "true", "rotateManagerUnlockKey": "false",
                                       "rotateWorkerToken": "false", "version": "11"}
    assert json.loads(rotate.content) == {"Name": "default"}
    code, _, err = daemon.cli("swarm", "join-token", "boss")
    assert (code, err) == (1, "unknown role boss\n")


def test_node_promote_demote_and_update() -> None:
    node = {"ID": "efa69d1e1c5a42cca919206a1", "Version": {"Index": 13},
            "Spec": {"Labels": {}, "Role": "manager", "Availability": "active"}}
    daemon = FakeDaemon({"GET /nodes/node1": node, f"POST /nodes/{node['ID']}/update": httpx.Response(200)})
    assert daemon.cli("node", "promote", "node1")[1] == "Node node1 is already a manager.\n"
    assert daemon.bodies(f"POST /nodes/{node['ID']}/update") == []
    assert daemon.cli("node", "demote", "node1")[1] == "Manager node1 demoted in the swarm.\n"
    assert daemon.bodies(f"POST /nodes/{node['ID']}/update")[-1] == {"Labels": {}, "Role": "worker",
                                                                     "Availability": "active"}
    assert daemon.cli("node", "update", "--availability", "drain", "--label-add", "zone=a", "node1")[1] == "node1\n"
    assert daemon.bodies(f"POST /nodes/{node['ID']}/update")[-1] == {"Labels": {"zone": "a"}, "Role": "manager",
                                                                     "Availability": "drain"}
    code, _, err = daemon.cli("node", "update", "--label-rm", "missing", "node1")
    assert (code, err) == (1, "key missing doesn't exist in node's labels\n")


def test_service_ps_resolves_names_like_docker() -> None:
    web = {"ID": SERVICE_ID, "Spec": {"Name": "web"}}
    seen: list[dict] = []

    def services(request: httpx.Request) -> list:
        filters = json.loads(request.url.params["filters"])
        seen.append(filters)
        return [web] if "web" in filters.get("name", {}) else []

    daemon = FakeDaemon({
        "GET /services": services,
        "GET /tasks": [],
        f"GET /services/{SERVICE_ID}": web,
    })
    code, out, _ = daemon.cli("service", "ps", "-f", "desired-state=running", "web")
    assert code == 0
    assert out.startswith("ID   ")
    assert seen == [{"id": {"web": True}}, {"name": {"web": True}}]
    tasks_request = [r for r in daemon.requests if r.url.path == "/tasks"][0]
    assert json.loads(tasks_request.url.params["filters"]) == {"desired-state": {"running": True},
                                                               "service": {SERVICE_ID: True}}
    code, out, err = daemon.cli("service", "ps", "nope")
    assert (code, out, err) == (1, "", "no such service: nope\n")


def test_listen_address_defaults_to_the_advertised_ip() -> None:
    from shoal.cli.swarm import default_listen_addr

    assert default_listen_addr("127.0.0.2") == "127.0.0.2:2377"
    assert default_listen_addr("127.0.0.2:4000") == "127.0.0.2:4000"
    assert default_listen_addr(None) == "0.0.0.0:2377"
    assert default_listen_addr("::1") == "[::1]:2377"


def test_autostart_waits_for_the_daemon_or_its_exit() -> None:
    from shoal.cli.autostart import wait_for

    clock = {"now": 0.0}

    def monotonic() -> float:
        return clock["now"]

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    assert wait_for(lambda: clock["now"] >= 1.0, lambda: True, 30.0, monotonic, sleep)
    clock["now"] = 0.0
    assert not wait_for(lambda: False, lambda: clock["now"] < 0.5, 30.0, monotonic, sleep)
    assert clock["now"] < 1.0  # gave up as soon as the process died
    clock["now"] = 0.0
    assert not wait_for(lambda: False, lambda: True, 30.0, monotonic, sleep)
    assert clock["now"] >= 30.0


def test_explicit_hosts_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cli.common import resolve_host

    assert resolve_host("tcp://10.0.0.5:2376", {"SHOAL_HOST": "unix:///x"}) == ("tcp://10.0.0.5:2376", True)
    assert resolve_host(None, {"SHOAL_HOST": "unix:///x"}) == ("unix:///x", True)
    monkeypatch.setattr("shoal.cli.common.playground_socket", lambda: "/tmp/pg/manager1/shoal.sock")
    assert resolve_host(None, {}) == ("unix:///tmp/pg/manager1/shoal.sock", False)


def test_placement_preferences_and_max_replicas_per_node() -> None:
    daemon = created()
    code, _, err = daemon.cli("service", "create", "-d", "--placement-pref", "spread=node.labels.zone",
                              "--placement-pref", "spread=engine.labels.rack", "--replicas-max-per-node", "2",
                              "busybox")
    assert (code, err) == (0, "")
    placement = daemon.bodies("POST /services/create")[0]["TaskTemplate"]["Placement"]
    assert placement == {"Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}},
                                         {"Spread": {"SpreadDescriptor": "engine.labels.rack"}}],
                         "MaxReplicas": 2}
    service = current_service()
    service["Spec"]["TaskTemplate"]["Placement"] = placement
    daemon = updatable(service)
    code, _, err = daemon.cli("service", "update", "-d", "--placement-pref-rm", "spread=node.labels.zone",
                              "--placement-pref-add", "spread=node.labels.dc", "--replicas-max-per-node", "0", "web")
    assert (code, err) == (0, "")
    placement = daemon.bodies(f"POST /services/{SERVICE_ID}/update")[0]["TaskTemplate"]["Placement"]
    assert placement == {"Preferences": [{"Spread": {"SpreadDescriptor": "engine.labels.rack"}},
                                         {"Spread": {"SpreadDescriptor": "node.labels.dc"}}], "MaxReplicas": 0}


@pytest.mark.parametrize(("flags", "message"), [
    (["--placement-pref", "zone"], 'must be of the format "<strategy>=<arg>"'),
    (["--placement-pref", "binpack=node.labels.x"], "only spread is supported"),
    (["--placement-pref", "spread=node.hostname"], "spread over a label"),
    (["--replicas-max-per-node", "-1"], "--replicas-max-per-node"),
])
def test_bad_placement_flags_give_one_line_and_send_nothing(flags: list[str], message: str) -> None:
    daemon = created()
    code, out, err = daemon.cli("service", "create", "-d", *flags, "busybox")
    assert code != 0 and message in err and err.count("\n") == 1
    assert not daemon.bodies("POST /services/create")


def test_update_rollback_is_service_rollback_and_takes_no_other_flag() -> None:
    daemon = updatable()
    code, out, err = daemon.cli("service", "update", "-d", "--rollback", "web")
    assert (code, out, err) == (0, "web\n", "")
    [request] = [r for r in daemon.requests if r.method == "POST"]
    assert dict(request.url.params) == {"rollback": "previous", "version": "25"}
    daemon = updatable()
    code, _, err = daemon.cli("service", "update", "-d", "--rollback", "--image", "nginx:2", "web")
    assert code != 0 and "other flags may not be combined with --rollback (--image)" in err
    assert not [r for r in daemon.requests if r.method == "POST"]


def test_node_update_rebalance_moves_what_it_can_and_fails_naming_what_it_could_not() -> None:
    node = {"ID": "efa69d1e1c5a42cca919206a1", "Version": {"Index": 13},
            "Spec": {"Labels": {}, "Role": "worker", "Availability": "drain"}}
    even = {"ID": "s1", "Version": {"Index": 3}, "Spec": {"Name": "even", "Mode": {"Replicated": {"Replicas": 2}}}}
    busy = {"ID": "s2", "Version": {"Index": 4}, "Spec": {"Name": "busy", "Mode": {"Replicated": {"Replicas": 2}}}}
    daemon = FakeDaemon({
        "GET /nodes/node1": node, f"POST /nodes/{node['ID']}/update": httpx.Response(200),
        "GET /services": [even, busy], "GET /services/s1": even, "GET /services/s2": busy,
        "POST /services/s1/rebalance": {"ID": "s1", "Moves": [{"TaskID": "t" * 25, "Slot": 2, "NodeID": "n1",
                                                                "Node": "worker1"}]},
        "POST /services/s2/rebalance": httpx.Response(400, json={"message": "service busy is being updated"}),
    })
    code, out, err = daemon.cli("node", "update", "--availability", "active", "--rebalance", "node1")
    assert code == 1
    assert "even: moving 1 task: even.2 (tttttttttttt) from worker1" in out
    assert err == "busy: not rebalanced: Error response from daemon: service busy is being updated\n"


def test_version_names_the_architecture_as_go_does_on_both_sides() -> None:
    daemon = FakeDaemon({"GET /version": {"Version": "0.1.0", "ApiVersion": "1.47", "Os": "linux", "Arch": "amd64"}})
    code, out, _ = daemon.cli("version")
    client_arch = next(line for line in out.splitlines() if "OS/Arch" in line).split("/")[-1]
    assert code == 0 and client_arch == go_architecture(platform.machine())
    assert go_architecture("x86_64") == "amd64" and go_architecture("aarch64") == "arm64"
