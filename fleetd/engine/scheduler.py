"""Pick a machine for a unit. Pure: no I/O, no clock, so tests feed it tables.

The walking skeleton's policy: among machines that are up, the one with the fewest
units placed on it; ties go to the name that sorts first, so a plan is reproducible.
Constraints ([X-Fleet]) and resource fit deepen this function, not its callers.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What the scheduler knows of a machine."""

    name: str
    up: bool


def choose(
    unit: str, machines: Sequence[Candidate], load: Dict[str, int]
) -> Tuple[Optional[str], str]:
    """The machine for ``unit`` and why, or None and why none fits."""
    if not machines:
        return None, "no machines are registered"
    up = [m for m in machines if m.up]
    if not up:
        return None, f"no machine is up ({len(machines)} registered, none connected)"
    best = min(up, key=lambda m: (load.get(m.name, 0), m.name))
    return best.name, f"fewest units ({load.get(best.name, 0)}) among {len(up)} machines up"
