"""engine/rollout.py: which instances change, when the rollout stops or goes back, and
what the template's status says; a table, then the walk of whole rollouts."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from fleetd.engine.rollout import Copy, Rollout, Template, Version, decide, options
from fleetd.units.xupdate import UpdatePolicy

OLD, NEW = "a" * 64, "b" * 64
T0 = 1000.0  # when the template got NEW
POLICY = UpdatePolicy(max_parallel=1, min_healthy_s=10, healthy_deadline_s=60)
V = (Version(1, OLD, "alice"), Version(2, NEW, "bob"))


def copy(name: str, content: str = OLD, running: bool = True, changed_at: float = 0.0,
         ready_since: Optional[float] = 1.0, failed: Optional[str] = None) -> Copy:
    return Copy(f"web@{name}.service", content, running, changed_at, ready_since, failed)


def template(*copies: Copy, policy: UpdatePolicy = POLICY, versions: Sequence[Version] = V,
             reason: str = "", content: str = NEW, **options: Any) -> Template:
    return Template("web@.service", content, tuple(versions), T0, policy, copies, reason,
                    options)


def changes(r: Rollout) -> List[Tuple[str, str]]:
    return [(c.unit.split("@")[1].split(".")[0], "new" if c.hash == NEW else "old")
            for c in r.changes]


# name: (copies, now, the changes it makes, how the status line starts)
GRID: Dict[str, Tuple[Tuple[Copy, ...], float, List[Tuple[str, str]], str]] = {
    "first step: one copy changes":
        ((copy("1"), copy("2"), copy("3")), T0, [("1", "new")],
         "rolling out v2 (bbbbbbbbbbbb): 0 of 3 copies done, web@1.service changing, 2 waiting"),
    "a changed copy not yet healthy holds the next":
        ((copy("1", NEW, changed_at=T0, ready_since=None), copy("2"), copy("3")), T0 + 5, [],
         "rolling out v2 (bbbbbbbbbbbb): 0 of 3 copies done, web@1.service changing"),
    "healthy but not for MinHealthySec= yet":
        ((copy("1", NEW, changed_at=T0, ready_since=T0 + 5), copy("2"), copy("3")), T0 + 14,
         [], "rolling out v2 (bbbbbbbbbbbb): 0 of 3"),
    "healthy long enough: the next copy goes":
        ((copy("1", NEW, changed_at=T0, ready_since=T0 + 5), copy("2"), copy("3")), T0 + 15,
         [("2", "new")], "rolling out v2 (bbbbbbbbbbbb): 1 of 3 copies done, web@2.service"),
    "a copy with no running copy changes at once, beside the rolling one":
        ((copy("1"), copy("2", running=False), copy("3")), T0, [("2", "new"), ("1", "new")],
         "rolling out"),
    "the last copy healthy: done":
        ((copy("1", NEW, changed_at=T0, ready_since=T0 + 5),
          copy("2", NEW, changed_at=T0 + 20, ready_since=T0 + 25),
          copy("3", NEW, changed_at=T0 + 40, ready_since=T0 + 45)), T0 + 55, [],
         "v2 (bbbbbbbbbbbb) on all 3 copies"),
    "a failed copy stops the rollout (no AutoRevert=)":
        ((copy("1", NEW, changed_at=T0, ready_since=None, failed="start limit hit"),
          copy("2"), copy("3")), T0 + 5, [],
         "rollout of v2 (bbbbbbbbbbbb) stopped: web@1.service failed: start limit hit; "
         "submit new content to go on"),
    "not healthy by HealthyDeadlineSec=: failed":
        ((copy("1", NEW, changed_at=T0, ready_since=None), copy("2"), copy("3")), T0 + 60, [],
         "rollout of v2 (bbbbbbbbbbbb) stopped: web@1.service failed: not healthy 60s after "
         "it changed (HealthyDeadlineSec=)"),
    "an instance with content of its own is no part of it":
        ((copy("1", "c" * 64), copy("2", NEW, changed_at=T0, ready_since=T0)), T0 + 10, [],
         "v2 (bbbbbbbbbbbb) on all 1 copies"),
}


@pytest.mark.parametrize("case", GRID)
def test_grid(case: str) -> None:
    copies, now, want, status = GRID[case]
    r = decide([template(*copies, reason="rolling out v2")], now)
    assert changes(r) == want
    assert r.status["web@.service"].startswith(status), r.status
    assert r.reverts == []


def test_max_parallel_changes_that_many_at_a_time() -> None:
    two = dataclasses.replace(POLICY, max_parallel=2)
    r = decide([template(copy("1"), copy("2"), copy("3"), policy=two)], T0)
    assert changes(r) == [("1", "new"), ("2", "new")]
    r = decide([template(copy("1", NEW, changed_at=T0, ready_since=None), copy("2"),
                         copy("3"), policy=two)], T0 + 1)
    assert changes(r) == [("2", "new")]


def test_nothing_to_roll_says_nothing() -> None:
    """A template whose copies all have its content, and no rollout under way: no
    status (a copy failing now is the reschedule policy's business, not a rollout's)."""
    r = decide([template(copy("1", NEW, changed_at=T0, ready_since=None, failed="boom"))],
               T0 + 100)
    assert (r.changes, r.reverts, r.status) == ([], [], {})


def test_auto_revert_goes_back_to_the_previous_version_once() -> None:
    revert = dataclasses.replace(POLICY, auto_revert=True)
    failed = copy("1", NEW, changed_at=T0, ready_since=None, failed="check failing")
    r = decide([template(failed, copy("2"), copy("3"), policy=revert)], T0 + 5)
    assert r.changes == []
    assert [(x.template, x.hash, x.number) for x in r.reverts] == [("web@.service", OLD, 1)]
    assert r.reverts[0].reason == ("AutoRevert: v2 (bbbbbbbbbbbb) failed (web@1.service "
                                   "failed: check failing)")
    assert r.status["web@.service"].endswith("AutoRevert=yes: back to v1 (aaaaaaaaaaaa)")
    # the template is back on OLD (version 3, by AutoRevert): the changed copy goes back
    back = (*V, Version(3, OLD, r.reverts[0].reason))
    t = template(failed, copy("2"), copy("3"), policy=revert, versions=back, content=OLD,
                 reason=r.status["web@.service"])
    r2 = decide([t], T0 + 6)
    assert changes(r2) == [("1", "old")] and r2.reverts == []
    # a revert that fails is not reverted again
    t = template(copy("1", OLD, changed_at=T0 + 7, ready_since=None, failed="boom"),
                 copy("2"), copy("3"), policy=revert, versions=back, content=OLD,
                 reason="rolling out v3")
    r3 = decide([t], T0 + 8)
    assert r3.reverts == [] and r3.changes == []
    assert "no revert again" in r3.status["web@.service"]
    # once all are back and healthy: done, saying why
    t = template(copy("1", OLD, changed_at=T0 + 7, ready_since=T0 + 8), copy("2"), copy("3"),
                 policy=revert, versions=back, content=OLD, reason="rolling out v3")
    r4 = decide([t], T0 + 30)
    assert r4.status["web@.service"] == (
        "v3 (aaaaaaaaaaaa) on all 3 copies (AutoRevert: v2 (bbbbbbbbbbbb) failed "
        "(web@1.service failed: check failing))")


def test_wakes_when_min_healthy_ends_or_the_deadline_passes() -> None:
    r = decide([template(copy("1", NEW, changed_at=T0, ready_since=T0 + 5), copy("2"))],
               T0 + 6)
    assert r.wake_at == T0 + 15
    r = decide([template(copy("1", NEW, changed_at=T0, ready_since=None), copy("2"))], T0 + 6)
    assert r.wake_at == T0 + 6.5  # not healthy yet: looked at again soon
    r = decide([template(copy("1", NEW, changed_at=T0, ready_since=None), copy("2"))],
               T0 + 59.8)
    assert r.wake_at == T0 + 60  # when it is due to be healthy at the latest


def test_a_canary_changes_that_many_then_waits_for_promote() -> None:
    r = decide([template(copy("1"), copy("2"), copy("3"), canary=1)], T0)
    assert changes(r) == [("1", "new")]
    one = copy("1", NEW, changed_at=T0, ready_since=T0 + 1)
    r = decide([template(one, copy("2"), copy("3"), canary=1)], T0 + 5)
    assert changes(r) == []
    assert r.status["web@.service"].endswith("canary, 1 of 3 copies on it; waiting for "
                                             "web@1.service to be healthy")
    r = decide([template(one, copy("2"), copy("3"), canary=1)], T0 + 60)
    assert changes(r) == [] and r.status["web@.service"].endswith(
        "waiting for fleetctl promote web@.service (or rollback)")
    r = decide([template(one, copy("2"), copy("3"), canary=0)], T0 + 60)  # promoted
    assert changes(r) == [("2", "new")]
    # a failing canary stops it as any copy does
    bad = copy("1", NEW, changed_at=T0, ready_since=None, failed="boom")
    r = decide([template(bad, copy("2"), copy("3"), canary=1)], T0 + 5)
    assert changes(r) == [] and "stopped: web@1.service failed: boom" in r.status["web@.service"]


def test_command_line_options_override_the_unit_and_junk_is_ignored() -> None:
    policy, canary = options(POLICY, {"max_parallel": 3, "min_healthy_s": 1.5,
                                      "healthy_deadline_s": 30, "auto_revert": True,
                                      "canary": 2})
    assert (policy, canary) == (UpdatePolicy(3, 1.5, 30.0, True), 2)
    junk = {"max_parallel": 0, "min_healthy_s": float("nan"), "healthy_deadline_s": "1",
            "auto_revert": 1, "canary": True}
    assert options(POLICY, junk) == (POLICY, 0)
    r = decide([template(copy("1"), copy("2"), copy("3"), max_parallel=3)], T0)
    assert changes(r) == [("1", "new"), ("2", "new"), ("3", "new")]


def test_a_global_units_copies_are_its_machines() -> None:
    """``per_machine``: each copy is named by its machine, and a change names the unit
    and that machine (engine/rolling.py renders it there)."""
    machines = (Copy("h1", OLD, True, 0.0, 1.0), Copy("h2", OLD, True, 0.0, 1.0),
                Copy("h3", OLD, False, 0.0, None))
    t = Template("agent.service", NEW, V, T0, POLICY, machines, "", {}, per_machine=True)
    r = decide([t], T0)
    assert [(c.unit, c.machine, c.hash) for c in r.changes] == [
        ("agent.service", "h3", NEW), ("agent.service", "h1", NEW)]
    assert r.in_flight == {"agent.service": (("agent.service", "h1"),)}
    assert r.phase == {"agent.service": "rolling"}
    assert r.status["agent.service"].endswith("h1 changing, 1 waiting")


# status of the rollout -> its phase (what its event is called)
PHASES: Dict[str, Tuple[Tuple[Copy, ...], float, Dict[str, Any], str]] = {
    "rolling": ((copy("1"), copy("2")), T0, {}, "rolling"),
    "waiting": ((copy("1", NEW, changed_at=T0, ready_since=T0),
                 copy("2", NEW, changed_at=T0, ready_since=T0)), T0 + 1, {}, "waiting"),
    "canary": ((copy("1", NEW, changed_at=T0, ready_since=T0), copy("2")), T0 + 60,
               {"canary": 1}, "canary"),
    "done": ((copy("1", NEW, changed_at=T0, ready_since=T0),), T0 + 60, {}, "done"),
    "stopped": ((copy("1", NEW, changed_at=T0, ready_since=None, failed="x"), copy("2")),
                T0 + 1, {}, "stopped"),
}


@pytest.mark.parametrize("case", PHASES)
def test_each_status_says_its_phase(case: str) -> None:
    copies, now, opts, phase = PHASES[case]
    r = decide([template(*copies, reason="rolling out v2", **opts)], now)
    assert r.phase == {"web@.service": phase}


def test_reverting_then_reverted() -> None:
    revert = dataclasses.replace(POLICY, auto_revert=True)
    failed = copy("1", NEW, changed_at=T0, ready_since=None, failed="boom")
    r = decide([template(failed, copy("2"), policy=revert)], T0 + 5)
    assert r.phase == {"web@.service": "reverting"}
    back = (*V, Version(3, OLD, "AutoRevert: v2 failed"))
    t = template(copy("1", OLD, changed_at=T0 + 7, ready_since=T0 + 8), copy("2"),
                 policy=revert, versions=back, content=OLD, reason="rolling out v3")
    assert decide([t], T0 + 30).phase == {"web@.service": "reverted"}
