"""What a pass does with a placed unit that failed, or whose machine is lost and fenced.

Fleet had neither; both are decided while a pass keeps placed units (engine/reconciler.py,
step 1), and both may only say "not yet" and when to look again, since nothing else
would wake the engine:

* **failed units** (the agent gave up on one: start limit hit, or its health check ended
  it) move by their ``[X-Fleet]`` reschedule policy: after a delay that grows per
  attempt, while attempts are left in the interval, to a machine where they have not
  failed lately if there is one (else back where they failed, as a fresh start). With
  no attempts left they stay failed where they are, saying so, until old failures
  age out of the interval.
* **fencing**: a lost machine's unit with ``FenceAfterSec=`` moves only once the machine
  has been silent long enough that its agent has surely stopped it, so two copies
  never run.
"""

from __future__ import annotations

from fleetd.engine.capacity import Host
from fleetd.engine.pass_state import PassState
from fleetd.engine.views import UnitView
from fleetd.units.xfleet import Reschedule

# why a unit leaves (or, fenced, will leave) a machine that fell silent past its TTL
LOST = "machine {machine} was lost ({why})"


def fenced_there(p: PassState, u: UnitView, host: Host) -> bool:
    """A lost machine's unit with FenceAfterSec= stays placed there until the machine
    has been silent long enough that its agent has surely stopped it."""
    wait = u.req.fence_wait_s
    if wait is None or host.silent_s >= wait:
        return False
    lost = LOST.format(machine=host.name, why=host.lost)
    p.noted[u.name] = (f"{lost}; it moves once its fenced copy there is surely stopped "
                       f"({wait:g}s of silence)")
    p.wake(p.now + wait - host.silent_s)
    return True


def after_failure(p: PassState, u: UnitView) -> None:
    """Failed where it is placed: leave now, later (the policy's delay), or not at all
    (no attempts left in the interval); the unit's reason says which."""
    failed = u.failed
    assert failed is not None
    policy = u.req.reschedule
    window = policy.counted(u.failures, p.now)
    earlier = [f for f in window if f.at < failed.at]
    used = len(earlier)
    what = f"failed on {failed.machine}: {failed.reason}"
    if policy.attempts is not None and used >= policy.attempts:
        if policy.attempts == 0:
            p.noted[u.name] = f"{what}; RescheduleAttempts=0 keeps it there"
            return
        p.noted[u.name] = (f"{what}; not moved: all {policy.attempts} reschedule "
                           f"attempts in {policy.interval()} used")
        p.wake(earlier[0].at + policy.interval_s)
        return
    attempt = f"reschedule attempt {used + 1} of {_limit(policy)}"
    due = failed.at + policy.delay(used)
    if p.now < due:
        p.noted[u.name] = f"{what}; {attempt} in {policy.delay(used):g}s"
        p.wake(due)
        return
    p.left[u.name] = f"{what} ({attempt})"
    p.avoid[u.name] = frozenset(f.machine for f in window)


def _limit(policy: Reschedule) -> str:
    return "unlimited" if policy.attempts is None else str(policy.attempts)
