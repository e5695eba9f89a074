"""systemd time spans: ``90``, ``5s``, ``1min 30s``, ``500ms``, ``infinity``, both ways.

Numbers are ASCII digits (``\\d`` would take ``٣``) and a finite span is at most
``MAX_S``: every span ends up as a timer in fleetd or the agent, and ``1e400s`` or a
span of centuries is a mistake, not a wish (``infinity`` says "never").
"""

from __future__ import annotations

import math
import re

from fleetd.wire.numbers import NumberError, parse_float

_UNITS = {
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)")
MAX_S = 10 * 365 * 86400.0  # ten years; longer is "infinity"


class TimespanError(ValueError):
    """Text that is not a systemd time span."""


def parse_timespan(text: str) -> float:
    """Seconds in ``text``; a bare number is seconds, as in systemd's unit files."""
    value = text.strip()
    if value == "infinity":
        return math.inf
    if not value:
        raise TimespanError("empty time span")
    total, pos = 0.0, 0
    while pos < len(value):
        m = _PART.match(value, pos)
        if not m or m.end() == pos:
            raise TimespanError(f"invalid time span {text!r}")
        unit = m.group(2) or "s"
        if unit not in _UNITS:
            raise TimespanError(f"unknown time unit {unit!r} in {text!r}")
        try:
            total += parse_float(m.group(1)) * _UNITS[unit]
        except NumberError as exc:
            raise TimespanError(f"invalid time span {text!r}: {exc}") from None
        pos = m.end()
        while pos < len(value) and value[pos].isspace():
            pos += 1
    if total > MAX_S:
        raise TimespanError(f"time span {text!r} is longer than {format_timespan(MAX_S)} "
                            "(ten years); say infinity for none")
    return total


def format_timespan(seconds: float) -> str:
    """``seconds`` as a person writes a span: ``1h``, ``10min``, ``90s``, ``infinity``
    (parse_timespan reads it back)."""
    if seconds == math.inf:
        return "infinity"
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
