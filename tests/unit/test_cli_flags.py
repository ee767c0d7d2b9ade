"""Bool flags read as docker's flag parser (pflag) reads them: `--detach=false`, `-d=0`, `-qd=false`, with Go's
strconv.ParseBool values, on every command; `--detach false` gives no value; a bad value is one error line."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.cli.flags import parse_bool
from shoal.cli.main import build_parser
from tests.unit.test_cli_parse import FakeDaemon


def parsed(*argv: str) -> dict[str, Any]:
    args, extra = build_parser().parse_known_args(list(argv))
    assert extra == []
    return vars(args)


@pytest.mark.parametrize(("argv", "expected"), [
    (["service", "update", "--detach=false", "web"], {"detach": False, "quiet": False}),
    (["service", "update", "--detach=true", "web"], {"detach": True}),
    (["service", "update", "-d", "web"], {"detach": True}),
    (["service", "update", "web"], {"detach": False}),
    (["service", "update", "-d=0", "-q=TRUE", "web"], {"detach": False, "quiet": True}),
    (["service", "update", "-qd=f", "web"], {"detach": False, "quiet": True}),
    (["service", "update", "-qd", "web"], {"detach": True, "quiet": True}),
    # The last one wins, as with pflag.
    (["service", "update", "--detach=False", "--detach", "web"], {"detach": True}),
    (["service", "update", "--detach", "--detach=0", "web"], {"detach": False}),
    (["service", "update", "--force=true", "--rollback=false", "web"], {"force": True, "rollback": False}),
    # A service's command after its image is its own.
    (["service", "create", "--detach=T", "--name", "x", "busybox", "ls", "--detach=false"],
     {"detach": True, "name": "x", "command": ["ls", "--detach=false"]}),
    (["service", "create", "--no-healthcheck=1", "busybox"], {"no_healthcheck": True}),
    (["service", "ls", "--quiet=true"], {"quiet": True}),
    (["service", "ls", "--quiet=FALSE"], {"quiet": False}),
    (["service", "ps", "--no-trunc=t", "web"], {"no_trunc": True}),
    (["service", "inspect", "--pretty=false", "web"], {"pretty": False}),
    (["service", "scale", "-d=true", "web=2"], {"detach": True}),
    (["service", "rollback", "--detach=1", "web"], {"detach": True}),
    (["service", "logs", "--follow=false", "--timestamps=true", "web"], {"follow": False, "timestamps": True}),
    (["node", "ls", "-q"], {"quiet": True}),
    (["node", "rm", "--force=true", "n1"], {"force": True}),
    (["node", "update", "--rebalance=false", "n1"], {"rebalance": False}),
    (["secret", "ls", "--quiet=1"], {"quiet": True}),
    (["network", "create", "--attachable=true", "--internal=false", "n"], {"attachable": True, "internal": False}),
    (["network", "create", "-d=overlay", "n"], {"driver": "overlay"}),  # -d is a value flag there
    (["swarm", "init", "--autolock=true"], {"autolock": True}),
    (["swarm", "leave", "-f=true"], {"force": True}),
    (["swarm", "ca", "--rotate", "--detach=false"], {"rotate": True, "detach": False}),
    (["swarm", "update"], {"autolock": None}),
    (["swarm", "update", "--autolock"], {"autolock": True}),
    (["swarm", "update", "--autolock=false"], {"autolock": False}),
    # docker's stack deploy detaches unless told --detach=false.
    (["stack", "deploy", "-c", "a.yml", "app"], {"detach": True}),
    (["stack", "deploy", "--detach=false", "-c", "a.yml", "app"], {"detach": False}),
    (["stack", "deploy", "-d", "-c", "a.yml", "app"], {"detach": True}),
    (["stack", "ps", "--no-trunc=true", "-q=1", "app"], {"no_trunc": True, "quiet": True}),
    # A value flag takes the next word, dash or not.
    (["service", "create", "--name", "-d=false", "busybox"], {"name": "-d=false", "detach": False}),
])
def test_bool_flags_take_dockers_forms(argv: list[str], expected: dict[str, Any]) -> None:
    args = parsed(*argv)
    assert {key: args[key] for key in expected} == expected


@pytest.mark.parametrize(("argv", "message"), [
    (["service", "update", "--detach=maybe", "web"],
     'invalid argument "maybe" for "-d, --detach" flag: strconv.ParseBool: parsing "maybe": invalid syntax'),
    (["service", "update", "-d=yes", "web"],
     'invalid argument "yes" for "-d, --detach" flag: strconv.ParseBool: parsing "yes": invalid syntax'),
    (["service", "update", "-qd=no", "web"],
     'invalid argument "no" for "-d, --detach" flag: strconv.ParseBool: parsing "no": invalid syntax'),
    (["service", "ps", "--no-trunc=", "web"],
     'invalid argument "" for "--no-trunc" flag: strconv.ParseBool: parsing "": invalid syntax'),
    (["swarm", "update", "--autolock=on"],
     'invalid argument "on" for "--autolock" flag: strconv.ParseBool: parsing "on": invalid syntax'),
    # `false` after a bool flag is an argument, not its value (pflag too).
    (["service", "update", "--detach", "false", "web"], "unrecognized arguments: web"),
])
def test_bad_bool_values_are_one_error_and_nothing_is_sent(argv: list[str], message: str) -> None:
    daemon = FakeDaemon()
    code, out, err = daemon.cli(*argv)
    command = " ".join(argv[:2])
    assert (code, out, err) == (2, "", f"shoal: error: {message}\nSee 'shoal {command} --help'.\n")
    assert daemon.requests == []


def test_service_update_detach_false_is_no_longer_refused() -> None:
    service = {"ID": "svc1", "Version": {"Index": 3},
               "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 1}},
                        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}}
    daemon = FakeDaemon({"GET /services/web": service, "POST /services/svc1/update": {"Warnings": None}})
    assert daemon.cli("service", "update", "--detach=true", "--replicas", "2", "web") == (0, "web\n", "")
    assert daemon.bodies("POST /services/svc1/update")[0]["Mode"] == {"Replicated": {"Replicas": 2}}


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False), ("False", False),
])
def test_parse_bool_reads_what_go_reads(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["yes", "no", "tRuE", "", "2", " true"])
def test_parse_bool_refuses_the_rest(text: str) -> None:
    with pytest.raises(ValueError, match="invalid syntax"):
        parse_bool(text)


@pytest.mark.parametrize(("argv", "autolock"), [
    (["--autolock=false"], False), (["--autolock"], True), (["--autolock=1", "--task-history-limit", "3"], True),
    (["--task-history-limit", "3"], "unchanged"),
])
def test_swarm_update_autolock_is_a_bool_flag(argv: list[str], autolock: Any) -> None:
    swarm = {"Version": {"Index": 7}, "Spec": {"EncryptionConfig": {"AutoLockManagers": "unchanged"}}}
    daemon = FakeDaemon({"GET /swarm": swarm, "POST /swarm/update": {}, "GET /swarm/unlockkey": {"UnlockKey": "K"}})
    code, out, err = daemon.cli("swarm", "update", *argv)
    assert (code, err) == (0, "") and out.startswith("Swarm updated.\n")
    assert daemon.bodies("POST /swarm/update")[0]["EncryptionConfig"]["AutoLockManagers"] == autolock
