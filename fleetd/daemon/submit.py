"""What a submit request means: unit texts resolved, validated and ready to store.

``fleetctl start web@3.service`` may carry the unit's text (a local file), only its name
(already submitted), or an instance name whose template fleetd already has (or whose
template text fleetctl found beside it, as fleet did). Every unit is validated here —
rendered with its variables and no machine (``render.probe``), then loaded — so errors
name ``file:line`` before anything is stored; ``put_units`` then stores all or none.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fleetd.registry.base import INACTIVE, Registry, UnitInput
from fleetd.units.model import content_hash, parse_name
from fleetd.units.parser import UnitError
from fleetd.units.validate import validate


class SubmitError(Exception):
    def __init__(self, status: int, message: str, errors: Optional[List[str]] = None):
        self.status = status
        self.errors = errors or [message]
        super().__init__(message)


def _variables(item: Dict[str, Any]) -> Optional[Dict[str, str]]:
    raw = item.get("vars")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.isidentifier()
                                            for k in raw):
        raise SubmitError(400, f"{item.get('name')}: vars must map identifiers to values")
    return {k: str(v) for k, v in raw.items()}


def resolve(registry: Registry, items: List[Dict[str, Any]]) -> List[UnitInput]:
    """Each requested unit as a UnitInput (templates they need included); SubmitError
    lists every invalid unit at once."""
    inputs: Dict[str, UnitInput] = {}
    errors: List[str] = []
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            raise SubmitError(400, "units: every unit needs a name")
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
                inputs[template_name] = _checked(template_name, text, variables or {},
                                                 source, errors, INACTIVE)
            else:
                hint = f" and no template {template_name} is submitted or beside it" \
                    if template_name else ""
                raise SubmitError(404, f"unit {name} does not exist{hint}")
        if not isinstance(text, str):
            raise SubmitError(400, f"{name}: text must be a string")
        if variables is None and (stored := registry.get_unit(name)) is not None:
            variables = stored.vars  # a resubmitted file keeps the variables it had
        override = INACTIVE if uname.is_template else None  # a template is never placed
        inputs[name] = _checked(name, text, variables or {}, source, errors, override)
    if errors:
        raise SubmitError(400, errors[0], errors)
    return list(inputs.values())


def _checked(name: str, text: str, variables: Dict[str, str], source: str,
             errors: List[str], desired: Optional[str]) -> UnitInput:
    try:
        validate(name, text, variables, source)
    except UnitError as exc:
        errors.append(str(exc))
    return UnitInput(name, text, content_hash(text), variables, desired)
