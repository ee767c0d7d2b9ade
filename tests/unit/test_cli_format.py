"""Tables and text the CLI prints, checked against the docker CLI's recorded output."""

from __future__ import annotations

from typing import Any

from shoal.cli.format import (
    bytes_size,
    ellipsis,
    go_time,
    human_duration,
    natural_key,
    natural_less,
    node_table,
    render_table,
    service_ports,
    service_table,
    task_table,
)
from shoal.cli.node import node_pretty
from shoal.cli.service import service_pretty
from shoal.spec import familiar_image
from shoal.timefmt import from_rfc3339

NOW = from_rfc3339("2026-11-27T14:10:00Z")


def ts(seconds_ago: float) -> str:
    from shoal.timefmt import to_rfc3339

    return to_rfc3339(NOW - seconds_ago)


def node(node_id: str, hostname: str, *, leader: bool = False, manager: bool = False, state: str = "ready",
         availability: str = "active") -> dict:
    doc = {
        "ID": node_id,
        "Spec": {"Role": "manager" if manager or leader else "worker", "Availability": availability},
        "Description": {"Hostname": hostname, "Engine": {"EngineVersion": "26.1.0"}},
        "Status": {"State": state},
    }
    if manager or leader:
        doc["ManagerStatus"] = {"Leader": leader, "Reachability": "reachable", "Addr": "10.0.0.5:2377"}
    return doc


def service(service_id: str, name: str, image: str, mode: dict, running: int, desired: int,
            ports: list | None = None) -> dict:
    doc: dict[str, Any] = {
        "ID": service_id,
        "Spec": {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": image}}, "Mode": mode},
        "ServiceStatus": {"RunningTasks": running, "DesiredTasks": desired},
        "Endpoint": {},
    }
    if ports is not None:
        doc["Endpoint"]["Ports"] = ports
    return doc


def task(task_id: str, slot: int, image: str, state: str, desired: str, seconds_ago: float, *,
         service_id: str = "svc1", node_id: str = "n1", err: str = "", created_ago: float | None = None) -> dict:
    return {
        "ID": task_id, "ServiceID": service_id, "Slot": slot, "NodeID": node_id, "DesiredState": desired,
        "CreatedAt": ts(seconds_ago if created_ago is None else created_ago),
        "Spec": {"ContainerSpec": {"Image": image}},
        "Status": {"State": state, "Timestamp": ts(seconds_ago), "Err": err},
    }


def test_render_table_pads_like_tabwriter() -> None:
    text = render_table(("ID", "NAME"), [("abc", "x")])
    assert text == "ID        NAME\nabc       x\n"


def test_node_ls_matches_docker_trace() -> None:
    nodes = [node("efa69d1e1c5a42cca919206a1", "node1", leader=True)]
    assert node_table(nodes, "efa69d1e1c5a42cca919206a1") == (
        "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n"
        "efa69d1e1c5a42cca919206a1 *   node1      Ready     Active         Leader           26.1.0\n"
    )


def test_node_ls_sorts_hostnames_naturally_and_marks_only_self() -> None:
    nodes = [
        node("c" * 25, "node10", state="down", availability="drain"),
        node("a" * 25, "node2", manager=True),
        node("b" * 25, "node1", leader=True),
    ]
    lines = node_table(nodes, "b" * 25).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["b" * 25, "a" * 25, "c" * 25]
    assert lines[1].startswith("b" * 25 + " *")
    assert lines[2].startswith("a" * 25 + "  ")
    assert "Reachable" in lines[2]
    assert "Down" in lines[3] and "Drain" in lines[3]


def test_service_ls_matches_docker_trace() -> None:
    services = [
        service("7ff3bcdfafce4616983c62fef", "web2", "nginx:latest@sha256:" + "a" * 64, {"Replicated": {"Replicas": 1}}, 1, 1),
        service("794c177dfbae4f6784a4fa4f8", "web", "nginx:1.25@sha256:" + "a" * 64, {"Replicated": {"Replicas": 2}}, 2, 2,
                [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80, "PublishMode": "ingress"}]),
        service("136f2ba01f3e4d83995b2fa92", "agent", "alpine:3.19", {"Global": {}}, 1, 1),
    ]
    assert service_table(services) == (
        "ID             NAME      MODE         REPLICAS   IMAGE          PORTS\n"
        "136f2ba01f3e   agent     global       1/1        alpine:3.19    \n"
        "794c177dfbae   web       replicated   2/2        nginx:1.25     *:80->80/tcp\n"
        "7ff3bcdfafce   web2      replicated   1/1        nginx:latest   \n"
    )


def test_service_ls_without_status_and_with_max_per_node() -> None:
    doc = service("x" * 25, "s", "busybox", {"Replicated": {"Replicas": 3}}, 0, 0)
    del doc["ServiceStatus"]
    doc["Spec"]["TaskTemplate"]["Placement"] = {"MaxReplicas": 2}
    row = service_table([doc]).splitlines()[1]
    assert "0/0 (max 2 per node)" in row


