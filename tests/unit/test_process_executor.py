"""The process executor with real host processes (sh, sleep, echo)."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.executor.base import ExitStatusUnknown, TaskRejected, refuse_unsupported_fields
from shoal.agent.executor.cgroups import (
    CgroupError,
    Layout,
    Limits,
    plan_task_group,
    read_layout,
    remove_groups,
)
from shoal.agent.executor.process import (
    ProcessController,
    ProcessExecutor,
    parse_signal,
    process_alive,
    read_log_files,
    read_proc_stat,
    task_argv,
    task_environment,
)
from shoal.agent.task_files import SHM, TaskFiles
from shoal.ids import new_id
from shoal.spec import CONTAINER_SPEC_SUPPORT, PROCESS_EXECUTOR, TASK_SPEC_SUPPORT
from shoal.timefmt import MILLISECOND
from shoal.types import Doc
from tests.unit.agent_fixtures import group_members, pids_with
from tests.unit.waiting import wait_until

DEADLINE = 10.0



def make_task(command: list[str] | None = None, args: list[str] | None = None, image: str = "busybox",
              **container_spec: object) -> dict:
    return {"ID": new_id(), "ServiceID": new_id(), "Slot": 2, "NodeID": new_id(),
            "Spec": {"ContainerSpec": {"Image": image, "Command": command, "Args": args, **container_spec}},
            "DesiredState": "running", "Status": {"State": "assigned"},
            "ServiceAnnotations": {"Name": "web"}}


@pytest.fixture
def executor(tmp_path: Path) -> ProcessExecutor:
    return ProcessExecutor(tmp_path / "state")





async def started(executor: ProcessExecutor, task: dict) -> ProcessController:
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    return controller


# ---- reading the task document -----------------------------------------------------------------------------

@pytest.mark.parametrize("image, program", [
    ("nginx", "nginx"),
    ("nginx:1.11", "nginx"),
    ("docker.io/library/busybox:latest", "busybox"),
    ("localhost:5000/team/tool:2@sha256:" + "ab" * 32, "tool"),
])
def test_image_names_the_program_without_registry_and_tag(image: str, program: str) -> None:
    assert task_argv({"Image": image}) == [program]


def test_argv_is_command_plus_args_else_the_image_program() -> None:
    assert task_argv({"Image": "busybox", "Command": ["sh", "-c"], "Args": ["echo hi"]}) == ["sh", "-c", "echo hi"]
    assert task_argv({"Image": "busybox:1", "Command": None, "Args": ["sleep", "5"]}) == ["sleep", "5"]
    assert task_argv({"Image": "registry.example/sleep:1", "Command": [], "Args": None}) == ["sleep"]
    with pytest.raises(TaskRejected):
        task_argv({"Image": "", "Command": None})


def test_environment_has_base_spec_env_and_shoal_variables() -> None:
    task = make_task(["true"], Env=["GREETING=hello=world", "SHOAL_TASK_ID=forged", "NOEQUALS"])
    env = task_environment(task, {"PATH": "/bin", "HOME": "/root"})
    assert env["PATH"] == "/bin" and env["HOME"] == "/root"
    assert env["GREETING"] == "hello=world"
    assert env["SHOAL_TASK_ID"] == task["ID"]
    assert env["SHOAL_SERVICE_NAME"] == "web"
    assert env["SHOAL_TASK_SLOT"] == "2"
    assert "NOEQUALS" not in env


def test_signal_names() -> None:
    assert parse_signal("SIGTERM") == signal.SIGTERM
    assert parse_signal("int") == signal.SIGINT
    assert parse_signal("9") == signal.SIGKILL
    with pytest.raises(ValueError):
        parse_signal("SIGNOPE")


def test_describe_reports_engine_platform_and_resources(executor: ProcessExecutor) -> None:
    description = executor.describe()
    assert description["Engine"]["EngineVersion"].startswith("shoal-process/")
    assert description["Platform"]["OS"] == "linux"
    assert description["Platform"]["Architecture"]
    assert description["Resources"]["NanoCPUs"] >= 1_000_000_000
    assert description["Resources"]["MemoryBytes"] > 0


# ---- running processes -------------------------------------------------------------------------------------

async def test_process_gets_env_scratch_dir_and_logs_to_files(executor: ProcessExecutor) -> None:
    task = make_task(["sh", "-c", 'echo "id=$SHOAL_TASK_ID name=$SHOAL_SERVICE_NAME greet=$GREETING"; pwd; '
                      'echo oops >&2'], Env=["GREETING=hi"])
    controller = await started(executor, task)
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
    log_dir = executor.state_dir / "logs" / task["ID"]
    stdout = (log_dir / "stdout.log").read_text().splitlines()
    assert stdout[0] == f"id={task['ID']} name=web greet=hi"
    assert Path(stdout[1]) == executor.state_dir / "scratch" / task["ID"]
    assert (log_dir / "stderr.log").read_text() == "oops\n"
    # A task's output may hold anything it prints: no other local user may read it.
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE((log_dir / name).stat().st_mode) for name in ("stdout.log", "stderr.log")} == {0o600}


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_secrets_and_configs_are_files_only_the_tasks_user_reads_until_it_ends(tmp_path: Path) -> None:
    files = TaskFiles(SHM / "shoal-test" / new_id()[:12])
    executor = ProcessExecutor(tmp_path / "state", files)
    files.receive({"secrets": [{"ID": "s1", "Data": base64.b64encode(b"hunter2").decode()}],
                   "configs": [{"ID": "c1", "Data": base64.b64encode(b"port=80").decode()}]})
    script = ('cat "$SHOAL_SECRETS_DIR/db_password"; echo; cat "$SHOAL_CONFIGS_DIR/etc/app.conf"; echo; '
              'ls -ld "$SHOAL_SECRETS_DIR/.." | cut -c1-10; '
              'ls "$SHOAL_SECRETS_DIR/../.." >/dev/null 2>&1 && echo listed || echo "cannot list"')
    task = make_task(["sh", "-c", script], User="nobody",
                     Secrets=[{"SecretID": "s1", "SecretName": "db", "File": {"Name": "db_password", "UID": "0",
                                                                              "GID": "0", "Mode": 0o444}}],
                     Configs=[{"ConfigID": "c1", "ConfigName": "app",
                               "File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o444}}])
    try:
        controller = await started(executor, task)
        assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
        out = (executor.state_dir / "logs" / task["ID"] / "stdout.log").read_text().splitlines()
        assert out == ["hunter2", "port=80", "drwx------", "cannot list"]
        assert not files.task_dir(task["ID"]).exists(), "removed when the task ended"
        # Another task, as another user, cannot reach the first one's folder while it runs.
        other = await started(executor, make_task(["sleep", "30"], User="nobody", Secrets=task["Spec"][
            "ContainerSpec"]["Secrets"]))
        folder = files.task_dir(other._task_id)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        await other.shutdown(1.0, "SIGKILL")
        await asyncio.wait_for(other.wait(), DEADLINE)
        await other.remove()
        assert not folder.exists()
    finally:
        shutil.rmtree(files.root, ignore_errors=True)


async def test_a_task_with_secrets_is_refused_where_they_cannot_be_placed(executor: ProcessExecutor) -> None:
    task = make_task(["true"], Secrets=[{"SecretID": "s1", "SecretName": "db"}])
    with pytest.raises(TaskRejected, match="secrets"):
        await executor.controller(task).prepare()


# A value that sets each ContainerSpec field a process cannot have (Privileges by member, as in the table).
NOT_FOR_PROCESSES: dict[str, object] = {
    "Hostname": "web-1",
    "Groups": ["video"],
    "TTY": True,
    "OpenStdin": True,
    "ReadOnly": True,
    "Mounts": [{"Type": "bind", "Source": "/srv", "Target": "/srv"}],
    "Init": True,
    "Hosts": ["10.0.0.1 db"],
    "DNSConfig": {"Search": ["corp"]},
    "Sysctls": {"net.ipv4.ip_forward": "1"},
    "CapabilityAdd": ["CAP_NET_ADMIN"],
    "CapabilityDrop": ["CAP_NET_RAW"],
    "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 10}],
    "OomScoreAdj": 100,
    "Privileges.NoNewPrivileges": True,
    "Privileges.Seccomp": {"Mode": "unconfined"},
    "Privileges.AppArmor": {"Mode": "disabled"},
    # No executor acts on these (the API refuses them): a task of an older stored spec is rejected too.
    "Privileges.CredentialSpec": {"File": "spec.json"},
    "Privileges.SELinuxContext": {"Type": "svirt_t"},
    "Isolation": "hyperv",
}


def _task_with(field: str, value: object) -> Doc:
    parent, _, member = field.partition(".")
    return make_task(["true"], **{parent: {member: value} if member else value})


def test_the_support_table_says_what_a_process_can_have() -> None:
    """`shoal.spec.CONTAINER_SPEC_SUPPORT` is the one table; this is the process executor's reading of it."""
    unsupported = {key for key, support in CONTAINER_SPEC_SUPPORT.items() if PROCESS_EXECUTOR not in support.executors}
    assert unsupported == set(NOT_FOR_PROCESSES)
    assert set(CONTAINER_SPEC_SUPPORT) - unsupported == {
        "Image", "Labels", "Command", "Args", "Env", "Dir", "User", "StopSignal", "StopGracePeriod", "Healthcheck",
        "Secrets", "Configs"}
    assert {key for key, support in TASK_SPEC_SUPPORT.items() if PROCESS_EXECUTOR not in support.executors} == {
        "LogDriver"}


