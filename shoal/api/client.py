"""A small synchronous client of the Docker Engine API subset shoal's daemon serves.

The CLI speaks exactly the routes and JSON shapes the docker CLI uses, over a unix socket or over TCP with
mutual TLS. Errors come back as `ApiError` (the daemon answered with a non-2xx status) or
`DaemonUnreachable` (nothing answered), so the CLI can print one line for each.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STDIN, STDOUT, STDERR = 0, 1, 2
STDCOPY_HEADER = struct.Struct(">BxxxI")
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
RAW_STREAM = "application/vnd.docker.raw-stream"

# Connecting must fail fast; a daemon may take a while to answer a big request.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)


class ApiError(Exception):
    """The daemon answered with a non-2xx status; `message` is its `{"message": ...}` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    def __str__(self) -> str:
        return f"Error response from daemon: {self.message}"


class DaemonUnreachable(Exception):
    """No daemon answered at the address."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"Cannot connect to the shoal daemon at {host}. Is the shoal daemon running? "
            'Start it with "shoal daemon", or run "shoal playground up" for a local cluster.'
        )


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files for mutual TLS with a remote manager (the cluster CA, this client's cert and key)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path) -> TlsFiles:
        return cls(ca=directory / "ca.pem", cert=directory / "node.pem", key=directory / "node-key.pem")

    def ssl_context(self) -> ssl.SSLContext:
        for path in (self.ca, self.cert, self.key):
            if not Path(path).is_file():
                raise ValueError(f"TLS file not found: {path}")
        context = ssl.create_default_context(cafile=str(self.ca))
        # Node certificates are issued by the cluster's private CA for node IDs, not host names.
        context.check_hostname = False
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def filters_param(filters: Mapping[str, Iterable[str]]) -> str:
    """Docker's `filters` query value in the map form the Go CLI sends: {"name": {"web": true}}."""
    return json.dumps({key: {value: True for value in values} for key, values in filters.items()},
                      separators=(",", ":"))


def iter_stdcopy(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Decode Docker's multiplexed stream: frames of [stream byte, 0, 0, 0, uint32 BE length] + payload."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= STDCOPY_HEADER.size:
            stream_id, length = STDCOPY_HEADER.unpack_from(buffer)
            end = STDCOPY_HEADER.size + length
            if len(buffer) < end:
                break
            yield stream_id, buffer[STDCOPY_HEADER.size:end]
            buffer = buffer[end:]
    if buffer:
        raise ValueError(f"truncated log stream: {len(buffer)} bytes left over")


def encode_stdcopy(stream_id: int, payload: bytes) -> bytes:
    """One multiplexed frame (the inverse of `iter_stdcopy`)."""
    return STDCOPY_HEADER.pack(stream_id, len(payload)) + payload


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a daemon: its socket, or its https URL with this client's TLS context."""

    base_url: str
    socket: str | None = None
    verify: ssl.SSLContext | bool = True

    @classmethod
    def of(cls, host: str, tls: TlsFiles | None) -> Endpoint:
        if host.startswith("unix://"):
            return cls("http://shoal", socket=host[len("unix://"):])
        if host.startswith("tcp://"):
            if tls is None:
                raise ValueError(f"{host}: tcp connections need TLS certificates "
                                 "(--tlscacert/--tlscert/--tlskey or SHOAL_CERT_PATH)")
            return cls("https://" + host[len("tcp://"):], verify=tls.ssl_context())
        raise ValueError(f"invalid host {host!r}: use unix:///path/to/socket or tcp://host:port")

    def async_client(self, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
        """An asyncio client of the same daemon, over the same socket or with the same certificates (for
        `shoal dashboard`'s bridge)."""
        transport = httpx.AsyncHTTPTransport(uds=self.socket) if self.socket is not None else None
        return httpx.AsyncClient(base_url=self.base_url, transport=transport, verify=self.verify, timeout=timeout)


class Client:
    """The daemon's HTTP API. Paths are unversioned (`/services`); the daemon also accepts `/v1.NN/...`."""

    def __init__(self, base_url: str, *, host: str | None = None, transport: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | bool = True, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.host = host or base_url
        self._http = httpx.Client(base_url=base_url, transport=transport, verify=verify, timeout=timeout)

    @classmethod
    def for_host(cls, host: str, tls: TlsFiles | None = None) -> Client:
        """A client for `unix:///path` or `tcp://host:port` (the latter always with mutual TLS)."""
        endpoint = Endpoint.of(host, tls)
        if endpoint.socket is not None:
            return cls(endpoint.base_url, host=host, transport=httpx.HTTPTransport(uds=endpoint.socket))
        return cls(endpoint.base_url, host=host, verify=endpoint.verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests --------------------------------------------------------------------------------------

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                json: Any = None) -> Any:
        """Send one request and return the parsed JSON body (None for an empty body)."""
        try:
            response = self._http.request(method, path, params=_clean_params(params), json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(self.host) from exc
        except httpx.RemoteProtocolError as exc:
            raise DaemonUnreachable(self.host) from exc
        _raise_for_status(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def get(self, path: str, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("GET", path, params, json)

    def post(self, path: str, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("POST", path, params, json)

    def delete(self, path: str, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("DELETE", path, params, json)

    def ping(self) -> bool:
        """Whether a daemon answers `GET /_ping`."""
        try:
            response = self._http.get("/_ping", timeout=httpx.Timeout(3.0))
        except (httpx.HTTPError, OSError):
            return False
        return response.status_code == 200

    def stream(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[tuple[int, bytes]]:
        """Follow a log stream: (stream id, payload) per frame; a raw (TTY) stream yields (STDOUT, bytes)."""
        with self._streaming(path, params, _UNREACHABLE) as response:
            if response.headers.get("content-type", "").startswith(RAW_STREAM):
                for chunk in response.iter_raw():
                    yield STDOUT, chunk
                return
            yield from iter_stdcopy(response.iter_raw())

    def stream_lines(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[str]:
        """Follow a stream of lines (`/events`: one JSON object each) until the daemon ends it; a daemon that goes
        away mid-stream is unreachable too."""
        with self._streaming(path, params, (*_UNREACHABLE, httpx.RemoteProtocolError, httpx.ReadError)) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield line

    @contextlib.contextmanager
    def _streaming(self, path: str, params: Mapping[str, Any] | None,
                   unreachable: tuple[type[BaseException], ...]) -> Iterator[httpx.Response]:
        """A GET whose answer is read as it comes (no read timeout): an error status raised as ApiError, the
        `unreachable` errors as DaemonUnreachable."""
        try:
            with self._http.stream("GET", path, params=_clean_params(params),
                                   timeout=httpx.Timeout(None, connect=5.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response)
                yield response
        except unreachable as exc:
            raise DaemonUnreachable(self.host) from exc


# What says the daemon cannot be reached (its socket missing, nothing listening, no answer to connect).
_UNREACHABLE: tuple[type[BaseException], ...] = (httpx.ConnectError, httpx.ConnectTimeout, FileNotFoundError,
                                                 ConnectionRefusedError)


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    clean: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            clean[key] = "true" if value else "false"
        else:
            clean[key] = str(value)
    return clean


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 300:
        return
    message = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    except ValueError:
        text = response.text.strip()
        # A plain one-line reason is useful; an HTML error page is not.
        message = text if text and "\n" not in text and not text.startswith("<") else ""
    if not message:
        message = f"{response.status_code} {response.reason_phrase}".strip()
    raise ApiError(response.status_code, message)
