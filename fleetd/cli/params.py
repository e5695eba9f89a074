"""fleetctl's own click parameter types: numbers of seconds and systemd time spans,
read the one way fleetd reads them (fleetd.wire.numbers, fleetd.units.timespan).

click's ``ParamType`` became generic (``ParamType[T, U]``) only in click 8.2's stubs; a
class statement that subscripts it fails at import on older click. ``FloatParam`` is the
subscripted type for mypy and the plain class at run time, so fleetctl imports on every
click that pyproject.toml admits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import click

from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.wire.numbers import NumberError, parse_float

if TYPE_CHECKING:
    FloatParam = click.ParamType[float, Any]
else:
    FloatParam = click.ParamType


class Seconds(FloatParam):
    """A finite number of seconds in [lo, hi]: click's FloatRange lets ``nan`` through
    (every comparison with it is false), and a NaN deadline is a wait that never ends or
    ends at once."""

    name = "seconds"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_float(str(value), self.lo, self.hi)
        except NumberError as exc:
            self.fail(str(exc), param, ctx)


class Timespan(FloatParam):
    """A systemd time span (``90``, ``90s``, ``2min 30s``, ``infinity``) above 0 ->
    seconds."""

    name = "span"

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_timespan(str(value))
        except TimespanError as exc:
            self.fail(str(exc), param, ctx)
        why = self.refused(seconds)
        if why is not None:
            self.fail(f"{value!r}: want {why}", param, ctx)
        return seconds

    def refused(self, seconds: float) -> Optional[str]:
        return "a time span above 0" if seconds <= 0 else None


class Span(Timespan):
    """A systemd time span (``30s``, ``2min``), finite, 0 or more."""

    def refused(self, seconds: float) -> Optional[str]:
        return "a finite time span" if seconds == float("inf") else None
