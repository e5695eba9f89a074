"""Rolling updates through the engine loop (engine/rolling.py on MemoryRegistry and
FakeClock): a template's new content reaches its running instances one healthy step at
a time; a failed step stops it, and AutoRevert= takes the changed copies back."""

from __future__ import annotations

from typing import Dict, List

import pytest
from test_engine_loop import Fleet

from fleetd import protocol
from fleetd.registry.base import INACTIVE, NotLeader, UnitInput
from fleetd.testing.registry import at_once
from fleetd.units.model import content_hash

WEB = "[Service]\nExecStart=/bin/sleep {v}\n[X-Fleet]\nConflicts=web@*.service\n" \
      "[X-Update]\nMinHealthySec=5s\nHealthyDeadlineSec=1min\n"
NAMES = ["web@1.service", "web@2.service", "web@3.service"]


def fleet() -> Fleet:
    f = Fleet(machines=3)
    f.store("web@.service", WEB.format(v=1))
    f.store("web@1.service", WEB.format(v=1))
    f.store("web@2.service", WEB.format(v=1))
    f.store("web@3.service", WEB.format(v=1))
    at_once(f.registry.set_desired(["web@.service"], INACTIVE))
    f.run()
    for n in NAMES:
        f.report(n, protocol.RUNNING)
    f.run()
    return f


def submit(f: Fleet, text: str) -> None:
    """What the API's submit --replace does with a template (service/units.py)."""
    at_once(f.registry.put_units([UnitInput("web@.service", text, content_hash(text))],
                                 None, replace=True, follow=False, via="test"))


def contents(f: Fleet) -> Dict[str, str]:
    out = {}
    for n in NAMES:
        u = f.registry.get_unit(n)
        assert u is not None
        out[n] = {content_hash(WEB.format(v=1)): "v1", content_hash(WEB.format(v=2)): "v2"
                  }.get(u.hash, u.hash[:8])
    return out


def step(f: Fleet, seconds: float = 0.0) -> None:
    f.clock.advance(seconds)
    f.run()
    f.run()  # the content written by the first goes out in the second


def status(f: Fleet) -> str:
    t = f.registry.get_unit("web@.service")
    assert t is not None
    return t.reason


