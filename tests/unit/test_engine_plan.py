"""fleetd.engine.reconciler.plan: placement tables, fleet's scheduling scenarios, properties.

The scenario tests follow fleet's functional tests (functional/scheduling_test.go:
TestScheduleMachineOf, TestScheduleConflicts, TestScheduleOneWayConflict,
TestScheduleReplace, TestScheduleCircularReplace, TestScheduleConditionMachineID,
TestScheduleGlobalUnits, and the metadata@.service template fixture) on the pure plan.
The properties check that applying plans converges within a few passes and that no
pass ever breaks a hard constraint.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.engine.reconciler import GLOBAL, UNLOADED, Place, plan, reconcile
from fleetd.engine.scheduler import GiB, MiB, apart, global_placements, millicpus
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE, LAUNCHED, LOADED
from fleetd.units.xfleet import Requirements


def machine(name: str, up: bool = True, machine_id: Optional[str] = None, cpus: float = 4.0,
            memory: int = 8 * GiB, caps: Sequence[str] = (), **metadata: str) -> MachineView:
    return MachineView(name=name, machine_id=machine_id or f"{name}-0123456789", up=up,
                       metadata=metadata, cpus=cpus, memory_bytes=memory,
                       capabilities=frozenset(caps))


def unit(name: str, desired: str = LAUNCHED, machine: Optional[str] = None, reason: str = "",
         **req: object) -> UnitView:
    return UnitView(name=name, desired=desired, machine=machine, reason=reason,
                    req=Requirements(**req))  # type: ignore[arg-type]


def meta(**kv: str) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    return tuple((k, tuple(v.split("|"))) for k, v in sorted(kv.items()))


def apply(units: Sequence[UnitView], tasks: Sequence[Place]) -> List[UnitView]:
    """What the loop does with a plan: record each task's machine and reason."""
    done = {t.unit: t for t in tasks}
    return [dataclasses.replace(u, machine=done[u.name].machine, reason=done[u.name].reason)
            if u.name in done else u for u in units]


def settle(units: Sequence[UnitView], machines: Sequence[MachineView],
           rounds: int = 4) -> List[UnitView]:
    """Plan and apply until nothing changes; fail if that takes more than ``rounds``."""
    current = list(units)
    for _ in range(rounds):
        tasks = plan(current, machines)
        if not tasks:
            return current
        assert not violations(apply(current, tasks), machines, placed_before=current)
        current = apply(current, tasks)
    raise AssertionError(f"no fixed point after {rounds} rounds: {plan(current, machines)}")


def where(units: Sequence[UnitView]) -> Dict[str, Optional[str]]:
    return {u.name: u.machine for u in units}


def reasons(units: Sequence[UnitView]) -> Dict[str, str]:
    return {u.name: u.reason for u in units}


def violations(units: Sequence[UnitView], machines: Sequence[MachineView],
               placed_before: Sequence[UnitView] = (), capacity: bool = True) -> List[str]:
    """Every hard constraint a placement state breaks (empty: none)."""
    out: List[str] = []
    by_machine = {m.name: m for m in machines}
    before = where(placed_before)
    by_name = {u.name: u for u in units}
    placed = [u for u in units if u.machine is not None]
    for u in placed:
        m = by_machine.get(u.machine or "")
        if u.desired == INACTIVE or u.req.is_global or m is None:
            out.append(f"{u.name} placed on {u.machine} though inactive/global/unknown machine")
            continue
        if before.get(u.name, u.machine) != u.machine and not m.up:
            out.append(f"{u.name} newly placed on {m.name}, which is not up")
        if u.req.machine_id and not (m.machine_id or "").startswith(u.req.machine_id):
            out.append(f"{u.name} on {m.name} breaks MachineID={u.req.machine_id}")
        if any(m.metadata.get(k) not in vs for k, vs in u.req.metadata):
            out.append(f"{u.name} on {m.name} breaks MachineMetadata")
        if m.up and not set(u.req.capabilities) <= m.capabilities:
            out.append(f"{u.name} on {m.name} lacks capabilities")
        for t in u.req.machine_of:
            target = by_name.get(t)
            if target is None or target.machine != u.machine:
                out.append(f"{u.name} on {m.name} but its MachineOf target {t} is not")
    residents: Dict[str, List[UnitView]] = {}
    for u in placed:
        residents.setdefault(u.machine or "", []).append(u)
    for g, targets in global_placements(units, machines).items():
        for t in targets:
            residents.setdefault(t, []).append(by_name[g])
    for name, here in residents.items():
        for i, a in enumerate(here):
            for b in here[i + 1:]:
                why = apart(a.name, a.req, b.name, b.req)
                if why:
                    out.append(f"{a.name} and {b.name} share {name}: {why}")
        m = by_machine.get(name)
        if capacity and m is not None:
            mem = sum(u.req.memory_bytes + int(m.memory_bytes * u.req.memory_percent / 100)
                      for u in here)
            cpu = sum(millicpus(u.req.cpus) for u in here)
            if any(u.req.memory_bytes or u.req.memory_percent for u in here) and \
                    mem > m.memory_bytes:
                out.append(f"{name} memory overcommitted: {mem} > {m.memory_bytes}")
            if any(u.req.cpus for u in here) and cpu > millicpus(m.cpus):
                out.append(f"{name} CPU overcommitted: {cpu} > {millicpus(m.cpus)}")
    for cycle in _replace_cycles(units):
        running = [n for n in cycle if by_name[n].machine is not None]
        if len(running) > 1:
            out.append(f"circular Replaces= {cycle} has {running} placed")
    return out


