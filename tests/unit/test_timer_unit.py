"""A .timer unit read as systemd.timer(5) says, with file:line errors."""

from __future__ import annotations

import pytest

from fleetd.units.parser import UnitError
from fleetd.units.timer import TimerSpec, load_timer, service_of


def test_every_option() -> None:
    spec = load_timer("backup.timer", """\
[Unit]
Description=nightly backup
[Timer]
OnCalendar=daily
OnCalendar=Mon 12:00 UTC
OnActiveSec=2s
OnBootSec=1min
OnStartupSec=5
OnUnitActiveSec=3s
OnUnitInactiveSec=1h
RandomizedDelaySec=10min
AccuracySec=1s
Persistent=yes
WakeSystem=no
""")
    assert spec.name == "backup.timer" and spec.unit == "backup.service"
    assert [c.text for c in spec.on_calendar] == ["daily", "Mon 12:00 UTC"]
    assert spec.on_active_s == (2.0,) and spec.on_boot_s == (60.0, 5.0)
    assert spec.on_unit_active_s == (3.0,) and spec.on_unit_inactive_s == (3600.0,)
    assert (spec.randomized_delay_s, spec.accuracy_s, spec.persistent) == (600.0, 1.0, True)


def test_defaults_and_unit() -> None:
    spec = load_timer("job@7.timer", "[Timer]\nOnActiveSec=1\n")
    assert spec == TimerSpec(name="job@7.timer", unit="job@7.service", on_active_s=(1.0,))
    assert load_timer("a.timer", "[Timer]\nOnActiveSec=1\nUnit=other.service\n"
                      ).unit == "other.service"
    assert service_of("x.timer") == "x.service"


def test_empty_assignment_resets_a_list() -> None:
    spec = load_timer("a.timer", "[Timer]\nOnCalendar=daily\nOnCalendar=\nOnActiveSec=1\n")
    assert spec.on_calendar == ()


@pytest.mark.parametrize(("name", "text", "where", "words"), [
    ("a.timer", "[Timer]\nOnCalendar=daily\nOnCalendar=*-13-01\n", "a.timer:3",
     "OnCalendar=: month '13' is not in 1..12"),
    ("a.timer", "[Timer]\nOnActiveSec=soon\n", "a.timer:2", "OnActiveSec=: invalid time span"),
    ("a.timer", "[Timer]\nOnActiveSec=infinity\n", "a.timer:2", "must be a finite"),
    ("a.timer", "[Timer]\nOnCalender=daily\n", "a.timer:2", "did you mean OnCalendar=?"),
    ("a.timer", "[Timer]\nPersistent=maybe\nOnActiveSec=1\n", "a.timer:2", "not a boolean"),
    ("a.timer", "[Timer]\nPersistent=yes\n", "a.timer:1", "would never fire"),
    ("a.timer", "[Unit]\nDescription=x\n", "a.timer", "needs a [Timer] section"),
    ("a.timer", "[Timer]\nOnActiveSec=1\nUnit=b.socket\n", "a.timer:3",
     "Unit=: 'b.socket'"),
    ("a.service", "[Timer]\nOnActiveSec=1\n", "a.service", "not a timer"),
    ("-a.timer", "[Timer]\nOnActiveSec=1\n", "-a.timer", "want NAME.timer"),
    ("a@.timer", "[Timer]\nOnActiveSec=1\n", "a@.timer", "is a template"),
])
def test_errors_name_file_and_line(name: str, text: str, where: str, words: str) -> None:
    with pytest.raises(UnitError) as info:
        load_timer(name, text)
    message = str(info.value)
    assert message.startswith(where + ":"), message
    assert words in message, message
