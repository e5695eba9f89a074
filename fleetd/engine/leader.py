"""The leadership loop: campaign for the ``LeaderLock``, renew it, step down in time.

Patroni's rule: a leader that cannot renew its lock stops leading *before* the lock can
expire, so no other fleetd can be elected while this one still drives hosts. The
deadline is the last confirmed renewal's send time + the TTL the store confirmed - a
margin (``Timing.margin``: the clock skew between this fleetd and the store over one TTL,
plus the time the daemon takes to stop its engine and sessions), on the monotonic clock.
The send time, not the answer's: the store restarted the TTL when it received the
request, which is no earlier than when it was sent.

Plan, then act: ``decide`` is pure, from (state, now, the last call's result) to the
next state and one ``Task`` (campaign, renew, lead, step down, resign, give up or wait)
with a reason constant; ``Leadership.run`` carries the task out and feeds its result
back. A call to the lock is bounded by the time its answer stays useful: a renewal by
the deadline (at which the loop steps down, answered or not), a campaign by the time
its lock would be good for (TTL - margin).

Renewals go every TTL/3; a failed one is retried every ``retry_s`` until the deadline.
A follower campaigns every TTL/3, and at once when a lock that can say so
(``leadership.Vacancy``: etcd's watch on the leader key) says the lock was let go or
expired: a leader's death is then seen when its lease ends, not up to TTL/3 later.
``on_elected(epoch)`` starts the engine and sessions
of a new term; ``on_deposed(reason)`` must stop them (the margin gives it ``stop_s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import Any, Awaitable, Callable, Optional, Union

from fleetd.engine.leadership import LeaderLock, LeaseHeld, LockLost, Vacancy

log = logging.getLogger("fleetd.leader")

# what a Task does
CAMPAIGN = "campaign"
RENEW = "renew"
LEAD = "lead"            # call on_elected(epoch)
STEP_DOWN = "step down"  # call on_deposed(reason), then resign
RESIGN = "resign"        # let a lock go that was never led with
GIVE_UP = "give up"      # an impatient fleetd (one on a FileLock) refuses to start
WAIT = "wait"

# why
FIRST = "no campaign yet"
CAMPAIGN_DUE = "the lock was held by another fleetd or could not be asked; trying again"
VACATED = "the lock was let go or expired; campaigning at once"
ELECTED = "won the lock"
RENEW_DUE = "a renewal is due (every TTL/3)"
RENEW_RETRY = "the last renewal failed; retrying before the deadline"
LEADING = "leading; waiting for the next renewal"
FOLLOWING = "another fleetd holds the lock"
UNASKED = "the lock could not be asked; waiting to campaign again"
EXPIRING = "no renewal confirmed in time: the lock could expire before the next one"
LOCK_LOST = "the store says the lock is no longer this fleetd's"
ELECTED_LATE = "the lock was won too late to lead before it could expire"
HELD = "the lock is held by another fleetd"

# A deadline, renewal or campaign due within this many seconds is due now: timers fire
# no finer, and a wait for less could spin on a clock that cannot count it. Early, so a
# leader steps down up to 1 ms before its deadline, never after.
EARLY = 0.001


@dataclasses.dataclass(frozen=True)
class Timing:
    """How early a leader steps down and how often it retries. ``margin`` = skew_s +
    stop_s must leave room for a renewal and a retry inside a TTL: less than 2/3 of it.
    ``patient``: a follower waits for the lock; an impatient one gives up (``LeaseHeld``)
    at its first lost campaign, as one fleetd on a FileLock does."""

    skew_s: float = 0.5
    stop_s: float = 1.0
    retry_s: float = 0.5
    patient: bool = True

    @property
    def margin(self) -> float:
        return self.skew_s + self.stop_s

    def check(self, ttl: float) -> None:
        if min(self.skew_s, self.stop_s) < 0 or self.retry_s <= 0:
            raise ValueError(f"negative margins or no retry interval: {self}")
        if not self.margin < ttl * 2 / 3:
            raise ValueError(f"a lock TTL of {ttl:g}s leaves no time to renew within the "
                             f"margin of {self.margin:g}s (skew + stop): make it > "
                             f"{self.margin * 1.5:g}s")


@dataclasses.dataclass(frozen=True)
class State:
    """Where the loop stands, on the monotonic clock. ``epoch`` is None for a follower;
    a leader's term is ``announced`` once on_elected was called."""

    epoch: Optional[int] = None
    announced: bool = False
    deadline: float = -math.inf     # step down by then
    renew_at: float = -math.inf     # the next renewal
    campaign_at: float = -math.inf  # a follower's next campaign
    holder: Optional[str] = None    # who holds the lock, as last heard (follower)
    failures: int = 0               # calls failed in a row
    error: Optional[str] = None     # the last failure
    campaigned: bool = False
    vacated: bool = False           # the next campaign is early: the lock was let go


@dataclasses.dataclass(frozen=True)
class Won:
    epoch: int
    ttl: float
    sent: float


@dataclasses.dataclass(frozen=True)
class Lost:
    holder: Optional[str]
    sent: float


