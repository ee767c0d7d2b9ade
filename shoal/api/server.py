"""The HTTP API, in the Docker Engine API's routes and shapes, so the shoal CLI, the docker CLI and docker-py
can all drive a swarm. Every route is served both unversioned and under `/v1.NN/`.

The same application serves the local unix socket and, on managers, the TLS swarm port; there it also carries
the join endpoint and the agent sessions, and API routes require a manager's client certificate.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from shoal import __version__, codec
from shoal.api.events import stream_events
from shoal.api.info import engine_info, merged_info
from shoal.api.proxy import EngineProxy, distribution_inspect
from shoal.certs import client_ssl_context, identity_from_peercert
from shoal.errors import InvalidArgument, NotAManager, NotFound, ShoalError, TooLarge
from shoal.manager.controlapi import INT64_MAX
from shoal.manager.join import handle_join
from shoal.protocol import CA_PATH, DEBUG_PATH, JOIN_PATH, SESSION_PATH
from shoal.spec import go_architecture
from shoal.timefmt import to_rfc3339
from shoal.types import CONFIGS, SECRETS, Doc
from shoal.ui import assets as ui_assets

if TYPE_CHECKING:
    from shoal.daemon import Daemon
    from shoal.manager.control import ControlAPI

log = logging.getLogger(__name__)

MAX_API_VERSION = "1.47"
# A JSON body (a spec, a secret's data) is never larger: what a client sends beyond it is not read.
MAX_JSON_BODY = 1024 * 1024
MIN_API_VERSION = "1.24"
DAEMON = web.AppKey("daemon", object)
ENGINE_PROXY = web.AppKey("engine_proxy", EngineProxy)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def query_bool(request: web.Request, name: str) -> bool:
    """moby's rule: "", 0, no, false, none (any case) are false; anything else is true."""
    value = request.query.get(name)
    if value is None:
        return False
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def query_int(request: web.Request, name: str, default: int = 0) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value!r} is not a number") from None


def query_version(request: web.Request, what: str) -> int:
    """The `version` an update must carry (the Version.Index the client read), as Docker requires it."""
    value = request.query.get("version", "")
    if not value.isdigit() or int(value) > INT64_MAX:
        raise InvalidArgument(f"invalid {what} version {value!r}: give the Version.Index of the {what} as read "
                              "(e.g. ?version=42)")
    return int(value)


async def json_body(request: web.Request) -> Any:
    if (request.content_length or 0) > MAX_JSON_BODY:
        raise _too_large(request.content_length or 0)
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise _too_large(len(raw))
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidArgument("malformed JSON body: nested too deeply") from None
    except ValueError as exc:  # e.g. a number of more digits than Python converts
        raise InvalidArgument(f"malformed JSON body: {exc}") from None


def _too_large(size: int) -> TooLarge:
    return TooLarge(f"request body too large: {size} bytes or more, at most {MAX_JSON_BODY} are accepted")


def reply(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": the docker CLI reads an error's message only for that content type.
    body = codec.dumps(data) + b"\n"
    return web.Response(body=body, status=status, content_type="application/json")


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]  # type: ignore[return-value]


# ---- middleware ---------------------------------------------------------------------------------------

