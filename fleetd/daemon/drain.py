"""``fleetctl drain`` / ``undrain``: the API side, and how a drain reads in listings.

A drain is two fields on the machine (since when, and an optional deadline); the engine
does the moving (engine/reconciler.py, step 5), one unit at a time, each healthy on its
new machine before its old copy stops. Draining a machine twice keeps its start time and
takes the new deadline, so a deadline can be set or extended while a drain runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from aiohttp import web

from fleetd.registry.base import MachineRecord, UnitRecord
from fleetd.wire import numbers

if TYPE_CHECKING:
    from fleetd.daemon.app import Daemon

MAX_DEADLINE_S = 366 * 86400.0


def progress(m: MachineRecord, units: List[UnitRecord]) -> Optional[Dict[str, Any]]:
    """A draining machine's drain: since, deadline, and the units still on it (placed
    there, or handing over from there); None when it is not draining."""
    if m.draining is None:
        return None
    left = sorted(u.name for u in units if u.machine == m.name or u.handoff == m.name)
    return {"since": m.draining, "deadline": m.drain_deadline, "left": left,
            "done": not left}


def drain(d: Daemon, name: str, body: Dict[str, Any]) -> web.Response:
    m = d.registry.get_machine(name)
    if m is None:
        return web.json_response({"error": f"machine {name} does not exist"}, status=404)
    deadline_s = body.get("deadline_s")
    if deadline_s is not None:
        try:  # a year at most: a later time is no deadline, and may not even print
            deadline_s = numbers.json_float(deadline_s, 0, MAX_DEADLINE_S)
        except numbers.NumberError as exc:
            return web.json_response({"error": f"deadline_s: {exc}"}, status=400)
    now = time.time()
    since = m.draining if m.draining is not None else now
    deadline = None if deadline_s is None else now + deadline_s
    d.registry.update_machine(name, draining=since, drain_deadline=deadline)
    d.changed()
    m = d.registry.get_machine(name) or m
    return web.json_response({"machine": name,
                              "drain": progress(m, d.registry.list_units())})


def undrain(d: Daemon, name: str) -> web.Response:
    if d.registry.get_machine(name) is None:
        return web.json_response({"error": f"machine {name} does not exist"}, status=404)
    d.registry.update_machine(name, draining=None, drain_deadline=None)
    d.changed()
    return web.json_response({"machine": name, "drain": None})
