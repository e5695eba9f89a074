"""The reconciler's answers to failure: reschedule policy, fencing, drains (pure)."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from fleetd.engine.reconciler import Place, reconcile
from fleetd.engine.scheduler import GiB
from fleetd.engine.views import Failure, MachineView, UnitView
from fleetd.registry.base import LAUNCHED
from fleetd.units.xfleet import Requirements, Reschedule


def machine(name: str, **kw: object) -> MachineView:
    return dataclasses.replace(
        MachineView(name=name, machine_id=f"{name}-id", up=True, metadata={}, cpus=4.0,
                    memory_bytes=8 * GiB), **kw)


def unit(name: str, machine: Optional[str] = None, **kw: object) -> UnitView:
    req = kw.pop("req", Requirements())
    return dataclasses.replace(
        UnitView(name=name, desired=LAUNCHED, machine=machine, reason="", req=req), **kw)  # type: ignore[arg-type]


H = [machine("h1"), machine("h2"), machine("h3")]
POLICY = Reschedule(attempts=2, interval_s=100, delay_s=4, max_delay_s=10)


def failed_on(name: str, where: str, at: float, earlier: Sequence[Failure] = (),
              policy: Reschedule = POLICY) -> UnitView:
    now = Failure(where, at, "start limit hit")
    return unit(name, where, req=Requirements(reschedule=policy),
                failures=(*earlier, now), failed=now)


def only(tasks: List[Place]) -> Place:
    assert len(tasks) == 1, tasks
    return tasks[0]


# --- reschedule -------------------------------------------------------------------------

def test_failed_unit_waits_out_its_delay_then_moves_elsewhere() -> None:
    u = failed_on("a.service", "h1", at=1000.0)
    early = reconcile([u], H, now=1002.0)
    task = only(early.tasks)
    assert task.machine == "h1" and "reschedule attempt 1 of 2 in 4s" in task.reason
    assert early.wake_at == 1004.0  # the loop sets a timer for it
    due = reconcile([dataclasses.replace(u, reason=task.reason)], H, now=1004.5)
    task = only(due.tasks)
    assert task.machine in ("h2", "h3")
    assert task.reason.startswith("failed on h1: start limit hit (reschedule attempt 1 of 2)")


def test_delay_grows_exponentially_and_machines_failed_on_are_avoided() -> None:
    u = failed_on("a.service", "h2", at=1010.0, earlier=[Failure("h1", 1000.0, "boom")])
    assert "reschedule attempt 2 of 2 in 8s" in only(reconcile([u], H, 1011.0).tasks).reason
    assert only(reconcile([u], H, 1018.5).tasks).machine == "h3"  # not h1, not h2


def test_all_machines_failed_lately_it_goes_back_to_one_as_a_fresh_start() -> None:
    two = [machine("h1"), machine("h2")]
    u = failed_on("a.service", "h2", at=1010.0, earlier=[Failure("h1", 1000.0, "boom")])
    task = only(reconcile([u], two, 1020.0).tasks)
    assert task.machine in ("h1", "h2")
    assert "no other machine can take it" in task.reason
    pinned = dataclasses.replace(failed_on("b.service", "h1", at=1000.0),
                                 req=Requirements(machine_id="h1", reschedule=POLICY))
    again = only(reconcile([pinned], two, 1005.0).tasks)
    assert again.machine == "h1" and again.retry  # a new generation restarts it there


def test_no_attempts_left_it_stays_failed_and_says_so_until_old_failures_age_out() -> None:
    earlier = [Failure("h1", 1000.0, "a"), Failure("h2", 1010.0, "b")]
    u = failed_on("a.service", "h3", at=1030.0, earlier=earlier)
    out = reconcile([u], H, 1050.0)
    task = only(out.tasks)
    assert task.machine == "h3"
    assert "not moved: all 2 reschedule attempts in 100s used" in task.reason
    assert out.wake_at == 1100.0  # when the oldest failure leaves the interval
    later = reconcile([dataclasses.replace(u, reason=task.reason)], H, 1101.0)
    assert only(later.tasks).machine in ("h1", "h2")  # one attempt is free again


def test_attempts_zero_never_moves_and_unlimited_always_does() -> None:
    never = failed_on("a.service", "h1", 1000.0, policy=Reschedule(attempts=0))
    assert "RescheduleAttempts=0 keeps it there" in only(reconcile([never], H, 2000).tasks).reason
    many = [Failure("h1", 1000.0 + i, "x") for i in range(50)]
    always = failed_on("b.service", "h1", 1100.0, earlier=many,
                       policy=Reschedule(attempts=None, delay_s=1, max_delay_s=1))
    assert only(reconcile([always], H, 1102.0).tasks).machine in ("h2", "h3")


def test_a_unit_failing_nowhere_is_left_alone() -> None:
    u = unit("a.service", "h1", failures=(Failure("h1", 10.0, "old"),))
    assert reconcile([u], H, 1000.0).tasks == []


# --- fencing ----------------------------------------------------------------------------

def test_lost_machines_fenced_unit_moves_only_once_its_copy_is_surely_stopped() -> None:
    lost = [machine("h1", up=False, lost="silent for 6s", silent_s=6.0), machine("h2")]
    fenced = unit("f.service", "h1", req=Requirements(fence_after_s=10, fence_wait_s=15))
    plain = unit("p.service", "h1")
    out = reconcile([fenced, plain], lost, now=500.0)
    by = {t.unit: t for t in out.tasks}
    assert by["p.service"].machine == "h2"  # no fencing asked: moves at once
    assert by["f.service"].machine == "h1"
    assert "surely stopped (15s of silence)" in by["f.service"].reason
    assert out.wake_at == 509.0
    later = [machine("h1", up=False, lost="silent", silent_s=15.0), machine("h2")]
    assert only(reconcile([fenced], later, 509.0).tasks).machine == "h2"


# --- drain ------------------------------------------------------------------------------

def test_draining_machine_takes_nothing_new() -> None:
    draining = [machine("h1", draining=True), machine("h2", draining=True)]
    task = only(reconcile([unit("a.service")], draining, 0).tasks)
    assert task.machine is None and "no machine takes new units" in task.reason
    pinned = unit("b.service", req=Requirements(machine_id="h1"))
    assert "is draining" in only(reconcile([pinned], draining, 0).tasks).reason


def test_drain_hands_over_one_unit_at_a_time_and_waits_for_health() -> None:
    ms = [machine("h1", draining=True), machine("h2")]
    units = [unit("a.service", "h1"), unit("b.service", "h1")]
    first = only(reconcile(units, ms, 0).tasks)
    assert (first.unit, first.machine, first.handoff) == ("a.service", "h2", "h1")
    assert first.reason.startswith("h1 is draining: its copy there runs until this one is")
    moving = [unit("a.service", "h2", handoff="h1", reason=first.reason), units[1]]
    assert reconcile(moving, ms, 1).tasks == []  # a is not healthy on h2 yet: b waits
    # healthy on h2: its old copy leaves h1's set, and b waits until that copy is gone
    stopping = [dataclasses.replace(moving[0], ready=True, old_running=True), units[1]]
    assert reconcile(stopping, ms, 2).tasks == []
    gone = [dataclasses.replace(moving[0], ready=True), units[1]]
    tasks = {t.unit: t for t in reconcile(gone, ms, 3).tasks}
    assert tasks["a.service"].handoff is None  # done
    assert (tasks["b.service"].machine, tasks["b.service"].handoff) == ("h2", "h1")


def test_drain_keeps_what_fits_nowhere_else_until_its_deadline() -> None:
    ms = [machine("h1", draining=True), machine("h2")]
    pinned = unit("p.service", "h1", req=Requirements(machine_id="h1"))
    task = only(reconcile([pinned], ms, 0).tasks)
    assert task.machine == "h1"
    assert task.reason == "h1 is draining, but MachineID=h1 pins it there"
    overdue = [machine("h1", draining=True, drain_overdue=True), machine("h2")]
    gone = only(reconcile([pinned], overdue, 0).tasks)
    assert gone.machine is None and "deadline passed" in gone.reason


def test_after_the_deadline_everything_left_moves_at_once_without_hand_off() -> None:
    ms = [machine("h1", draining=True, drain_overdue=True), machine("h2")]
    units = [unit("a.service", "h2", handoff="h1"), unit("b.service", "h1"),
             unit("c.service", "h1")]
    tasks = {t.unit: t for t in reconcile(units, ms, 0).tasks}
    assert tasks["a.service"].handoff is None
    assert {tasks["b.service"].machine, tasks["c.service"].machine} == {"h2"}
    assert tasks["b.service"].handoff is None


def test_a_global_unit_stays_on_a_draining_machine_until_the_rest_has_left() -> None:
    from fleetd.engine.scheduler import global_placements
    ms = [machine("h1", draining=True), machine("h2")]
    g = unit("g.service", req=Requirements(is_global=True))
    busy = global_placements([g, unit("a.service", "h1")], ms)
    assert busy["g.service"] == ["h1", "h2"]
    assert global_placements([g, unit("a.service", "h2")], ms)["g.service"] == ["h2"]
