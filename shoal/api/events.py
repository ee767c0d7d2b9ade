"""`GET /events` on a manager: the swarm's events as Docker streams them, one JSON object per line.

`since` and `until` are Unix seconds with an optional fraction (what the docker CLI sends) or RFC 3339 times;
`filters` is Docker's JSON. With neither time the stream starts now; with `since` it first replays the kept
events from then on; with `until` in the past it replays and ends, in the future it ends then. When the node
runs its tasks on a Docker Engine, the engine's own events (containers, images, …; scope "local") join the
stream as they would on a Docker manager, unless the filters leave them out. `filters={"type":["task"]}` adds
shoal's task events (`shoal.manager.events`), live only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from shoal.api.proxy import EngineProxy
from shoal.errors import InvalidArgument, ShoalError
from shoal.manager.controlapi.filters import Filters
from shoal.manager.events import EVENT_TYPES, TASK_TYPE, EventJournal, Subscription, parse_event_filters
from shoal.timefmt import SECOND, parse_timestamp_ns
from shoal.timeouts import within

log = logging.getLogger(__name__)

IDLE_CHECK = 1.0  # seconds between checks that a quiet stream's client is still there
WRITE_TIMEOUT = 30.0  # a client that takes no bytes for this long is dropped
SWARM_TYPES = frozenset({*EVENT_TYPES.values(), TASK_TYPE})


def query_time(request: web.Request, name: str) -> int | None:
    """`since` / `until` in Unix nanoseconds; None when not given."""
    value = request.query.get(name, "")
    if not value:
        return None
    try:
        return parse_timestamp_ns(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid value for '{name}': {exc.message}") from None


def wants_local_events(filters: Filters) -> bool:
    """Whether the filters let any of an engine's own events through (scope local, a type swarm does not make)."""
    scopes, types = filters.get("scope"), filters.get("type")
    if scopes and "local" not in scopes:
        return False
    return not types or any(t not in SWARM_TYPES for t in types)


async def stream_events(request: web.Request, journal: EventJournal, engine: EngineProxy | None,
                        now: Callable[[], float], api_version: str) -> web.StreamResponse:
    since, until = query_time(request, "since"), query_time(request, "until")
    if since is not None and until is not None and until < since:
        raise InvalidArgument(f"`since` time ({request.query['since']}) cannot be after `until` time "
                              f"({request.query['until']})")
    filters = parse_event_filters(request.query.get("filters"))
    if engine is not None and not wants_local_events(filters):
        engine = None
    buffered, subscription = journal.subscribe(filters, since, until)
    only_past = until is not None and until < int(now() * SECOND)
    if only_past:
        journal.unsubscribe(subscription)  # the replay is all: nothing that happens from now on is wanted
    follower: asyncio.Task[None] | None = None
    try:
        response = web.StreamResponse(status=200)
        # API 1.52 names it application/jsonl; for 1.47 and below Docker says application/json.
        response.content_type = "application/json"
        response.headers["Api-Version"] = api_version
        await response.prepare(request)
        if engine is not None:
            follower = asyncio.create_task(_follow_engine(engine, request, subscription))
        try:
            if buffered:
                await within(response.write(b"".join(event.line for event in buffered)), WRITE_TIMEOUT)
            complete = await _stream_live(request, response, subscription, None if only_past else until,
                                          only_past, now, follower)
            if complete:
                await within(response.write_eof(), WRITE_TIMEOUT)
                return response
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return response  # the client went away
        except TimeoutError:
            pass
        # A client that takes no bytes, or fell behind: cut its connection, so it sees the stream broke (and
        # nothing waits on its full buffers).
        log.warning("events: the client at %s fell behind or stopped reading; its stream is cut", request.remote)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        journal.unsubscribe(subscription)
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower


async def _stream_live(request: web.Request, response: web.StreamResponse, subscription: Subscription,
                       until: int | None, only_past: bool, now: Callable[[], float],
                       follower: asyncio.Task[None] | None) -> bool:
    """Write what arrives until `until` or the client leaves (True: the stream is complete), or it falls
    too far behind (False). With `only_past`, until the engine's part of the replay is done too."""
    while True:
        if only_past and (follower is None or follower.done()):
            lines = await subscription.next_lines(0)
            if lines:
                await within(response.write(b"".join(lines)), WRITE_TIMEOUT)
            return not subscription.dropped
        wait = IDLE_CHECK
        if until is not None:
            wait = min(wait, max(0.0, until / SECOND - now()))
        lines = await subscription.next_lines(wait)
        if subscription.dropped:
            return False
        if lines:
            await within(response.write(b"".join(lines)), WRITE_TIMEOUT)
        if until is not None and now() * SECOND >= until:
            return True
        if request.transport is None or request.transport.is_closing():
            return True


async def _follow_engine(engine: EngineProxy, request: web.Request, subscription: Subscription) -> None:
    """The node's engine's own events, into the client's queue; the same query, so the engine filters."""
    path = request.rel_url.raw_path
    if request.rel_url.raw_query_string:
        path += "?" + request.rel_url.raw_query_string
    try:
        async for line in engine.lines(path):
            if line.strip():
                subscription.offer_line(line if line.endswith(b"\n") else line + b"\n")
    except ShoalError as exc:
        log.warning("events: the node's engine events are left out: %s", exc.message)
    finally:
        subscription.wake()


__all__ = ["query_time", "stream_events", "wants_local_events"]
