"""A machine's metadata changed (``fleetctl machine set-metadata``): the units whose
MachineMetadata= it no longer matches move with a hand-off (engine/handoff.py
``rematch``), their old copies running until the new ones are healthy; the units that
still match stay. Pure: the reconciler on tables, as test_engine_plan.py."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from fleetd.engine.reconciler import Place, plan
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import LAUNCHED, LOADED
from fleetd.units.xfleet import Requirements

HANDS_OVER = ": its copy there runs until this one is healthy"


def machine(name: str, up: bool = True, **metadata: str) -> MachineView:
    return MachineView(name=name, machine_id=f"{name}-0123456789", up=up, metadata=metadata,
                       cpus=4.0, memory_bytes=8 << 30)


def unit(name: str, machine: Optional[str] = None, desired: str = LAUNCHED,
         ready: bool = True, **req: object) -> UnitView:
    return UnitView(name=name, desired=desired, machine=machine, reason="", ready=ready,
                    req=Requirements(**req))  # type: ignore[arg-type]


def role(*values: str) -> object:
    return (("role", tuple(values)),)


def after(units: Sequence[UnitView], tasks: Sequence[Place]) -> List[UnitView]:
    """The tasks applied, as the loop records them (the hand-off too)."""
    done = {t.unit: t for t in tasks}
    return [dataclasses.replace(u, machine=done[u.name].machine, reason=done[u.name].reason,
                                handoff=done[u.name].handoff, ready=False,
                                old_running=done[u.name].handoff is not None)
            if u.name in done else u for u in units]


# h1 was role=web,db; set-metadata made it role=web only
MACHINES = [machine("h1", role="web"), machine("h2", role="db"), machine("h3", role="web")]


def test_only_the_units_that_no_longer_match_move_each_with_a_hand_off() -> None:
    units = [unit("db1", "h1", metadata=role("db")), unit("db2", "h1", metadata=role("db")),
             unit("web", "h1", metadata=role("web")), unit("any", "h1"),
             unit("either", "h1", metadata=role("web", "db"))]
    tasks = plan(units, MACHINES)
    assert [(t.unit, t.machine, t.handoff) for t in tasks] == [
        ("db1", "h2", "h1"), ("db2", "h2", "h1")]
    assert tasks[0].reason == ("h1 no longer matches MachineMetadata=role=db" + HANDS_OVER
                               + "; least loaded of 1 candidate machine")


def test_the_hand_off_ends_once_the_new_copy_is_ready_and_the_old_one_gone() -> None:
    units = after([unit("db1", "h1", metadata=role("db"))],
                  plan([unit("db1", "h1", metadata=role("db"))], MACHINES))
    assert plan(units, MACHINES) == []  # not ready yet: the old copy runs on
    ready = [dataclasses.replace(units[0], ready=True)]
    assert plan(ready, MACHINES) == []  # ready, its old copy stopping: still handing over
    gone = [dataclasses.replace(units[0], ready=True, old_running=False)]
    assert [(t.machine, t.handoff) for t in plan(gone, MACHINES)] == [("h2", None)]


def test_a_unit_no_other_machine_takes_leaves_at_once() -> None:
    """The machine no longer admits it: as before hand-overs, it stops there."""
    tasks = plan([unit("x", "h1", metadata=role("cache"))], MACHINES)
    assert tasks == [Place("x", None, "h1 no longer matches MachineMetadata=role=cache; no "
                                      "machine matches MachineMetadata=role=cache")]


def test_what_runs_nowhere_or_is_pinned_moves_without_a_hand_off() -> None:
    units = [unit("loaded", "h1", desired=LOADED, metadata=role("db")),
             unit("pinned", "h1", machine_id="h1-0123", metadata=role("db"))]
    tasks = {t.unit: t for t in plan(units, MACHINES)}
    assert (tasks["loaded"].machine, tasks["loaded"].handoff) == ("h2", None)
    assert (tasks["pinned"].machine, tasks["pinned"].handoff) == (None, None)


def test_a_machine_that_is_down_hands_nothing_over() -> None:
    machines = [machine("h1", up=False, role="web"), machine("h2", role="db")]
    tasks = plan([unit("db1", "h1", metadata=role("db"))], machines)
    assert [(t.machine, t.handoff) for t in tasks] == [("h2", None)]


def test_what_follows_it_by_machine_of_goes_with_it() -> None:
    units = [unit("db1", "h1", metadata=role("db")),
             unit("side", "h1", machine_of=("db1",))]
    tasks = {t.unit: t for t in plan(units, MACHINES)}
    assert (tasks["db1"].machine, tasks["db1"].handoff) == ("h2", "h1")
    assert (tasks["side"].machine, tasks["side"].handoff) == ("h2", "h1")


def test_its_followers_wait_when_it_has_nowhere_to_go() -> None:
    units = [unit("c", "h1", metadata=role("cache")),
             unit("side", "h1", machine_of=("c",))]
    tasks = {t.unit: t for t in plan(units, MACHINES)}
    assert tasks["c"].machine is None and tasks["side"].machine is None
    assert tasks["side"].reason == "c is not on h1; waiting for c to be placed"
