"""fleetd.agent.restart: systemd's Restart= table, results, backoff and start limit; and
RestartSteps=/RestartMaxDelaySec= as fleetd.units.service validates them."""

from __future__ import annotations

import signal
from typing import Dict, Optional

import pytest

from fleetd.agent import restart as r
from fleetd.agent.restart import Exit, StartLimit
from fleetd.units.model import load
from fleetd.units.parser import UnitError

# systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings",
# plus the rows systemd's code adds (core-dump, oom-kill) and fleetd's "unknown".
#            no     always on-success on-failure on-abnormal on-abort on-watchdog
TABLE: Dict[str, tuple[bool, ...]] = {
    r.SUCCESS:   (False, True, True,  False, False, False, False),
    r.EXIT_CODE: (False, True, False, True,  False, False, False),
    r.SIGNAL:    (False, True, False, True,  True,  True,  False),
    r.CORE_DUMP: (False, True, False, True,  True,  True,  False),
    r.TIMEOUT:   (False, True, False, True,  True,  False, False),
    r.WATCHDOG:  (False, True, False, True,  True,  False, True),
    r.OOM_KILL:  (False, True, False, True,  True,  False, False),
    r.UNKNOWN:   (False, True, False, True,  True,  False, False),
}
COLUMNS = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort",
           "on-watchdog")


def test_table_covers_every_result_and_policy() -> None:
    assert set(TABLE) == set(r.RESULTS)
    assert set(COLUMNS) == set(r.POLICIES)


@pytest.mark.parametrize("outcome", list(TABLE))
@pytest.mark.parametrize("policy", COLUMNS)
def test_shall_restart(policy: str, outcome: str) -> None:
    assert r.shall_restart(policy, outcome) is TABLE[outcome][COLUMNS.index(policy)]


def test_unknown_policy_or_result_is_a_bug() -> None:
    with pytest.raises(ValueError, match="policy"):
        r.shall_restart("sometimes", r.SUCCESS)
    with pytest.raises(ValueError, match="result"):
        r.shall_restart("always", "meh")


SUCCESS_3_USR1 = {"codes": [3], "signals": [int(signal.SIGUSR1)]}


@pytest.mark.parametrize(
    ("end", "listed", "oneshot", "oom", "expected"),
    [
        (Exit(0), None, False, False, r.SUCCESS),
        (Exit(1), None, False, False, r.EXIT_CODE),
        (Exit(3), None, False, False, r.EXIT_CODE),
        (Exit(3), SUCCESS_3_USR1, False, False, r.SUCCESS),  # SuccessExitStatus=
        (Exit(-signal.SIGUSR1), SUCCESS_3_USR1, False, False, r.SUCCESS),
        (Exit(-signal.SIGUSR1), None, False, False, r.SIGNAL),
        # a daemon without handlers for these was still stopped cleanly ...
        (Exit(-signal.SIGTERM), None, False, False, r.SUCCESS),
        (Exit(-signal.SIGINT), None, False, False, r.SUCCESS),
        (Exit(-signal.SIGHUP), None, False, False, r.SUCCESS),
        (Exit(-signal.SIGPIPE), None, False, False, r.SUCCESS),
        # ... but not a oneshot command, which is expected to run to its end
        (Exit(-signal.SIGTERM), None, True, False, r.SIGNAL),
        (Exit(-signal.SIGKILL), None, False, False, r.SIGNAL),
        (Exit(-signal.SIGKILL), None, False, True, r.OOM_KILL),
        (Exit(-signal.SIGTERM), None, False, True, r.SUCCESS),  # OOM count, but not its end
        (Exit(-signal.SIGSEGV, core_dumped=True), None, False, False, r.CORE_DUMP),
        (Exit(-signal.SIGSEGV), None, False, False, r.SIGNAL),
        (Exit(None), None, False, False, r.UNKNOWN),  # adopted: not our child
        (Exit(None), SUCCESS_3_USR1, False, False, r.UNKNOWN),
    ],
)
def test_result(end: Exit, listed: Optional[Dict[str, list[int]]], oneshot: bool, oom: bool,
                expected: str) -> None:
    assert r.result(end, listed, oneshot, oom) == expected


def test_describe() -> None:
    assert r.describe(r.EXIT_CODE, Exit(3)) == "exited 3"
    assert r.describe(r.SIGNAL, Exit(-9)) == "killed by SIGKILL"
    assert r.describe(r.CORE_DUMP, Exit(-11, True)) == "killed by SIGSEGV (core dumped)"
    assert r.describe(r.OOM_KILL, Exit(-9), "MemoryMax=64M") == \
        "killed by the kernel: out of memory (MemoryMax=64M)"
    assert "status unknown" in r.describe(r.UNKNOWN, Exit(None))


