"""OnCalendar= read as the machine's own systemd reads it: each spec goes through
``systemd-analyze calendar --base-time=@T --iterations=N`` and through
fleetd.units.calendar, from several base times, and the instants must be the same; a spec
systemd refuses, fleetd refuses too. Skipped where the machine has no systemd-analyze."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import time
from typing import Iterator, List, Optional

import pytest

from fleetd.units.calendar import CalendarError, parse_calendar

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze here")

SPECS = [
    "minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually",
    "quarterly", "semiannually", "DAILY", "weekly UTC",
    "*-*-* *:*:00", "*:0/15", "*:*:0/20", "Mon..Fri *-*-* 09:00", "mon,fri 12:00",
    "Mon-Wed 3:00", "Sat,Sun 10:30:15", "Sunday *-*-* 23:59:59", "Fri *-*-13",
    "2024-02-29", "*-02-29 12:00", "12-25", "23-12-25", "*-*-01 04:00",
    "*-1..3-1 0:0", "*-*-1/10 6:00", "*-*-5..20/5", "2030..2032-06-15 8:00",
    "*-01,07-01", "*-*~01", "*-02~03 1:00", "*-*-* 12:00 Europe/Berlin",
    "Mon *-*-* 02:30 America/New_York", "*-*-31", "*-*-* 1,13:15,45",
    "12:00", "00:00:00", "*-*-* 00/6:00",
]
REFUSED = [
    "bogus", "Europe/Berlin", "*-13-01", "*-*-32", "25:00", "*:60", "Mon..Funday",
    "*-*-* 12:00 Nowhere/Town", "*:*:*:*", "*-*-*-*", "*:0/0", "12:00 13:00",
    "5..1:00", "",
]
BASES = [1700000000, 1709164800, 1735689599, 1711846800]  # one at a DST change


def analyze(spec: str, base: int, n: int) -> Optional[List[float]]:
    """systemd's next ``n`` instants of ``spec`` after ``base``; None if it refuses."""
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "calendar", f"--base-time=@{base}", f"--iterations={n}", spec],
        capture_output=True, text=True, timeout=10,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"})
    if proc.returncode != 0:
        return None
    out: List[float] = []
    for m in re.finditer(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", proc.stdout):
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        out.append(when.replace(tzinfo=dt.timezone.utc).timestamp())
    return out


def ours(spec: str, base: int, n: int) -> List[float]:
    parsed = parse_calendar(spec)
    out: List[float] = []
    t: Optional[float] = base
    for _ in range(n):
        assert t is not None
        t = parsed.next_after(t)
        if t is None:
            break
        out.append(t)
    return out


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both sides read a spec without a zone as local time: make local time UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("spec", SPECS)
def test_same_instants_as_systemd(spec: str) -> None:
    for base in BASES:
        expected = analyze(spec, base, 5)
        assert expected is not None, f"systemd refuses {spec!r}: fix the list"
        assert ours(spec, base, 5) == expected, (spec, base)


@pytest.mark.parametrize("spec", REFUSED)
def test_refused_like_systemd(spec: str) -> None:
    assert analyze(spec, BASES[0], 1) is None, f"systemd reads {spec!r}: fix the list"
    with pytest.raises(CalendarError):
        parse_calendar(spec)
