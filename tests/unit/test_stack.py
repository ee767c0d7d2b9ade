"""Stacks: compose files read, interpolated, checked and merged; converted to the objects docker's CLI makes."""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path

import pytest

from shoal.manager.controlapi.service import validate_service_spec
from shoal.stack import IMAGE_LABEL, NAMESPACE_LABEL, StackError
from shoal.stack.compose import interpolate, load
from shoal.stack.convert import convert, memory_bytes, ports

EXAMPLE = """
services:
  web:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "8080"]
    ports: ["8080:8080"]
    networks: [front, back]
    build: .
    depends_on: [api]
  api:
    image: busybox:${API_TAG:-1.36}
    command: sh -c 'echo "$$HOME"'
    environment:
      DB_HOST: db
      MODE: ${MODE}
    deploy:
      replicas: 2
      update_config: {parallelism: 1, delay: 2s, order: start-first}
      restart_policy: {condition: on-failure, max_attempts: 3}
      resources: {limits: {cpus: "0.5", memory: 64M}}
      placement: {constraints: ["node.role==worker"], max_replicas_per_node: 1}
    networks:
      back:
        aliases: [backend]
    healthcheck: {test: "wget -q -O- localhost:8000", interval: 5s, retries: 3}
  db:
    image: busybox
    deploy: {mode: global, endpoint_mode: dnsrr}
    secrets: [db_pw]
    configs: [{source: site, target: /etc/site.conf, mode: 0440}]
networks:
  front: {}
  back: {driver: overlay, internal: true, ipam: {config: [{subnet: 10.9.0.0/24}]}}
secrets:
  db_pw: {file: ./db_pw.txt}
configs:
  site: {content: "x=1"}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def example(tmp_path: Path) -> Path:
    (tmp_path / "db_pw.txt").write_text("s3cret\n")
    (tmp_path / ".env").write_text("MODE=from-dotenv\nAPI_TAG=1.35\n")
    return write(tmp_path, "compose.yml", EXAMPLE)


def objects_of(path: Path, environ: dict[str, str] | None = None, stack: str = "app"):  # type: ignore[no-untyped-def]
    env = environ or {}
    return convert(stack, load([path], env), path.parent, env)


# ---- interpolation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("$A-${A}", "a-a"), ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("$$A", "$A"), ("${A:?need A}", "a"), ("x${EMPTY}.y", "x.y"),
])
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "EMPTY": ""}, "f") == expected


@pytest.mark.parametrize(("text", "message"), [
    ("${UNSET:?give it}", "required variable UNSET is missing a value: give it"),
    ("${EMPTY:?}", "required variable EMPTY is missing a value"),
    ("${bad name}", "invalid interpolation format"),
    ("${UNSET}", "variable UNSET is not set: set it in the environment or in .env, or give a default"),
    ("$UNSET", "variable UNSET is not set"),
])
def test_bad_interpolation_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(StackError, match=message):
        interpolate(text, {"EMPTY": ""}, "f")


def test_dotenv_beside_the_file_fills_variables_and_the_environment_wins(example: Path) -> None:
    objects = objects_of(example, {"MODE": "from-env"})
    api = objects.services["app_api"]["TaskTemplate"]["ContainerSpec"]
    assert api["Image"] == "busybox:1.35"
    assert "MODE=from-env" in api["Env"]
    assert objects_of(example).services["app_api"]["TaskTemplate"]["ContainerSpec"]["Env"] == [
        "DB_HOST=db", "MODE=from-dotenv"]


# ---- conversion -------------------------------------------------------------------------------------------


def test_services_are_named_and_labelled_by_their_stack(example: Path) -> None:
    objects = objects_of(example)
    assert sorted(objects.services) == ["app_api", "app_db", "app_web"]
    web = objects.services["app_web"]
    assert web["Labels"] == {NAMESPACE_LABEL: "app", IMAGE_LABEL: "busybox:latest"}
    assert web["TaskTemplate"]["ContainerSpec"]["Labels"] == {NAMESPACE_LABEL: "app"}
    assert web["TaskTemplate"]["ContainerSpec"]["Args"] == ["httpd", "-f", "-p", "8080"]
    assert web["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "ingress"}]}
    assert web["TaskTemplate"]["Networks"] == [{"Target": "app_back", "Aliases": ["web"]},
                                               {"Target": "app_front", "Aliases": ["web"]}]


def test_deploy_maps_to_the_service_spec(example: Path) -> None:
    api = objects_of(example).services["app_api"]
    assert api["Mode"] == {"Replicated": {"Replicas": 2}}
    assert api["UpdateConfig"] == {"Parallelism": 1, "Delay": 2_000_000_000, "Order": "start-first"}
    template = api["TaskTemplate"]
    assert template["RestartPolicy"] == {"Condition": "on-failure", "MaxAttempts": 3}
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024}
    assert template["Placement"] == {"Constraints": ["node.role==worker"], "MaxReplicas": 1}
    assert template["Networks"] == [{"Target": "app_back", "Aliases": ["api", "backend"]}]
    assert template["ContainerSpec"]["Args"] == ["sh", "-c", 'echo "$HOME"']
    assert template["ContainerSpec"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q -O- localhost:8000"], "Interval": 5_000_000_000, "Retries": 3}
    db = objects_of(example).services["app_db"]
    assert db["Mode"] == {"Global": {}}
    assert db["EndpointSpec"] == {"Mode": "dnsrr"}


def test_networks_secrets_and_configs_become_stack_objects(example: Path) -> None:
    objects = objects_of(example)
    assert sorted(objects.networks) == ["app_back", "app_default", "app_front"]  # db names no network
    back = objects.networks["app_back"]
    assert (back["Driver"], back["Internal"], back["Labels"]) == ("overlay", True, {NAMESPACE_LABEL: "app"})
    assert back["IPAM"]["Config"] == [{"Subnet": "10.9.0.0/24"}]
    assert base64.b64decode(objects.secrets["app_db_pw"]["Data"]) == b"s3cret\n"
    assert base64.b64decode(objects.configs["app_site"]["Data"]) == b"x=1"
    container = objects.services["app_db"]["TaskTemplate"]["ContainerSpec"]
    assert container["Secrets"] == [{"File": {"Name": "db_pw", "UID": "0", "GID": "0", "Mode": 0o444},
                                     "SecretID": "", "SecretName": "app_db_pw"}]
    assert container["Configs"][0]["File"] == {"Name": "/etc/site.conf", "UID": "0", "GID": "0", "Mode": 0o440}


def test_a_service_without_networks_joins_the_stack_default_network(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "services:\n  one: {image: busybox}\n")
    objects = objects_of(path, stack="s")
    assert list(objects.networks) == ["s_default"]
    assert objects.services["s_one"]["TaskTemplate"]["Networks"] == [{"Target": "s_default", "Aliases": ["one"]}]


def test_external_objects_are_used_by_name_and_not_made(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", """
        services:
          one: {image: busybox, networks: [shared], secrets: [pw]}
        networks:
          shared: {external: true, name: common}
        secrets:
          pw: {external: true}
    """)
    objects = objects_of(path)
    assert (objects.networks, objects.secrets) == ({}, {})
    assert (objects.external_networks, objects.external_secrets) == (["common"], ["pw"])
    assert objects.services["app_one"]["TaskTemplate"]["Networks"][0]["Target"] == "common"


def test_what_swarm_mode_ignores_is_reported(example: Path) -> None:
    assert objects_of(example).ignored == ["build", "depends_on"]


def test_every_converted_spec_passes_the_apis_validation(example: Path) -> None:
    for spec in objects_of(example).services.values():
        validate_service_spec(spec)


def test_a_later_file_overrides_and_joins_the_earlier_one(example: Path) -> None:
    override = write(example.parent, "override.yml", """
        services:
          api:
            environment: [EXTRA=1]
            deploy: {replicas: 4}
          web:
            ports: ["9090:9090"]
    """)
    objects = convert("app", load([example, override], {}), example.parent, {})
    api = objects.services["app_api"]
    assert api["Mode"] == {"Replicated": {"Replicas": 4}}
    assert api["UpdateConfig"]["Order"] == "start-first"  # the rest of deploy kept
    assert api["TaskTemplate"]["ContainerSpec"]["Env"] == ["DB_HOST=db", "EXTRA=1", "MODE=from-dotenv"]
    published = [p["PublishedPort"] for p in objects.services["app_web"]["EndpointSpec"]["Ports"]]
    assert published == [8080, 9090]


@pytest.mark.parametrize(("value", "expected"), [
    ("512M", 512 * 1024**2), ("1g", 1024**3), ("100mb", 100 * 1024**2), ("2GiB", 2 * 1024**3), (1000, 1000),
])
def test_memory_sizes_are_read_as_docker_reads_them(value: object, expected: int) -> None:
    assert memory_bytes(value, "x") == expected


def test_short_port_syntax() -> None:
    assert ports(["80", "8080:80/udp", "9000-9001:90-91"], "p") == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 0, "PublishMode": "ingress"},
        {"Protocol": "udp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 90, "PublishedPort": 9000, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 91, "PublishedPort": 9001, "PublishMode": "ingress"},
    ]


# ---- bad input: one line naming where -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("services: [", "line 1, column 12: invalid YAML"),
    ("- a\n- b\n", "a compose file must be a mapping"),
    ("services:\n  web: {image: busybox, replicas: 3}\n", "services.web: additional property replicas is not allowed"),
    ("services:\n  web: {command: x}\n", "'image' is a required property"),
    ("services:\n  web: {image: b, deploy: {replicas: many}}\n", "services.web.deploy.replicas: 'many' is not of type"),
    ("services:\n  web:\n    image: b\n    deploy:\n      replicas: many\n",
     "compose.yml: line 5: services.web.deploy.replicas"),
    ("services:\n  web: {image: b}\nvolumez: {}\n", "line 3: (top level): additional property volumez"),
    ("services:\n  web: {image: b, networks: [nope]}\n", "undefined network 'nope'"),
    ("services:\n  web: {image: b, secrets: [pw]}\n", "undefined secret 'pw'"),
    ("services:\n  web: {image: b, ports: ['x:80']}\n", "invalid port 'x:80'"),
    ("services:\n  web: {image: b, deploy: {mode: global, replicas: 2}}\n", "replicas can only be used"),
    ("services:\n  web: {image: b, stop_grace_period: soon}\n", "services.web.stop_grace_period: invalid duration"),
    ("secrets:\n  pw: {file: ./missing}\nservices:\n  web: {image: b}\n", "secrets.pw: cannot read"),
    ("networks: {}\n", "no services to deploy"),
])
def test_bad_compose_files_are_refused_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(text)
    with pytest.raises(StackError, match=re.escape(message)) as caught:
        objects_of(path)
    assert "\n" not in str(caught.value)


# ---- found in review ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("${IMG:-${REG}/x}", "reg/x"), ("${UNSET:-$B}", "b"), ("${A:-$B}", "a"), ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
    ("pre-${A}-post-$$", "pre-a-post-$"),
])
def test_defaults_are_interpolated_too(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "B": "b", "REG": "reg"}, "f") == expected


def test_typed_fields_take_their_value_from_a_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", """
        services:
          web:
            image: busybox
            tty: ${TTY:-true}
            ports: [{target: "${PORT:-80}", published: 8080}]
            deploy: {replicas: "${N:-2}", update_config: {parallelism: "${P}"}}
    """)
    spec = objects_of(path, {"P": "3"}).services["app_web"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}} and spec["UpdateConfig"]["Parallelism"] == 3
    assert spec["EndpointSpec"]["Ports"][0]["TargetPort"] == 80
    assert spec["TaskTemplate"]["ContainerSpec"]["TTY"] is True


def test_yaml_base_60_numbers_are_not_read(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "services:\n  web:\n    image: busybox\n    ports:\n      - 22:22\n")
    assert objects_of(path).services["app_web"]["EndpointSpec"]["Ports"][0]["PublishedPort"] == 22


def test_an_environment_entry_without_a_value_comes_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "services:\n  web:\n    image: busybox\n    environment: {FOO: , BAR: 1}\n")
    assert objects_of(path, {"FOO": "from-shell"}).services["app_web"]["TaskTemplate"]["ContainerSpec"]["Env"] == [
        "BAR=1", "FOO=from-shell"]


def test_an_empty_network_list_joins_the_default_network(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "services:\n  web: {image: busybox, networks: []}\n")
    objects = objects_of(path)
    assert list(objects.networks) == ["app_default"]
    assert objects.services["app_web"]["TaskTemplate"]["Networks"][0]["Target"] == "app_default"


def test_merged_ports_and_secrets_are_matched_as_dockers_cli_matches_them(tmp_path: Path) -> None:
    base = write(tmp_path, "a.yml", """
        services:
          web: {image: busybox, ports: ["8080:80"], secrets: [{source: pw, target: one}]}
        secrets:
          pw: {content: x}
    """)
    override = write(tmp_path, "b.yml", """
        services:
          web: {ports: [{target: 80, published: 8080}], secrets: [{source: pw, target: two}]}
    """)
    web = convert("app", load([base, override], {}), tmp_path, {}).services["app_web"]
    assert len(web["EndpointSpec"]["Ports"]) == 1
    assert [s["File"]["Name"] for s in web["TaskTemplate"]["ContainerSpec"]["Secrets"]] == ["two"]


@pytest.mark.parametrize(("text", "message"), [
    ("on: {}\nservices:\n  web: {image: b}\n", "line 1: (top level): the key True is not text: quote it"),
    ("services:\n  web: {image: b, ports: [{target: abc}]}\n", "invalid port 'abc'"),
    ("services:\n  web: {image: b, ports: [{target: 80, published: 8000-8001}]}\n", "ports[0]"),
    ("services:\n  web: {image: b, deploy: {resources: {limits: {cpus: .inf}}}}\n", "invalid number of CPUs"),
])
def test_more_bad_files_give_one_line_not_a_crash(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(text)
    with pytest.raises(StackError, match=re.escape(message)):
        objects_of(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_bytes(b"services:\n  web: {image: \xff}\n")
    with pytest.raises(StackError, match="must be UTF-8"):
        objects_of(path)


def test_job_modes_convert_as_docker_converts_them(tmp_path: Path) -> None:
    path = write(tmp_path, "compose.yml", "services:\n"
                 "  migrate: {image: b, deploy: {mode: replicated-job, replicas: 3}}\n"
                 "  warm: {image: b, deploy: {mode: global-job}}\n")
    services = objects_of(path).services
    assert services["app_migrate"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 3, "TotalCompletions": 3}}
    assert services["app_warm"]["Mode"] == {"GlobalJob": {}}
    for spec in services.values():
        validate_service_spec(spec)


# ---- volumes and container settings (docker/cli `convert/volume.go`, `convert/service.go`) ------------------

SETTINGS = """
services:
  web:
    image: busybox:latest
    volumes:
      - data:/data:ro,nocopy
      - ./site:/site
      - /var/log:/logs:ro,rslave
      - /cache
      - ext:/ext
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 1m}
      - type: volume
        source: named
        target: /named
        volume: {nocopy: true}
    logging:
      driver: json-file
      options: {max-size: 1m, max-file: 3}
    cap_add: [net_admin, SYS_TIME]
    cap_drop: [all]
    sysctls: {net.core.somaxconn: 1024}
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: 40000}
    dns: 1.1.1.1
    dns_search: [corp.example]
    extra_hosts: ["db:10.0.0.1", "gw:host-gateway"]
    init: true
    stdin_open: true
    oom_score_adj: 100