def test_new_content_rolls_one_healthy_copy_at_a_time() -> None:
    f = fleet()
    submit(f, WEB.format(v=2))
    step(f)
    assert contents(f) == {NAMES[0]: "v2", NAMES[1]: "v1", NAMES[2]: "v1"}
    assert status(f).startswith("rolling out v2 ")
    step(f, 30)  # not reported healthy: the next copy waits, however long
    assert contents(f)[NAMES[1]] == "v1"
    f.report(NAMES[0], protocol.RUNNING)
    step(f, 1)
    assert contents(f)[NAMES[1]] == "v1"  # healthy, but not for MinHealthySec= yet
    step(f, 5)
    assert contents(f) == {NAMES[0]: "v2", NAMES[1]: "v2", NAMES[2]: "v1"}
    f.report(NAMES[1], protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    f.report(NAMES[2], protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    assert set(contents(f).values()) == {"v2"}
    assert status(f).startswith("v2 (") and status(f).endswith("on all 3 copies")
    pushed: List[str] = [s["hash"] for specs in f.pushed.values() for s in specs]
    assert len(pushed) == 3 and len(set(pushed)) == 1


def test_a_failed_copy_stops_the_rollout_and_auto_revert_takes_it_back() -> None:
    f = fleet()
    broken = WEB.format(v=2).replace("MinHealthySec=5s", "MinHealthySec=5s\nAutoRevert=yes")
    submit(f, broken)
    step(f)
    first = [n for n, c in contents(f).items() if c != "v1"]
    assert first == [NAMES[0]]
    f.report(NAMES[0], protocol.FAILED, error="start limit hit")
    step(f, 1)
    versions = f.registry.list_versions("web@.service")
    assert [v.hash for v in versions] == [content_hash(WEB.format(v=1)), content_hash(broken),
                                          content_hash(WEB.format(v=1))]
    assert versions[-1].via.startswith("AutoRevert: v2 (") and "start limit hit" in versions[-1].via
    t = f.registry.get_unit("web@.service")
    assert t is not None and t.hash == content_hash(WEB.format(v=1))
    step(f)
    assert set(contents(f).values()) == {"v1"}  # web@1 went back; the others never moved
    f.report(NAMES[0], protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    assert status(f).startswith("v3 (") and "on all 3 copies (AutoRevert: v2" in status(f)


def test_a_canary_waits_for_promote() -> None:
    f = fleet()
    text = WEB.format(v=2)
    at_once(f.registry.put_units([UnitInput("web@.service", text, content_hash(text))], None,
                                 replace=True, follow=False, via="test",
                                 options={"canary": 1}))
    step(f)
    f.report(NAMES[0], protocol.RUNNING)
    step(f, 0.1)
    step(f, 30)
    assert contents(f) == {NAMES[0]: "v2", NAMES[1]: "v1", NAMES[2]: "v1"}
    assert status(f).endswith("waiting for fleetctl promote web@.service (or rollback)")
    at_once(f.registry.set_version_options("web@.service", 2, {"canary": 0}))
    step(f)
    assert contents(f)[NAMES[1]] == "v2"


def test_with_a_spare_machine_the_old_copy_runs_until_the_new_one_is_healthy() -> None:
    """A rollout's change hands over as a drain does when another machine can take the
    unit: the new content starts there while the old copy keeps its old content."""
    f = Fleet(machines=4)
    for name in ["web@.service", *NAMES]:
        f.store(name, WEB.format(v=1))
    at_once(f.registry.set_desired(["web@.service"], INACTIVE))
    f.run()
    for n in NAMES:
        f.report(n, protocol.RUNNING)
    f.run()
    before = {n: f.where(n) for n in NAMES}
    spare = ({"h1", "h2", "h3", "h4"} - set(before.values())).pop()
    submit(f, WEB.format(v=2))
    step(f)
    u = f.registry.get_unit(NAMES[0])
    assert u is not None and (u.machine, u.handoff) == (spare, before[NAMES[0]])
    assert u.reason.startswith(f"new content: its copy on {before[NAMES[0]]} runs the old "
                               "one until this one is healthy; ")
    old_set = {s["name"]: s["hash"] for s in f.pushed[before[NAMES[0]]]}
    new_set = {s["name"]: s["hash"] for s in f.pushed[spare]}
    assert old_set[NAMES[0]] != new_set[NAMES[0]]  # old content there, new content here
    assert old_set[NAMES[0]] == f.engine.snapshot().hashes[(NAMES[0], before[NAMES[0]])]
    f.report(NAMES[0], protocol.RUNNING)  # the new copy, on the spare machine
    step(f, 0.1)
    assert NAMES[0] not in {s["name"] for s in f.pushed[before[NAMES[0]]]}  # old one stops
    at_once(f.registry.delete_observed(before[NAMES[0]], NAMES[0]))  # its agent says so
    step(f, 5)
    u = f.registry.get_unit(NAMES[0])
    assert u is not None and u.handoff is None
    assert contents(f)[NAMES[1]] == "v2"  # the next one goes, to the machine freed
    assert f.where(NAMES[1]) == before[NAMES[0]]


def test_a_deposed_engine_changes_no_content() -> None:
    """A rollout's steps are fenced like the engine's other writes: an engine whose
    term no longer leads moves no instance to new content."""
    f = fleet()
    f.engine.epoch = 1
    f.registry.leader_epoch = 1
    submit(f, WEB.format(v=2))
    f.registry.leader_epoch = 2  # another fleetd's term now
    with pytest.raises(NotLeader):
        f.run()
    assert set(contents(f).values()) == {"v1"}
