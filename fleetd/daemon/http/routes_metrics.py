"""``GET /metrics`` (role read) in Prometheus' text format, and the middleware that
counts every API request by route, method and status, with its latency (fleetd's
metrics: fleetd/daemon/metrics.py).

The middleware is the outermost, so it sees each answer as the client gets it: refusals
made into answers by ``answer_errors`` and by access control too. A route is labelled by
its pattern (``/v1/units/{name}``), and a path that is no route as ``(none)``: a client
asking for random paths cannot grow the series without bound."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.http.errors import Handler
from fleetd.daemon.metrics import CONTENT_TYPE

CLIENT_GONE = 499  # as the audit record says it


async def metrics(request: web.Request) -> web.Response:
    """Rendered on the loop: the registry's reads are the loop's (SQLite's connection).
    The agents are asked for their units' usage first (at most usage.USAGE_TIMEOUT_S)."""
    body = await req.services(request).metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_GONE
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(none)"
        req.services(request).metrics.request(route, request.method, status,
                                              time.monotonic() - started)
