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

Failures and drains (fleet had neither) are decided in the same pass, each in its own
module on the pass's state (engine/pass_state.py): failed units and fenced ones while
keeping (engine/failover.py: their reschedule policy; a lost machine's fenced copy),
hand-overs off draining machines after placing, as step 5 (engine/handoff.py), and of
units whose machine's metadata no longer matches (step 1 keeps them there for it).

6. **globals, settled**: where each Global unit runs once the pass is done, computed once
   per pass, in the pass (engine/cluster.py ``settle_globals``): where step 2 put it,
   except on a machine a unit left after step 2 (a hand-over, a Replaces= take-over),
   where it is placed again given what stays there. A draining machine that handed over
   its last unit in this pass gives its globals up in this pass; room or a conflict
   freed lets one in. The result equals placing every Global unit after all the other
   units where the tasks put them (``scheduler.global_placements`` on the applied
   units), which is what the machines are handed (``Outcome.globals``).

Time enters only as ``now`` and the machines' silences; the outcome says when the next
pass is due (a delay ends, a fence expires), since nothing else would wake the engine.

Circular Replaces= (fleet refuses it; its functional test wants one unit of the two to
run): in a cycle, one unit runs (the placed one whose name sorts first, else the first by
name) and the rest wait with a reason, the same answer every pass, so nothing flaps
(engine/ordering.py, with the MachineOf= order).

[Unit] Requires=/BindsTo=/After=/Before= between fleet units do not change where a unit
goes: a unit they hold (engine/dependencies.py) is placed as usual, its reason says why
it is held, and the loop hands it to its machine as stopped (``Outcome.held``).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from fleetd.engine.capacity import Host
from fleetd.engine.cluster import Group
from fleetd.engine.constraints import relations, static_mismatch
from fleetd.engine.failover import LOST, after_failure, fenced_there
from fleetd.engine.handoff import OVERDUE, drain, rematch, renew
from fleetd.engine.pass_state import PassState
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE, LAUNCHED

UNLOADED = "unloaded: desired state is inactive"
GLOBAL = "Global=true: runs on every matching machine, so it is not placed on one"
# a placed unit that [Unit] dependencies hold stopped: its placement reason, this, and why
HELD = "; held: "
# why a placed unit leaves its machine to a unit that Replaces= it (steps 1 and 3)
REPLACED = "replaced by {by} on {machine}"


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
    # launched units that [Unit] dependencies hold stopped, and why (engine/dependencies.py)
    held: Dict[str, str] = dataclasses.field(default_factory=dict)


def plan(units: Sequence[UnitView], machines: Sequence[MachineView],
         now: float = 0.0) -> List[Place]:
    """The placement changes that bring ``units`` in line with ``machines``, in input order."""
    return _run(PassState(units, machines, now))


def reconcile(units: Sequence[UnitView], machines: Sequence[MachineView],
              now: float) -> Outcome:
    """plan(), when the next pass is due at the latest, and where Global units run.

    Global units run where the pass leaves them (step 6): once the tasks are applied,
    each runs on every machine that would take it after all the other units, so the
    machines are handed what the next pass starts from.
    """
    p = PassState(units, machines, now)
    tasks = _run(p)
    return Outcome(tasks, p.wake_at, p.globals, p.held)


def _run(p: PassState) -> List[Place]:
    """The steps in order, then the tasks that bring the units to where they ended up."""
    keep(p)
    p.cluster.place_globals([u for u in p.units if u.req.is_global and u.desired != INACTIVE])
    take_over(p)
    place_rest(p)
    drain(p)
    renew(p)  # rolling updates: a new copy elsewhere, where it may go (engine/rollout.py)
    rematch(p)  # machines whose metadata changed hand over what no longer matches
    p.globals = p.cluster.settle_globals()
    return tasks(p)


# -- 1. keep --------------------------------------------------------------------------

def keep(p: PassState) -> None:
    placed = sorted((u for u in p.movable.values() if u.machine is not None),
                    key=lambda u: u.name)
    for u in placed:
        host = p.cluster.by_name.get(u.machine or "")
        if host is None:
            p.left[u.name] = f"machine {u.machine} was removed"
        elif host.lost:
            if not fenced_there(p, u, host):
                p.left[u.name] = LOST.format(machine=host.name, why=host.lost)
        elif u.name in p.stuck:
            p.left[u.name] = p.stuck[u.name]
        elif host.draining and host.drain_overdue:
            p.left[u.name] = OVERDUE.format(machine=host.name)
        elif u.failed is not None and u.desired == LAUNCHED:
            after_failure(p, u)
    for r in placed:  # the replaced unit yields the machine, whatever the name order
        if r.name in p.left:
            continue
        for x in r.req.replaces:
            other = p.movable.get(x)
            if other is not None and other.machine == r.machine and x not in p.left:
                p.left[x] = REPLACED.format(by=r.name, machine=r.machine)
    for u in sorted(placed, key=p.order):
        if u.name in p.left:
            continue
        host = p.cluster.by_name[u.machine or ""]
        why = must_leave(p, u, host)
        if why and hands_over(p, u, host):
            p.rematch[u.name] = why  # it stays for now: step 5 moves it (engine/handoff.py)
            why = None
        if why:
            p.left[u.name] = why
        else:
            p.cluster.add(host, u.name, u.req)
            p.where[u.name] = host


def must_leave(p: PassState, u: UnitView, host: Host) -> Optional[str]:
    req = u.req
    mismatch = static_mismatch(host.name, host.machine_id, host.metadata, host.capabilities,
                               req)
    # a down machine's capabilities may be stale: a unit does not leave for them
    if mismatch is not None and (host.up or mismatch.rule != "capabilities"):
        return mismatch.departure(host.name)
    for t in req.machine_of:
        if p.where.get(t) is not host:
            return f"{t} is not on {host.name}"
    if not p.cluster.blocked(host, u.name, relations(req)):
        return None
    why = host.blocker(u.name, req) or "it conflicts with a unit there"
    return f"{why} on {host.name}"


def hands_over(p: PassState, u: UnitView, host: Host) -> bool:
    """Whether ``u``, which must leave ``host``, leaves only because the machine's
    metadata changed (``fleetctl machine set-metadata``) and can hand over as a drain
    does: it runs there (launched, on a machine that is up), is not pinned there
    (MachineID=) nor following a unit (MachineOf=: it goes with its target), and
    nothing but MachineMetadata= drives it off."""
    if (not host.up or u.desired != LAUNCHED or u.req.machine_id or u.req.machine_of
            or u.failed is not None or not u.req.metadata):
        return False
    anywhere = dataclasses.replace(u, req=dataclasses.replace(u.req, metadata=()))
    return must_leave(p, anywhere, host) is None


# -- 3. Replaces= ---------------------------------------------------------------------

def take_over(p: PassState) -> None:
    """Replaces=: an unplaced unit takes the machine of the unit it replaces."""
    replacing = [u for u in p.movable.values() if u.req.replaces]
    for r in sorted(replacing, key=lambda u: u.name):
        if r.name in p.where or r.name in p.stuck:
            continue
        for x in r.req.replaces:
            host = p.where.get(x)
            if (host is None or x in r.req.machine_of or host.static_refusal(r.req)
                    or not_pinned_to(p, r, host)):
                continue
            if any(p.where.get(t) is not host for t in r.req.machine_of):
                continue
            p.cluster.remove(host, x)
            if not p.cluster.can_take(host, r.name, r.req):
                p.cluster.add(host, x, p.movable[x].req)
                continue
            del p.where[x]
            p.left[x] = REPLACED.format(by=r.name, machine=host.name)
            for f in p.followers(x, host):
                p.cluster.remove(host, f)
                del p.where[f]
                p.left[f] = f"following {x}, which {r.name} replaced on {host.name}"
            p.cluster.add(host, r.name, r.req)
            p.where[r.name] = host
            p.placed[r.name] = f"replaces {x} on {host.name}"
            break


# -- 4. place -------------------------------------------------------------------------

def place_rest(p: PassState) -> None:
    later: List[Tuple[UnitView, List[Host], str, Optional[Group]]] = []
    pending = sorted((u for u in p.movable.values() if u.name not in p.where),
                     key=p.order)
    for u in pending:
        if u.name in p.stuck:
            p.refused[u.name] = p.stuck[u.name]
            continue
        req = u.req
        if req.machine_of or req.machine_id:
            host, context = follow(p, u) if req.machine_of else pin(p, u)
            if host is None:
                p.refused[u.name] = context
                continue
            refusal = host.static_refusal(req) or not_pinned_to(p, u, host)
            if refusal:
                p.refused[u.name] = f"{context}, which {refusal}"
            elif p.cluster.can_take(host, u.name, req):
                p.put(u, host, context)
            else:
                later.append((u, [host], context, None))
            continue
        group = p.cluster.group(req)
        if not group.members:
            p.refused[u.name] = group.refusal
            continue
        chosen = p.cluster.choose(group, u.name, req, p.avoid.get(u.name, frozenset()))
        if chosen is None:
            later.append((u, group.members, "", group))
            continue
        p.put(u, chosen, p.chosen_because(u, chosen, group))
    # explained once everything is placed, so the reason describes the final state
    # and the next pass, seeing that same state, computes the same words
    for u, hosts, context, whole in later:
        why = p.cluster.explain(u.name, u.req, hosts, whole)
        p.refused[u.name] = f"{context}, but {why}" if context else why


def not_pinned_to(p: PassState, u: UnitView, host: Host) -> Optional[str]:
    """A new placement honours MachineID= only on the one machine it resolves to: a
    prefix that has become ambiguous admits no machine (while a unit already placed
    where its prefix matches may stay, see must_leave)."""
    if not u.req.machine_id:
        return None
    pinned, why = p.cluster.resolve_machine_id(u.req.machine_id)
    if pinned is host:
        return None
    return (f"is not where MachineID={u.req.machine_id} points "
            f"({pinned.name if pinned else why})")


def pin(p: PassState, u: UnitView) -> Tuple[Optional[Host], str]:
    value = u.req.machine_id or ""
    host, why = p.cluster.resolve_machine_id(value)
    return (host, f"MachineID={value} is {host.name}") if host else (None, why)


def follow(p: PassState, u: UnitView) -> Tuple[Optional[Host], str]:
    """MachineOf=: the machine of all its targets, or why there is none yet."""
    found: List[Tuple[str, Host]] = []
    for t in u.req.machine_of:
        target = p.by_name.get(t)
        if target is None:
            return None, f"waiting for {t}, which does not exist"
        if target.req.is_global:
            return None, f"MachineOf={t} names a Global unit, which has no one machine"
        if target.desired == INACTIVE:
            return None, f"waiting for {t} to be placed (it is inactive)"
        host = p.where.get(t)
        if host is None:
            return None, f"waiting for {t} to be placed"
        found.append((t, host))
    if len({h.name for _, h in found}) > 1:
        spread = ", ".join(f"{t} on {h.name}" for t, h in found)
        return None, f"its MachineOf= targets are on different machines: {spread}"
    targets = " ".join(u.req.machine_of)
    return found[0][1], f"MachineOf={targets} puts it on {found[0][1].name}"


# -- tasks ----------------------------------------------------------------------------

def tasks(p: PassState) -> List[Place]:
    out: List[Place] = []
    for u in p.units:
        if u.desired == INACTIVE or u.req.is_global:
            if u.machine is not None or u.handoff is not None:
                out.append(Place(u.name, None, UNLOADED if u.desired == INACTIVE else GLOBAL))
            continue
        host = p.where.get(u.name)
        prefix = p.left.get(u.name)
        handoff = p.handoff.get(u.name)
        if host is not None:
            if u.name not in p.placed:  # kept where it is
                reason = holding(p, u.name, p.noted.get(u.name, u.reason))
                if reason != u.reason or handoff != u.handoff:
                    out.append(Place(u.name, host.name, reason, handoff))
                continue
            reason = holding(p, u.name, f"{prefix}; {p.placed[u.name]}" if prefix
                             else p.placed[u.name])
            retry = host.name == u.machine and u.failed is not None and prefix is not None
            if host.name != u.machine or reason != u.reason or handoff != u.handoff or retry:
                out.append(Place(u.name, host.name, reason, handoff, retry))
            continue
        why = p.refused[u.name]
        if u.machine is None and handoff == u.handoff and (
                u.reason == why or u.reason.endswith("; " + why)):
            continue  # still unplaced for the same reason (keep "machine h1 was removed; ...")
        out.append(Place(u.name, None, f"{prefix}; {why}" if prefix else why, handoff))
    return out


def holding(p: PassState, name: str, reason: str) -> str:
    """A placed unit's reason, saying why [Unit] dependencies hold it stopped, if they
    do (after ``HELD``, which replaces what an earlier pass said after it)."""
    base = reason.split(HELD)[0]
    why = p.held.get(name)
    return f"{base}{HELD}{why}" if why else base
