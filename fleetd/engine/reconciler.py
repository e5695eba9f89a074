"""Desired + observed state -> placement tasks, each with a human reason.

Pure, like fleet's engine reconciler: the loop (engine/loop.py) gathers the inputs and
applies the tasks. A task changes one unit's placement; the reason is stored with the
unit and shown by ``fleetctl list-unit-files`` so nobody has to guess why a unit sits
where it sits (or nowhere). Only changes come out: a unit that stays where it is, or
stays unplaced for the same reason, produces no task.

A pass works as fleet's did (unschedule first, then schedule), in four steps, so that
loads only grow once placing starts and the scheduler's heaps stay exact:

1. **keep**: every placed unit stays unless it must leave: it is inactive, its machine
   was removed, the machine no longer satisfies a hard constraint (MachineID=,
   MachineMetadata=, capabilities), the machine is lost (silent past its TTL), its
   MachineOf= target is no longer there, a unit that Replaces= it sits on the same
   machine, or it conflicts with a unit kept there before it (MachineOf= targets first,
   then name order). A machine that is merely unreachable (within its TTL) keeps its
   units, and capacity is checked on admission only: a machine that shrinks does not
   evict.
2. **globals**: Global units land on every matching machine with room where nothing
   kept conflicts with them; from then on they are residents like any other.
3. **Replaces=** (fleet's meaning, from fleet PRs #1572 and #1698): an unplaced unit
   that replaces a placed one takes that machine when it can (room, constraints and
   conflicts with everything else there, Global units included), and the replaced unit
   (with whatever follows it by MachineOf=) moves on like a conflicting one.
4. **place**: the rest, targets before their MachineOf= followers, then by name.

Failures and drains (fleet had neither), decided in the same pass:

* **failed units** (the agent gave up on one: start limit hit, or its health check ended
  it) move by their ``[X-Fleet]`` reschedule policy: after a delay that grows per
  attempt, while attempts are left in the interval, to a machine where they have not
  failed lately if there is one (else back where they failed, as a fresh start). With
  no attempts left they stay failed where they are, saying so, until old failures
  age out of the interval.
* **fencing**: a lost machine's unit with ``FenceAfterSec=`` moves only once the machine
  has been silent long enough that its agent has surely stopped it, so two copies
  never run.
* **draining** machines take no new units and hand theirs over one at a time: the unit
  is placed elsewhere while its old copy keeps running (``handoff``); once the new copy
  is running and healthy the old one stops, and once it is gone the next unit goes. After
  the drain's deadline whatever is left moves at once (or stops, if it fits nowhere).

Time enters only as ``now`` and the machines' silences; the outcome says when the next
pass is due (a delay ends, a fence expires), since nothing else would wake the engine.

Circular Replaces= (fleet refuses it; its functional test wants one unit of the two to
run): in a cycle, one unit runs (the placed one whose name sorts first, else the first by
name) and the rest wait with a reason, the same answer every pass, so nothing flaps
(engine/ordering.py, with the MachineOf= order).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from fleetd.engine.capacity import Host
from fleetd.engine.cluster import Cluster, Group
from fleetd.engine.constraints import relations, static_mismatch
from fleetd.engine.ordering import machine_of_order, replace_losers
from fleetd.engine.scheduler import global_placements
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE, LAUNCHED
from fleetd.units.xfleet import Reschedule

UNLOADED = "unloaded: desired state is inactive"
GLOBAL = "Global=true: runs on every matching machine, so it is not placed on one"


@dataclasses.dataclass(frozen=True)
class Place:
    """Put ``unit`` on ``machine`` (None: leave it unplaced) because of ``reason``."""

    unit: str
    machine: Optional[str]
    reason: str
    handoff: Optional[str] = None  # the machine whose copy runs until this one is ready
    retry: bool = False  # it failed where it is and starts there again (new generation)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Everything a pass decides about placement."""

    tasks: List[Place]
    wake_at: Optional[float]  # when a pass must run again although nothing happened
    # every active Global unit -> its machines, once the tasks are applied
    globals: Dict[str, List[str]] = dataclasses.field(default_factory=dict)


def plan(units: Sequence[UnitView], machines: Sequence[MachineView],
         now: float = 0.0) -> List[Place]:
    """The placement changes that bring ``units`` in line with ``machines``, in input order."""
    return _Pass(units, machines, now).run()


def reconcile(units: Sequence[UnitView], machines: Sequence[MachineView],
              now: float) -> Outcome:
    """plan(), when the next pass is due at the latest, and where Global units run.

    Global units are placed as ``scheduler.global_placements`` places them given the
    other units where the tasks put them: what the machines are handed. (The pass's own
    globals are placed before new units and may differ for one pass while a draining
    machine hands over its last unit: it keeps its globals until that unit has left.)
    """
    p = _Pass(units, machines, now)
    tasks = p.run()
    moved = {t.unit: t.machine for t in tasks}
    applied = [dataclasses.replace(u, machine=moved[u.name]) if u.name in moved else u
               for u in units]
    return Outcome(tasks, p.wake_at, global_placements(applied, machines))


