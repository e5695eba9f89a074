"""The engine loop: wake on events, reconcile, apply placements, hand out desired sets.

A pass reads the registry once (units, machines, observed state, failures), decides
everything from those records (``Engine.decide``: the pure reconciler's placements with
their reasons, where Global units run, the failures to record, each machine's desired
set, when to wake), then writes the decisions, publishes an immutable ``Snapshot`` for
the API, and gives every machine session its host's desired set (the session sends it
only if it changed). Wakes coalesce: a burst of submits costs one pass.

Decisions turn agents' reports into the reconciler's facts: a unit reported ``failed``
for the content and generation fleetd wants on its machine is a failure, recorded once
per placement (so the reschedule policy can count it after a restart of fleetd); a unit
running (and passing its check, if it has one) where it is placed is ``ready``, which
is what a drain's hand-off waits for: its old copy then leaves the old host's set, and
the reconciler sends the next unit once that copy's row is gone. When the reconciler
says a decision is due later (a reschedule delay, a fence), the loop sets a timer.

Unit files are read through one cache (fleetd.units.compiled), shared with the API:
each (name, content, variables) is probed once and rendered once per machine; rendering
and the desired sets are fleetd.engine.desired's.

One unit never stops the fleet: whatever its stored content holds (a unit stored by an
older fleetd whose rules were looser, or a bug its content alone sets off), an error in
reading, scheduling or rendering it stays with that unit, which waits unplaced with a
reason that says why, while every other unit is placed as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from fleetd import protocol
from fleetd.engine import events, reconciler, rollout, transitions
from fleetd.engine.desired import Rendering
from fleetd.engine.facts import PlacementRow, applied, failed_here, machine_view, recorded
from fleetd.engine.rolling import HashOn, Rolling
from fleetd.engine.snapshot import Snapshot
from fleetd.engine.views import Failure, MachineView, UnitView
from fleetd.registry.base import (
    LAUNCHED,
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    Registry,
    Unavailable,
    UnitRecord,
    Unsure,
)
from fleetd.units.compiled import CompiledUnits, ContentKey, Invalid, RenderKey, content_key
from fleetd.units.compiled import error_text as _error
from fleetd.units.secrets import SecretSource
from fleetd.units.xfleet import Requirements
from fleetd.units.xupdate import UpdatePolicy
from fleetd.wire import names
from fleetd.wire.unitspec import UnitSpec

__all__ = ["Decision", "Engine", "Snapshot", "machine_view"]

log = logging.getLogger("fleetd.engine")
RETRY_S = 1.0  # a pass the store could not take is tried again this much later

PushFn = Callable[[str, List[UnitSpec]], None]
HeardFn = Callable[[str], Optional[float]]  # machine -> when its agent was last heard
Observed = Mapping[Tuple[str, str], ObservedRecord]


@dataclasses.dataclass
class Decision:
    """Everything one pass decided, before anything is written."""

    failures: List[FailureRecord]  # new failures to record
    placements: List[PlacementRow]  # unreadable units and the reconciler's tasks
    reasons: List[PlacementRow]  # units that cannot be rendered where they are placed
    handoffs: Dict[str, Optional[str]]
    retry: List[str]
    tasks: List[reconciler.Place]
    units: List[UnitRecord]  # the units as they are once the placements are written
    sets: Dict[str, List[UnitSpec]]  # machine -> its desired set
    snapshot: Snapshot
    wake_at: Optional[float]
    probed: Set[ContentKey]  # every unit's content as stored
    rendered: Set[RenderKey]  # the rendered units the sets use
    moved: bool  # expectations changed: waiters compare reports against the new ones


class Engine:
    def __init__(self, registry: Registry, push: PushFn, changed: Callable[[], None],
                 heard: Optional[HeardFn] = None, skew_s: float = 2.0,
                 units: Optional[CompiledUnits] = None, epoch: Optional[int] = None,
                 secrets: Optional[SecretSource] = None) -> None:
        """``epoch``: the leadership term this engine runs in; its writes are fenced by
        it (registry/base.py), so a pass that outlives its term writes nothing.
        ``secrets``: where SecretEnvironment= values come from (units/secrets.py)."""
        self.registry = registry
        self.epoch = epoch
        # False: a follower's engine, which decides (its snapshot answers the API) but
        # neither writes nor pushes; the leader's writes reach it through the registry
        self.leading = True
        self.push = push
        self.changed = changed
        self.heard: HeardFn = heard or (lambda name: None)
        # how much later than fleetd's silence the agent's may begin (a one-way cut
        # leaves it hearing pings until the session gives up): fencing waits this longer
        self.skew_s = skew_s
        self.units = units if units is not None else CompiledUnits()  # shared with the API
        self.rendering = Rendering(registry, self.units, secrets)  # engine/desired.py
        self._wake = asyncio.Event()
        self._timer: Optional[asyncio.TimerHandle] = None
        # units whose content broke a pass, and why: they wait unplaced until their
        # content or variables change
        self._set_aside: Dict[ContentKey, str] = {}
        self._snapshot = Snapshot()
        # events of a leading engine's passes (fleetd.engine.transitions), against the
        # records as its last pass left them (None: none yet this term)
        self.publish: events.Publish = events.nowhere
        # each pass's duration in seconds and how it ended (fleetd's metrics)
        self.timed: Callable[[float, str], object] = lambda seconds, outcome: None
        self._known: Optional[Tuple[Dict[str, UnitRecord], Dict[str, MachineRecord]]] = None
        self.rolling = Rolling(registry)  # templates' rolling updates (issue 16)
        self._globals: Mapping[str, List[str]] = {}  # the last pass's Global units

    @property
    def secrets(self) -> Optional[SecretSource]:
        """Where SecretEnvironment= values come from (units/secrets.py)."""
        return self.rendering.secrets

    @secrets.setter
    def secrets(self, source: Optional[SecretSource]) -> None:
        self.rendering.secrets = source

    def wake(self) -> None:
        self._wake.set()

    def snapshot(self) -> Snapshot:
        """The last pass's decisions, immutable: what the API reads."""
        return self._snapshot

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            started, outcome = time.monotonic(), "done"
            try:
                await self.reconcile_once()
            except (Unavailable, Unsure) as exc:  # the store cannot take the writes now
                log.warning("engine pass not written (%s); retrying in %gs", exc, RETRY_S)
                self._arm(time.time() + RETRY_S, time.time())
                outcome = "not written"
            except Exception:
                log.exception("engine pass failed; retrying on the next event")
                outcome = "failed"
            self.timed(time.monotonic() - started, outcome)

    # --- a pass: read, decide, write, push ------------------------------------------------

    async def reconcile_once(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        units = [u for u in self.registry.list_units() if not names.is_template(u.name)]
        machines = self.registry.list_machines()
        observed = {(o.unit, o.machine): o for o in self.registry.list_observed()}
        d = self.decide(units, machines, observed, self.registry.list_failures(), now)
        if not self.leading:
            self._known = None
            self._snapshot = d.snapshot
            self.units.retain(d.probed, d.rendered)
            if d.moved:
                self.changed()
            return
        for f in d.failures:
            log.warning("%s failed on %s: %s", f.unit, f.machine, f.reason)
            await self.registry.record_failure(f, epoch=self.epoch)
        for t in d.tasks:
            log.info("%s -> %s%s: %s", t.unit, t.machine or "(unplaced)",
                     f" (handing over from {t.handoff})" if t.handoff else "", t.reason)
        if d.placements or d.reasons:
            await self.registry.set_placements([*d.placements, *d.reasons],
                                               handoffs=d.handoffs, retry=d.retry,
                                               epoch=self.epoch)
        known, known_machines = self._known or (None, None)
        for draft in transitions.engine_pass(known, known_machines, units, machines,
                                             d.tasks, d.failures):
            self.publish(draft)
        self._known = ({u.name: u for u in d.units}, {m.name: m for m in machines})
        self._snapshot = d.snapshot
        self.units.retain(d.probed, d.rendered)
        if d.tasks or d.reasons or d.moved:
            self.changed()  # waiters compare reports against the new placements
        self._arm(await self._roll(machines, observed, now, d.wake_at), now)
        for machine, specs in d.sets.items():
            self.push(machine, specs)

    def decide(self, units: List[UnitRecord], machines: List[MachineRecord],
               observed: Observed, failures: Dict[str, List[FailureRecord]], now: float
               ) -> Decision:
        """What a pass does with these records; writes nothing (units that break the
        reconciler are remembered, so that the next pass need not find them again)."""
        views = [self.machine_view(m, now) for m in machines]
        self.rendering.new_pass()
        new = self._new_failures(units, machines, observed, failures, now)
        failures = recorded(failures, new)
        keys = {u.name: content_key(u.name, u.hash, u.vars) for u in units}
        unit_views, unreadable, requirements = self._unit_views(units, keys, machines,
                                                                 observed, failures)
        outcome = self._reconcile(unit_views, views, now, keys)
        if outcome is None:  # some units broke the pass: they are set aside now
            unit_views, unreadable, requirements = self._unit_views(units, keys, machines,
                                                                     observed, failures)
            outcome = reconciler.reconcile(unit_views, views, now)
        tasks = outcome.tasks
        placements = [*unreadable, *((t.unit, t.machine, t.reason) for t in tasks)]
        units = applied(units, placements, [(t.unit, t.handoff, t.retry) for t in tasks], now)
        by_name = {m.name: m for m in machines}
        ready = self.rendering.ready
        handed_over = {u.name for u in units if u.handoff and u.machine in by_name
                       and ready(u, by_name[u.machine], observed.get((u.name, u.machine)))}
        sets, hashes, reasons, rendered = self.rendering.sets(
            units, machines, outcome.globals, handed_over,
            self.rolling.held(units, outcome.globals, observed, self._hash_on(by_name)))
        for spec in (s for specs in sets.values() for s in specs if s["name"] in outcome.held):
            spec["want"] = protocol.WANT_STOPPED  # [Unit] dependencies hold it for now
        deadlines = [m.drain_deadline for m in machines
                     if m.draining is not None and m.drain_deadline and m.drain_deadline > now]
        wake_at = min([*deadlines, *([outcome.wake_at] if outcome.wake_at else [])],
                      default=None)
        # news of these units bears on the next pass: a drain's hand-off, and [Unit]
        # dependencies (a unit others wait for turning healthy; a held one)
        watching = {u.name for u in units if u.handoff} | set(outcome.held) | {
            n for r in requirements.values()
            for n in (*r.deps.after, *r.deps.before, *r.deps.requires, *r.deps.binds_to)}
        snapshot = Snapshot.of(hashes, outcome.globals, requirements, frozenset(watching), now)
        self._globals = outcome.globals
        return Decision(
            failures=new, placements=placements, reasons=reasons,
            handoffs={t.unit: t.handoff for t in tasks}, retry=[t.unit for t in tasks if t.retry],
            tasks=tasks, units=units, sets=sets, snapshot=snapshot, wake_at=wake_at,
            probed=set(keys.values()), rendered=rendered, moved=hashes != self._snapshot.hashes)

    def _reconcile(self, views: List[UnitView], machines: List[MachineView], now: float,
                   keys: Mapping[str, ContentKey]) -> Optional[reconciler.Outcome]:
        """The reconciler's outcome; None if it failed and the units that make it fail
        were found and set aside (``_set_aside``), so that the pass can run without them.

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
        for name, why in culprits.items():
            self._set_aside[keys[name]] = f"cannot be scheduled: {why}"
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

    def _hash_on(self, by_name: Mapping[str, MachineRecord]) -> HashOn:
        def hash_on(u: UnitRecord, machine: str) -> Optional[str]:
            m = by_name.get(machine)
            return None if m is None else self.rendering.hash_on(u, m)
        return hash_on

    async def _roll(self, machines: List[MachineRecord], observed: Observed, now: float,
                    wake_at: Optional[float]) -> Optional[float]:
        """Templates' rollouts (engine/rollout.py), on the units as this pass left them;
        ``wake_at`` or earlier, when a rollout must look again."""
        by_name = {m.name: m for m in machines}
        units = self.registry.list_units()

        def ready(u: UnitRecord) -> bool:
            m = by_name.get(u.machine or "")
            return m is not None and self.rendering.ready(u, m, observed.get((u.name, m.name)))

        def policy(u: UnitRecord) -> Optional[UpdatePolicy]:
            probed = self.units.probed(u.name, u.hash, u.vars, self.registry.unit_text)
            return None if isinstance(probed, Invalid) else probed.requirements.update

        def ready_on(u: UnitRecord, machine: str) -> bool:
            m = by_name.get(machine)
            return m is not None and self.rendering.ready(u, m, observed.get((u.name, m.name)))

        templates = self.rolling.templates(units, ready, self.registry.list_failures(),
                                           policy, now)
        templates += self.rolling.globals(units, self._globals, observed,
                                          self._hash_on(by_name), ready_on, policy, now)
        self.rolling.forget(units)
        r = rollout.decide(templates, now)
        wrote = await self.rolling.apply(r, units, self.epoch, now)
        for draft in transitions.rollout(r, self.rolling.in_flight,
                                         {t.name: t.reason for t in templates}):
            self.publish(draft)
        self.rolling.in_flight = r.in_flight
        if wrote:
            self.wake()  # the new contents go out in the next pass
        return min((t for t in (wake_at, r.wake_at) if t is not None), default=None)

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

    # --- deciding ----------------------------------------------------------------------

    def _new_failures(self, units: List[UnitRecord], machines: List[MachineRecord],
                      observed: Observed, recorded: Mapping[str, List[FailureRecord]],
                      now: float) -> List[FailureRecord]:
        """A unit reported failed where it is placed, for the content and generation
        fleetd wants there, since it was placed there: one failure, recorded once."""
        by_name = {m.name: m for m in machines}
        new = []
        for u in units:
            if u.desired != LAUNCHED or u.machine is None or u.machine not in by_name:
                continue
            o = observed.get((u.name, u.machine))
            if o is None or o.state != protocol.FAILED or o.generation != u.generation:
                continue
            if o.hash != self.rendering.hash_on(u, by_name[u.machine]):
                continue
            if failed_here(u, recorded.get(u.name, ())) is not None:
                continue  # this placement's failure is on record already
            why = o.error or f"exit status {o.exit_status}"
            new.append(FailureRecord(u.name, u.hash, u.machine, now, why))
        return new

    def _unit_views(self, units: List[UnitRecord], keys: Mapping[str, ContentKey],
                    machines: List[MachineRecord], observed: Observed,
                    failures: Mapping[str, List[FailureRecord]]
                    ) -> Tuple[List[UnitView], List[PlacementRow],
                               Dict[ContentKey, Requirements]]:
        """What the scheduler needs of each readable unit; the unreadable ones, unplaced
        with their reason; and every readable unit's requirements. Requirements come
        from the unit as it reads before any machine is chosen (render.probe), so
        [X-Fleet] never depends on the machine it would pick."""
        by_name = {m.name: m for m in machines}
        for stale in set(self._set_aside) - set(keys.values()):
            del self._set_aside[stale]
        views = []
        unreadable: List[PlacementRow] = []
        requirements: Dict[ContentKey, Requirements] = {}
        readable: List[UnitRecord] = []
        for u in units:
            key = keys[u.name]
            why = self._set_aside.get(key)
            if why is None:
                probed = self.units.probed(u.name, u.hash, u.vars, self.registry.unit_text,
                                           key)
                if isinstance(probed, Invalid):
                    why = probed.why
                else:
                    requirements[key] = probed.requirements
            if why is not None:
                if u.machine is not None or u.reason != why:
                    unreadable.append((u.name, None, why))
                continue
            readable.append(u)
        # [Unit] dependencies (engine/dependencies.py) ask whether the units that others
        # start after are ready, and whether the units that start after others run already
        ordered = {n for r in requirements.values() for n in (*r.deps.after, *r.deps.before)}
        ordered |= {u.name for u in readable
                    if requirements[keys[u.name]].deps.after
                    or requirements[keys[u.name]].deps.before}
        for u in readable:
            key = keys[u.name]
            mine = tuple(Failure(f.machine, f.at, f.reason) for f in failures.get(u.name, ())
                         if f.hash == u.hash)
            here = failed_here(u, failures.get(u.name, ()))
            machine = by_name.get(u.machine or "")
            o = observed.get((u.name, machine.name)) if machine is not None else None
            ready = (bool(u.handoff) or u.name in ordered) and machine is not None \
                and self.rendering.ready(u, machine, o)
            running = (u.name in ordered and o is not None and o.state == protocol.RUNNING
                       and o.generation == u.generation)
            views.append(UnitView(u.name, u.desired, u.machine, u.reason, requirements[key],
                                  mine, Failure(here.machine, here.at, here.reason)
                                  if here else None, u.handoff, ready, running,
                                  old_running=(u.name, u.handoff or "") in observed,
                                  renew=self._renewing(u, machine, observed)))
        return views, unreadable, requirements

    def _renewing(self, u: UnitRecord, machine: Optional[MachineRecord], observed: Observed
                  ) -> bool:
        """Did a rollout give ``u`` new content while its old copy runs where it is
        placed (so that the reconciler may start the new one elsewhere first)?"""
        if u.handoff is not None or u.desired != LAUNCHED or machine is None:
            return False
        o = observed.get((u.name, machine.name))
        if o is None or o.state != protocol.RUNNING or o.hash == self.rendering.hash_on(u, machine):
            return False
        versions = self.registry.list_versions(u.name)
        return (len(versions) > 1 and versions[-1].hash == u.hash
                and versions[-1].via.startswith(rollout.CHANGE_VIA))
