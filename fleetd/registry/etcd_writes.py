"""What each Registry write does to etcd's keys, decided from the cache (pure: no I/O;
``etcd.py`` commits the plans, adds the fencing and exactly-once compares, and retries
a plan whose compares failed against a freshly loaded cache).

A ``Plan`` is ``ops`` that must land together (one transaction, under ``compares``)
with ``before`` and ``after`` ops that may go in transactions of their own when the
whole does not fit in one: ``before`` are texts (content-addressed: harmless before
the units that use them; the units' compare of ``seq/units`` makes a racing garbage
collection send the batch round again), ``after`` are clean-ups of keys nothing reads
any more (a deleted unit's placement and failures, unused texts).
"""

from __future__ import annotations

import json
import uuid
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from fleetd.registry import etcd_versions as versions
from fleetd.registry.base import (
    FAILURES_KEPT,
    INACTIVE,
    LAUNCHED,
    Conflict,
    FailureRecord,
    MachineRecord,
    NotFound,
    ObservedRecord,
    SecretRecord,
    UnitInput,
    check_desired,
    put_conflict,
)
from fleetd.registry.etcd_cache import Cache, observed_doc, same_but_time
from fleetd.registry.etcd_keys import Doc, encode, key
from fleetd.registry.etcdv3_types import Compare, Delete, Op, Put
from fleetd.wire import names as unit_names

USER_MACHINE_FIELDS = ("draining", "drain_deadline", "metadata")  # in the machine's document
STATE_FIELDS = ("machine_id", "facts", "state", "error", "last_seen")
_NO_PLACEMENT: Doc = {"machine": None, "reason": "", "placed_at": None, "handoff": None,
                      "retries": 0}
_NO_STATE: Doc = {"machine_id": None, "facts": {}, "state": "new", "error": None,
                  "last_seen": None}


class Plan(NamedTuple):
    compares: List[Compare]
    ops: List[Op]
    before: List[Op] = []
    after: List[Op] = []


def _put(prefix: str, kind: str, names: Tuple[str, ...], doc: Doc) -> Put:
    return Put(key(prefix, kind, *names), encode(doc))


def _delete(prefix: str, kind: str, *names: str) -> Delete:
    return Delete(key(prefix, kind, *names))


def _delete_all(prefix: str, kind: str, *names: str) -> Delete:
    return Delete(key(prefix, kind, *names) + "/", prefix=True)