@dataclasses.dataclass(frozen=True)
class Renewed:
    ttl: float
    sent: float


@dataclasses.dataclass(frozen=True)
class Failed:
    """A campaign or renewal that raised or was not answered in time. ``lost``: the
    store said the lock is not ours (``LockLost``), which no retry changes."""

    error: str
    sent: float
    lost: bool = False


@dataclasses.dataclass(frozen=True)
class Vacant:
    """The lock says it may have become free (``Vacancy.vacated`` returned)."""


Result = Union[None, Won, Lost, Renewed, Failed, Vacant]


@dataclasses.dataclass(frozen=True)
class Task:
    """One thing to do. ``until``: when to wake (WAIT), or how long the call's answer
    stays useful (CAMPAIGN, RENEW). ``epoch``: the term concerned (LEAD, STEP_DOWN,
    RESIGN). ``detail``: the last error or holder, for the log."""

    action: str
    reason: str
    until: float = math.inf
    epoch: Optional[int] = None
    detail: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Plan:
    state: State
    task: Task


def absorb(state: State, now: float, result: Result, ttl: float, timing: Timing) -> State:
    """The state once ``result`` (the last call's answer) is known."""
    every = ttl / 3
    if isinstance(result, Won):
        return State(epoch=result.epoch, deadline=result.sent + result.ttl - timing.margin,
                     renew_at=result.sent + every, campaigned=True)
    if isinstance(result, Lost):
        return State(holder=result.holder, campaign_at=now + every, campaigned=True)
    if isinstance(result, Renewed):
        if state.epoch is None:
            return state
        return dataclasses.replace(state, deadline=result.sent + result.ttl - timing.margin,
                                   renew_at=result.sent + every, failures=0, error=None)
    if isinstance(result, Failed):
        failed = dataclasses.replace(state, failures=state.failures + 1, error=result.error,
                                     campaigned=True)
        if state.epoch is None:
            return dataclasses.replace(failed, campaign_at=now + timing.retry_s)
        if result.lost:
            return dataclasses.replace(failed, deadline=-math.inf)
        return dataclasses.replace(failed, renew_at=now + timing.retry_s)
    if isinstance(result, Vacant) and state.epoch is None:
        return dataclasses.replace(state, campaign_at=now, vacated=True)
    return state


def decide(state: State, now: float, result: Result, ttl: float, timing: Timing) -> Plan:
    """The next task and the state it leaves, from the state, the time and the last
    call's result. Pure: the table tests drive it with a fake clock."""
    state = absorb(state, now, result, ttl, timing)
    every = ttl / 3
    due = now + EARLY
    if state.epoch is not None:
        if due >= state.deadline:
            follower = State(campaign_at=now + every, campaigned=True, failures=state.failures,
                             error=state.error)
            if not state.announced:
                return Plan(follower, Task(RESIGN, ELECTED_LATE, epoch=state.epoch))
            lost = isinstance(result, Failed) and result.lost
            return Plan(follower, Task(STEP_DOWN, LOCK_LOST if lost else EXPIRING,
                                       epoch=state.epoch, detail=state.error))
        if not state.announced:
            return Plan(dataclasses.replace(state, announced=True),
                        Task(LEAD, ELECTED, epoch=state.epoch))
        if due >= state.renew_at:
            why = RENEW_RETRY if state.failures else RENEW_DUE
            return Plan(state, Task(RENEW, why, until=state.deadline - EARLY, epoch=state.epoch,
                                    detail=state.error))
        return Plan(state, Task(WAIT, RENEW_RETRY if state.failures else LEADING,
                                until=min(state.renew_at, state.deadline - EARLY),
                                epoch=state.epoch,
                                detail=state.error))
    if isinstance(result, Lost) and not timing.patient:
        return Plan(state, Task(GIVE_UP, HELD, detail=result.holder))
    if due >= state.campaign_at:
        why = VACATED if state.vacated else CAMPAIGN_DUE if state.campaigned else FIRST
        return Plan(dataclasses.replace(state, vacated=False),
                    Task(CAMPAIGN, why, until=now + ttl - timing.margin))
    why = UNASKED if state.failures else FOLLOWING
    return Plan(state, Task(WAIT, why, until=state.campaign_at,
                            detail=state.error if state.failures else state.holder))


