"""``[Service]`` (and the start-limit options of ``[Unit]``) -> the config a driver runs.

Every option fleetd interprets is validated here, at submit time, with systemd's value
syntax, so the agent never meets a value it cannot use. The config is plain JSON: it
travels to the agent inside the desired set.
"""

from __future__ import annotations

import math
import re
import signal
from typing import Dict, List, Optional, Tuple

from fleetd.units import process
from fleetd.units.context import UnitContext
from fleetd.units.parser import Entry
from fleetd.units.process import parse_size
from fleetd.wire.numbers import NumberError, parse_int
from fleetd.wire.unitspec import (
    KILL_SIGNAL,
    RESTART_POLICY,
    RESTART_S,
    TIMEOUT_STOP_S,
    Command,
    Limits,
    SuccessExitStatus,
    UnitConfig,
)

SERVICE_TYPES = ("simple", "exec", "oneshot")
RESTART_POLICIES = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog",
                    "on-abort", "always")
# systemd's DefaultTimeoutStartSec and DefaultTimeoutStopSec (both 90 s): the stop one is
# what the agent assumes when a config has no timeout_stop_s
DEFAULT_TIMEOUT_S = TIMEOUT_STOP_S
DEFAULT_RESTART_S = RESTART_S  # systemd's RestartSec default (100ms), as the agent's
DEFAULT_START_LIMIT_BURST = 5
DEFAULT_START_LIMIT_INTERVAL_S = 10.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
# Ranges of the numbers in [Service], as systemd and the kernel take them:
MAX_RESTART_STEPS = 10000  # systemd keeps the step count in an unsigned
MAX_START_LIMIT_BURST = 1_000_000
MAX_CPU_QUOTA_PERCENT = 1_000_000.0  # 10000 CPUs
MAX_CPU_WEIGHT = 10000  # systemd's and cgroup v2's cpu.weight range is 1..10000
MAX_TASKS = 4194304  # the kernel's PID_MAX_LIMIT: pids.max refuses more
MAX_NOFILE = (1 << 31) - 1  # the kernel's fs.nr_open is an int
MAX_MODE = 0o7777  # a file mode's permission bits, the most UMask= takes

S = "Service"


def config(ctx: UnitContext, needs_exec_start: bool = True) -> UnitConfig:
    """Everything the exec driver (and drivers built on it) needs from [Service].

    ``needs_exec_start`` is False for drivers that build the command themselves (java
    builds it from [X-Java]); ExecStart= is then refused rather than silently ignored."""
    type_entry = ctx.entry(S, "Type")
    service_type = ctx.single(S, "Type") or "simple"
    if service_type not in SERVICE_TYPES:
        ctx.fail(type_entry, f"Type={service_type} is not supported by fleetd's drivers "
                             f"(supported: {', '.join(SERVICE_TYPES)}); run the program in "
                             "the foreground, or use Driver=systemd")
    starts = ctx.many(S, "ExecStart")
    if not needs_exec_start and starts:
        ctx.fail(starts[0], "this driver builds the command itself; remove ExecStart=")
    if needs_exec_start and not starts:
        ctx.fail(None, "[Service] has no ExecStart=: fleetd needs a program to run")
    if len(starts) > 1 and service_type != "oneshot":
        ctx.fail(starts[1], f"more than one ExecStart= is only allowed with Type=oneshot "
                            f"(first at line {starts[0].line})")
    restart_s = ctx.finite_timespan(S, "RestartSec", DEFAULT_RESTART_S,
                                    " (Restart=no turns restarting off)")
    out: UnitConfig = {
        "type": service_type,
        "commands": _commands(ctx, starts),
        "pre": _commands(ctx, ctx.many(S, "ExecStartPre")),
        "post": _commands(ctx, ctx.many(S, "ExecStartPost")),
        "stop": _commands(ctx, ctx.many(S, "ExecStop")),
        "environment": _environment(ctx),
        "environment_files": _environment_files(ctx),
        "working_directory": _working_directory(ctx),
        "user": _identity(ctx, "User"),
        "group": _identity(ctx, "Group"),
        "umask": _umask(ctx),
        "kill_signal": _signal(ctx, "KillSignal", KILL_SIGNAL),
        "timeout_start_s": _timeout(ctx, "TimeoutStartSec")
        if service_type != "oneshot" or ctx.single(S, "TimeoutStartSec") is not None
        else None,  # systemd: a oneshot's start (its whole run) has no default timeout
        "timeout_stop_s": _timeout(ctx, "TimeoutStopSec"),
        "restart": _restart(ctx, service_type),
        "restart_s": restart_s,
        "restart_steps": _restart_steps(ctx),
        "restart_max_delay_s": _restart_max_delay(ctx, restart_s),
        "start_limit_burst": _start_limit_burst(ctx),
        "start_limit_interval_s": _start_limit_interval(ctx),
        "success_exit_status": _success_exit_status(ctx),
        "limits": limits(ctx),
        "rlimits": process.rlimits(ctx),
        "nice": process.nice(ctx),
        "oom_score_adjust": process.oom_score_adjust(ctx),
    }
    reload = _commands(ctx, ctx.many(S, "ExecReload"))
    if reload:  # what OnPeersChange=reload runs instead of a restart (xfleet.py); only
        out["reload"] = reload  # when given, so that other units' configs stay as they were
    return out


