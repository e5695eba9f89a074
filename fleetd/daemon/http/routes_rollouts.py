"""Routes for a unit's versions: ``GET /v1/units/{name}/history`` (read) and
``POST /v1/units/{name}/rollback`` with ``{"to": N}`` or ``{}`` and
``POST /v1/units/{name}/promote`` (operate). Each calls
``service.versions``; refusals are answered by errors.py. And a template's count:
``POST /v1/units/{template}/scale`` with ``{"count": N}`` (operate; service/scale.py)."""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.service import scale, versions


async def unit_history(request: web.Request) -> web.Response:
    return web.json_response(versions.history(req.services(request).units,
                                              request.match_info["name"]))


async def unit_rollback(request: web.Request) -> web.Response:
    body = await req.body(request)
    return web.json_response(await versions.rollback(
        req.services(request).units, request.match_info["name"], body.get("to"),
        req.submitter(request)))


async def unit_promote(request: web.Request) -> web.Response:
    return web.json_response(await versions.promote(
        req.services(request).units, request.match_info["name"], req.submitter(request)))


async def unit_scale(request: web.Request) -> web.Response:
    body = await req.body(request)
    count = scale.check_count(body.get("count"))
    return web.json_response(await scale.scale(
        req.services(request).units, request.match_info["name"], count,
        req.submitter(request)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/units/{name}/history", unit_history)
    router.add_post("/v1/units/{name}/rollback", unit_rollback)
    router.add_post("/v1/units/{name}/promote", unit_promote)
    router.add_post("/v1/units/{name}/scale", unit_scale)
