"""``GET /v1/events`` (read): what happened in the fleet, with why (fleetd/engine/events.py
keeps it; ``fleetctl events`` reads it).

A long poll, as ``/v1/audit``: ``after=ID`` the events after that id, ``timeout=S`` waits
that long for one to come when there is none yet (``events -f`` asks again at once with
the last id it got), ``limit=N`` at most N of them, ``tail=N`` (without ``after``) the
last N held. ``unit=GLOB`` and ``machine=NAME`` keep only the events of those. The answer:
``events`` (oldest first), ``last`` (the last id there is: where to go on from when no
event came), ``missed`` (events after ``after`` dropped from the bounded history before
this read) and ``reset`` (``after`` was beyond the last id: fleetd restarted since, and
ids began again). Why a long poll rather than server-sent events: fleetctl's client is
one request, one JSON answer, over the Unix socket or TLS alike, and the id it resumes
from is the same whether it reconnects or just asks again.

Only the leading fleetd has events: it holds the sessions to the hosts and runs the
writing engine, where they happen. A follower answers 503 naming the leader (NotLeading;
``ready: false`` sends a client with several endpoints on to the next).
"""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.service.errors import Invalid, NotLeading
from fleetd.engine.events import Filter

MAX_EVENTS = 10000
GLOB_MAX = 256


def _filter(request: web.Request) -> Filter:
    unit: Optional[str] = request.query.get("unit")
    machine: Optional[str] = request.query.get("machine")
    if unit is not None and not 0 < len(unit) <= GLOB_MAX:
        raise Invalid("unit", f"a glob of 1 to {GLOB_MAX} characters")
    if machine is not None and not 0 < len(machine) <= GLOB_MAX:
        raise Invalid("machine", f"a machine's name, 1 to {GLOB_MAX} characters")
    return Filter(unit, machine)


async def list_events(request: web.Request) -> web.Response:
    services = req.services(request)
    me = services.status()
    if not me["leader"]:
        raise NotLeading("the event stream", me.get("leader_name") or None)
    wanted = _filter(request)
    bus = services.events
    if "after" not in request.query:
        tail = req.query_int(request, "tail", 50, 0, MAX_EVENTS)
        held = bus.history.tail(tail, wanted)
        return web.json_response({"events": [e.to_json() for e in held],
                                  "last": bus.history.last, "missed": 0, "reset": False})
    after = req.query_int(request, "after", 0, 0)
    limit = req.query_int(request, "limit", 1000, 1, MAX_EVENTS)
    timeout = req.timeout(request) if "timeout" in request.query else 0.0
    page = await bus.wait(after, wanted, timeout, limit)
    return web.json_response({"events": [e.to_json() for e in page.events],
                              "last": page.last, "missed": page.missed,
                              "reset": page.reset})