class _Units:
    """The units as a batch changes them: the cache's, overlaid with the batch's."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.p = cache.prefix
        self.docs: Dict[str, Optional[Doc]] = {}  # changed (None: deleted)

    def get(self, name: str) -> Optional[Doc]:
        if name in self.docs:
            return self.docs[name]
        e = self.cache.entry("units", name)
        return dict(e.doc) if e else None

    def existing(self, name: str) -> Doc:
        d = self.get(name)
        if d is None:
            raise NotFound(f"unit {name} does not exist")
        return d

    def names(self) -> Set[str]:
        every = {n for (n,) in self.cache.kinds["units"]} | set(self.docs)
        return {n for n in every if self.get(n) is not None}

    def plan(self, before: Sequence[Op] = (), after: Sequence[Op] = ()) -> Plan:
        """Every changed unit, texts no unit uses any more dropped (after), and the
        compare-and-bump of ``seq/units``."""
        ops: List[Op] = []
        late: List[Op] = list(after)
        for name, doc in sorted(self.docs.items()):
            if doc is None:
                ops.append(_delete(self.p, "units", name))
                late += [_delete(self.p, "placements", name),
                         _delete_all(self.p, "failures", name)]
            else:
                ops.append(_put(self.p, "units", (name,), doc))
        used = {h for d in (self.get(n) for n in self.names()) if d for h in versions.hashes(d)}
        was = {h for (n,), e in self.cache.kinds["units"].items() if n in self.docs
               for h in versions.hashes(e.doc)}
        late += [_delete(self.p, "texts", h) for h in sorted(was - used)
                 if self.cache.entry("texts", h)]
        seq = key(self.p, "seq", "units")
        ops.append(Put(seq, uuid.uuid4().hex))
        return Plan([Compare.mod(seq, "==", self.cache.mod("seq", "units"))], ops,
                    list(before), late)


def set_version_options(cache: Cache, unit: str, version: int, options: Mapping[str, Any]
                        ) -> Plan:
    view = _Units(cache)
    view.docs[unit] = versions.with_options(view.existing(unit), unit, version, options)
    return view.plan()


def put_units(cache: Cache, units: Sequence[UnitInput], desired: Optional[str],
              replace: bool, now: float, follow: bool = True, via: str = "",
              options: Optional[Mapping[str, Any]] = None) -> Tuple[List[str], Plan]:
    if desired is not None:
        check_desired(desired)
    view = _Units(cache)
    texts: Dict[str, str] = {}
    cleanup: List[Op] = []
    changed: List[str] = []
    for unit in units:
        name, text, content_hash, variables, override = unit
        wanted = override or desired
        row = view.get(name)
        same = row is not None and row["hash"] == content_hash and row["vars"] == variables
        if row is not None and not same and not replace:
            raise put_conflict(name, row["hash"], content_hash,
                               same_hash=row["hash"] == content_hash)
        if cache.text(content_hash) is None:
            texts[content_hash] = text
        kept = versions.versioned(row, content_hash, now, via, options or {})
        if row is None:
            view.docs[name] = {"hash": content_hash, "vars": dict(variables),
                               "desired": wanted or INACTIVE, "generation": 0,
                               "updated_at": now, "versions": kept}
            if cache.entry("placements", name):  # left by a destroy cut short
                cleanup.append(_delete(cache.prefix, "placements", name))
            if cache.failure_keys(name):
                cleanup.append(_delete_all(cache.prefix, "failures", name))
        else:
            view.docs[name] = {**row, "hash": content_hash, "vars": dict(variables),
                               "desired": wanted or row["desired"], "updated_at": now,
                               "versions": kept}
        changed.append(name)
        if (row is not None and row["hash"] != content_hash and unit_names.is_template(name)
                and follow):
            changed += _follow_template(view, name, row["hash"], content_hash, now)
    plan = view.plan(before=[_put(cache.prefix, "texts", (h,), {"text": t})
                             for h, t in sorted(texts.items())])
    return changed, plan._replace(ops=plan.ops + cleanup)


def _follow_template(view: _Units, template: str, old: str, new: str,
                     now: float) -> List[str]:
    """Instances of ``template`` still on its old content take the new content (matched
    as SQLite's LIKE does: ASCII letters in any case)."""
    parts = unit_names.split(template)
    prefix, suffix = (parts.prefix + "@").lower(), ("." + parts.suffix).lower()
    followers = []
    for n in sorted(view.names()):
        d = view.get(n)
        if (d is not None and d["hash"] == old and n != template
                and len(n) >= len(prefix) + len(suffix)
                and n.lower().startswith(prefix) and n.lower().endswith(suffix)):
            view.docs[n] = {**d, "hash": new, "updated_at": now}
            followers.append(n)
    return followers


def restart(cache: Cache, names: Sequence[str], now: float) -> Plan:
    view = _Units(cache)
    wipe: List[Op] = []
    for name in names:
        d = view.existing(name)
        view.docs[name] = {**d, "generation": d["generation"] + 1, "desired": LAUNCHED,
                           "updated_at": now}
        wipe.append(_delete_all(cache.prefix, "failures", name))
    plan = view.plan()
    return plan._replace(ops=plan.ops + wipe)


def set_desired(cache: Cache, names: Sequence[str], desired: str, now: float) -> Plan:
    check_desired(desired)
    view = _Units(cache)
    for name in names:
        view.docs[name] = {**view.existing(name), "desired": desired, "updated_at": now}
    return view.plan()


def delete_units(cache: Cache, names: Sequence[str]) -> Plan:
    view = _Units(cache)
    for name in names:
        view.existing(name)
        view.docs[name] = None
    return view.plan()


def set_placements(cache: Cache, placements: Iterable[Tuple[str, Optional[str], str]],
                   handoffs: Optional[Mapping[str, Optional[str]]], retry: Sequence[str],
                   now: float) -> List[Tuple[str, Plan]]:
    """One small plan per unit placed (each compares that the unit is the one the
    engine saw, and the placement it changes): a pass's placements may be committed
    in several transactions when they do not fit in one."""
    docs: Dict[str, Doc] = {}

    def doc(unit: str) -> Optional[Doc]:
        if cache.entry("units", unit) is None:
            return None  # as an UPDATE: a unit gone meanwhile is no error
        if unit not in docs:
            e = cache.entry("placements", unit)
            docs[unit] = dict(e.doc) if e else dict(_NO_PLACEMENT)
        return docs[unit]

    for unit, machine, reason in placements:
        d = doc(unit)
        if d is not None:
            placed_at = d["placed_at"] if d["machine"] == machine else now
            d.update(machine=machine, reason=reason, placed_at=placed_at)
    for unit, old in (handoffs or {}).items():
        d = doc(unit)
        if d is not None:
            d["handoff"] = old
    for unit in retry:
        d = doc(unit)
        if d is not None:
            d.update(retries=d["retries"] + 1, placed_at=now)
    p = cache.prefix
    plans = []
    for u, d in sorted(docs.items()):
        stored = cache.entry("placements", u)
        if stored is None or stored.doc != d:  # an unchanged placement is not written
            plans.append((u, Plan(
                [Compare.create(key(p, "units", u), "==", cache.create("units", u)),
                 Compare.mod(key(p, "placements", u), "==", stored.mod if stored else 0)],
                [_put(p, "placements", (u,), d)])))
    return plans


def record_failure(cache: Cache, f: FailureRecord) -> Plan:
    ident = f"{f.at:017.6f}-{uuid.uuid4().hex[:8]}"
    doc = {"hash": f.hash, "machine": f.machine, "at": f.at, "reason": f.reason}
    kept = sorted([*cache.failure_keys(f.unit), (f.at, ident)])
    gone = {i for _, i in kept[:-FAILURES_KEPT]}
    drop: List[Op] = [_delete(cache.prefix, "failures", f.unit, i) for i in sorted(gone)
                      if i != ident]
    new: List[Op] = [] if ident in gone else [
        _put(cache.prefix, "failures", (f.unit, ident), doc)]  # older than all kept: no
    return Plan([], new + drop)


def add_machine(cache: Cache, m: MachineRecord) -> Plan:
    addr = f"{m.address}:{m.port}"
    for (name,), e in cache.kinds["machines"].items():
        if name == m.name or (e.doc["address"], e.doc["port"]) == (m.address, m.port):
            raise Conflict(f"machine {name} already exists"
                           + ("" if name == m.name else f" at {m.address}:{m.port}"))
    p = cache.prefix
    doc = {"address": m.address, "port": m.port, "user": m.user, "identity": m.identity,
           "known_hosts": m.known_hosts, "agent_command": m.agent_command,
           "metadata": dict(m.metadata), "draining": None, "drain_deadline": None}
    return Plan([Compare.create(key(p, "machines", m.name), "==", 0),
                 Compare.create(key(p, "addresses", addr), "==", 0)],
                [_put(p, "machines", (m.name,), doc),
                 _put(p, "addresses", (addr,), {"machine": m.name}),
                 _delete(p, "machinestate", m.name),
                 _delete_all(p, "observed", m.name)])


def remove_machine(cache: Cache, name: str) -> Plan:
    e = cache.entry("machines", name)
    if e is None:
        raise NotFound(f"machine {name} does not exist")
    p = cache.prefix
    return Plan([Compare.mod(key(p, "machines", name), "==", e.mod)],
                [_delete(p, "machines", name),
                 _delete(p, "addresses", f"{e.doc['address']}:{e.doc['port']}"),
                 _delete(p, "machinestate", name), _delete_all(p, "observed", name)])


def update_machine(cache: Cache, name: str, fields: Mapping[str, Any]) -> Optional[Plan]:
    """The write ``fields`` need, or None when they change nothing but ``last_seen``
    (then kept in the cache's overlay: heartbeats are not written)."""
    unknown = set(fields) - set(USER_MACHINE_FIELDS) - set(STATE_FIELDS)
    if unknown:
        raise ValueError(f"not machine status fields: {sorted(unknown)}")
    e = cache.entry("machines", name)
    if e is None:
        return None  # as an UPDATE: a machine removed meanwhile is no error
    p = cache.prefix
    compares: List[Compare] = []
    ops: List[Op] = []
    user = {k: _json(v) for k, v in fields.items() if k in USER_MACHINE_FIELDS}
    if user and any(e.doc[k] != v for k, v in user.items()):
        compares.append(Compare.mod(key(p, "machines", name), "==", e.mod))
        ops.append(_put(p, "machines", (name,), {**e.doc, **user}))
    state = {k: v for k, v in fields.items() if k in STATE_FIELDS}
    s = cache.entry("machinestate", name)
    old = dict(s.doc) if s else dict(_NO_STATE)
    seen = state.pop("last_seen", old["last_seen"])
    mine = cache.last_seen.get(name)
    if seen is not None:
        cache.last_seen[name] = max(seen, mine or seen)
    new = {**old, **{k: _json(v) for k, v in state.items()}}
    if new != old:
        new["last_seen"] = cache.last_seen.get(name, old["last_seen"])
        compares += [Compare.create(key(p, "machines", name), "==", e.create),
                     Compare.mod(key(p, "machinestate", name), "==",
                                 cache.mod("machinestate", name))]
        ops.append(_put(p, "machinestate", (name,), new))
    return Plan(compares, ops) if ops else None


def _json(v: Any) -> Any:
    """As it reads back from etcd (tuples become lists), so an unchanged value is seen
    as unchanged."""
    return json.loads(json.dumps(v))


def observed_ops(cache: Cache, rows: Sequence[ObservedRecord],
                 drop: Iterable[Tuple[str, str]] = ()) -> List[Op]:
    """Puts of the rows that say something new (a row equal to the stored one apart
    from ``updated_at`` only moves the overlay), deletes of (machine, unit) stored."""
    ops: List[Op] = []
    for r in rows:
        if same_but_time(cache.entry("observed", r.machine, r.unit), r):
            at = cache.observed_at.get((r.unit, r.machine))
            cache.observed_at[(r.unit, r.machine)] = max(r.updated_at, at or r.updated_at)
        else:
            ops.append(_put(cache.prefix, "observed", (r.machine, r.unit), observed_doc(r)))
    ops += [_delete(cache.prefix, "observed", m, u) for m, u in drop
            if cache.entry("observed", m, u)]
    return ops


def replace_observed(cache: Cache, machine: str, rows: Sequence[ObservedRecord]) -> List[Op]:
    keep = {(r.machine, r.unit) for r in rows}
    gone = [(m, u) for (m, u) in cache.kinds["observed"] if m == machine
            and (m, u) not in keep]
    return observed_ops(cache, rows, sorted(gone))


def put_secret(cache: Cache, secret: SecretRecord) -> Plan:
    """A secret's key, whatever it held (the last ``secret set`` wins)."""
    return Plan([], [_put(cache.prefix, "secrets", (secret.name,),
                          {"sealed": secret.sealed, "version": secret.version,
                           "set_at": secret.set_at})])


def delete_secret(cache: Cache, name: str) -> Plan:
    e = cache.entry("secrets", name)
    if e is None:
        raise NotFound(f"secret {name} does not exist")
    return Plan([Compare.mod(key(cache.prefix, "secrets", name), "==", e.mod)],
                [_delete(cache.prefix, "secrets", name)])


_OP_BYTES = 64  # what an op costs in a request besides its key and value


def size_of(op: Op) -> int:
    return _OP_BYTES + len(op.key) + len(getattr(op, "value", b""))


def chunks(max_ops: int, max_bytes: int,
           plans: List[Tuple[str, Plan]]) -> List[List[Tuple[str, Plan]]]:
    """``plans`` in order, in groups that each fit one transaction: at most ``max_ops``
    ops and compares, less the registry's own two, and ``max_bytes``."""
    room = max_ops - 2
    out: List[List[Tuple[str, Plan]]] = [[]]
    ops = compares = size = 0
    for item in plans:
        p = item[1]
        s = sum(size_of(o) for o in p.ops)
        if out[-1] and (ops + len(p.ops) > room or compares + len(p.compares) > room
                        or size + s > max_bytes):
            out.append([])
            ops = compares = size = 0
        out[-1].append(item)
        ops, compares, size = ops + len(p.ops), compares + len(p.compares), size + s
    return [c for c in out if c]
