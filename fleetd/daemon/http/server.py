"""The API as one aiohttp application: routes, and the middlewares.

Served on a Unix socket (mode 0600: the socket's permissions are the authentication)
and, if configured, on TCP, where every request must carry a bearer token whose role
may call its route (``access.py``, ``roles.py``; ``listeners.py`` says where and how
many connections). Errors: ``errors.py``. Only the
composition root (``daemon/app.py``) and tests build it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Optional

from aiohttp import web

from fleetd import __version__
from fleetd.daemon.audit import AuditLog
from fleetd.daemon.dashboard import routes as dashboard
from fleetd.daemon.http import request as req
from fleetd.daemon.http import (
    routes_events,
    routes_machines,
    routes_metrics,
    routes_rollouts,
    routes_secrets,
    routes_ssh,
    routes_units,
)
from fleetd.daemon.http.access import access_middleware
from fleetd.daemon.http.errors import (
    MAX_BODY,
    Handler,
    Refused,
    answer_errors,
    route_of,
)
from fleetd.daemon.http.routes_audit import AUDIT, audit_middleware, list_audit
from fleetd.daemon.http.routes_tokens import TOKENS
from fleetd.daemon.http.routes_tokens import add_routes as add_token_routes
from fleetd.daemon.service.errors import ServiceError
from fleetd.daemon.tokens import TokenStore

log = logging.getLogger("fleetd.api")


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


def make_app(services: req.Services, token: Optional[str], tokens: TokenStore,
             audit: AuditLog) -> web.Application:
    """``token``: fleetd.toml's api.token (an admin's); ``tokens``: everyone else's;
    ``audit``: where every write is recorded, refused ones too (so the audit middleware
    runs before access's, and after answer_errors has made every refusal an answer)."""
    app = web.Application(middlewares=[routes_metrics.count_requests, answer_errors,
                                       audit_middleware(audit), dashboard.login_page,
                                       access_middleware(tokens, token)],
                          client_max_size=MAX_BODY)
    app[req.SERVICES] = services
    app[TOKENS] = tokens
    app[AUDIT] = audit
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/servers", servers)
    app.router.add_get("/v1/machines", routes_machines.list_machines)
    app.router.add_post("/v1/machines", to_the_end(routes_machines.add_machine))
    app.router.add_delete("/v1/machines/{name}", to_the_end(routes_machines.remove_machine))
    app.router.add_post("/v1/machines/{name}/upgrade",
                        to_the_end(routes_machines.upgrade_machine))
    app.router.add_post("/v1/machines/{name}/drain", routes_machines.drain_machine)
    app.router.add_post("/v1/machines/{name}/undrain", routes_machines.undrain_machine)
    app.router.add_post("/v1/machines/{name}/metadata", routes_machines.set_metadata)
    routes_ssh.add_routes(app.router)
    routes_units.add_routes(app.router)
    routes_rollouts.add_routes(app.router)
    add_token_routes(app.router)
    app.router.add_get("/v1/audit", list_audit)
    routes_secrets.add_routes(app.router)
    app.router.add_get("/v1/events", routes_events.list_events)
    app.router.add_get("/metrics", routes_metrics.metrics)
    dashboard.add_routes(app.router)
    return app
