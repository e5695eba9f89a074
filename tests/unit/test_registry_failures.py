"""fleetd.registry.sqlite: placements over time, hand-offs, failures, drains, schema v3."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.registry.base import LAUNCHED, FailureRecord, MachineRecord, UnitInput
from fleetd.registry.sqlite import FAILURES_KEPT, SCHEMA_VERSION, SqliteRegistry
from fleetd.units.model import content_hash

TEXT = "[Service]\nExecStart=/bin/a\n"


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[SqliteRegistry]:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    registry.put_units([UnitInput("a.service", TEXT, content_hash(TEXT))], LAUNCHED)
    yield registry
    registry.close()


def test_placed_at_moves_only_with_the_machine(reg: SqliteRegistry) -> None:
    reg.set_placements([("a.service", "h1", "first")])
    first = reg.get_unit("a.service")
    assert first is not None and first.placed_at is not None
    time.sleep(0.01)
    reg.set_placements([("a.service", "h1", "same machine, new words")])
    again = reg.get_unit("a.service")
    assert again is not None and again.placed_at == first.placed_at
    reg.set_placements([("a.service", "h2", "moved")])
    moved = reg.get_unit("a.service")
    assert moved is not None and moved.placed_at is not None
    assert moved.placed_at > first.placed_at


def test_handoff_and_retry_land_with_the_placement(reg: SqliteRegistry) -> None:
    reg.set_placements([("a.service", "h2", "draining h1")], handoffs={"a.service": "h1"})
    u = reg.get_unit("a.service")
    assert u is not None and (u.machine, u.handoff, u.generation) == ("h2", "h1", 0)
    reg.set_placements([("a.service", "h2", "failed; again")], handoffs={"a.service": None},
                       retry=["a.service"])
    u = reg.get_unit("a.service")
    assert u is not None and (u.handoff, u.generation) == (None, 1)


def test_failures_are_kept_per_unit_and_a_users_restart_forgets_them(
        reg: SqliteRegistry) -> None:
    for i in range(FAILURES_KEPT + 5):
        reg.record_failure(FailureRecord("a.service", "h", f"m{i % 3}", float(i), "boom"))
    kept = reg.list_failures()["a.service"]
    assert len(kept) == FAILURES_KEPT and kept[0].at == 5.0 and kept[-1].at == FAILURES_KEPT + 4
    reg.set_placements([], retry=["a.service"])  # the engine's retry keeps them
    assert len(reg.list_failures()["a.service"]) == FAILURES_KEPT
    reg.restart(["a.service"])
    assert reg.list_failures() == {}


def test_destroy_forgets_failures(reg: SqliteRegistry) -> None:
    reg.record_failure(FailureRecord("a.service", "h", "m1", 1.0, "boom"))
    reg.delete_units(["a.service"])
    assert reg.list_failures() == {}


def test_drain_fields(reg: SqliteRegistry) -> None:
    reg.add_machine(MachineRecord("h1", "10.0.0.1", 22, "root", None, None, "agent", {}))
    reg.update_machine("h1", draining=100.0, drain_deadline=160.0)
    m = reg.get_machine("h1")
    assert m is not None and (m.draining, m.drain_deadline) == (100.0, 160.0)
    reg.update_machine("h1", draining=None, drain_deadline=None)
    m = reg.get_machine("h1")
    assert m is not None and m.draining is None


V2 = """
CREATE TABLE contents (hash TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE units (name TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES contents(hash),
    desired TEXT NOT NULL, machine TEXT, reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL, vars TEXT NOT NULL DEFAULT '{}',
    generation INTEGER NOT NULL DEFAULT 0);
CREATE TABLE machines (name TEXT PRIMARY KEY, address TEXT NOT NULL, port INTEGER NOT NULL,
    user TEXT NOT NULL, identity TEXT, known_hosts TEXT, agent_command TEXT NOT NULL,
    metadata TEXT NOT NULL, machine_id TEXT, facts TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'new', error TEXT, last_seen REAL);
CREATE TABLE observed (unit TEXT NOT NULL, machine TEXT NOT NULL, hash TEXT NOT NULL,
    state TEXT NOT NULL, pid INTEGER, started_at REAL, exit_status INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0, error TEXT, updated_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0, health TEXT NOT NULL DEFAULT 'unknown',
    PRIMARY KEY (unit, machine));
INSERT INTO contents VALUES ('h1', '[Service]\nExecStart=/bin/a\n');
INSERT INTO units VALUES ('a.service', 'h1', 'launched', 'm1', 'placed', 1.0, '{}', 3);
INSERT INTO machines VALUES ('m1', '10.0.0.1', 22, 'root', NULL, NULL, 'agent', '{}',
    NULL, '{}', 'up', NULL, 5.0);
PRAGMA user_version=2;
"""


def test_a_version_2_registry_is_migrated_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    raw = sqlite3.connect(path)
    raw.executescript(V2)
    raw.close()
    reg = SqliteRegistry(path)
    try:
        u = reg.get_unit("a.service")
        assert u is not None and (u.machine, u.generation, u.handoff) == ("m1", 3, None)
        m = reg.get_machine("m1")
        assert m is not None and m.draining is None and m.last_seen == 5.0
        reg.record_failure(FailureRecord("a.service", "h1", "m1", 1.0, "boom"))
        assert len(reg.list_failures()["a.service"]) == 1
    finally:
        reg.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    raw.close()


def test_failures_of_one_unit(reg: SqliteRegistry) -> None:
    reg.record_failure(FailureRecord("a.service", "h", "m1", 1.0, "boom"))
    reg.record_failure(FailureRecord("b.service", "h", "m1", 2.0, "bang"))
    assert list(reg.list_failures("b.service")) == ["b.service"]
    assert reg.list_failures("c.service") == {}
    assert set(reg.list_failures()) == {"a.service", "b.service"}
