"""Drains: a draining machine hands its units over one at a time, without a gap.

Fleet had no drain; a pass decides it after placing (engine/reconciler.py, step 5).
A draining machine takes no new units (engine/capacity.py refuses them) and hands its
units over one at a time: the unit is placed elsewhere while its old copy keeps running
(the task's ``handoff``); once the new copy is running and healthy the old one stops,
and once it is gone the next unit goes. After the drain's deadline whatever is left moves
at once (the keep step lets it go, saying ``OVERDUE``), or stops if it fits nowhere.

The same hand-off moves a unit a rollout gave new content (``renew``) and a unit whose
machine's metadata no longer matches its MachineMetadata= (``rematch``: ``fleetctl
machine set-metadata``), where their constraints allow.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from fleetd.engine.capacity import Host
from fleetd.engine.pass_state import PassState
from fleetd.engine.views import UnitView
from fleetd.registry.base import INACTIVE

# why a unit leaves a draining machine at once: the drain's deadline passed
OVERDUE = "{machine} is draining and its deadline passed"
# why a unit given new content by a rollout runs on another machine (engine/rollout.py)
RENEWED = "new content: its copy on {machine} runs the old one until this one is healthy"


def drain(p: PassState) -> None:
    """Hand-offs: finish the ones whose new copy is ready, drop the ones whose old
    machine is gone, and start the next unit off each draining machine that has
    nothing in flight."""
    in_flight: Dict[str, List[str]] = {}
    for name, old in sorted(p.handoff.items()):
        u = p.by_name.get(name)
        host = p.cluster.by_name.get(old or "")
        if (u is None or old is None or host is None or host.lost
                or u.desired == INACTIVE or p.where.get(name) is None
                or p.where[name] is host or (host.draining and host.drain_overdue)):
            p.handoff[name] = None  # nothing (more) to hand over from there
        elif u.ready and u.machine == p.where[name].name and not u.old_running:
            p.handoff[name] = None  # the new copy is healthy and the old one gone
        else:  # not ready yet, or ready and its old copy stopping (it leaves the set)
            in_flight.setdefault(old, []).append(name)
    for host in p.cluster.draining:
        if host.drain_overdue or in_flight.get(host.name):
            continue
        staying = sorted((p.movable[n] for n, h in p.where.items()
                          if h is host and not p.movable[n].req.machine_of),
                         key=p.order)
        for u in staying:
            if hand_over(p, u, host):
                break


def renew(p: PassState) -> None:
    """Rolling updates: a unit a rollout gave new content (``UnitView.renew``) starts it
    on another machine, its old copy running on until the new one is healthy, as a
    drain's hand-off does, where its constraints allow; else it changes in place (no
    other machine takes it, it is pinned, or units follow it by MachineOf=)."""
    for name in sorted(n for n, u in p.movable.items() if u.renew):
        u, host = p.movable[name], p.where.get(name)
        if (host is None or p.handoff.get(name) or name in p.placed or u.req.machine_id
                or u.req.machine_of or next(p.followers(name, host), None) is not None):
            continue
        hand_over(p, u, host, RENEWED)


def rematch(p: PassState) -> None:
    """``fleetctl machine set-metadata``: a unit whose machine no longer matches its
    MachineMetadata= (kept there by the keep step: reconciler ``hands_over``) starts on
    a machine that matches while its old copy runs on, as a drain's hand-off does; all
    such units at once (each keeps its own old copy running), not one at a time as a
    drain goes: the machine is not emptied, only what no longer belongs there moves.
    A unit no other machine can take leaves at once, as it did before hand-overs: the
    machine no longer admits it."""
    for name, why in sorted(p.rematch.items()):
        u, host = p.movable[name], p.where.get(name)
        if host is None or p.handoff.get(name):
            continue  # a drain or a rollout moved it in this pass already
        escaped = why.replace("{", "{{").replace("}", "}}")
        if hand_over(p, u, host, f"{escaped}: its copy there runs until this one is healthy"):
            continue
        leaving = [name, *p.followers(name, host)]
        for f in leaving:
            p.cluster.remove(host, f)
            del p.where[f]
        group = p.cluster.group(u.req)
        p.left[name] = why
        p.refused[name] = (p.cluster.explain(name, u.req, group.members, group)
                           if group.members else group.refusal)
        for f in leaving[1:]:  # what follows it by MachineOf= waits for it, as in place_rest
            p.left[f] = f"{name} is not on {host.name}"
            p.refused[f] = f"waiting for {name} to be placed"


def hand_over(p: PassState, u: UnitView, host: Host, because: Optional[str] = None) -> bool:
    """Move ``u`` (and what follows it by MachineOf=) off draining ``host``, its old
    copy running on until the new one is ready. False, with the reason noted, when
    no other machine can take it. ``because``: a rollout's move (RENEWED), not a
    drain's: nothing is noted when it stays."""
    p.cluster.remove(host, u.name)
    del p.where[u.name]
    req = u.req
    if req.machine_id:
        target: Optional[Host] = None
        why = f"MachineID={req.machine_id} pins it there"
    else:
        group = p.cluster.group(req)
        target = (p.cluster.choose(group, u.name, req, frozenset({host.name}))
                  if group.members else None)
        if target is host:  # taken only as the last resort: no other machine can
            target = None
        why = (p.chosen_because(u, target, group) if target is not None
               else group.refusal or p.cluster.explain(u.name, req, group.members, group))
    if target is None:
        p.cluster.add(host, u.name, req)
        p.where[u.name] = host
        if because is None:
            p.noted[u.name] = f"{host.name} is draining, but {why}"
        return False
    moved = [u.name, *p.followers(u.name, host)]
    for name in moved[1:]:
        p.cluster.remove(host, name)
    for name in moved:
        why_here = why if name == u.name else f"MachineOf= follows {u.name} there"
        first = (because.format(machine=host.name) if because else
                 f"{host.name} is draining: its copy there runs until this one is healthy")
        p.put(p.movable[name], target, f"{first}; {why_here}")
        p.handoff[name] = host.name
    return True