volumes:
  data:
    driver: local
    driver_opts: {type: tmpfs, device: tmpfs}
    labels: {team: a}
  ext:
    external: true
  named:
    name: shared-name
"""


def test_volumes_become_the_mounts_docker_stack_deploy_sends(tmp_path: Path) -> None:
    """As recorded from docker CLI 28.2.2's `stack deploy` of the same file."""
    objects = objects_of(write(tmp_path, "compose.yml", SETTINGS))
    assert objects.ignored == []
    mounts = objects.services["app_web"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mounts == [
        {"Type": "volume", "Source": "app_data", "Target": "/data", "ReadOnly": True, "VolumeOptions": {
            "NoCopy": True, "Labels": {"team": "a", NAMESPACE_LABEL: "app"},
            "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}}}},
        {"Type": "bind", "Source": str(tmp_path / "site"), "Target": "/site"},
        {"Type": "bind", "Source": "/var/log", "Target": "/logs", "ReadOnly": True,
         "BindOptions": {"Propagation": "rslave"}},
        {"Type": "volume", "Target": "/cache"},  # anonymous
        {"Type": "volume", "Source": "ext", "Target": "/ext", "VolumeOptions": {}},  # external: no labels
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 1 << 20}},
        {"Type": "volume", "Source": "shared-name", "Target": "/named",
         "VolumeOptions": {"NoCopy": True, "Labels": {NAMESPACE_LABEL: "app"}}},
    ]
    assert list(mounts[0]) == ["Type", "Source", "Target", "ReadOnly", "VolumeOptions"]


def test_container_settings_and_logging_convert_as_docker_converts_them(tmp_path: Path) -> None:
    spec = objects_of(write(tmp_path, "compose.yml", SETTINGS)).services["app_web"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert spec["TaskTemplate"]["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "1m", "max-file": "3"}}
    assert (container["CapabilityAdd"], container["CapabilityDrop"]) == (["CAP_NET_ADMIN", "CAP_SYS_TIME"], ["ALL"])
    assert container["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert container["Ulimits"] == [{"Name": "nofile", "Hard": 40000, "Soft": 20000},
                                    {"Name": "nproc", "Hard": 65535, "Soft": 65535}]
    assert container["DNSConfig"] == {"Nameservers": ["1.1.1.1"], "Search": ["corp.example"]}
    assert container["Hosts"] == ["10.0.0.1 db", "host-gateway gw"]
    assert (container["Init"], container["OpenStdin"], container["OomScoreAdj"]) == (True, True, 100)
    validate_service_spec(spec)


def test_a_later_file_replaces_a_volume_at_the_same_target(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yml", "services:\n  web: {image: b, volumes: ['/srv:/data', '/logs:/logs']}\n")
    second = write(tmp_path, "b.yml", "services:\n  web:\n    image: b\n    volumes:\n"
                                      "      - {type: tmpfs, target: /data}\n")
    objects = convert("app", load([first, second], {}), tmp_path, {})
    mounts = objects.services["app_web"]["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mounts == [{"Type": "tmpfs", "Target": "/data"}, {"Type": "bind", "Source": "/logs", "Target": "/logs"}]


@pytest.mark.parametrize(("volumes", "message"), [
    ("['missing:/data']", "services.web.volumes[0]: undefined volume 'missing': declare it under the top-level"),
    ("[{type: npipe, source: p, target: /p}]", "mount type 'npipe' is not supported by shoal"),
    ("[{type: tmpfs, source: x, target: /t}]", "invalid tmpfs source, source must be empty"),
    ("[{type: bind, target: /t}]", "invalid bind source, source cannot be empty"),
    ("[{type: bind, source: /s, target: /t, volume: {nocopy: true}}]", "volume options are incompatible with type bind"),
    ("['/a:/b:/c:ro']", "invalid spec: /a:/b:/c:ro: too many colons"),
    ("[{type: volume, target: /x, size: 1}]", "additional property size is not allowed"),
])
def test_bad_volumes_are_refused_with_one_line(tmp_path: Path, volumes: str, message: str) -> None:
    path = write(tmp_path, "compose.yml", f"services:\n  web: {{image: b, volumes: {volumes}}}\n")
    with pytest.raises(StackError, match=re.escape(message)) as caught:
        objects_of(path)
    assert "\n" not in str(caught.value)


def test_extra_hosts_as_a_mapping_and_a_bad_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "compose.yml", "services:\n  web: {image: b, extra_hosts: {db: 10.0.0.1}}\n")
    assert objects_of(path).services["app_web"]["TaskTemplate"]["ContainerSpec"]["Hosts"] == ["10.0.0.1 db"]
    path = write(tmp_path, "compose.yml", "services:\n  web: {image: b, extra_hosts: [db]}\n")
    with pytest.raises(StackError, match="'db' is not \"NAME:ADDRESS\""):
        objects_of(path)
