"""`--format` on the list and inspect commands: docker's documented examples (docs/reference/commandline/*.md
and the "Format command and log output" page), run through the CLI against fixed documents, with docker's
output. Where the docs show an older docker's output (unsorted stacks, fields since removed), the expected text
is what docker 28 prints, as the comment says."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from shoal.api.client import Client
from shoal.cli.common import CliContext
from shoal.cli.main import run
from shoal.timefmt import from_rfc3339, to_rfc3339
from tests.unit.test_cli_parse import FakeDaemon

NOW = from_rfc3339("2026-11-27T14:10:00Z")


def ago(seconds: float) -> str:
    return to_rfc3339(NOW - seconds)


def cli(daemon: FakeDaemon, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(out=out, err=err, now=lambda: NOW)
    ctx.set_client(Client("http://shoal", transport=httpx.MockTransport(daemon.handle)))
    return run(list(argv), ctx), out.getvalue(), err.getvalue()


def service(service_id: str, name: str, image: str, mode: dict, running: int, desired: int,
            ports: list[dict] | None = None, **spec: Any) -> dict:
    return {
        "ID": service_id, "Version": {"Index": 10}, "CreatedAt": "2017-03-24T08:15:09.735271783Z",
        "Spec": {"Name": name, "Labels": {}, "Mode": mode,
                 "TaskTemplate": {"ContainerSpec": {"Image": image, **spec}}},
        "ServiceStatus": {"RunningTasks": running, "DesiredTasks": desired},
        "Endpoint": {"Ports": ports or [], "VirtualIPs": [{"NetworkID": "n1", "Addr": "10.0.0.2/24"},
                                                         {"NetworkID": "n2", "Addr": "10.0.1.2/24"}]},
    }


def tcp(published: int, target: int) -> dict:
    return {"Protocol": "tcp", "TargetPort": target, "PublishedPort": published, "PublishMode": "ingress"}


def task(task_id: str, service_id: str, slot: int, image: str, state: str = "running", seconds_ago: float = 60,
         node: str = "n1") -> dict:
    return {"ID": task_id, "ServiceID": service_id, "Slot": slot, "NodeID": node, "DesiredState": "running",
            "CreatedAt": ago(seconds_ago), "Spec": {"ContainerSpec": {"Image": image}},
            "Status": {"State": state, "Timestamp": ago(seconds_ago)}}


def node(node_id: str, hostname: str, *, leader: bool = False, manager: bool = False, tls_key: str = "key1") -> dict:
    doc = {"ID": node_id, "CreatedAt": "2017-05-16T22:52:44.9910662Z", "Spec": {"Role": "worker",
                                                                                "Availability": "active"},
           "Description": {"Hostname": hostname, "Engine": {"EngineVersion": "23.0.3"},
                           "TLSInfo": {"TrustRoot": "root", "CertIssuerSubject": "subject",
                                       "CertIssuerPublicKey": tls_key}},
           "Status": {"State": "ready", "Addr": "172.17.0.2"}}
    if leader or manager:
        doc["Spec"]["Role"] = "manager"
        doc["ManagerStatus"] = {"Leader": leader, "Reachability": "reachable", "Addr": "172.17.0.2:2377"}
    return doc


def secret(secret_id: str, name: str, seconds_ago: float, labels: dict | None = None,
           created: str | None = None) -> dict:
    return {"ID": secret_id, "Version": {"Index": 11}, "CreatedAt": created or ago(seconds_ago),
            "UpdatedAt": ago(seconds_ago), "Spec": {"Name": name, "Labels": labels or {}}}


def swarm(**routes: Any) -> FakeDaemon:
    return FakeDaemon({f"GET /{path.replace('__', '/')}": answer for path, answer in routes.items()})


SERVICES = [service("0zmvwuiu3vue5qkxclz0cnsby", "redis", "redis:7.4.1", {"Replicated": {"Replicas": 10}}, 10, 10),
            service("fm6uf97exkulmnqxbyh6gmle1", "web", "nginx:alpine", {"Global": {}}, 5, 5)]
HELLO = [service("ssniordqolsib9sb2njaq37mf", "hello", "hello-world:latest", {"Replicated": {"Replicas": 1}}, 0, 1)]
TOP = service("5jbmhn3qqb8srvrbklnpsz6kk", "top", "busybox", {"Replicated": {"Replicas": 3}}, 3, 3)
TOP_TASKS = [task(f"{i}q9j7yqyvmeoj9evphshgvfz", TOP["ID"], i, "busybox") for i in (3, 1, 2)]
NODES = [node("35o6tiywb700jesrt3dmllaza", "swarm-worker1", tls_key="old key"),
         node("e216jshn25ckzbvmwlnh5jr3g", "swarm-manager1", leader=True)]
INFO = {"Swarm": {"NodeID": "e216jshn25ckzbvmwlnh5jr3g", "Cluster": {"TLSInfo": {
    "TrustRoot": "root", "CertIssuerSubject": "subject", "CertIssuerPublicKey": "key1"}}}}
SECRETS = [secret("b6fa739cedf5", "secret-2", 3 * 3600), secret("77af4d6b9913", "secret-1", 300),
           secret("78a85c484f71", "secret-3", 10 * 86400)]
NETWORKS = [{"Id": "afaaab448eb2f5e3", "Name": "bridge", "Driver": "bridge", "Scope": "local"},
            {"Id": "391df270dc66a7c2", "Name": "none", "Driver": "null", "Scope": "local"},
            {"Id": "d1584f8dc718b3d1", "Name": "host", "Driver": "host", "Scope": "local"}]
STACK_LABEL = "com.docker.stack.namespace"
MYAPP = [service("0axqbl293vwmyk6hg2b0q4ilg", "myapp_localstack", "localstack/localstack:latest",
                 {"Replicated": {"Replicas": 1}}, 0, 1, [tcp(4566, 4566), tcp(8080, 8080)]),
         service("384xvtzigz3pa1v3dqfo1v7bq", "myapp_redis", "redis:6.0.9-alpine3.12",
                 {"Replicated": {"Replicas": 1}}, 1, 1, [tcp(6379, 6379)])]
for _s in MYAPP:
    _s["Spec"]["Labels"] = {STACK_LABEL: "myapp"}
VOTING = [service("qyprtqw1g5nrki557i974ou1d", "voting_redis", "redis:alpine", {"Replicated": {"Replicas": 2}}, 2, 2),
          service("10z9fjfqzsxnezo4hb81p8mqg", "voting_worker", "dockersamples/examplevotingapp_worker:latest",
                  {"Replicated": {"Replicas": 1}}, 1, 1)]
VOTING_TASKS = [task("xim5bcqtgk1bxqz91jzo4a1s5", VOTING[1]["ID"], 1, "dockersamples/examplevotingapp_worker:latest"),
                task("w48spazhbmxcmbjfi54gs7x90", VOTING[0]["ID"], 1, "redis:alpine", seconds_ago=20),
                task("t72q3z038jehe1wbh9gdum076", VOTING[0]["ID"], 2, "redis:alpine")]


def by_id(objects: list[dict]) -> dict[str, dict]:
    return {f"{kind}__{o.get('ID') or o.get('Id')}": o for o in objects for kind in ("services",)}


EXAMPLES: list[tuple[str, FakeDaemon, list[str], str]] = [
    ("service ls",
     swarm(services=SERVICES), ["service", "ls", "--format", "{{.ID}}: {{.Mode}} {{.Replicas}}"],
     "0zmvwuiu3vue: replicated 10/10\nfm6uf97exkul: global 5/5\n"),
    ("service ls json",
     swarm(services=HELLO), ["service", "ls", "--format", "json"],
     '{"ID":"ssniordqolsi","Image":"hello-world:latest","Mode":"replicated","Name":"hello","Ports":"",'
     '"Replicas":"0/1"}\n'),
    ("service ps",
     swarm(services=[TOP], tasks=TOP_TASKS, services__5jbmhn3qqb8srvrbklnpsz6kk=TOP, nodes__n1=NODES[1]),
     ["service", "ps", "--format", "{{.Name}}: {{.Image}}", "top"],
     "top.1: busybox\ntop.2: busybox\ntop.3: busybox\n"),
    ("node ls",
     swarm(nodes=NODES, info=INFO), ["node", "ls", "--format", "{{.ID}}: {{.Hostname}} {{.TLSStatus}}"],
     "e216jshn25ckzbvmwlnh5jr3g: swarm-manager1 Ready\n35o6tiywb700jesrt3dmllaza: swarm-worker1 Needs Rotation\n"),
    ("node ls json",
     swarm(nodes=[node("k8f4w7qtzpj5sqzclcqafw35g", "docker-desktop", leader=True)],
           info={"Swarm": {"NodeID": "k8f4w7qtzpj5sqzclcqafw35g", "Cluster": INFO["Swarm"]["Cluster"]}}),
     ["node", "ls", "--format", "json"],
     '{"Availability":"Active","EngineVersion":"23.0.3","Hostname":"docker-desktop","ID":"k8f4w7qtzpj5sqzclcqafw35g",'
     '"ManagerStatus":"Leader","Self":true,"Status":"Ready","TLSStatus":"Ready"}\n'),
    ("node ps",
     swarm(info=INFO, nodes__e216jshn25ckzbvmwlnh5jr3g=NODES[1], tasks=TOP_TASKS,
           services__5jbmhn3qqb8srvrbklnpsz6kk=TOP, nodes__n1=NODES[1]),
     ["node", "ps", "--format", "{{.Name}}: {{.Image}}"],
     "top.1: busybox\ntop.2: busybox\ntop.3: busybox\n"),
    ("secret ls",
     swarm(secrets=SECRETS), ["secret", "ls", "--format", "{{.ID}}: {{.Name}}"],
     "77af4d6b9913: secret-1\nb6fa739cedf5: secret-2\n78a85c484f71: secret-3\n"),
    ("secret ls table",
     swarm(secrets=SECRETS), ["secret", "ls", "--format", "table {{.ID}}\\t{{.Name}}\\t{{.CreatedAt}}"],
     "ID             NAME       CREATED\n"
     "77af4d6b9913   secret-1   5 minutes ago\n"
     "b6fa739cedf5   secret-2   3 hours ago\n"
     "78a85c484f71   secret-3   10 days ago\n"),
    ("secret ls json",
     swarm(secrets=[secret("4y7hvwrt1u8e9uxh5ygqj7mzc", "mysecret", 28)]), ["secret", "ls", "--format", "json"],
     '{"CreatedAt":"28 seconds ago","Driver":"","ID":"4y7hvwrt1u8e9uxh5ygqj7mzc","Labels":"","Name":"mysecret",'
     '"UpdatedAt":"28 seconds ago"}\n'),
    ("config ls",
     swarm(configs=SECRETS), ["config", "ls", "--format", "{{.ID}}: {{.Name}}"],
     "77af4d6b9913: secret-1\nb6fa739cedf5: secret-2\n78a85c484f71: secret-3\n"),
    ("config ls table",
     swarm(configs=SECRETS[:1]), ["config", "ls", "--format", "table {{.ID}}\\t{{.Name}}\\t{{.CreatedAt}}"],
     "ID             NAME       CREATED\nb6fa739cedf5   secret-2   3 hours ago\n"),
    ("network ls",
     swarm(networks=NETWORKS), ["network", "ls", "--format", "{{.ID}}: {{.Driver}}"],
     "afaaab448eb2: bridge\nd1584f8dc718: host\n391df270dc66: null\n"),
    # docker 28 adds IPv4 to the documented JSON.
    ("network ls json",
     swarm(networks=[{"Id": "f33ba176dd8e2ab4", "Name": "bridge", "Driver": "bridge", "Scope": "local",
                      "Created": "2021-03-09T21:41:29.798999529Z", "EnableIPv6": False, "Internal": False,
                      "Labels": {}}]),
     ["network", "ls", "--format", "json"],
     '{"CreatedAt":"2021-03-09 21:41:29.798999529 +0000 UTC","Driver":"bridge","ID":"f33ba176dd8e","IPv4":"true",'
     '"IPv6":"false","Internal":"false","Labels":"","Name":"bridge","Scope":"local"}\n'),
    # docker 28 sorts stacks by name and has dropped Orchestrator and Namespace.
    ("stack ls",
     swarm(services=[{**service(f"s{i}", f"svc{i}", "busybox", {"Global": {}}, 1, 1),
                      "Spec": {"Name": f"svc{i}", "Labels": {STACK_LABEL: stack}, "Mode": {"Global": {}},
                               "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}}
                     for i, stack in enumerate(["web-server", "web-cache", "web-cache", "web-cache", "web-cache"])]),
     ["stack", "ls", "--format", "{{.Name}}: {{.Services}}"],
     "web-cache: 4\nweb-server: 1\n"),
    ("stack ls json",
     swarm(services=MYAPP + [{**MYAPP[0], "ID": "third"}]), ["stack", "ls", "--format", "json"],
     '{"Name":"myapp","Services":"3"}\n'),
    ("stack services",
     swarm(services=SERVICES), ["stack", "services", "--format", "{{.ID}}: {{.Mode}} {{.Replicas}}", "myapp"],
     "0zmvwuiu3vue: replicated 10/10\nfm6uf97exkul: global 5/5\n"),
    ("stack services json",
     swarm(services=MYAPP), ["stack", "services", "--format", "json", "myapp"],
     '{"ID":"0axqbl293vwm","Image":"localstack/localstack:latest","Mode":"replicated","Name":"myapp_localstack",'
     '"Ports":"*:4566-\\u003e4566/tcp, *:8080-\\u003e8080/tcp","Replicas":"0/1"}\n'
     '{"ID":"384xvtzigz3p","Image":"redis:6.0.9-alpine3.12","Mode":"replicated","Name":"myapp_redis",'
     '"Ports":"*:6379-\\u003e6379/tcp","Replicas":"1/1"}\n'),
    # docker 28 sorts the tasks by name.
    ("stack ps",
     swarm(tasks=VOTING_TASKS, nodes__n1=NODES[1], **by_id(VOTING)),
     ["stack", "ps", "--format", "{{.Name}}: {{.Image}}", "voting"],
     "voting_redis.1: redis:alpine\nvoting_redis.2: redis:alpine\n"
     "voting_worker.1: dockersamples/examplevotingapp_worker:latest\n"),
    ("stack ps json",
     swarm(tasks=VOTING_TASKS[1:2], nodes__n1=node("n1", "docker-desktop"), **by_id(VOTING)),
     ["stack", "ps", "--format", "json", "voting"],
     '{"CurrentState":"Running 20 seconds ago","DesiredState":"Running","Error":"","ID":"w48spazhbmxc",'
     '"Image":"redis:alpine","Name":"voting_redis.1","Node":"docker-desktop","Ports":""}\n'),
    ("service inspect",
     swarm(services__redis=SERVICES[0]), ["service", "inspect", "--format={{.Spec.Mode.Replicated.Replicas}}", "redis"],
     "10\n"),
    ("node inspect",
     swarm(info=INFO, nodes__e216jshn25ckzbvmwlnh5jr3g=node("e216jshn25ckzbvmwlnh5jr3g", "swarm-manager", manager=True)),
     ["node", "inspect", "--format", "{{ .ManagerStatus.Leader }}", "self"], "false\n"),
    ("secret inspect",
     swarm(secrets__eo7jnzguqgtpdah3cm5srfb97=secret("eo7jnzguqgtpdah3cm5srfb97", "s", 0, created="2017-03-24T08:15:09.735271783Z")),
     ["secret", "inspect", "--format={{.CreatedAt}}", "eo7jnzguqgtpdah3cm5srfb97"],
     "2017-03-24 08:15:09.735271783 +0000 UTC\n"),
    ("config inspect",
     swarm(configs__eo7jnzguqgtpdah3cm5srfb97=secret("eo7jnzguqgtpdah3cm5srfb97", "c", 0, created="2017-03-24T08:15:09.735271783Z")),
     ["config", "inspect", "--format={{.CreatedAt}}", "eo7jnzguqgtpdah3cm5srfb97"],
     "2017-03-24 08:15:09.735271783 +0000 UTC\n"),
]


@pytest.mark.parametrize(("argv", "daemon", "expected"), [pytest.param(argv, daemon, expected, id=name)
                                                          for name, daemon, argv, expected in EXAMPLES])
def test_dockers_documented_format_examples(argv: list[str], daemon: FakeDaemon, expected: str) -> None:
    assert cli(daemon, *argv) == (0, expected, "")


ARGS_SERVICE = service("1c2t1jkn4xhqbqyyy1gdnwkz9", "My-Web", "nginx:1.25", {"Replicated": {"Replicas": 2}}, 2, 2,
                       Args=["nginx", "-g", "daemon off;"],
                       Mounts=[{"Type": "volume", "Source": "data", "Target": "/data"}])


@pytest.mark.parametrize(("template", "expected"), [
    # docs/config/formatting.md's examples, on a service.
    ('{{join .Spec.TaskTemplate.ContainerSpec.Args " , "}}', "nginx , -g , daemon off;"),
    ("{{json .Spec.TaskTemplate.ContainerSpec.Mounts}}", '[{"Type":"volume","Source":"data","Target":"/data"}]'),
    ("{{lower .Spec.Name}} {{upper .Spec.Name}} {{title .Spec.Name}}", "my-web MY-WEB My-Web"),
    ('{{split .Spec.TaskTemplate.ContainerSpec.Image ":"}}', "[nginx 1.25]"),
    ("{{range .Endpoint.VirtualIPs}}{{println .Addr}}{{end}}", "10.0.0.2/24\n10.0.1.2/24\n"),
    # What Go prints for a map (docker prints the struct) and for times and durations.
    ("{{.Spec.Mode}} {{.Spec.Mode.Global}}", "map[Replicated:map[Replicas:2]] <no value>"),
    ("{{.CreatedAt}} {{json .CreatedAt}}", '2017-03-24 08:15:09.735271783 +0000 UTC "2017-03-24T08:15:09.735271783Z"'),
    ('{{index .Spec.Labels "missing"}}|{{if .Spec.Mode.Replicated}}replicated{{end}}', "|replicated"),
])
def test_inspect_templates_see_the_document(template: str, expected: str) -> None:
    daemon = swarm(**{"services__My-Web": ARGS_SERVICE})
    assert cli(daemon, "service", "inspect", "--format", template, "My-Web") == (0, expected + "\n", "")


def test_durations_print_as_go_prints_them_and_json_stays_a_number() -> None:
    doc = ARGS_SERVICE | {"Spec": ARGS_SERVICE["Spec"] | {"UpdateConfig": {"Delay": 90_000_000_000, "Monitor": 0}}}
    assert cli(swarm(**{"services__My-Web": doc}), "service", "inspect", "-f",
               "{{.Spec.UpdateConfig.Delay}} {{.Spec.UpdateConfig.Monitor}} {{json .Spec.UpdateConfig}}",
               "My-Web") == (0, '1m30s 0s {"Delay":90000000000,"Monitor":0}\n', "")


def test_table_formats_print_dockers_column_names_aligned() -> None:
    daemon = swarm(services=SERVICES)
    assert cli(daemon, "service", "ls", "--format", "table {{.ID}}\t{{.Name}}\t{{.Replicas}}") == (0, (
        "ID             NAME      REPLICAS\n"
        "0zmvwuiu3vue   redis     10/10\n"
        "fm6uf97exkul   web       5/5\n"), "")
    # `table` alone is the default table; an unknown column heads "<no value>"; a Label column its key's end.
    assert cli(daemon, "service", "ls", "--format", "table")[1] == cli(daemon, "service", "ls")[1]
    labelled = swarm(secrets=[secret("abc", "db", 60, {STACK_LABEL: "app"})])
    assert cli(labelled, "secret", "ls", "--format", f'table {{{{.Name}}}}\\t{{{{.Label "{STACK_LABEL}"}}}}'
                                                     "\\t{{.Labels}}") == (0, (
        "NAME      namespace   LABELS\n"
        f"db        app         {STACK_LABEL}=app\n"), "")


def test_quiet_gives_ids_unless_a_template_is_given() -> None:
    daemon = swarm(services=SERVICES)
    assert cli(daemon, "service", "ls", "-q") == (0, "0zmvwuiu3vue\nfm6uf97exkul\n", "")
    assert cli(daemon, "stack", "services", "-q", "app") == (0, "0zmvwuiu3vue\nfm6uf97exkul\n", "")
    assert cli(daemon, "service", "ls", "-q", "--format", "table") == (0, "0zmvwuiu3vue\nfm6uf97exkul\n", "")
    assert cli(daemon, "service", "ls", "-q", "--format", "{{.Name}}") == (0, "redis\nweb\n", "")


def test_raw_format_and_history_rows_are_not_indented_outside_a_table() -> None:
    old = task("0ldtask000000000000000000", TOP["ID"], 1, "busybox:old", state="shutdown", seconds_ago=600)
    daemon = swarm(services=[TOP], tasks=[*TOP_TASKS[1:2], old], services__5jbmhn3qqb8srvrbklnpsz6kk=TOP,
                   nodes__n1=NODES[1])
    assert cli(daemon, "service", "ps", "--format", "{{.Name}} {{.Image}}", "top")[1] == (
        "top.1 busybox\ntop.1 busybox:old\n")
    assert cli(daemon, "service", "ps", "--format", "table {{.Name}}\t{{.Image}}", "top")[1] == (
        "NAME        IMAGE\ntop.1       busybox\n \\_ top.1   busybox:old\n")
    assert cli(swarm(services=HELLO), "service", "ls", "--format", "raw")[1] == (
        "id: ssniordqolsi\nname: hello\nmode: replicated\nreplicas: 0/1\nimage: hello-world:latest\nports: \n\n")


def test_inspect_format_json_and_pretty() -> None:
    daemon = swarm(**{"services__My-Web": ARGS_SERVICE, "nodes__e216jshn25ckzbvmwlnh5jr3g": NODES[1]})
    code, out, _ = cli(daemon, "service", "inspect", "--format", "json", "My-Web")
    assert code == 0 and out.startswith('[{"ID":"1c2t1jkn4xhqbqyyy1gdnwkz9","Version":{"Index":10},') and out.count("\n") == 1
    assert cli(daemon, "node", "inspect", "--format", "pretty", "e216jshn25ckzbvmwlnh5jr3g") == \
        cli(daemon, "node", "inspect", "--pretty", "e216jshn25ckzbvmwlnh5jr3g")


@pytest.mark.parametrize(("argv", "message"), [
    (["service", "ls", "--format", "{{.Name"], "template parsing error: template: :1: unclosed action"),
    (["service", "ls", "--format", "{{.Nope}}"],
     "template parsing error: template: :1:2: executing \"\" at <.Nope>: can't evaluate field Nope in type "
     "*service.serviceContext"),
    (["service", "ls", "--format", "{{lower .Replicas 1}}"],
     'template parsing error: template: :1:2: executing "" at <lower>: wrong number of args for lower: want 1 got 2'),
    (["service", "inspect", "--format", "{{.Spec.Name", "redis"], "template parsing error: template: :1: unclosed action"),
    (["service", "inspect", "--pretty", "--format", "{{.ID}}", "redis"],
     "--format is incompatible with human friendly format"),
    (["secret", "inspect", "--format", "pretty {{.ID}}", "redis"],
     "cannot supply extra formatting options to the pretty template"),
])
def test_a_bad_template_is_one_error_line(argv: list[str], message: str) -> None:
    daemon = swarm(services=SERVICES, services__redis=SERVICES[0], secrets__redis=SECRETS[0])
    assert cli(daemon, *argv) == (1, "", message + "\n")


def test_inspect_prints_what_it_could_and_an_error_for_each_failure() -> None:
    daemon = swarm(services__redis=SERVICES[0], services__web=SERVICES[1])
    code, out, err = cli(daemon, "service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}",
                         "redis", "web", "nope")
    assert (code, out) == (1, "10\n<no value>\n")
    assert err == "no such service: nope\n"
    code, out, err = cli(daemon, "service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas.X}}", "redis")
    assert (code, out) == (1, "\n")
    assert err.startswith("template parsing error: template: :1:2: executing")


def test_tabwriter_aligns_each_run_of_lines_that_share_a_column() -> None:
    """Go's text/tabwriter: a column is as wide as its widest cell in a run of consecutive lines that have it;
    a line without it ends the run; the text after a line's last tab is not aligned."""
    from shoal.cli.formatter import tabwrite

    assert tabwrite("ID\tNAME\n1\tweb\nno tab here\n22\tx\ty\n") == (
        "ID        NAME\n1         web\nno tab here\n22        x         y\n")
    assert tabwrite("a\tbb\tc\nlonger cell\tx\n") == "a             bb        c\nlonger cell   x\n"
