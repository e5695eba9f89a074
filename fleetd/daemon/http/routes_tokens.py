"""Routes for API tokens (admin only, roles.py): ``/v1/tokens`` and
``/v1/tokens/{name}``. The token itself is in one answer only, create's."""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.http.errors import Refused
from fleetd.daemon.tokens import StoreError, TokenStore

TOKENS: web.AppKey[TokenStore] = web.AppKey("tokens", TokenStore)


async def list_tokens(request: web.Request) -> web.Response:
    return web.json_response({"tokens": request.app[TOKENS].list()})


async def create_token(request: web.Request) -> web.Response:
    body = await req.body(request)
    name, role = req.text(body, "name"), req.text(body, "role")
    try:
        token = await request.app[TOKENS].create(name, role)
    except StoreError as exc:
        raise Refused(503, str(exc)) from None
    return web.json_response({"name": name, "role": role, "token": token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    try:
        gone = await request.app[TOKENS].revoke(request.match_info["name"])
    except StoreError as exc:
        raise Refused(503, str(exc)) from None
    return web.json_response({"revoked": gone.name, "role": gone.role})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/tokens", list_tokens)
    router.add_post("/v1/tokens", create_token)
    router.add_delete("/v1/tokens/{name}", revoke_token)