@pytest.mark.parametrize(("field", "value"), NOT_FOR_PROCESSES.items(), ids=list(NOT_FOR_PROCESSES))
async def test_a_field_a_process_cannot_have_rejects_the_task_naming_it(executor: ProcessExecutor, field: str,
                                                                        value: object) -> None:
    task = _task_with(field, value)
    with pytest.raises(TaskRejected) as caught:
        refuse_unsupported_fields(task, PROCESS_EXECUTOR)
    message = str(caught.value)
    assert message.startswith(f"TaskTemplate.ContainerSpec.{field}")
    assert "is not supported by the process executor: remove it" in message and "\n" not in message
    controller = executor.controller(task)
    with pytest.raises(TaskRejected, match="not supported by the process executor"):
        await controller.prepare()
    assert not executor.scratch_dir(task["ID"]).exists()  # rejected before anything was made for it


async def test_a_log_driver_rejects_the_task(executor: ProcessExecutor) -> None:
    """A process's output goes to files on its node, whatever driver the spec names."""
    task = make_task(["true"])
    task["Spec"]["LogDriver"] = {"Name": "json-file", "Options": {"max-size": "1m"}}
    with pytest.raises(TaskRejected) as caught:
        await executor.controller(task).prepare()
    assert str(caught.value).startswith("TaskTemplate.LogDriver.Name is not supported by the process executor: "
                                        "remove it (a process's output is kept in files on its node")
    task["Spec"]["LogDriver"] = {"Name": "", "Options": {}}  # not set
    refuse_unsupported_fields(task, PROCESS_EXECUTOR)


