"""The engine loop: wake on events, reconcile, apply placements, hand out desired sets.

All decisions are the pure reconciler's; this layer only reads the registry, writes the
placements it planned and gives every machine session its host's desired set (the
session sends it only if it changed). Wakes coalesce: a burst of submits costs one pass.

It also turns agents' reports into the reconciler's facts: a unit reported ``failed``
for the content and generation fleetd wants on its machine is a failure, recorded once
per placement (so the reschedule policy can count it after a restart of fleetd); a unit
running (and passing its check, if it has one) where it is placed is ``ready``, which
is what a drain's hand-off waits for: its old copy then leaves the old host's set, and
the reconciler sends the next unit once that copy's row is gone. When the reconciler
says a decision is due later (a reschedule delay, a fence), the loop sets a timer.

One unit never stops the fleet: whatever its stored content holds (a unit stored by an
older fleetd whose rules were looser, or a bug its content alone sets off), an error in
reading, scheduling or rendering it stays with that unit, which waits unplaced with a
reason that says why, while every other unit is placed as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from fleetd import protocol
from fleetd.engine import reconciler
from fleetd.engine.scheduler import global_placements
from fleetd.engine.views import Failure, MachineView, UnitView
from fleetd.registry.base import (
    LAUNCHED,
    LOADED,
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    Registry,
    UnitRecord,
)
from fleetd.units import render
from fleetd.units.model import Unit, load, parse_name
from fleetd.units.parser import UnitError
from fleetd.units.validate import validate
from fleetd.units.xfleet import Requirements
from fleetd.wire import names
from fleetd.wire.numbers import NumberError, json_float, json_int

log = logging.getLogger("fleetd.engine")

PushFn = Callable[[str, List[Dict[str, Any]]], None]
HeardFn = Callable[[str], Optional[float]]  # machine -> when its agent was last heard
CacheKey = Tuple[str, str, str, str]  # name, content hash, vars, machine (rendered units)
Number = TypeVar("Number", int, float)
ContentKey = Tuple[str, str, str]  # name, content hash, vars: a unit as stored
MAX_CPUS = 1_000_000.0  # what a machine's facts may claim; more is an agent's bug
MAX_MEMORY = 1 << 62


class Engine:
    def __init__(self, registry: Registry, push: PushFn, changed: Callable[[], None],
                 heard: Optional[HeardFn] = None, skew_s: float = 2.0) -> None:
        self.registry = registry
        self.push = push
        self.changed = changed
        self.heard: HeardFn = heard or (lambda name: None)
        # how much later than fleetd's silence the agent's may begin (a one-way cut
        # leaves it hearing pings until the session gives up): fencing waits this longer
        self.skew_s = skew_s
        self._wake = asyncio.Event()
        self._timer: Optional[asyncio.TimerHandle] = None
        self.watching: Set[str] = set()  # units in a hand-off: their reports matter
        # units in a hand-off whose new copy is ready: their old copy leaves its host's set
        self._handed_over: Set[str] = set()
        self._units: Dict[CacheKey, Unit] = {}  # parsed, validated, rendered
        # (unit, machine) -> hash of the rendered content last handed to that machine:
        # what "current" means for an agent's report
        self.expected: Dict[Tuple[str, str], str] = {}
        self.global_targets: Dict[str, List[str]] = {}  # Global unit -> its machines
        self._requirements: Dict[ContentKey, Requirements] = {}
        # units that cannot be scheduled, and why (invalid content, or content that
        # broke a pass): they wait unplaced until their content or variables change
        self._invalid: Dict[ContentKey, str] = {}

    def wake(self) -> None:
        self._wake.set()

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        """The unit's [X-Fleet] as the last pass read it (None: not read yet, or invalid)."""
        return self._requirements.get((u.name, u.hash, _vars_key(u)))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("engine pass failed; retrying on the next event")

    def reconcile_once(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        units = self._placeable()
        machines = self.registry.list_machines()
        machine_views = [self.machine_view(m, now) for m in machines]
        observed = {(o.unit, o.machine): o for o in self.registry.list_observed()}
        failures = self._record_failures(units, machines, observed, now)
        unit_views = self._unit_views(units, machines, observed, failures)
        outcome = self._reconcile(unit_views, machine_views, now)
        if outcome is None:  # some units broke the pass: they are set aside now
            units = self._placeable()
            unit_views = self._unit_views(units, machines, observed, failures)
            outcome = reconciler.reconcile(unit_views, machine_views, now)
        tasks = outcome.tasks
        if tasks:
            for t in tasks:
                log.info("%s -> %s%s: %s", t.unit, t.machine or "(unplaced)",
                         f" (handing over from {t.handoff})" if t.handoff else "", t.reason)
            self.registry.set_placements([(t.unit, t.machine, t.reason) for t in tasks],
                                         handoffs={t.unit: t.handoff for t in tasks},
                                         retry=[t.unit for t in tasks if t.retry])
            units = self._placeable()
            unit_views = self._unit_views(units, machines, observed, failures)
            self.changed()
        deadlines = [m.drain_deadline for m in machines
                     if m.draining is not None and m.drain_deadline and m.drain_deadline > now]
        self._arm(min([*deadlines, *([outcome.wake_at] if outcome.wake_at else [])],
                      default=None), now)
        self.watching = {u.name for u in units if u.handoff}
        self.global_targets = global_placements(unit_views, machine_views)
        sets = self.desired_sets(units, machines)
        for machine, specs in sets.items():
            self.push(machine, specs)

    def _placeable(self) -> List[UnitRecord]:
        """Every unit but templates, which are never placed or run themselves."""
        return [u for u in self.registry.list_units() if not names.is_template(u.name)]

    def _reconcile(self, views: List[UnitView], machines: List[MachineView], now: float
                   ) -> Optional[reconciler.Outcome]:
        """The reconciler's outcome; None if it failed and the units that make it fail
        were found and set aside (``_invalid``), so that the pass can run without them.

        The reconciler sees all units at once, so an error there names no unit: each is
        tried alone, and those that fail alone are the ones to blame. If none does (an
        interplay of several), the error goes up and the pass fails as before."""
        try:
            return reconciler.reconcile(views, machines, now)
        except Exception:  # the error is a unit's, found below
            culprits = {v.name: why for v in views
                        if (why := self._breaks(v, machines, now)) is not None}
            if not culprits:
                raise
            log.exception("engine pass failed for %s; setting it aside", " ".join(culprits))
        for key in list(self._requirements):
            if key[0] in culprits:
                self._invalid[key] = f"cannot be scheduled: {culprits[key[0]]}"
                del self._requirements[key]
        return None

    @staticmethod
    def _breaks(view: UnitView, machines: List[MachineView], now: float) -> Optional[str]:
        """Why the reconciler fails for this unit alone, or None if it does not."""
        try:
            reconciler.reconcile([view], machines, now)
        except Exception as exc:  # any error here is this unit's alone
            log.warning("%s breaks the engine pass: %s", view.name, _error(exc))
            return f"fleetd failed on it ({_error(exc)})"
        return None

    def _arm(self, at: Optional[float], now: float) -> None:
        """A pass at ``at`` (a reschedule delay or a fence ends then), replacing any
        timer set before: each pass says again what it waits for."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None:
            delay = max(0.0, at - now) + 0.01  # just after, so the pass sees it is due
            self._timer = asyncio.get_running_loop().call_later(delay, self.wake)

    def machine_view(self, m: MachineRecord, now: float) -> MachineView:
        view = machine_view(m)
        heard = self.heard(m.name)
        # surely silent this long, seen from the agent too
        silent = max(0.0, now - heard - self.skew_s) if heard is not None else 0.0
        overdue = m.drain_deadline is not None and now >= m.drain_deadline
        return dataclasses.replace(view, silent_s=silent, drain_overdue=overdue)

    def _record_failures(self, units: List[UnitRecord], machines: List[MachineRecord],
                         observed: Mapping[Tuple[str, str], ObservedRecord],
                         now: float) -> Dict[str, List[FailureRecord]]:
        """A unit reported failed where it is placed, for the content and generation
        fleetd wants there, since it was placed there: one failure, recorded once.
        Returns every unit's failures."""
        by_name = {m.name: m for m in machines}
        recorded = self.registry.list_failures()
        new = False
        for u in units:
            if u.desired != LAUNCHED or u.machine is None or u.machine not in by_name:
                continue
            o = observed.get((u.name, u.machine))
            if o is None or o.state != protocol.FAILED or o.generation != u.generation:
                continue
            if o.hash != self._hash_on(u, by_name[u.machine]):
                continue
            if _failed_here(u, recorded.get(u.name, ())) is not None:
                continue  # this placement's failure is on record already
            why = o.error or f"exit status {o.exit_status}"
            log.warning("%s failed on %s: %s", u.name, u.machine, why)
            self.registry.record_failure(FailureRecord(u.name, u.hash, u.machine, now, why))
            new = True
        return self.registry.list_failures() if new else recorded

    def _hash_on(self, u: UnitRecord, machine: MachineRecord) -> Optional[str]:
        expected = self.expected.get((u.name, machine.name))
        if expected is not None:
            return expected
        rendered = self._render(u, machine)
        return None if isinstance(rendered, str) else rendered[0].hash

    def _unit_views(self, units: List[UnitRecord], machines: List[MachineRecord],
                    observed: Mapping[Tuple[str, str], ObservedRecord],
                    failures: Mapping[str, List[FailureRecord]]) -> List[UnitView]:
        """What the scheduler needs of each unit; requirements come from the unit as it
        reads before any machine is chosen (render.probe), so [X-Fleet] never depends
        on the machine it would pick."""
        by_name = {m.name: m for m in machines}
        views = []
        self._handed_over = set()
        keys = {(u.name, u.hash, _vars_key(u)) for u in units}
        for stale in set(self._requirements) - keys:
            del self._requirements[stale]
        for stale in set(self._invalid) - keys:
            del self._invalid[stale]
        invalid: List[Tuple[str, Optional[str], str]] = []
        for u in units:
            key = (u.name, u.hash, _vars_key(u))
            req = self._requirements.get(key)
            if req is None and key not in self._invalid:
                read = self._read_requirements(u)
                if isinstance(read, str):
                    self._invalid[key] = read
                else:
                    req = self._requirements[key] = read
            if req is None:
                why = self._invalid[key]
                if u.machine is not None or u.reason != why:
                    invalid.append((u.name, None, why))
                continue
            mine = tuple(Failure(f.machine, f.at, f.reason) for f in failures.get(u.name, ())
                         if f.hash == u.hash)
            here = _failed_here(u, failures.get(u.name, ()))
            failed = Failure(here.machine, here.at, here.reason) if here else None
            ready = False
            machine = by_name.get(u.machine or "")
            if u.handoff and machine is not None:
                ready = self._ready(u, machine, observed.get((u.name, machine.name)))
            if ready:
                self._handed_over.add(u.name)
            views.append(UnitView(u.name, u.desired, u.machine, u.reason, req, mine, failed,
                                  u.handoff, ready,
                                  old_running=(u.name, u.handoff or "") in observed))
        if invalid:
            self.registry.set_placements(invalid)
        return views

    def _read_requirements(self, u: UnitRecord) -> Union[Requirements, str]:
        """The unit's [X-Fleet] as it reads before any machine is chosen, or why it
        cannot be read: its content was stored before a rule tightened (say exactly
        which), or reading it failed in a way no rule foresaw (say that, and log it)."""
        text = self.registry.unit_text(u.hash) or ""
        try:
            return validate(u.name, text, u.vars, u.name).requirements
        except UnitError as exc:
            return f"invalid: {exc}"
        except Exception as exc:  # one unit's content never stops a pass
            log.exception("%s: reading its content failed", u.name)
            return f"invalid: fleetd failed reading it ({_error(exc)})"

    def _ready(self, u: UnitRecord, machine: MachineRecord, o: Optional[ObservedRecord]
               ) -> bool:
        """Does ``u`` run on ``machine`` as fleetd wants it, healthy if it is checked?"""
        if o is None or o.generation != u.generation or o.hash != self._hash_on(u, machine):
            return False
        if u.desired == LOADED:
            return o.state == protocol.STOPPED
        if o.state == protocol.EXITED:
            return True
        if o.state != protocol.RUNNING or o.health == "failing":
            return False
        rendered = self._render(u, machine)
        if isinstance(rendered, str):
            return False
        return o.health == "passing" or not rendered[0].config.get("check")

    def desired_sets(
        self, units: List[UnitRecord], machines: List[MachineRecord]
    ) -> Mapping[str, List[Dict[str, Any]]]:
        """Each machine's units, rendered for that machine. A unit that cannot be rendered
        there is left out, and its reason says why."""
        by_name = {m.name: m for m in machines}
        sets: Dict[str, List[Dict[str, Any]]] = {m.name: [] for m in machines}
        live = set()
        expected: Dict[Tuple[str, str], str] = {}
        reasons: List[Tuple[str, Optional[str], str]] = []
        for u in units:
            if u.desired not in (LOADED, LAUNCHED):
                continue
            targets = self.global_targets.get(u.name, [u.machine] if u.machine else [])
            if u.handoff and u.handoff != u.machine and u.name not in self._handed_over:
                targets = [*targets, u.handoff]  # the old copy runs until the new is ready
            want = protocol.WANT_RUNNING if u.desired == LAUNCHED else protocol.WANT_STOPPED
            for target in targets:
                machine = by_name.get(target)
                if machine is None:
                    continue
                rendered = self._render(u, machine)
                if isinstance(rendered, str):
                    why = f"cannot render for {machine.name}: {rendered}"
                    if u.reason != why and target == u.machine:
                        reasons.append((u.name, u.machine, why))
                    continue
                unit, key = rendered
                live.add(key)
                expected[(u.name, machine.name)] = unit.hash
                sets[machine.name].append(unit.spec(want, u.generation))
        moved = expected != self.expected
        self.expected = expected
        if reasons:
            self.registry.set_placements(reasons)
        if reasons or moved:
            self.changed()  # waiters compare reports against the new expectations
        for key in set(self._units) - live:
            del self._units[key]
        return sets

    def _render(self, u: UnitRecord, machine: MachineRecord
                ) -> Union[Tuple[Unit, CacheKey], str]:
        """``_rendered``, or why the unit cannot run on ``machine``: an error in one
        unit's content stays with that unit (its reason), never with the pass."""
        try:
            return self._rendered(u, machine)
        except (UnitError, LookupError) as exc:
            return str(exc)
        except Exception as exc:  # one unit's content never stops a pass
            log.exception("%s: rendering it for %s failed", u.name, machine.name)
            return f"fleetd failed on it ({_error(exc)})"

    def _rendered(self, record: UnitRecord, machine: MachineRecord) -> Tuple[Unit, CacheKey]:
        """The unit as it runs on ``machine`` (parsed once per content, vars and machine).

        Called for every unit and target on every pass: a cached unit costs no registry
        read. Content without markup is the same everywhere, so its key has no machine.
        """
        plain: CacheKey = (record.name, record.hash, "", "")
        unit = self._units.get(plain)
        if unit is not None:
            return unit, plain
        key: CacheKey = (record.name, record.hash, _vars_key(record),
                         json.dumps([machine.name, machine.address, machine.machine_id,
                                     machine.metadata, machine.facts], sort_keys=True))
        unit = self._units.get(key)
        if unit is not None:
            return unit, key
        text = self.registry.unit_text(record.hash)
        if text is None:
            raise LookupError(f"content {record.hash} of {record.name} is missing")
        if not render.has_markup(text):
            key = plain
        else:
            uname = parse_name(record.name)
            text = render.for_machine(
                text, record.name, uname.prefix, uname.instance, record.vars,
                render.MachineContext(machine.name, machine.address, machine.machine_id or "",
                                      machine.metadata, machine.facts))
        unit = self._units[key] = load(record.name, text)
        return unit, key


def _failed_here(u: UnitRecord, failures: Sequence[FailureRecord]) -> Optional[FailureRecord]:
    """The failure of ``u``'s current content on its machine since it was placed there
    (the newest), if any: what the reconciler acts on, recorded once per placement."""
    since = u.placed_at or 0.0
    return next((f for f in reversed(failures) if f.machine == u.machine
                 and f.hash == u.hash and f.at >= since), None)


def _error(exc: BaseException) -> str:
    """An unforeseen error in a unit's reason: its kind and its text, on one line."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def _vars_key(u: UnitRecord) -> str:
    return json.dumps(u.vars, sort_keys=True)


def _fact(m: MachineRecord, key: str, read: Callable[[object], Number]) -> Number | int:
    """A capacity from the agent's facts, or 0 (unknown, as before its first report)
    when it is missing or no sane number: a NaN there would break every pass."""
    value = (m.facts or {}).get(key)
    if value is None:
        return 0
    try:
        return read(value)
    except NumberError as exc:
        log.warning("%s: fact %s: %s; counted as unknown", m.name, key, exc)
        return 0


def machine_view(m: MachineRecord) -> MachineView:
    """A machine as the scheduler sees it: capacity and capabilities from its facts."""
    facts = m.facts or {}
    return MachineView(
        name=m.name, machine_id=m.machine_id, up=m.state == "up", metadata=m.metadata,
        cpus=_fact(m, "cpus", lambda v: json_float(v, 0.0, MAX_CPUS)),
        memory_bytes=_fact(m, "memory_bytes", lambda v: json_int(v, 0, MAX_MEMORY)),
        capabilities=frozenset(str(c) for c in facts.get("capabilities") or ()),
        lost=(m.error or "silent past its TTL") if m.state == "lost" else None,
        draining=m.draining is not None,
    )
