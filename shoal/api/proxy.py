"""Requests outside swarm mode — containers, images, networks, volumes, … — answered by the node's own
Docker Engine, so one `DOCKER_HOST` serves both the swarm and the local engine as Docker's daemon does.

The request and the answer are streamed both ways (image pulls, `logs -f` and `events` stay live). The API
version in the path is lowered to the engine's own maximum when the client negotiated a higher one with
shoal. Without an engine the answer is a 501 JSON error naming the request; swarm-mode paths shoal does not
serve (secrets, configs, …) are never sent to the engine, whose own swarm state is unrelated to shoal's.
Attach and exec upgrade the connection to a raw byte stream (`Upgrade: tcp`); those are spliced through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shoal.errors import NotFound, NotImplementedByShoal

DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
ENGINE_SOCKET_ENV = "SHOAL_DOCKER_SOCKET"

# Paths of Docker's swarm mode; whatever of them shoal does not route is shoal's to refuse, not the engine's.
SWARM_PATH_PREFIXES = ("/swarm", "/nodes", "/services", "/tasks", "/secrets", "/configs")

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP libraries set themselves.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})

_VERSIONED = re.compile(r"^/v(\d+(?:\.\d+)*)(/.*)$")


def engine_socket_path() -> str:
    """The node's Docker Engine socket: $SHOAL_DOCKER_SOCKET, else Docker's default path."""
    return os.environ.get(ENGINE_SOCKET_ENV) or DEFAULT_ENGINE_SOCKET


def split_version(path: str) -> tuple[str | None, str]:
    """`/v1.47/containers/json` -> ("1.47", "/containers/json"); an unversioned path keeps None."""
    match = _VERSIONED.match(path)
    return (match.group(1), match.group(2)) if match else (None, path)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def engine_path(path: str, engine_version: str | None) -> str:
    """The path to send the engine: a version above the engine's maximum is lowered to it."""
    version, rest = split_version(path)
    if version is None or engine_version is None:
        return path
    if version_tuple(version) > version_tuple(engine_version):
        version = engine_version
    return f"/v{version}{rest}"


def is_swarm_path(path: str) -> bool:
    _, rest = split_version(path)
    return any(rest == prefix or rest.startswith(prefix + "/") for prefix in SWARM_PATH_PREFIXES)


def forwarded_headers(headers: Any) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key.lower() not in _NOT_FORWARDED}


def no_engine_error(method: str, path: str) -> NotImplementedByShoal:
    _, rest = split_version(path)
    return NotImplementedByShoal(f"{method} {rest} is not served by shoal: no Docker Engine on this node")


class EngineProxy:
    """Forwards requests to the Docker Engine on a unix socket, if one answers there."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path or engine_socket_path()
        self._session: aiohttp.ClientSession | None = None
        self._engine_version: str | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=None, connect=5),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def present(self) -> bool:
        return Path(self.socket_path).is_socket()

    async def engine_version(self) -> str | None:
        """The engine's maximum API version (its `Api-Version` ping header), asked once; None if none answers."""
        if self._engine_version is None and self.present():
            try:
                async with self._client().get("http://docker/_ping") as response:
                    self._engine_version = response.headers.get("Api-Version")
            except aiohttp.ClientError:
                return None
        return self._engine_version

    async def get_json(self, path: str) -> tuple[int, Any]:
        """A small JSON request of shoal's own to the engine (unversioned path); raises if none answers."""
        if not self.present():
            raise no_engine_error("GET", path)
        try:
            async with self._client().get(f"http://docker{path}") as response:
                return response.status, await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise NotImplementedByShoal(f"GET {path} is not served by shoal: the Docker Engine at "
                                        f"{self.socket_path} did not answer ({exc})") from None

    async def lines(self, path: str) -> AsyncIterator[bytes]:
        """A streamed answer of the engine, line by line (its `/events`), until it ends; `path` as the client
        sent it, version lowered to the engine's. Raises NotImplementedByShoal when the engine does not answer."""
        url = "http://docker" + engine_path(path, await self.engine_version())
        try:
            async with self._client().get(URL(url, encoded=True)) as response:
                if response.status >= 400:
                    reason = (await response.text()).strip()
                    raise NotImplementedByShoal(
                        f"the Docker Engine at {self.socket_path} refused {split_version(path)[1]}: {reason}")
                async for line in response.content:
                    yield line
        except aiohttp.ClientError as exc:
            raise NotImplementedByShoal(f"the Docker Engine at {self.socket_path} did not answer ({exc})") from None

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if is_swarm_path(request.path):
            _, rest = split_version(request.path)
            raise NotImplementedByShoal(f"{request.method} {rest} is not implemented by shoal")
        if not self.present():
            raise no_engine_error(request.method, request.path)
        # The path and query go on as the client encoded them.
        url = engine_path(request.rel_url.raw_path, await self.engine_version())
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        if "upgrade" in request.headers.get("Connection", "").lower() and request.headers.get("Upgrade"):
            return await self._splice(request, url)
        url = "http://docker" + url
        headers = forwarded_headers(request.headers)
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._client().request(request.method, URL(url, encoded=True), headers=headers, data=body,
                                                    allow_redirects=False)
        except aiohttp.ClientError as exc:
            self._engine_version = None
            raise NotImplementedByShoal(
                f"{request.method} {split_version(request.path)[1]} is not served by shoal: the Docker Engine at "
                f"{self.socket_path} did not answer ({exc})") from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=forwarded_headers(upstream.headers))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _splice(self, request: web.Request, target: str) -> web.StreamResponse:
        """attach/exec: send the request on a fresh engine connection and, once both sides switched
        protocols, copy bytes both ways until the engine closes."""
        body = await request.read()
        try:
            engine_reader, engine_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            raise no_engine_error(request.method, request.path) from exc
        try:
            head = [f"{request.method} {target} HTTP/1.1", "Host: docker", "Connection: Upgrade",
                    f"Upgrade: {request.headers['Upgrade']}", f"Content-Length: {len(body)}"]
            head += [f"{key}: {value}" for key, value in forwarded_headers(request.headers).items()]
            engine_writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            status, reason, headers = await _read_response_head(engine_reader)
            if status != 101:
                # A refusal (404 no such container, 409 not running, …) carries a short JSON body.
                length = int(headers.get("Content-Length") or 0)
                answer = await engine_reader.readexactly(length) if length else b""
                return web.Response(status=status, reason=reason, body=answer, headers=forwarded_headers(headers))
            switched = forwarded_headers(headers)
            switched.update({"Connection": "Upgrade", "Upgrade": headers.get("Upgrade", "tcp")})
            response = _SwitchedResponse(reason, switched)
            await response.prepare(request)
            to_engine = _CopyTo(engine_writer)
            protocol = request.protocol
            protocol.set_parser(to_engine)  # type: ignore[arg-type]  # hands over what already arrived
            protocol.keep_alive(False)
            if request.transport is not None:
                request.transport.set_protocol(_UpgradedConnection(protocol, to_engine))
            while chunk := await engine_reader.read(65536):
                await response.write(chunk)
            await response.write_eof()
            protocol.force_close()
            return response
        finally:
            with contextlib.suppress(OSError):
                engine_writer.close()


