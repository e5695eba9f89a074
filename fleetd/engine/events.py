"""The event bus: every transition fleetd sees, with its reason, kept for a while.

The places that decide a transition publish it here, as they decide it: the engine's
pass (a unit submitted, its desired state changed, placed and why there, rescheduled,
handed over by a drain, a failure counted), the machine sessions (what an agent reports
of a unit: started, exited with its status, restarted, health changed; the machine up,
unreachable, in error) and liveness (a machine lost). What makes an event from those
records is fleetd.engine.transitions (pure); this module only numbers, keeps and serves.

Each event gets an id, growing by one within this fleetd's life. The history is bounded
(``HISTORY_MAX`` events, the oldest dropped first), so a consumer that comes back with
the last id it saw gets every event after it that is still held, and learns how many it
missed when some were dropped meanwhile (``Page.missed``). Ids begin again at 1 when
fleetd restarts (the history is in memory): an ``after`` beyond the last id is read as
"from a fleetd before this one", and the page starts at the oldest held, ``reset`` set.

Why here (the engine's package): the engine publishes, and the daemon above it serves;
the engine may not import the daemon (fleetd/LAYERS.md). It is plain Python and asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fnmatch
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional

HISTORY_MAX = 10000  # events held: ~3 MB at ~300 bytes an event


@dataclasses.dataclass(frozen=True)
class Draft:
    """An event before the bus numbers it: what happened (``kind``), why, to what."""

    kind: str
    reason: str
    unit: Optional[str] = None
    machine: Optional[str] = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    time: float
    kind: str
    reason: str
    unit: Optional[str]
    machine: Optional[str]
    fields: Mapping[str, Any]

    def to_json(self) -> Dict[str, Any]:
        """The event as the API serves it: the fields beside the fixed ones."""
        return {**self.fields, "id": self.id, "time": self.time, "kind": self.kind,
                "reason": self.reason, "unit": self.unit, "machine": self.machine}


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which events a consumer wants: units matching a glob, one machine's."""

    unit: Optional[str] = None  # fnmatch glob, as list-units' arguments
    machine: Optional[str] = None

    def wants(self, e: Event) -> bool:
        if self.unit is not None and (e.unit is None or
                                      not fnmatch.fnmatchcase(e.unit, self.unit)):
            return False
        return self.machine is None or e.machine == self.machine


@dataclasses.dataclass(frozen=True)
class Page:
    """The answer to "what after ``after``": the events, the last id there is, how many
    after ``after`` were dropped before this read (0: nothing missed), and whether
    ``after`` was from an earlier fleetd (ids began again)."""

    events: List[Event]
    last: int
    missed: int = 0
    reset: bool = False


class History:
    """Numbered events, the last ``limit`` of them. Pure: no clock, no loop."""

    def __init__(self, limit: int = HISTORY_MAX) -> None:
        self._held: Deque[Event] = collections.deque(maxlen=limit)
        self.last = 0

    def add(self, draft: Draft, at: float) -> Event:
        self.last += 1
        event = Event(self.last, at, draft.kind, draft.reason, draft.unit, draft.machine,
                      dict(draft.fields))
        self._held.append(event)
        return event

    def after(self, after: int, wanted: Filter = Filter(), limit: Optional[int] = None
              ) -> Page:
        """The held events after id ``after`` that ``wanted`` wants, oldest first; the
        first ``limit`` of them (the consumer asks again from the last it got)."""
        reset = after > self.last
        if reset:
            after = 0
        first = self._held[0].id if self._held else self.last + 1
        missed = max(0, first - after - 1)
        out: List[Event] = []
        for e in self._held:  # ids are consecutive: skip straight to the first wanted
            if e.id > after and wanted.wants(e):
                out.append(e)
                if limit is not None and len(out) >= limit:
                    break
        return Page(out, self.last, missed if after or reset else 0, reset)

    def tail(self, n: int, wanted: Filter = Filter()) -> List[Event]:
        """The last ``n`` held events ``wanted`` wants (``events`` without -f)."""
        out = [e for e in self._held if wanted.wants(e)]
        return out[-n:] if n else []


Publish = Callable[[Draft], object]  # what it returns is not the publisher's


def nowhere(draft: Draft) -> None:
    """The publisher of a part not wired to a bus (tests, a follower's engine)."""


class Bus:
    """The History, fed by ``publish`` and read by long polls (``wait``)."""

    def __init__(self, limit: int = HISTORY_MAX,
                 clock: Callable[[], float] = time.time) -> None:
        self.history = History(limit)
        self.clock = clock
        self._waiters: List[asyncio.Future[None]] = []
        # told of every event as it is published (the metrics count them)
        self.listeners: List[Callable[[Event], object]] = []

    def publish(self, draft: Draft) -> Event:
        event = self.history.add(draft, self.clock())
        for listen in self.listeners:
            listen(event)
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()
        return event

    async def wait(self, after: int, wanted: Filter, timeout: float,
                   limit: Optional[int] = None) -> Page:
        """The page after ``after``; if it holds no wanted event yet, the first that come
        within ``timeout`` seconds (then an empty page)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            page = self.history.after(after, wanted, limit)
            left = deadline - loop.time()
            if page.events or left <= 0:
                return page
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), left)
            except asyncio.TimeoutError:
                return self.history.after(after, wanted, limit)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
