"""``Limit*=`` (but LimitNOFILE=, in service.limits), ``Nice=`` and ``OOMScoreAdjust=``:
what systemd sets on a service's process before it execs, read with systemd 252's syntax
(src/basic/rlimit-util.c, config_parse_nice, config_parse_exec_oom_score_adjust) so that
the exec and java drivers set exactly what systemd would (issue 14 §1, shown against a
real systemd by tests/integration/test_same_process.py). Before, these options were
passed through for Driver=systemd and silently ignored by the other drivers.

Each rlimit is ``N``, ``SOFT:HARD`` or ``infinity`` in the option's own unit: bytes with
K/M/G/... (base 1024) for the sizes, seconds (a time span, rounded up) for LimitCPU=,
microseconds (a time span, a bare number in us) for LimitRTTIME=, a count for the rest;
LimitNICE= is ``+N``/``-N`` (a nice level) or a raw 0..40. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Optional

from fleetd.units.context import UnitContext
from fleetd.units.parser import Entry
from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.wire.numbers import NumberError, parse_float, parse_int

S = "Service"
MAX_SIZE = MAX_RLIMIT = (1 << 63) - 1  # cgroup files, the scheduler and rlim_t: an int64
_SIZE_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                "P": 1 << 50, "E": 1 << 60}


def parse_size(text: str) -> int:
    """systemd sizes: bytes, or K/M/G/T/P/E (base 1024), at most MAX_SIZE. Raises
    ValueError (NumberError for a number out of range)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPEB]?)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a size (like 512M, 2G, or bytes)")
    size = parse_float(m.group(1), 0) * _SIZE_SUFFIX[m.group(2)]
    if size > MAX_SIZE:
        raise NumberError(f"{text!r} is more than 8E (the largest size the kernel takes)")
    return int(size)


def _count(text: str) -> int:
    return parse_int(text, 0, MAX_RLIMIT)


def _seconds(text: str) -> int:
    """systemd's rlimit_parse_sec: a time span, rounded up to whole seconds."""
    return _finite(math.ceil(parse_timespan(text)))


def _usec(text: str) -> int:
    """systemd's rlimit_parse_usec: a time span whose bare numbers are microseconds."""
    if re.fullmatch(r"[0-9]+", text):
        return _count(text)
    return _finite(math.ceil(parse_timespan(text) * 1_000_000))


def _nice(text: str) -> int:
    """systemd's rlimit_parse_nice: ``+N``/``-N`` is a nice level (-20..19, stored as
    20 - N), a bare number the raw limit 0..40."""
    if text[:1] == "+":
        return 20 - parse_int(text[1:], 0, 19)
    if text[:1] == "-":
        return 20 + parse_int(text[1:], 0, 20)
    return parse_int(text, 0, 40)


def _finite(value: float) -> int:
    if math.isinf(value) or value > MAX_RLIMIT:
        raise ValueError("too large; say infinity for no limit")
    return int(value)


# option -> how one of its values is read (its key in config["rlimits"]: CPU, FSIZE, ...)
RLIMITS: Dict[str, Callable[[str], int]] = {
    "LimitCPU": _seconds, "LimitFSIZE": parse_size, "LimitDATA": parse_size,
    "LimitSTACK": parse_size, "LimitCORE": parse_size, "LimitRSS": parse_size,
    "LimitNPROC": _count, "LimitAS": parse_size, "LimitMEMLOCK": parse_size,
    "LimitLOCKS": _count, "LimitSIGPENDING": _count, "LimitMSGQUEUE": parse_size,
    "LimitNICE": _nice, "LimitRTPRIO": _count, "LimitRTTIME": _usec,
}


def rlimits(ctx: UnitContext) -> Dict[str, List[Optional[int]]]:
    """{"CORE": [soft, hard], ...} for each Limit*= set (None: infinity)."""
    out: Dict[str, List[Optional[int]]] = {}
    for option, read in RLIMITS.items():
        value = ctx.single(S, option)
        if value is None or value.strip() == "":
            continue
        out[option[len("Limit"):].upper()] = _rlimit(ctx, ctx.entry(S, option), value.strip(),
                                                      read)
    return out


def _rlimit(ctx: UnitContext, entry: Optional[Entry], value: str,
            read: Callable[[str], int]) -> List[Optional[int]]:
    parts = value.split(":")
    if len(parts) > 2 or "" in parts:
        ctx.fail(entry, f"{value!r}: want N, SOFT:HARD or infinity")
    numbers: List[Optional[int]] = []
    for part in parts:
        if part == "infinity":
            numbers.append(None)
            continue
        try:
            numbers.append(read(part))
        except (ValueError, TimespanError) as exc:  # NumberError is a ValueError
            ctx.fail(entry, f"{value!r}: {exc}")
    if len(numbers) == 1:
        numbers.append(numbers[0])
    soft, hard = numbers
    if hard is not None and (soft is None or soft > hard):
        ctx.fail(entry, f"{value!r}: the soft limit is above the hard one")
    return numbers


def nice(ctx: UnitContext) -> Optional[int]:
    """Nice=: -20 (most favourable) to 19."""
    value = ctx.single(S, "Nice")
    if value is None or value.strip() == "":
        return None
    return _signed(ctx, "Nice", value.strip(), -20, 19)


def oom_score_adjust(ctx: UnitContext) -> Optional[int]:
    """OOMScoreAdjust=: -1000 (never killed) to 1000 (killed first)."""
    value = ctx.single(S, "OOMScoreAdjust")
    if value is None or value.strip() == "":
        return None
    return _signed(ctx, "OOMScoreAdjust", value.strip(), -1000, 1000)


def _signed(ctx: UnitContext, option: str, text: str, lo: int, hi: int) -> int:
    entry = ctx.entry(S, option)
    negative = text.startswith("-")
    digits = text[1:] if text[:1] in "+-" else text
    try:
        number = parse_int(digits, 0, max(-lo, hi))
    except NumberError:
        ctx.fail(entry, f"{text!r}: want a whole number from {lo} to {hi}")
    number = -number if negative else number
    if not lo <= number <= hi:
        ctx.fail(entry, f"{text!r}: want a whole number from {lo} to {hi}")
    return number
