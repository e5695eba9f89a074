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
from fleetd.engine.facts import PlacementRow, applied, machine_view, recorded
from fleetd.engine.reading import Observed, Reading
from fleetd.engine.rolling import HashOn, Rolling
from fleetd.engine.snapshot import Snapshot
from fleetd.engine.views import MachineView
from fleetd.registry.base import (
    FailureRecord,
    MachineRecord,
    Registry,
    Unavailable,
    UnitRecord,
    Unsure,
)
from fleetd.units.compiled import CompiledUnits, ContentKey, Invalid, RenderKey, content_key
from fleetd.units.secrets import SecretSource
from fleetd.units.xupdate import UpdatePolicy
from fleetd.wire import names
from fleetd.wire.unitspec import UnitSpec

__all__ = ["Decision", "Engine", "Snapshot", "machine_view"]

log = logging.getLogger("fleetd.engine")
RETRY_S = 1.0  # a pass the store could not take is tried again this much later

PushFn = Callable[[str, List[UnitSpec]], None]
HeardFn = Callable[[str], Optional[float]]  # machine -> when its agent was last heard


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
        self.reading = Reading(registry, self.units, self.rendering)  # engine/reading.py
        self._wake = asyncio.Event()
        self._timer: Optional[asyncio.TimerHandle] = None
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
        new = self.reading.new_failures(units, machines, observed, failures, now)
        failures = recorded(failures, new)
        keys = {u.name: content_key(u.name, u.hash, u.vars) for u in units}
        unit_views, unreadable, requirements = self.reading.views(
            units, keys, machines, observed, failures)
        outcome = self.reading.reconcile(unit_views, views, now, keys)
        if outcome is None:  # some units broke the pass: they are set aside now
            unit_views, unreadable, requirements = self.reading.views(
                units, keys, machines, observed, failures)
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