def _replace_cycles(units: Sequence[UnitView]) -> List[Set[str]]:
    active = {u.name: u for u in units if u.desired != INACTIVE and not u.req.is_global}
    reach: Dict[str, Set[str]] = {}
    for n in active:
        seen: Set[str] = set()
        todo = [x for x in active[n].req.replaces if x in active]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo += [y for y in active[x].req.replaces if y in active]
        reach[n] = seen
    cycles = {frozenset({n} | {x for x in reach[n] if n in reach[x]}) for n in active
              if n in reach[n]}
    return [set(c) for c in cycles]


NONE_UP = "no machine is up ({} registered, none connected)"
ONE = "least loaded of 1 candidate machine"


def least(n: int) -> str:
    return f"least loaded of {n} candidate machines"


# --- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(("units", "machines", "expected"), [
    pytest.param([], [], [], id="nothing"),
    pytest.param([], [machine("a")], [], id="no units"),
    pytest.param([unit("u")], [machine("a")], [Place("u", "a", ONE)], id="launched placed"),
    pytest.param([unit("u", LOADED)], [machine("a")], [Place("u", "a", ONE)],
                 id="loaded placed too"),
    pytest.param([unit("u")], [], [Place("u", None, "no machines are registered")],
                 id="no machine registered"),
    pytest.param([unit("u", reason="no machines are registered")], [], [],
                 id="same reason: no task"),
    pytest.param([unit("u")], [machine("a", up=False), machine("b", up=False)],
                 [Place("u", None, NONE_UP.format(2))], id="no machine up"),
    pytest.param([unit("u", reason=NONE_UP.format(1))],
                 [machine("a", up=False), machine("b", up=False)],
                 [Place("u", None, NONE_UP.format(2))], id="reason changed: task"),
    pytest.param([unit("u")], [machine("a", up=False), machine("b")], [Place("u", "b", ONE)],
                 id="only machines that are up"),
    pytest.param([unit("u", INACTIVE, machine="a")], [machine("a")],
                 [Place("u", None, UNLOADED)], id="inactive unit unplaced"),
    pytest.param([unit("u", INACTIVE, machine="gone")], [],
                 [Place("u", None, UNLOADED)], id="inactive unit on a removed machine"),
    pytest.param([unit("u", INACTIVE)], [machine("a")], [], id="inactive unplaced: left alone"),
    pytest.param([unit("g", machine="a", is_global=True)], [machine("a")],
                 [Place("g", None, GLOBAL)], id="a global unit is never placed on one machine"),
    pytest.param([unit("g", is_global=True)], [machine("a")], [], id="global: no task"),
    pytest.param([unit("u", machine="gone")], [machine("a")],
                 [Place("u", "a", "machine gone was removed; " + ONE)],
                 id="unit on a removed machine re-placed"),
    pytest.param([unit("u", machine="gone")], [machine("a", up=False)],
                 [Place("u", None, "machine gone was removed; " + NONE_UP.format(1))],
                 id="removed machine, nowhere to go"),
    pytest.param([unit("u", reason="machine gone was removed; " + NONE_UP.format(1))],
                 [machine("a", up=False)], [], id="the orphan's reason is kept, not rewritten"),
    pytest.param([unit("u", machine="gone", reason="machine gone was removed; " +
                       NONE_UP.format(1))],
                 [machine("a", up=False)],
                 [Place("u", None, "machine gone was removed; " + NONE_UP.format(1))],
                 id="unplaced even with the same reason: the machine differs"),
    pytest.param([unit("u", machine="a"), unit("v", LOADED, machine="b")],
                 [machine("a"), machine("b")], [], id="placed units left alone"),
    pytest.param([unit("u", machine="a", reason="old")], [machine("a", up=False), machine("b")],
                 [], id="placed unit stays on a machine that is down"),
    pytest.param([unit("u", machine="a", memory_bytes=64 * GiB)], [machine("a")], [],
                 id="capacity is checked on admission, not to evict"),
])
def test_plan(units: List[UnitView], machines: List[MachineView],
              expected: List[Place]) -> None:
    assert plan(units, machines) == expected


IDS = [machine("h1", machine_id="abc123"), machine("h2", machine_id="abd456"),
       machine("h3", machine_id="abc789"), machine("h4", machine_id="ffff", up=False)]


