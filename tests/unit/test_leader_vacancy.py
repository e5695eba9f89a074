"""A follower campaigns as soon as its lock says the lock was let go (``Vacancy``, what
EtcdLock's watch on the leader key gives), not at its next TTL/3 tick; a lock that
cannot say so, or whose watch fails, leaves the follower on its timer (no spinning).
``decide`` in tables, ``Leadership`` on FakeLocks in simulated time (fleetd.testing.vtime:
the times asserted are the simulation's, exact)."""

from __future__ import annotations

import asyncio
from typing import List, Tuple

from fleetd.engine import leader as L
from fleetd.engine.leader import Leadership, Lost, State, Timing, Vacant, decide
from fleetd.engine.leadership import Vacancy
from fleetd.testing import vtime
from fleetd.testing.leader import FakeLock, FakeStore

TTL = 30.0  # a follower's tick: every 10 s
TIMING = Timing()


def test_vacant_makes_a_follower_campaign_now() -> None:
    waiting = decide(State(), 100.0, Lost(holder="a", sent=100.0), TTL, TIMING)
    assert (waiting.task.action, waiting.task.until) == (L.WAIT, 110.0)
    plan = decide(waiting.state, 102.0, Vacant(), TTL, TIMING)
    assert (plan.task.action, plan.task.reason) == (L.CAMPAIGN, L.VACATED)
    # the next lost campaign is an ordinary one again
    after = decide(plan.state, 102.0, Lost(holder="c", sent=102.0), TTL, TIMING)
    assert (after.task.action, after.task.until) == (L.WAIT, 112.0)
    assert not after.state.vacated


def test_vacant_means_nothing_to_a_leader() -> None:
    state = State(epoch=7, announced=True, deadline=120.0, renew_at=110.0, campaigned=True)
    plan = decide(state, 102.0, Vacant(), TTL, TIMING)
    assert plan.state == state and plan.task.action == L.WAIT


class WatchingLock(FakeLock):
    """A FakeLock that can tell when the store's term ended (as a watch would)."""

    broken = False

    async def vacated(self) -> None:
        if self.broken:
            raise ConnectionError("the watch failed")
        while self.store.current() is not None:
            await asyncio.sleep(0.01)


Log = List[Tuple[float, str, str]]


async def pair(lock_a: FakeLock, lock_b: FakeLock, log: Log) -> Tuple[Leadership, Leadership]:
    loop = asyncio.get_running_loop()

    def node(name: str, lock: FakeLock) -> Leadership:
        async def elected(epoch: int) -> None:
            log.append((loop.time(), name, "elected"))

        async def deposed(reason: str) -> None:
            log.append((loop.time(), name, "deposed"))
        return Leadership(lock, elected, deposed, TIMING, clock=loop.time)
    return node("a", lock_a), node("b", lock_b)


def test_a_follower_is_elected_when_the_leader_resigns_not_at_its_next_tick() -> None:
    async def main() -> Tuple[Log, float]:
        loop = asyncio.get_running_loop()
        store = FakeStore(loop.time)
        a_lock, b_lock = WatchingLock(store, "a", TTL), WatchingLock(store, "b", TTL)
        assert isinstance(b_lock, Vacancy)
        log: Log = []
        a, b = await pair(a_lock, b_lock, log)
        ta = asyncio.ensure_future(a.run())
        await asyncio.sleep(1)
        tb = asyncio.ensure_future(b.run())
        await asyncio.sleep(12)  # b has campaigned twice, lost, and waits for its tick
        next_tick = b.state.campaign_at
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        await a.resign()
        while len(log) < 2:
            await asyncio.sleep(0.01)
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
        return log, next_tick

    log, next_tick = vtime.run(main())
    assert [(n, w) for _, n, w in log] == [("a", "elected"), ("b", "elected")]
    assert log[1][0] < next_tick  # before b's timer would have campaigned


def test_a_failing_watch_leaves_the_follower_on_its_timer() -> None:
    async def main() -> FakeStore:
        loop = asyncio.get_running_loop()
        store = FakeStore(loop.time)
        a_lock, b_lock = WatchingLock(store, "a", TTL), WatchingLock(store, "b", TTL)
        b_lock.broken = True
        log: Log = []
        a, b = await pair(a_lock, b_lock, log)
        ta = asyncio.ensure_future(a.run())
        await asyncio.sleep(1)
        tb = asyncio.ensure_future(b.run())
        await asyncio.sleep(35)
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)
        return store

    store = vtime.run(main())
    campaigns = [t for t, name, what in store.calls if name == "b" and what == "campaign"]
    assert campaigns == [1.0, 11.0, 21.0, 31.0]  # every TTL/3, no more