async def test_zero_values_the_clients_always_send_are_fine(executor: ProcessExecutor) -> None:
    """The docker CLI sends `"Init": false, "DNSConfig": {}`; stack deploy a null Privileges and labels."""
    task = make_task(["true"], Init=False, DNSConfig={}, Labels={"com.docker.stack.namespace": "app"},
                     Privileges={"CredentialSpec": None, "SELinuxContext": None, "NoNewPrivileges": False,
                                 "Seccomp": {"Mode": "default"}, "AppArmor": {"Mode": "default"}},
                     Hostname="", Groups=[], TTY=False, Mounts=[], Isolation="default", OomScoreAdj=0, Hosts=[],
                     Sysctls={}, CapabilityAdd=None, Ulimits=[])
    task["Spec"]["LogDriver"] = None
    controller = await started(executor, task)
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0


async def test_given_working_directory_is_used_and_must_exist(executor: ProcessExecutor, tmp_path: Path) -> None:
    controller = await started(executor, make_task(["pwd"], Dir=str(tmp_path)))
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
    missing = executor.controller(make_task(["pwd"], Dir=str(tmp_path / "missing")))
    with pytest.raises(TaskRejected, match="working directory"):
        await missing.prepare()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_user_from_the_spec(executor: ProcessExecutor) -> None:
    task = make_task(["sh", "-c", 'echo "$(id -u) $HOME"'], User="nobody")
    controller = await started(executor, task)
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
    nobody = pwd.getpwnam("nobody")
    assert (executor.state_dir / "logs" / task["ID"] / "stdout.log").read_text() == \
        f"{nobody.pw_uid} {nobody.pw_dir}\n"
    with pytest.raises(TaskRejected, match="unable to find user"):
        await executor.controller(make_task(["true"], User="no-such-user-shoal")).prepare()


