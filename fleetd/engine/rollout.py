"""Rolling updates: a template's running instances move to its new content a few at a time.

Pure, like the placement reconciler: the loop (engine/loop.py) gathers each template's
versions and its instances' state, and writes what comes out. fleet (and fleetd before
this) gave every instance a template's new content at the same moment, so every copy
restarted at once; here the registry changes the template alone (``put_units`` with
``follow=False``) and each pass decides which instances follow (``[X-Update]``,
fleetd.units.xupdate):

1. An instance takes part when its content is one of the template's versions (an
   instance submitted with content of its own is left alone) and differs from the
   template's current one: it is *behind*.
2. A behind instance with no running copy (not launched, or placed nowhere) changes at
   once: there is nothing to keep running.
3. A changed copy is *in flight* until it has run, healthy (passing its ``[X-Check]`` if
   it has one), for ``MinHealthySec=``. At most ``MaxParallel=`` copies are in flight;
   the next behind copies (by name) change as slots free up.
4. A changed copy that *failed* (a failure recorded for the new content: start limit
   hit, or its check ended it) or is still not healthy ``HealthyDeadlineSec=`` after it
   changed stops the rollout: no copy changes any more. With ``AutoRevert=`` the
   template goes back to the content it had before (a ``Revert``), and the same steps
   move the changed copies back, one healthy step at a time. A revert that fails too
   is not reverted again (it would go back to the broken content): it stops.

How a copy changes is the placement reconciler's (engine/handoff.py ``renew``): where its
constraints allow, its new content starts on another machine while the old copy runs,
as a drain's hand-off; else in place.

Each template's status line (``Rollout.status``) says where its rollout is and why;
the loop stores it as the template's reason, which ``fleetctl list-unit-files`` shows.

A Global unit rolls by the same steps, its copies being its machines' (``Template``
``per_machine``; each ``Copy`` named by its machine): the registry holds its new content
at once, and engine/rolling.py keeps which content each machine is given, the old one
until a ``Change`` (with its ``machine``) moves that machine over. A machine's copy can
only change in place (one copy a machine), so no hand-off.

Each decision also says what phase each rollout is in (``Rollout.phase``, beside each
changed status) and which copies are in flight (``Rollout.in_flight``): what
engine/transitions.py makes the rollout's events of.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fleetd.units.xupdate import MAX_PARALLEL, UpdatePolicy

REVERT_VIA = "AutoRevert"  # the ``via`` of a version fleetd put back by itself
# a stored status that starts so belongs to a rollout still to be decided on
UNDER_WAY = ("rolling out ", "rollout of ")
CHANGE_VIA = "rolling out "  # how a running copy's new version (a Change's reason) begins
# a copy not healthy yet is looked at again this soon: agents' reports of a copy's
# health need not wake the engine (they move no placement)
POLL_S = 0.5


@dataclasses.dataclass(frozen=True)
class Version:
    number: int
    hash: str
    via: str


@dataclasses.dataclass(frozen=True)
class Copy:
    """One instance of a template, as the rollout needs it."""

    name: str
    hash: str  # its content now
    running: bool  # launched and placed: a copy runs that a change would restart
    changed_at: float  # when it was given this content (or last placed)
    ready_since: Optional[float] = None  # running this content, healthy, since then
    failed: Optional[str] = None  # why this content failed (None: it did not)


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    hash: str  # the content its instances roll to
    versions: Tuple[Version, ...]  # oldest first; the current one last
    since: float  # when it was given its current content (its rollout began)
    policy: UpdatePolicy  # its current content's [X-Update]
    copies: Tuple[Copy, ...]  # its instances (every one; step 1 picks)
    reason: str = ""  # its stored status line
    # its current version's options, given on the command line: ``canary`` (copies to
    # change before ``fleetctl promote``; 0: none) and [X-Update]'s, which they override
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # a Global unit: its copies are named by their machines, and change there
    per_machine: bool = False


@dataclasses.dataclass(frozen=True)
class Change:
    """Give ``unit`` the content ``hash`` (its template's) because of ``reason``; for a
    Global unit, its copy on ``machine`` alone."""

    unit: str
    hash: str
    reason: str
    machine: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Revert:
    """Put ``template`` back to ``hash`` (version ``number``): AutoRevert=."""

    template: str
    hash: str
    number: int
    reason: str


Where = Tuple[str, Optional[str]]


@dataclasses.dataclass
class Rollout:
    changes: List[Change] = dataclasses.field(default_factory=list)
    reverts: List[Revert] = dataclasses.field(default_factory=list)
    status: Dict[str, str] = dataclasses.field(default_factory=dict)  # only changed ones
    # each changed status's phase: rolling, waiting, canary, done, reverted, stopped
    phase: Dict[str, str] = dataclasses.field(default_factory=dict)
    # each rollout's copies changed and not yet healthy long enough (every rollout), as
    # (unit, machine): a template's instance (machine None), a Global unit's machine
    in_flight: Dict[str, Tuple[Where, ...]] = dataclasses.field(default_factory=dict)
    wake_at: Optional[float] = None

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at


def decide(templates: Sequence[Template], now: float) -> Rollout:
    out = Rollout()
    for t in templates:
        got = _template(t, now, out)
        if got is not None and got[1] != t.reason:
            out.phase[t.name], out.status[t.name] = got
    return out


def _where(t: Template, c: Copy) -> Where:
    return (t.name, c.name) if t.per_machine else (c.name, None)


def _change(t: Template, c: Copy, reason: str) -> Change:
    if t.per_machine:
        return Change(t.name, t.hash, reason, c.name)
    return Change(c.name, t.hash, reason)


def _label(t: Template, content: str) -> str:
    """``v3 (1a2b3c4d5e6f)``: a content as the template's history numbers it."""
    number = next((v.number for v in reversed(t.versions) if v.hash == content), None)
    return f"v{number} ({content[:12]})" if number is not None else content[:12]


def _template(t: Template, now: float, out: Rollout) -> Optional[Tuple[str, str]]:
    """The rollout's phase and status line (None: no rollout), its changes into ``out``."""
    known = {v.hash for v in t.versions}
    members = sorted((c for c in t.copies if c.hash in known), key=lambda c: c.name)
    if not members:
        return None
    target = _label(t, t.hash)
    behind = [c for c in members if c.hash != t.hash]
    if not behind and not t.reason.startswith(UNDER_WAY):
        return None  # no rollout (any more): a copy that fails now is failover's
    for c in behind:
        if not c.running:
            out.changes.append(_change(t, c, f"{t.name} is now {target}; "
                                             "no copy runs, so it changes at once"))
    rolling = [c for c in behind if c.running]
    # copies changed by this rollout (the others had this content before it began)
    changed = [c for c in members if c.hash == t.hash and c.running
               and c.changed_at >= t.since]
    policy, canary = options(t.policy, t.options)
    failed: List[Tuple[Copy, str]] = []
    in_flight: List[Copy] = []
    for c in changed:
        healthy_for = now - c.ready_since if c.ready_since is not None else None
        if c.failed is not None:
            failed.append((c, c.failed))
        elif healthy_for is None and now - c.changed_at >= policy.healthy_deadline_s:
            failed.append((c, f"not healthy {policy.healthy_deadline_s:g}s after it changed "
                              "(HealthyDeadlineSec=)"))
        elif healthy_for is None:
            in_flight.append(c)
            out.wake(min(c.changed_at + policy.healthy_deadline_s, now + POLL_S))
        elif healthy_for < policy.min_healthy_s:
            in_flight.append(c)
            out.wake((c.ready_since or now) + policy.min_healthy_s)
    out.in_flight[t.name] = tuple(_where(t, c) for c in in_flight)
    if failed:
        return _stopped(t, target, failed, out)
    if not rolling:
        if in_flight:
            return "waiting", (f"rolling out {target}: waiting for {_names(in_flight)} to "
                               f"be healthy for {policy.min_healthy_s:g}s (MinHealthySec=)")
        current = t.versions[-1] if t.versions else None
        back = current is not None and current.via.startswith(REVERT_VIA)
        after = f" ({current.via})" if current and back else ""
        return ("reverted" if back else "done"), \
            f"{target} on all {len(members)} copies{after}"
    slots = max(0, policy.max_parallel - len(in_flight))
    if canary:
        slots = min(slots, max(0, canary - len(changed)))
        if slots == 0 and len(changed) >= canary:
            waiting = (f"waiting for {_names(in_flight)} to be healthy" if in_flight else
                       f"waiting for fleetctl promote {t.name} (or rollback)")
            return "canary", (f"rolling out {target}: canary, {len(changed)} of "
                              f"{len(members)} copies on it; {waiting}")
    going = rolling[:slots]
    pace = f"{policy.max_parallel} cop{'y' if policy.max_parallel == 1 else 'ies'}"
    for c in going:
        out.changes.append(_change(t, c, f"rolling out {t.name} {target}: at most "
                                         f"{pace} at a time (MaxParallel=)"))
    if going:
        out.wake(now)  # the changed copies' state is read again on the next pass
    busy = in_flight + going
    done = len(changed) - len(in_flight)
    out.in_flight[t.name] = tuple(_where(t, c) for c in busy)
    return "rolling", (f"rolling out {target}: {done} of {len(members)} copies done, "
                       f"{_names(busy)} changing, {len(rolling) - len(going)} waiting")


def options(policy: UpdatePolicy, given: Mapping[str, Any]) -> Tuple[UpdatePolicy, int]:
    """[X-Update]'s policy with the command line's options over it, and the canary
    count. A value that is not what the API checked it to be (a store edited by hand)
    is ignored: the rollout never fails on it."""
    def number(key: str, lo: float, hi: float) -> Optional[float]:
        v = given.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v) if lo <= v <= hi else None
    changes: Dict[str, Any] = {}
    if (n := number("max_parallel", 1, MAX_PARALLEL)) is not None:
        changes["max_parallel"] = int(n)
    for key in ("min_healthy_s", "healthy_deadline_s"):
        if (s := number(key, 0, 366 * 86400)) is not None:
            changes[key] = s
    if isinstance(given.get("auto_revert"), bool):
        changes["auto_revert"] = given["auto_revert"]
    canary = number("canary", 0, MAX_PARALLEL)
    return dataclasses.replace(policy, **changes), int(canary or 0)


