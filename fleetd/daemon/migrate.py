"""``fleetd migrate``: move one fleetd's SQLite registry into etcd, programs running on.

The SQLite fleetd is stopped first; the migrate takes its ``fleetd.lock`` (``FileLease``)
for as long as it runs, so it refuses while a fleetd holds it, and no fleetd can start
on the directory and write behind the copy's back. Then every record is copied, as the
keys EtcdRegistry reads (registry/etcd_keys.py): the unit texts, the units (desired
state, variables, generation) with their placements and hand-offs, the machines with
their metadata, drain and state (machine id, facts), the failures, and the observed rows
(the new leader would rebuild those from each agent's full report; copied, the listings
are right before the first session connects). Nothing goes through the agents: they go
on running their programs, and the first fleetd on etcd finds them as they are, with the
same desired sets (same hashes, same generations), so nothing restarts.

The epoch. Each agent refuses a desired set from a lower epoch than the highest it has
seen (agent/fencing.py), and the last SQLite term's epoch is in ``fleetd.epoch`` (the
counter next to the lock, engine/leadership.py ``next_epoch``). On etcd the epoch is
the leader key's create revision (engine/etcd_lock.py), which is at least the store's
revision + 1 when a fleetd campaigns. So the migrate makes the store's revision reach
that epoch: after the copy, while the revision is lower, it writes one scratch key
again (each write is one revision). Why not an offset key that the lock adds to the
revision: the epoch is also what the registry's fenced writes compare with the leader
key's create revision (etcd_store.py) and what list-servers shows, so an offset would
have to be applied in each of them, read before every campaign, and kept forever; the
revision bump is done once, here, and epochs keep one meaning. It is cheap: SQLite
epochs count fleetd starts (tens, hundreds), and writes go a batch at a time.

Afterwards a ``migrated`` file in the state directory says where the registry went; a
SQLite fleetd refuses to start on it (its registry is a stale copy now, and its epoch
counter is below what the agents have seen from etcd).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from typing import Any, Dict, List, Sequence, Tuple

from fleetd.engine.leadership import FileLease, LeaseHeld, epoch_path
from fleetd.registry.base import (
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    RegistryError,
    SecretRecord,
    UnitRecord,
)
from fleetd.registry.etcd_keys import check_prefix, encode, key
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import Delete, EtcdError, Op, Put

MARKER = "migrated"  # the state directory's file saying where its registry went
TXN_OPS = 120  # below etcd's --max-txn-ops default (128)
TXN_BYTES = 1024 * 1024  # below etcd's --max-request-bytes default (1.5 MiB)
BUMP_BATCH = 32  # scratch writes in flight at once while the revision catches up


class MigrateError(Exception):
    """The migrate could not be done; the message names what (file, key, etcd)."""


@dataclasses.dataclass
class Snapshot:
    """Everything of a SQLite registry that goes to etcd."""

    units: List[UnitRecord]
    texts: Dict[str, str]
    machines: List[MachineRecord]
    failures: Dict[str, List[FailureRecord]]
    observed: List[ObservedRecord]
    # sealed as they are: each fleetd on etcd needs the key file that sealed them
    secrets: List[SecretRecord] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Report:
    """What a migrate did: counts of what it copied, the last SQLite epoch, and the
    etcd revision it left (a new leader's epoch is above it)."""

    units: int
    texts: int
    machines: int
    failures: int
    observed: int
    last_epoch: int
    revision: int
    bumped: int  # scratch writes made to bring the revision up to last_epoch
    secrets: int = 0

    def describe(self) -> str:
        return (f"copied {self.units} units ({self.texts} texts), {self.machines} machines, "
                f"{self.failures} failures, {self.observed} observed rows, "
                f"{self.secrets} secrets (sealed: copy the secrets key to each fleetd); "
                "last SQLite "
                f"epoch {self.last_epoch}, etcd revision now {self.revision}"
                + (f" ({self.bumped} writes to pass the epoch)" if self.bumped else ""))


async def read_snapshot(db_path: str) -> Snapshot:
    """Every record of the SQLite registry at ``db_path`` (MigrateError when there is
    none, or it cannot be read)."""
    from fleetd.registry.sqlite import SqliteRegistry

    if not os.path.isfile(db_path):
        raise MigrateError(f"{db_path}: no such registry (is --from fleetd's state "
                           "directory?)")
    try:
        reg = SqliteRegistry(db_path)
        try:
            units = reg.list_units()
            texts: Dict[str, str] = {}
            for u in units:
                text = reg.unit_text(u.hash)
                if text is None:
                    raise MigrateError(f"{db_path}: unit {u.name}'s content {u.hash[:12]} "
                                       "is missing")
                texts[u.hash] = text
            return Snapshot(units, texts, reg.list_machines(), reg.list_failures(),
                            reg.list_observed(), reg.list_secrets())
        finally:
            await reg.close()
    except (sqlite3.Error, RegistryError) as e:
        raise MigrateError(f"{db_path}: {e}") from None


def read_epoch(path: str) -> int:
    """The last SQLite term's epoch (0 when no fleetd ever led here)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise MigrateError(f"{path}: {e.strerror or e}") from None
    try:
        epoch = int(text)
    except ValueError:
        raise MigrateError(f"{path}: not a term count: {text[:40]!r}") from None
    if epoch < 0:
        raise MigrateError(f"{path}: not a term count: {epoch}")
    return epoch


def puts(prefix: str, snap: Snapshot) -> List[Put]:
    """The etcd keys of ``snap`` under ``prefix`` as EtcdRegistry lays them out
    (etcd_keys.py); pure. A unit's whole generation goes into ``units/``, its placement
    has no retries of its own yet."""
    p = check_prefix(prefix)

    def put(kind: str, names: Tuple[str, ...], doc: Dict[str, Any]) -> Put:
        return Put(key(p, kind, *names), encode(doc))

    out = [put("texts", (h,), {"text": t}) for h, t in sorted(snap.texts.items())]
    for u in snap.units:
        out.append(put("units", (u.name,), {
            "hash": u.hash, "vars": dict(u.vars), "desired": u.desired,
            "generation": u.generation, "updated_at": u.updated_at}))
        out.append(put("placements", (u.name,), {
            "machine": u.machine, "reason": u.reason, "placed_at": u.placed_at,
            "handoff": u.handoff, "retries": 0}))
    out.append(Put(key(p, "seq", "units"), uuid.uuid4().hex.encode()))
    for m in snap.machines:
        out.append(put("machines", (m.name,), {
            "address": m.address, "port": m.port, "user": m.user, "identity": m.identity,
            "known_hosts": m.known_hosts, "agent_command": m.agent_command,
            "metadata": dict(m.metadata), "draining": m.draining,
            "drain_deadline": m.drain_deadline}))
        out.append(put("addresses", (f"{m.address}:{m.port}",), {"machine": m.name}))
        out.append(put("machinestate", (m.name,), {
            "machine_id": m.machine_id, "facts": json.loads(json.dumps(m.facts)),
            "state": m.state, "error": m.error, "last_seen": m.last_seen}))
    for unit, fs in sorted(snap.failures.items()):
        for i, f in enumerate(fs):
            ident = f"{f.at:017.6f}-m{i:07d}"
            out.append(put("failures", (unit, ident), {
                "hash": f.hash, "machine": f.machine, "at": f.at, "reason": f.reason}))
    for r in snap.observed:
        d = dataclasses.asdict(r)
        del d["unit"], d["machine"]
        out.append(put("observed", (r.machine, r.unit), d))
    for s in snap.secrets:
        out.append(put("secrets", (s.name,), {"sealed": s.sealed, "version": s.version,
                                              "set_at": s.set_at}))
    return out


def batches(ops: Sequence[Op], max_ops: int = TXN_OPS,
            max_bytes: int = TXN_BYTES) -> List[List[Op]]:
    """``ops`` in order, in groups that each fit one etcd transaction."""
    out: List[List[Op]] = [[]]
    size = 0
    for op in ops:
        s = 64 + len(op.key) + len(getattr(op, "value", b""))
        if out[-1] and (len(out[-1]) >= max_ops or size + s > max_bytes):
            out.append([])
            size = 0
        out[-1].append(op)
        size += s
    return [b for b in out if b]


async def copy(client: EtcdClient, prefix: str, snap: Snapshot, last_epoch: int, *,
               force: bool = False, source: str = "") -> Report:
    """Write ``snap`` under ``prefix`` and bring etcd's revision up to ``last_epoch``.
    Refuses a prefix with keys (``force``: they are deleted first) and, even with
    ``force``, one whose leader key is held (a fleetd runs there)."""
    p = check_prefix(prefix)
    where = f"{p}/"
    held = await client.get(f"{p}/leader")
    if held.kvs:
        raise MigrateError(f"etcd prefix {p} has a leader (a fleetd runs on it: "
                           f"{held.kvs[0].value[:120].decode('utf-8', 'replace')}); "
                           "stop it first")
    there = await client.range(where, limit=1, keys_only=True)
    if there.count:
        if not force:
            raise MigrateError(f"etcd prefix {p} already holds {there.count} keys (e.g. "
                               f"{there.kvs[0].key.decode('utf-8', 'replace')}); another "
                               "--prefix, or --force to replace them")
        await client.delete(where, prefix=True)
    marker = key(p, "migration")
    doc = {"from": source, "last_epoch": last_epoch, "state": "copying", "at": time.time()}
    revision = await client.put(marker, encode(doc))
    for batch in batches(puts(p, snap)):
        revision = (await client.txn([], batch)).revision
    bumped = 0
    while revision < last_epoch:
        n = min(BUMP_BATCH, last_epoch - revision)
        revs = await asyncio.gather(*(client.put(key(p, "migration", "bump"), b"")
                                      for _ in range(n)))
        revision, bumped = max(revs), bumped + n
    if bumped:
        revision = (await client.txn([], [Delete(key(p, "migration", "bump"))])).revision
    revision = await client.put(marker, encode({**doc, "state": "done", "at": time.time()}))
    return Report(len(snap.units), len(snap.texts), len(snap.machines),
                  sum(len(fs) for fs in snap.failures.values()), len(snap.observed),
                  last_epoch, revision, bumped, len(snap.secrets))


def _write_marker(state_dir: str, url: str, prefix: str, report: Report) -> None:
    path = os.path.join(state_dir, MARKER)
    with open(path, "w") as f:
        json.dump({"registry": url, "prefix": prefix, "at": time.time(),
                   "last_epoch": report.last_epoch}, f)
        f.write("\n")


def check_not_migrated(state_dir: str) -> None:
    """Raise MigrateError when ``state_dir``'s registry was migrated to etcd: a SQLite
    fleetd on it would run a stale copy at epochs the agents refuse."""
    path = os.path.join(state_dir, MARKER)
    try:
        with open(path) as f:
            doc = json.load(f)
        to = f"{doc['registry']} (prefix {doc['prefix']})"
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        to = "etcd"
    raise MigrateError(f"{state_dir}: its registry was migrated to {to}: run fleetd with "
                       f"registry = \"etcd://...\" (remove {path} to run on this old copy)")


async def migrate(state_dir: str, client: EtcdClient, prefix: str, url: str, *,
                  force: bool = False) -> Report:
    """The whole migrate of ``state_dir`` to the etcd ``client`` reaches, holding the
    state directory's lock throughout (MigrateError naming the holder while a fleetd
    runs on it)."""
    check_not_migrated(state_dir)
    if not os.path.isdir(state_dir):
        raise MigrateError(f"{state_dir}: no such state directory")
    lease = FileLease(os.path.join(state_dir, "fleetd.lock"))
    try:
        lease.acquire()
    except LeaseHeld as e:
        raise MigrateError(f"{e}: stop that fleetd first (the migrate copies a registry "
                           "nobody writes)") from None
    except OSError as e:
        raise MigrateError(f"{lease.path}: {e.strerror or e}") from None
    try:
        last_epoch = read_epoch(epoch_path(lease.path))
        snap = await read_snapshot(os.path.join(state_dir, "registry.db"))
        try:
            report = await copy(client, prefix, snap, last_epoch, force=force,
                                source=os.path.abspath(state_dir))
        except EtcdError as e:
            raise MigrateError(f"etcd {url}: {e} (nothing is lost: run the migrate "
                               "again with --force)") from None
        _write_marker(state_dir, url, check_prefix(prefix), report)
        return report
    finally:
        lease.release()