def _commands(ctx: UnitContext, entries: List[Entry]) -> List[Command]:
    """Each command line split as systemd 252's config_parse_exec splits it
    (``UnitContext.command``: words first, then each word's specifiers;
    tests/integration/test_systemd_words.py)."""
    return [ctx.command(entry).to_json() for entry in entries]


def _environment(ctx: UnitContext) -> Dict[str, str]:
    environment: Dict[str, str] = {}
    for entry in ctx.many(S, "Environment"):
        for word in ctx.split(entry):
            key, eq, value = word.partition("=")
            if not eq or not _ENV_NAME.fullmatch(key):
                ctx.fail(entry, f"{word!r} is not a VAR=value assignment")
            environment[key] = value
    return environment


def _environment_files(ctx: UnitContext) -> List[str]:
    files = []
    for entry in ctx.many(S, "EnvironmentFile"):
        path = ctx.expand(entry)
        if not path.lstrip("-").startswith("/"):
            ctx.fail(entry, f"{path!r} is not an absolute path (prefix - for optional)")
        files.append(path)
    return files


def _working_directory(ctx: UnitContext) -> Optional[str]:
    value = ctx.single(S, "WorkingDirectory")
    if value is not None:
        path = value[1:] if value.startswith("-") else value
        if not (path.startswith("/") or path == "~"):
            ctx.fail(ctx.entry(S, "WorkingDirectory"), f"{value!r} is not an absolute path or ~")
    return value


def _identity(ctx: UnitContext, key: str) -> Optional[str]:
    value = ctx.single(S, key)
    if value is not None and not _USER.fullmatch(value):
        ctx.fail(ctx.entry(S, key), f"{value!r} is not a valid user or group name")
    return value


def _signal(ctx: UnitContext, key: str, default: int) -> int:
    value = ctx.single(S, key)
    if value is None:
        return default
    entry = ctx.entry(S, key)
    number = signal_number(value)
    if number is None:
        ctx.fail(entry, f"unknown signal {value!r}")
    return number


def signal_number(value: str) -> Optional[int]:
    """``SIGTERM``, ``TERM`` or ``15`` -> 15; None if it names no signal."""
    if _numeric(value):
        return _number_in(value, 1, signal.NSIG - 1)
    name = value if value.startswith("SIG") else "SIG" + value
    sig = signal.Signals.__members__.get(name)
    return int(sig) if sig is not None else None


def _timeout(ctx: UnitContext, key: str) -> Optional[float]:
    """Seconds, or None for no timeout (systemd: both 0 and infinity mean none)."""
    seconds = ctx.timespan(S, key, DEFAULT_TIMEOUT_S)
    return None if seconds == 0 or math.isinf(seconds) else seconds


