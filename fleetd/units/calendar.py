"""systemd calendar events (systemd.time(7)), the words of a timer's ``OnCalendar=``.

A timer unit says when it fires the way systemd says it, so that a ``backup.timer`` moved
from a host's systemd into fleetd fires at the same instants: ``daily``, ``Mon..Fri
*-*-* 09:00``, ``*:0/15``, ``*-*-01 04:00 Europe/Berlin``. This module only reads the
text and computes the next instant; it does no I/O and keeps no clock, so the engine can
ask "after t, when?" for any t and tests can ask for any year.

What is read, as systemd 252 reads it (``tests/unit/test_calendar_systemd.py`` compares
it with the machine's own ``systemd-analyze calendar``):

- shorthands ``minutely``, ``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly``,
  ``annually``, ``quarterly``, ``semiannually``;
- ``[WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [TIMEZONE]``: a missing date
  is ``*-*-*``, a missing time ``00:00:00``, missing seconds ``00``; weekdays are names
  (``Mon`` or ``Monday``, any case) in lists and ranges (``Mon..Fri``, ``Sat,Sun``);
- in every number field ``*``, lists ``a,b``, ranges ``a..b``, repetition ``a/n``,
  ``a..b/n``, ``*/n``; ``~`` counts days back from the month's end (``*-*~01`` is its
  last day); a two-digit year is 19xx from 70, 20xx below;
- a last word ``UTC`` or an IANA zone name; without it the local time zone.

Not read (refused with a message that says so): fractional seconds. Anything else that
is not a calendar event is refused naming the word that is wrong.
"""

from __future__ import annotations

import calendar as _cal
import dataclasses
import datetime as _dt
import re
from typing import Iterator, List, Optional, Tuple

try:  # zoneinfo is 3.9+; only the daemon side reads timers
    import zoneinfo
except ImportError:  # pragma: no cover
    zoneinfo = None  # type: ignore[assignment]

MIN_YEAR, MAX_YEAR = 1970, 2199  # systemd's own bounds for a calendar year

_SHORTHANDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "weekly": "Mon *-*-* 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "semiannually": "*-01,07-01 00:00:00",
}
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBER = re.compile(r"[0-9]+\Z")


class CalendarError(ValueError):
    """Text that is not a systemd calendar event; the message names the wrong part."""


# one comma-separated item of a field: values lo, lo+step, ... up to hi
Item = Tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Field:
    """A set of allowed values, kept as items so that ``*`` costs nothing."""

    items: Tuple[Item, ...]

    def __contains__(self, value: int) -> bool:
        return any(lo <= value <= hi and (value - lo) % step == 0
                   for lo, hi, step in self.items)

    def values(self, lo: int, hi: int) -> Iterator[int]:
        """The allowed values in [lo, hi], ascending."""
        return (v for v in range(lo, hi + 1) if v in self)


