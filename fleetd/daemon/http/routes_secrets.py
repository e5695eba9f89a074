"""Routes for secrets, all under ``/v1/secrets``: ``PUT /v1/secrets/{name}`` with the
value in the body (``{"value": "..."}``), ``GET /v1/secrets`` (names, versions, times and
the units that use each; never a value), ``DELETE /v1/secrets/{name}``. Each calls
``service.secrets``; refusals are answered by errors.py and never quote a value."""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.service.errors import Invalid


async def list_secrets(request: web.Request) -> web.Response:
    return web.json_response({"secrets": req.services(request).secrets.rows()})


async def set_secret(request: web.Request) -> web.Response:
    """Seal and store a secret's value; the units that use it roll to the new one."""
    body = await req.body(request)
    if "value" not in body:
        raise Invalid("value", "required: the secret's value, as a string")
    return web.json_response(await req.services(request).secrets.set(
        request.match_info["name"], body["value"]))


async def remove_secret(request: web.Request) -> web.Response:
    return web.json_response(await req.services(request).secrets.remove(
        request.match_info["name"]))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/secrets", list_secrets)
    router.add_put("/v1/secrets/{name}", set_secret)
    router.add_delete("/v1/secrets/{name}", remove_secret)