def test_delay_without_backoff_options_never_grows() -> None:
    # systemd's default (and fleetd's): RestartSteps=0 / RestartMaxDelaySec=infinity
    assert [r.delay(n, 0.1) for n in range(1, 6)] == [0.1] * 5
    assert [r.delay(n, 0.1, steps=3) for n in range(1, 6)] == [0.1] * 5
    assert [r.delay(n, 0.1, max_delay_s=10) for n in range(1, 6)] == [0.1] * 5
    assert [r.delay(n, 0.0, steps=3, max_delay_s=10) for n in range(1, 6)] == [0.0] * 5


def test_delay_grows_geometrically_to_the_maximum() -> None:
    # RestartSec=2s RestartSteps=3 RestartMaxDelaySec=16s: 2, 4, 8, then 16 for ever
    got = [round(r.delay(n, 2.0, steps=3, max_delay_s=16.0), 9) for n in range(1, 7)]
    assert got == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    # 100ms to 5s in 10 steps: each delay 1.479x the one before, never past 5s
    seq = [r.delay(n, 0.1, steps=10, max_delay_s=5.0) for n in range(1, 15)]
    assert seq == sorted(seq) and seq[0] == 0.1 and seq[-1] == 5.0
    assert seq[10] == 5.0 and seq[9] < 5.0
    # RestartSec= at or above the maximum: no growth (systemd's rule)
    assert r.delay(4, 5.0, steps=3, max_delay_s=5.0) == 5.0


def test_a_long_run_breaks_the_streak() -> None:
    assert not r.streak_broken(1000.0, None)  # no maximum: nothing grows, nothing to reset
    assert not r.streak_broken(3.9, 4.0)
    assert r.streak_broken(4.0, 4.0)


def test_start_limit_is_a_fixed_window_like_systemd() -> None:
    limit = StartLimit(burst=3, interval_s=10.0)
    assert [limit.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert limit.allow(3.0) is False  # the 4th start within 10 s
    assert limit.allow(9.9) is False
    assert limit.allow(10.5) is True  # a new window opens at the first start past it
    assert limit.describe() == "start limit hit: 3 starts within 10s"


@pytest.mark.parametrize(("burst", "interval"), [(0, 10.0), (5, 0.0)])
def test_start_limit_off(burst: int, interval: float) -> None:
    limit = StartLimit(burst, interval)
    assert all(limit.allow(t / 1000) for t in range(1000))


def test_start_limit_from_config_defaults_like_systemd() -> None:
    limit = StartLimit.from_config({})
    assert (limit.burst, limit.interval_s) == (5, 10.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10.0, "10s"), (0.5, "500ms"), (90.0, "1min 30s"), (3600.0, "1h"), (0.0001, "100us"),
     (1.5, "1.5s"), (0.0, "0"), (float("inf"), "infinity")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert r.format_seconds(seconds) == text


# --- the unit file options ------------------------------------------------------------------
def _config(service: str) -> Dict[str, object]:
    return load("a.service", f"[Service]\nExecStart=/bin/true\n{service}").config


def test_backoff_options_default_to_no_growth() -> None:
    config = _config("")
    assert (config["restart_steps"], config["restart_max_delay_s"]) == (0, None)
    assert r.restart_options({"restart": "always"}) == {
        "policy": "always", "restart_s": 0.1, "steps": 0, "max_delay_s": None}


def test_backoff_options_parse() -> None:
    config = _config("Restart=on-failure\nRestartSec=500ms\nRestartSteps=5\n"
                     "RestartMaxDelaySec=1min\n")
    assert (config["restart_s"], config["restart_steps"], config["restart_max_delay_s"]) == \
        (0.5, 5, 60.0)
    assert r.restart_options(config)["max_delay_s"] == 60.0
    assert _config("RestartMaxDelaySec=infinity\n")["restart_max_delay_s"] is None
    assert _config("RestartSteps=\n")["restart_steps"] == 0  # empty: back to the default


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("RestartSteps=-1", "RestartSteps=: want a whole number from 0 to 10000, not '-1'"),
        ("RestartSteps=many", "not 'many'"),
        ("RestartMaxDelaySec=soon", "RestartMaxDelaySec="),
        ("RestartSec=5s\nRestartMaxDelaySec=1s", "1s is shorter than RestartSec= (5s)"),
    ],
)
def test_backoff_options_errors(line: str, fragment: str) -> None:
    with pytest.raises(UnitError) as info:
        _config(line + "\n")
    assert fragment in str(info.value)
