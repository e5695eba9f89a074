"""``[X-Update]``: how new content reaches a unit's running copies (a rolling update).

Changing the content of a template whose instances run rolls the instances over to it
(engine/rollout.py decides each step; fleet, and fleetd before this, changed every
copy at the same moment, so a deploy was an outage):

``MaxParallel=``         copies that change at a time (default 1)
``MinHealthySec=``       how long a new copy must run, passing its ``[X-Check]`` if it has
                         one, before the next one changes (default 10s)
``HealthyDeadlineSec=``  a new copy not healthy this long after it changed has failed
                         (default 5min); a failure (start limit, check) fails it at once
``AutoRevert=``          after a failed copy, the copies already changed go back to the
                         previous content, one healthy step at a time (default no: the
                         rollout stops where it is and waits for new content)

The options are read from the content being rolled out (the new one), so a deploy can
change how it is itself deployed. Validated at submit time like every other option.
"""

from __future__ import annotations

import dataclasses

from fleetd.units.context import UnitContext

X = "X-Update"
KNOWN = ("MaxParallel", "MinHealthySec", "HealthyDeadlineSec", "AutoRevert")
MAX_PARALLEL = 10000


@dataclasses.dataclass(frozen=True)
class UpdatePolicy:
    """A rollout's pace and what happens when a new copy fails. Pure data, hashable."""

    max_parallel: int = 1
    min_healthy_s: float = 10.0
    healthy_deadline_s: float = 300.0
    auto_revert: bool = False


def policy(ctx: UnitContext) -> UpdatePolicy:
    ctx.check_known(X, KNOWN)
    hint = " (a rollout must know when to go on)"
    min_healthy = ctx.finite_timespan(X, "MinHealthySec", 10.0, hint)
    deadline = ctx.finite_timespan(X, "HealthyDeadlineSec", 300.0, hint)
    if deadline <= min_healthy:
        ctx.fail(ctx.entry(X, "HealthyDeadlineSec") or ctx.entry(X, "MinHealthySec"),
                 f"HealthyDeadlineSec= ({deadline:g}s) must be longer than MinHealthySec= "
                 f"({min_healthy:g}s): a copy could never be healthy in time")
    return UpdatePolicy(
        max_parallel=ctx.count(X, "MaxParallel", 1, 1, MAX_PARALLEL),
        min_healthy_s=min_healthy,
        healthy_deadline_s=deadline,
        auto_revert=ctx.boolean(X, "AutoRevert", False),
    )
