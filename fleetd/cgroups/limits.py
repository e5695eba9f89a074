"""A unit's resource limits, in the units the kernel needs, resolved for one host.

fleetd parses MemoryMax=, CPUQuota=, CPUWeight= and TasksMax= at submit time
(``fleetd.units.service.limits``), but a percentage (``MemoryMax=25%``) can only become
a number on the host that runs the unit, like systemd resolves it on its own machine.
So the agent turns the unit's ``config["limits"]`` into ``Limits`` here, against
``HostSize.probe()``.

LimitNOFILE= (``nofile``) is a per-process rlimit, not a cgroup limit: the driver sets it
with ``resource.setrlimit``; it is not part of ``Limits``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, List, Mapping, Optional

import psutil

from fleetd.wire.numbers import json_float, json_int

DEFAULT_WEIGHT = 100  # systemd's and cgroup v2's default CPUWeight
MAX_WEIGHT = 10000
IDLE_WEIGHT = 0  # CPUWeight=idle
MAX_BYTES = (1 << 63) - 1  # what cgroup files and setrlimit take (an int64)


@dataclasses.dataclass(frozen=True)
class HostSize:
    """What percentages are relative to: physical memory, and the number of tasks the
    kernel allows (systemd's rule: min(kernel.pid_max - 1, kernel.threads-max), as PID 0
    is not a valid pid)."""

    memory_bytes: int
    tasks: int

    @classmethod
    def probe(cls, proc: str = "/proc") -> HostSize:
        def number(name: str) -> int:
            with open(os.path.join(proc, "sys/kernel", name)) as f:
                return int(f.read().strip())

        return cls(memory_bytes=int(psutil.virtual_memory().total),
                   tasks=min(number("pid_max") - 1, number("threads-max")))


@dataclasses.dataclass(frozen=True)
class Limits:
    """None means "no limit". Values are checked on construction: a bad value is a bug
    upstream (the unit parser validates), so it raises ValueError, not a user error."""

    memory_max: Optional[int] = None  # bytes
    cpu_quota: Optional[float] = None  # CPUs: CPUQuota=20% is 0.2, 200% is 2.0
    cpu_weight: Optional[int] = None  # systemd's CPUWeight: 1..10000, 0 for "idle"
    tasks_max: Optional[int] = None  # processes + threads

    def __post_init__(self) -> None:
        if self.memory_max is not None and self.memory_max <= 0:
            raise ValueError(f"memory_max must be positive, not {self.memory_max}")
        if self.cpu_quota is not None and not (0 < self.cpu_quota < math.inf):
            raise ValueError(f"cpu_quota must be positive and finite, not {self.cpu_quota}")
        if self.cpu_weight is not None and not IDLE_WEIGHT <= self.cpu_weight <= MAX_WEIGHT:
            raise ValueError(f"cpu_weight must be 0 (idle) to {MAX_WEIGHT}, "
                             f"not {self.cpu_weight}")
        if self.tasks_max is not None and self.tasks_max < 1:
            raise ValueError(f"tasks_max must be at least 1, not {self.tasks_max}")

    @classmethod
    def from_config(cls, limits: Mapping[str, Any], host: Optional[HostSize] = None) -> Limits:
        """From a unit's ``config["limits"]`` (see ``fleetd.units.service.limits``).
        ``host`` is probed only if a percentage needs it. Every value is read as the
        JSON number it must be (NumberError, a ValueError, otherwise): never a NaN, a
        string or ``true``, which ``float()``/``int()`` would let through."""
        memory_max = _int(limits.get("memory_max"), MAX_BYTES)
        tasks_max = _int(limits.get("tasks_max"), MAX_BYTES)
        memory_percent = _number(limits.get("memory_max_percent"), 100.0)
        tasks_percent = _number(limits.get("tasks_max_percent"), 100.0)
        if memory_percent is not None or tasks_percent is not None:
            host = host or HostSize.probe()
            if memory_percent is not None:
                memory_max = _scale(host.memory_bytes, memory_percent, "MemoryMax")
            if tasks_percent is not None:
                tasks_max = _scale(host.tasks, tasks_percent, "TasksMax")
        return cls(memory_max=memory_max,
                   cpu_quota=_number(limits.get("cpu_quota"), None),
                   cpu_weight=_int(limits.get("cpu_weight"), MAX_WEIGHT),
                   tasks_max=tasks_max)

    def requested(self) -> List[str]:
        """The names of the limits that are set."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def describe(self, names: Optional[List[str]] = None) -> str:
        """In the unit file's words (``MemoryMax=64M CPUQuota=20%``), for messages users
        read next to their unit file."""
        words = []
        for name in names if names is not None else self.requested():
            value = getattr(self, name)
            if value is None:
                continue
            if name == "memory_max":
                words.append(f"MemoryMax={format_size(value)}")
            elif name == "cpu_quota":
                words.append(f"CPUQuota={value * 100:g}%")
            elif name == "cpu_weight":
                words.append(f"CPUWeight={'idle' if value == IDLE_WEIGHT else value}")
            else:
                words.append(f"TasksMax={value}")
        return " ".join(words)


def format_size(size: int) -> str:
    """Bytes the way systemd shows them: the largest exact K/M/G/T suffix."""
    for suffix, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def _int(value: Any, hi: int) -> Optional[int]:
    return json_int(value, 0, hi) if value is not None else None


def _number(value: Any, hi: Optional[float]) -> Optional[float]:
    return json_float(value, 0.0, hi) if value is not None else None


def _scale(total: int, percent: float, option: str) -> int:
    value = int(total * percent / 100.0)
    if value < 1:
        raise ValueError(f"{option}={percent:g}% of {total} is 0 on this host")
    return value
