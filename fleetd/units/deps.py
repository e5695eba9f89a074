"""``[Unit]`` dependencies between fleet units: Requires=, Wants=, BindsTo=, After=, Before=.

systemd.unit(5) is the meaning; fleetd keeps it across machines (engine/dependencies.py
applies it). Read here as systemd reads them:

- each option may be given many times, each a space-separated list of names with the
  unit's specifiers expanded (``After=db@%i.service``);
- an empty assignment does not reset the list: systemd.unit(5) excepts dependencies from
  the reset rule of list options, so every assignment counts;
- a unit naming itself is ignored, as systemd ignores it.

Only names of fleet units (``NAME.service``, fleetd.wire.names) take part in fleetd's
ordering; any other name (``network-online.target``, ``-x.service``) is not a fleet unit,
so fleetd ignores it, while a Driver=systemd unit's file still carries the line to the
host's systemd, which gives it its usual meaning there. A fleet unit named here that
is never submitted is ignored too: systemd would refuse to start the unit, but a fleet
unit's dependency may be submitted later, and refusing now would make the order of
submits matter.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

from fleetd.units.context import UnitContext
from fleetd.wire import names

SECTION = "Unit"
KEYS = ("Requires", "Wants", "BindsTo", "After", "Before")


@dataclasses.dataclass(frozen=True)
class Deps:
    """The fleet units one unit depends on, by kind, each name once in order."""

    requires: Tuple[str, ...] = ()
    wants: Tuple[str, ...] = ()
    binds_to: Tuple[str, ...] = ()
    after: Tuple[str, ...] = ()
    before: Tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.requires, self.wants, self.binds_to, self.after, self.before))


def deps(ctx: UnitContext) -> Deps:
    """The unit's dependencies on fleet units (see the module's docstring)."""
    return Deps(*(_names(ctx, key) for key in KEYS))


def _names(ctx: UnitContext, key: str) -> Tuple[str, ...]:
    found: List[str] = []
    for entry in ctx.file.entries:
        if entry.section != SECTION or entry.key != key or not entry.value:
            continue
        for name in ctx.split(entry):
            if names.is_valid(name) and not names.is_template(name) \
                    and name != ctx.name.full:
                found.append(name)
    return tuple(dict.fromkeys(found))
