"""MemoryRegistry: the registry contract (fleetd/registry/base.py) in plain dicts.

For unit tests that need a registry but not a file: an engine, the API's services. It
passes the same contract tests as SQLite (tests/unit/test_registry_contract.py), so a
test that passes against it says something about fleetd with SQLite too. Writes are
all-or-none as in SQLite (a refused batch leaves nothing behind), records come back as
copies (mutating one changes nothing stored), and JSON fields (variables, metadata,
facts) go through JSON as SQLite stores them. Time comes from ``clock`` (a
fleetd.testing.clock.FakeClock, or time.time).

Not durable, not shared between processes, not thread-safe: one event loop, one test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

from fleetd.registry.base import (
    FAILURES_KEPT,
    INACTIVE,
    LAUNCHED,
    VERSIONS_KEPT,
    Conflict,
    FailureRecord,
    MachineRecord,
    NotFound,
    NotLeader,
    ObservedRecord,
    SecretRecord,
    UnitInput,
    UnitRecord,
    VersionRecord,
    check_desired,
    put_conflict,
)
from fleetd.wire import names

MACHINE_STATUS_FIELDS = ("machine_id", "facts", "state", "error", "last_seen", "draining",
                         "drain_deadline", "metadata")
T = TypeVar("T")


def _json(value: T) -> T:
    """As SQLite hands it back: through JSON (tuples become lists, keys strings)."""
    copied: T = json.loads(json.dumps(value))
    return copied


class MemoryRegistry:
    """Registry in memory; use from one thread (one event loop)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._contents: Dict[str, str] = {}
        self._units: Dict[str, UnitRecord] = {}
        self._machines: Dict[str, MachineRecord] = {}
        self._observed: Dict[Tuple[str, str], ObservedRecord] = {}
        self._failures: Dict[str, List[FailureRecord]] = {}
        self._versions: Dict[str, List[VersionRecord]] = {}  # frozen records
        self.closed = False
        # the term that leads, as a shared store would know it: set it, and a write
        # fenced by another epoch raises NotLeader (None: no fencing, as SQLite)
        self.leader_epoch: Optional[int] = None
        self.stale: Optional[str] = None  # what staleness() says
        self.callbacks: List[Callable[[], None]] = []
        self._secrets: Dict[str, SecretRecord] = {}  # frozen records: no copies needed

    def staleness(self) -> Optional[str]:
        return self.stale

    def on_change(self, callback: Callable[[], None]) -> None:
        """Kept in ``callbacks``: a test that plays another fleetd's write calls them."""
        self.callbacks.append(callback)

    def _fence(self, epoch: Optional[int]) -> None:
        if epoch is not None and self.leader_epoch is not None and epoch != self.leader_epoch:
            raise NotLeader(f"epoch {epoch} no longer leads (epoch {self.leader_epoch} does): "
                            "the write was not made")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """All or none: on any exception the state before the write comes back."""
        saved = (dict(self._contents), dict(self._units), dict(self._machines),
                 dict(self._observed), {k: list(v) for k, v in self._failures.items()},
                 {k: list(v) for k, v in self._versions.items()})
        try:
            yield
        except BaseException:
            (self._contents, self._units, self._machines, self._observed,
             self._failures, self._versions) = saved
            raise

    # --- units -----------------------------------------------------------------
    async def put_units(self, units: Sequence[UnitInput], desired: Optional[str],
                        replace: bool = False, *, follow: bool = True,
                        via: str = "", options: Optional[Dict[str, Any]] = None,
                        epoch: Optional[int] = None) -> List[str]:
        if desired is not None:
            check_desired(desired)
        self._fence(epoch)
        now = self._clock()
        changed: List[str] = []
        with self._tx():
            for unit in units:
                name, text, content_hash, variables, override = unit
                wanted = override or desired
                row = self._units.get(name)
                same = row is not None and row.hash == content_hash and row.vars == variables
                if row is not None and not same and not replace:
                    raise put_conflict(name, row.hash, content_hash,
                                       same_hash=row.hash == content_hash)
                self._contents.setdefault(content_hash, text)
                if row is None:
                    self._units[name] = UnitRecord(
                        name=name, hash=content_hash, desired=wanted or INACTIVE,
                        machine=None, reason="", updated_at=now, vars=_json(variables))
                else:
                    self._units[name] = dataclasses.replace(
                        row, hash=content_hash, vars=_json(variables),
                        desired=wanted or row.desired, updated_at=now)
                changed.append(name)
                if row is None or row.hash != content_hash:
                    kept = self._versions.setdefault(name, [])
                    number = kept[-1].version + 1 if kept else 1
                    kept.append(VersionRecord(name, number, content_hash, now, via,
                                              _json(dict(options or {}))))
                    del kept[:-VERSIONS_KEPT]
                if (row is not None and row.hash != content_hash and names.is_template(name)
                        and follow):
                    changed += self._follow_template(name, row.hash, content_hash, now)
            self._collect_contents()
        return changed

    def list_versions(self, unit: str) -> List[VersionRecord]:
        return [dataclasses.replace(v, options=_json(v.options))
                for v in self._versions.get(unit, ())]

    async def set_version_options(self, unit: str, version: int,
                                  options: Mapping[str, Any]) -> None:
        kept = self._versions.get(unit, [])
        for i, v in enumerate(kept):
            if v.version == version:
                kept[i] = dataclasses.replace(v, options=_json(dict(options)))
                return
        raise NotFound(f"{unit} has no version {version}")

    def _follow_template(self, template: str, old: str, new: str, now: float) -> List[str]:
        """Instances of ``template`` still on its old content take the new content
        (matched as SQLite's LIKE does: ASCII letters in any case)."""
        parts = names.split(template)
        prefix = (parts.prefix + "@").lower()
        suffix = ("." + parts.suffix).lower()
        followers = [n for n, u in self._units.items()
                     if u.hash == old and n != template and len(n) >= len(prefix) + len(suffix)
                     and n.lower().startswith(prefix) and n.lower().endswith(suffix)]
        for n in followers:
            self._units[n] = dataclasses.replace(self._units[n], hash=new, updated_at=now)
        return followers

    async def restart(self, names: Sequence[str]) -> None:
        now = self._clock()
        with self._tx():
            for name in names:
                u = self._existing(name)
                self._units[name] = dataclasses.replace(
                    u, generation=u.generation + 1, desired=LAUNCHED, updated_at=now)
                self._failures.pop(name, None)

    def _existing(self, name: str) -> UnitRecord:
        u = self._units.get(name)
        if u is None:
            raise NotFound(f"unit {name} does not exist")
        return u

    def _collect_contents(self) -> None:
        used = {u.hash for u in self._units.values()}
        used |= {v.hash for kept in self._versions.values() for v in kept}
        self._contents = {h: t for h, t in self._contents.items() if h in used}

    async def set_desired(self, names: Sequence[str], desired: str) -> None:
        check_desired(desired)
        now = self._clock()
        with self._tx():
            for name in names:
                self._units[name] = dataclasses.replace(self._existing(name), desired=desired,
                                                        updated_at=now)

    async def delete_units(self, names: Sequence[str]) -> None:
        with self._tx():
            for name in names:
                self._existing(name)
                del self._units[name]
                self._failures.pop(name, None)
                self._versions.pop(name, None)
            self._collect_contents()

    def get_unit(self, name: str) -> Optional[UnitRecord]:
        u = self._units.get(name)
        return _unit_copy(u) if u is not None else None

    def list_units(self) -> List[UnitRecord]:
        return [_unit_copy(self._units[n]) for n in sorted(self._units)]

    def unit_text(self, content_hash: str) -> Optional[str]:
        return self._contents.get(content_hash)

    async def set_placements(self, placements: Iterable[Tuple[str, Optional[str], str]],
                             handoffs: Optional[Mapping[str, Optional[str]]] = None,
                             retry: Sequence[str] = (), *,
                             epoch: Optional[int] = None) -> None:
        self._fence(epoch)
        now = self._clock()
        with self._tx():
            for unit, machine, reason in placements:
                u = self._units.get(unit)
                if u is not None:  # as an UPDATE: a unit gone meanwhile is no error
                    placed_at = u.placed_at if u.machine == machine else now
                    self._units[unit] = dataclasses.replace(u, machine=machine, reason=reason,
                                                            placed_at=placed_at)
            for unit, old in (handoffs or {}).items():
                u = self._units.get(unit)
                if u is not None:
                    self._units[unit] = dataclasses.replace(u, handoff=old)
            for unit in retry:
                u = self._units.get(unit)
                if u is not None:
                    self._units[unit] = dataclasses.replace(u, generation=u.generation + 1,
                                                            placed_at=now)

    async def record_failure(self, failure: FailureRecord, *,
                             epoch: Optional[int] = None) -> None:
        self._fence(epoch)
        kept = sorted([*self._failures.get(failure.unit, []), failure], key=lambda f: f.at)
        self._failures[failure.unit] = kept[-FAILURES_KEPT:]

    def list_failures(self, unit: Optional[str] = None) -> Dict[str, List[FailureRecord]]:
        return {u: list(fs) for u, fs in sorted(self._failures.items())
                if fs and (unit is None or u == unit)}

    # --- machines --------------------------------------------------------------
    async def add_machine(self, machine: MachineRecord) -> None:
        for m in self._machines.values():
            if m.name == machine.name or (m.address, m.port) == (machine.address, machine.port):
                raise Conflict(f"machine {m.name} already exists"
                               + ("" if m.name == machine.name
                                  else f" at {machine.address}:{machine.port}"))
        # what a user says of a machine; its status starts afresh, as in SQLite
        self._machines[machine.name] = MachineRecord(
            name=machine.name, address=machine.address, port=machine.port, user=machine.user,
            identity=machine.identity, known_hosts=machine.known_hosts,
            agent_command=machine.agent_command, metadata=_json(machine.metadata))

    async def remove_machine(self, name: str) -> None:
        if self._machines.pop(name, None) is None:
            raise NotFound(f"machine {name} does not exist")
        self._observed = {k: o for k, o in self._observed.items() if k[1] != name}

    def get_machine(self, name: str) -> Optional[MachineRecord]:
        m = self._machines.get(name)
        return _machine_copy(m) if m is not None else None

    def list_machines(self) -> List[MachineRecord]:
        return [_machine_copy(self._machines[n]) for n in sorted(self._machines)]

    async def update_machine(self, name: str, *, epoch: Optional[int] = None,
                             **fields: Any) -> None:
        self._fence(epoch)
        unknown = set(fields) - set(MACHINE_STATUS_FIELDS)
        if unknown:
            raise ValueError(f"not machine status fields: {sorted(unknown)}")
        m = self._machines.get(name)
        if m is not None:  # as an UPDATE: a machine removed meanwhile is no error
            values = {k: _json(v) if k in ("facts", "metadata") else v for k, v in fields.items()}
            self._machines[name] = dataclasses.replace(m, **values)

    # --- observed state -----------------------------------------------------------
    async def replace_observed(self, machine: str, rows: Sequence[ObservedRecord], *,
                               epoch: Optional[int] = None) -> None:
        self._fence(epoch)
        self._observed = {k: o for k, o in self._observed.items() if k[1] != machine}
        for r in rows:
            self._observed[(r.unit, r.machine)] = r

    async def upsert_observed(self, row: ObservedRecord, *,
                              epoch: Optional[int] = None) -> None:
        self._fence(epoch)
        self._observed[(row.unit, row.machine)] = row

    async def delete_observed(self, machine: str, unit: str, *,
                              epoch: Optional[int] = None) -> None:
        self._fence(epoch)
        self._observed.pop((unit, machine), None)

    def list_observed(self, unit: Optional[str] = None) -> List[ObservedRecord]:
        return [self._observed[k] for k in sorted(self._observed)
                if unit is None or k[0] == unit]

    # --- secrets -----------------------------------------------------------------
    async def put_secret(self, secret: SecretRecord) -> None:
        self._secrets[secret.name] = secret

    async def delete_secret(self, name: str) -> None:
        if self._secrets.pop(name, None) is None:
            raise NotFound(f"secret {name} does not exist")

    def get_secret(self, name: str) -> Optional[SecretRecord]:
        return self._secrets.get(name)

    def list_secrets(self) -> List[SecretRecord]:
        return [self._secrets[n] for n in sorted(self._secrets)]

    async def close(self) -> None:
        self.closed = True


def _unit_copy(u: UnitRecord) -> UnitRecord:
    return dataclasses.replace(u, vars=dict(u.vars))


def _machine_copy(m: MachineRecord) -> MachineRecord:
    return dataclasses.replace(m, metadata=dict(m.metadata), facts=_json(m.facts))


def at_once(write: Coroutine[Any, Any, T]) -> T:
    """The result of a registry write that never waits (MemoryRegistry's, SQLite's), run
    to its end from sync code, even inside a running event loop: test set-up does not
    need a loop for them. A write that does wait (etcd's) is refused, not blocked on."""
    try:
        write.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    write.close()
    raise RuntimeError("at_once: this write waits for its store; await it instead")