async def test_exit_codes_including_death_by_signal(executor: ProcessExecutor) -> None:
    three = await started(executor, make_task(["sh", "-c", "exit 3"]))
    assert await asyncio.wait_for(three.wait(), DEADLINE) == 3
    killed = await started(executor, make_task(["sh", "-c", "kill -KILL $$"]))
    assert await asyncio.wait_for(killed.wait(), DEADLINE) == 128 + signal.SIGKILL


async def test_missing_program_is_rejected(executor: ProcessExecutor) -> None:
    with pytest.raises(TaskRejected, match="not found"):
        await executor.controller(make_task(["no-such-program-shoal"])).prepare()
    with pytest.raises(TaskRejected):
        await executor.controller(make_task(None, None, image="nosuchprogramshoal:1.0")).prepare()
    with pytest.raises(TaskRejected):
        await executor.controller(make_task(["/nonexistent/bin/tool"])).prepare()


async def test_shutdown_sends_stop_signal_to_the_group(executor: ProcessExecutor, marker: str) -> None:
    # The shell's background child is in the same process group, so the stop signal reaches it too.
    controller = await started(executor, make_task(["sh", "-c", "sleep 300 & wait", marker]))
    await wait_until(lambda: len(group_members(controller.pid())) == 2)
    await controller.shutdown(5.0, "SIGTERM")
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 128 + signal.SIGTERM
    await wait_until(lambda: group_members(controller.pid()) == [])


async def test_shutdown_kills_a_process_that_ignores_the_stop_signal(executor: ProcessExecutor,
                                                                     marker: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "trap '' TERM; sleep 300; sleep 300", marker]))
    # The trap is set once the shell has started its first sleep (a TERM before that would end it).
    await wait_until(lambda: len(group_members(controller.pid())) == 2)
    before = time.monotonic()
    await controller.shutdown(0.3, "TERM")
    assert time.monotonic() - before >= 0.3
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 128 + signal.SIGKILL
    assert pids_with(marker) == []


async def test_what_is_left_of_the_group_is_killed_when_the_main_process_ends(
        executor: ProcessExecutor, marker: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "sleep 300 & wait", marker]))
    await wait_until(lambda: len(group_members(controller.pid())) == 2)
    os.kill(controller.pid(), signal.SIGKILL)  # only the main process: its background child lives on
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 128 + signal.SIGKILL
    await wait_until(lambda: group_members(controller.pid()) == [])


async def test_recover_adopts_a_live_process_whose_exit_status_is_then_unknown(
        executor: ProcessExecutor, marker: str) -> None:
    task = make_task(["sh", "-c", "sleep 300; true", marker])
    original = await started(executor, task)
    handle = original.handle()
    adopted = ProcessExecutor(executor.state_dir).recover(task, handle)
    assert adopted.pid() == original.pid() and adopted.running()
    waiting = asyncio.ensure_future(adopted.wait())
    os.killpg(original.pid(), signal.SIGKILL)
    with pytest.raises(ExitStatusUnknown):
        await asyncio.wait_for(waiting, DEADLINE)
    await asyncio.wait_for(original.wait(), DEADLINE)  # reap our own child


async def test_recover_refuses_dead_or_reused_pids(executor: ProcessExecutor) -> None:
    task = make_task(["sh", "-c", "exit 0"])
    controller = await started(executor, task)
    handle = controller.handle()
    await asyncio.wait_for(controller.wait(), DEADLINE)
    with pytest.raises(ExitStatusUnknown):
        executor.recover(task, handle)
    # Our own pid with another start time: a reused pid must not be taken for the task's process.
    me = read_proc_stat(os.getpid())
    assert me is not None and process_alive(os.getpid(), me.start_ticks)
    with pytest.raises(ExitStatusUnknown):
        executor.recover(task, {**handle, "PID": os.getpid(), "StartTime": me.start_ticks + 1})
    with pytest.raises(ExitStatusUnknown):
        executor.recover(task, {**handle, "PID": os.getpid(), "StartTime": me.start_ticks, "BootID": "other"})


