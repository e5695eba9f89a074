"""Refusal explanations: why a unit goes nowhere, in the user's terms.

A unit left unplaced carries its reason (``fleetctl list-unit-files``), so the words
matter: who it must stay apart from, or how much room it needs and the most any
candidate has ("no machine with 2.0 GiB free; h1 has 1.2 GiB"), or which static rule
no machine that is up passes. Pure functions over the hosts of a pass; the cluster
(engine/cluster.py) calls them and memoizes what identical units share.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

from fleetd.engine.capacity import GiB, Host, MiB, TiB
from fleetd.engine.constraints import (
    Metadata,
    Relations,
    capabilities_text,
    metadata_matches,
    metadata_text,
    some,
)
from fleetd.units.xfleet import Requirements

Blocked = Callable[[Host, str, Relations], bool]  # must a resident and the unit stay apart?


def size(n: int) -> str:
    if n >= TiB:
        return f"{n / TiB:.1f} TiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n} bytes"


def cpus(milli: int) -> str:
    return f"{milli / 1000:.1f} CPUs"


def no_candidates(hosts: Sequence[Host], up: Sequence[Host], draining: Sequence[Host],
                  metadata: Metadata, caps: Tuple[str, ...]) -> str:
    """Why no machine passes the static filters (MachineMetadata=, capabilities), or
    takes new units at all."""
    if not hosts:
        return "no machines are registered"
    if not up and draining:
        return (f"no machine takes new units ({some([h.name for h in draining])} "
                f"draining, {len(hosts) - len(draining)} more not up)")
    if not up:
        return f"no machine is up ({len(hosts)} registered, none connected)"
    if metadata:
        want = metadata_text(metadata)
        if not any(metadata_matches(h.metadata, metadata) for h in up):
            down = [h.name for h in hosts if metadata_matches(h.metadata, metadata)]
            if down:
                state = "matches but is" if len(down) == 1 else "match but are"
                return (f"no machine that is up matches MachineMetadata={want} "
                        f"({some(down)} {state} not up)")
            return f"no machine matches MachineMetadata={want}"
        return f"no machine matching MachineMetadata={want} has {capabilities_text(caps)}"
    return f"no machine that is up has {capabilities_text(caps)}"


def why_not(name: str, req: Requirements, rel: Relations, milli: int,
            candidates: Sequence[Host], blocked_by: Blocked) -> str:
    """Why none of ``candidates`` (all passing the static filters) can take the unit."""
    blocked: List[Host] = []
    roomy_blocked = 0
    open_hosts: List[Host] = []
    for h in candidates:
        if blocked_by(h, name, rel):
            blocked.append(h)
            roomy_blocked += h.fits(req, milli)
        else:
            open_hosts.append(h)
    if not open_hosts:
        # name who is in the way on the first few only: each answer sorts residents
        shown = [(h.name, h.blocker(name, req) or "a unit there conflicts with it")
                 for h in blocked[:3]]
        if len(blocked) == 1:
            return f"{shown[0][1]} on {shown[0][0]}"
        listed = ", ".join(f"{h} ({why})" for h, why in shown)
        if len(blocked) > 3:
            listed += f" and {len(blocked) - 3} more"
        return f"every candidate machine runs a unit it must stay apart from: {listed}"
    why = short_of_room(req, milli, open_hosts, alone=len(candidates) == 1)
    if roomy_blocked:
        verbs = "has room but runs" if roomy_blocked == 1 else "have room but run"
        why += f"; {roomy_blocked} more {verbs} a unit it must stay apart from"
    return why


def short_of_room(req: Requirements, milli: int, hosts: Sequence[Host], alone: bool) -> str:
    """How much room the unit needs, and the most any of ``hosts`` has."""
    wants_mem = bool(req.memory_bytes or req.memory_percent)
    if wants_mem and not any(h.mem_cap for h in hosts):
        return "no candidate machine reports its memory, and the unit reserves memory"
    if milli and not any(h.cpu_cap for h in hosts):
        return "no candidate machine reports its CPUs, and the unit reserves CPU"

    def ratio(h: Host) -> Tuple[float, int]:
        parts: List[float] = []
        if wants_mem:
            need = h.memory_need(req)
            free = max(0, h.mem_cap - h.mem_used) if h.mem_cap else 0
            parts.append(free / need if need else (1.0 if h.mem_cap else 0.0))
        if milli:
            parts.append(max(0, h.cpu_cap - h.cpu_used) / milli)
        return (min(parts) if parts else 0.0, -h.index)

    best = max(hosts, key=ratio)
    need_parts: List[str] = []
    have_parts: List[str] = []
    if wants_mem:
        free = max(0, best.mem_cap - best.mem_used)
        if req.memory_percent and not req.memory_bytes:
            need_parts.append(f"{req.memory_percent:g}% of its memory")
            have_parts.append(f"{size(free)} of {size(best.mem_cap)}")
        else:
            need_parts.append(size(best.memory_need(req)))
            have_parts.append(size(free))
    if milli:
        need_parts.append(cpus(milli))
        have_parts.append(cpus(max(0, best.cpu_cap - best.cpu_used)))
    need, have = " and ".join(need_parts), " and ".join(have_parts)
    if alone:
        return f"{best.name} has only {have} free, it needs {need}"
    return f"no machine with {need} free; {best.name} has {have}"
