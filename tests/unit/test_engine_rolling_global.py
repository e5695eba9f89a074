"""A Global unit's rolling update through the engine loop (engine/rolling.py on
MemoryRegistry and FakeClock): its new content reaches the machines' copies one healthy
machine at a time (each machine's pushed set keeps the old content until its turn), a
failed copy stops it and AutoRevert= takes it back; each step is published as an event
(engine/transitions.py ``rollout``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

from test_engine_loop import Fleet

from fleetd import protocol
from fleetd.engine.events import Draft
from fleetd.registry.base import LAUNCHED, ObservedRecord, UnitInput
from fleetd.testing.registry import at_once
from fleetd.units.model import content_hash

AGENT = "[Service]\nExecStart=/bin/sleep {v}\n[X-Fleet]\nGlobal=true\n" \
        "[X-Update]\nMinHealthySec=5s\nHealthyDeadlineSec=1min\n{extra}"
NAME = "agent.service"
HOSTS = ["h1", "h2", "h3"]


def text(v: int, extra: str = "") -> str:
    return AGENT.format(v=v, extra=extra)


def fleet() -> Tuple[Fleet, List[Draft]]:
    f = Fleet(machines=3)
    f.store(NAME, text(1))
    at_once(f.registry.set_desired([NAME], LAUNCHED))
    f.run()
    for m in HOSTS:
        report(f, m, protocol.RUNNING)
    f.run()
    events: List[Draft] = []
    f.engine.publish = events.append
    return f, events


def report(f: Fleet, machine: str, state: str, **kw: Any) -> None:
    """The agent of ``machine`` reports the copy it was handed last."""
    u = f.registry.get_unit(NAME)
    assert u is not None
    at_once(f.registry.upsert_observed(ObservedRecord(
        unit=NAME, machine=machine, hash=pushed(f)[machine], state=state, pid=None,
        started_at=None, exit_status=None, restarts=0, error=kw.get("error"),
        updated_at=f.clock.now, generation=u.generation)))


def pushed(f: Fleet) -> Dict[str, str]:
    return {m: s["hash"] for m, specs in f.pushed.items() for s in specs if s["name"] == NAME}


def versions(f: Fleet, *texts: str) -> Dict[str, str]:
    """Each machine's pushed copy, as the version it renders (v1, v2, ...)."""
    label = {_rendered(f, t): f"v{i}" for i, t in enumerate(texts, 1)}
    return {m: label.get(h, h[:8]) for m, h in sorted(pushed(f).items())}


def _rendered(f: Fleet, t: str) -> str:
    """What content ``t`` runs as on a machine (no per-machine templating here)."""
    u = f.registry.get_unit(NAME)
    m = f.registry.get_machine("h1")
    assert u is not None and m is not None
    got = f.engine.rendering.hash_on(dataclasses.replace(u, hash=content_hash(t)), m)
    assert got is not None
    return got


def submit(f: Fleet, t: str) -> None:
    """What the API's submit --replace does with a plain unit."""
    at_once(f.registry.put_units([UnitInput(NAME, t, content_hash(t))], None, replace=True,
                                 via="test"))


def step(f: Fleet, seconds: float = 0.0) -> None:
    f.clock.advance(seconds)
    f.run()
    f.run()


def kinds(events: List[Draft]) -> List[str]:
    return [e.kind for e in events if e.kind.startswith("rollout-")]