def _choice(ctx: UnitContext, key: str, allowed: Tuple[str, ...], default: str) -> str:
    value = ctx.single(S, key) or default
    if value not in allowed:
        ctx.fail(ctx.entry(S, key), f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _restart_steps(ctx: UnitContext) -> int:
    """RestartSteps= (systemd 254): over how many restarts the delay grows from
    RestartSec= to RestartMaxDelaySec=; 0 (the default) means it does not grow."""
    return ctx.count(S, "RestartSteps", 0, 0, MAX_RESTART_STEPS)


def _restart_max_delay(ctx: UnitContext, restart_s: float) -> Optional[float]:
    """RestartMaxDelaySec= (systemd 254): the longest delay the growth reaches; None for
    infinity, the default (no growth). Like systemd, it only matters together with
    RestartSteps=. A value below RestartSec= is refused here: systemd would quietly
    lower RestartSec= to it, and a unit is better told at submit time."""
    seconds = ctx.timespan(S, "RestartMaxDelaySec", math.inf)
    if math.isinf(seconds):
        return None
    if seconds < restart_s:
        ctx.fail(ctx.entry(S, "RestartMaxDelaySec"),
                 f"{seconds:g}s is shorter than RestartSec= ({restart_s:g}s): the delay "
                 "grows from RestartSec= up to this maximum")
    return seconds


def _restart(ctx: UnitContext, service_type: str) -> str:
    policy = _choice(ctx, "Restart", RESTART_POLICIES, RESTART_POLICY)
    if service_type == "oneshot" and policy in ("always", "on-success"):
        ctx.fail(ctx.entry(S, "Restart"), f"Restart={policy} is not allowed with "
                                          "Type=oneshot (it would run again at once, as "
                                          "systemd refuses it too); use on-failure")
    return policy


def _start_limit_burst(ctx: UnitContext) -> int:
    for section in ("Unit", S):  # [Unit] is where systemd wants it; [Service] is legacy
        if ctx.single(section, "StartLimitBurst") is not None:
            return ctx.count(section, "StartLimitBurst", DEFAULT_START_LIMIT_BURST, 0,
                             MAX_START_LIMIT_BURST)
    return DEFAULT_START_LIMIT_BURST


def _start_limit_interval(ctx: UnitContext) -> float:
    for section, key in (("Unit", "StartLimitIntervalSec"), (S, "StartLimitIntervalSec"),
                         (S, "StartLimitInterval")):
        if ctx.single(section, key) is not None:
            return ctx.finite_timespan(section, key, DEFAULT_START_LIMIT_INTERVAL_S,
                                       " (0 turns the start limit off)")
    return DEFAULT_START_LIMIT_INTERVAL_S


def _success_exit_status(ctx: UnitContext) -> SuccessExitStatus:
    codes: List[int] = []
    signals: List[int] = []
    for entry in ctx.many(S, "SuccessExitStatus"):
        for word in ctx.expand(entry).split():
            if _numeric(word):  # a number is an exit status, as in systemd
                code = _number_in(word, 0, 255)
                if code is None:
                    ctx.fail(entry, f"{word!r} is not an exit status (0-255)")
                codes.append(code)
                continue
            number = signal_number(word)
            if number is None:
                ctx.fail(entry, f"{word!r} is neither an exit status (0-255) nor a signal")
            signals.append(number)
    return {"codes": codes, "signals": signals}


def _numeric(text: str) -> bool:
    """Written as a number (so not a name): it begins with an ASCII digit."""
    return text[:1] in tuple("0123456789")


def _number_in(text: str, lo: int, hi: int) -> Optional[int]:
    """``text`` as a whole number in [lo, hi], or None: for words that may also be
    something else (a signal's name)."""
    try:
        return parse_int(text, lo, hi)
    except NumberError:
        return None


# --- resource limits ---------------------------------------------------------------------
def _umask(ctx: UnitContext) -> Optional[int]:
    """UMask= as systemd's config_parse_mode reads it: an octal mode up to 07777 (leading
    zeros allowed); None where unset, and the driver then uses systemd's default 0022,
    not whatever umask the agent itself runs with."""
    value = ctx.single(S, "UMask")
    if value is None:
        return None
    text = value.strip()
    if not re.fullmatch(r"[0-7]+", text) or int(text, 8) > MAX_MODE:
        ctx.fail(ctx.entry(S, "UMask"), f"{value!r} is not an octal mode from 0000 to "
                                        "07777 (like 0022 or 0027)")
    return int(text, 8)


def limits(ctx: UnitContext) -> Limits:
    """MemoryMax, CPUQuota, CPUWeight, TasksMax, LimitNOFILE: None where unset."""
    out: Limits = {"memory_max": None, "memory_max_percent": None, "cpu_quota": None,
                           "cpu_weight": None, "tasks_max": None, "tasks_max_percent": None,
                           "nofile": None}
    value = ctx.single(S, "MemoryMax")
    if value is not None and value != "infinity":
        entry = ctx.entry(S, "MemoryMax")
        if value.endswith("%"):
            out["memory_max_percent"] = _percent(ctx, entry, value)
        else:
            try:
                size = parse_size(value)
            except ValueError as exc:
                ctx.fail(entry, str(exc))
            if size <= 0:
                ctx.fail(entry, "must be more than 0")
            out["memory_max"] = size
    value = ctx.single(S, "CPUQuota")
    if value is not None:
        entry = ctx.entry(S, "CPUQuota")
        if not value.endswith("%"):
            ctx.fail(entry, f"{value!r}: want a percentage of one CPU, like 20% or 200%")
        quota = _percent(ctx, entry, value, upper=MAX_CPU_QUOTA_PERCENT)
        if quota <= 0:
            ctx.fail(entry, "must be more than 0%")
        out["cpu_quota"] = quota / 100.0  # in CPUs: 200% -> 2.0
    value = ctx.single(S, "CPUWeight")
    if value is not None:
        entry = ctx.entry(S, "CPUWeight")
        out["cpu_weight"] = 0 if value == "idle" else \
            ctx.whole(entry, value, 1, MAX_CPU_WEIGHT)
    value = ctx.single(S, "TasksMax")
    if value is not None and value != "infinity":
        entry = ctx.entry(S, "TasksMax")
        if value.endswith("%"):
            out["tasks_max_percent"] = _percent(ctx, entry, value)
        else:
            out["tasks_max"] = ctx.whole(entry, value, 1, MAX_TASKS)
    value = ctx.single(S, "LimitNOFILE")
    if value is not None:
        out["nofile"] = _rlimit(ctx, ctx.entry(S, "LimitNOFILE"), value)
    return out


def _percent(ctx: UnitContext, entry: Optional[Entry], value: str,
             upper: float = 100.0) -> float:
    """``N%`` -> N, finite and in [0, upper]."""
    return ctx.decimal(entry, value[:-1], 0.0, upper)


def _rlimit(ctx: UnitContext, entry: Optional[Entry], value: str) -> List[Optional[int]]:
    """``N``, ``soft:hard`` or ``infinity`` -> [soft, hard]; None stands for infinity."""
    parts = value.split(":")
    if len(parts) > 2:
        ctx.fail(entry, f"{value!r}: want N, SOFT:HARD or infinity")
    numbers: List[Optional[int]] = []
    for part in parts:
        if part == "infinity":
            numbers.append(None)
        elif _numeric(part):
            numbers.append(ctx.whole(entry, part, 0, MAX_NOFILE))
        else:
            ctx.fail(entry, f"{value!r}: want N, SOFT:HARD or infinity")
    if len(numbers) == 1:
        numbers.append(numbers[0])
    soft, hard = numbers
    if soft is not None and hard is not None and soft > hard:
        ctx.fail(entry, f"{value!r}: the soft limit is above the hard one")
    return numbers
