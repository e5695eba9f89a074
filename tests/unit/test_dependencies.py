"""[Unit] Requires=/Wants=/BindsTo=/After=/Before= between fleet units (issue 14 §2).

Reading them (units/deps.py), the pure decision of which units they hold stopped
(engine/dependencies.py) as tables of systemd.unit(5)'s cases, the reason a placed held
unit shows (engine/reconciler.py), and the engine loop handing a held unit to its
machine as stopped until its dependency is ready.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest
from test_engine_loop import SERVICE, Fleet

from fleetd import protocol
from fleetd.engine.dependencies import held
from fleetd.engine.reconciler import HELD, Place, plan
from fleetd.engine.views import Failure, MachineView, UnitView
from fleetd.registry.base import INACTIVE, LAUNCHED, LOADED, ObservedRecord
from fleetd.testing.registry import at_once
from fleetd.units.deps import Deps
from fleetd.units.model import load
from fleetd.units.xfleet import Requirements

# -- reading ------------------------------------------------------------------------------


def deps_of(text: str, name: str = "app.service") -> Deps:
    return load(name, "[Unit]\n" + text + SERVICE).requirements.deps


def test_each_option_is_read_as_systemd_reads_it() -> None:
    d = deps_of("Requires=db.service cache.service\nRequires=db.service\nWants=log.service\n"
                "BindsTo=lock.service\nAfter=db.service\nAfter=\nAfter=\"cache.service\"\n"
                "Before=web.service\n")
    # every assignment counts (dependencies are not reset by an empty one), each name once
    assert d == Deps(requires=("db.service", "cache.service"), wants=("log.service",),
                     binds_to=("lock.service",), after=("db.service", "cache.service"),
                     before=("web.service",))


def test_names_that_are_not_fleet_units_are_left_to_systemd() -> None:
    d = deps_of("Requires=network-online.target db.service\nAfter=network-online.target "
                "-x.service web@.service app.service\nWants=local-fs.target\n")
    assert d == Deps(requires=("db.service",))  # a target, a bad name, a template, itself
    assert not deps_of("Description=none\n")


def test_specifiers_are_expanded() -> None:
    d = deps_of("After=db@%i.service\nRequires=%p-sidecar.service\n", "app@blue.service")
    assert d == Deps(requires=("app-sidecar.service",), after=("db@blue.service",))


def test_specifiers_are_expanded_after_the_words_are_split() -> None:
    """As systemd does for every list option: %i of an instance with an escaped space
    stays in its one word (expanded first, it split into 'db@a' and 'b.service')."""
    d = deps_of("After=db@%i.service\n", "app@a\\x20b.service")
    assert d == Deps(after=("db@a\\x20b.service",))


# -- which units are held -----------------------------------------------------------------


def u(name: str, desired: str = LAUNCHED, ready: bool = False, running: bool = False,
      failed: Optional[str] = None, is_global: bool = False, **deps: Any) -> UnitView:
    return UnitView(name=name, desired=desired, machine="h1" if desired != INACTIVE else None,
                    reason="", req=Requirements(is_global=is_global, deps=Deps(**deps)),
                    failed=Failure(failed, 1.0, "exit status 1") if failed else None,
                    ready=ready, running=running)


def holds(*units: UnitView) -> Dict[str, str]:
    return held({x.name: x for x in units})


W = "waiting for {} to be ready ({})"


@pytest.mark.parametrize("units, expected", [
    pytest.param([u("app", requires=("db",), after=("db",)), u("db")],
                 {"app": W.format("db", "After=db")}, id="Requires+After: waits for db"),
    pytest.param([u("app", requires=("db",), after=("db",)), u("db", ready=True)],
                 {}, id="Requires+After: db ready, app starts"),
    pytest.param([u("app", requires=("db",), after=("db",)), u("db", running=True)],
                 {"app": W.format("db", "After=db")},
                 id="running is not ready: db's check has not passed yet"),
    pytest.param([u("app", requires=("db",)), u("db")], {},
                 id="Requires without After: both start in parallel"),
    pytest.param([u("app", after=("db",)), u("db", desired=LOADED)], {},
                 id="After alone does not pull: db not started, app runs"),
    pytest.param([u("app", after=("db",)), u("db", desired=INACTIVE)], {},
                 id="After alone: db unloaded, app runs"),
    pytest.param([u("app", after=("db",)), u("db")], {"app": W.format("db", "After=db")},
                 id="After alone orders when both start"),
    pytest.param([u("app"), u("db", before=("app",))],
                 {"app": W.format("db", "db has Before=app")}, id="Before= mirrors After="),
    pytest.param([u("app", after=("db",), running=True), u("db")], {},
                 id="a running unit is never stopped by ordering"),
    pytest.param([u("app", requires=("db",), after=("db",)), u("db", desired=LOADED)],
                 {"app": "stopped: it Requires=db, which is not started"},
                 id="db stopped by the user stops app"),
    pytest.param([u("app", requires=("db",), running=True), u("db", desired=INACTIVE)],
                 {"app": "stopped: it Requires=db, which is not started"},
                 id="db unloaded stops a running app"),
    pytest.param([u("app", binds_to=("db",)), u("db", desired=LOADED)],
                 {"app": "stopped: it BindsTo=db, which is not started"},
                 id="BindsTo: as Requires"),
    pytest.param([u("app", binds_to=("db",), running=True), u("db", failed="h2")],
                 {"app": "stopped: it BindsTo=db, which failed on h2"},
                 id="BindsTo: db stopping unexpectedly stops app"),
    pytest.param([u("app", requires=("db",), running=True), u("db", failed="h2")], {},
                 id="Requires: db failing does not stop a running app"),
    pytest.param([u("app", wants=("db",)), u("db", desired=LOADED)], {},
                 id="Wants never holds"),
    pytest.param([u("app", requires=("db",), after=("db",))], {},
                 id="a dependency never submitted is ignored"),
    pytest.param([u("web", requires=("app",)), u("app", requires=("db",)),
                  u("db", desired=LOADED)],
                 {"app": "stopped: it Requires=db, which is not started",
                  "web": "stopped: it Requires=app, which is not started"},
                 id="a stop propagates along Requires= chains"),
    pytest.param([u("web", after=("app",)), u("app", after=("db",)), u("db", ready=True)],
                 {"web": W.format("app", "After=app")}, id="a chain starts link by link"),
    pytest.param([u("app", after=("db",)), u("db", after=("app",))],
                 {n: "After=/Before= ordering is circular: app -> db -> app; none of them "
                     "starts" for n in ("app", "db")}, id="a cycle holds all, named"),
    pytest.param([u("a", after=("b",), before=("c",)), u("b", after=("c",)),
                  u("c", ready=True), u("d", after=("a",), ready=True)],
                 {**{n: "After=/Before= ordering is circular: a -> b -> c -> a; none of "
                        "them starts" for n in ("a", "b", "c")},
                  "d": W.format("a", "After=a")}, id="a longer cycle, and one behind it"),
    pytest.param([u("app", after=("db",)), u("db", after=("app",), desired=LOADED)], {},
                 id="no cycle among the units being started"),
    pytest.param([u("app", requires=("db",), after=("db",)), u("db", is_global=True)], {},
                 id="Global units are not waited for"),
])
def test_held(units: List[UnitView], expected: Dict[str, str]) -> None:
    assert holds(*units) == expected


# -- the reason a held unit shows ------------------------------------------------------

H1 = [MachineView(name="h1", machine_id="1" * 32, up=True, metadata={}, cpus=4.0,
                  memory_bytes=1 << 33)]


def test_a_held_unit_is_placed_and_says_why_until_it_is_not() -> None:
    app = UnitView("app", LAUNCHED, None, "", Requirements(deps=Deps(after=("db",))))
    db = UnitView("db", LAUNCHED, "h1", "least loaded of 1 candidate machine", Requirements())
    why = "least loaded of 1 candidate machine" + HELD + W.format("db", "After=db")
    assert plan([app, db], H1) == [Place("app", "h1", why)]
    app = UnitView("app", LAUNCHED, "h1", why, app.req)
    assert plan([app, db], H1) == []  # the same every pass
    db = UnitView("db", LAUNCHED, "h1", db.reason, db.req, ready=True)
    assert plan([app, db], H1) == [Place("app", "h1", "least loaded of 1 candidate machine")]


# -- the loop: held units go out stopped -----------------------------------------------


def report(f: Fleet, name: str, state: str, health: str = "unknown") -> None:
    """The agent of the unit's machine reports it (and its check), as it was handed."""
    x = f.registry.get_unit(name)
    assert x is not None and x.machine is not None
    at_once(f.registry.upsert_observed(ObservedRecord(
        unit=name, machine=x.machine, hash=f.engine.snapshot().hashes[(name, x.machine)],
        state=state, pid=None, started_at=None, exit_status=None, restarts=0, error=None,
        updated_at=f.clock.now, generation=x.generation, health=health)))


def wants(f: Fleet, name: str) -> str:
    machine = f.where(name)
    return next(s["want"] for s in f.pushed[machine] if s["name"] == name)


def test_the_loop_hands_a_held_unit_out_stopped_until_its_dependency_is_healthy() -> None:
    f = Fleet()
    f.store("db.service", SERVICE + "[X-Check]\nType=exec\nCommand=/bin/true\n")
    f.store("app.service", "[Unit]\nRequires=db.service\nAfter=db.service\n" + SERVICE)
    f.run()
    assert wants(f, "db.service") == protocol.WANT_RUNNING
    assert wants(f, "app.service") == protocol.WANT_STOPPED
    app = f.registry.get_unit("app.service")
    assert app is not None and app.reason.endswith(
        HELD + "waiting for db.service to be ready (After=db.service)")
    report(f, "db.service", protocol.RUNNING)  # running, its check not passed yet
    f.clock.advance(1)
    f.run()
    assert wants(f, "app.service") == protocol.WANT_STOPPED
    report(f, "db.service", protocol.RUNNING, health="passing")
    f.clock.advance(1)
    f.run()
    assert wants(f, "app.service") == protocol.WANT_RUNNING
    app = f.registry.get_unit("app.service")
    assert app is not None and HELD not in app.reason
