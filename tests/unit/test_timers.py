"""When a timer fires (fleetd.engine.timers): a table of states and the decisions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Optional

import pytest

from fleetd.engine.timers import Action, TimerState, decide, next_firing, random_delay
from fleetd.units.timer import TimerSpec, load_timer


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def timer(body: str, name: str = "backup.timer") -> TimerSpec:
    return load_timer(name, "[Timer]\nAccuracySec=1s\n" + body)


CRON = "OnActiveSec=2s\nOnUnitActiveSec=3s\n"
DAILY = "OnCalendar=*-*-* 03:00:00 UTC\n"
T0 = 1000.0


@pytest.mark.parametrize(("body", "state", "now", "action", "next_at"), [
    # OnActiveSec= counts from the start; once only
    (CRON, TimerState(started_at=T0, booted_at=0), T0 + 1, Action.WAIT, T0 + 2),
    (CRON, TimerState(started_at=T0, booted_at=0), T0 + 2, Action.FIRE, T0 + 2),
    # then OnUnitActiveSec= from the service's activation ...
    (CRON, TimerState(started_at=T0, booted_at=0, last_fired=T0 + 2,
                      service_active_at=T0 + 2.5, service_running=True),
     T0 + 3, Action.WAIT, T0 + 5.5),
    (CRON, TimerState(started_at=T0, booted_at=0, last_fired=T0 + 2,
                      service_active_at=T0 + 2.5, service_inactive_at=T0 + 2.7),
     T0 + 5.5, Action.FIRE, T0 + 5.5),
    # ... never a second run while it still runs: the firing is skipped (consumed) ...
    (CRON, TimerState(started_at=T0, booted_at=0, last_fired=T0 + 2,
                      service_active_at=T0 + 2.5, service_running=True),
     T0 + 6, Action.SKIP, T0 + 5.5),
    # ... and the next counts from the skipped firing (systemd's max(active, trigger))
    (CRON, TimerState(started_at=T0, booted_at=0, last_fired=T0 + 6,
                      service_active_at=T0 + 2.5, service_running=True),
     T0 + 7, Action.WAIT, T0 + 9),
    # OnUnitActiveSec= alone does nothing until the service was once active
    ("OnUnitActiveSec=3s\n", TimerState(started_at=T0, booted_at=0), T0 + 99,
     Action.WAIT, None),
    ("OnUnitInactiveSec=10s\n", TimerState(started_at=T0, booted_at=0, last_fired=T0,
                                           service_inactive_at=T0 + 4), T0 + 5,
     Action.WAIT, T0 + 14),
    # OnBootSec= counts from the machine's boot, once
    ("OnBootSec=5min\n", TimerState(started_at=T0, booted_at=T0 - 600), T0,
     Action.FIRE, T0 - 300),
    ("OnBootSec=5min\n", TimerState(started_at=T0, booted_at=T0 - 600, last_fired=T0),
     T0 + 1, Action.WAIT, None),
    # calendar: from the start, then from the last firing
    (DAILY, TimerState(started_at=utc("2026-12-04 18:00"), booted_at=0),
     utc("2026-12-04 18:00"), Action.WAIT, utc("2026-12-05 03:00")),
    (DAILY, TimerState(started_at=utc("2026-12-04 18:00"), booted_at=0,
                       last_fired=utc("2026-12-05 03:00:00.2")),
     utc("2026-12-05 03:00:01"), Action.WAIT, utc("2026-12-06 03:00")),
    # a missed firing (the timer moved after its machine died): not caught up ...
    (DAILY, TimerState(started_at=utc("2026-12-06 09:00"), booted_at=0,
                       last_fired=utc("2026-12-05 03:00")),
     utc("2026-12-06 09:00"), Action.WAIT, utc("2026-12-07 03:00")),
    # ... unless Persistent=, then once, at once
    (DAILY + "Persistent=yes\n",
     TimerState(started_at=utc("2026-12-06 09:00"), booted_at=0,
                last_fired=utc("2026-12-04 03:00")),
     utc("2026-12-06 09:00"), Action.FIRE, utc("2026-12-05 03:00")),
    (DAILY + "Persistent=yes\n",
     TimerState(started_at=utc("2026-12-06 09:00"), booted_at=0,
                last_fired=utc("2026-12-06 09:00")),
     utc("2026-12-06 09:00:01"), Action.WAIT, utc("2026-12-07 03:00")),
    # Persistent= with no firing ever: nothing to catch up
    (DAILY + "Persistent=yes\n", TimerState(started_at=utc("2026-12-06 09:00"), booted_at=0),
     utc("2026-12-06 09:00"), Action.WAIT, utc("2026-12-07 03:00")),
    # the earliest of several triggers wins
    (DAILY + "OnActiveSec=1h\n", TimerState(started_at=utc("2026-12-05 02:30"), booted_at=0),
     utc("2026-12-05 02:30"), Action.WAIT, utc("2026-12-05 03:00")),
])
def test_decide(body: str, state: TimerState, now: float, action: Action,
                next_at: Optional[float]) -> None:
    decision = decide(timer(body), state, now)
    assert (decision.action, decision.next_at) == (action, next_at)
    if next_at is not None:
        assert decision.deadline == next_at + 1.0  # AccuracySec=1s


def test_random_delay_is_fixed_per_timer_and_within_bounds() -> None:
    a = timer(DAILY + "RandomizedDelaySec=1h\n", "a.timer")
    b = timer(DAILY + "RandomizedDelaySec=1h\n", "b.timer")
    assert random_delay(a) == random_delay(a)  # every pass agrees
    assert random_delay(a) != random_delay(b)  # timers spread
    assert 0 <= random_delay(a) < 3600 and 0 <= random_delay(b) < 3600
    state = TimerState(started_at=utc("2026-12-04 18:00"), booted_at=0)
    first = next_firing(a, state)
    assert first == utc("2026-12-05 03:00") + random_delay(a)
    # fired late within the delay: the next is the next day's, delayed the same
    assert first is not None
    fired = dataclasses.replace(state, last_fired=first + 0.5)
    assert next_firing(a, fired) == utc("2026-12-06 03:00") + random_delay(a)
    assert random_delay(timer(DAILY)) == 0.0


def test_never_fires_early_and_accuracy_is_the_deadline() -> None:
    spec = load_timer("a.timer", "[Timer]\nOnActiveSec=10s\n")  # AccuracySec= 1min default
    decision = decide(spec, TimerState(started_at=T0, booted_at=0), T0 + 9.9)
    assert (decision.action, decision.next_at, decision.deadline) == (
        Action.WAIT, T0 + 10, T0 + 70)


def test_restarting_the_timer_arms_on_active_again() -> None:
    spec = timer("OnActiveSec=2s\n")
    state = TimerState(started_at=T0 + 50, booted_at=0, last_fired=T0 + 2)
    assert decide(spec, state, T0 + 52).action is Action.FIRE
