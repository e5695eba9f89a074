"""The SQLite registry's tables and rows: its schema, the migrations from older fleetd's
files, and the conversions between rows and records (registry/sqlite.py does the
transactions). Kept apart so that what the file holds can be read in one place."""

from __future__ import annotations

import json
from typing import Any, Dict, Tuple

from fleetd.registry.base import MachineRecord, ObservedRecord, UnitRecord

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS contents (
    hash TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL REFERENCES contents(hash),
    desired TEXT NOT NULL,
    machine TEXT,
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    vars TEXT NOT NULL DEFAULT '{}',
    generation INTEGER NOT NULL DEFAULT 0,
    placed_at REAL,
    handoff TEXT
);
CREATE TABLE IF NOT EXISTS machines (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    user TEXT NOT NULL,
    identity TEXT,
    known_hosts TEXT,
    agent_command TEXT NOT NULL,
    metadata TEXT NOT NULL,
    machine_id TEXT,
    facts TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'new',
    error TEXT,
    last_seen REAL,
    draining REAL,
    drain_deadline REAL
);
CREATE TABLE IF NOT EXISTS observed (
    unit TEXT NOT NULL,
    machine TEXT NOT NULL,
    hash TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    started_at REAL,
    exit_status INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    health TEXT NOT NULL DEFAULT 'unknown',
    PRIMARY KEY (unit, machine)
);
CREATE TABLE IF NOT EXISTS failures (
    unit TEXT NOT NULL,
    hash TEXT NOT NULL,
    machine TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_unit ON failures(unit, at);
"""
# Secrets: their own table, made whenever it is missing (not a schema version: it
# adds a table and changes none, so it needs no place in the migrations' order)
SECRETS_SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    version TEXT NOT NULL,
    set_at REAL NOT NULL
);
"""
# Versions (a unit's contents, for rollouts and history): their own table, made whenever
# it is missing, like secrets'
VERSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    unit TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash TEXT NOT NULL,
    at REAL NOT NULL,
    via TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (unit, version)
);
"""

# MIGRATIONS[v] takes a registry from schema v to v + 1, inside one transaction.
MIGRATIONS = [
    "",
    "ALTER TABLE units ADD COLUMN vars TEXT NOT NULL DEFAULT '{}';"
    "ALTER TABLE units ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE observed ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE observed ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown';",
    "ALTER TABLE units ADD COLUMN placed_at REAL;"
    "ALTER TABLE units ADD COLUMN handoff TEXT;"
    "ALTER TABLE machines ADD COLUMN draining REAL;"
    "ALTER TABLE machines ADD COLUMN drain_deadline REAL;"
    "CREATE TABLE failures (unit TEXT NOT NULL, hash TEXT NOT NULL, machine TEXT NOT NULL,"
    " at REAL NOT NULL, reason TEXT NOT NULL);"
    "CREATE INDEX failures_by_unit ON failures(unit, at);",
]
UNIT_SELECT = ("SELECT name, hash, desired, machine, reason, updated_at, vars, generation,"
                " placed_at, handoff FROM units")
MACHINE_FIELDS = ("machine_id", "facts", "state", "error", "last_seen", "draining",
                   "drain_deadline", "metadata")
JSON_MACHINE_FIELDS = ("facts", "metadata")  # stored as JSON text


MACHINE_SELECT = (
    "SELECT name, address, port, user, identity, known_hosts, agent_command, metadata,"
    " machine_id, facts, state, error, last_seen, draining, drain_deadline FROM machines"
)
OBSERVED_UPSERT = (
    "INSERT OR REPLACE INTO observed(unit, machine, hash, state, pid, started_at, exit_status,"
    " restarts, error, updated_at, generation, health)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def unit_record(row: Tuple[Any, ...]) -> UnitRecord:
    (name, content_hash, desired, machine, reason, updated_at, variables, generation,
     placed_at, handoff) = row
    return UnitRecord(name=name, hash=content_hash, desired=desired, machine=machine,
                      reason=reason, updated_at=updated_at, vars=json.loads(variables),
                      generation=generation, placed_at=placed_at, handoff=handoff)


def machine_record(row: Tuple[Any, ...]) -> MachineRecord:
    (name, address, port, user, identity, known_hosts, agent_command, metadata, machine_id,
     facts, state, error, last_seen, draining, drain_deadline) = row
    meta: Dict[str, str] = json.loads(metadata)
    return MachineRecord(name=name, address=address, port=port, user=user, identity=identity,
                         known_hosts=known_hosts, agent_command=agent_command, metadata=meta,
                         machine_id=machine_id, facts=json.loads(facts), state=state,
                         error=error, last_seen=last_seen, draining=draining,
                         drain_deadline=drain_deadline)


def observed_row(r: ObservedRecord) -> Tuple[Any, ...]:
    return (r.unit, r.machine, r.hash, r.state, r.pid, r.started_at, r.exit_status, r.restarts,
            r.error, r.updated_at, r.generation, r.health)
