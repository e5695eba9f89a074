"""``.timer`` units: when a service runs, as cluster cron (issue 14 §2).

fleet ran ``backup.timer`` beside ``backup.service`` and its users leaned on that as
cluster-wide cron. fleetd reads the timer's ``[Timer]`` section itself, rather than
passing it to one host's systemd, so that a firing runs the service on exactly one
machine and the timer moves with the unit when that machine dies. The decisions (when it
next fires, whether it fires now) are pure and live in fleetd/engine/timers.py; this
module only reads the file, once, at submit time, so every error is ``file:line``.

Read as systemd.timer(5) says:

``OnCalendar=``          calendar events (fleetd/units/calendar.py), a list
``OnActiveSec=``         after the timer was started (``fleetctl start x.timer``)
``OnBootSec=``           after the machine the timer is placed on booted
``OnStartupSec=``        the same as OnBootSec= here: fleetd has no user manager
``OnUnitActiveSec=``     after the service last became active
``OnUnitInactiveSec=``   after the service last became inactive
``RandomizedDelaySec=``  each firing is delayed by up to this; the delay is fixed per
                         timer name (systemd's ``FixedRandomDelay=yes``), so every pass
                         of every fleetd computes the same instant
``AccuracySec=``         firings may be late by up to this (default 1min), to coalesce
``Persistent=``          a calendar firing missed while no machine ran the timer (fleetd
                         down, its machine dead) runs once as soon as it can
``Unit=``                the service it starts (default: the timer's own name, .service)

Each ``On*Sec=`` and ``OnCalendar=`` is a list (an empty assignment resets it, as in
systemd); a timer with none of them is refused, as systemd refuses it. ``WakeSystem=``,
``OnClockChange=``, ``OnTimezoneChange=``, ``RemainAfterElapse=`` and
``FixedRandomDelay=`` are accepted and have no further effect (there is no one system to
wake, and the random delay is always fixed). A misspelt option is an error: fleetd, not
systemd, honours this section, and a silently ignored trigger is a job that never runs.

Not wired in yet (issue 14 §2, step 2): nothing in fleetd imports this module
but its tests; the engine neither reads ``.timer`` units nor asks ``decide`` yet.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from fleetd.units.calendar import CalendarError, CalendarSpec, parse_calendar
from fleetd.units.context import UnitContext, UnitName
from fleetd.units.parser import UnitError, parse
from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.wire import names

T = "Timer"
SUFFIX = "timer"
MONOTONIC = ("OnActiveSec", "OnBootSec", "OnStartupSec", "OnUnitActiveSec",
             "OnUnitInactiveSec")
KNOWN = (*MONOTONIC, "OnCalendar", "RandomizedDelaySec", "AccuracySec", "Persistent",
         "Unit", "WakeSystem", "OnClockChange", "OnTimezoneChange", "RemainAfterElapse",
         "FixedRandomDelay")
DEFAULT_ACCURACY_S = 60.0  # systemd's AccuracySec= default


@dataclasses.dataclass(frozen=True)
class TimerSpec:
    """A validated ``[Timer]`` section: pure data, the input of engine/timers.py."""

    name: str
    unit: str  # the service it starts
    on_calendar: Tuple[CalendarSpec, ...] = ()
    on_active_s: Tuple[float, ...] = ()
    on_boot_s: Tuple[float, ...] = ()  # OnBootSec= and OnStartupSec=
    on_unit_active_s: Tuple[float, ...] = ()
    on_unit_inactive_s: Tuple[float, ...] = ()
    randomized_delay_s: float = 0.0
    accuracy_s: float = DEFAULT_ACCURACY_S
    persistent: bool = False


def is_timer(name: str) -> bool:
    return name.endswith("." + SUFFIX)


def service_of(timer: str) -> str:
    """``backup.service`` for ``backup.timer`` (and ``b@x.service`` for ``b@x.timer``)."""
    return timer[: -len(SUFFIX)] + names.SUFFIX


def _name(name: str, source: str) -> UnitName:
    if not is_timer(name):
        raise UnitError(source, None, f"{name!r} is not a timer (want NAME.timer)")
    try:
        parts = names.split(service_of(name))
    except names.UnitNameError as exc:
        raise UnitError(source, None,
                        str(exc).replace(names.SUFFIX, SUFFIX)) from None
    if parts.instance == "":
        raise UnitError(source, None, f"{name} is a template; start an instance such as "
                                      f"{parts.prefix}@1.{SUFFIX}")
    return UnitName(full=name, prefix=parts.prefix, instance=parts.instance, suffix=SUFFIX)


def load_timer(name: str, text: str, source: Optional[str] = None) -> TimerSpec:
    """Read ``text`` as the timer unit ``name``; UnitError names ``file:line``."""
    src = source or name
    ctx = UnitContext(parse(text, src), _name(name, src), src)
    if ctx.file.header(T) is None:
        raise UnitError(src, None, "a timer needs a [Timer] section")
    ctx.check_known(T, KNOWN)
    spans = {key: _spans(ctx, key) for key in MONOTONIC}
    calendars = []
    for entry in ctx.many(T, "OnCalendar"):
        try:
            calendars.append(parse_calendar(ctx.expand(entry)))
        except CalendarError as exc:
            ctx.fail(entry, str(exc))
    if not calendars and not any(spans.values()):
        raise UnitError(src, ctx.file.header(T),
                        "the timer has no OnCalendar=, OnActiveSec=, OnBootSec=, "
                        "OnStartupSec=, OnUnitActiveSec= or OnUnitInactiveSec=, so it "
                        "would never fire")
    unit = ctx.single(T, "Unit") or service_of(name)
    try:
        names.split(unit)
    except names.UnitNameError as exc:
        ctx.fail(ctx.entry(T, "Unit"), f"{unit!r}: {exc} (a timer starts a service)")
    return TimerSpec(
        name=name,
        unit=unit,
        on_calendar=tuple(calendars),
        on_active_s=spans["OnActiveSec"],
        on_boot_s=spans["OnBootSec"] + spans["OnStartupSec"],
        on_unit_active_s=spans["OnUnitActiveSec"],
        on_unit_inactive_s=spans["OnUnitInactiveSec"],
        randomized_delay_s=ctx.finite_timespan(
            T, "RandomizedDelaySec", 0.0, " (0 for no delay)"),
        accuracy_s=ctx.finite_timespan(T, "AccuracySec", DEFAULT_ACCURACY_S,
                                       " (1us for none)"),
        persistent=ctx.boolean(T, "Persistent", False),
    )


def _spans(ctx: UnitContext, key: str) -> Tuple[float, ...]:
    out = []
    for entry in ctx.many(T, key):
        try:
            seconds = parse_timespan(ctx.expand(entry))
        except TimespanError as exc:
            ctx.fail(entry, str(exc))
        if seconds == float("inf"):
            ctx.fail(entry, "must be a finite time span (leave it out for never)")
        out.append(seconds)
    return tuple(out)