class _Unanswered(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Status:
    """For messages and ``list-servers``: leading (with its epoch, since a wall-clock
    time), or following whom."""

    leading: bool
    epoch: Optional[int]
    since: Optional[float]
    holder: Optional[str]


class Leadership:
    """Runs ``decide``'s tasks against a ``LeaderLock`` until cancelled.

    ``on_elected`` and ``on_deposed`` are awaited in the loop: nothing else happens
    meanwhile, so on_deposed's time to stop sessions is what ``Timing.stop_s`` must
    cover. When the daemon stops, it cancels ``run``, stops its sessions, then calls
    ``resign`` so another fleetd need not wait out the TTL. An exception from either
    callback ends ``run`` unresigned (the lock then expires). ``clock`` and ``sleep``
    (monotonic seconds) are for tests' skewed clocks.
    """

    def __init__(self, lock: LeaderLock, on_elected: Callable[[int], Awaitable[None]],
                 on_deposed: Callable[[str], Awaitable[None]], timing: Optional[Timing] = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.lock = lock
        self.timing = timing or Timing()
        self.timing.check(lock.ttl)
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._clock = clock
        self._sleep = sleep
        self.state = State()
        self._since: Optional[float] = None

    def status(self) -> Status:
        leading = self.state.epoch is not None and self.state.announced
        return Status(leading, self.state.epoch if leading else None,
                      self._since if leading else None, self.state.holder)

    async def run(self) -> None:
        result: Result = None
        while True:
            now = self._clock()
            plan = decide(self.state, now, result, self.lock.ttl, self.timing)
            self.state, task, result = plan.state, plan.task, None
            if task.action == WAIT:
                if self.state.epoch is None and isinstance(self.lock, Vacancy):
                    result = await self._follow(self.lock, task.until - now)
                else:
                    await self._pause(task.until - now)
            elif task.action == CAMPAIGN:
                result = await self._campaign(task.until)
            elif task.action == RENEW:
                result = await self._renew(task.until)
            elif task.action == LEAD:
                assert task.epoch is not None
                log.info("leading: epoch %d", task.epoch)
                self._since = time.time()
                await self._on_elected(task.epoch)
            elif task.action == STEP_DOWN:
                log.warning("stepping down from epoch %s: %s%s", task.epoch, task.reason,
                            f" ({task.detail})" if task.detail else "")
                self._since = None
                await self._on_deposed(task.reason)
                await self._let_go()
            elif task.action == RESIGN:
                log.warning("resigning epoch %s unannounced: %s", task.epoch, task.reason)
                await self._let_go()
            elif task.action == GIVE_UP:
                holder = task.detail or "another fleetd"
                raise LeaseHeld(f"the leader lock is held by {holder}", holder=holder)
            else:  # pragma: no cover - decide returns only the actions above
                raise AssertionError(task)

    async def resign(self) -> None:
        """Let the lock go now: the daemon cancelled ``run`` and stopped its sessions.
        Bounded by ``Timing.stop_s`` (a lock not resigned expires). A ``run`` started
        again campaigns after TTL/3, giving the others the first chance."""
        was = self.state.epoch
        self.state = State(campaign_at=self._clock() + self.lock.ttl / 3, campaigned=True)
        self._since = None
        if was is not None:
            await self._let_go()

    async def _pause(self, seconds: float) -> None:
        if math.isinf(seconds):
            await asyncio.Event().wait()
        await self._sleep(max(0.0, seconds))

    async def _follow(self, lock: Vacancy, seconds: float) -> Result:
        """Wait ``seconds``, or less when the lock says it was vacated (then Vacant).
        A ``vacated`` that fails is ignored: the timer campaigns."""
        watch = asyncio.ensure_future(lock.vacated())
        timer = asyncio.ensure_future(self._pause(seconds))
        try:
            await asyncio.wait({watch, timer}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done() and not watch.cancelled() and watch.exception() is not None:
                log.warning("watching the leader lock failed: %s", watch.exception())
                await timer
                return None
        finally:
            watch.cancel()
            timer.cancel()
        return Vacant() if watch.done() and not watch.cancelled() else None

    async def _campaign(self, until: float) -> Result:
        sent = self._clock()
        try:
            won = await self._bounded(self.lock.campaign(), until)
        except _Unanswered:
            return Failed("the campaign was not answered in time", sent)
        except Exception as exc:
            log.warning("campaign failed: %s", exc)
            return Failed(f"campaign failed: {exc}", sent)
        if won.epoch is None:
            return Lost(won.holder, sent)
        return Won(won.epoch, self.lock.ttl, sent)

    async def _renew(self, until: float) -> Result:
        sent = self._clock()
        try:
            ttl = await self._bounded(self.lock.renew(), until)
        except _Unanswered:
            return Failed("the renewal was not answered before the deadline", sent)
        except LockLost as exc:
            return Failed(str(exc), sent, lost=True)
        except Exception as exc:
            log.warning("renewal failed: %s", exc)
            return Failed(f"renewal failed: {exc}", sent)
        return Renewed(float(ttl), sent)

    async def _let_go(self) -> None:
        try:
            await self._bounded(self.lock.resign(), self._clock() + self.timing.stop_s)
        except _Unanswered:
            log.warning("could not resign the leader lock: not answered within %gs",
                        self.timing.stop_s)
        except Exception as exc:  # the lock expires on its own
            log.warning("could not resign the leader lock: %s", exc)

    async def _bounded(self, call: Awaitable[Any], until: float) -> Any:
        """``call``'s answer, or _Unanswered once ``until`` (this loop's clock) passed;
        the call is then cancelled."""
        job = asyncio.ensure_future(call)
        if math.isinf(until):
            return await job
        timer = asyncio.ensure_future(self._sleep(max(0.0, until - self._clock())))
        try:
            await asyncio.wait({job, timer}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this loop was cancelled: so is the call
            timer.cancel()
            job.cancel()
            raise
        timer.cancel()
        if not job.done():
            job.cancel()
            raise _Unanswered()
        return job.result()
