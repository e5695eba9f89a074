"""Who may call which route: every route of the API and the role it needs, in one table.

Roles are ranked; a token of a role may do what the roles below it may:

- ``read``: lists, status, cat, journal, waits, health, servers, events, metrics;
- ``operate``: and change what runs: submit, start, stop, restart, destroy, drain,
  scale, a machine's metadata (which moves units, as a drain does);
- ``admin``: and change who and where: machines, tokens, secrets, the audit record.

A route not in the table is refused at once (``required`` raises: a new route must be
given a role here; tests/unit/test_api_roles.py checks every route of the app has one).
Everything under ``/v1/secrets`` is admin whether or not the route exists, so that a
non-admin token learns nothing from a 404 about what is there.
"""

from __future__ import annotations

from typing import Dict, Tuple

READ, OPERATE, ADMIN = "read", "operate", "admin"
RANK = {READ: 0, OPERATE: 1, ADMIN: 2}
ROLES = tuple(RANK)

ROUTES: Dict[Tuple[str, str], str] = {
    ("GET", "/v1/health"): READ,
    ("GET", "/v1/servers"): READ,
    ("GET", "/v1/machines"): READ,
    ("POST", "/v1/machines"): ADMIN,
    ("DELETE", "/v1/machines/{name}"): ADMIN,
    ("POST", "/v1/machines/{name}/upgrade"): ADMIN,
    ("GET", "/v1/machines/{name}/ssh"): ADMIN,  # where fleetd's key for it is: routes_ssh
    ("POST", "/v1/machines/{name}/drain"): OPERATE,
    ("POST", "/v1/machines/{name}/undrain"): OPERATE,
    ("POST", "/v1/machines/{name}/metadata"): OPERATE,
    ("GET", "/v1/units"): READ,
    ("POST", "/v1/units"): OPERATE,
    ("POST", "/v1/units/state"): OPERATE,
    ("POST", "/v1/units/destroy"): OPERATE,
    ("POST", "/v1/units/restart"): OPERATE,
    ("GET", "/v1/unit-files"): READ,
    ("GET", "/v1/units/{name}"): READ,
    ("GET", "/v1/units/{name}/wait"): READ,
    ("GET", "/v1/units/{name}/status"): READ,
    ("GET", "/v1/units/{name}/journal"): READ,
    ("GET", "/v1/units/{name}/history"): READ,
    ("POST", "/v1/units/{name}/rollback"): OPERATE,
    ("POST", "/v1/units/{name}/promote"): OPERATE,
    ("POST", "/v1/units/{name}/scale"): OPERATE,
    ("GET", "/v1/tokens"): ADMIN,
    ("POST", "/v1/tokens"): ADMIN,
    ("DELETE", "/v1/tokens/{name}"): ADMIN,
    ("GET", "/v1/audit"): ADMIN,
    ("GET", "/v1/events"): READ,
    ("GET", "/metrics"): READ,
    # the web dashboard (daemon/dashboard/): its pages read; its buttons call the routes
    # above with the token the login page set as a cookie (dashboard/cookie.py)
    ("GET", "/ui"): READ,
    ("GET", "/ui/"): READ,
    ("GET", "/ui/machines"): READ,
    ("GET", "/ui/units"): READ,
    ("GET", "/ui/units/{name}"): READ,
    ("POST", "/ui/session"): READ,
    ("POST", "/ui/session/end"): READ,
}
ADMIN_PREFIXES = ("/v1/secrets",)  # every route under these, present or to come


class NoRole(LookupError):
    """A route the table does not name: a route added without deciding who may call it."""


def admin_only(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES)


def required(method: str, route: str) -> str:
    """The role ``method`` on ``route`` (aiohttp's canonical form, ``/v1/units/{name}``)
    needs; HEAD as GET. NoRole for a route the table does not have."""
    if admin_only(route):
        return ADMIN
    role = ROUTES.get(("GET" if method == "HEAD" else method, route))
    if role is None:
        raise NoRole(f"{method} {route}")
    return role


def allows(role: str, needed: str) -> bool:
    return RANK.get(role, -1) >= RANK[needed]