_VERSIONED = re.compile(r"^/v(\d+(?:\.\d+)*)(/.*)$")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ShoalError as exc:
        response = reply({"message": exc.message}, exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            text = exc.text or exc.reason
            if exc.status == 404:
                text = f"page not found: shoal does not serve {request.method} {request.path}"
            response = reply({"message": text}, exc.status)
        else:
            raise
    except ConnectionResetError:
        # The client went away mid-answer (an agent that gave up on its handshake): nobody to answer, and
        # nothing worth a traceback in the log.
        log.debug("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=499)
    except Exception as exc:
        log.exception("internal error in %s %s", request.method, request.path)
        response = reply({"message": f"internal error: {type(exc).__name__}: {exc}"}, 500)
    if not response.prepared:
        response.headers["Api-Version"] = MAX_API_VERSION
        response.headers["Server"] = f"shoal/{__version__} (linux)"
        response.headers["Ostype"] = "linux"
        response.headers["Docker-Experimental"] = "false"
    return response


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = _VERSIONED.match(request.path)
    if match and _version_tuple(match.group(1)) > _version_tuple(MAX_API_VERSION):
        raise InvalidArgument(f"client version {match.group(1)} is too new. Maximum supported API version is "
                              f"{MAX_API_VERSION}")
    if match and _version_tuple(match.group(1)) < _version_tuple(MIN_API_VERSION):
        raise InvalidArgument(f"client version {match.group(1)} is too old. Minimum supported API version is "
                              f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    return await handler(request)


def remote_auth_middleware() -> Any:
    """On the swarm port, API routes need a manager certificate; join and session do their own checks."""
    open_paths = {CA_PATH, JOIN_PATH, SESSION_PATH, "/_ping"}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in open_paths:
            peercert = request.transport.get_extra_info("peercert") if request.transport else None
            if not peercert:
                raise web.HTTPForbidden(text="a client certificate from this swarm's CA is required")
            if identity_from_peercert(peercert).role != "manager":
                raise web.HTTPForbidden(text="only manager certificates may use the API remotely")
        return await handler(request)

    return middleware


# ---- system -------------------------------------------------------------------------------------------

def swarm_header(daemon: Daemon) -> str:
    if daemon.record is None:
        return "inactive"
    return "active/manager" if daemon.control is not None else "active/worker"


async def ping(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    response = web.Response(text="OK" if request.method == "GET" else "", content_type="text/plain")
    response.headers["Swarm"] = swarm_header(daemon)
    response.headers["Builder-Version"] = "1"
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["Pragma"] = "no-cache"
    return response


async def version(request: web.Request) -> web.StreamResponse:
    return reply({
        "Platform": {"Name": "shoal"},
        "Components": [{"Name": "shoal", "Version": __version__, "Details": {}}],
        "Version": __version__, "ApiVersion": MAX_API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "", "GoVersion": "", "Os": "linux", "Arch": go_arch(),
        "KernelVersion": platform.release(), "BuildTime": "",
    })


async def info(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    own = {
        "ID": daemon.record.node_id if daemon.record else "", "Name": daemon.hostname,
        "ServerVersion": __version__, "OSType": "linux", "Architecture": platform.machine(),
        "OperatingSystem": "shoal", "KernelVersion": platform.release(), "NCPU": _ncpu(), "MemTotal": _mem_total(),
        "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0, "Images": 0,
        "Driver": "", "DockerRootDir": str(daemon.state_dir), "Swarm": daemon.swarm_info(),
        "Labels": [], "ExperimentalBuild": False, "Debug": False, "LiveRestoreEnabled": True,
    }
    if not _has_engine(daemon):
        return reply(merged_info(own, None))
    return reply(merged_info(own, *await engine_info(request.app[ENGINE_PROXY])))


def go_arch() -> str:
    return go_architecture(platform.machine())


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _ncpu() -> int:
    import os

    return os.cpu_count() or 1


# ---- swarm --------------------------------------------------------------------------------------------

async def debug(request: web.Request) -> web.StreamResponse:
    """shoal's own figures (not a Docker route): loop lag, leadership, store writes, task record."""
    return reply(daemon_of(request).debug_info())


async def swarm_inspect(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).require_control().get_swarm())


async def swarm_init(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the init request must be a JSON object")
    node_id = await daemon_of(request).init_swarm(body)
    return reply(node_id)


async def swarm_join(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the join request must be a JSON object")
    await daemon_of(request).join_swarm(body)
    return web.Response(status=200)


async def swarm_leave(request: web.Request) -> web.StreamResponse:
    await daemon_of(request).leave_swarm(query_bool(request, "force"))
    return web.Response(status=200)


async def swarm_update(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    await control.update_swarm(query_version(request, "swarm"), await json_body(request),
                               query_bool(request, "rotateWorkerToken"), query_bool(request, "rotateManagerToken"),
                               query_bool(request, "rotateManagerUnlockKey"))
    return web.Response(status=200)


async def swarm_unlockkey(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    return reply({"UnlockKey": await control.unlock_key()})


async def swarm_unlock(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    key = body.get("UnlockKey") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key:
        raise InvalidArgument('give the unlock key: {"UnlockKey": "SWMKEY-1-..."}')
    await daemon_of(request).unlock_swarm(key)
    return web.Response(status=200)


# ---- nodes --------------------------------------------------------------------------------------------

async def node_list(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).require_control().list_nodes(request.query.get("filters")))


async def node_inspect(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).require_control().get_node(request.match_info["id"]))


async def node_update(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    await control.update_node(request.match_info["id"], query_version(request, "node"), await json_body(request))
    return web.Response(status=200)


async def node_delete(request: web.Request) -> web.StreamResponse:
    await daemon_of(request).require_control().remove_node(request.match_info["id"], query_bool(request, "force"))
    return web.Response(status=200)


# ---- services -----------------------------------------------------------------------------------------

async def service_list(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    return reply(control.list_services(request.query.get("filters"), query_bool(request, "status")))


async def service_create(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    created = await control.create_service(await json_body(request), dry_run=query_bool(request, "dryRun"))
    if isinstance(created, dict):  # shoal's own `?dryRun=1`: the plan, nothing created
        return reply({"DryRun": created})
    return reply({"ID": created, "Warnings": None}, 201)


async def service_inspect(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    return reply(control.get_service(request.match_info["id"], query_bool(request, "insertDefaults")))


async def service_update(request: web.Request) -> web.StreamResponse:
    control = daemon_of(request).require_control()
    rollback = request.query.get("rollback") == "previous"
    plan = await control.update_service(request.match_info["id"], query_version(request, "service"),
                                        await json_body(request), rollback, dry_run=query_bool(request, "dryRun"))
    if plan is not None:  # shoal's own `?dryRun=1`: the plan, nothing changed
        return reply({"DryRun": plan, "Warnings": None})
    return reply({"Warnings": None})


async def service_rebalance(request: web.Request) -> web.StreamResponse:
    """shoal's own: move tasks back to an even spread (`shoal service rebalance`)."""
    control = daemon_of(request).require_control()
    return reply(await control.rebalance_service(request.match_info["id"], query_version(request, "service")))


def object_routes(kind: str) -> list[tuple[str, str, Handler]]:
    """`/secrets…` or `/configs…`: the same five routes over either kind."""
    noun = "secret" if kind == SECRETS else "config"

    async def listing(request: web.Request) -> web.StreamResponse:
        control = daemon_of(request).require_control()
        return reply(control.list_objects(kind, request.query.get("filters")))

    async def create(request: web.Request) -> web.StreamResponse:
        control = daemon_of(request).require_control()
        return reply({"ID": await control.create_object(kind, await json_body(request))}, 201)

    async def inspect(request: web.Request) -> web.StreamResponse:
        return reply(daemon_of(request).require_control().get_object(kind, request.match_info["id"]))

    async def update(request: web.Request) -> web.StreamResponse:
        control = daemon_of(request).require_control()
        await control.update_object(kind, request.match_info["id"], query_version(request, noun),
                                    await json_body(request))
        return web.Response(status=200)

    async def delete(request: web.Request) -> web.StreamResponse:
        await daemon_of(request).require_control().remove_object(kind, request.match_info["id"])
        return web.Response(status=204)

    base = f"/{kind}"
    return [("GET", base, listing), ("POST", f"{base}/create", create), ("GET", base + "/{id}", inspect),
            ("POST", base + "/{id}/update", update), ("DELETE", base + "/{id}", delete)]


async def service_delete(request: web.Request) -> web.StreamResponse:
    await daemon_of(request).require_control().remove_service(request.match_info["id"])
    return web.Response(status=200)


# ---- tasks --------------------------------------------------------------------------------------------

async def task_list(request: web.Request) -> web.StreamResponse:
    return reply(await daemon_of(request).require_control().list_tasks(request.query.get("filters")))


async def task_inspect(request: web.Request) -> web.StreamResponse:
    return reply(daemon_of(request).require_control().get_task(request.match_info["id"]))


# ---- logs ---------------------------------------------------------------------------------------------

def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: [stream, 0, 0, 0, big-endian length] + payload."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload


async def logs(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    control = daemon.require_control()
    manager = daemon.manager
    assert manager is not None
    tasks = control.tasks_for_logs(request.match_info["id"])
    want_stdout = query_bool(request, "stdout")
    want_stderr = query_bool(request, "stderr")
    if not (want_stdout or want_stderr):
        raise InvalidArgument("you must choose at least one stream: stdout=1 and/or stderr=1")
    details = query_bool(request, "details")
    timestamps = query_bool(request, "timestamps")
    follow = query_bool(request, "follow")
    tail_text = request.query.get("tail", "all")
    tail = -1 if tail_text in ("", "all") else query_int(request, "tail")
    by_id = {t["ID"]: t for t in tasks}
    response = web.StreamResponse(status=200)
    response.content_type = "application/vnd.docker.multiplexed-stream"
    response.headers["Api-Version"] = MAX_API_VERSION
    await response.prepare(request)
    try:
        if manager.dispatcher is None or not manager.is_leader:
            # Agents hold their sessions with the leader: ask it (over mutual TLS, as a manager).
            await _logs_from_leader(daemon, request, response)
            return response
        await _write_log_frames(response, manager.dispatcher.logs(tasks, tail, follow), by_id, want_stdout,
                                want_stderr, timestamps, details)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client went away (e.g. Ctrl-C on `service logs -f`): nothing to report
    return response


async def _logs_from_leader(daemon: Daemon, request: web.Request, response: web.StreamResponse) -> None:
    manager = daemon.manager
    leader = manager.leader_addr() if manager is not None else None
    if not leader:
        return
    context = client_ssl_context(daemon.tls.ca, daemon.tls.cert, daemon.tls.key)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"https://{leader}{request.rel_url}", ssl=context) as upstream:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)


async def _write_log_frames(response: web.StreamResponse, items: AsyncIterator[Doc], by_id: dict[str, Doc],
                            want_stdout: bool, want_stderr: bool, timestamps: bool, details: bool) -> None:
    async for item in items:
        stream = int(item["stream"])
        if (stream == 1 and not want_stdout) or (stream == 2 and not want_stderr):
            continue
        task = by_id.get(item["task"], {})
        line = item["line"].rstrip("\n")
        prefix = ""
        if timestamps:
            prefix += to_rfc3339(float(item["ts"])) + " "
        if details:
            attrs = {
                "com.docker.swarm.node.id": task.get("NodeID", ""),
                "com.docker.swarm.service.id": task.get("ServiceID", ""),
                "com.docker.swarm.task.id": task.get("ID", ""),
            }
            prefix += ",".join(f"{quote(k)}={quote(v)}" for k, v in sorted(attrs.items())) + " "
        await response.write(frame(stream, (prefix + line + "\n").encode()))


# ---- events -------------------------------------------------------------------------------------------

async def events(request: web.Request) -> web.StreamResponse:
    """A manager streams the swarm's events (and its engine's, with the docker executor). A node that is no
    manager shows its engine's own events, as a Docker worker does; without an engine it says to ask a manager."""
    daemon = daemon_of(request)
    proxy = request.app[ENGINE_PROXY]
    # Outside a swarm the socket fronts the engine; in one, a process-executor node's host engine runs nothing
    # of the swarm's (maybe another swarm's containers): its events are not this node's.
    if daemon.control is None and proxy.present() and (daemon.record is None or _has_engine(daemon)):
        return await engine(request)
    journal = daemon.event_journal()
    local = proxy if _has_engine(daemon) and proxy.present() else None
    return await stream_events(request, journal, local, daemon.clock.now, MAX_API_VERSION)


# ---- the node's Docker Engine: image digests, and everything outside swarm mode ---------------------------

async def distribution(request: web.Request) -> web.StreamResponse:
    return reply(await distribution_inspect(request.app[ENGINE_PROXY], request.match_info["name"]))


async def engine(request: web.Request) -> web.StreamResponse:
    return await request.app[ENGINE_PROXY].forward(request)


# ---- networks: the swarm's overlays here, a node's local networks from its engine -------------------------

def _has_engine(daemon: Daemon) -> bool:
    return daemon.config.executor == "docker"


def swarm_or_engine(handler: Callable[[web.Request, ControlAPI], Awaitable[web.StreamResponse]]) -> Handler:
    """A network route: a manager answers for the swarm's networks; a worker with a Docker Engine passes the
    request to it (its local networks)."""
    async def route(request: web.Request) -> web.StreamResponse:
        daemon = daemon_of(request)
        if daemon.control is None and _has_engine(daemon):
            return await engine(request)
        return await handler(request, daemon.require_control())
    return route


@swarm_or_engine
async def networks_list(request: web.Request, control: ControlAPI) -> web.StreamResponse:
    return reply(control.list_networks(request.query.get("filters")))


@swarm_or_engine
async def network_create(request: web.Request, control: ControlAPI) -> web.StreamResponse:
    return reply({"Id": await control.create_network(await json_body(request)), "Warning": ""}, 201)


@swarm_or_engine
async def network_inspect(request: web.Request, control: ControlAPI) -> web.StreamResponse:
    try:
        return reply(control.get_network(request.match_info["id"]))
    except NotFound:
        if _has_engine(daemon_of(request)) and request.query.get("scope") != "swarm":
            return await engine(request)  # bridge, host, none, …
        raise


@swarm_or_engine
async def network_remove(request: web.Request, control: ControlAPI) -> web.StreamResponse:
    try:
        await control.remove_network(request.match_info["id"])
    except NotFound:
        if _has_engine(daemon_of(request)):
            return await engine(request)
        raise
    return web.Response(status=204)


async def _close_engine_proxy(app: web.Application) -> None:
    await app[ENGINE_PROXY].close()


# ---- the swarm port: join, CA and agent sessions -------------------------------------------------------

async def ca_cert(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    return web.Response(body=daemon.tls.ca.read_bytes(), content_type="application/x-pem-file")


async def join(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    manager = daemon.manager
    if manager is None or daemon.record is None:
        raise NotAManager()
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the join request must be a JSON object")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    answer = await handle_join(manager, daemon.clock, body, peer[0] if peer else "", daemon.record.port)
    return reply(answer)


async def session(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    manager = daemon.manager
    if manager is None or manager.dispatcher is None:
        raise NotAManager()
    return await manager.dispatcher.handle_session(request, manager.leader_addr())


# ---- the application ----------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_ping", ping), ("HEAD", "/_ping", ping),
    ("GET", "/version", version), ("GET", "/info", info), ("GET", DEBUG_PATH, debug), ("GET", "/events", events),
    ("GET", "/swarm", swarm_inspect), ("POST", "/swarm/init", swarm_init), ("POST", "/swarm/join", swarm_join),
    ("POST", "/swarm/leave", swarm_leave), ("POST", "/swarm/update", swarm_update),
    ("GET", "/swarm/unlockkey", swarm_unlockkey), ("POST", "/swarm/unlock", swarm_unlock),
    ("GET", "/nodes", node_list), ("GET", "/nodes/{id}", node_inspect), ("DELETE", "/nodes/{id}", node_delete),
    ("POST", "/nodes/{id}/update", node_update),
    ("GET", "/services", service_list), ("POST", "/services/create", service_create),
    ("GET", "/services/{id}", service_inspect), ("DELETE", "/services/{id}", service_delete),
    ("POST", "/services/{id}/update", service_update), ("POST", "/services/{id}/rebalance", service_rebalance), ("GET", "/services/{id}/logs", logs),
    ("GET", "/tasks", task_list), ("GET", "/tasks/{id}", task_inspect), ("GET", "/tasks/{id}/logs", logs),
    ("GET", "/distribution/{name:.+}/json", distribution),
    *object_routes(SECRETS), *object_routes(CONFIGS),
    ("GET", "/networks", networks_list), ("POST", "/networks/create", network_create),
    ("GET", "/networks/{id}", network_inspect), ("DELETE", "/networks/{id}", network_remove),
]


def make_app(daemon: Daemon, remote: bool) -> web.Application:
    middlewares = [errors_middleware, version_middleware]
    if remote:
        middlewares.append(remote_auth_middleware())
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    app[DAEMON] = daemon
    app[ENGINE_PROXY] = EngineProxy()
    app.on_cleanup.append(_close_engine_proxy)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/v{api_version:[0-9.]+}" + path, handler)
    # The dashboard's page (shoal's own, unversioned): on the socket for local root, on the swarm port for
    # manager certificates, as every API route.
    app.router.add_get("/ui", ui_assets.serve)
    app.router.add_get("/ui/{name:[^/]*}", ui_assets.serve)
    if remote:
        app.router.add_get(CA_PATH, ca_cert)
        app.router.add_post(JOIN_PATH, join)
        app.router.add_get(SESSION_PATH, session)
    else:
        # Last, so it only sees what no route above serves: the local engine's API (or a clear 501).
        app.router.add_route("*", "/{path:.*}", engine)
    return app


__all__ = ["make_app", "frame"]
