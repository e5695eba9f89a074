"""The one place an API refusal becomes an answer: JSON ``{"error": "..."}`` with text
for the user that names the field, parameter or route, and the status for its kind.

Domain refusals come from the services (``service/errors.py``) and the registry; a
refusal of the request as HTTP (a body that does not arrive, a URL that is not UTF-8)
is ``Refused`` with its status. A fault in fleetd is logged here with its traceback and
answered 500 without it: one bad request never takes anything else down.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable, Dict, Type

from aiohttp import web

from fleetd.daemon.service import errors
from fleetd.registry import base as registry

log = logging.getLogger("fleetd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800": no UTF-8 for it, no SQLite
MIB = 1024 * 1024
MAX_BODY = 4 * MIB  # one request: a few units at their largest

# most specific first: the first class a refusal is an instance of gives its status
STATUS: Dict[Type[Exception], int] = {
    errors.TooLarge: 413,
    errors.Invalid: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.HostFailed: 422,
    errors.AgentRefused: 502,
    errors.AgentUnreachable: 503,
    errors.NotLeading: 503,
    registry.NotFound: 404,
    registry.Conflict: 409,
    registry.Unavailable: 503,  # etcd without a quorum: nothing was written; try again
    registry.Unsure: 503,  # etcd could not say whether it was written: look first
    registry.RegistryError: 400,
}


class Refused(Exception):
    """A request refused as HTTP: answered ``status`` with ``message``, which names the
    parameter or part of the request that is wrong."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def route_of(request: web.Request) -> str:
    """``POST /v1/units/{name}/wait``: the route, as errors name it."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else request.path}"


def status_of(exc: Exception) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 500


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer that is not a success: a refusal (``Refused``, the services' and the
    registry's, aiohttp's own 404/405/413) or a fault in fleetd (500, logged)."""
    try:
        if SURROGATE.search(request.path) or SURROGATE.search(request.query_string):
            raise Refused(400, "the URL is not UTF-8")
        return await handler(request)
    except Refused as exc:
        return error(exc.status, str(exc))
    except errors.ServiceError as exc:
        return error(status_of(exc), str(exc), **exc.details)
    except registry.Unavailable as exc:  # nothing written: another fleetd may try
        return error(status_of(exc), str(exc), ready=False)
    except registry.RegistryError as exc:
        return error(status_of(exc), str(exc))
    except web.HTTPException as exc:
        return error(exc.status, _http_error(request, exc))
    except ConnectionResetError:  # reading its body: no one to answer, nothing done
        log.info("%s: the client went away before its request was read; nothing done",
                 route_of(request))
        return error(400, f"{route_of(request)}: the request ended before its body did")
    except Exception:  # the one catch-all: a bug answers 500, never a traceback
        log.exception("%s failed", route_of(request))
        return error(500, f"{route_of(request)}: internal error in fleetd (logged there)")


def _http_error(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 413:
        return f"{route_of(request)}: request body over {MAX_BODY // MIB} MiB"
    if exc.status == 404:
        return f"no such route: {request.method} {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return f"{route_of(request)}: {exc.reason}"
