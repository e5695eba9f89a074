"""engine/transitions.py ``rollout``: the events of a rollout's pass, from what the
pass decided (engine/rollout.py) and what the pass before left in flight."""

from __future__ import annotations

from fleetd.engine.rollout import Change, Revert, Rollout
from fleetd.engine.transitions import rollout

T = "web@.service"


def test_a_change_is_an_event_with_its_reason_and_machine() -> None:
    r = Rollout(changes=[Change("web@1.service", "b" * 64, "rolling out: at most 1"),
                         Change("agent.service", "c" * 64, "at once", "h2")])
    got = rollout(r, {}, {})
    assert [(e.kind, e.unit, e.machine, e.reason) for e in got] == [
        ("rollout-change", "web@1.service", None, "rolling out: at most 1"),
        ("rollout-change", "agent.service", "h2", "at once")]


def test_a_copy_that_leaves_flight_is_healthy_unless_the_rollout_stopped() -> None:
    before = {T: (("web@1.service", None),), "agent.service": (("agent.service", "h1"),)}
    r = Rollout(in_flight={T: (("web@2.service", None),), "agent.service": ()})
    got = rollout(r, before, {})
    assert [(e.kind, e.unit, e.machine) for e in got] == [
        ("rollout-healthy", "agent.service", "h1"), ("rollout-healthy", "web@1.service", None)]
    assert got[0].reason.startswith("agent.service: agent.service on h1 healthy")
    stopped = Rollout(in_flight={T: ()}, phase={T: "stopped"}, status={T: "stopped: x"})
    assert [e.kind for e in rollout(stopped, before, {})] == ["rollout-stopped"]
    assert rollout(Rollout(), before, {}) == []  # no rollout any more: nothing to say


def test_each_new_status_is_its_phase_and_a_canary_rolling_on_was_promoted() -> None:
    r = Rollout(status={T: "rolling out v2: 1 of 3 copies done"}, phase={T: "rolling"},
                reverts=[Revert(T, "a" * 64, 1, "AutoRevert: v2 failed")])
    got = rollout(r, {}, {T: "rolling out v2: canary, 1 of 3 copies on it; waiting"})
    assert [(e.kind, e.unit, e.reason) for e in got] == [
        ("rollout-revert", T, "AutoRevert: v2 failed"),
        ("rollout-promoted", T, "rolling out v2: 1 of 3 copies done")]
    assert rollout(r, {}, {T: "rolling out v2: 0 of 3"})[-1].kind == "rollout-rolling"
