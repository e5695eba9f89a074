"""Who is asking, and may they: the middleware every request passes after routing.

On the Unix socket the caller is root (the socket is 0600: its mode is the check), an
admin. On TCP the ``Authorization: Bearer`` token (or, from a browser, the dashboard's
cookie: dashboard/cookie.py says where it counts) names the caller: fleetd.toml's
``api.token`` (an admin named ``config``, as that token always was) or one of the
token store's (daemon/tokens.py), each with its role. No token, or one fleetd does not
know (or no longer: a revoked token is gone from the store at once), is 401; a role
below what the route needs (roles.py) is 403, naming both. The caller is left on the
request (``CALLER``) for the audit record (audit.py).
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any, Optional

from aiohttp import web

from fleetd.daemon.dashboard import cookie
from fleetd.daemon.http import roles
from fleetd.daemon.http.errors import Handler, error
from fleetd.daemon.tokens import CONFIG_NAME, TokenStore

UNIX_CALLER = "root (unix socket)"


@dataclasses.dataclass(frozen=True)
class Caller:
    name: str
    role: str


CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def bearer(header: str) -> Optional[str]:
    """The token of an Authorization header: ``Bearer`` in any case (RFC 7235); bytes
    that are not UTF-8 (aiohttp hands them over escaped) stay as they are, and match
    nothing."""
    scheme, _, given = header.strip().partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def authorized(header: str, token: str) -> bool:
    """Does an Authorization header carry ``token``? (constant time)"""
    given = bearer(header)
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def caller_of(request: web.Request, tokens: TokenStore, config_token: Optional[str]
              ) -> Optional[Caller]:
    """Who sent ``request``: root on the socket, a token's name on TCP; None for a TCP
    request whose token fleetd does not know."""
    if request.transport is None:  # the connection is gone: whose it was, unknown
        return None
    sockname = request.transport.get_extra_info("sockname")
    if isinstance(sockname, str):  # AF_UNIX: its path; a TCP or TLS socket: (host, port)
        return Caller(UNIX_CALLER, roles.ADMIN)
    header = cookie.authorization(request.method, request.headers, request.cookies)
    if config_token is not None and authorized(header, config_token):
        return Caller(CONFIG_NAME, roles.ADMIN)
    given = bearer(header)
    found = tokens.lookup(given) if given is not None else None
    return Caller(found.name, found.role) if found is not None else None


def needed(request: web.Request) -> str:
    """The role the request's route needs; a path no route matches needs ``read`` (and
    gets its 404), but under an admin prefix ``admin`` (roles.py says why)."""
    resource = request.match_info.route.resource
    if resource is None:
        return roles.ADMIN if roles.admin_only(request.path) else roles.READ
    return roles.required(request.method, resource.canonical)


def access_middleware(tokens: TokenStore, config_token: Optional[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        caller = caller_of(request, tokens, config_token)
        if caller is None:
            return error(401, "missing or wrong bearer token")
        request[CALLER] = caller
        role = needed(request)
        if not roles.allows(caller.role, role):
            return error(403, f"{request.method} {request.path} needs a token with role "
                              f"{role}; {caller.name}'s role is {caller.role}")
        return await handler(request)

    return check