def _stopped(t: Template, target: str, failed: List[Tuple[Copy, str]], out: Rollout
             ) -> Tuple[str, str]:
    why = "; ".join(f"{c.name} failed: {reason}" for c, reason in failed)
    current = t.versions[-1] if t.versions and t.versions[-1].hash == t.hash else None
    if not t.policy.auto_revert:
        return "stopped", f"rollout of {target} stopped: {why}; submit new content to go on"
    if current is not None and current.via.startswith(REVERT_VIA):
        return "stopped", (f"rollout of {target} stopped too: {why}; it was AutoRevert='s, "
                           "so no revert again (that would go back to the content that "
                           "failed)")
    previous = next((v for v in reversed(t.versions) if v.hash != t.hash), None)
    if previous is None:
        return "stopped", (f"rollout of {target} stopped: {why}; AutoRevert=yes but no "
                           "earlier version")
    back = f"v{previous.number} ({previous.hash[:12]})"
    reason = f"rollout of {target} stopped: {why}; AutoRevert=yes: back to {back}"
    out.reverts.append(Revert(t.name, previous.hash, previous.number,
                              f"{REVERT_VIA}: {target} failed ({why})"))
    out.wake(0.0)
    return "reverting", reason


def _names(copies: Sequence[Copy]) -> str:
    return ", ".join(c.name for c in copies) or "none"
