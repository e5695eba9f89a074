"""When a timer fires: pure decisions from a timer's options and what has happened.

A ``.timer`` (fleetd/units/timer.py) runs its service on one machine per firing. The
engine asks, on each pass, ``decide(spec, state, now)``; the answer depends on nothing
else (no clock, no randomness), so every pass, on every fleetd that might lead, answers
the same and a firing is never decided twice. The rules follow systemd's timer.c:

- ``OnActiveSec=`` counts from when the timer was started on its machine, ``OnBootSec=``
  from that machine's boot; each fires once (a firing at or after its instant uses it
  up; starting the timer again arms OnActiveSec= again).
- ``OnUnitActiveSec=`` / ``OnUnitInactiveSec=`` count from the later of the service's
  last activation / deactivation and the timer's last firing (systemd's base), and do
  nothing until the service has once been active / inactive.
- ``OnCalendar=`` elapses at the first matching instant after its base: the last firing
  if there was one since the timer started, else the start. With ``Persistent=`` the
  last firing counts even from before the start, so a firing missed while the timer
  was nowhere (its machine died, fleetd was down) is caught up once, at once, when the
  timer starts on its new machine.
- ``RandomizedDelaySec=`` adds the same fraction of it to every instant of one timer,
  taken from a hash of the timer's name (systemd's ``FixedRandomDelay=yes``): random
  across timers, so cluster-wide ``daily`` jobs do not all start at midnight, but
  the same on every pass.
- ``AccuracySec=`` lets a firing be late by that much: ``Decision.deadline`` is the
  latest instant the engine should wake for it, so it may sleep once for many timers.
- Never two runs at once: a firing that comes due while the service still runs is a
  ``SKIP`` (systemd's start of an active service does nothing, and the firing counts
  as done), never a second copy.

Not wired in yet (issue 14 §2, step 2): nothing in fleetd imports this module
but its tests; the engine neither reads ``.timer`` units nor asks ``decide`` yet.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from typing import List, Optional

from fleetd.units.timer import TimerSpec


class Action(enum.Enum):
    WAIT = "wait"  # not due yet (or never again: next_at is None)
    FIRE = "fire"  # due and the service is not running: start it, record the firing
    SKIP = "skip"  # due but the service still runs: record the firing, start nothing


@dataclasses.dataclass(frozen=True)
class TimerState:
    """What the engine knows of a timer and its service (Unix times, seconds)."""

    started_at: float  # the timer was started (placed) on its current machine
    booted_at: float  # that machine booted
    last_fired: Optional[float] = None  # the timer's last firing (FIRE or SKIP)
    service_active_at: Optional[float] = None  # the service last became active
    service_inactive_at: Optional[float] = None  # the service last became inactive
    service_running: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    next_at: Optional[float]  # the instant it fires (is due); None: never again
    deadline: Optional[float]  # next_at + AccuracySec=: wake by then


def random_delay(spec: TimerSpec) -> float:
    """This timer's fixed share of RandomizedDelaySec=, in [0, RandomizedDelaySec=)."""
    if spec.randomized_delay_s <= 0:
        return 0.0
    digest = hashlib.sha256(spec.name.encode()).digest()
    return spec.randomized_delay_s * int.from_bytes(digest[:8], "big") / 2.0 ** 64


def next_firing(spec: TimerSpec, state: TimerState) -> Optional[float]:
    """The instant the timer next elapses (maybe already past), None if never again."""
    delay = random_delay(spec)
    last = state.last_fired
    candidates: List[float] = []
    for base, spans in ((state.started_at, spec.on_active_s),
                        (state.booted_at, spec.on_boot_s)):
        for span in spans:
            at = base + span + delay
            if last is None or at > last:  # once only: a later firing used it up
                candidates.append(at)
    for since, spans in ((state.service_active_at, spec.on_unit_active_s),
                         (state.service_inactive_at, spec.on_unit_inactive_s)):
        if since is None:
            continue
        base = since if last is None else max(since, last)
        candidates.extend(base + span + delay for span in spans)
    if spec.on_calendar:
        if last is None or (not spec.persistent and state.started_at > last):
            base = state.started_at
        else:  # the last firing was its calendar instant plus the delay: take it off,
            base = last - delay  # or a long delay would skip the very next instant
        for event in spec.on_calendar:
            elapse = event.next_after(base)
            if elapse is not None:
                candidates.append(elapse + delay)
    return min(candidates) if candidates else None


def decide(spec: TimerSpec, state: TimerState, now: float) -> Decision:
    """FIRE, SKIP or WAIT at ``now``, and when it (next) fires."""
    at = next_firing(spec, state)
    if at is None:
        return Decision(Action.WAIT, None, None)
    deadline = at + spec.accuracy_s
    if at > now:
        return Decision(Action.WAIT, at, deadline)
    return Decision(Action.SKIP if state.service_running else Action.FIRE, at, deadline)