def test_service_ls_shows_jobs_as_docker_does() -> None:
    replicated_job = service("a" * 25, "batch", "busybox", {"ReplicatedJob": {"MaxConcurrent": 2,
                                                                              "TotalCompletions": 5}}, 0, 2)
    replicated_job["ServiceStatus"]["CompletedTasks"] = 5
    global_job = service("b" * 25, "sweep", "busybox", {"GlobalJob": {}}, 1, 2)
    global_job["ServiceStatus"]["CompletedTasks"] = 1
    # Jobs leave "max N per node" out (docker's formatter does too).
    global_job["Spec"]["TaskTemplate"]["Placement"] = {"MaxReplicas": 1}
    assert service_table([replicated_job, global_job]) == (
        "ID             NAME      MODE             REPLICAS              IMAGE     PORTS\n"
        "aaaaaaaaaaaa   batch     replicated job   0/2 (5/5 completed)   busybox   \n"
        "bbbbbbbbbbbb   sweep     global job       1/2 (1/3 completed)   busybox   \n"
    )


def test_service_ps_shows_a_finished_job_task_as_complete() -> None:
    tasks = [task("c" * 25, 3, "busybox", "complete", "complete", 2),
             task("d" * 25, 4, "busybox", "failed", "complete", 2, err="task: non-zero exit (1)")]
    rows = task_table(tasks, {"svc1": "batch"}, {"n1": "node1"}, NOW).splitlines()[1:]
    assert rows[0].split()[:7] == ["cccccccccccc", "batch.3", "busybox", "node1", "Complete", "Complete", "2"]
    assert rows[1].split()[4:6] == ["Complete", "Failed"]


def test_service_ports_groups_ranges_and_skips_host_mode() -> None:
    ports = [
        {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 53, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 22, "PublishedPort": 2222, "PublishMode": "host"},
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 9000, "PublishMode": "ingress"},
    ]
    assert service_ports({"Endpoint": {"Ports": ports}}) == "*:8080-8081->80-81/tcp, *:9000->80/tcp, *:53->53/udp"


def test_service_ps_history_rows_match_docker_trace() -> None:
    tasks = [
        task("cb838686e73c4953b5b5fba6b", 1, "nginx:1.25@sha256:" + "a" * 64, "shutdown", "shutdown", 5, created_ago=11),
        task("2c6c39844f6b48ebb60ed80b9", 1, "nginx:1.26@sha256:" + "a" * 64, "running", "running", 5, created_ago=6),
        task("44e22bc9a69b421a9a17a277c", 1, "nginx:1.25", "shutdown", "shutdown", 11, created_ago=20),
        task("30b2cccedbd4440e8298c781f", 2, "nginx:1.26", "running", "running", 5, created_ago=6),
    ]
    text = task_table(tasks, {"svc1": "web"}, {"n1": "node1"}, NOW)
    assert text == (
        "ID             NAME        IMAGE        NODE      DESIRED STATE   CURRENT STATE             ERROR     PORTS\n"
        "2c6c39844f6b   web.1       nginx:1.26   node1     Running         Running 5 seconds ago               \n"
        "cb838686e73c    \\_ web.1   nginx:1.25   node1     Shutdown        Shutdown 5 seconds ago              \n"
        "44e22bc9a69b    \\_ web.1   nginx:1.25   node1     Shutdown        Shutdown 11 seconds ago             \n"
        "30b2cccedbd4   web.2       nginx:1.26   node1     Running         Running 5 seconds ago               \n"
    )


def test_service_ps_global_names_errors_and_no_trunc() -> None:
    err = "starting container failed: executable file not found in $PATH"
    tasks = [task("7dae09b05a24aaaaaaaaaaaaa", 0, "alpine:3.19@sha256:" + "b" * 64, "failed", "shutdown", 0.2,
                  node_id="48997ecda4c841ff833bceec7", err=err)]
    row = task_table(tasks, {"svc1": "agent"}, {}, NOW).splitlines()[1]
    assert "agent.48997ecda4c841ff833bceec7" in row
    assert "Failed less than a second ago" in row
    assert '"starting container failed: ex…"' in row
    assert row.startswith("7dae09b05a24   ")
    full = task_table(tasks, {"svc1": "agent"}, {}, NOW, no_trunc=True).splitlines()[1]
    assert f'"{err}"' in full
    assert full.startswith("7dae09b05a24aaaaaaaaaaaaa")
    assert "alpine:3.19@sha256:" + "b" * 64 in full


