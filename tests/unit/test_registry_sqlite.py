"""fleetd.registry.sqlite: the embedded registry's file, on a real SQLite file under tmp_path.

What every registry does (units, machines, observed state) is in
test_registry_contract.py, run against SQLite and MemoryRegistry alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from registrykit import A_TEXT, B_TEXT, machine, observed, u

from fleetd.registry.base import (
    BEFORE_VERSIONS,
    LAUNCHED,
    RegistryError,
)
from fleetd.registry.sqlite import SCHEMA_VERSION, SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.model import content_hash


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "registry.db")


@pytest.fixture
def reg(db_path: str) -> Iterator[SqliteRegistry]:
    registry = SqliteRegistry(db_path)
    yield registry
    at_once(registry.close())


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
    at_once(first.put_units([u("a.service", A_TEXT)], LAUNCHED))
    at_once(first.set_placements([("a.service", "m1", "fewest units")]))
    at_once(first.add_machine(machine("m1")))
    at_once(first.update_machine("m1", state="up", facts={"cpus": 2}))
    at_once(first.update_machine("m1", metadata={"rack": "r2"}))  # set-metadata's
    at_once(first.upsert_observed(observed("a.service", "m1")))
    at_once(first.close())

    again = SqliteRegistry(db_path)
    try:
        rec = again.get_unit("a.service")
        assert rec is not None
        assert (rec.hash, rec.desired, rec.machine, rec.reason) == (
            content_hash(A_TEXT), LAUNCHED, "m1", "fewest units")
        assert again.unit_text(content_hash(A_TEXT)) == A_TEXT
        m = again.get_machine("m1")
        assert m is not None
        assert (m.state, m.facts, m.metadata) == ("up", {"cpus": 2}, {"rack": "r2"})
        assert again.list_observed() == [observed("a.service", "m1")]
    finally:
        at_once(again.close())


def test_a_versions_table_without_options_gets_them(db_path: str) -> None:
    """A registry whose versions table predates options (kept by a fleetd of the
    same schema version) reads its versions with none, and takes new ones."""
    at_once(SqliteRegistry(db_path).put_units([u("a.service", A_TEXT)], None, via="x"))
    db = sqlite3.connect(db_path)
    db.executescript("BEGIN; ALTER TABLE versions DROP COLUMN options; COMMIT;")
    db.close()
    again = SqliteRegistry(db_path)
    assert [(v.version, v.via, v.options) for v in again.list_versions("a.service")] == [
        (1, "x", {})]
    at_once(again.set_version_options("a.service", 1, {"canary": 1}))
    assert again.list_versions("a.service")[0].options == {"canary": 1}


def test_a_unit_stored_before_versions_gets_its_content_as_the_first_one(
        db_path: str) -> None:
    """A template an older fleetd stored has no versions: when it changes, its content
    becomes version 1, so a rollout knows its instances' content for the template's."""
    reg = SqliteRegistry(db_path)
    at_once(reg.put_units([u("web@.service", A_TEXT), u("web@1.service", A_TEXT)], None))
    db = sqlite3.connect(db_path)
    db.executescript("BEGIN; DELETE FROM versions; COMMIT;")  # as an older fleetd left it
    db.close()
    at_once(reg.put_units([u("web@.service", B_TEXT)], None, replace=True, follow=False,
                          via="alice"))
    assert [(v.version, v.hash, v.via) for v in reg.list_versions("web@.service")] == [
        (1, content_hash(A_TEXT), BEFORE_VERSIONS), (2, content_hash(B_TEXT), "alice")]
