"""fleetd.engine.reconciler.plan and fleetd.engine.scheduler.choose: placement tables."""

from __future__ import annotations

from typing import Optional

import pytest

from fleetd.engine.reconciler import Place, plan
from fleetd.engine.scheduler import Candidate, choose
from fleetd.registry.base import INACTIVE, LAUNCHED, LOADED, MachineRecord, UnitRecord


def unit(name: str, desired: str = LAUNCHED, machine: Optional[str] = None,
         reason: str = "") -> UnitRecord:
    return UnitRecord(name=name, hash="h-" + name, desired=desired, machine=machine,
                      reason=reason, updated_at=0.0)


def machine(name: str, state: str = "up") -> MachineRecord:
    return MachineRecord(name=name, address="10.0.0." + str(len(name)), port=22, user="root",
                         identity=None, known_hosts=None, agent_command="fleet-agent",
                         metadata={}, state=state)


NO_MACHINES = "no machines are registered"


def none_up(registered: int) -> str:
    return f"no machine is up ({registered} registered, none connected)"


def fewest(load: int, up: int) -> str:
    return f"fewest units ({load}) among {up} machines up"


# --- scheduler -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machines", "load", "expected"),
    [
        ([], {}, (None, NO_MACHINES)),
        ([Candidate("a", False)], {}, (None, none_up(1))),
        ([Candidate("a", False), Candidate("b", False)], {}, (None, none_up(2))),
        ([Candidate("a", True)], {}, ("a", fewest(0, 1))),
        ([Candidate("b", True), Candidate("a", True)], {}, ("a", fewest(0, 2))),
        ([Candidate("a", True), Candidate("b", True)], {"a": 1}, ("b", fewest(0, 2))),
        ([Candidate("a", True), Candidate("b", True)], {"a": 2, "b": 2}, ("a", fewest(2, 2))),
        ([Candidate("a", False), Candidate("b", True)], {"b": 5}, ("b", fewest(5, 1))),
        ([Candidate("a", True), Candidate("b", True), Candidate("c", True)],
         {"a": 3, "b": 1, "c": 1}, ("b", fewest(1, 3))),
    ],
)
def test_choose(machines: list[Candidate], load: dict[str, int],
                expected: tuple[Optional[str], str]) -> None:
    assert choose("u.service", machines, load) == expected


