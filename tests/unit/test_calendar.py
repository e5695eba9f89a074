"""OnCalendar= without a systemd at hand: fixed instants and the errors' wording (the
differential test beside it checks many more specs against the real systemd)."""

from __future__ import annotations

import datetime as dt

import pytest

from fleetd.units.calendar import CalendarError, next_after


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


@pytest.mark.parametrize(("spec", "after", "expected"), [
    ("daily UTC", "2026-12-04 18:00:00", "2026-12-05 00:00:00"),
    ("*:0/15 UTC", "2026-12-04 18:15:00", "2026-12-04 18:30:00"),  # strictly after
    ("Mon..Fri 09:00 UTC", "2026-12-04 10:00:00", "2026-12-07 09:00:00"),
    ("*-*~01 UTC", "2027-02-01 00:00:00", "2027-02-28 00:00:00"),
    ("*-02-29 UTC", "2025-01-01 00:00:00", "2028-02-29 00:00:00"),
    ("12:00 Europe/Berlin", "2026-07-01 00:00:00", "2026-07-01 10:00:00"),
])
def test_next_after(spec: str, after: str, expected: str) -> None:
    assert next_after(spec, at(after)) == at(expected)


def test_never_again_is_none() -> None:
    assert next_after("2024-02-29 UTC", at("2024-03-01 00:00:00")) is None


@pytest.mark.parametrize(("spec", "words"), [
    ("bogus", "unknown weekday 'bogus'"),
    ("*-13-01", "month '13' is not in 1..12"),
    ("*:60", "minute '60' is not in 0..59"),
    ("*-*-* 12:00 Nowhere/Town", "unknown time zone 'Nowhere/Town'"),
    ("*:0/0", "repetition '0/0' must be at least 1"),
    ("12:00 13:00", "unexpected '13:00'"),
    ("*:*:0.5", "fractional seconds"),
    ("", "empty calendar event"),
])
def test_errors_name_the_wrong_part(spec: str, words: str) -> None:
    with pytest.raises(CalendarError, match=words.replace("*", r"\*").replace(".", r"\.")):
        next_after(spec, 0)