@pytest.mark.parametrize(("u", "expected"), [
    (unit("u", machine_id="abd456"), Place("u", "h2", "MachineID=abd456 is h2")),
    (unit("u", machine_id="abd"), Place("u", "h2", "MachineID=abd is h2")),
    (unit("u", machine_id="abc"),
     Place("u", None, "MachineID=abc is ambiguous: it matches h1, h3")),
    (unit("u", machine_id="0000"),
     Place("u", None, "MachineID=0000 matches no machine (by id or name)")),
    (unit("u", machine_id="h3"), Place("u", "h3", "MachineID=h3 is h3")),  # by its name
    # placed on the machine its name pins it to: stays; elsewhere: moves there
    (unit("u", machine="h3", machine_id="h3"), None),
    (unit("u", machine="h1", machine_id="h3"),
     Place("u", "h3", "h1 is not MachineID=h3; MachineID=h3 is h3")),
    (unit("u", machine_id="h"), Place("u", None, "MachineID=h is ambiguous: it matches "
                                                 "h1, h2, h3, h4")),
    (unit("u", machine_id="ff"), Place("u", None, "MachineID=ff is h4, which is not up")),
    (unit("u", machine_id="abd", memory_bytes=9 * GiB),
     Place("u", None, "MachineID=abd is h2, but h2 has only 8.0 GiB free, it needs 9.0 GiB")),
    (unit("u", machine_id="abd", metadata=meta(role="db")),
     Place("u", None, "MachineID=abd is h2, which does not match MachineMetadata=role=db")),
    # a placed unit whose machine no longer has that id moves to the one that does
    (unit("u", machine="h1", machine_id="abd"),
     Place("u", "h2", "h1 is not MachineID=abd; MachineID=abd is h2")),
    # placed where its prefix still matches: stays, even if the prefix became ambiguous
    (unit("u", machine="h3", machine_id="abc"), None),
    # pinned to a machine that is down but already there: stays
    (unit("u", machine="h4", machine_id="ffff"), None),
])
def test_machine_id(u: UnitView, expected: Optional[Place]) -> None:
    assert plan([u], IDS) == ([expected] if expected else [])


ROLES = [machine("h1", role="web", caps=("java:17",)), machine("h2", role="web"),
         machine("h3", role="db"), machine("h4", role="db", up=False, caps=("java:17",))]


@pytest.mark.parametrize(("u", "expected"), [
    (unit("u", metadata=meta(role="db")), Place("u", "h3", ONE)),
    (unit("u", metadata=meta(role="cache")),
     Place("u", None, "no machine matches MachineMetadata=role=cache")),
    (unit("u", metadata=meta(role="db"), capabilities=("java:17",)),
     Place("u", None, "no machine matching MachineMetadata=role=db has capability java:17")),
    (unit("u", capabilities=("java:17",)), Place("u", "h1", ONE)),
    (unit("u", machine="h1", metadata=meta(role="db")),  # hands over (test_engine_rematch)
     Place("u", "h3", "h1 no longer matches MachineMetadata=role=db: its copy there runs "
                      "until this one is healthy; " + ONE, handoff="h1")),
    (unit("u", machine="h2", capabilities=("java:17",)),
     Place("u", "h1", "h2 no longer has java:17; " + ONE)),
    (unit("u", machine="h4", capabilities=("java:17", "x")), None),  # down: facts may be stale
])
def test_metadata_and_capabilities(u: UnitView, expected: Optional[Place]) -> None:
    assert plan([u], ROLES) == ([expected] if expected else [])


TWO = [machine("h1"), machine("h2")]


@pytest.mark.parametrize(("units", "expected"), [
    pytest.param([unit("f", machine_of=("t",)), unit("t", INACTIVE)],
                 [Place("f", None, "waiting for t to be placed (it is inactive)")],
                 id="waits for an inactive target"),
    pytest.param([unit("f", machine_of=("t",))],
                 [Place("f", None, "waiting for t, which does not exist")],
                 id="waits for a unit that does not exist"),
    pytest.param([unit("f", machine_of=("t",)), unit("t", machine_of=("nope",))],
                 [Place("f", None, "waiting for t to be placed"),
                  Place("t", None, "waiting for nope, which does not exist")],
                 id="waits for a target that waits"),
    pytest.param([unit("f", machine_of=("t",)), unit("t", machine="h2")],
                 [Place("f", "h2", "MachineOf=t puts it on h2")], id="joins its target"),
    pytest.param([unit("f", machine="h1", machine_of=("t",)), unit("t", machine="h2")],
                 [Place("f", "h2", "t is not on h1; MachineOf=t puts it on h2")],
                 id="follows its target when it moved"),
    pytest.param([unit("f", machine="h1", machine_of=("t",)), unit("t", machine="h1")], [],
                 id="stays with its target"),
    pytest.param([unit("f", machine_of=("a", "b")), unit("a", machine="h1"),
                  unit("b", machine="h2")],
                 [Place("f", None, "its MachineOf= targets are on different machines: "
                        "a on h1, b on h2")], id="two targets apart"),
    pytest.param([unit("f", machine_of=("a", "b")), unit("a", machine="h2"),
                  unit("b", machine="h2")],
                 [Place("f", "h2", "MachineOf=a b puts it on h2")], id="two targets together"),
    pytest.param([unit("f", machine_of=("g",)), unit("g", is_global=True)],
                 [Place("f", None, "MachineOf=g names a Global unit, which has no one machine")],
                 id="a global target has no one machine (as in fleet)"),
    pytest.param([unit("a", machine_of=("b",)), unit("b", machine_of=("a",))],
                 [Place("a", None, "MachineOf= is circular: a -> b -> a"),
                  Place("b", None, "MachineOf= is circular: a -> b -> a")], id="a cycle waits"),
    pytest.param([unit("f", machine_of=("t",)), unit("t", machine="down")],
                 [Place("f", "h2", "MachineOf=t puts it on h2"),
                  Place("t", "h2", "machine down was removed; " + least(2))],
                 id="target re-placed: the follower joins it in the same pass"),
    pytest.param([unit("f", machine_of=("t",), memory_bytes=9 * GiB), unit("t", machine="h1")],
                 [Place("f", None, "MachineOf=t puts it on h1, but h1 has only 8.0 GiB free, "
                        "it needs 9.0 GiB")], id="the target's machine is too small"),
])
def test_machine_of(units: List[UnitView], expected: List[Place]) -> None:
    assert plan(units, TWO) == expected


