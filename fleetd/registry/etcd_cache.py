"""EtcdRegistry's in-memory copy of its keys, fed by one range and then a watch; what
the Registry's synchronous reads answer from.

Each key under the prefix is kept as checked (``etcd_keys.decode``) with its create and
mod revision, which writes compare against. A key whose value is not fleetd's is left
out, with one warning naming it (and again only if it changes).

Overlays: what this fleetd knows but does not write, because writing it would make
etcd's load grow with heartbeats: a machine's ``last_seen`` when nothing else of it
changed, and an observed row's ``updated_at`` when nothing else of it changed. They
are this process's (the leader's, whose sessions hear the hosts): a follower reads the
last values written, which are at most as old as the last real change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from fleetd.registry.base import (
    FAILURES_KEPT,
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    SecretRecord,
    UnitRecord,
)
from fleetd.registry.etcd_keys import KINDS, BadValue, Doc, decode, parse_key
from fleetd.registry.etcdv3_types import KeyValue
from fleetd.units.model import content_hash

log = logging.getLogger(__name__)
Names = Tuple[str, ...]
_BOOKKEEPING = ("seq", "writers")  # keys that change no record


class Entry(NamedTuple):
    create: int  # create_revision
    mod: int  # mod_revision
    doc: Doc


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Cache:
    """The keys under one prefix as of ``revision``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.revision = 0
        self.kinds: Dict[str, Dict[Names, Entry]] = {k: {} for k in KINDS}
        self.skipped: Dict[bytes, int] = {}  # hostile keys warned of: key -> mod_revision
        self.last_seen: Dict[str, float] = {}  # overlays (module docstring)
        self.observed_at: Dict[Tuple[str, str], float] = {}

    # -- feeding ----------------------------------------------------------------------

    def load(self, kvs: Tuple[KeyValue, ...], revision: int) -> None:
        """Everything, as one range read at ``revision`` saw it."""
        self.kinds = {k: {} for k in KINDS}
        for kv in kvs:
            self.put(kv)
        self.revision = revision

    def put(self, kv: KeyValue) -> bool:
        """Take a key's new value; whether it is news to a reader (a record's key)."""
        where = parse_key(self.prefix, kv.key)
        if where is None:
            return False
        kind, names = where
        try:
            doc = decode(kind, kv.key, kv.value)
            if kind == "texts" and content_hash(doc["text"]) != names[0]:
                raise BadValue(f"etcd key {kv.key.decode()}: the text's sha256 is not "
                               "the key's")
        except BadValue as e:
            if self.skipped.get(kv.key) != kv.mod_revision:
                log.warning("%s; left out (not a value fleetd wrote)", e)
                self.skipped[kv.key] = kv.mod_revision
            return self.kinds[kind].pop(names, None) is not None
        self.skipped.pop(kv.key, None)
        self.kinds[kind][names] = Entry(kv.create_revision, kv.mod_revision, doc)
        return kind not in _BOOKKEEPING

    def delete(self, raw_key: bytes) -> bool:
        """Forget a key; whether it is news to a reader."""
        where = parse_key(self.prefix, raw_key)
        self.skipped.pop(raw_key, None)
        if where is None:
            return False
        if where[0] == "machines":
            self.last_seen.pop(where[1][0], None)
        elif where[0] == "observed":
            self.observed_at.pop((where[1][1], where[1][0]), None)
        return self.kinds[where[0]].pop(where[1], None) is not None \
            and where[0] not in _BOOKKEEPING

    # -- entries ----------------------------------------------------------------------

    def entry(self, kind: str, *names: str) -> Optional[Entry]:
        return self.kinds[kind].get(names)

    def mod(self, kind: str, *names: str) -> int:
        e = self.kinds[kind].get(names)
        return e.mod if e else 0

    def create(self, kind: str, *names: str) -> int:
        e = self.kinds[kind].get(names)
        return e.create if e else 0

    # -- records ----------------------------------------------------------------------

    def unit(self, name: str) -> Optional[UnitRecord]:
        e = self.kinds["units"].get((name,))
        if e is None:
            return None
        d = e.doc
        p = self.kinds["placements"].get((name,))
        pd: Doc = p.doc if p else {"machine": None, "reason": "", "placed_at": None,
                                    "handoff": None, "retries": 0}
        return UnitRecord(name=name, hash=d["hash"], desired=d["desired"],
                          machine=pd["machine"], reason=pd["reason"],
                          updated_at=d["updated_at"], vars=dict(d["vars"]),
                          generation=d["generation"] + pd["retries"],
                          placed_at=pd["placed_at"], handoff=pd["handoff"])

    def units(self) -> List[UnitRecord]:
        out = (self.unit(n) for (n,) in sorted(self.kinds["units"]))
        return [u for u in out if u is not None]

    def text(self, content_hash: str) -> Optional[str]:
        e = self.kinds["texts"].get((content_hash,))
        return str(e.doc["text"]) if e else None

    def failures(self, unit: Optional[str] = None) -> Dict[str, List[FailureRecord]]:
        out: Dict[str, List[FailureRecord]] = {}
        for (u, _), e in self.kinds["failures"].items():
            if unit is None or u == unit:
                d = e.doc
                out.setdefault(u, []).append(
                    FailureRecord(u, d["hash"], d["machine"], d["at"], d["reason"]))
        for fs in out.values():
            fs.sort(key=lambda f: f.at)
            del fs[:-FAILURES_KEPT]
        return dict(sorted(out.items()))

    def failure_keys(self, unit: str) -> List[Tuple[float, str]]:
        """(at, id) of a unit's failures, oldest first."""
        return sorted((e.doc["at"], i) for (u, i), e in self.kinds["failures"].items()
                      if u == unit)

    def machine(self, name: str) -> Optional[MachineRecord]:
        e = self.kinds["machines"].get((name,))
        if e is None:
            return None
        d = e.doc
        s = self.kinds["machinestate"].get((name,))
        sd: Doc = s.doc if s else {"machine_id": None, "facts": {}, "state": "new",
                                    "error": None, "last_seen": None}
        seen = sd["last_seen"]
        mine = self.last_seen.get(name)
        if mine is not None and (seen is None or mine > seen):
            seen = mine
        return MachineRecord(
            name=name, address=d["address"], port=d["port"], user=d["user"],
            identity=d["identity"], known_hosts=d["known_hosts"],
            agent_command=d["agent_command"], metadata=dict(d["metadata"]),
            machine_id=sd["machine_id"], facts=_copy(sd["facts"]), state=sd["state"],
            error=sd["error"], last_seen=seen, draining=d["draining"],
            drain_deadline=d["drain_deadline"])

    def machines(self) -> List[MachineRecord]:
        out = (self.machine(n) for (n,) in sorted(self.kinds["machines"]))
        return [m for m in out if m is not None]

    def observed_row(self, machine: str, unit: str) -> Optional[ObservedRecord]:
        e = self.kinds["observed"].get((machine, unit))
        if e is None:
            return None
        row = ObservedRecord(unit=unit, machine=machine, **e.doc)
        mine = self.observed_at.get((unit, machine))
        if mine is not None and mine > row.updated_at:
            row = dataclasses.replace(row, updated_at=mine)
        return row

    def observed(self, unit: Optional[str] = None) -> List[ObservedRecord]:
        keys = sorted((u, m) for (m, u) in self.kinds["observed"] if unit in (None, u))
        out = (self.observed_row(m, u) for u, m in keys)
        return [r for r in out if r is not None]


    # -- secrets (sealed) ---------------------------------------------------------------

    def secret(self, name: str) -> Optional[SecretRecord]:
        e = self.kinds["secrets"].get((name,))
        return None if e is None else SecretRecord(name, e.doc["sealed"], e.doc["version"],
                                                   e.doc["set_at"])

    def secrets(self) -> List[SecretRecord]:
        out = (self.secret(n) for (n,) in sorted(self.kinds["secrets"]))
        return [s for s in out if s is not None]


def observed_doc(r: ObservedRecord) -> Doc:
    d = dataclasses.asdict(r)
    del d["unit"], d["machine"]
    return d


def same_but_time(stored: Optional[Entry], r: ObservedRecord) -> bool:
    """The stored row says what ``r`` says, apart from ``updated_at``."""
    if stored is None:
        return False
    mine, theirs = dict(observed_doc(r)), dict(stored.doc)
    mine.pop("updated_at")
    theirs.pop("updated_at", None)
    return mine == theirs
