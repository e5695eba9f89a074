"""[X-Update]: a rollout's pace and what happens when a new copy fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.units.compiled import CompiledUnits, Invalid
from fleetd.units.model import content_hash, load
from fleetd.units.parser import UnitError
from fleetd.units.xupdate import UpdatePolicy

SRC = "web@.service"
BASE = "[Service]\nExecStart=/bin/sleep 1\n[X-Update]\n"  # options from line 4


def test_defaults_one_copy_at_a_time_and_no_revert() -> None:
    unit = load("web@.service", "[Service]\nExecStart=/bin/sleep 1\n", template_ok=True)
    assert unit.requirements.update == UpdatePolicy(1, 10.0, 300.0, False)


def test_options_are_read() -> None:
    unit = load("web@.service", BASE + "MaxParallel=2\nMinHealthySec=3s\n"
                "HealthyDeadlineSec=1min\nAutoRevert=yes\n", template_ok=True)
    assert unit.requirements.update == UpdatePolicy(2, 3.0, 60.0, True)


@pytest.mark.parametrize("lines, why", [
    ("MaxParallel=0\n", f"{SRC}:4: MaxParallel=: want a whole number from 1 to 10000"),
    ("MinHealthySec=infinity\n", f"{SRC}:4: MinHealthySec=: must be a finite time span"),
    ("MinHealthySec=1min\nHealthyDeadlineSec=30s\n",
     f"{SRC}:5: HealthyDeadlineSec=: HealthyDeadlineSec= (30s) must be longer than "
     "MinHealthySec= (60s)"),
    ("AutoRevert=maybe\n", f"{SRC}:4: AutoRevert=: 'maybe' is not a boolean"),
    ("MaxParalel=2\n", f"{SRC}:4: unknown option MaxParalel= in [X-Update]; did you mean "
                       "MaxParallel=?"),
])
def test_bad_options_name_the_line(lines: str, why: str) -> None:
    with pytest.raises(UnitError) as e:
        load(SRC, BASE + lines, template_ok=True)
    assert str(e.value).startswith(why), str(e.value)


def test_the_example_in_units_is_valid() -> None:
    """units/app@.service, which the README points to, submits as it is."""
    path = Path(__file__).parents[2] / "units" / "app@.service"
    text = path.read_text()
    CompiledUnits().check("app@.service", content_hash(text), {}, text, str(path))
    unit = CompiledUnits().probed("app@1.service", content_hash(text), {}, text)
    assert not isinstance(unit, Invalid), unit
    assert unit.requirements.update == UpdatePolicy(1, 15.0, 120.0, True)