async def test_remove_deletes_scratch_and_logs(executor: ProcessExecutor) -> None:
    task = make_task(["echo", "hi"])
    controller = await started(executor, task)
    await asyncio.wait_for(controller.wait(), DEADLINE)
    assert (executor.state_dir / "logs" / task["ID"] / "stdout.log").read_text() == "hi\n"
    await controller.remove()
    assert not (executor.state_dir / "logs" / task["ID"]).exists()
    assert not (executor.state_dir / "scratch" / task["ID"]).exists()


# ---- health check probes -----------------------------------------------------------------------------------

async def test_probe_runs_as_the_task_does_and_returns_exit_code_and_output(executor: ProcessExecutor,
                                                                          marker: str) -> None:
    task = make_task(["sh", "-c", "sleep 300; true", marker], Env=["GREETING=hi"])
    controller = await started(executor, task)
    check = 'echo "$SHOAL_TASK_ID $GREETING $(pwd)"; echo "to stderr" >&2; exit 1'
    result = await controller.probe(["/bin/sh", "-c", check], 5.0)
    assert result.exit_code == 1
    assert result.output == f"{task['ID']} hi {executor.state_dir / 'scratch' / task['ID']}\nto stderr\n"
    assert (await controller.probe(["true"], 5.0)).exit_code == 0  # exec form, found on the task's PATH
    await controller.shutdown(1.0, "SIGKILL")
    await asyncio.wait_for(controller.wait(), DEADLINE)


async def test_probe_past_its_timeout_is_killed_with_its_group(executor: ProcessExecutor, marker: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "sleep 300; true", marker]))
    # The check leaves a background child behind: it goes too, and it cannot hold the output open.
    before = time.monotonic()
    result = await controller.probe(["/bin/sh", "-c", "echo begun; sleep 300 & sleep 300; true", f"{marker}-check"],
                                    0.2)
    assert time.monotonic() - before < 5.0
    assert result.exit_code == -1
    assert result.output == "Health check exceeded timeout (0.2s): begun\n"
    await wait_until(lambda: pids_with(f"{marker}-check") == [])
    assert controller.running()  # the task itself is left alone
    await controller.shutdown(1.0, "SIGKILL")
    await asyncio.wait_for(controller.wait(), DEADLINE)


async def test_probe_that_cannot_start_is_a_failure(executor: ProcessExecutor, marker: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "sleep 300; true", marker]))
    result = await controller.probe(["no-such-check-shoal"], 1.0)
    assert result.exit_code == -1 and "could not be started" in result.output
    await controller.shutdown(1.0, "SIGKILL")
    await asyncio.wait_for(controller.wait(), DEADLINE)


async def test_probe_output_is_cut_like_dockers(executor: ProcessExecutor, marker: str) -> None:
    controller = await started(executor, make_task(["sh", "-c", "sleep 300; true", marker]))
    result = await controller.probe(["/bin/sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x"], 5.0)
    assert result.exit_code == 0 and result.output == "x" * 4096 + "..."
    await controller.shutdown(1.0, "SIGKILL")
    await asyncio.wait_for(controller.wait(), DEADLINE)


async def test_probe_of_an_adopted_process_has_the_tasks_environment(executor: ProcessExecutor,
                                                                     marker: str) -> None:
    task = make_task(["sh", "-c", "sleep 300; true", marker], Env=["GREETING=hi"])
    original = await started(executor, task)
    adopted = ProcessExecutor(executor.state_dir).recover(task, original.handle())
    result = await adopted.probe(["/bin/sh", "-c", 'echo "$GREETING $(pwd)"'], 5.0)
    assert (result.exit_code, result.output) == (0, f"hi {executor.state_dir / 'scratch' / task['ID']}\n")
    await original.shutdown(1.0, "SIGKILL")
    await asyncio.wait_for(original.wait(), DEADLINE)


def test_task_ids_that_could_escape_the_state_dir_are_rejected(executor: ProcessExecutor) -> None:
    with pytest.raises(TaskRejected):
        executor.controller({**make_task(["true"]), "ID": "../../etc"})