def test_machine_of_target_on_a_machine_that_is_down() -> None:
    units = [unit("f", machine_of=("t",)), unit("t", machine="h1")]
    assert plan(units, [machine("h1", up=False), machine("h2")]) == [
        Place("f", None, "MachineOf=t puts it on h1, which is not up")]


def test_machine_of_follower_waits_then_follows() -> None:
    """fleet: the follower is unschedulable until its target is placed, then joins it."""
    units = [unit("f", machine_of=("t",)), unit("t", INACTIVE)]
    units = apply(units, plan(units, TWO))
    assert where(units)["f"] is None
    units = [dataclasses.replace(u, desired=LAUNCHED) if u.name == "t" else u for u in units]
    units = settle(units, TWO)
    assert where(units)["f"] == where(units)["t"] is not None


# --- fleet's functional scenarios ------------------------------------------------------------


THREE = [machine("m0"), machine("m1"), machine("m2")]


def test_schedule_machine_of_pairs_and_migration() -> None:
    """TestScheduleMachineOf: three ping/pong pairs, each pair on one machine; when the
    machine of ping.1 goes away, the pair migrates together."""
    units = [u for i in range(3) for u in (unit(f"ping.{i}"),
                                           unit(f"pong.{i}", machine_of=(f"ping.{i}",)))]
    units = settle(units, THREE)
    placed = where(units)
    for i in range(3):
        assert placed[f"ping.{i}"] is not None
        assert placed[f"ping.{i}"] == placed[f"pong.{i}"]
    lost = placed["ping.1"]
    survivors = [m for m in THREE if m.name != lost]
    units = settle(units, survivors)
    moved = where(units)
    assert moved["ping.1"] not in (lost, None)
    assert moved["pong.1"] == moved["ping.1"]
    assert reasons(units)["ping.1"].startswith(f"machine {lost} was removed; ")


def test_schedule_conflicts_five_on_three() -> None:
    """TestScheduleConflicts: five units that conflict with one another on three
    machines: three run, on three different machines; two wait, saying why."""
    units = settle([unit(f"conflict.{i}", conflicts=("conflict*",)) for i in range(5)], THREE)
    placed = [u for u in units if u.machine]
    assert len(placed) == 3
    assert len({u.machine for u in placed}) == 3
    for u in units:
        if u.machine is None:
            assert u.reason.startswith("every candidate machine runs a unit it must stay "
                                       "apart from: m0 (it conflicts with conflict.")


def test_schedule_multiple_conflicts() -> None:
    """fleet's conflict.multiple fixtures: one Conflicts= line naming several units."""
    units = [unit("conflict.0", machine="m0"), unit("conflict.1", machine="m1"),
             unit("multi", conflicts=("conflict.2", "conflict.1", "conflict.0"))]
    assert plan(units, THREE) == [Place("multi", "m2", least(3))]
    assert plan(units, THREE[:2]) == [Place("multi", None, (
        "every candidate machine runs a unit it must stay apart from: "
        "m0 (it conflicts with conflict.0), m1 (it conflicts with conflict.1)"))]


def test_schedule_one_way_conflict() -> None:
    """TestScheduleOneWayConflict: on one machine, a unit that conflicts with hello runs;
    hello (no Conflicts= of its own) is kept off; destroying the first lets hello run."""
    one = [machine("m0")]
    units = settle([unit("conflicts-with-hello", conflicts=("hello",))], one)
    units = settle([*units, unit("hello")], one)
    assert where(units) == {"conflicts-with-hello": "m0", "hello": None}
    assert reasons(units)["hello"] == "it conflicts with conflicts-with-hello on m0"
    units = settle([u for u in units if u.name == "hello"], one)
    assert where(units) == {"hello": "m0"}


def test_schedule_replace_moves_the_replaced_unit_elsewhere() -> None:
    """TestScheduleReplace (fleet PRs #1572, #1698): the replacing unit takes the
    machine of the unit it replaces, which is rescheduled to another machine."""
    units = settle([unit("replace.0")], TWO)
    first = where(units)["replace.0"]
    tasks = plan([*units, unit("replace.1", replaces=("replace.0",))], TWO)
    other = "h2" if first == "h1" else "h1"
    assert sorted(tasks, key=lambda t: t.unit) == [
        Place("replace.0", other, f"replaced by replace.1 on {first}; {least(2)}"),
        Place("replace.1", first, f"replaces replace.0 on {first}"),
    ]
    units = settle([*units, unit("replace.1", replaces=("replace.0",))], TWO)
    assert where(units) == {"replace.0": other, "replace.1": first}


def test_replace_with_nowhere_else_to_go() -> None:
    units = settle([unit("old", machine="m0"), unit("new", replaces=("old",))], [machine("m0")])
    assert where(units) == {"old": None, "new": "m0"}
    assert reasons(units)["old"] == "replaced by new on m0; new replaces it on m0"


