"""Routes for units: ``/v1/units``, ``/v1/unit-files``, ``/v1/units/{name}/...``. Each
reads its request and calls ``service.units``; refusals are answered by errors.py."""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.service import units as service
from fleetd.daemon.service import versions


async def list_units(request: web.Request) -> web.Response:
    """``usage=1``: with each copy's usage, asked of the agents (list-units --fields cpu)."""
    units = req.services(request).units
    if req.query_flag(request, "usage"):
        return web.json_response({"units": await units.rows_with_usage()})
    return web.json_response({"units": units.rows()})


async def list_unit_files(request: web.Request) -> web.Response:
    return web.json_response({"unit_files": req.services(request).units.files()})


async def get_unit(request: web.Request) -> web.Response:
    return web.json_response(req.services(request).units.file(request.match_info["name"]))


async def submit_units(request: web.Request) -> web.Response:
    """Resolve and validate every unit of the request, then store them all or none."""
    units = req.services(request).units
    body = await req.body(request)
    desired = service.check_desired(body.get("desired"))
    items = service.submit_items(body.get("units"))
    inputs = await units.resolve(items, desired)
    options = versions.rollout_options(body.get("rollout"))
    return web.json_response(await units.store(inputs, desired, replace=req.flag(body, "replace"),
                                               via=req.submitter(request), options=options))


async def set_state(request: web.Request) -> web.Response:
    body = await req.body(request)
    return web.json_response(await req.services(request).units.set_desired(
        req.names(body), body.get("desired")))


async def restart_units(request: web.Request) -> web.Response:
    names = req.names(await req.body(request))
    return web.json_response(await req.services(request).units.restart(names))


async def destroy_units(request: web.Request) -> web.Response:
    names = req.names(await req.body(request))
    return web.json_response(await req.services(request).units.destroy(names))


async def unit_status(request: web.Request) -> web.Response:
    """Everything about one unit, and the last lines of its log."""
    lines = req.lines(request)
    return web.json_response(
        await req.services(request).units.status(request.match_info["name"], lines))


async def unit_journal(request: web.Request) -> web.StreamResponse:
    """A unit's log from the machine it is placed on, as plain text lines; with
    ``follow=1`` the response stays open and new lines arrive as the program writes."""
    lines, follow = req.lines(request), req.query_flag(request, "follow")
    log = req.services(request).units.log_of(request.match_info["name"])
    if not follow:
        return web.Response(text=await log.tail(lines), content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    try:
        async for chunk in log.follow(lines):
            await response.write(chunk.encode())
    except ConnectionResetError:
        pass
    return response


async def wait_unit(request: web.Request) -> web.Response:
    """Block until a unit reaches a state (or cannot), for ``fleetctl start`` and friends.
    ``until=healthy``: running the current generation and content, with its [X-Check]
    passing if it has one (``fleetctl restart --rolling`` waits for that)."""
    until = service.check_until(request.query.get("until", "running"))
    return web.json_response(await req.services(request).units.wait(
        request.match_info["name"], until, req.timeout(request)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/units", list_units)
    router.add_post("/v1/units", submit_units)
    router.add_post("/v1/units/state", set_state)
    router.add_post("/v1/units/destroy", destroy_units)
    router.add_post("/v1/units/restart", restart_units)
    router.add_get("/v1/unit-files", list_unit_files)
    router.add_get("/v1/units/{name}", get_unit)
    router.add_get("/v1/units/{name}/wait", wait_unit)
    router.add_get("/v1/units/{name}/status", unit_status)
    router.add_get("/v1/units/{name}/journal", unit_journal)