def test_service_ps_sorts_slots_naturally() -> None:
    tasks = [task(f"t{slot:024d}", slot, "busybox", "running", "running", 1) for slot in (10, 2, 1)]
    names = [line.split()[1] for line in task_table(tasks, {"svc1": "web"}, {}, NOW).splitlines()[1:]]
    assert names == ["web.1", "web.2", "web.10"]


def test_ellipsis() -> None:
    assert ellipsis("short", 30) == "short"
    assert ellipsis("x" * 31, 30) == "x" * 29 + "…"
    assert len(ellipsis("x" * 100, 30)) == 30


def test_natural_sort_order() -> None:
    names = ["node10", "node2", "node1", "web.1", "web1", "a", "node02"]
    assert sorted(names, key=natural_key) == ["a", "node1", "node2", "node02", "node10", "web1", "web.1"]
    assert natural_less("web2", "web10")
    assert not natural_less("web10", "web2")


def test_human_durations() -> None:
    assert human_duration(0.4) == "Less than a second"
    assert human_duration(1) == "1 second"
    assert human_duration(5.9) == "5 seconds"
    assert human_duration(61) == "About a minute"
    assert human_duration(3 * 60) == "3 minutes"
    assert human_duration(3600) == "About an hour"
    assert human_duration(5 * 3600) == "5 hours"
    assert human_duration(3 * 86400) == "3 days"
    assert human_duration(20 * 86400) == "2 weeks"
    assert human_duration(90 * 86400) == "3 months"
    assert human_duration(3 * 365 * 86400) == "3 years"


def test_sizes_images_and_times() -> None:
    assert bytes_size(8_000_000_000) == "7.451GiB"
    assert bytes_size(512) == "512B"
    assert bytes_size(1536) == "1.5KiB"
    assert familiar_image("nginx:1.25@sha256:" + "a" * 64) == "nginx:1.25"
    assert familiar_image("docker.io/library/nginx:1.25") == "nginx:1.25"
    assert familiar_image("nginx@sha256:" + "a" * 64) == "nginx@sha256:" + "a" * 64
    assert familiar_image("localhost:5000/app") == "localhost:5000/app"
    assert go_time("2026-11-27T14:09:33.914683Z") == "2026-11-27 14:09:33.914683 +0000 utc"
    assert go_time("2026-11-27T14:09:33.910000000Z") == "2026-11-27 14:09:33.91 +0000 utc"


def test_service_inspect_pretty_matches_docker_trace() -> None:
    doc = {
        "ID": "794c177dfbae4f6784a4fa4f8",
        "Spec": {
            "Name": "web",
            "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "nginx:1.25@sha256:" + "a" * 64, "Args": ["nginx", "-g", "daemon off;"],
                                  "Init": False},
                "Resources": {"Limits": {}, "Reservations": {}},
                "Placement": {},
            },
            "Mode": {"Replicated": {"Replicas": 2}},
            "EndpointSpec": {"Mode": "vip"},
        },
        "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 80, "PublishMode": "ingress"}]},
    }
    assert service_pretty(doc, NOW) == (
        "\nID:\t\t794c177dfbae4f6784a4fa4f8\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t2\n"
        "Placement:\nContainerSpec:\n Image:\t\tnginx:1.25@sha256:" + "a" * 64 + "\n"
        " Args:\t\tnginx -g daemon off; \n Init:\t\tfalse\nResources:\nEndpoint Mode:\tvip\nPorts:\n"
        " PublishedPort = 80\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = ingress \n"
    )


def test_service_inspect_pretty_shows_container_settings_as_docker_does() -> None:
    """Output of docker CLI 28.2.2's `service inspect --pretty` for the same service (less its final newline)."""
    doc = {"ID": "svc1", "Version": {"Index": 5}, "Spec": {
        "Name": "web", "Labels": {},
        "TaskTemplate": {"ContainerSpec": {
            "Image": "busybox", "Init": False, "DNSConfig": {}, "Hosts": ["10.0.0.1 db", "10.0.0.2 cache"],
            "CapabilityAdd": ["CAP_NET_ADMIN"], "Sysctls": {"a.b": "1"},
            "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 20}],
            "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}]},
            "ForceUpdate": 0, "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m", "k": ""}}},
        "Mode": {"Replicated": {"Replicas": 1}}, "EndpointSpec": {"Mode": "vip"}}}
    assert service_pretty(doc, NOW) == (
        "\nID:\t\tsvc1\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t1\nPlacement:\nContainerSpec:\n"
        " Image:\t\tbusybox\n Init:\t\tfalse\nCapabilities:\n Add: CAP_NET_ADMIN\nSysCtls:\n a.b: 1\nUlimits:\n"
        " nofile: 10:20\nMounts:\n Target:\t/data\n  Source:\tdata\n  ReadOnly:\tfalse\n  Type:\t\tvolume\n"
        "Log Driver:\n Name:\t\tjson-file\n LogOpts:\n  k\n  max-size:       1m\n\nEndpoint Mode:\tvip\n")


