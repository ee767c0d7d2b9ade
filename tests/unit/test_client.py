"""The API client: stdcopy frames, errors, and the CLI against a tiny HTTP server on a unix socket."""

from __future__ import annotations

import io
import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from shoal.api.client import (
    STDERR,
    STDOUT,
    ApiError,
    Client,
    DaemonUnreachable,
    encode_stdcopy,
    filters_param,
    iter_stdcopy,
)
from shoal.cli.common import CliContext
from shoal.cli.main import run


def test_stdcopy_frames_decode_across_chunk_boundaries() -> None:
    data = encode_stdcopy(STDOUT, b"hello\n") + encode_stdcopy(STDERR, b"oops\n") + encode_stdcopy(STDOUT, b"")
    assert data[:8] == bytes([1, 0, 0, 0, 0, 0, 0, 6])
    chunks = [data[i:i + 3] for i in range(0, len(data), 3)]
    assert list(iter_stdcopy(chunks)) == [(STDOUT, b"hello\n"), (STDERR, b"oops\n"), (STDOUT, b"")]


def test_stdcopy_rejects_a_truncated_stream() -> None:
    with pytest.raises(ValueError, match="truncated"):
        list(iter_stdcopy([encode_stdcopy(STDOUT, b"hello")[:-2]]))


def test_filters_use_docker_map_form() -> None:
    assert filters_param({"service": ["abc"], "_up-to-date": ["true"]}) == \
        '{"service":{"abc":true},"_up-to-date":{"true":true}}'


class _Handler(BaseHTTPRequestHandler):
    log_lines = b"".join(
        encode_stdcopy(STDOUT, f"com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,"
                               f"com.docker.swarm.task.id=t{i} hello from {i}\n".encode())
        for i in (1, 2)
    )

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/_ping":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        elif self.path.startswith("/services/web/logs"):
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
            self.send_header("Content-Length", str(len(self.log_lines)))
            self.end_headers()
            self.wfile.write(self.log_lines)
        elif self.path.startswith("/services/web"):
            self._json(200, {"ID": "s1", "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 2}},
                                                   "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}})
        elif self.path == "/services/s1":
            self._json(200, {"ID": "s1", "Spec": {"Name": "web"}})
        elif self.path.startswith("/tasks/t"):
            task_id = self.path.rsplit("/", 1)[1]
            self._json(200, {"ID": task_id + "x" * 24, "Slot": int(task_id[1:])})
        elif self.path == "/nodes/n1":
            self._json(200, {"ID": "n1", "Spec": {}, "Description": {"Hostname": "node1"}})
        else:
            name = self.path.split("?")[0].rsplit("/", 1)[1]
            self._json(404, {"message": f"service {name} not found"})


    def do_DELETE(self) -> None:
        self.do_GET()


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    path = tmp_path / "shoal.sock"
    server = _UnixServer(str(path), _Handler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, server.paths  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(argv, CliContext(out=out, err=err))
    return code, out.getvalue(), err.getvalue()


def test_api_error_carries_status_and_message(daemon_socket: tuple[Path, list[str]]) -> None:
    path, _ = daemon_socket
    with Client.for_host(f"unix://{path}") as client:
        assert client.ping()
        with pytest.raises(ApiError) as caught:
            client.get("/services/x")
    assert caught.value.status == 404 and caught.value.not_found
    assert str(caught.value) == "Error response from daemon: service x not found"


def test_cli_prints_daemon_errors_on_one_line(daemon_socket: tuple[Path, list[str]]) -> None:
    path, _ = daemon_socket
    code, out, err = cli(["-H", f"unix://{path}", "service", "inspect", "--pretty", "x"])
    assert (code, out) == (1, "")
    assert err == "no such service: x\n"
    code, out, err = cli(["-H", f"unix://{path}", "service", "rm", "x"])
    assert (code, out, err) == (1, "", "Error response from daemon: service x not found\n")


def test_non_json_errors_stay_on_one_line(daemon_socket: tuple[Path, list[str]]) -> None:
    path, _ = daemon_socket
    code, out, err = cli(["-H", f"unix://{path}", "swarm", "leave"])
    assert (code, out) == (1, "")
    assert err.startswith("Error response from daemon: 501 ") and err.count("\n") == 1


def test_cli_reports_a_daemon_that_does_not_answer(tmp_path: Path) -> None:
    host = f"unix://{tmp_path / 'nobody.sock'}"
    assert not Client.for_host(host).ping()
    with pytest.raises(DaemonUnreachable):
        Client.for_host(host).get("/nodes")
    code, out, err = cli(["-H", host, "node", "ls"])
    assert code == 1 and out == ""
    assert err == (f"Cannot connect to the shoal daemon at {host}. Is the shoal daemon running? "
                   'Start it with "shoal daemon", or run "shoal playground up" for a local cluster.\n')


def test_service_logs_prefixes_lines_with_task_context(daemon_socket: tuple[Path, list[str]]) -> None:
    path, paths = daemon_socket
    code, out, err = cli(["-H", f"unix://{path}", "service", "logs", "web"])
    assert (code, err) == (0, "")
    assert out == ("web.1.t1xxxxxxxxxx@node1    | hello from 1\n"
                   "web.2.t2xxxxxxxxxx@node1    | hello from 2\n")
    assert "/services/web/logs?stdout=1&stderr=1&tail=all&details=1" in paths


def test_tcp_hosts_need_certificates() -> None:
    with pytest.raises(ValueError, match="TLS"):
        Client.for_host("tcp://127.0.0.1:2376")
    with pytest.raises(ValueError, match="invalid host"):
        Client.for_host("http://example")
