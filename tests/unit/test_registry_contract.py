"""The registry contract (fleetd/registry/base.py), run against every registry.

SQLite (the embedded default, on a real file under tmp_path) and MemoryRegistry
(fleetd.testing.registry, what unit tests build engines on) must answer alike: a test
here says what any registry does. What only SQLite has (its file, schema versions and
migrations) is tested in test_registry_sqlite.py and test_registry_failures.py.

EtcdRegistry passes the same tests on a real etcd: tests/integration/
test_registry_contract_etcd.py imports every test here and replaces ``reg`` with an
etcd-backed one (so these unit tests need no etcd process). A test added here runs
there too; it may use only the Registry protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registrykit import A_TEXT, B_TEXT, C_TEXT, machine, observed, u

from fleetd.registry.base import (
    FAILURES_KEPT,
    INACTIVE,
    LAUNCHED,
    LOADED,
    VERSIONS_KEPT,
    Conflict,
    FailureRecord,
    MachineRecord,
    NotFound,
    Registry,
    UnitInput,
)
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import MemoryRegistry
from fleetd.units.model import content_hash

TEXT = A_TEXT


@pytest.fixture(params=["sqlite", "memory"])
def reg(request: pytest.FixtureRequest, tmp_path: Path,
        loop: asyncio.AbstractEventLoop) -> Iterator[Registry]:
    """Each registry, on the test's loop (tests/conftest.py runs the test there)."""
    registry: Registry = (SqliteRegistry(str(tmp_path / "state" / "registry.db"))
                          if request.param == "sqlite" else MemoryRegistry())
    yield registry
    loop.run_until_complete(registry.close())


@pytest.fixture
def one(reg: Registry, loop: asyncio.AbstractEventLoop) -> Registry:
    """A registry holding a.service, launched and unplaced."""
    loop.run_until_complete(reg.put_units([u("a.service", TEXT)], LAUNCHED))
    return reg


def snapshot(reg: Registry) -> tuple[object, ...]:
    """Everything the registry holds, to compare before/after a refused write."""
    units = [(r.name, r.hash, r.desired, r.machine, r.reason, r.updated_at)
             for r in reg.list_units()]
    texts = {r.hash: reg.unit_text(r.hash) for r in reg.list_units()}
    return (units, texts, reg.list_machines(), reg.list_observed())


def test_a_new_registry_is_empty(reg: Registry) -> None:
    assert reg.list_units() == []
    assert reg.list_machines() == []
    assert reg.list_observed() == []
    assert reg.list_failures() == {}


# --- units ---------------------------------------------------------------------------------


async def test_put_units_stores_units_and_content(reg: Registry) -> None:
    await reg.put_units([u("b.service", B_TEXT), u("a.service", A_TEXT)], LOADED)
    records = reg.list_units()
    assert [r.name for r in records] == ["a.service", "b.service"]  # sorted by name
    a = reg.get_unit("a.service")
    assert a is not None
    assert (a.hash, a.desired, a.machine, a.reason) == (content_hash(A_TEXT), LOADED, None, "")
    assert a.updated_at > 0
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT
    assert reg.unit_text(content_hash(B_TEXT)) == B_TEXT
    assert reg.get_unit("missing.service") is None
    assert reg.unit_text("0" * 64) is None


async def test_put_units_is_all_or_none(reg: Registry) -> None:
    await reg.put_units([u("b.service", B_TEXT)], LOADED)
    before = snapshot(reg)
    with pytest.raises(Conflict) as info:
        # a.service is new; b.service exists with other content
        await reg.put_units([u("a.service", A_TEXT), u("b.service", C_TEXT)], LAUNCHED)
    assert "b.service already exists with different content" in str(info.value)
    assert reg.get_unit("a.service") is None
    assert reg.unit_text(content_hash(A_TEXT)) is None
    assert reg.unit_text(content_hash(C_TEXT)) is None
    assert snapshot(reg) == before


async def test_put_units_same_name_twice_with_different_content_in_one_batch(
    reg: Registry,
) -> None:
    with pytest.raises(Conflict):
        await reg.put_units([u("a.service", A_TEXT), u("a.service", B_TEXT)], LAUNCHED)
    assert reg.list_units() == []


