"""``fleetctl scale web@.service N`` (``POST /v1/units/{template}/scale`` with
``{"count": N}``): instances ``web@1`` .. ``web@N`` of a submitted template run, and no
other numbered one (fleet's #703; Nomad's ``count``).

What counts: instances named by a whole number from 1 without leading zeros
(``web@3.service``); others (``web@blue``, ``web@03``, ``web@0``) are not the scale's
and are left alone (the answer lists them). Scaling up submits the missing instances
with the template's content, launched, where its constraints place them (the engine
places them as any started instance), and starts the ones that exist but are not
launched; scaling down destroys the numbers above N, the highest first (destroy is stop
then forget: each machine stops its copy, and fleetctl waits until they are gone).
``scale 0`` destroys them all; the template stays.

``plan`` is pure; ``scale`` does its writes through the units' service, as a submit,
start and destroy would (each write validated whole; the new instances are rendered
first, so a template that cannot render for them is refused before anything changes).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Sequence

from fleetd.daemon.service.errors import Invalid, NotFound, shown
from fleetd.daemon.service.units import Units
from fleetd.registry.base import LAUNCHED, UnitRecord
from fleetd.wire import names, numbers

MAX_COUNT = 1000  # instances of one template one scale asks for
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What scaling one template to ``count`` changes, by unit name."""

    create: List[str]  # numbers 1..count that do not exist: submitted, launched
    start: List[str]  # numbers 1..count that exist but are not launched
    keep: List[str]  # numbers 1..count already launched
    destroy: List[str]  # numbers above count, the highest first
    ignored: List[str]  # instances not named by a number: not the scale's


def instance(template: str, number: int) -> str:
    """``web@.service``, 3 -> ``web@3.service``."""
    parts = names.split(template)
    return f"{parts.prefix}@{number}.{parts.suffix}"


def plan(template: str, units: Sequence[UnitRecord], count: int) -> Plan:
    parts = names.split(template)
    numbered: Dict[int, UnitRecord] = {}
    ignored = []
    for u in units:
        p = names.split(u.name)
        if (p.prefix, p.suffix) != (parts.prefix, parts.suffix) or not p.instance:
            continue
        if _NUMBER.fullmatch(p.instance):
            numbered[int(p.instance)] = u
        else:
            ignored.append(u.name)
    wanted = range(1, count + 1)
    return Plan(
        create=[instance(template, n) for n in wanted if n not in numbered],
        start=[numbered[n].name for n in wanted
               if n in numbered and numbered[n].desired != LAUNCHED],
        keep=[numbered[n].name for n in wanted
              if n in numbered and numbered[n].desired == LAUNCHED],
        destroy=[numbered[n].name for n in sorted(numbered, reverse=True) if n > count],
        ignored=sorted(ignored))


def check_count(count: object) -> int:
    try:
        return numbers.json_int(count, 0, MAX_COUNT)
    except numbers.NumberError as exc:
        raise Invalid("count", f"{shown(count)}: {exc}") from None


def check_template(name: str) -> None:
    """A template's name (``web@.service``), else Invalid saying what scale wants."""
    if not names.is_valid(name) or not names.is_template(name):
        parts = names.split(name) if names.is_valid(name) else None
        hint = (f"; its template is {parts.prefix}@.{parts.suffix}"
                if parts is not None and parts.instance else "")
        raise Invalid(None, f"{shown(name)} is not a template: scale makes instances "
                            f"NAME@1 .. NAME@N of a template such as web@.service{hint}")


async def scale(units: Units, template: str, count: int, via: str) -> Dict[str, Any]:
    """Scale ``template`` to ``count`` instances (``plan``); the answer says what changed."""
    check_template(template)
    if units.registry.get_unit(template) is None:
        raise NotFound(f"template {template} is not submitted (fleetctl submit FILE)")
    p = plan(template, units.registry.list_units(), count)
    if p.create:
        inputs = await units.resolve([{"name": n} for n in p.create], LAUNCHED)
        await units.store(inputs, LAUNCHED, replace=False, via=via)
    if p.start:
        await units.set_desired(p.start, LAUNCHED)
    if p.destroy:
        await units.destroy(p.destroy)
    return {"template": template, "count": count, "created": p.create, "started": p.start,
            "kept": p.keep, "destroyed": p.destroy, "ignored": p.ignored}