def test_replace_takes_followers_of_the_replaced_unit_along() -> None:
    units = [unit("old", machine="h1"), unit("side", machine="h1", machine_of=("old",)),
             unit("new", replaces=("old",))]
    units = settle(units, TWO)
    assert where(units) == {"old": "h2", "side": "h2", "new": "h1"}


def test_replace_does_not_take_a_machine_its_ambiguous_machine_id_only_prefixes() -> None:
    """Found by hypothesis: an ambiguous MachineID= prefix admits no machine, not even
    by way of Replaces=."""
    ms = [machine("m0", machine_id="ab10"), machine("m1", machine_id="ab11")]
    units = settle([unit("old", machine="m0"), unit("new", machine_id="ab1", replaces=("old",))],
                   ms)
    assert where(units) == {"old": "m0", "new": None}
    assert reasons(units)["new"] == "MachineID=ab1 is ambiguous: it matches m0, m1"


def test_replace_when_the_replacing_unit_does_not_fit_there() -> None:
    """It cannot take the machine: it goes elsewhere and the replaced unit stays."""
    ms = [machine("small", memory=2 * GiB), machine("big", memory=16 * GiB)]
    units = settle([unit("old", machine="small"),
                    unit("new", replaces=("old",), memory_bytes=4 * GiB)], ms)
    assert where(units) == {"old": "small", "new": "big"}


def test_replaced_unit_sharing_a_machine_yields_whatever_the_names() -> None:
    units = [unit("a-old", machine="h1"), unit("z-new", machine="h1", replaces=("a-old",))]
    assert plan(units, TWO) == [Place("a-old", "h2", f"replaced by z-new on h1; {least(2)}")]


@pytest.mark.parametrize("started_first", ["replace.0", "replace.1"])
def test_schedule_circular_replace(started_first: str) -> None:
    """TestScheduleCircularReplace: two units replacing each other: only one runs, and
    which one does not flap from pass to pass."""
    spec = {"replace.0": ("replace.1",), "replace.1": ("replace.0",)}
    units = settle([unit(started_first, replaces=spec[started_first])], TWO)
    assert where(units)[started_first] is not None
    later = next(n for n in spec if n != started_first)
    units = settle([*units, unit(later, replaces=spec[later])], TWO)
    assert where(units)[started_first] is not None  # the one running keeps running
    assert where(units)[later] is None
    assert reasons(units)[later] == (f"Replaces= is circular (replace.0 replace.1): "
                                     f"{started_first} runs instead")
    assert plan(units, TWO) == []


def test_circular_replace_of_three_started_together() -> None:
    units = settle([unit("a", replaces=("b",)), unit("b", replaces=("c",)),
                    unit("c", replaces=("a",))], THREE)
    assert [n for n, m in where(units).items() if m] == ["a"]


def test_schedule_condition_machine_id() -> None:
    """TestScheduleConditionMachineID: one unit pinned to each machine by its full id."""
    ms = [machine(f"m{i}", machine_id=f"{i}{i}{i}f00d{i}") for i in range(3)]
    units = settle([unit(f"pin{i}", machine_id=m.machine_id) for i, m in enumerate(ms)], ms)
    assert where(units) == {"pin0": "m0", "pin1": "m1", "pin2": "m2"}


def test_schedule_global_units() -> None:
    """TestScheduleGlobalUnits: two plain units, then a global unit: it runs on each of
    the three machines, and the plan places nothing for it."""
    units = settle([unit("hello"), unit("goodbye")], THREE)
    units.append(unit("global", is_global=True))
    assert plan(units, THREE) == []
    assert global_placements(units, THREE) == {"global": ["m0", "m1", "m2"]}


def test_global_conflicts_hold_in_both_directions() -> None:
    """A Global unit skips machines where a placed unit conflicts with it (either way),
    and a unit is never placed where a Global unit it conflicts with runs."""
    units = [unit("x", machine="m0", conflicts=("agent",)),
             unit("agent", is_global=True, conflicts=("db*",)),
             unit("db1"), unit("web")]
    units = settle(units, THREE)
    agent = global_placements(units, THREE)["agent"]
    assert agent == ["m1", "m2"]
    assert where(units)["db1"] == "m0"  # the only machine without the agent
    assert not violations(units, THREE)
    units = settle([*units, unit("db2"), unit("z", conflicts=("agent", "x"))], THREE)
    assert where(units)["db2"] == "m0"
    assert where(units)["z"] is None
    assert reasons(units)["z"] == (
        "every candidate machine runs a unit it must stay apart from: "
        "m0 (it conflicts with x), m1 (it conflicts with agent), "
        "m2 (it conflicts with agent)")
    assert not violations(units, THREE)


def test_a_takeover_counts_the_global_units_on_that_machine() -> None:
    """Found by hypothesis: g replaces d, but d's machine has no room for g once the
    global unit there is counted, so g waits and nothing is overcommitted."""
    units = [unit("b", is_global=True, cpus=1.5), unit("d"), unit("g", replaces=("d",),
                                                                   cpus=1.5)]
    one = [machine("m0", cpus=2.0)]
    units = settle(units, one)
    assert where(units) == {"b": None, "d": "m0", "g": None}
    assert global_placements(units, one) == {"b": ["m0"]}
    assert reasons(units)["g"] == "it replaces d on m0"
    assert not violations(units, one)


