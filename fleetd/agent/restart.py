"""Restart policy, backoff and start limit: what systemd decides when a program ends.

Pure functions and one small value class, so that the whole of systemd.service(5)'s
decision table is tested as a table (tests/unit/test_restart_policy.py) and the
supervisor only asks. Everything here follows systemd's own code (service.c:
``service_shall_restart``, ``service_restart_usec_next``; ratelimit.c; exit-status.c:
``is_clean_exit``) rather than paraphrasing its manual, because users bring units that
were tuned against systemd's real behaviour.

How one run ended, as systemd's "result" of a service:

  success    exit 0, or an exit status / signal listed in SuccessExitStatus=, or (not
             for Type=oneshot) death by SIGHUP, SIGINT, SIGTERM or SIGPIPE - a daemon
             without handlers for those has still been stopped cleanly
  exit-code  any other exit status (ExecStartPre= failing, and a start that fails
             before the program runs - unknown User=, missing binary - count here too,
             as systemd's 203/EXEC and 217/USER do)
  signal     killed by any other signal
  core-dump  killed by a signal that dumped core
  timeout    TimeoutStartSec= ran out (or TimeoutStopSec= while winding down)
  watchdog   WatchdogSec= ran out (fleetd has no watchdog yet; the table has the row)
  oom-kill   the kernel's OOM killer ended it (MemoryMax=)
  unknown    fleetd's own: an *adopted* program ended. A wait status goes only to a
             process's parent; an adopted program's parent is whatever reaped it when
             the previous agent died (init, or a subreaper), never this agent, and a
             pidfd says *that* it ended, not *how*. (The zombie's /proc/PID/stat holds
             the status for as long as the real parent has not reaped it, but whether
             it is still there is a race against that parent: a guess, so not used.)

``shall_restart`` applies systemd's predicates to these as written, and ``unknown``
falls where they put anything that is neither ``success`` nor ``exit-code`` nor a
proven signal: ``on-failure``, ``on-abnormal`` and ``always`` restart it; ``on-success``,
``on-abort`` and ``on-watchdog`` do not. So an adopted program is restarted as an
unclean end - the conservative reading for a unit whose whole point is to run.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from typing import Any, Mapping, Optional, TypedDict

from fleetd.wire.unitspec import RESTART_POLICY, RESTART_S

SUCCESS = "success"
EXIT_CODE = "exit-code"
SIGNAL = "signal"
CORE_DUMP = "core-dump"
TIMEOUT = "timeout"
WATCHDOG = "watchdog"
OOM_KILL = "oom-kill"
UNKNOWN = "unknown"
RESULTS = (SUCCESS, EXIT_CODE, SIGNAL, CORE_DUMP, TIMEOUT, WATCHDOG, OOM_KILL, UNKNOWN)

POLICIES = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort",
            "always")

# Signals that end a daemon cleanly (systemd's EXIT_CLEAN_DAEMON): not for Type=oneshot.
CLEAN_SIGNALS = frozenset({int(signal.SIGHUP), int(signal.SIGINT), int(signal.SIGTERM),
                           int(signal.SIGPIPE)})


@dataclasses.dataclass(frozen=True)
class Exit:
    """How a process ended: ``code`` as subprocess gives it (>= 0: exit status, < 0:
    killed by that signal), None when it cannot be known (not our child)."""

    code: Optional[int]
    core_dumped: bool = False


def result(end: Exit, success_exit_status: Optional[Mapping[str, Any]] = None,
           oneshot: bool = False, oom_killed: bool = False) -> str:
    """systemd's result for a program's end (``is_clean_exit`` + the service's mapping).

    ``oom_killed``: the unit's cgroup counted an OOM kill during this run and the
    program died by SIGKILL - systemd reports that as ``oom-kill``, not ``signal``."""
    code = end.code
    if code is None:
        return UNKNOWN
    listed = success_exit_status or {}
    if code >= 0:
        if code == 0 or code in listed.get("codes", ()):
            return SUCCESS
        return EXIT_CODE
    sig = -code
    if end.core_dumped:
        return CORE_DUMP
    if (not oneshot and sig in CLEAN_SIGNALS) or sig in listed.get("signals", ()):
        return SUCCESS
    if oom_killed and sig == signal.SIGKILL:
        return OOM_KILL
    return SIGNAL


def shall_restart(policy: str, outcome: str) -> bool:
    """Restart= applied to a result: systemd's ``service_shall_restart`` switch.

    =========== == ====== ========== ========== =========== ======== ===========
    result      no always on-success on-failure on-abnormal on-abort on-watchdog
    =========== == ====== ========== ========== =========== ======== ===========
    success        X      X
    exit-code      X                 X
    signal         X                 X          X           X
    core-dump      X                 X          X           X
    timeout        X                 X          X
    watchdog       X                 X          X                    X
    oom-kill       X                 X          X
    unknown        X                 X          X
    =========== == ====== ========== ========== =========== ======== ===========

    A stop that fleetd asked for never restarts: the supervisor does not ask then."""
    if outcome not in RESULTS:
        raise ValueError(f"unknown result {outcome!r}")
    if policy == "no":
        return False
    if policy == "always":
        return True
    if policy == "on-success":
        return outcome == SUCCESS
    if policy == "on-failure":
        return outcome != SUCCESS
    if policy == "on-abnormal":
        return outcome not in (SUCCESS, EXIT_CODE)
    if policy == "on-watchdog":
        return outcome == WATCHDOG
    if policy == "on-abort":
        return outcome in (SIGNAL, CORE_DUMP)
    raise ValueError(f"unknown Restart= policy {policy!r}")


def delay(n: int, restart_s: float, steps: int = 0,
          max_delay_s: Optional[float] = None) -> float:
    """Seconds to wait before the ``n``-th consecutive automatic restart (n >= 1).

    systemd 254's RestartSteps=/RestartMaxDelaySec= (``service_restart_usec_next``): the
    first restart waits RestartSec=, and the delay grows geometrically over ``steps``
    restarts until it reaches RestartMaxDelaySec=, where it stays:

        delay(n) = RestartSec * (RestartMaxDelaySec / RestartSec) ** ((n - 1) / steps)

    Without both options (the default), or with RestartSec=0, it does not grow at all -
    systemd's default, and fleetd's, so a unit behaves the same under either."""
    if (n <= 1 or steps <= 0 or restart_s <= 0 or max_delay_s is None
            or math.isinf(max_delay_s) or restart_s >= max_delay_s):
        return restart_s
    if n > steps:
        return max_delay_s
    return float(restart_s * (max_delay_s / restart_s) ** ((n - 1) / steps))


def streak_broken(ran_s: float, max_delay_s: Optional[float]) -> bool:
    """Does a run of ``ran_s`` seconds end a streak of consecutive restarts?

    systemd counts restarts for as long as the unit is not started by hand, so a
    program that crashes once a day climbs to RestartMaxDelaySec= and stays there.
    fleetd's backoff is for crash *loops*: a run at least as long as the longest delay
    (RestartMaxDelaySec=) shows the program can come up, and its next crash waits
    RestartSec= again. Without RestartMaxDelaySec= there is no growth to reset."""
    if max_delay_s is None or math.isinf(max_delay_s):
        return False
    return ran_s >= max_delay_s


class StartLimit:
    """StartLimitBurst= starts per StartLimitIntervalSec=: systemd's RateLimit.

    A window opens at the first start; within it up to ``burst`` starts are allowed;
    the first start after the window has passed opens a new one. (A fixed window, not
    a sliding one, exactly as ratelimit_below does.) Every start counts, the first
    one and automatic restarts alike; interval 0 or burst 0 turn the limit off."""

    def __init__(self, burst: int, interval_s: float) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self.begin: Optional[float] = None
        self.count = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StartLimit:
        return cls(int(config.get("start_limit_burst", 5)),
                   float(config.get("start_limit_interval_s", 10.0)))

    @property
    def enabled(self) -> bool:
        return self.burst > 0 and self.interval_s > 0

    def allow(self, now: float) -> bool:
        """Count a start at monotonic time ``now``; False if it is one too many."""
        if not self.enabled:
            return True
        if self.begin is None or now - self.begin > self.interval_s:
            self.begin, self.count = now, 1
            return True
        self.count += 1
        return self.count <= self.burst

    def describe(self) -> str:
        """The reason a unit failed, as users read it."""
        return f"start limit hit: {self.burst} starts within {format_seconds(self.interval_s)}"


def format_seconds(seconds: float) -> str:
    """A time span as systemd writes one: ``10s``, ``500ms``, ``1min 30s``."""
    if math.isinf(seconds):
        return "infinity"
    if seconds <= 0:
        return "0"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}us"
    whole = int(seconds)
    rest = seconds - whole
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or rest or not parts:
        secs = whole + rest
        parts.append(f"{round(secs, 3):g}s")
    return " ".join(parts)


def describe(outcome: str, end: Exit, memory_max: str = "") -> str:
    """Why a run ended, for users: ``exited 3``, ``killed by SIGSEGV (core dumped)``,
    ``killed by the kernel: out of memory (MemoryMax=64M)``."""
    code = end.code
    if outcome == OOM_KILL:
        return "killed by the kernel: out of memory" + (f" ({memory_max})" if memory_max
                                                        else "")
    if code is None:
        return "exited while not a child of this agent (status unknown)"
    if code >= 0:
        text = f"exited {code}"
    else:
        try:
            text = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            text = f"killed by signal {-code}"
    if outcome == CORE_DUMP:
        text += " (core dumped)"
    return text


class RestartOptions(TypedDict):
    policy: str  # Restart=
    restart_s: float  # RestartSec=
    steps: int  # RestartSteps=
    max_delay_s: Optional[float]  # RestartMaxDelaySec=


def restart_options(config: Mapping[str, Any]) -> RestartOptions:
    """The restart settings of a unit's config, defaulted as service.py defaults them
    (older configs lack the backoff options: they mean no growth)."""
    max_delay = config.get("restart_max_delay_s")
    return {
        "policy": str(config.get("restart", RESTART_POLICY)),
        "restart_s": float(config.get("restart_s", RESTART_S)),
        "steps": int(config.get("restart_steps", 0) or 0),
        "max_delay_s": float(max_delay) if max_delay is not None else None,
    }