async def test_put_units_same_content_only_updates_desired(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT)], LOADED)
    await reg.set_placements([("a.service", "m1", "placed")])
    await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    rec = reg.get_unit("a.service")
    assert rec is not None
    assert (rec.hash, rec.desired, rec.machine, rec.reason) == (
        content_hash(A_TEXT), LAUNCHED, "m1", "placed")
    assert len(reg.list_units()) == 1


async def test_units_with_the_same_content_share_it(reg: Registry) -> None:
    await reg.put_units([u("web@1.service", A_TEXT), u("web@2.service", A_TEXT)], LAUNCHED)
    await reg.delete_units(["web@1.service"])
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT  # still used by web@2
    await reg.delete_units(["web@2.service"])
    assert reg.unit_text(content_hash(A_TEXT)) is None


async def test_put_units_refuses_unknown_desired_state(reg: Registry) -> None:
    with pytest.raises(ValueError, match="desired state 'running'"):
        await reg.put_units([u("a.service", A_TEXT)], "running")
    assert reg.list_units() == []


async def test_set_desired(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    await reg.set_desired(["a.service", "b.service"], INACTIVE)
    assert [r.desired for r in reg.list_units()] == [INACTIVE, INACTIVE]


async def test_set_desired_missing_unit_changes_nothing(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    before = snapshot(reg)
    with pytest.raises(NotFound, match=r"unit nope\.service does not exist"):
        await reg.set_desired(["a.service", "nope.service"], INACTIVE)
    assert snapshot(reg) == before


async def test_set_desired_refuses_unknown_state(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    with pytest.raises(ValueError):
        await reg.set_desired(["a.service"], "bogus")
    rec = reg.get_unit("a.service")
    assert rec is not None
    assert rec.desired == LAUNCHED


async def test_delete_units_garbage_collects_content(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    await reg.delete_units(["a.service"])
    assert reg.get_unit("a.service") is None
    assert reg.unit_text(content_hash(A_TEXT)) is None
    assert reg.unit_text(content_hash(B_TEXT)) == B_TEXT
    assert [r.name for r in reg.list_units()] == ["b.service"]


async def test_delete_units_missing_unit_changes_nothing(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    before = snapshot(reg)
    with pytest.raises(NotFound, match=r"unit nope\.service does not exist"):
        await reg.delete_units(["a.service", "nope.service"])
    assert snapshot(reg) == before
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT


async def test_delete_keeps_observed_rows(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    await reg.upsert_observed(observed("a.service", "m1"))
    await reg.delete_units(["a.service"])
    assert reg.list_observed() == [observed("a.service", "m1")]


async def test_set_placements(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    await reg.set_placements([("a.service", "m1", "fewest"), ("b.service", None, "no machine")])
    got = {r.name: (r.machine, r.reason) for r in reg.list_units()}
    assert got == {"a.service": ("m1", "fewest"), "b.service": (None, "no machine")}
    await reg.set_placements(iter([("a.service", None, "unloaded")]))
    a = reg.get_unit("a.service")
    assert a is not None
    assert (a.machine, a.reason) == (None, "unloaded")


# --- machines --------------------------------------------------------------------------------


async def test_add_and_get_machine(reg: Registry) -> None:
    m = machine("m1")
    await reg.add_machine(m)
    assert reg.get_machine("m1") == m  # defaults: state new, no facts, never seen
    assert reg.get_machine("m2") is None
    await reg.add_machine(machine("m0", address="10.0.0.2"))
    assert [x.name for x in reg.list_machines()] == ["m0", "m1"]


async def test_add_machine_duplicate_name(reg: Registry) -> None:
    await reg.add_machine(machine("m1"))
    with pytest.raises(Conflict) as info:
        await reg.add_machine(machine("m1", address="10.9.9.9"))
    assert str(info.value) == "machine m1 already exists"
    stored = reg.get_machine("m1")
    assert stored is not None
    assert stored.address == "10.0.0.1"


async def test_add_machine_duplicate_address_and_port(reg: Registry) -> None:
    await reg.add_machine(machine("m1", address="10.0.0.1", port=22))
    with pytest.raises(Conflict) as info:
        await reg.add_machine(machine("m2", address="10.0.0.1", port=22))
    assert str(info.value) == "machine m1 already exists at 10.0.0.1:22"
    assert [m.name for m in reg.list_machines()] == ["m1"]


async def test_same_address_on_another_port_is_another_machine(reg: Registry) -> None:
    await reg.add_machine(machine("m1", port=22))
    await reg.add_machine(machine("m2", port=2222))
    assert [m.name for m in reg.list_machines()] == ["m1", "m2"]


async def test_update_machine(reg: Registry) -> None:
    await reg.add_machine(machine("m1"))
    await reg.update_machine("m1", state="up", machine_id="abc", facts={"cpus": 4, "os": "linux"},
                       last_seen=123.5, error=None)
    m = reg.get_machine("m1")
    assert m is not None
    assert (m.state, m.machine_id, m.facts, m.last_seen, m.error) == (
        "up", "abc", {"cpus": 4, "os": "linux"}, 123.5, None)
    await reg.update_machine("m1", state="error", error="ssh: refused")
    m = reg.get_machine("m1")
    assert m is not None
    assert (m.state, m.error, m.machine_id) == ("error", "ssh: refused", "abc")
    # what add_machine set is untouched
    assert (m.address, m.port, m.metadata) == ("10.0.0.1", 22, {"rack": "r1"})


async def test_update_machine_refuses_other_fields(reg: Registry) -> None:
    await reg.add_machine(machine("m1"))
    with pytest.raises(ValueError, match="address"):
        await reg.update_machine("m1", address="10.1.1.1", state="up")
    assert reg.get_machine("m1") == machine("m1")


async def test_remove_machine_drops_its_observed_rows(reg: Registry) -> None:
    await reg.add_machine(machine("m1"))
    await reg.add_machine(machine("m2", address="10.0.0.2"))
    await reg.upsert_observed(observed("a.service", "m1"))
    await reg.upsert_observed(observed("b.service", "m2"))
    await reg.remove_machine("m1")
    assert reg.get_machine("m1") is None
    assert reg.list_observed() == [observed("b.service", "m2")]
    with pytest.raises(NotFound, match="machine m1 does not exist"):
        await reg.remove_machine("m1")


# --- observed state ----------------------------------------------------------------------------


async def test_replace_observed_drops_rows_not_in_the_snapshot(reg: Registry) -> None:
    await reg.replace_observed("m1", [observed("a.service", "m1"), observed("b.service", "m1")])
    await reg.replace_observed("m2", [observed("a.service", "m2")])
    await reg.replace_observed("m1", [observed("b.service", "m1", state="exited", pid=7)])
    assert reg.list_observed() == [
        observed("a.service", "m2"),  # other machines are untouched
        observed("b.service", "m1", state="exited", pid=7),
    ]
    await reg.replace_observed("m1", [])
    assert reg.list_observed() == [observed("a.service", "m2")]


async def test_upsert_and_delete_observed(reg: Registry) -> None:
    await reg.upsert_observed(observed("a.service", "m1"))
    changed = dataclasses.replace(observed("a.service", "m1"), state="failed", exit_status=3,
                                  restarts=2, error="boom")
    await reg.upsert_observed(changed)
    assert reg.list_observed() == [changed]
    await reg.delete_observed("m1", "a.service")
    assert reg.list_observed() == []
    await reg.delete_observed("m1", "a.service")  # deleting nothing is fine


async def test_refused_write_leaves_the_connection_usable(reg: Registry) -> None:
    with pytest.raises(NotFound):
        await reg.delete_units(["nope.service"])
    await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)  # no transaction left open
    assert [r.name for r in reg.list_units()] == ["a.service"]


# --- placements over time, failures, drains ------------------------------------------


async def test_placed_at_moves_only_with_the_machine(one: Registry) -> None:
    await one.set_placements([("a.service", "h1", "first")])
    first = one.get_unit("a.service")
    assert first is not None and first.placed_at is not None
    time.sleep(0.01)
    await one.set_placements([("a.service", "h1", "same machine, new words")])
    again = one.get_unit("a.service")
    assert again is not None and again.placed_at == first.placed_at
    await one.set_placements([("a.service", "h2", "moved")])
    moved = one.get_unit("a.service")
    assert moved is not None and moved.placed_at is not None
    assert moved.placed_at > first.placed_at


async def test_handoff_and_retry_land_with_the_placement(one: Registry) -> None:
    await one.set_placements([("a.service", "h2", "draining h1")], handoffs={"a.service": "h1"})
    u = one.get_unit("a.service")
    assert u is not None and (u.machine, u.handoff, u.generation) == ("h2", "h1", 0)
    await one.set_placements([("a.service", "h2", "failed; again")], handoffs={"a.service": None},
                       retry=["a.service"])
    u = one.get_unit("a.service")
    assert u is not None and (u.handoff, u.generation) == (None, 1)


async def test_failures_are_kept_per_unit_and_a_users_restart_forgets_them(one: Registry) -> None:
    for i in range(FAILURES_KEPT + 5):
        await one.record_failure(FailureRecord("a.service", "h", f"m{i % 3}", float(i), "boom"))
    kept = one.list_failures()["a.service"]
    assert len(kept) == FAILURES_KEPT and kept[0].at == 5.0 and kept[-1].at == FAILURES_KEPT + 4
    await one.set_placements([], retry=["a.service"])  # the engine's retry keeps them
    assert len(one.list_failures()["a.service"]) == FAILURES_KEPT
    await one.restart(["a.service"])
    assert one.list_failures() == {}


async def test_destroy_forgets_failures(one: Registry) -> None:
    await one.record_failure(FailureRecord("a.service", "h", "m1", 1.0, "boom"))
    await one.delete_units(["a.service"])
    assert one.list_failures() == {}


async def test_drain_fields(one: Registry) -> None:
    await one.add_machine(MachineRecord("h1", "10.0.0.1", 22, "root", None, None, "agent", {}))
    await one.update_machine("h1", draining=100.0, drain_deadline=160.0)
    m = one.get_machine("h1")
    assert m is not None and (m.draining, m.drain_deadline) == (100.0, 160.0)
    await one.update_machine("h1", draining=None, drain_deadline=None)
    m = one.get_machine("h1")
    assert m is not None and m.draining is None


async def test_metadata_changes_and_stays_changed(reg: Registry) -> None:
    """``fleetctl machine set-metadata``: the whole mapping is replaced; what a session
    records afterwards (state, facts) leaves it as set."""
    await reg.add_machine(machine("m1"))
    await reg.update_machine("m1", metadata={"rack": "r2", "disk": "ssd"})
    await reg.update_machine("m1", state="up", facts={"cpus": 2}, last_seen=5.0)
    m = reg.get_machine("m1")
    assert m is not None and m.metadata == {"rack": "r2", "disk": "ssd"}
    assert [x.metadata for x in reg.list_machines()] == [{"rack": "r2", "disk": "ssd"}]
    await reg.update_machine("m1", metadata={})
    m = reg.get_machine("m1")
    assert m is not None and (m.metadata, m.state, m.address) == ({}, "up", "10.0.0.1")


async def test_failures_of_one_unit(one: Registry) -> None:
    await one.record_failure(FailureRecord("a.service", "h", "m1", 1.0, "boom"))
    await one.record_failure(FailureRecord("b.service", "h", "m1", 2.0, "bang"))
    assert list(one.list_failures("b.service")) == ["b.service"]
    assert one.list_failures("c.service") == {}
    assert set(one.list_failures()) == {"a.service", "b.service"}


async def test_records_come_back_as_copies(reg: Registry) -> None:
    """Changing a record a caller holds changes nothing stored."""
    await reg.put_units([UnitInput("a.service", A_TEXT, content_hash(A_TEXT), {"x": "1"})],
                        LAUNCHED)
    await reg.add_machine(machine("m1"))
    await reg.update_machine("m1", facts={"cpus": 2})
    a, m = reg.get_unit("a.service"), reg.get_machine("m1")
    assert a is not None and m is not None
    a.vars["x"] = "2"
    m.metadata["rack"] = "r9"
    m.facts["cpus"] = 99
    a, m = reg.get_unit("a.service"), reg.get_machine("m1")
    assert a is not None and m is not None
    assert (a.vars, m.metadata, m.facts) == ({"x": "1"}, {"rack": "r1"}, {"cpus": 2})


async def test_a_template_change_follows_its_instances(reg: Registry) -> None:
    await reg.put_units([u("web@.service", A_TEXT), u("web@1.service", A_TEXT),
                   u("web@2.service", B_TEXT), u("webx@1.service", A_TEXT)], LAUNCHED)
    changed = await reg.put_units([u("web@.service", C_TEXT)], LAUNCHED, replace=True)
    assert sorted(changed) == ["web@.service", "web@1.service"]
    got = {r.name: r.hash for r in reg.list_units()}
    assert got == {"web@.service": content_hash(C_TEXT), "web@1.service": content_hash(C_TEXT),
                   "web@2.service": content_hash(B_TEXT), "webx@1.service": content_hash(A_TEXT)}
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT  # webx@1 still uses it


async def test_restart_bumps_the_generation_and_launches(reg: Registry) -> None:
    await reg.put_units([u("a.service", A_TEXT)], LOADED)
    await reg.restart(["a.service"])
    a = reg.get_unit("a.service")
    assert a is not None and (a.generation, a.desired) == (1, LAUNCHED)
    with pytest.raises(NotFound):
        await reg.restart(["a.service", "nope.service"])
    a = reg.get_unit("a.service")
    assert a is not None and a.generation == 1  # all or none


async def test_a_template_that_does_not_follow_changes_alone(reg: Registry) -> None:
    """follow=False: the template takes the new content and its instances keep theirs,
    for a rollout to move them one at a time (engine/rollout.py)."""
    await reg.put_units([u("web@.service", A_TEXT), u("web@1.service", A_TEXT)], LAUNCHED)
    changed = await reg.put_units([u("web@.service", B_TEXT)], None, replace=True,
                                  follow=False)
    assert changed == ["web@.service"]
    got = {r.name: r.hash for r in reg.list_units()}
    assert got == {"web@.service": content_hash(B_TEXT), "web@1.service": content_hash(A_TEXT)}


async def test_each_new_content_is_a_version_kept_with_its_text(reg: Registry) -> None:
    await reg.put_units([u("web@.service", A_TEXT)], None, via="alice")
    await reg.put_units([u("web@.service", A_TEXT)], LAUNCHED, via="bob")  # same content
    await reg.put_units([u("web@.service", B_TEXT)], None, replace=True, via="carol")
    got = [(v.version, v.hash, v.via) for v in reg.list_versions("web@.service")]
    assert got == [(1, content_hash(A_TEXT), "alice"), (2, content_hash(B_TEXT), "carol")]
    # no unit uses A any more, but its version does: a rollback needs the text
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT
    assert reg.list_versions("nope.service") == []


async def test_versions_are_bounded_and_forgotten_with_their_unit(reg: Registry) -> None:
    texts = [f"[Service]\nExecStart=/bin/echo {i}\n" for i in range(VERSIONS_KEPT + 2)]
    for text in texts:
        await reg.put_units([u("a.service", text)], None, replace=True)
    kept = reg.list_versions("a.service")
    assert [v.version for v in kept] == list(range(3, VERSIONS_KEPT + 3))
    assert reg.unit_text(content_hash(texts[0])) is None  # its version dropped: its text too
    assert reg.unit_text(content_hash(texts[2])) == texts[2]
    await reg.delete_units(["a.service"])
    assert reg.list_versions("a.service") == []
    assert reg.unit_text(content_hash(texts[-1])) is None


async def test_a_version_keeps_its_options_and_they_can_change(reg: Registry) -> None:
    """The options a rollout was given on the command line (``--canary 1``) stay with
    its version; ``fleetctl promote`` changes them."""
    await reg.put_units([u("web@.service", A_TEXT)], None)
    await reg.put_units([u("web@.service", B_TEXT)], None, replace=True,
                        options={"canary": 1, "max_parallel": 2})
    got = [(v.version, v.options) for v in reg.list_versions("web@.service")]
    assert got == [(1, {}), (2, {"canary": 1, "max_parallel": 2})]
    await reg.set_version_options("web@.service", 2, {"canary": 0, "max_parallel": 2})
    assert reg.list_versions("web@.service")[1].options == {"canary": 0, "max_parallel": 2}
    reg.list_versions("web@.service")[1].options["canary"] = 9  # a copy
    assert reg.list_versions("web@.service")[1].options["canary"] == 0
    with pytest.raises(NotFound):
        await reg.set_version_options("web@.service", 7, {})
    with pytest.raises(NotFound):
        await reg.set_version_options("nope.service", 1, {})