def test_a_global_unit_comes_first_on_a_fresh_machine_but_waits_for_room() -> None:
    one = [machine("m0", cpus=2.0)]
    fresh = settle([unit("busy", cpus=1.5), unit("agent", is_global=True, cpus=1.0)], one)
    assert where(fresh)["busy"] is None
    assert global_placements(fresh, one) == {"agent": ["m0"]}
    units = [unit("busy", machine="m0", cpus=1.5), unit("agent", is_global=True, cpus=1.0)]
    assert plan(units, one) == []
    assert global_placements(units, one) == {"agent": []}  # never evicts what is there
    assert global_placements(units[1:], one) == {"agent": ["m0"]}


# Where Global units run after a pass (Outcome.globals): computed once, in the pass, as
# the pass leaves the machines (step 6). Each row: the units and machines before the pass,
# where each non-global unit is after it (and the hand-off it carries), where the globals
# run. A row marked "differs" is one where step 2's placement (before new units, hand-overs
# and take-overs) is not the answer.
DRAINING = [dataclasses.replace(machine("a"), draining=True), machine("b")]


@pytest.mark.parametrize(("units", "machines", "after", "globals_after"), [
    pytest.param(  # differs: a hands its last unit over and gives its globals up at once
        [unit("x", machine="a"), unit("g", is_global=True)], DRAINING,
        {"x": ("b", "a")}, {"g": ["b"]}, id="drain-last-handoff"),
    pytest.param(  # a still has y: it keeps its globals while x moves
        [unit("x", machine="a"), unit("y", machine="a"), unit("g", is_global=True)],
        DRAINING, {"x": ("b", "a"), "y": ("a", None)}, {"g": ["a", "b"]},
        id="drain-one-of-two"),
    pytest.param(  # the hand-off in flight: x's old copy still runs on a, nothing left on a
        [dataclasses.replace(unit("x", machine="b"), handoff="a"),
         unit("g", is_global=True)], DRAINING,
        {"x": ("b", "a")}, {"g": ["b"]}, id="drain-in-flight"),
    pytest.param(  # nowhere to go: x stays on a, and so do a's globals
        [unit("x", machine="a", machine_id="a-0123456789"), unit("g", is_global=True)],
        DRAINING, {"x": ("a", None)}, {"g": ["a", "b"]}, id="drain-nowhere-to-go"),
    pytest.param(  # differs: r takes m0 from x, which kept g off m0; x fits nowhere else
        [unit("x", machine="m0"), unit("r", replaces=("x",)),
         unit("g", is_global=True, conflicts=("x",))],
        [machine("m0"), machine("m1")],
        {"x": (None, None), "r": ("m0", None)}, {"g": ["m0", "m1"]}, id="replaced"),
    pytest.param(  # new units come after the globals: g takes its room first on m0
        [unit("busy", cpus=3.0), unit("g", is_global=True, cpus=2.0)],
        [machine("m0")], {"busy": (None, None)}, {"g": ["m0"]}, id="fresh-machine"),
])
def test_global_units_run_where_the_pass_leaves_the_machines(
        units: List[UnitView], machines: List[MachineView],
        after: Dict[str, Tuple[Optional[str], Optional[str]]],
        globals_after: Dict[str, List[str]]) -> None:
    outcome = reconcile(units, machines, now=0.0)
    applied = apply_handoffs(units, outcome.tasks)
    assert {u.name: (u.machine, u.handoff) for u in applied
            if not u.req.is_global} == after
    assert outcome.globals == globals_after
    # the same as placing the globals after every other unit, where the tasks put them
    assert outcome.globals == global_placements(applied, machines)


def apply_handoffs(units: Sequence[UnitView], tasks: Sequence[Place]) -> List[UnitView]:
    """``apply``, the hand-off recorded too (as the loop records it)."""
    done = {t.unit: t for t in tasks}
    return [dataclasses.replace(u, machine=done[u.name].machine, reason=done[u.name].reason,
                                handoff=done[u.name].handoff)
            if u.name in done else u for u in units]


def test_metadata_template_lands_on_its_host() -> None:
    """fleet's metadata@.service (MachineMetadata=hostname=%i): metadata@web3 runs on the
    machine whose hostname is web3."""
    ms = [machine(f"node{i}", hostname=f"web{i}") for i in range(1, 5)]
    units = settle([unit(f"metadata@web{i}", metadata=meta(hostname=f"web{i}"))
                    for i in (3, 1)], ms)
    assert where(units) == {"metadata@web3": "node3", "metadata@web1": "node1"}


def test_metadata_or_within_a_key_and_across_keys() -> None:
    ms = [machine("a", region="us-east", disk="ssd"), machine("b", region="us-west", disk="hdd"),
          machine("c", region="us-west", disk="ssd"), machine("d", region="eu", disk="ssd")]
    want = meta(region="us-east|us-west", disk="ssd")
    units = settle([unit(f"u{i}", metadata=want) for i in range(4)], ms)
    assert {m for m in where(units).values()} == {"a", "c"}


