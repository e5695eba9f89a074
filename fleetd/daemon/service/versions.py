"""``fleetctl history`` and ``rollback``: a unit's versions, and going back to one.

A unit's versions are what the registry keeps of each content it was given (the newest
``VERSIONS_KEPT``, with their texts: registry/base.py). How each one ended is read from
the version that followed it (``AutoRevert: v2 (...) failed (...)``, ``rollback to v1 by
...``) and, for the current one, from the template's rollout status (engine/rollout.py),
so nothing is stored twice. A rollback is new content like a submit: the template
changes alone and its instances follow one healthy step at a time, as any rollout.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from fleetd.daemon.service.errors import Invalid, NotFound
from fleetd.daemon.service.units import Units
from fleetd.engine.rollout import REVERT_VIA
from fleetd.registry.base import UnitInput, VersionRecord
from fleetd.units.xupdate import MAX_PARALLEL
from fleetd.wire.names import is_template

ROLLBACK_VIA = "rollback to v{number} by {who}"
MAX_SPAN_S = 366 * 86400.0
# a submit's ``rollout`` options (fleetctl's --canary, --max-parallel, ...): name ->
# (smallest, largest) for numbers, None for a boolean; engine/rollout.py reads them
ROLLOUT_OPTIONS = {"canary": (0, MAX_PARALLEL), "max_parallel": (1, MAX_PARALLEL),
                   "min_healthy_s": (0, MAX_SPAN_S), "healthy_deadline_s": (0.001, MAX_SPAN_S),
                   "auto_revert": None}
WHOLE = ("canary", "max_parallel")


def rollout_options(raw: object) -> Dict[str, Any]:
    """A submit's ``rollout`` object, checked: Invalid naming ``rollout.KEY``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Invalid("rollout", "want an object of rollout options")
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if key not in ROLLOUT_OPTIONS:
            raise Invalid(f"rollout.{str(key)[:40]}",
                          f"unknown option (known: {', '.join(ROLLOUT_OPTIONS)})")
        bounds = ROLLOUT_OPTIONS[key]
        if bounds is None:
            if not isinstance(value, bool):
                raise Invalid(f"rollout.{key}", "want true or false")
        elif (isinstance(value, bool) or not isinstance(value, (int, float))
              or not math.isfinite(value) or not bounds[0] <= value <= bounds[1]
              or (key in WHOLE and value != int(value))):
            raise Invalid(f"rollout.{key}", f"want a {'whole ' if key in WHOLE else ''}"
                                            f"number from {bounds[0]:g} to {bounds[1]:g}")
        out[key] = int(value) if key in WHOLE else value
    return out


def ended(versions: Sequence[VersionRecord], i: int, status: str) -> str:
    """How version ``versions[i]`` ended, in words (pure)."""
    v = versions[i]
    if i == len(versions) - 1:
        return status or "current"
    after = versions[i + 1]
    if after.via.startswith(f"{REVERT_VIA}: v{v.version} ("):
        return f"failed: reverted by v{after.version} ({after.via})"
    if after.via.startswith("rollback to "):
        return f"rolled back by v{after.version} ({after.via})"
    return f"replaced by v{after.version}"


def history(units: Units, name: str) -> Dict[str, Any]:
    u = units.registry.get_unit(name)
    if u is None:
        raise NotFound(f"unit {name} does not exist")
    versions = units.registry.list_versions(name)
    rows: List[Dict[str, Any]] = [
        {"version": v.version, "hash": v.hash, "at": v.at, "via": v.via,
         "options": v.options,
         "current": v.hash == u.hash and i == len(versions) - 1,
         "ended": ended(versions, i, u.reason if is_template(name) else "")}
        for i, v in enumerate(versions)]
    return {"unit": name, "hash": u.hash, "versions": rows}


async def rollback(units: Units, name: str, to: object, who: str) -> Dict[str, Any]:
    """Give ``name`` the content of its version ``to`` (None: the newest one with other
    content than it has now), the way new content goes (a template's instances roll)."""
    if to is not None and (isinstance(to, bool) or not isinstance(to, int)):
        raise Invalid("to", f"want a version number, not {to!r}"[:80])
    u = units.registry.get_unit(name)
    if u is None:
        raise NotFound(f"unit {name} does not exist")
    versions = units.registry.list_versions(name)
    target: Optional[VersionRecord]
    if to is None:
        target = next((v for v in reversed(versions) if v.hash != u.hash), None)
        if target is None:
            raise Invalid(None, f"{name} has no earlier content to go back to "
                                f"(versions kept: {_kept(versions)})")
    else:
        target = next((v for v in versions if v.version == to), None)
        if target is None:
            raise NotFound(f"{name} has no version {to} (versions kept: {_kept(versions)})")
        if target.hash == u.hash:
            raise Invalid("to", f"{name} has the content of v{to} already")
    text = units.registry.unit_text(target.hash)
    if text is None:  # kept with its version: only a store edited by hand lacks it
        raise NotFound(f"the text of {name} v{target.version} is gone")
    via = ROLLBACK_VIA.format(number=target.version, who=who)
    await units.store([UnitInput(name, text, target.hash, u.vars)], None, replace=True,
                      via=via)
    return {"unit": name, "to": target.version, "hash": target.hash, "via": via}


async def promote(units: Units, name: str, who: str) -> Dict[str, Any]:
    """Let a canary rollout (``--canary N``) go on to every copy."""
    u = units.registry.get_unit(name)
    if u is None:
        raise NotFound(f"unit {name} does not exist")
    versions = units.registry.list_versions(name)
    current = versions[-1] if versions and versions[-1].hash == u.hash else None
    if current is None or not current.options.get("canary"):
        raise Invalid(None, f"{name} has no canary waiting to be promoted")
    await units.registry.set_version_options(
        name, current.version, {**current.options, "canary": 0, "promoted_by": who})
    units.woken()
    return {"unit": name, "version": current.version}


def _kept(versions: Sequence[VersionRecord]) -> str:
    return f"v{versions[0].version}-v{versions[-1].version}" if versions else "none"