class _SwitchedResponse(web.StreamResponse):
    """A `101 Switching Protocols` answer whose body is the raw stream: no length, no chunking."""

    def __init__(self, reason: str, headers: dict[str, str]) -> None:
        super().__init__(status=101, reason=reason, headers=headers)
        self._length_check = False


class _UpgradedConnection(asyncio.Protocol):
    """Reads the client's side of an upgraded connection in place of aiohttp's handler.

    The CLI half-closes its side once stdin is done (always, without -i) and then reads the output;
    aiohttp would close the whole connection on that EOF, so the EOF goes on to the engine instead.
    Writing (the engine's output) still goes through aiohttp, whose flow control stays wired here.
    """

    def __init__(self, handler: asyncio.BaseProtocol, to_engine: _CopyTo) -> None:
        self.handler = handler
        self.to_engine = to_engine

    def data_received(self, data: bytes) -> None:
        self.to_engine.feed_data(data)

    def eof_received(self) -> bool:
        self.to_engine.feed_eof()
        return True  # keep the connection open for the output

    def connection_lost(self, exc: Exception | None) -> None:
        self.to_engine.close()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class _CopyTo:
    """Takes the client's bytes after the upgrade (aiohttp's payload-parser hook) to the engine."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self.writer.is_closing():
            self.writer.write(data)
        return False, b""

    def feed_eof(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, str, CIMultiDict[str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers.add(key.strip(), value.strip())
    return int(status), reason[0] if reason else "", headers


async def distribution_inspect(proxy: EngineProxy, name: str) -> dict[str, Any]:
    """`GET /distribution/{name}/json` answered from the local engine's image: its registry digest and platform.

    swarm asks a registry; shoal has only the node's engine. An image the engine pulled carries the digest it
    was pulled by (RepoDigests) and that is what the CLI pins. A local-only image (built or imported) has no
    registry digest: that is a 404, and the CLI warns, as it does with Docker when no registry answers.
    """
    status, image = await proxy.get_json(f"/images/{quote(name, safe='/:@')}/json")
    if status == 404 or not isinstance(image, dict):
        raise NotFound(f"No such image: {name} (shoal looks images up on this node's Docker Engine, not a registry)")
    if status >= 400:
        message = image.get("message", "") if isinstance(image, dict) else ""
        raise NotFound(f"image {name} could not be inspected on this node's Docker Engine: {message}")
    digest = repo_digest(name, image.get("RepoDigests") or [])
    if digest is None:
        raise NotFound(f"image {name} has no registry digest on this node's Docker Engine (built or imported "
                       "locally)")
    platform = {"architecture": image.get("Architecture", ""), "os": image.get("Os", "")}
    if image.get("Variant"):
        platform["variant"] = image["Variant"]
    return {
        "Descriptor": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest,
                       "size": 0},
        "Platforms": [platform],
    }


def repository_of(reference: str) -> str:
    """`docker.io/library/busybox:1.36` -> `busybox`: the familiar repository name, without tag or digest."""
    name = reference.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/"):]
    return name


def repo_digest(reference: str, repo_digests: list[str]) -> str | None:
    """The digest among an image's `RepoDigests` (`busybox@sha256:…`) that belongs to `reference`'s repository."""
    wanted = repository_of(reference)
    for item in repo_digests:
        repository, _, digest = item.partition("@")
        if digest and repository_of(repository) == wanted:
            return digest
    return None


__all__ = [
    "EngineProxy", "distribution_inspect", "engine_path", "engine_socket_path", "is_swarm_path", "repo_digest",
    "repository_of", "split_version",
]