# ---- logs ----------------------------------------------------------------------------------------------------

async def collect(lines: object) -> list[tuple[str, bytes]]:
    return [(stream, line) async for stream, _, line in lines]  # type: ignore[attr-defined]


async def test_log_tail_counts_lines_of_the_whole_task(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    out.write_bytes(b"".join(b"out %d\n" % i for i in range(1, 6)) + b"partial")
    err.write_bytes(b"err 1\n")
    os.utime(err, (1, 1))  # older than stdout: its lines come first
    files = [("stdout", out), ("stderr", err)]

    everything = await collect(read_log_files(files, None, False, lambda: True, time.time))
    assert everything == [("stderr", b"err 1\n")] + [("stdout", b"out %d\n" % i) for i in range(1, 6)] + [
        ("stdout", b"partial")]
    assert await collect(read_log_files(files, 2, False, lambda: True, time.time)) == [
        ("stdout", b"out 5\n"), ("stdout", b"partial")]
    assert await collect(read_log_files(files, 0, False, lambda: True, time.time)) == []
    stamps = [stamp async for _, stamp, _ in read_log_files(files, None, False, lambda: True, time.time)]
    assert stamps[0] == 1 and stamps[-1] == out.stat().st_mtime


async def test_log_tail_of_a_large_file_reads_from_the_end(tmp_path: Path) -> None:
    big = tmp_path / "stdout.log"
    big.write_bytes(b"".join(b"line %06d %s\n" % (i, b"x" * 50) for i in range(20000)))
    got = await collect(read_log_files([("stdout", big)], 3, False, lambda: True, time.time))
    assert [line[:11] for _, line in got] == [b"line 019997", b"line 019998", b"line 019999"]


async def test_log_follow_yields_new_lines_until_the_task_ended(tmp_path: Path) -> None:
    out = tmp_path / "stdout.log"
    out.write_bytes(b"first\n")
    ended = False
    seen: list[bytes] = []

    async def follow() -> None:
        async for _, _, line in read_log_files([("stdout", out), ("stderr", tmp_path / "none")], None, True,
                                               lambda: ended, lambda: 42.0):
            seen.append(line)

    follower = asyncio.ensure_future(follow())
    await wait_until(lambda: seen == [b"first\n"])
    with open(out, "ab") as f:
        f.write(b"second\nthi")
    await wait_until(lambda: seen == [b"first\n", b"second\n"])
    with open(out, "ab") as f:
        f.write(b"rd")
    ended = True
    await asyncio.wait_for(follower, DEADLINE)
    assert seen == [b"first\n", b"second\n", b"third"]


def test_stop_grace_is_given_in_nanoseconds() -> None:
    from shoal.agent.worker import stop_grace_seconds

    assert stop_grace_seconds(make_task(["true"], StopGracePeriod=250 * MILLISECOND)) == 0.25
    assert stop_grace_seconds(make_task(["true"])) == 10.0


# ---- published ports ---------------------------------------------------------------------------------------

def with_ports(task: dict, *ports: tuple[int, int, str, str]) -> dict:
    task["Endpoint"] = {"Ports": [{"TargetPort": target, "PublishedPort": published, "Protocol": protocol,
                                   "PublishMode": mode} for target, published, protocol, mode in ports]}
    return task


async def test_a_task_gets_its_own_node_port_for_each_published_target_port(
        executor: ProcessExecutor, marker: str) -> None:
    task = with_ports(make_task(["sh", "-c", 'echo "$PORT $PORT_80 $PORT_53"; sleep 300', marker]),
                      (80, 8080, "tcp", "ingress"), (53, 5353, "udp", "ingress"), (80, 9090, "tcp", "host"))
    other = with_ports(make_task(["sh", "-c", "sleep 300", marker]), (80, 8080, "tcp", "ingress"))
    controller = await started(executor, task)
    second = await started(executor, other)
    log_file = executor.state_dir / "logs" / task["ID"] / "stdout.log"
    await wait_until(lambda: log_file.exists() and log_file.read_text().endswith("\n"))
    port, port_80, port_53 = (int(word) for word in log_file.read_text().split())
    assert port == port_80 and port_53 != port_80
    assert second.ports[80] not in (port_80, port_53)  # two tasks of a service on one node never share one
    ports = await controller.backend_ports()
    assert [(p["TargetPort"], p["Protocol"], p["PublishMode"], p["Port"]) for p in ports] == [
        (80, "tcp", "ingress", port_80), (53, "udp", "ingress", port_53), (80, "tcp", "host", port_80)]
    # A restarted agent re-adopts the task with the same ports.
    adopted = ProcessExecutor(executor.state_dir).recover(task, controller.handle())
    assert adopted.ports == {80: port_80, 53: port_53}
    for running in (controller, second):
        await running.shutdown(1.0, "SIGKILL")
        await asyncio.wait_for(running.wait(), DEADLINE)


async def test_a_task_without_published_ports_gets_no_port_variables(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(["sh", "-c", 'echo "[${PORT-unset}]"']))
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
    assert controller.handle()["Ports"] == {}


# ---- resource limits (cgroups) -------------------------------------------------------------------------------

# Reads 200 MB from /dev/zero into one buffer (every page touched), then exits 0: far past a 32 MiB limit.
ALLOCATE_200MB = ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]


