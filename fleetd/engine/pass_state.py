"""One reconcile pass's working state: where each unit ends up, and why.

The steps of a pass (engine/reconciler.py keeps, replaces and places; engine/failover.py
decides on failed units and fenced ones; engine/handoff.py drains) all write here, and
engine/reconciler.py turns the end state into tasks. Besides the state, only what more
than one step needs: the order units are placed in, when the next pass is due, putting
a unit on a machine, a unit's MachineOf= followers, and why a machine was chosen.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from fleetd.engine.capacity import Host
from fleetd.engine.cluster import Cluster, Group
from fleetd.engine.constraints import relations
from fleetd.engine.dependencies import held
from fleetd.engine.ordering import machine_of_order, replace_losers
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE


class PassState:
    def __init__(self, units: Sequence[UnitView], machines: Sequence[MachineView],
                 now: float = 0.0) -> None:
        self.now = now
        self.wake_at: Optional[float] = None
        self.units = units
        self.by_name = {u.name: u for u in units}
        self.cluster = Cluster(machines)
        # the units this pass places: wanted somewhere, and not Global
        self.movable = {u.name: u for u in units
                        if u.desired != INACTIVE and not u.req.is_global}
        self.where: Dict[str, Host] = {}  # where each movable unit ends up
        self.left: Dict[str, str] = {}  # why it had to leave its machine
        self.placed: Dict[str, str] = {}  # why it goes where it goes (placed in this pass)
        self.refused: Dict[str, str] = {}  # why it goes nowhere
        self.noted: Dict[str, str] = {}  # a new reason for a unit that stays where it is
        self.avoid: Dict[str, FrozenSet[str]] = {}  # where it failed lately
        # kept by step 1 although its machine no longer matches its MachineMetadata=
        # (why it must leave): handed over after placing (engine/handoff.py ``rematch``)
        self.rematch: Dict[str, str] = {}
        self.handoff: Dict[str, Optional[str]] = {  # as it ends up after this pass
            u.name: u.handoff for u in units if u.handoff}
        self.globals: Dict[str, List[str]] = {}  # each active Global unit's machines, at the end
        self._followers: Optional[Dict[str, List[str]]] = None  # target -> its followers
        self.cluster.expect(p for u in self.movable.values() for p in relations(u.req).globs)
        self.cluster.expect(p for u in units if u.req.is_global and u.desired != INACTIVE
                            for p in relations(u.req).globs)
        self.depth, self.stuck = machine_of_order(self.movable)
        self.stuck.update(replace_losers(self.movable, self.cluster))
        self.held = held(self.by_name)  # placed but held stopped: [Unit] dependencies

    def order(self, u: UnitView) -> Tuple[int, str]:
        return (self.depth.get(u.name, 0), u.name)

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    def put(self, u: UnitView, host: Host, why: str) -> None:
        self.cluster.add(host, u.name, u.req)
        self.where[u.name] = host
        self.placed[u.name] = why

    def followers(self, target: str, host: Host) -> Iterator[str]:
        """Units kept on ``host`` only because they follow ``target`` there (transitively)."""
        if self._followers is None:
            self._followers = {}
            for u in sorted(self.movable.values(), key=lambda u: u.name):
                for t in u.req.machine_of:
                    self._followers.setdefault(t, []).append(u.name)
        todo = [target]
        while todo:
            for f in self._followers.get(todo.pop(), ()):
                if self.where.get(f) is host:
                    todo.append(f)
                    yield f

    def chosen_because(self, u: UnitView, host: Host, group: Group) -> str:
        n = len(group.members)
        why = f"least loaded of {n} candidate machine{'s' * (n != 1)}"
        if host.name in self.avoid.get(u.name, ()):
            return f"{why}; it failed there lately, but no other machine can take it"
        return why
