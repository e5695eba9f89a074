"""[X-Fleet]'s failure options: the reschedule policy and fencing."""

from __future__ import annotations

import pytest

from fleetd.units.model import load
from fleetd.units.parser import UnitError
from fleetd.units.xfleet import Reschedule

BASE = "[Service]\nExecStart=/bin/sleep 1\n[X-Fleet]\n"


def test_defaults_reschedule_with_backoff_and_never_fence() -> None:
    unit = load("a.service", BASE)
    assert unit.requirements.reschedule == Reschedule()
    assert unit.requirements.fence_after_s is None
    assert "fence_after_s" not in unit.config


def test_policy_options_are_read() -> None:
    unit = load("a.service", BASE + "RescheduleAttempts=infinity\nRescheduleIntervalSec=10min\n"
                "RescheduleDelaySec=2s\nRescheduleDelayFunction=constant\n"
                "RescheduleMaxDelaySec=1min\nFenceAfterSec=1min 30s\n")
    policy = unit.requirements.reschedule
    assert policy == Reschedule(attempts=None, interval_s=600, delay_s=2, exponential=False,
                                max_delay_s=60)
    assert unit.requirements.fence_after_s == 90
    assert unit.config["fence_after_s"] == 90  # the agent fences, so it must know


def test_exponential_delay_doubles_up_to_the_maximum() -> None:
    policy = Reschedule(delay_s=5, max_delay_s=30)
    assert [policy.delay(n) for n in range(5)] == [5, 10, 20, 30, 30]
    assert Reschedule(delay_s=5, exponential=False).delay(7) == 5
    assert policy.delay(10_000) == 30  # no overflow


@pytest.mark.parametrize("line, why", [
    ("RescheduleAttempts=some", "RescheduleAttempts=: want a whole number from 0 to 10000"),
    ("RescheduleDelayFunction=linear", "'linear' is not one of exponential, constant"),
    ("RescheduleDelaySec=soon", "RescheduleDelaySec=: invalid time span"),
    ("RescheduleDelaySec=infinity", "say RescheduleAttempts=0"),
    ("RescheduleIntervalSec=0", "RescheduleIntervalSec=: must be more than 0"),
    ("FenceAfterSec=0", "FenceAfterSec=: must be at least 3s"),
    ("FenceAfterSec=1s", "FenceAfterSec=: must be at least 3s"),
    ("FenceAfter=5s", "did you mean FenceAfterSec=?"),
])
def test_bad_values_name_file_line_and_option(line: str, why: str) -> None:
    with pytest.raises(UnitError) as err:
        load("a.service", BASE + line + "\n", "/units/a.service")
    assert str(err.value).startswith("/units/a.service:4: ")
    assert why in str(err.value)


def test_fleetd_waits_for_the_fenced_copy_to_stop_surely() -> None:
    unit = load("a.service", "[Service]\nExecStart=/bin/sleep 1\nTimeoutStopSec=7\n"
                "[X-Fleet]\nFenceAfterSec=10s\n")
    assert unit.requirements.fence_wait_s == 22  # fenced at 10 s, SIGKILL at 17, gone by 22


def test_fencing_needs_a_stop_that_ends() -> None:
    with pytest.raises(UnitError, match=r"a.service:5: FenceAfterSec=: needs a finite "
                                        r"TimeoutStopSec="):
        load("a.service", "[Service]\nExecStart=/bin/sleep 1\nTimeoutStopSec=infinity\n"
             "[X-Fleet]\nFenceAfterSec=10s\n")
