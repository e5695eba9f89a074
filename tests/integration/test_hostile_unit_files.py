"""Hostile unit files against the real fleetd, fleetctl and agents: a number no option
takes is refused naming ``file:line`` (never an answer 500), and a unit an older fleetd
stored with such a number never stops the engine from placing and running the rest."""

from __future__ import annotations

import os

import pytest
from labkit import Fleet, wait_for

from fleetd.registry.base import LAUNCHED, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.model import content_hash

SERVICE = "[Service]\nExecStart=/bin/sleep 100000\n"


@pytest.mark.parametrize("line", ["StartLimitBurst=²", "CPUQuota=nan%", "TasksMax=" + "9" * 5000,
                                  "MemoryMax=" + "9" * 400],
                         ids=["superscript", "nan", "5000-digits", "400-digits"])
def test_fleetctl_names_the_line_of_a_number_no_option_takes(fleet: Fleet, tmp_path: object,
                                                              line: str) -> None:
    path = os.path.join(str(tmp_path), "web.service")
    with open(path, "w") as f:
        f.write(SERVICE + line + "\n")
    out = fleet.ctl("submit", path, check=False)
    assert out.returncode != 0
    option = line.split("=", 1)[0]
    assert f"web.service:3: {option}=: " in out.stderr, out.stderr
    assert "500" not in out.stderr and "Traceback" not in out.stderr
    assert fleet.unit_files() == []


def test_a_unit_stored_with_nan_never_stops_the_fleet(cluster: Fleet, tmp_path: object
                                                      ) -> None:
    """An older fleetd accepted CPUQuota=nan%; with it in the registry every engine
    pass failed, so nothing anywhere was placed. Now it waits, saying why."""
    cluster.stop()
    poisoned = SERVICE + "CPUQuota=nan%\n"
    registry = SqliteRegistry(os.path.join(cluster.state_dir, "registry.db"))
    try:
        at_once(registry.put_units([UnitInput("old.service", poisoned, content_hash(poisoned))],
                           LAUNCHED))
    finally:
        at_once(registry.close())
    cluster.start()
    path = os.path.join(str(tmp_path), "new.service")
    with open(path, "w") as f:
        f.write(SERVICE)
    cluster.ctl("start", path)  # blocks until it runs
    wait_for("new.service running",
             lambda: any(u["unit"] == "new.service" and u["state"] == "running"
                         for u in cluster.units()), 20)
    old = next(f for f in cluster.unit_files() if f["unit"] == "old.service")
    assert old["machine"] is None
    assert old["reason"].startswith("invalid: old.service:3: CPUQuota=: want a number")