# --- plan ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "machines", "expected"),
    [
        pytest.param([], [], [], id="nothing"),
        pytest.param([], [machine("a")], [], id="no units"),
        pytest.param(
            [unit("u")], [machine("a")],
            [Place("u", "a", fewest(0, 1))],
            id="launched unit placed",
        ),
        pytest.param(
            [unit("u", LOADED)], [machine("a")],
            [Place("u", "a", fewest(0, 1))],
            id="loaded unit placed too",
        ),
        pytest.param(
            [unit("u")], [machine("b"), machine("a")],
            [Place("u", "a", fewest(0, 2))],
            id="ties go to the first name",
        ),
        pytest.param(
            [unit("x", machine="a"), unit("y", LOADED, machine="a"), unit("z", machine="b"),
             unit("u")],
            [machine("a"), machine("b")],
            [Place("u", "b", fewest(1, 2))],
            id="fewest units wins, loaded units count",
        ),
        pytest.param(
            [unit("x", INACTIVE), unit("y", INACTIVE), unit("z", machine="b"), unit("u")],
            [machine("a"), machine("b")],
            [Place("u", "a", fewest(0, 2))],
            id="inactive units do not count as load",
        ),
        pytest.param(
            [unit("x", machine="gone"), unit("y", machine="gone"), unit("z", machine="b"),
             unit("u", machine="a")],
            [machine("a"), machine("b")],
            [Place("x", "a", "machine gone was removed; " + fewest(1, 2)),
             Place("y", "b", "machine gone was removed; " + fewest(1, 2))],
            id="units on a removed machine do not count as load there",
        ),
        pytest.param(
            [unit("u")], [machine("a", "unreachable"), machine("b")],
            [Place("u", "b", fewest(0, 1))],
            id="only machines that are up",
        ),
        pytest.param(
            [unit("u1"), unit("u2"), unit("u3"), unit("u4"), unit("u5")],
            [machine("b"), machine("a")],
            [Place("u1", "a", fewest(0, 2)), Place("u2", "b", fewest(0, 2)),
             Place("u3", "a", fewest(1, 2)), Place("u4", "b", fewest(1, 2)),
             Place("u5", "a", fewest(2, 2))],
            id="several units spread",
        ),
        pytest.param(
            [unit("u1"), unit("u2"), unit("u3")],
            [machine("a"), machine("b", "new"), machine("c")],
            [Place("u1", "a", fewest(0, 2)), Place("u2", "c", fewest(0, 2)),
             Place("u3", "a", fewest(1, 2))],
            id="spread skips machines not up",
        ),
        pytest.param(
            [unit("u")], [],
            [Place("u", None, NO_MACHINES)],
            id="no machine registered",
        ),
        pytest.param(
            [unit("u", reason=NO_MACHINES)], [],
            [],
            id="no machine registered, reason unchanged: no task",
        ),
        pytest.param(
            [unit("u")], [machine("a", "new"), machine("b", "unreachable")],
            [Place("u", None, none_up(2))],
            id="no machine up",
        ),
        pytest.param(
            [unit("u", reason=none_up(2))], [machine("a", "error"), machine("b", "new")],
            [],
            id="no machine up, reason unchanged: no task",
        ),
        pytest.param(
            [unit("u", reason=none_up(1))], [machine("a", "new"), machine("b", "new")],
            [Place("u", None, none_up(2))],
            id="no machine up, reason changed: task",
        ),
        pytest.param(
            [unit("u", INACTIVE, machine="a")], [machine("a")],
            [Place("u", None, "unloaded: desired state is inactive")],
            id="inactive unit unplaced",
        ),
        pytest.param(
            [unit("u", INACTIVE, machine="gone")], [],
            [Place("u", None, "unloaded: desired state is inactive")],
            id="inactive unit on a removed machine unplaced",
        ),
        pytest.param(
            [unit("u", INACTIVE)], [machine("a")],
            [],
            id="inactive unplaced unit left alone",
        ),
        pytest.param(
            [unit("u", machine="gone")], [machine("a")],
            [Place("u", "a", "machine gone was removed; " + fewest(0, 1))],
            id="unit on a removed machine re-placed",
        ),
        pytest.param(
            [unit("u", machine="gone")], [],
            [Place("u", None, "machine gone was removed; " + NO_MACHINES)],
            id="unit on a removed machine, nowhere to go",
        ),
        pytest.param(
            [unit("u", machine="gone", reason="machine gone was removed; " + none_up(1))],
            [machine("a", "unreachable")],
            [Place("u", None, "machine gone was removed; " + none_up(1))],
            id="unit on a removed machine is unplaced even with the same reason",
        ),
        pytest.param(
            [unit("u", machine="a"), unit("v", LOADED, machine="b")],
            [machine("a"), machine("b")],
            [],
            id="placed units left alone",
        ),
        pytest.param(
            [unit("u", machine="a", reason="old")], [machine("a", "unreachable"), machine("b")],
            [],
            id="placed unit stays on a machine that is down",
        ),
    ],
)
def test_plan(units: list[UnitRecord], machines: list[MachineRecord],
              expected: list[Place]) -> None:
    assert plan(units, machines) == expected


def test_plan_is_stable_once_applied() -> None:
    """Applying a plan and planning again gives nothing more to do."""
    units = [unit(f"u{i}") for i in range(7)] + [unit("off", INACTIVE, machine="a")]
    machines = [machine("a"), machine("b"), machine("c", "unreachable")]
    tasks = plan(units, machines)
    assert len(tasks) == 8
    placed = {t.unit: (t.machine, t.reason) for t in tasks}
    applied = [
        unit(u.name, u.desired, *placed[u.name]) if u.name in placed else u for u in units
    ]
    on = [u.machine for u in applied if u.machine]
    assert sorted(on) == ["a"] * 4 + ["b"] * 3
    assert plan(applied, machines) == []


def test_plan_does_not_mutate_its_inputs() -> None:
    units = [unit("u")]
    machines = [machine("a")]
    plan(units, machines)
    assert units == [unit("u")]
    assert machines == [machine("a")]


def test_the_reason_for_an_orphan_is_kept_not_rewritten_every_pass() -> None:
    """A unit whose machine was removed while no machine is up gets one task, and the
    next pass leaves its reason ("machine h1 was removed; ...") alone."""
    first = plan([unit("a.service", machine="h1")], [machine("h2", state="unreachable")])
    assert len(first) == 1 and first[0].machine is None
    assert first[0].reason.startswith("machine h1 was removed; no machine is up")
    again = unit("a.service", machine=None, reason=first[0].reason)
    assert plan([again], [machine("h2", state="unreachable")]) == []
