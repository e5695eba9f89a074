"""A leader lock store in memory, its locks, and fleetd clocks that drift.

``FakeStore`` plays etcd's part for the leadership loop (engine/leader.py): one lock,
whose holder's lease ends ``ttl`` seconds after the store last received its renewal,
on the store's clock (the true time of a simulation: ``loop.time()`` of a
fleetd.testing.vtime loop). Each acquisition is a new term with a larger epoch, as
etcd's create revision would be. ``FakeLock`` is one fleetd's ``LeaderLock`` on it,
which a test makes slow (``latency``, each way), failing (``fail_renewals``,
``fail_campaigns``), cut off (``cut``/``heal``: calls wait, and reach the store only once
healed, unless cancelled first), or robbed (``FakeStore.take``). ``SkewedClock`` is a
fleetd's monotonic clock: an offset and a rate against the true time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

from fleetd.engine.leadership import Campaign, LockLost


@dataclasses.dataclass
class Term:
    holder: str
    session: int                   # which FakeLock: a restarted fleetd is another one
    epoch: int
    expires: float                 # when the lease ends unless renewed (store's clock)
    ended: Optional[float] = None  # when it ended: expired, resigned or taken


class FakeStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.revision = 0
        self.terms: Dict[int, Term] = {}
        self._current: Optional[Term] = None
        self.calls: List[Tuple[float, str, str]] = []  # (time, lock, what) as received
        self.sessions = 0

    def current(self) -> Optional[Term]:
        """The term in force now (an expired one ends here)."""
        term = self._current
        if term is not None and self.clock() >= term.expires:
            term.ended = term.expires
            self._current = None
        return self._current

    def session(self) -> int:
        self.sessions += 1
        return self.sessions

    def acquire(self, name: str, session: int, ttl: float) -> Campaign:
        """The lock for ``ttl`` from now in a new term, or who holds it. Its holder
        campaigning again (after a resignation that did not arrive) ends its term and
        starts the next."""
        self.calls.append((self.clock(), name, "campaign"))
        term = self.current()
        if term is not None and term.session == session:
            term.ended = self.clock()
            self._current = term = None
        if term is not None:
            return Campaign(None, term.holder)
        return Campaign(self._new_term(name, session, ttl).epoch)

    def renew(self, name: str, session: int, ttl: float) -> float:
        self.calls.append((self.clock(), name, "renew"))
        term = self.current()
        if term is None or term.session != session:
            raise LockLost(f"{name} holds no term")
        term.expires = self.clock() + ttl
        return ttl

    def release(self, name: str, session: int) -> None:
        self.calls.append((self.clock(), name, "resign"))
        term = self.current()
        if term is not None and term.session == session:
            term.ended = self.clock()
            self._current = None

    def take(self, name: str, ttl: float) -> int:
        """Someone else takes the lock now, whoever held it (an operator, a bug)."""
        term = self.current()
        if term is not None:
            term.ended = self.clock()
            self._current = None
        return self._new_term(name, self.session(), ttl).epoch

    def _new_term(self, name: str, session: int, ttl: float) -> Term:
        self.revision += 1
        term = Term(name, session, self.revision, self.clock() + ttl)
        self.terms[term.epoch] = self._current = term
        return term


class FakeLock:
    def __init__(self, store: FakeStore, name: str, ttl: float = 3.0) -> None:
        self.store = store
        self.name = name
        self._ttl = ttl
        self.session = store.session()
        self.latency = 0.0                # seconds each way, store's clock
        self.fail_renewals: float = 0     # so many renewals raise (math.inf: all of them)
        self.fail_campaigns: float = 0
        self._reachable = asyncio.Event()
        self._reachable.set()

    @property
    def ttl(self) -> float:
        return self._ttl

    def cut(self) -> None:
        self._reachable.clear()

    def heal(self) -> None:
        self._reachable.set()

    async def _there(self) -> None:
        await self._reachable.wait()
        if self.latency:
            await asyncio.sleep(self.latency)

    async def _back(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        await self._reachable.wait()

    async def campaign(self) -> Campaign:
        await self._there()
        if self.fail_campaigns:
            self.fail_campaigns -= 1
            raise ConnectionError("injected campaign failure")
        won = self.store.acquire(self.name, self.session, self._ttl)
        await self._back()
        return won

    async def renew(self) -> float:
        await self._there()
        if self.fail_renewals:
            self.fail_renewals -= 1
            self.store.calls.append((self.store.clock(), self.name, "renew refused"))
            raise ConnectionError("injected renewal failure")
        ttl = self.store.renew(self.name, self.session, self._ttl)
        await self._back()
        return ttl

    async def resign(self) -> None:
        await self._there()
        self.store.release(self.name, self.session)
        await self._back()


class SkewedClock:
    """A fleetd's monotonic clock: ``offset + rate * true time``; its ``sleep`` lasts
    that clock's seconds."""

    def __init__(self, true_time: Callable[[], float], offset: float = 0.0,
                 rate: float = 1.0) -> None:
        if rate <= 0 or math.isinf(rate):
            raise ValueError(f"rate {rate}")
        self.true_time = true_time
        self.offset = offset
        self.rate = rate

    def now(self) -> float:
        return self.offset + self.rate * self.true_time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.rate)


class Held:
    """A ``LeaderLock`` that is always this fleetd's: every campaign wins the next term
    from ``epoch`` on, and it never expires (a Daemon in a unit test leads at once)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch - 1

    @property
    def ttl(self) -> float:
        return math.inf

    async def campaign(self) -> Campaign:
        self.epoch += 1
        return Campaign(self.epoch)

    async def renew(self) -> float:
        return math.inf

    async def resign(self) -> None:
        pass