@pytest.fixture
def node_id() -> Iterator[str]:
    """The node of this test's limited tasks; whatever groups it still has at the end are removed."""
    node = new_id()
    yield node
    layout = read_layout()
    for mount in {*layout.v1.values(), *([layout.unified] if layout.unified else [])}:
        folder = Path(mount, "shoal", node)
        if folder.is_dir():
            remove_groups([str(group) for group in folder.iterdir() if group.is_dir()])


def limited(command: list[str], limits: dict, node: str, **container_spec: object) -> dict:
    task = make_task(command)
    task["Spec"]["ContainerSpec"].update(container_spec)
    task["NodeID"] = node
    task["Spec"]["Resources"] = {"Limits": limits, "Reservations": {}}
    return task


def require_cgroups(limits: dict) -> None:
    """Skip unless this host lets the agent enforce these limits (root, controllers mounted)."""
    try:
        plan_task_group(Limits.of_task({"Spec": {"Resources": {"Limits": limits}}}), read_layout(), "n", "t")
    except CgroupError as exc:
        pytest.skip(str(exc))
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")


def task_cgroups(pid: int) -> dict[str, str]:
    """controllers → the process's group path, from /proc/<pid>/cgroup."""
    groups = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            groups[name] = path
    return groups


async def test_a_task_past_its_memory_limit_is_oom_killed_and_says_so(executor: ProcessExecutor, node_id: str) -> None:
    require_cgroups({"MemoryBytes": 32 << 20})
    controller = await started(executor, limited(ALLOCATE_200MB, {"MemoryBytes": 32 << 20}, node_id))
    assert controller.cgroup is not None
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 128 + signal.SIGKILL
    assert controller.exit_cause() == "out of memory: OOM killed at its memory limit of 32MiB"
    assert not any(Path(group).exists() for group in controller.cgroup.groups), "removed when the task ended"


async def test_the_same_task_without_a_limit_is_not_killed(executor: ProcessExecutor) -> None:
    controller = await started(executor, make_task(ALLOCATE_200MB))
    assert controller.cgroup is None
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0
    assert controller.exit_cause() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_limits_are_set_in_the_groups_the_process_runs_in_from_its_start(executor: ProcessExecutor,
                                                                              marker: str, node_id: str) -> None:
    limits = {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20, "Pids": 20}
    require_cgroups(limits)
    # It reads its own groups as its first act, as `nobody`: it never ran outside them.
    task = limited(["sh", "-c", "cat /proc/self/cgroup; id -u; sleep 300; true", marker], limits, node_id,
                   User="nobody")
    controller = await started(executor, task)
    assert controller.cgroup is not None
    stdout = executor.state_dir / "logs" / task["ID"] / "stdout.log"
    await wait_until(lambda: stdout.read_text().endswith("\n65534\n"))
    first = stdout.read_text()
    node_task = f"/shoal/{task['NodeID']}/{task['ID']}"
    groups = task_cgroups(controller.pid())
    if controller.cgroup.version == 1:
        assert {groups["cpu"], groups["memory"], groups["pids"]} == {node_task}
        assert first.count(node_task) >= 3
        files = {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000",
                 "memory.limit_in_bytes": str(64 << 20), "pids.max": "20"}
    else:
        assert groups[""] == node_task and node_task in first
        files = {"cpu.max": "50000 100000", "memory.max": str(64 << 20), "pids.max": "20"}
    found = {}
    for group in controller.cgroup.groups:
        for name in files:
            if Path(group, name).exists():
                found[name] = Path(group, name).read_text().strip()
    assert found == files
    # A health check runs in the task's groups too, as an exec in a container does.
    probed = await controller.probe(["cat", "/proc/self/cgroup"], 5.0)
    assert probed.exit_code == 0 and node_task in probed.output
    await controller.shutdown(1.0, "SIGTERM")
    await asyncio.wait_for(controller.wait(), DEADLINE)
    assert not any(Path(group).exists() for group in controller.cgroup.groups)
    await controller.remove()


