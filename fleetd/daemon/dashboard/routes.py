"""The dashboard's routes (``/ui/...``) on the API's own application: pages rendered
from the services' rows (the same rows ``list-machines``, ``list-units`` and ``status``
print), behind the same access checks (roles.py gives each route its role).

Usage is asked only of the machines a page shows (at most a page of them), never of the
whole fleet for one look. Events are the leading fleetd's: a follower's pages render
without a live view (``after`` None), saying so.
"""

from __future__ import annotations

import glob as globs
from typing import Any, Dict, List, Mapping, Optional, Tuple

from aiohttp import web

from fleetd.daemon import usage
from fleetd.daemon.dashboard import pages
from fleetd.daemon.dashboard.assets import ASSETS
from fleetd.daemon.dashboard.cookie import COOKIE
from fleetd.daemon.dashboard.render import render
from fleetd.daemon.http import request as req
from fleetd.daemon.http import roles
from fleetd.daemon.http.access import CALLER, bearer
from fleetd.daemon.http.errors import Handler, Refused, status_of
from fleetd.daemon.service.errors import Invalid, ServiceError
from fleetd.engine.events import Filter

EVENTS_SHOWN = 50  # a unit page's recent events
TEXT_MAX = 256  # a filter's state or glob, a machine's name
HEADERS = {
    # nothing but fleetd's own script and style; no frame may hold the page (its buttons)
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        charset="utf-8", headers=HEADERS)


def _text(request: web.Request, key: str) -> Optional[str]:
    value = request.query.get(key) or None
    if value is not None and len(value) > TEXT_MAX:
        raise Invalid(key, f"at most {TEXT_MAX} characters")
    return value


def _after(request: web.Request) -> Optional[int]:
    """Where the page's live view begins: the last event id now; None on a follower."""
    services = req.services(request)
    return services.events.history.last if services.status()["leader"] else None


def _page(request: web.Request, name: str, **context: Any) -> web.Response:
    caller = request[CALLER]
    context.setdefault("unit_glob", None)
    if "after" not in context:
        context["after"] = _after(request)
    return _html(render(name, {"caller": caller,
                               "operate": roles.allows(caller.role, roles.OPERATE),
                               **context},
                        fragment=req.query_flag(request, "fragment")))


async def _usage(request: web.Request, machines: List[str]
                 ) -> Dict[Tuple[str, str], Mapping[str, Any]]:
    sessions = req.services(request).units.sessions
    found = await usage.gather({m: sessions[m] for m in machines if m in sessions})
    return {key: use.to_json() for key, use in found.items()}


async def home(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/ui/machines", **HEADERS})


async def machines_page(request: web.Request) -> web.StreamResponse:
    services = req.services(request)
    machines = (await services.machines.list(None, 0.0))["machines"]
    listing = pages.machines_listing(machines, _text(request, "state"), _text(request, "q"),
                                     req.query_int(request, "page", 1, 1))
    rows = services.units.rows()
    use = await _usage(request, pages.machines_on(listing.page, "name"))
    views = pages.machine_views(listing.page.rows, rows, use)
    return _page(request, "machines.html", listing=listing, views=views)


async def units_page(request: web.Request) -> web.StreamResponse:
    units = req.services(request).units
    listing = pages.units_listing(units.rows(), _text(request, "state"), _text(request, "q"),
                                  req.query_int(request, "page", 1, 1),
                                  _text(request, "machine"))
    # the units' placement reasons straight from their records: list-unit-files' rows
    # (units.files) would also read every copy, failure and description to drop them
    reasons = {u.name: str(u.reason or "") for u in units.registry.list_units()}
    use = await _usage(request, pages.machines_on(listing.page, "machine"))
    views = [pages.unit_view(r, reasons, use) for r in listing.page.rows]
    return _page(request, "units.html", listing=listing, views=views)


async def unit_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    status = await req.services(request).units.status(name, 0)
    unit_glob = globs.escape(name)  # the events' filter is a glob; this name, exactly
    events = []
    after = _after(request)
    if after is not None:
        held = req.services(request).events.history.tail(EVENTS_SHOWN, Filter(unit_glob))
        events = [e.to_json() for e in reversed(held)]
    return _page(request, "unit.html", s=status, events=events, unit_glob=unit_glob,
                 after=after)


async def begin_session(request: web.Request) -> web.StreamResponse:
    """The login page's call, with the token in its Authorization header (the access
    checks have taken it): answered with that token as the dashboard's cookie."""
    caller = request[CALLER]
    response = web.json_response({"name": caller.name, "role": caller.role})
    token = bearer(request.headers.get("Authorization", ""))
    if token is not None:
        response.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Strict",
                            secure=request.secure)
    return response


async def end_session(request: web.Request) -> web.StreamResponse:
    response = web.json_response({"ended": True})
    response.del_cookie(COOKIE, path="/")
    return response


@web.middleware
async def login_page(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Between the audit and the access checks: the dashboard's assets to anyone (they
    hold no fleet data), a page refused for want of a token (401) answered with the
    login page, and a page's other refusals (a unit that does not exist, a bad ``page``)
    as a page saying why, instead of JSON."""
    if request.method == "GET" and request.path.startswith("/ui/assets/"):
        asset = ASSETS.get(request.path[len("/ui/assets/"):])
        if asset is None:
            return web.json_response({"error": f"no such asset: {request.path}"}, status=404)
        return web.Response(text=asset[1], content_type=asset[0], charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})
    page = (request.method == "GET" and request.path.startswith("/ui")
            and "fragment" not in request.query)
    try:
        response = await handler(request)
    except (ServiceError, Refused) as exc:  # a page's refusal, as a page: no such unit
        if not page:
            raise
        status = exc.status if isinstance(exc, Refused) else status_of(exc)
        return _html(render("error.html", {"status": status, "message": str(exc)}),
                     status=status)
    if response.status == 401 and page:
        why = ("That token is not (or no longer) one of fleetd's."
               if COOKIE in request.cookies else "Log in with an API token.")
        return _html(render("login.html", {"why": why}), status=401)
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/ui", home)
    router.add_get("/ui/", home)
    router.add_get("/ui/machines", machines_page)
    router.add_get("/ui/units", units_page)
    router.add_get("/ui/units/{name}", unit_page)
    router.add_post("/ui/session", begin_session)
    router.add_post("/ui/session/end", end_session)