def test_a_global_units_new_content_rolls_one_healthy_machine_at_a_time() -> None:
    f, events = fleet()
    v1, v2 = text(1), text(2)
    submit(f, v2)
    step(f)
    assert versions(f, v1, v2) == {"h1": "v2", "h2": "v1", "h3": "v1"}
    u = f.registry.get_unit(NAME)
    assert u is not None and u.reason.startswith("rolling out v2 ")
    assert "h1 changing, 2 waiting" in u.reason
    step(f, 30)  # not reported healthy: the next machine waits
    assert versions(f, v1, v2) == {"h1": "v2", "h2": "v1", "h3": "v1"}
    report(f, "h1", protocol.RUNNING)
    step(f, 1)
    assert versions(f, v1, v2)["h2"] == "v1"  # healthy, not for MinHealthySec= yet
    step(f, 5)
    assert versions(f, v1, v2) == {"h1": "v2", "h2": "v2", "h3": "v1"}
    report(f, "h2", protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    report(f, "h3", protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    assert versions(f, v1, v2) == {"h1": "v2", "h2": "v2", "h3": "v2"}
    u = f.registry.get_unit(NAME)
    assert u is not None and u.reason.startswith("v2 (") and u.reason.endswith("all 3 copies")
    changes = [(e.unit, e.machine) for e in events if e.kind == "rollout-change"]
    assert changes == [(NAME, "h1"), (NAME, "h2"), (NAME, "h3")]
    healthy = [e.machine for e in events if e.kind == "rollout-healthy"]
    assert healthy == ["h1", "h2", "h3"]
    assert kinds(events)[0] == "rollout-change" and kinds(events)[-1] == "rollout-done"
    done = [e for e in events if e.kind == "rollout-done"]
    assert done[0].unit == NAME and done[0].reason == u.reason


def test_a_failed_machine_copy_stops_it_and_auto_revert_takes_it_back() -> None:
    f, events = fleet()
    v1, broken = text(1), text(2, "AutoRevert=yes\n")
    submit(f, broken)
    step(f)
    assert versions(f, v1, broken) == {"h1": "v2", "h2": "v1", "h3": "v1"}
    report(f, "h1", protocol.FAILED, error="start limit hit")
    step(f, 1)
    u = f.registry.get_unit(NAME)
    assert u is not None and u.hash == content_hash(v1)
    via = f.registry.list_versions(NAME)[-1].via
    assert via.startswith("AutoRevert: v2 (") and "h1 failed: on h1: start limit hit" in via
    step(f)
    assert versions(f, v1) == {"h1": "v1", "h2": "v1", "h3": "v1"}  # h2, h3 never moved
    report(f, "h1", protocol.RUNNING)
    step(f, 0.1)
    step(f, 5)
    u = f.registry.get_unit(NAME)
    assert u is not None and "on all 3 copies (AutoRevert: v2" in u.reason
    assert "rollout-reverting" in kinds(events) and "rollout-revert" in kinds(events)
    assert kinds(events)[-1] == "rollout-reverted"
    stopped = next(e for e in events if e.kind == "rollout-reverting")
    assert "start limit hit" in stopped.reason


def test_a_machine_with_no_copy_running_takes_the_new_content_at_once() -> None:
    f, events = fleet()
    at_once(f.registry.delete_observed("h3", NAME))  # its agent has no copy
    submit(f, text(2))
    step(f)
    assert versions(f, text(1), text(2)) == {"h1": "v2", "h2": "v1", "h3": "v2"}
    # h3 was never held back, so no step of the rollout moves it: h1 is the one in flight
    assert [e.machine for e in events if e.kind == "rollout-change"] == ["h1"]


def test_a_global_unit_never_changed_renders_as_before() -> None:
    """No versions to roll between: every machine has the unit's content, no events."""
    f, events = fleet()
    step(f, 10)
    assert versions(f, text(1)) == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert kinds(events) == []


def test_a_canary_machine_waits_for_promote_and_says_so() -> None:
    f, events = fleet()
    v1, v2 = text(1), text(2)
    at_once(f.registry.put_units([UnitInput(NAME, v2, content_hash(v2))], None,
                                 replace=True, via="test", options={"canary": 1}))
    step(f)
    report(f, "h1", protocol.RUNNING)
    step(f, 0.1)
    step(f, 30)
    assert versions(f, v1, v2) == {"h1": "v2", "h2": "v1", "h3": "v1"}
    u = f.registry.get_unit(NAME)
    assert u is not None and u.reason.endswith(f"waiting for fleetctl promote {NAME} "
                                               "(or rollback)")
    assert kinds(events)[-1] == "rollout-canary"
    at_once(f.registry.set_version_options(NAME, 2, {"canary": 0}))
    step(f)
    assert versions(f, v1, v2)["h2"] == "v2"
    assert "rollout-promoted" in kinds(events)
