"""Where a unit may go, and which of those places it goes to. Pure: no I/O, no clock.

The scheduler keeps fleet's meaning of [X-Fleet] and adds resources (fleet counted
units only). It is split by concern:

* engine/constraints.py: the static filters (MachineID=, MachineMetadata=,
  capabilities), written once, and Conflicts=/Replaces= relations between units;
* engine/capacity.py: one machine's accounting during a pass (reservations, load);
* engine/cluster.py: the machines of a pass, candidates, ranking, placing, Global units;
* engine/explain.py: why a unit goes nowhere, in the user's terms.

Hard filters are checked in this order so a refusal names the first one that bites:
the machine is up; ``MachineID=`` (full id or a unique prefix); ``MachineMetadata=``;
the unit's capabilities; ``Conflicts=`` and ``Replaces=``; and free capacity for the
unit's reservation (``MemoryMax=`` bytes or percent, ``CPUQuota=``).

This module answers for Global units given the other placements, and re-exports the
building blocks under their old names.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from fleetd.engine.capacity import GiB, Host, MiB, TiB, millicpus
from fleetd.engine.cluster import Cluster, Group
from fleetd.engine.constraints import (
    Globs,
    Relations,
    apart,
    metadata_matches,
    metadata_text,
    relations,
)
from fleetd.engine.explain import cpus, size
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE

__all__ = [
    "Cluster", "GiB", "Globs", "Group", "Host", "MiB", "Relations", "TiB", "apart", "cpus",
    "global_placements", "global_targets", "metadata_matches", "metadata_text",
    "millicpus", "relations", "size",
]


def global_targets(unit: UnitView, machines: Sequence[MachineView],
                   placed: Mapping[str, Sequence[UnitView]]) -> List[str]:
    """The machines (sorted by name) a Global unit runs on.

    Every up machine matching its MachineMetadata= and capabilities where no unit in
    ``placed`` (machine name -> the non-global units placed there) must stay apart from
    it, and with room for its reservation. ``placed`` carries views, not names, because
    the check goes both ways: the global unit's Conflicts= against their names, and their
    Conflicts= against its name (and their reservations take room). For all Global units
    at once, including conflicts among them, use ``global_placements``.
    """
    cluster = Cluster(machines)
    for machine in sorted(placed):
        host = cluster.by_name.get(machine)
        if host is None:
            continue
        for r in placed[machine]:
            if not r.req.is_global:
                cluster.add(host, r.name, r.req)
    return cluster.place_globals([unit])[unit.name]


def global_placements(units: Sequence[UnitView],
                      machines: Sequence[MachineView]) -> Dict[str, List[str]]:
    """Every active Global unit -> its machines, given where the other units are placed.

    ``reconciler.reconcile`` computes the same in its pass (``Outcome.globals``, from
    engine/cluster.py's ``settle_globals``) without building a second cluster; this is
    the reference the tests hold it to. Of two conflicting Global units, the one whose
    name sorts first keeps the machines.
    """
    cluster = Cluster(machines)
    for u in sorted(units, key=lambda u: u.name):
        host = cluster.by_name.get(u.machine) if u.machine else None
        if host is not None and u.desired != INACTIVE and not u.req.is_global:
            cluster.add(host, u.name, u.req)
    return cluster.place_globals([u for u in units
                                  if u.req.is_global and u.desired != INACTIVE])
