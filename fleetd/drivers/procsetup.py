"""Limit*= (but LimitNOFILE=, see identity), Nice= and OOMScoreAdjust=: what systemd sets
on a service's process before it execs, set the same way on the exec and java drivers'
programs (issue 14 §1; tests/integration/test_same_process.py compares them with a real
systemd's). Read and checked by fleetd (fleetd.units.process); here only applied.

``step`` is one step of the driver's preexec_fn, run in the forked child as root, before
the switch to User= (raising a hard rlimit, a negative nice or a lower OOM score needs
privilege the user does not have). A unit that sets none of them gets a no-op.
"""

from __future__ import annotations

import os
import resource
from typing import Callable, List, Optional, Tuple

from fleetd.drivers.base import DriverError
from fleetd.wire.unitspec import UnitConfig

OOM_ADJ = "/proc/self/oom_score_adj"
# Linux's numbers of the rlimits Python's resource module may not name (it has no
# RLIMIT_LOCKS): include/uapi/asm-generic/resource.h
LINUX_RLIMITS = {"LOCKS": 10}


def rlimits(config: UnitConfig) -> List[Tuple[int, Tuple[int, int]]]:
    """(resource, (soft, hard)) for each Limit*= of ``config``; None (infinity) becomes
    RLIM_INFINITY. A limit this host's kernel has no resource for is a DriverError."""
    out = []
    for key, pair in sorted((config.get("rlimits") or {}).items()):
        which = getattr(resource, f"RLIMIT_{key}", LINUX_RLIMITS.get(key))
        if not isinstance(which, int):
            raise DriverError(f"Limit{key.capitalize()}=: this host has no RLIMIT_{key}")
        soft, hard = (resource.RLIM_INFINITY if v is None else int(v) for v in pair)
        out.append((which, (soft, hard)))
    return out


def step(config: UnitConfig, oom_score: bool = True) -> Callable[[], None]:
    """The preexec step that sets ``config``'s rlimits, Nice= and OOMScoreAdjust=.
    ``oom_score`` False: not the OOM score - a spare waits at -1000 and its script sets
    the program's (spare.script), so setting it here would undo the spare's."""
    limits = rlimits(config)
    nice: Optional[int] = config.get("nice")
    oom: Optional[int] = config.get("oom_score_adjust") if oom_score else None

    def run() -> None:
        for which, pair in limits:
            resource.setrlimit(which, pair)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if oom is not None:
            fd = os.open(OOM_ADJ, os.O_WRONLY)
            try:
                os.write(fd, str(oom).encode())
            finally:
                os.close(fd)

    return run