@dataclasses.dataclass(frozen=True)
class CalendarSpec:
    """A parsed calendar event; ``next_after`` answers when it next elapses."""

    text: str
    weekdays: Field  # 0 = Monday, as datetime.weekday()
    years: Field
    months: Field
    days: Field
    from_end: bool  # days count back from the month's end (``~``)
    hours: Field
    minutes: Field
    seconds: Field
    zone: Optional[str]  # None: the local time zone

    def next_after(self, t: float) -> Optional[float]:
        """The first instant strictly after ``t`` (a Unix time) that matches, or None if
        there is none before the end of MAX_YEAR."""
        tz = _zone(self.zone) if self.zone else None
        start = (_dt.datetime.fromtimestamp(int(t // 1) + 1, tz) if tz
                 else _dt.datetime.fromtimestamp(int(t // 1) + 1))
        found = self._first_from(start.replace(tzinfo=None))
        if found is None:
            return None
        return found.replace(tzinfo=tz).timestamp() if tz else found.timestamp()

    def _first_from(self, s: _dt.datetime) -> Optional[_dt.datetime]:
        for year in self.years.values(max(s.year, MIN_YEAR), MAX_YEAR):
            y_at = year == s.year
            for month in self.months.values(s.month if y_at else 1, 12):
                m_at = y_at and month == s.month
                last = _cal.monthrange(year, month)[1]
                for day in range(s.day if m_at else 1, last + 1):
                    label = last + 1 - day if self.from_end else day
                    if label not in self.days:
                        continue
                    if _dt.date(year, month, day).weekday() not in self.weekdays:
                        continue
                    d_at = m_at and day == s.day
                    for hour in self.hours.values(s.hour if d_at else 0, 23):
                        h_at = d_at and hour == s.hour
                        for minute in self.minutes.values(s.minute if h_at else 0, 59):
                            mi_at = h_at and minute == s.minute
                            for second in self.seconds.values(s.second if mi_at else 0, 59):
                                return _dt.datetime(year, month, day, hour, minute, second)
        return None


def next_after(spec: str, t: float) -> Optional[float]:
    """When the calendar event ``spec`` next elapses after ``t``; see CalendarSpec."""
    return parse_calendar(spec).next_after(t)


def _zone(name: str) -> _dt.tzinfo:
    if name == "UTC":
        return _dt.timezone.utc
    if zoneinfo is None:  # pragma: no cover
        raise CalendarError(f"time zone {name!r} needs Python 3.9's zoneinfo")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"unknown time zone {name!r}") from exc


def parse_calendar(text: str) -> CalendarSpec:
    """Read ``text`` as systemd reads an ``OnCalendar=`` value."""
    words = text.split()
    if not words:
        raise CalendarError("empty calendar event")
    zone: Optional[str] = None
    last = words[-1]
    if len(words) > 1 and (last == "UTC" or ("/" in last and last[0].isalpha())):
        zone = words.pop()
        _zone(zone)
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        words = _SHORTHANDS[words[0].lower()].split()
    weekdays = Field(((0, 6, 1),))
    if words and words[0][:1].isalpha():
        weekdays = _weekdays(words.pop(0), text)
    date: Optional[str] = None
    clock: Optional[str] = None
    if words and ("-" in words[0] or "~" in words[0]):
        date = words.pop(0)
    if words and ":" in words[0]:
        clock = words.pop(0)
    if words:
        raise CalendarError(f"unexpected {words[0]!r} in calendar event {text!r}")
    years, months, days, from_end = _date(date or "*-*-*", text)
    hours, minutes, seconds = _clock(clock or "00:00:00", text)
    return CalendarSpec(text, weekdays, years, months, days, from_end, hours, minutes,
                        seconds, zone)


def _weekday(word: str, text: str) -> int:
    low = word.lower()
    for i, name in enumerate(_DAYS):
        if low in (name, name[:3]):
            return i
    raise CalendarError(f"unknown weekday {word!r} in calendar event {text!r}")


def _weekdays(word: str, text: str) -> Field:
    items: List[Item] = []
    for part in word.split(","):
        if not part:
            raise CalendarError(f"empty weekday in {word!r} of calendar event {text!r}")
        sep = ".." if ".." in part else "-" if "-" in part else None
        if sep is None:
            day = _weekday(part, text)
            items.append((day, day, 1))
            continue
        first, _, end = part.partition(sep)
        lo, hi = _weekday(first, text), _weekday(end, text)
        if hi < lo:
            raise CalendarError(f"weekday range {part!r} runs backwards in {text!r}")
        items.append((lo, hi, 1))
    return Field(tuple(items))


def _date(word: str, text: str) -> Tuple[Field, Field, Field, bool]:
    from_end = "~" in word
    if from_end:
        head, _, day_text = word.partition("~")
        parts = [*head.split("-"), day_text]
    else:
        parts = word.split("-")
    if len(parts) == 2:
        parts = ["*", *parts]
    if len(parts) != 3:
        raise CalendarError(f"date {word!r} is not [YEAR-]MONTH-DAY in {text!r}")
    years = _field(parts[0], MIN_YEAR, MAX_YEAR, "year", text, two_digit_year=True)
    months = _field(parts[1], 1, 12, "month", text)
    days = _field(parts[2], 1, 31, "day", text)
    return years, months, days, from_end


def _clock(word: str, text: str) -> Tuple[Field, Field, Field]:
    parts = word.split(":")
    if len(parts) == 2:
        parts.append("00")
    if len(parts) != 3:
        raise CalendarError(f"time {word!r} is not HOUR:MINUTE[:SECOND] in {text!r}")
    if "." in parts[2]:
        raise CalendarError(f"fractional seconds ({parts[2]!r}) are not supported "
                            f"in {text!r}")
    return (_field(parts[0], 0, 23, "hour", text), _field(parts[1], 0, 59, "minute", text),
            _field(parts[2], 0, 59, "second", text))


def _field(word: str, lo: int, hi: int, what: str, text: str,
           two_digit_year: bool = False) -> Field:
    items: List[Item] = []
    for part in word.split(","):
        items.append(_item(part, lo, hi, what, text, two_digit_year))
    return Field(tuple(items))


def _item(part: str, lo: int, hi: int, what: str, text: str, two_digit_year: bool) -> Item:
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        step = _number(step_text, what, text)
        if step == 0:
            raise CalendarError(f"{what} repetition {part!r} must be at least 1 in {text!r}")
    if base == "*":
        return (lo, hi, step)
    first, dots, end = base.partition("..")
    start = _value(first, lo, hi, what, text, two_digit_year)
    stop = _value(end, lo, hi, what, text, two_digit_year) if dots else (
        hi if slash else start)
    if stop < start:
        raise CalendarError(f"{what} range {part!r} runs backwards in {text!r}")
    return (start, stop, step)


def _value(word: str, lo: int, hi: int, what: str, text: str, two_digit_year: bool) -> int:
    value = _number(word, what, text)
    if two_digit_year and len(word) == 2:
        value += 1900 if value >= 70 else 2000
    if not lo <= value <= hi:
        raise CalendarError(f"{what} {word!r} is not in {lo}..{hi} in {text!r}")
    return value


def _number(word: str, what: str, text: str) -> int:
    if not _NUMBER.match(word):
        raise CalendarError(f"{what} {word!r} is not a number in calendar event {text!r}")
    return int(word)