def test_a_unit_too_big_for_every_machine_stays_unplaced_with_its_reason() -> None:
    ms = [machine("h1", memory=8 * GiB), machine("h2", memory=4 * GiB)]
    units = settle([unit("big", memory_bytes=16 * GiB, cpus=1.0), unit("small")], ms)
    assert where(units)["big"] is None
    assert reasons(units)["big"] == ("no machine with 16.0 GiB and 1.0 CPUs free; h1 has "
                                     "8.0 GiB and 4.0 CPUs")
    assert where(units)["small"] is not None


def test_resources_fill_machines_then_refuse() -> None:
    ms = [machine("h1", memory=4 * GiB, cpus=2.0), machine("h2", memory=4 * GiB, cpus=2.0)]
    units = settle([unit(f"u{i}", memory_bytes=GiB, cpus=0.5) for i in range(10)], ms)
    on = [u.machine for u in units if u.machine]
    assert sorted(on) == ["h1"] * 4 + ["h2"] * 4
    assert [u.reason for u in units if not u.machine] == [
        "no machine with 1.0 GiB and 0.5 CPUs free; h1 has 0 bytes and 0.0 CPUs"] * 2
    assert not violations(units, ms)


def test_refusals_of_equal_reservations_differ_when_conflicts_do() -> None:
    """Identical refusals are shared only between units no Conflicts= touches."""
    ms = [machine("h1", memory=GiB // 2), machine("h2", memory=8 * GiB)]
    units = [unit("db", machine="h2", memory_bytes=7 * GiB, conflicts=("c-named",)),
             unit("a-plain", memory_bytes=2 * GiB),
             unit("b-conflicting", memory_bytes=2 * GiB, conflicts=("db",)),
             unit("c-named", memory_bytes=2 * GiB)]
    assert reasons(settle(units, ms)) == {
        "db": "",
        "a-plain": "no machine with 2.0 GiB free; h2 has 1.0 GiB",
        "b-conflicting": "no machine with 2.0 GiB free; h1 has 512 MiB",
        "c-named": "no machine with 2.0 GiB free; h1 has 512 MiB",
    }


def test_placed_units_that_conflict_the_later_name_moves() -> None:
    units = [unit("a", machine="h1", conflicts=("b",)), unit("b", machine="h1")]
    assert plan(units, TWO) == [Place("b", "h2", f"it conflicts with a on h1; {least(2)}")]


def test_the_plan_does_not_depend_on_input_order() -> None:
    rnd = random.Random(5)
    ms = [machine(f"m{i}", memory=(2 + i) * GiB, role="abc"[i % 3]) for i in range(7)]
    units = [unit(f"u{i}", memory_bytes=rnd.choice((0, 256 * MiB, GiB)),
                  metadata=rnd.choice(((), meta(role="a|b"))),
                  conflicts=rnd.choice(((), ("u1*",))),
                  machine_of=rnd.choice(((), (), (f"u{i // 2}",))) if i else ())
             for i in range(40)]
    expected = sorted(plan(units, ms), key=lambda t: t.unit)
    for _ in range(3):
        rnd.shuffle(units)
        rnd.shuffle(ms)
        assert sorted(plan(units, ms), key=lambda t: t.unit) == expected


def test_plan_does_not_mutate_its_inputs() -> None:
    units = [unit("u", conflicts=("x*",)), unit("v", machine="gone")]
    machines = [machine("a")]
    copy_units, copy_machines = list(units), list(machines)
    plan(units, machines)
    assert (units, machines) == (copy_units, copy_machines)


def test_a_bench_sized_mix_settles_in_one_pass() -> None:
    """A few thousand units of every kind: placing them once leaves nothing to do."""
    rnd = random.Random(11)
    ms = [machine(f"m{i:03d}", up=rnd.random() > 0.05, machine_id=f"{rnd.getrandbits(64):016x}",
                  cpus=rnd.choice((2.0, 8.0)), memory=rnd.choice((4, 16)) * GiB,
                  caps=("java:17",) if i % 2 else (), role=rnd.choice("ab"))
          for i in range(60)]
    units: List[UnitView] = []
    for i in range(3000):
        k = rnd.random()
        req: Dict[str, Any] = {"memory_bytes": rnd.choice((0, 128 * MiB, 512 * MiB)),
                                  "cpus": rnd.choice((0.0, 0.25))}
        if k < 0.2:
            req["metadata"] = meta(role=rnd.choice("ab"))
        elif k < 0.35:
            req["conflicts"] = (f"fam{i % 40}@*",)
        elif k < 0.5 and units:
            req["machine_of"] = (rnd.choice(units).name,)
        elif k < 0.55:
            req["machine_id"] = (rnd.choice(ms).machine_id or "")[:6]
        elif k < 0.6:
            req["capabilities"] = ("java:17",)
        elif k < 0.62 and units:
            req["replaces"] = (rnd.choice(units).name,)
        units.append(unit(f"fam{i % 40}@{i}", **req))
    first = plan(units, ms)
    placed = apply(units, first)
    assert not violations(placed, ms)
    assert sum(t.machine is not None for t in first) > 2000
    assert settle(placed, ms, rounds=3)


# --- properties ------------------------------------------------------------------------------


NAMES = ["a", "b", "c", "d", "e", "f", "g"]


@st.composite
def clusters(draw: st.DrawFn) -> List[MachineView]:
    n = draw(st.integers(0, 4))
    out = []
    for i in range(n):
        out.append(machine(
            f"m{i}", up=draw(st.booleans()) or i == 0,
            machine_id=draw(st.sampled_from(["aa1", "aa2", "ab1", "b12", "b13", "c"])) + str(i),
            cpus=draw(st.sampled_from([0.0, 1.0, 2.0, 4.0])),
            memory=draw(st.sampled_from([0, GiB, 2 * GiB, 4 * GiB])),
            caps=draw(st.lists(st.sampled_from(["java", "systemd"]), max_size=2)),
            **({"role": draw(st.sampled_from(["web", "db"]))} if draw(st.booleans()) else {})))
    return out


@st.composite
def requirements(draw: st.DrawFn, name: str) -> Requirements:
    others = [n for n in NAMES if n != name]
    is_global = draw(st.integers(0, 9)) == 0
    return Requirements(
        machine_id=None if is_global else draw(
            st.sampled_from([None, None, None, "aa", "ab1", "b1", "x"])),
        machine_of=() if is_global else tuple(draw(st.lists(
            st.sampled_from(others), max_size=2, unique=True)).__iter__()
            if draw(st.integers(0, 3)) == 0 else ()),
        metadata=draw(st.sampled_from([(), (), meta(role="web"), meta(role="db|web")])),
        conflicts=tuple(draw(st.lists(st.sampled_from([*others, "*", "[a-c]", "?"]),
                                      max_size=2, unique=True)))
        if draw(st.integers(0, 2)) == 0 else (),
        is_global=is_global,
        replaces=() if is_global else tuple(draw(st.lists(
            st.sampled_from(others), max_size=1))),
        memory_bytes=draw(st.sampled_from([0, 0, 512 * MiB, GiB, 3 * GiB])),
        memory_percent=draw(st.sampled_from([0.0, 0.0, 0.0, 30.0])),
        cpus=draw(st.sampled_from([0.0, 0.0, 0.5, 1.5])),
        capabilities=tuple(draw(st.lists(st.sampled_from(["java", "systemd"]), max_size=1))),
    )


@st.composite
def scenarios(draw: st.DrawFn, placed: bool) -> Tuple[List[UnitView], List[MachineView]]:
    machines = draw(clusters())
    spots = [m.name for m in machines] + ["gone"]
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=7, unique=True))
    units = [UnitView(n, draw(st.sampled_from([LAUNCHED, LAUNCHED, LOADED, INACTIVE])),
                      draw(st.sampled_from([None, *spots])) if placed else None, "",
                      draw(requirements(n)))
             for n in names]
    return units, machines


PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios(placed=False))
def test_from_nothing_placed_plans_converge_and_keep_every_rule(
        case: Tuple[List[UnitView], List[MachineView]]) -> None:
    units, machines = case
    current = units
    for _ in range(4):
        tasks = plan(current, machines)
        for t in tasks:  # never a task that changes nothing
            u = next(u for u in current if u.name == t.unit)
            assert (t.machine, t.reason) != (u.machine, u.reason)
        if not tasks:
            break
        current = apply(current, tasks)
        assert violations(current, machines) == []
    else:
        raise AssertionError(f"no fixed point: {plan(current, machines)}")


@PROPERTY
@given(scenarios(placed=True))
def test_from_any_placement_plans_converge_and_keep_every_rule(
        case: Tuple[List[UnitView], List[MachineView]]) -> None:
    """Starting anywhere (units on removed machines, on machines that now break their
    rules, on top of each other): a few passes reach a state that plan leaves alone.
    Capacity is not asserted: the starting placements may overcommit, and capacity is
    checked on admission only."""
    units, machines = case
    current = units
    for _ in range(4):
        tasks = plan(current, machines)
        if not tasks:
            break
        before = current
        current = apply(current, tasks)
        assert violations(current, machines, placed_before=before, capacity=False) == []
    else:
        raise AssertionError(f"no fixed point: {plan(current, machines)}")


@st.composite
def drains(draw: st.DrawFn) -> Tuple[List[UnitView], List[MachineView]]:
    """scenarios(placed=True), some machines draining (maybe overdue), some units moving
    off one (the old copy maybe ready, maybe gone)."""
    units, machines = draw(scenarios(placed=True))
    machines = [dataclasses.replace(m, draining=d, drain_overdue=d and draw(st.booleans()))
                for m in machines for d in [draw(st.booleans())]]
    spots = [m.name for m in machines]
    units = [dataclasses.replace(
        u, handoff=draw(st.sampled_from([None, None, *spots])) if spots else None,
        ready=draw(st.booleans()), old_running=draw(st.booleans())) for u in units]
    return units, machines


@PROPERTY
@given(drains())
def test_the_outcomes_globals_are_where_the_tasks_leave_room_for_them(
        case: Tuple[List[UnitView], List[MachineView]]) -> None:
    """Pass after pass: Outcome.globals (computed in the pass) equals placing the Global
    units after every other unit, where the tasks put them."""
    units, machines = case
    current = units
    for _ in range(3):
        outcome = reconcile(current, machines, now=0.0)
        current = apply_handoffs(current, outcome.tasks)
        assert outcome.globals == global_placements(current, machines)
