"""fleetd.registry.sqlite: the embedded registry, on a real SQLite file under tmp_path."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.registry.base import (
    INACTIVE,
    LAUNCHED,
    LOADED,
    Conflict,
    MachineRecord,
    NotFound,
    ObservedRecord,
    RegistryError,
    UnitInput,
)
from fleetd.registry.sqlite import SCHEMA_VERSION, SqliteRegistry
from fleetd.units.model import content_hash

A_TEXT = "[Service]\nExecStart=/bin/a\n"
B_TEXT = "[Service]\nExecStart=/bin/b\n"
C_TEXT = "[Service]\nExecStart=/bin/c\n"


def u(name: str, text: str) -> UnitInput:
    return UnitInput(name, text, content_hash(text))


def machine(name: str, address: str = "10.0.0.1", port: int = 22) -> MachineRecord:
    return MachineRecord(name=name, address=address, port=port, user="root",
                         identity="/root/.ssh/id", known_hosts=None,
                         agent_command="fleet-agent", metadata={"rack": "r1"})


def observed(unit: str, machine: str, state: str = "running", pid: int = 100) -> ObservedRecord:
    return ObservedRecord(unit=unit, machine=machine, hash="h", state=state, pid=pid,
                          started_at=1.0, exit_status=None, restarts=0, error=None,
                          updated_at=2.0)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "registry.db")


@pytest.fixture
def reg(db_path: str) -> Iterator[SqliteRegistry]:
    registry = SqliteRegistry(db_path)
    yield registry
    registry.close()


def snapshot(reg: SqliteRegistry) -> tuple[object, ...]:
    """Everything the registry holds, to compare before/after a refused write."""
    units = [(r.name, r.hash, r.desired, r.machine, r.reason, r.updated_at)
             for r in reg.list_units()]
    texts = {r.hash: reg.unit_text(r.hash) for r in reg.list_units()}
    return (units, texts, reg.list_machines(), reg.list_observed())


# --- opening -----------------------------------------------------------------------------


def test_new_file_is_created_with_the_schema(db_path: str, reg: SqliteRegistry) -> None:
    assert Path(db_path).is_file()
    assert reg.list_units() == []
    assert reg.list_machines() == []
    assert reg.list_observed() == []
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(db_path: str) -> None:
    Path(db_path).parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA user_version=99")
    raw.commit()
    raw.close()
    with pytest.raises(RegistryError) as info:
        SqliteRegistry(db_path)
    assert "schema 99" in str(info.value)
    assert db_path in str(info.value)
    assert "upgrade fleetd" in str(info.value)


def test_data_survives_close_and_reopen(db_path: str) -> None:
    first = SqliteRegistry(db_path)
    first.put_units([u("a.service", A_TEXT)], LAUNCHED)
    first.set_placements([("a.service", "m1", "fewest units")])
    first.add_machine(machine("m1"))
    first.update_machine("m1", state="up", facts={"cpus": 2})
    first.upsert_observed(observed("a.service", "m1"))
    first.close()

    again = SqliteRegistry(db_path)
    try:
        rec = again.get_unit("a.service")
        assert rec is not None
        assert (rec.hash, rec.desired, rec.machine, rec.reason) == (
            content_hash(A_TEXT), LAUNCHED, "m1", "fewest units")
        assert again.unit_text(content_hash(A_TEXT)) == A_TEXT
        m = again.get_machine("m1")
        assert m is not None
        assert (m.state, m.facts, m.metadata) == ("up", {"cpus": 2}, {"rack": "r1"})
        assert again.list_observed() == [observed("a.service", "m1")]
    finally:
        again.close()


# --- units ---------------------------------------------------------------------------------


def test_put_units_stores_units_and_content(reg: SqliteRegistry) -> None:
    reg.put_units([u("b.service", B_TEXT), u("a.service", A_TEXT)], LOADED)
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


def test_put_units_is_all_or_none(reg: SqliteRegistry) -> None:
    reg.put_units([u("b.service", B_TEXT)], LOADED)
    before = snapshot(reg)
    with pytest.raises(Conflict) as info:
        # a.service is new; b.service exists with other content
        reg.put_units([u("a.service", A_TEXT), u("b.service", C_TEXT)], LAUNCHED)
    assert "b.service already exists with different content" in str(info.value)
    assert reg.get_unit("a.service") is None
    assert reg.unit_text(content_hash(A_TEXT)) is None
    assert reg.unit_text(content_hash(C_TEXT)) is None
    assert snapshot(reg) == before


def test_put_units_same_name_twice_with_different_content_in_one_batch(
    reg: SqliteRegistry,
) -> None:
    with pytest.raises(Conflict):
        reg.put_units([u("a.service", A_TEXT), u("a.service", B_TEXT)], LAUNCHED)
    assert reg.list_units() == []


def test_put_units_same_content_only_updates_desired(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT)], LOADED)
    reg.set_placements([("a.service", "m1", "placed")])
    reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    rec = reg.get_unit("a.service")
    assert rec is not None
    assert (rec.hash, rec.desired, rec.machine, rec.reason) == (
        content_hash(A_TEXT), LAUNCHED, "m1", "placed")
    assert len(reg.list_units()) == 1


def test_units_with_the_same_content_share_it(reg: SqliteRegistry) -> None:
    reg.put_units([u("web@1.service", A_TEXT), u("web@2.service", A_TEXT)], LAUNCHED)
    reg.delete_units(["web@1.service"])
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT  # still used by web@2
    reg.delete_units(["web@2.service"])
    assert reg.unit_text(content_hash(A_TEXT)) is None


def test_put_units_refuses_unknown_desired_state(reg: SqliteRegistry) -> None:
    with pytest.raises(ValueError, match="desired state 'running'"):
        reg.put_units([u("a.service", A_TEXT)], "running")
    assert reg.list_units() == []


def test_set_desired(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    reg.set_desired(["a.service", "b.service"], INACTIVE)
    assert [r.desired for r in reg.list_units()] == [INACTIVE, INACTIVE]


def test_set_desired_missing_unit_changes_nothing(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    before = snapshot(reg)
    with pytest.raises(NotFound, match=r"unit nope\.service does not exist"):
        reg.set_desired(["a.service", "nope.service"], INACTIVE)
    assert snapshot(reg) == before


def test_set_desired_refuses_unknown_state(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    with pytest.raises(ValueError):
        reg.set_desired(["a.service"], "bogus")
    rec = reg.get_unit("a.service")
    assert rec is not None
    assert rec.desired == LAUNCHED


def test_delete_units_garbage_collects_content(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    reg.delete_units(["a.service"])
    assert reg.get_unit("a.service") is None
    assert reg.unit_text(content_hash(A_TEXT)) is None
    assert reg.unit_text(content_hash(B_TEXT)) == B_TEXT
    assert [r.name for r in reg.list_units()] == ["b.service"]


def test_delete_units_missing_unit_changes_nothing(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    before = snapshot(reg)
    with pytest.raises(NotFound, match=r"unit nope\.service does not exist"):
        reg.delete_units(["a.service", "nope.service"])
    assert snapshot(reg) == before
    assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT


def test_delete_keeps_observed_rows(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
    reg.upsert_observed(observed("a.service", "m1"))
    reg.delete_units(["a.service"])
    assert reg.list_observed() == [observed("a.service", "m1")]


def test_set_placements(reg: SqliteRegistry) -> None:
    reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT)], LAUNCHED)
    reg.set_placements([("a.service", "m1", "fewest"), ("b.service", None, "no machine")])
    got = {r.name: (r.machine, r.reason) for r in reg.list_units()}
    assert got == {"a.service": ("m1", "fewest"), "b.service": (None, "no machine")}
    reg.set_placements(iter([("a.service", None, "unloaded")]))
    a = reg.get_unit("a.service")
    assert a is not None
    assert (a.machine, a.reason) == (None, "unloaded")


# --- machines --------------------------------------------------------------------------------


def test_add_and_get_machine(reg: SqliteRegistry) -> None:
    m = machine("m1")
    reg.add_machine(m)
    assert reg.get_machine("m1") == m  # defaults: state new, no facts, never seen
    assert reg.get_machine("m2") is None
    reg.add_machine(machine("m0", address="10.0.0.2"))
    assert [x.name for x in reg.list_machines()] == ["m0", "m1"]


def test_add_machine_duplicate_name(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1"))
    with pytest.raises(Conflict) as info:
        reg.add_machine(machine("m1", address="10.9.9.9"))
    assert str(info.value) == "machine m1 already exists"
    stored = reg.get_machine("m1")
    assert stored is not None
    assert stored.address == "10.0.0.1"


def test_add_machine_duplicate_address_and_port(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1", address="10.0.0.1", port=22))
    with pytest.raises(Conflict) as info:
        reg.add_machine(machine("m2", address="10.0.0.1", port=22))
    assert str(info.value) == "machine m1 already exists at 10.0.0.1:22"
    assert [m.name for m in reg.list_machines()] == ["m1"]


def test_same_address_on_another_port_is_another_machine(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1", port=22))
    reg.add_machine(machine("m2", port=2222))
    assert [m.name for m in reg.list_machines()] == ["m1", "m2"]


def test_update_machine(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1"))
    reg.update_machine("m1", state="up", machine_id="abc", facts={"cpus": 4, "os": "linux"},
                       last_seen=123.5, error=None)
    m = reg.get_machine("m1")
    assert m is not None
    assert (m.state, m.machine_id, m.facts, m.last_seen, m.error) == (
        "up", "abc", {"cpus": 4, "os": "linux"}, 123.5, None)
    reg.update_machine("m1", state="error", error="ssh: refused")
    m = reg.get_machine("m1")
    assert m is not None
    assert (m.state, m.error, m.machine_id) == ("error", "ssh: refused", "abc")
    # what add_machine set is untouched
    assert (m.address, m.port, m.metadata) == ("10.0.0.1", 22, {"rack": "r1"})


def test_update_machine_refuses_other_fields(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1"))
    with pytest.raises(ValueError, match="address"):
        reg.update_machine("m1", address="10.1.1.1", state="up")
    assert reg.get_machine("m1") == machine("m1")


def test_remove_machine_drops_its_observed_rows(reg: SqliteRegistry) -> None:
    reg.add_machine(machine("m1"))
    reg.add_machine(machine("m2", address="10.0.0.2"))
    reg.upsert_observed(observed("a.service", "m1"))
    reg.upsert_observed(observed("b.service", "m2"))
    reg.remove_machine("m1")
    assert reg.get_machine("m1") is None
    assert reg.list_observed() == [observed("b.service", "m2")]
    with pytest.raises(NotFound, match="machine m1 does not exist"):
        reg.remove_machine("m1")


# --- observed state ----------------------------------------------------------------------------


def test_replace_observed_drops_rows_not_in_the_snapshot(reg: SqliteRegistry) -> None:
    reg.replace_observed("m1", [observed("a.service", "m1"), observed("b.service", "m1")])
    reg.replace_observed("m2", [observed("a.service", "m2")])
    reg.replace_observed("m1", [observed("b.service", "m1", state="exited", pid=7)])
    assert reg.list_observed() == [
        observed("a.service", "m2"),  # other machines are untouched
        observed("b.service", "m1", state="exited", pid=7),
    ]
    reg.replace_observed("m1", [])
    assert reg.list_observed() == [observed("a.service", "m2")]


def test_upsert_and_delete_observed(reg: SqliteRegistry) -> None:
    reg.upsert_observed(observed("a.service", "m1"))
    changed = dataclasses.replace(observed("a.service", "m1"), state="failed", exit_status=3,
                                  restarts=2, error="boom")
    reg.upsert_observed(changed)
    assert reg.list_observed() == [changed]
    reg.delete_observed("m1", "a.service")
    assert reg.list_observed() == []
    reg.delete_observed("m1", "a.service")  # deleting nothing is fine


def test_refused_write_leaves_the_connection_usable(reg: SqliteRegistry) -> None:
    with pytest.raises(NotFound):
        reg.delete_units(["nope.service"])
    reg.put_units([u("a.service", A_TEXT)], LAUNCHED)  # no transaction left open
    assert [r.name for r in reg.list_units()] == ["a.service"]
