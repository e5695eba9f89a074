"""fleetd.registry.sqlite: a version 2 file is migrated to schema 3 in place.

What every registry does with placements, hand-offs, failures and drains is in
test_registry_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fleetd.registry.base import FailureRecord
from fleetd.registry.sqlite import SCHEMA_VERSION, SqliteRegistry
from fleetd.testing.registry import at_once

TEXT = "[Service]\nExecStart=/bin/a\n"


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
        at_once(reg.record_failure(FailureRecord("a.service", "h1", "m1", 1.0, "boom")))
        assert len(reg.list_failures()["a.service"]) == 1
    finally:
        at_once(reg.close())
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    raw.close()