def _limit(policy: Reschedule) -> str:
    return "unlimited" if policy.attempts is None else str(policy.attempts)


class _Pass:
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
        self.handoff: Dict[str, Optional[str]] = {  # as it ends up after this pass
            u.name: u.handoff for u in units if u.handoff}
        self._followers: Optional[Dict[str, List[str]]] = None  # target -> its followers
        self.cluster.expect(p for u in self.movable.values() for p in relations(u.req).globs)
        self.cluster.expect(p for u in units if u.req.is_global and u.desired != INACTIVE
                            for p in relations(u.req).globs)
        self.depth, self.stuck = machine_of_order(self.movable)
        self.stuck.update(replace_losers(self.movable, self.cluster))

    def order(self, u: UnitView) -> Tuple[int, str]:
        return (self.depth.get(u.name, 0), u.name)

    def run(self) -> List[Place]:
        self.keep()
        self.cluster.place_globals([u for u in self.units
                                    if u.req.is_global and u.desired != INACTIVE])
        self.take_over()
        self.place_rest()
        self.drain()
        return self.tasks()

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    # -- 1. keep ----------------------------------------------------------------------

    def keep(self) -> None:
        placed = sorted((u for u in self.movable.values() if u.machine is not None),
                        key=lambda u: u.name)
        for u in placed:
            host = self.cluster.by_name.get(u.machine or "")
            if host is None:
                self.left[u.name] = f"machine {u.machine} was removed"
            elif host.lost:
                if not self.fenced_there(u, host):
                    self.left[u.name] = f"machine {u.machine} was lost ({host.lost})"
            elif u.name in self.stuck:
                self.left[u.name] = self.stuck[u.name]
            elif host.draining and host.drain_overdue:
                self.left[u.name] = f"{host.name} is draining and its deadline passed"
            elif u.failed is not None and u.desired == LAUNCHED:
                self.after_failure(u)
        for r in placed:  # the replaced unit yields the machine, whatever the name order
            if r.name in self.left:
                continue
            for x in r.req.replaces:
                other = self.movable.get(x)
                if other is not None and other.machine == r.machine and x not in self.left:
                    self.left[x] = f"replaced by {r.name} on {r.machine}"
        for u in sorted(placed, key=self.order):
            if u.name in self.left:
                continue
            host = self.cluster.by_name[u.machine or ""]
            why = self.must_leave(u, host)
            if why:
                self.left[u.name] = why
            else:
                self.cluster.add(host, u.name, u.req)
                self.where[u.name] = host

    def fenced_there(self, u: UnitView, host: Host) -> bool:
        """A lost machine's unit with FenceAfterSec= stays placed there until the machine
        has been silent long enough that its agent has surely stopped it."""
        wait = u.req.fence_wait_s
        if wait is None or host.silent_s >= wait:
            return False
        self.noted[u.name] = (f"machine {host.name} was lost ({host.lost}); it moves once "
                              f"its fenced copy there is surely stopped ({wait:g}s of silence)")
        self.wake(self.now + wait - host.silent_s)
        return True

    def after_failure(self, u: UnitView) -> None:
        """Failed where it is placed: leave now, later (the policy's delay), or not at all
        (no attempts left in the interval); the unit's reason says which."""
        failed = u.failed
        assert failed is not None
        policy = u.req.reschedule
        window = policy.counted(u.failures, self.now)
        earlier = [f for f in window if f.at < failed.at]
        used = len(earlier)
        what = f"failed on {failed.machine}: {failed.reason}"
        if policy.attempts is not None and used >= policy.attempts:
            if policy.attempts == 0:
                self.noted[u.name] = f"{what}; RescheduleAttempts=0 keeps it there"
                return
            self.noted[u.name] = (f"{what}; not moved: all {policy.attempts} reschedule "
                                  f"attempts in {policy.interval()} used")
            self.wake(earlier[0].at + policy.interval_s)
            return
        attempt = f"reschedule attempt {used + 1} of {_limit(policy)}"
        due = failed.at + policy.delay(used)
        if self.now < due:
            self.noted[u.name] = f"{what}; {attempt} in {policy.delay(used):g}s"
            self.wake(due)
            return
        self.left[u.name] = f"{what} ({attempt})"
        self.avoid[u.name] = frozenset(f.machine for f in window)

    def must_leave(self, u: UnitView, host: Host) -> Optional[str]:
        req = u.req
        mismatch = static_mismatch(host.machine_id, host.metadata, host.capabilities, req)
        # a down machine's capabilities may be stale: a unit does not leave for them
        if mismatch is not None and (host.up or mismatch.rule != "capabilities"):
            return mismatch.departure(host.name)
        for t in req.machine_of:
            if self.where.get(t) is not host:
                return f"{t} is not on {host.name}"
        if not self.cluster.blocked(host, u.name, relations(req)):
            return None
        why = host.blocker(u.name, req) or "it conflicts with a unit there"
        return f"{why} on {host.name}"

    def take_over(self) -> None:
        """Replaces=: an unplaced unit takes the machine of the unit it replaces."""
        replacing = [u for u in self.movable.values() if u.req.replaces]
        for r in sorted(replacing, key=lambda u: u.name):
            if r.name in self.where or r.name in self.stuck:
                continue
            for x in r.req.replaces:
                host = self.where.get(x)
                if (host is None or x in r.req.machine_of or host.static_refusal(r.req)
                        or self.not_pinned_to(r, host)):
                    continue
                if any(self.where.get(t) is not host for t in r.req.machine_of):
                    continue
                self.cluster.remove(host, x)
                if not self.cluster.can_take(host, r.name, r.req):
                    self.cluster.add(host, x, self.movable[x].req)
                    continue
                del self.where[x]
                self.left[x] = f"replaced by {r.name} on {host.name}"
                for f in self.followers(x, host):
                    self.cluster.remove(host, f)
                    del self.where[f]
                    self.left[f] = f"following {x}, which {r.name} replaced on {host.name}"
                self.cluster.add(host, r.name, r.req)
                self.where[r.name] = host
                self.placed[r.name] = f"replaces {x} on {host.name}"
                break

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

    # -- 3. place ---------------------------------------------------------------------

    def place_rest(self) -> None:
        later: List[Tuple[UnitView, List[Host], str, Optional[Group]]] = []
        pending = sorted((u for u in self.movable.values() if u.name not in self.where),
                         key=self.order)
        for u in pending:
            if u.name in self.stuck:
                self.refused[u.name] = self.stuck[u.name]
                continue
            req = u.req
            if req.machine_of or req.machine_id:
                host, context = self.follow(u) if req.machine_of else self.pin(u)
                if host is None:
                    self.refused[u.name] = context
                    continue
                refusal = host.static_refusal(req) or self.not_pinned_to(u, host)
                if refusal:
                    self.refused[u.name] = f"{context}, which {refusal}"
                elif self.cluster.can_take(host, u.name, req):
                    self.put(u, host, context)
                else:
                    later.append((u, [host], context, None))
                continue
            group = self.cluster.group(req)
            if not group.members:
                self.refused[u.name] = group.refusal
                continue
            chosen = self.cluster.choose(group, u.name, req, self.avoid.get(u.name, frozenset()))
            if chosen is None:
                later.append((u, group.members, "", group))
                continue
            self.put(u, chosen, self.chosen_because(u, chosen, group))
        # explained once everything is placed, so the reason describes the final state
        # and the next pass, seeing that same state, computes the same words
        for u, hosts, context, whole in later:
            why = self.cluster.explain(u.name, u.req, hosts, whole)
            self.refused[u.name] = f"{context}, but {why}" if context else why

    def chosen_because(self, u: UnitView, host: Host, group: Group) -> str:
        n = len(group.members)
        why = f"least loaded of {n} candidate machine{'s' * (n != 1)}"
        if host.name in self.avoid.get(u.name, ()):
            return f"{why}; it failed there lately, but no other machine can take it"
        return why

    def put(self, u: UnitView, host: Host, why: str) -> None:
        self.cluster.add(host, u.name, u.req)
        self.where[u.name] = host
        self.placed[u.name] = why

    def not_pinned_to(self, u: UnitView, host: Host) -> Optional[str]:
        """A new placement honours MachineID= only on the one machine it resolves to: a
        prefix that has become ambiguous admits no machine (while a unit already placed
        where its prefix matches may stay, see must_leave)."""
        if not u.req.machine_id:
            return None
        pinned, why = self.cluster.resolve_machine_id(u.req.machine_id)
        if pinned is host:
            return None
        return (f"is not where MachineID={u.req.machine_id} points "
                f"({pinned.name if pinned else why})")

    def pin(self, u: UnitView) -> Tuple[Optional[Host], str]:
        value = u.req.machine_id or ""
        host, why = self.cluster.resolve_machine_id(value)
        return (host, f"MachineID={value} is {host.name}") if host else (None, why)

    def follow(self, u: UnitView) -> Tuple[Optional[Host], str]:
        """MachineOf=: the machine of all its targets, or why there is none yet."""
        found: List[Tuple[str, Host]] = []
        for t in u.req.machine_of:
            target = self.by_name.get(t)
            if target is None:
                return None, f"waiting for {t}, which does not exist"
            if target.req.is_global:
                return None, f"MachineOf={t} names a Global unit, which has no one machine"
            if target.desired == INACTIVE:
                return None, f"waiting for {t} to be placed (it is inactive)"
            host = self.where.get(t)
            if host is None:
                return None, f"waiting for {t} to be placed"
            found.append((t, host))
        if len({h.name for _, h in found}) > 1:
            spread = ", ".join(f"{t} on {h.name}" for t, h in found)
            return None, f"its MachineOf= targets are on different machines: {spread}"
        targets = " ".join(u.req.machine_of)
        return found[0][1], f"MachineOf={targets} puts it on {found[0][1].name}"

    # -- 5. drain ------------------------------------------------------------------------

    def drain(self) -> None:
        """Hand-offs: finish the ones whose new copy is ready, drop the ones whose old
        machine is gone, and start the next unit off each draining machine that has
        nothing in flight."""
        in_flight: Dict[str, List[str]] = {}
        for name, old in sorted(self.handoff.items()):
            u = self.by_name.get(name)
            host = self.cluster.by_name.get(old or "")
            if (u is None or old is None or host is None or host.lost
                    or u.desired == INACTIVE or self.where.get(name) is None
                    or self.where[name] is host or (host.draining and host.drain_overdue)):
                self.handoff[name] = None  # nothing (more) to hand over from there
            elif u.ready and u.machine == self.where[name].name and not u.old_running:
                self.handoff[name] = None  # the new copy is healthy and the old one gone
            else:  # not ready yet, or ready and its old copy stopping (it leaves the set)
                in_flight.setdefault(old, []).append(name)
        for host in self.cluster.draining:
            if host.drain_overdue or in_flight.get(host.name):
                continue
            staying = sorted((self.movable[n] for n, h in self.where.items()
                              if h is host and not self.movable[n].req.machine_of),
                             key=self.order)
            for u in staying:
                if self.hand_over(u, host):
                    break

    def hand_over(self, u: UnitView, host: Host) -> bool:
        """Move ``u`` (and what follows it by MachineOf=) off draining ``host``, its old
        copy running on until the new one is ready. False, with the reason noted, when
        no other machine can take it."""
        self.cluster.remove(host, u.name)
        del self.where[u.name]
        req = u.req
        if req.machine_id:
            target: Optional[Host] = None
            why = f"MachineID={req.machine_id} pins it there"
        else:
            group = self.cluster.group(req)
            target = self.cluster.choose(group, u.name, req) if group.members else None
            why = (self.chosen_because(u, target, group) if target is not None
                   else group.refusal or self.cluster.explain(u.name, req, group.members, group))
        if target is None:
            self.cluster.add(host, u.name, req)
            self.where[u.name] = host
            self.noted[u.name] = f"{host.name} is draining, but {why}"
            return False
        moved = [u.name, *self.followers(u.name, host)]
        for name in moved[1:]:
            self.cluster.remove(host, name)
        for name in moved:
            why_here = why if name == u.name else f"MachineOf= follows {u.name} there"
            self.put(self.movable[name], target, f"{host.name} is draining: its copy there "
                                                 f"runs until this one is healthy; {why_here}")
            self.handoff[name] = host.name
        return True

    # -- tasks ------------------------------------------------------------------------

    def tasks(self) -> List[Place]:
        out: List[Place] = []
        for u in self.units:
            if u.desired == INACTIVE or u.req.is_global:
                if u.machine is not None or u.handoff is not None:
                    out.append(Place(u.name, None, UNLOADED if u.desired == INACTIVE else GLOBAL))
                continue
            host = self.where.get(u.name)
            prefix = self.left.get(u.name)
            handoff = self.handoff.get(u.name)
            if host is not None:
                if u.name not in self.placed:  # kept where it is
                    reason = self.noted.get(u.name, u.reason)
                    if reason != u.reason or handoff != u.handoff:
                        out.append(Place(u.name, host.name, reason, handoff))
                    continue
                reason = f"{prefix}; {self.placed[u.name]}" if prefix else self.placed[u.name]
                retry = host.name == u.machine and u.failed is not None and prefix is not None
                if host.name != u.machine or reason != u.reason or handoff != u.handoff or retry:
                    out.append(Place(u.name, host.name, reason, handoff, retry))
                continue
            why = self.refused[u.name]
            if u.machine is None and handoff == u.handoff and (
                    u.reason == why or u.reason.endswith("; " + why)):
                continue  # still unplaced for the same reason (keep "machine h1 was removed; ...")
            out.append(Place(u.name, None, f"{prefix}; {why}" if prefix else why, handoff))
        return out