def test_service_inspect_pretty_names_a_jobs_mode() -> None:
    doc: dict[str, Any] = {"ID": "j1", "Spec": {"Name": "batch", "TaskTemplate": {"ContainerSpec": {"Image": "b"}},
                                                "Mode": {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}},
                                                "EndpointSpec": {"Mode": "vip"}}}
    assert "\nService Mode:\tReplicated job\n Max concurrent:\t2\n Total completions:\t5\nPlacement:" in \
        service_pretty(doc, NOW)
    doc["Spec"]["Mode"] = {"GlobalJob": {}}
    assert "\nService Mode:\tGlobal job\nPlacement:" in service_pretty(doc, NOW)


def test_service_inspect_pretty_update_blocks() -> None:
    doc = {
        "ID": "s1",
        "Spec": {
            "Name": "web",
            "TaskTemplate": {"ContainerSpec": {"Image": "nginx"}, "Placement": {"Constraints": ["node.role==worker"]}},
            "Mode": {"Global": {}},
            "UpdateConfig": {"Parallelism": 2, "Delay": 10_000_000_000, "FailureAction": "continue",
                             "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"},
            "RollbackConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "pause",
                               "Monitor": 5_000_000_000, "MaxFailureRatio": 0.2, "Order": "start-first"},
            "EndpointSpec": {"Mode": "vip"},
        },
        "UpdateStatus": {"State": "completed", "StartedAt": ts(30), "CompletedAt": ts(10),
                         "Message": "update completed"},
    }
    text = service_pretty(doc, NOW)
    assert "Service Mode:\tGlobal\nUpdateStatus:\n State:\t\tcompleted\n Started:\t30 seconds ago\n" in text
    assert " Completed:\t10 seconds ago\n Message:\tupdate completed\n" in text
    assert "Placement:\n Constraints:\t[node.role==worker]\n" in text
    assert ("UpdateConfig:\n Parallelism:\t2\n Delay:\t\t10s\n On failure:\tcontinue\n Monitoring Period: 5s\n"
            " Max failure ratio: 0\n Update order:      stop-first\n") in text
    assert ("RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n"
            " Max failure ratio: 0.2\n Rollback order:    start-first\n") in text


def test_node_inspect_pretty_matches_docker_trace() -> None:
    doc = {
        "ID": "efa69d1e1c5a42cca919206a1",
        "CreatedAt": "2026-11-27T14:09:33.914683Z",
        "Spec": {"Labels": {}, "Role": "manager", "Availability": "active"},
        "Description": {
            "Hostname": "node1",
            "Platform": {"Architecture": "x86_64", "OS": "linux"},
            "Resources": {"NanoCPUs": 4000000000, "MemoryBytes": 8000000000},
            "Engine": {"EngineVersion": "26.1.0"},
            "TLSInfo": {"TrustRoot": "x", "CertIssuerSubject": "eA==", "CertIssuerPublicKey": "eA=="},
        },
        "Status": {"State": "ready", "Addr": "10.0.0.5"},
        "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.5:2377"},
    }
    assert node_pretty(doc) == (
        "ID:\t\t\tefa69d1e1c5a42cca919206a1\n"
        "Hostname:              \tnode1\n"
        "Joined at:             \t2026-11-27 14:09:33.914683 +0000 utc\n"
        "Status:\n State:\t\t\tReady\n Availability:         \tActive\n Address:\t\t10.0.0.5\n"
        "Manager Status:\n Address:\t\t10.0.0.5:2377\n Raft Status:\t\tReachable\n Leader:\t\tYes\n"
        "Platform:\n Operating System:\tlinux\n Architecture:\t\tx86_64\n"
        "Resources:\n CPUs:\t\t\t4\n Memory:\t\t7.451GiB\n"
        "Engine Version:\t\t26.1.0\n"
        "TLS Info:\n TrustRoot:\nx\n Issuer Subject:\teA==\n Issuer Public Key:\teA=="
    )


def test_service_inspect_pretty_shows_limits_and_reservations() -> None:
    doc = {
        "ID": "s1",
        "Spec": {
            "Name": "web",
            "TaskTemplate": {"ContainerSpec": {"Image": "nginx"},
                             "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 100},
                                           "Reservations": {"NanoCPUs": 250_000_000, "MemoryBytes": 3 << 29}}},
            "Mode": {"Replicated": {"Replicas": 1}},
            "EndpointSpec": {"Mode": "vip"},
        },
    }
    assert ("Resources:\n Reservations:\n  CPU:\t\t0.25\n  Memory:\t1.5GiB\n Limits:\n  CPU:\t\t0.5\n"
            "  Memory:\t64MiB\n  PIDs:\t\t100\n") in service_pretty(doc, NOW)
