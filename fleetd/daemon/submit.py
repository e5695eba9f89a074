"""What a submit request means: unit texts resolved, validated and ready to store.

``fleetctl start web@3.service`` may carry the unit's text (a local file), only its name
(already submitted), or an instance name whose template fleetd already has (or whose
template text fleetctl found beside it, as fleet did). Every unit is validated here —
rendered with its variables and no machine (``render.probe``), then loaded — so errors
name ``file:line`` before anything is stored; ``put_units`` then stores all or none.
Refusals are the service layer's domain errors (Invalid, NotFound; every one lists its
problems in ``errors``), never HTTP statuses. Validation goes through the shared
compiled-unit cache (``CompiledUnits.check``): a unit that passes is kept there, and
the engine does not read it again once stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Optional

from fleetd.daemon.service.errors import Invalid, NotFound
from fleetd.registry.base import INACTIVE, Registry, UnitInput
from fleetd.units import values
from fleetd.units.compiled import CompiledUnits
from fleetd.units.model import content_hash, parse_name
from fleetd.units.parser import UnitError


def refused(message: str) -> Invalid:
    """A submit's refusal: its ``errors`` list every problem found (here, one)."""
    return Invalid(None, message, errors=[message])


def _variables(item: Dict[str, Any]) -> Optional[Dict[str, str]]:
    """The item's ``vars``: names to values, each a string (or a number) that stays on
    its line. A value is never unit text: a line break would add a directive (an
    ``ExecStartPre=`` the unit's author never wrote, invisible in ``fleetctl cat``)."""
    raw = item.get("vars")
    if raw is None:
        return None
    name = item.get("name")
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.isidentifier()
                                            for k in raw):
        raise refused(f"{name}: vars must map identifiers to values")
    return {key: _value(name, key, value) for key, value in raw.items()}


def _value(name: Any, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise refused(f"{name}: vars.{key}: want a string or a finite number, "
                      f"not {json.dumps(value)[:40]}")
    text = str(value)
    problem = values.problem(text)
    if problem is not None:
        raise refused(f"{name}: vars.{key} {problem}: a variable is a value, "
                      "not unit text")
    return text


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A unit to validate, with everything read from the registry it needs."""

    name: str
    text: str
    variables: Dict[str, str]
    source: str
    desired: Optional[str]


@dataclasses.dataclass
class Plan:
    """What ``gather`` read: units to validate, and the errors found so far."""

    units: List[_Pending]
    errors: List[str]


def gather(registry: Registry, items: List[Dict[str, Any]]) -> Plan:
    """Each requested unit with everything it needs from the registry (templates they
    need included), read on the event loop: the registry's connection belongs to it."""
    pending: Dict[str, _Pending] = {}
    errors: List[str] = []
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            raise refused("units: every unit needs a name")
        try:
            uname = parse_name(name)
        except UnitError as exc:
            errors.append(str(exc))
            continue
        variables = _variables(item)
        text = item.get("text")
        source = str(item.get("source") or name)
        if text is None:
            stored = registry.get_unit(name)
            template_name = uname.template
            if stored is not None:
                text = registry.unit_text(stored.hash)
                variables = stored.vars if variables is None else variables
            elif template_name and (tmpl := registry.get_unit(template_name)) is not None:
                text = registry.unit_text(tmpl.hash)
                variables = tmpl.vars if variables is None else variables
                source = template_name
            elif template_name and isinstance(item.get("template_text"), str):
                text = item["template_text"]
                source = str(item.get("template_source") or template_name)
                pending[template_name] = _Pending(template_name, text, variables or {},
                                                  source, INACTIVE)
            else:
                hint = f" and no template {template_name} is submitted or beside it" \
                    if template_name else ""
                message = f"unit {name} does not exist{hint}"
                raise NotFound(message, errors=[message])
        if not isinstance(text, str):
            raise refused(f"{name}: text must be a string")
        if variables is None and (stored := registry.get_unit(name)) is not None:
            variables = stored.vars  # a resubmitted file keeps the variables it had
        override = INACTIVE if uname.is_template else None  # a template is never placed
        pending[name] = _Pending(name, text, variables or {}, source, override)
    return Plan(list(pending.values()), errors)


def check(plan: Plan, units: CompiledUnits) -> List[UnitInput]:
    """Validate every unit (``render.probe`` then load, through ``units``) into a
    UnitInput; Invalid lists every invalid unit at once (its ``errors``), each naming
    the user's file. No registry access, so it may run in a worker thread, where a template that
    runs to its budget stalls nobody (``units`` may be called from there)."""
    errors = list(plan.errors)
    inputs: List[UnitInput] = []
    for u in plan.units:
        digest = content_hash(u.text)
        try:
            units.check(u.name, digest, u.variables, u.text, u.source)
        except UnitError as exc:
            errors.append(str(exc))
            continue
        inputs.append(UnitInput(u.name, u.text, digest, u.variables, u.desired))
    if errors:
        raise Invalid(None, errors[0], errors=errors)
    return inputs
