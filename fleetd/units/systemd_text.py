"""The unit file a Driver=systemd unit becomes on its host (daemon side).

With Driver=systemd fleetd does not run the program: the host's own systemd does, from
the user's unit file, so that every systemd option works as the user knows it (Type=
forking/notify, PIDFile=, ProtectSystem=, ...) and so that systemd itself enforces
MemoryMax=/CPUQuota=/TasksMax= and restarts by Restart=. fleetd's only edit is to drop
its own ``[X-...]`` sections ([X-Fleet], [X-Check], [X-Java]): they mean nothing to
systemd, and leaving them out keeps the installed file what the user would have written
by hand. Everything else keeps its order, repeated keys and empty (resetting)
assignments, and specifiers are left for systemd to expand: the file is installed under
the unit's own name, so ``%n``/``%i`` mean the same there, and ``%H``-style host
specifiers get the host's values.

Comments and line continuations do not survive (the parser keeps meaning, not layout):
the text is the parser's one-assignment-a-line form.
"""

from __future__ import annotations

import math
from typing import Optional

from fleetd.units import service
from fleetd.units.context import UnitContext
from fleetd.units.parser import UnitFile, serialise
from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.wire.unitspec import UnitConfig

FLEET_SECTION_PREFIX = "X-"
# systemd.service(5) Type= values; all are systemd's business with this driver
SYSTEMD_TYPES = ("simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload",
                 "idle")
S = "Service"


def is_fleet_section(section: str) -> bool:
    """fleetd's own sections; systemd ignores ``X-`` sections anyway, by its own rule."""
    return section.startswith(FLEET_SECTION_PREFIX)


def systemd_unit(unit: UnitFile) -> UnitFile:
    """``unit`` without fleetd's sections."""
    kept = tuple(e for e in unit.entries if not is_fleet_section(e.section))
    headers = tuple(h for h in unit.headers if not is_fleet_section(h[0]))
    return UnitFile(source=unit.source, entries=kept, headers=headers)


def render(unit: UnitFile) -> str:
    """The text to install as /run/systemd/system/NAME on the host."""
    return serialise(systemd_unit(unit))


def config(ctx: UnitContext) -> UnitConfig:
    """The systemd driver's config: the unit text plus what the agent needs to bound its
    own waits, and the limits the scheduler reserves (systemd enforces them itself).

    It does not go through service.config: fleetd's own drivers refuse options they
    cannot honour (Type=forking, ...), which is exactly what systemd is for."""
    type_entry = ctx.entry(S, "Type")
    service_type = (type_entry.value if type_entry is not None else "") or "simple"
    if service_type not in SYSTEMD_TYPES:
        ctx.fail(type_entry, f"Type={service_type} is not a systemd service type "
                             f"({', '.join(SYSTEMD_TYPES)})")
    if not ctx.many(S, "ExecStart") and service_type != "oneshot":
        ctx.fail(None, "[Service] has no ExecStart=: systemd needs a program to run "
                       "(only Type=oneshot may go without)")
    # oneshot: systemd's start job lasts as long as the program, and has no timeout
    start_default = math.inf if service_type == "oneshot" else service.DEFAULT_TIMEOUT_S
    return {
        "unit_text": render(ctx.file),
        "type": service_type,
        "timeout_start_s": _timeout(ctx, "TimeoutStartSec", start_default),
        "timeout_stop_s": _timeout(ctx, "TimeoutStopSec", service.DEFAULT_TIMEOUT_S),
        "limits": service.limits(ctx),
    }


def _timeout(ctx: UnitContext, key: str, default: float) -> Optional[float]:
    """Seconds, or None for none; TimeoutSec= sets both, as in systemd."""
    entry = ctx.file.last(S, "TimeoutSec", key)  # the last of the two wins
    seconds = default
    if entry is not None and entry.value != "":
        try:
            seconds = parse_timespan(entry.value)
        except TimespanError as exc:
            ctx.fail(entry, str(exc))
    return None if seconds == 0 or math.isinf(seconds) else seconds