async def test_an_adopted_task_keeps_its_groups_and_its_oom_kill_is_still_told(executor: ProcessExecutor, node_id: str) -> None:
    require_cgroups({"MemoryBytes": 32 << 20})
    # It allocates a second after its start: by then another agent process has adopted it.
    task = limited(["sh", "-c", 'sleep 1; exec "$@"', "x", *ALLOCATE_200MB], {"MemoryBytes": 32 << 20},
                   node_id)
    original = await started(executor, task)
    adopted = ProcessExecutor(executor.state_dir).recover(task, original.handle())
    assert adopted.cgroup is not None and adopted.cgroup.groups == original.cgroup.groups  # type: ignore[union-attr]
    with pytest.raises(ExitStatusUnknown):
        await asyncio.wait_for(adopted.wait(), DEADLINE)
    assert adopted.exit_cause() == "out of memory: OOM killed at its memory limit of 32MiB"
    assert not any(Path(group).exists() for group in adopted.cgroup.groups)
    await asyncio.wait_for(original.wait(), DEADLINE)  # reap our own child


async def test_removing_a_lost_task_kills_what_is_left_in_its_groups(executor: ProcessExecutor, marker: str, node_id: str) -> None:
    require_cgroups({"Pids": 50})
    task = limited(["sh", "-c", "sleep 300; true", marker], {"Pids": 50}, node_id)
    original = await started(executor, task)
    assert original.cgroup is not None
    # An agent that lost the task's record has only the task: its groups are found by name.
    await executor.controller(task).remove()
    await wait_until(lambda: not original.running())
    assert not any(Path(group).exists() for group in original.cgroup.groups)
    await asyncio.wait_for(original.wait(), DEADLINE)


async def test_a_node_without_the_controllers_rejects_a_task_with_limits(tmp_path: Path) -> None:
    executor = ProcessExecutor(tmp_path / "state", cgroup_layout=Layout(v1={"cpu": "/sys/fs/cgroup/cpu"}))
    with pytest.raises(TaskRejected, match=r"no cgroup controller memory \(for Limits.MemoryBytes\)"):
        await executor.controller(limited(["true"], {"NanoCPUs": 10**9, "MemoryBytes": 64 << 20}, "n1")).prepare()
    # A task without limits (reservations are the scheduler's) needs no group.
    task = make_task(["true"])
    task["Spec"]["Resources"] = {"Limits": {}, "Reservations": {"MemoryBytes": 64 << 20}}
    controller = await started(executor, task)
    assert await asyncio.wait_for(controller.wait(), DEADLINE) == 0


async def test_groups_that_cannot_be_made_reject_the_task_before_it_runs(tmp_path: Path, marker: str) -> None:
    # As when the agent is not root, or the hierarchy is read-only: the kernel refuses, the task never runs.
    layout = Layout(v1={"memory": str(tmp_path / "no-such-mount")})
    executor = ProcessExecutor(tmp_path / "state", cgroup_layout=layout)
    controller = executor.controller(limited(["sh", "-c", "sleep 300; true", marker], {"MemoryBytes": 64 << 20}, "n1"))
    await controller.prepare()
    with pytest.raises(TaskRejected, match=r"cannot create cgroup .*/no-such-mount/shoal: No such file or directory"):
        await controller.start()
    assert controller.pid() == 0 and pids_with(marker) == []
