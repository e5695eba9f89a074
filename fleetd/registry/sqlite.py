"""The embedded registry: one SQLite file in fleetd's state directory.

WAL mode with ``synchronous=FULL``: a commit is on disk before the API answers, so an
acknowledged ``fleetctl start`` survives kill -9 of fleetd. Unit content is stored once
per sha256 (templates' instances share it). Every public method is one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from fleetd.registry.base import (
    BEFORE_VERSIONS,
    FAILURES_KEPT,
    INACTIVE,
    VERSIONS_KEPT,
    Conflict,
    FailureRecord,
    MachineRecord,
    NotFound,
    ObservedRecord,
    RegistryError,
    SecretRecord,
    UnitInput,
    UnitRecord,
    VersionRecord,
    check_desired,
    put_conflict,
)
from fleetd.registry.sqlite_rows import (
    JSON_MACHINE_FIELDS,
    MACHINE_FIELDS,
    MACHINE_SELECT,
    MIGRATIONS,
    OBSERVED_UPSERT,
    SCHEMA,
    SCHEMA_VERSION,
    SECRETS_SCHEMA,
    UNIT_SELECT,
    VERSIONS_SCHEMA,
    machine_record,
    observed_row,
    unit_record,
)
from fleetd.wire import names


class SqliteRegistry:
    """Registry on one SQLite file; use from one thread (fleetd's event loop)."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.path = path
        _owner_only(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        _owner_only(path)  # and the -wal and -shm that WAL mode has just made
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RegistryError(
                f"{path} was written by a newer fleetd (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade fleetd"
            )
        if version == 0:
            self._db.executescript(
                f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
        elif version < SCHEMA_VERSION:
            self._db.executescript(
                f"BEGIN IMMEDIATE;{''.join(MIGRATIONS[version:])}"
                f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
        self._db.executescript(f"BEGIN IMMEDIATE;{SECRETS_SCHEMA}{VERSIONS_SCHEMA}COMMIT;")
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(versions)")]
        if "options" not in columns:  # a versions table made before it had options
            self._db.execute("ALTER TABLE versions ADD COLUMN options TEXT NOT NULL"
                             " DEFAULT '{}'")

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def staleness(self) -> Optional[str]:
        return None  # the file is the store: what it reads is current

    def on_change(self, callback: Callable[[], None]) -> None:
        """One fleetd writes this file (its lease says so): no change comes from elsewhere."""

    # --- units -----------------------------------------------------------------
    async def put_units(self, units: Sequence[UnitInput], desired: Optional[str],
                        replace: bool = False, *, follow: bool = True,
                        via: str = "", options: Optional[Dict[str, Any]] = None,
                        epoch: Optional[int] = None) -> List[str]:
        if desired is not None:
            check_desired(desired)
        now = time.time()
        changed: List[str] = []
        with self._tx():
            for unit in units:
                name, text, content_hash, variables, override = unit
                wanted = override or desired
                row = self._db.execute("SELECT hash, vars FROM units WHERE name=?",
                                       (name,)).fetchone()
                same = row is not None and row[0] == content_hash \
                    and json.loads(row[1]) == variables
                if row is not None and not same and not replace:
                    raise put_conflict(name, row[0], content_hash,
                                       same_hash=row[0] == content_hash)
                self._db.execute(
                    "INSERT OR IGNORE INTO contents(hash, text) VALUES (?, ?)",
                    (content_hash, text),
                )
                if row is None:
                    self._db.execute(
                        "INSERT INTO units(name, hash, desired, machine, reason, updated_at,"
                        " vars) VALUES (?, ?, ?, NULL, '', ?, ?)",
                        (name, content_hash, wanted or INACTIVE, now, json.dumps(variables)),
                    )
                else:
                    self._db.execute(
                        "UPDATE units SET hash=?, vars=?, desired=COALESCE(?, desired),"
                        " updated_at=? WHERE name=?",
                        (content_hash, json.dumps(variables), wanted, now, name),
                    )
                changed.append(name)
                if row is not None and row[0] != content_hash and not self._db.execute(
                        "SELECT 1 FROM versions WHERE unit=?", (name,)).fetchone():
                    updated = self._db.execute("SELECT updated_at FROM units WHERE name=?",
                                               (name,)).fetchone()[0]
                    self._add_version(name, row[0], updated, BEFORE_VERSIONS, {})
                if row is None or row[0] != content_hash:
                    self._add_version(name, content_hash, now, via, options or {})
                if (row is not None and row[0] != content_hash and names.is_template(name)
                        and follow):
                    changed += self._follow_template(name, row[0], content_hash, now)
            self._collect_contents()
        return changed

    def _add_version(self, unit: str, content_hash: str, now: float, via: str,
                     options: Mapping[str, Any]) -> None:
        last = self._db.execute("SELECT MAX(version) FROM versions WHERE unit=?",
                                (unit,)).fetchone()[0] or 0
        self._db.execute("INSERT INTO versions(unit, version, hash, at, via, options)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         (unit, last + 1, content_hash, now, via, json.dumps(dict(options))))
        self._db.execute("DELETE FROM versions WHERE unit=? AND version<=?",
                         (unit, last + 1 - VERSIONS_KEPT))

    def list_versions(self, unit: str) -> List[VersionRecord]:
        rows = self._db.execute("SELECT unit, version, hash, at, via, options FROM versions"
                                " WHERE unit=? ORDER BY version", (unit,)).fetchall()
        return [VersionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    async def set_version_options(self, unit: str, version: int,
                                  options: Mapping[str, Any]) -> None:
        with self._tx():
            cur = self._db.execute("UPDATE versions SET options=? WHERE unit=? AND version=?",
                                   (json.dumps(dict(options)), unit, version))
            if cur.rowcount == 0:
                raise NotFound(f"{unit} has no version {version}")

    def _follow_template(self, template: str, old: str, new: str, now: float) -> List[str]:
        """Instances of ``template`` still on its old content take the new content."""
        parts = names.split(template)
        prefix = parts.prefix + "@"
        rows = self._db.execute(
            "SELECT name FROM units WHERE hash=? AND name LIKE ? ESCAPE '\\'",
            (old, prefix.replace("_", "\\_").replace("%", "\\%") + "%." + parts.suffix),
        ).fetchall()
        followers = [r[0] for r in rows if r[0] != template]
        self._db.executemany("UPDATE units SET hash=?, updated_at=? WHERE name=?",
                             [(new, now, n) for n in followers])
        return followers

    async def restart(self, names: Sequence[str]) -> None:
        now = time.time()
        with self._tx():
            for name in names:
                cur = self._db.execute(
                    "UPDATE units SET generation=generation+1, desired='launched',"
                    " updated_at=? WHERE name=?", (now, name))
                if cur.rowcount == 0:
                    raise NotFound(f"unit {name} does not exist")
                self._db.execute("DELETE FROM failures WHERE unit=?", (name,))

    def _collect_contents(self) -> None:
        self._db.execute("DELETE FROM contents WHERE hash NOT IN (SELECT hash FROM units)"
                         " AND hash NOT IN (SELECT hash FROM versions)")

    async def set_desired(self, names: Sequence[str], desired: str) -> None:
        check_desired(desired)
        now = time.time()
        with self._tx():
            for name in names:
                cur = self._db.execute(
                    "UPDATE units SET desired=?, updated_at=? WHERE name=?", (desired, now, name)
                )
                if cur.rowcount == 0:
                    raise NotFound(f"unit {name} does not exist")

    async def delete_units(self, names: Sequence[str]) -> None:
        with self._tx():
            for name in names:
                cur = self._db.execute("DELETE FROM units WHERE name=?", (name,))
                if cur.rowcount == 0:
                    raise NotFound(f"unit {name} does not exist")
                self._db.execute("DELETE FROM failures WHERE unit=?", (name,))
                self._db.execute("DELETE FROM versions WHERE unit=?", (name,))
            self._collect_contents()

    def get_unit(self, name: str) -> Optional[UnitRecord]:
        row = self._db.execute(UNIT_SELECT + " WHERE name=?", (name,)).fetchone()
        return unit_record(row) if row else None

    def list_units(self) -> List[UnitRecord]:
        rows = self._db.execute(UNIT_SELECT + " ORDER BY name").fetchall()
        return [unit_record(r) for r in rows]

    def unit_text(self, content_hash: str) -> Optional[str]:
        row = self._db.execute("SELECT text FROM contents WHERE hash=?", (content_hash,)).fetchone()
        return row[0] if row else None

    async def set_placements(self, placements: Iterable[Tuple[str, Optional[str], str]],
                             handoffs: Optional[Mapping[str, Optional[str]]] = None,
                             retry: Sequence[str] = (), *,
                             epoch: Optional[int] = None) -> None:
        now = time.time()
        with self._tx():
            self._db.executemany(  # right-hand sides see the old row: placed_at moves
                "UPDATE units SET placed_at=CASE WHEN machine IS ? THEN placed_at ELSE ? END,"
                " machine=?, reason=? WHERE name=?",
                [(machine, now, machine, reason, unit) for unit, machine, reason in placements],
            )
            self._db.executemany("UPDATE units SET handoff=? WHERE name=?",
                                 [(machine, unit) for unit, machine in (handoffs or {}).items()])
            self._db.executemany(
                "UPDATE units SET generation=generation+1, placed_at=? WHERE name=?",
                [(now, n) for n in retry])

    async def record_failure(self, failure: FailureRecord, *,
                             epoch: Optional[int] = None) -> None:
        f = failure
        with self._tx():
            self._db.execute("INSERT INTO failures(unit, hash, machine, at, reason)"
                             " VALUES (?, ?, ?, ?, ?)",
                             (f.unit, f.hash, f.machine, f.at, f.reason))
            self._db.execute(
                "DELETE FROM failures WHERE unit=? AND rowid NOT IN (SELECT rowid FROM"
                " failures WHERE unit=? ORDER BY at DESC LIMIT ?)",
                (f.unit, f.unit, FAILURES_KEPT))

    def list_failures(self, unit: Optional[str] = None) -> Dict[str, List[FailureRecord]]:
        out: Dict[str, List[FailureRecord]] = {}
        for row in self._db.execute("SELECT unit, hash, machine, at, reason FROM failures"
                                    " WHERE ? IS NULL OR unit=? ORDER BY unit, at",
                                    (unit, unit)):
            out.setdefault(row[0], []).append(FailureRecord(*row))
        return out

    # --- machines --------------------------------------------------------------
    async def add_machine(self, machine: MachineRecord) -> None:
        with self._tx():
            clash = self._db.execute(
                "SELECT name FROM machines WHERE name=? OR (address=? AND port=?)",
                (machine.name, machine.address, machine.port),
            ).fetchone()
            if clash:
                raise Conflict(
                    f"machine {clash[0]} already exists"
                    + ("" if clash[0] == machine.name
                       else f" at {machine.address}:{machine.port}")
                )
            self._db.execute(
                "INSERT INTO machines(name, address, port, user, identity, known_hosts,"
                " agent_command, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (machine.name, machine.address, machine.port, machine.user, machine.identity,
                 machine.known_hosts, machine.agent_command, json.dumps(machine.metadata)),
            )

    async def remove_machine(self, name: str) -> None:
        with self._tx():
            if self._db.execute("DELETE FROM machines WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"machine {name} does not exist")
            self._db.execute("DELETE FROM observed WHERE machine=?", (name,))

    def get_machine(self, name: str) -> Optional[MachineRecord]:
        row = self._db.execute(MACHINE_SELECT + " WHERE name=?", (name,)).fetchone()
        return machine_record(row) if row else None

    def list_machines(self) -> List[MachineRecord]:
        return [machine_record(r) for r in self._db.execute(MACHINE_SELECT + " ORDER BY name")]

    async def update_machine(self, name: str, *, epoch: Optional[int] = None,
                             **fields: Any) -> None:
        unknown = set(fields) - set(MACHINE_FIELDS)
        if unknown:
            raise ValueError(f"not machine status fields: {sorted(unknown)}")
        values = [json.dumps(v) if k in JSON_MACHINE_FIELDS else v for k, v in fields.items()]
        assignments = ", ".join(f"{k}=?" for k in fields)
        with self._tx():
            self._db.execute(f"UPDATE machines SET {assignments} WHERE name=?", (*values, name))

    # --- observed state -----------------------------------------------------------
    async def replace_observed(self, machine: str, rows: Sequence[ObservedRecord], *,
                               epoch: Optional[int] = None) -> None:
        with self._tx():
            self._db.execute("DELETE FROM observed WHERE machine=?", (machine,))
            self._db.executemany(OBSERVED_UPSERT, [observed_row(r) for r in rows])

    async def upsert_observed(self, row: ObservedRecord, *,
                              epoch: Optional[int] = None) -> None:
        with self._tx():
            self._db.execute(OBSERVED_UPSERT, observed_row(row))

    async def delete_observed(self, machine: str, unit: str, *,
                              epoch: Optional[int] = None) -> None:
        with self._tx():
            self._db.execute("DELETE FROM observed WHERE machine=? AND unit=?", (machine, unit))

    def list_observed(self, unit: Optional[str] = None) -> List[ObservedRecord]:
        rows = self._db.execute(
            "SELECT unit, machine, hash, state, pid, started_at, exit_status, restarts, error,"
            " updated_at, generation, health FROM observed WHERE ? IS NULL OR unit=?"
            " ORDER BY unit, machine",
            (unit, unit),
        ).fetchall()
        return [ObservedRecord(*r) for r in rows]

    # --- secrets (sealed by fleetd.daemon.secrets) -----------------------------------
    async def put_secret(self, secret: SecretRecord) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO secrets(name, sealed, version, set_at)"
                             " VALUES (?, ?, ?, ?)",
                             (secret.name, secret.sealed, secret.version, secret.set_at))

    async def delete_secret(self, name: str) -> None:
        with self._tx():
            if self._db.execute("DELETE FROM secrets WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"secret {name} does not exist")

    def get_secret(self, name: str) -> Optional[SecretRecord]:
        row = self._db.execute("SELECT name, sealed, version, set_at FROM secrets"
                               " WHERE name=?", (name,)).fetchone()
        return SecretRecord(*row) if row else None

    def list_secrets(self) -> List[SecretRecord]:
        return [SecretRecord(*r) for r in self._db.execute(
            "SELECT name, sealed, version, set_at FROM secrets ORDER BY name")]

    async def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _owner_only(path: str) -> None:
    """The database and its -wal and -shm: 0600 whatever the directory's mode or the
    umask (they hold every unit's text and every machine's address). SQLite makes -wal
    and -shm with the database's mode, so a database made 0600 first keeps them so;
    files an older fleetd left are made so here."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o600)
