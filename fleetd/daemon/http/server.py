"""The API as one aiohttp application: routes, and the two middlewares.

Served on a Unix socket (mode 0600: the socket's permissions are the authentication)
and, if configured, on TCP, where every request must carry the bearer token
(``listeners.py`` says where and how many connections). Errors: ``errors.py``. Only the
composition root (``daemon/app.py``) and tests build it.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
from typing import Any, Optional

from aiohttp import web

from fleetd import __version__
from fleetd.daemon.http import request as req
from fleetd.daemon.http import routes_machines, routes_secrets, routes_units
from fleetd.daemon.http.errors import (
    MAX_BODY,
    Handler,
    Refused,
    answer_errors,
    error,
    route_of,
)
from fleetd.daemon.service.errors import ServiceError

log = logging.getLogger("fleetd.api")


def authorized(header: str, token: str) -> bool:
    """Does an Authorization header carry ``token``? ``Bearer`` in any case (RFC 7235);
    bytes that are not UTF-8 (aiohttp hands them over escaped) simply do not match."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def token_middleware(token: Optional[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):  # TCP: a token is required, always
            given = request.headers.get("Authorization", "")
            if token is None or not authorized(given, token):
                return error(401, "missing or wrong bearer token")
        return await handler(request)

    return check


def to_the_end(handler: Handler) -> Handler:
    """A handler that works on a host (installs, upgrades, removes its agent) runs to its
    end even if its client goes away: fleetd cancels a gone client's handler (so that
    abandoned waits and ``journal -f`` end at once), and a half-done install would leave
    an agent on a host that fleetd does not know of. What fails after the client went
    away is logged."""
    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        task = asyncio.ensure_future(handler(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(_log_failure, route_of(request)))
            raise

    return run


def _log_failure(route: str, task: asyncio.Future[web.StreamResponse]) -> None:
    if task.cancelled() or isinstance(task.exception(), (ServiceError, Refused)):
        return  # a refusal (an install that failed there): the answer nobody reads
    if task.exception() is not None:
        log.error("%s failed after its client went away", route, exc_info=task.exception())


async def health(request: web.Request) -> web.Response:
    """Up, and which part this fleetd plays: leader (with its epoch) or follower, and
    whether its reads may be stale (etcd without a quorum)."""
    services = req.services(request)
    return web.json_response({"ok": True, "version": __version__, "pid": os.getpid(),
                              "started_at": services.started_at, **services.status()})


async def servers(request: web.Request) -> web.Response:
    return web.json_response({"servers": await req.services(request).servers()})


def make_app(services: req.Services, token: Optional[str]) -> web.Application:
    app = web.Application(middlewares=[answer_errors, token_middleware(token)],
                          client_max_size=MAX_BODY)
    app[req.SERVICES] = services
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/servers", servers)
    app.router.add_get("/v1/machines", routes_machines.list_machines)
    app.router.add_post("/v1/machines", to_the_end(routes_machines.add_machine))
    app.router.add_delete("/v1/machines/{name}", to_the_end(routes_machines.remove_machine))
    app.router.add_post("/v1/machines/{name}/upgrade",
                        to_the_end(routes_machines.upgrade_machine))
    app.router.add_post("/v1/machines/{name}/drain", routes_machines.drain_machine)
    app.router.add_post("/v1/machines/{name}/undrain", routes_machines.undrain_machine)
    routes_units.add_routes(app.router)
    routes_secrets.add_routes(app.router)
    return app
