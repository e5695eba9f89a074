"""How EtcdRegistry (etcd.py) keeps its cache and commits its writes.

Reads answer from an in-memory cache (etcd_cache.py) loaded with one range at revision
R and fed by a watch from R + 1, so the engine reads a whole pass without a round trip.
Writes are etcd transactions planned from the cache (etcd_writes.py; the key layout is
in etcd_keys.py) and committed with a quorum before they return; then the call waits
until the watch has brought its own change into the cache (read-your-writes; past
``CATCH_UP`` s it reloads instead). A transaction's compares say what the plan was
decided on (the unit table's ``seq/units``, a placement's mod_revision, a unit's
create_revision); when one fails the cache was behind: it is reloaded and the write
planned again, up to ``ATTEMPTS`` times, each after a pause (``backoff``) that grows
and is half random, so two fleetd that keep meeting each other's writes fall out of
step, and a write that meets a burst of another's outlasts it instead of spending its
attempts within it.

Fencing: a write given an ``epoch`` also compares ``create_revision(<prefix>/leader) ==
epoch``; a failure there raises ``NotLeader``.

Exactly once: every transaction also compares and bumps this registry's own
``writers/<id>`` key with a fresh token. When the client cannot tell whether a write
landed (``maybe_applied``: the member died with it), the registry bumps that key again:
if that succeeds the lost write can never apply (its compare is stale) and it is sent
again; if it fails, the key holds either the lost write's token (it landed: success) or
not. So a write is reported done only when it landed, and lands at most once.

Heartbeats (written not at all) and etcd's limits: etcd.py.

Lost quorum: reads go on answering from the cache and ``staleness()`` says since when;
writes raise ``Unavailable`` naming etcd and its endpoints. The watch is opened again
(after a full reload) once a member with a leader answers; a compacted watch reloads too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Callable, List, Optional, Set, Tuple

from fleetd.registry.base import NotFound, NotLeader, RegistryError, Unavailable, Unsure
from fleetd.registry.etcd_cache import Cache
from fleetd.registry.etcd_keys import check_prefix, key, leader_key
from fleetd.registry.etcd_writes import Plan, chunks, size_of
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import (
    Compare,
    EtcdCompacted,
    EtcdError,
    EtcdQuorumLost,
    EtcdUnavailable,
    Event,
    Get,
    Op,
    Put,
    RangeResult,
)

log = logging.getLogger(__name__)
ATTEMPTS = 8  # plans of one write tried, each on a cache reloaded after the last failed
BACKOFF = (0.05, 1.0)  # s: the pause before the 2nd attempt, and the most any pause is
CATCH_UP = 2.0  # s a write waits for the watch to bring its change before reloading
RETRY = 0.5  # s between attempts to reopen a lost watch
SETTLE = 10.0  # s to find out whether a write that may have been applied was: an etcd
# election (a killed raft leader: 1-3 s here) and a request timeout fit; longer only keeps
# a user waiting when there is no quorum, since then no member can say
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default
MAX_TXN_BYTES = 1024 * 1024  # below etcd's --max-request-bytes default (1.5 MiB)


class EtcdStore:
    """The cache, its watch and the transactions of one EtcdRegistry (etcd.py), which
    adds the Registry's methods."""

    def __init__(self, client: EtcdClient, prefix: str = "/fleetd", *,
                 max_txn_ops: int = MAX_TXN_OPS, max_txn_bytes: int = MAX_TXN_BYTES) -> None:
        self.client = client
        self.prefix = check_prefix(prefix)
        self.max_ops = max_txn_ops
        self.max_bytes = max_txn_bytes
        self.id = uuid.uuid4().hex  # this registry's writers/<id> key (exactly once)
        self.cache = Cache(self.prefix)
        self._writer = key(self.prefix, "writers", self.id)
        self._wmod: Optional[int] = 0  # its mod_revision; None: unknown, read it first
        self._lock = asyncio.Lock()
        self._callbacks: List[Callable[[], None]] = []
        self._moved = asyncio.Event()  # set (and replaced) when the cache moves on
        self._own: Set[int] = set()  # revisions of this registry's writes, not yet seen
        self._unclaimed: Set[int] = set()  # seen while a write of ours was in flight
        self._inflight = 0
        self._fired = 0  # the last revision callbacks were called for
        self._loaded = 0  # the revision of the last reload
        self._stale: Optional[Tuple[float, str, bool]] = None  # since, why, quorum lost
        self._task: Optional[asyncio.Task[None]] = None
        self._closed = False

    async def start(self) -> None:
        """Load everything under the prefix and follow it; Unavailable naming etcd when
        it cannot be read (no member answers, or no quorum)."""
        await self.reload()
        self._task = asyncio.ensure_future(self._follow())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(EtcdError):  # one key per registry ever opened
            await asyncio.wait_for(self.client.delete(self._writer), 2.0)

    # -- the store itself ---------------------------------------------------------------

    def staleness(self) -> Optional[str]:
        if self._stale is None:
            return None
        since, why, quorum = self._stale
        at = time.strftime("%H:%M:%S", time.localtime(since))
        what = "no quorum" if quorum else "unreachable"
        return f"etcd: {what} since {at} ({why}); answers may be stale"

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _mark_stale(self, e: BaseException) -> None:
        if self._stale is None:
            self._stale = (time.time(), str(e), isinstance(e, EtcdQuorumLost))

    def _fire(self) -> None:
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:  # one listener's bug must not stop the others or the watch
                log.exception("registry change callback failed")

    async def reload(self) -> None:
        """Everything again with one range (after a compaction, a lost watch, a failed
        compare); Unavailable naming etcd when it cannot be read."""
        try:
            r: RangeResult = await self.client.range(self.prefix + "/")
        except EtcdError as e:
            raise _unavailable(e, "could not read fleetd's state") from e
        self._stale = None  # a linearizable read answered: etcd has its quorum
        if r.revision <= self.cache.revision:
            return  # the cache has everything up to there
        self.cache.load(r.kvs, r.revision)
        self._loaded = r.revision
        self._own = {rev for rev in self._own if rev > r.revision}
        if self._task is not None:
            self._fire()  # what changed meanwhile is not known key by key
        self._tick()

    async def _follow(self) -> None:
        """The watch feeding the cache, opened again (after a reload) when it fails."""
        while not self._closed:
            try:
                async with self.client.watch(self.prefix + "/",
                                             start_revision=self.cache.revision + 1) as w:
                    self._stale = None
                    async for ev in w:
                        self._apply(ev)
            except asyncio.CancelledError:
                raise
            except EtcdCompacted as e:
                log.info("%s", e)
            except Exception as e:  # EtcdError, or a bug: the cache must go on
                log.warning("etcd watch lost: %s", e)
                self._mark_stale(e)
                await asyncio.sleep(RETRY)
            while not self._closed:
                try:
                    await self.reload()
                    break
                except Unavailable:
                    await asyncio.sleep(RETRY)

    def _apply(self, ev: Event) -> None:
        """Take one event. Not a coroutine: the events of one revision come in one watch
        message and are all applied before a waiter on that revision runs."""
        rev = ev.kv.mod_revision
        if rev <= self._loaded:
            return  # the last reload has it (events of one revision come together)
        news = (self.cache.delete(ev.kv.key) if ev.type == "DELETE"
                else self.cache.put(ev.kv))
        self.cache.revision = max(self.cache.revision, rev)
        self._stale = None  # a change committed: etcd has its quorum
        if self._own and min(self._own) < rev:  # (a transaction's events share one)
            self._own = {r for r in self._own if r >= rev}
        if rev in self._own or not news:
            pass
        elif self._inflight:
            self._unclaimed.add(rev)
        elif rev > self._fired:
            self._fired = rev
            self._fire()
        self._tick()

    def _claim(self, rev: int) -> None:
        if rev > self.cache.revision:
            self._own.add(rev)
        self._unclaimed.discard(rev)

    def _tick(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    async def _caught_up(self, rev: int) -> None:
        """Wait until the cache has ``rev`` (the watch brings it); reload past CATCH_UP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        while self.cache.revision < rev and loop.time() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._moved.wait(), deadline - loop.time())
        if self.cache.revision >= rev:
            return
        try:
            await self.reload()
        except Unavailable as e:  # the write is made; only reading it back is late
            log.warning("etcd: cannot read back revision %d: %s", rev, e)

    # -- committing -------------------------------------------------------------------

    async def _write(self, build: Callable[[], Optional[Plan]],
                     epoch: Optional[int] = None) -> None:
        """Plan from the cache and commit; plan again on a reloaded cache when the
        plan's compares failed, or when it found a unit or machine missing (it may have
        been made through another fleetd a moment ago, still on its way here)."""
        async with self._lock:
            for attempt in range(ATTEMPTS):
                try:
                    plan = build()
                except NotFound:
                    if attempt:
                        raise
                    await self.reload()
                    plan = build()
                if plan is None or not (plan.ops or plan.before or plan.after):
                    return
                if await self._commit(plan, epoch):
                    return
                await asyncio.sleep(backoff(attempt))
                await self.reload()
        raise _contention()

    async def _write_each(self, build: Callable[[Set[str]], List[Tuple[str, Plan]]],
                          todo: Set[str], epoch: Optional[int]) -> None:
        """Independent per-unit plans, as few transactions as the limits allow; after a
        failed compare only the units not yet written are planned again."""
        async with self._lock:
            for attempt in range(ATTEMPTS):
                plans = build(todo)
                if not plans:
                    return
                for chunk in chunks(self.max_ops, self.max_bytes, plans):
                    merged = Plan([c for _, p in chunk for c in p.compares],
                                  [o for _, p in chunk for o in p.ops])
                    if not await self._commit(merged, epoch):
                        await asyncio.sleep(backoff(attempt))
                        await self.reload()
                        break
                    todo = todo - {name for name, _ in chunk}
                else:
                    return
        raise _contention()

    async def _commit(self, plan: Plan, epoch: Optional[int]) -> bool:
        """True when the plan landed, False when its compares failed."""
        room = self.max_ops - 2  # the writer's and the leader's compare, the writer's put
        whole = plan.before + plan.ops + plan.after
        if len(whole) <= room and sum(map(size_of, whole)) <= self.max_bytes:
            return await self._txn(plan.compares, whole, epoch)
        if (len(plan.ops) > room or len(plan.compares) > room
                or sum(map(size_of, plan.ops)) > self.max_bytes):
            raise RegistryError(
                f"etcd takes at most {self.max_ops} operations and {self.max_bytes} bytes "
                f"in one transaction (its --max-txn-ops and --max-request-bytes): this "
                f"write needs {len(plan.ops)} operations and "
                f"{sum(map(size_of, plan.ops))} bytes together; make it in smaller batches")
        await self.each(plan.before, epoch)
        if not await self._txn(plan.compares, plan.ops, epoch):
            return False
        try:  # the write is made: a clean-up that fails is no failure of it
            await self.each(plan.after, epoch)
        except RegistryError as e:
            log.warning("etcd: keys nothing reads any more were left behind: %s", e)
        return True

    async def each(self, ops: List[Op], epoch: Optional[int]) -> None:
        """Independent ops without compares, in as few transactions as fit."""
        for chunk in chunks(self.max_ops, self.max_bytes, [("", Plan([], [o])) for o in ops]):
            await self._txn([], [o for _, p in chunk for o in p.ops], epoch)

    async def _txn(self, compares: List[Compare], ops: List[Op],
                   epoch: Optional[int]) -> bool:
        """One transaction, exactly once (module docstring); True when it landed, False
        when ``compares`` failed. NotLeader, Unavailable, RegistryError."""
        while True:
            if self._wmod is None:
                self._wmod = await self._read_writer()
            token = uuid.uuid4().hex
            every = [*compares, Compare.mod(self._writer, "==", self._wmod)]
            if epoch is not None:
                every.append(Compare.create(leader_key(self.prefix), "==", epoch))
            self._inflight += 1
            try:
                res = await self.client.txn(every, [*ops, Put(self._writer, token)],
                                            [Get(leader_key(self.prefix)), Get(self._writer)])
                if res.succeeded:  # before _done: its events are ours, not news
                    self._claim(res.revision)
            except EtcdUnavailable as e:
                if isinstance(e, EtcdQuorumLost):
                    self._mark_stale(e)
                if not e.maybe_applied:
                    raise _unavailable(e, "the write was not made") from e
                landed = await self._settle(token, e)
                log.info("etcd: a write's answer was lost (%s); it %s", e,
                         "landed" if landed else "did not land and never will: sent again")
                if landed is None:
                    continue
                await self._caught_up(landed)
                return True
            except EtcdError as e:
                raise RegistryError(f"etcd refused the write: {e.message}") from e
            finally:
                self._done()
            if res.succeeded:
                self._wmod = res.revision
                self._stale = None
                await self._caught_up(res.revision)
                return True
            lead, mine = (r.kvs[0] if isinstance(r, RangeResult) and r.kvs else None
                          for r in res.responses)
            if epoch is not None and (lead is None or lead.create_revision != epoch):
                holder = (f"epoch {lead.create_revision} leads" if lead else "no one leads")
                raise NotLeader(f"etcd: epoch {epoch} no longer leads ({holder}): "
                                "the write was not made")
            now = mine.mod_revision if mine else 0
            if now != self._wmod:
                self._wmod = now  # (a write of ours it had not heard back from)
                continue
            return False

    def _done(self) -> None:
        self._inflight -= 1
        if not self._inflight and self._unclaimed:
            self._unclaimed.clear()
            self._fire()

    async def _read_writer(self) -> int:
        try:
            r = await self.client.get(self._writer)
        except EtcdError as e:
            raise _unavailable(e, "the write was not made") from e
        return r.kvs[0].mod_revision if r.kvs else 0

    async def _settle(self, token: str, lost: EtcdUnavailable) -> Optional[int]:
        """Whether the write carrying ``token`` landed: its revision, or None when it
        did not and now never will. Unavailable when etcd does not say in SETTLE s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        why: BaseException = lost
        while loop.time() < deadline:
            if self._wmod is None:
                with contextlib.suppress(Unavailable):
                    self._wmod = await self._read_writer()
                continue
            try:
                res = await self.client.txn(
                    [Compare.mod(self._writer, "==", self._wmod)],
                    [Put(self._writer, uuid.uuid4().hex)], [Get(self._writer)])
            except EtcdUnavailable as e:
                why = e
                if e.maybe_applied:  # then the compare of the next try tells
                    continue
                await asyncio.sleep(RETRY)
                continue
            if res.succeeded:
                self._wmod = res.revision
                self._stale = None
                self._claim(res.revision)
                return None
            r = res.responses[0]
            kv = r.kvs[0] if isinstance(r, RangeResult) and r.kvs else None
            self._wmod = kv.mod_revision if kv else 0
            if kv is not None and kv.value == token.encode():
                self._claim(kv.mod_revision)
                return kv.mod_revision
        self._wmod = None
        raise Unsure(f"etcd: the write may or may not have been made; no member "
                          f"could say within {SETTLE:.0f} s ({why})")


def _unavailable(e: EtcdError, what: str) -> Unavailable:
    return Unavailable(f"{e} ({what})")


def backoff(attempt: int) -> float:
    """Seconds to wait after attempt ``attempt`` (0-based) met newer changes: doubling
    from BACKOFF[0] up to BACKOFF[1], half of it fixed and half random ("equal jitter").
    The fixed halves of the ATTEMPTS - 1 pauses add up to ~1.8 s, so a write outlasts
    another fleetd's burst of that long; the random halves part two writers in step."""
    step = min(BACKOFF[1], BACKOFF[0] * 2.0 ** attempt)
    return step / 2 + random.uniform(0, step / 2)


def _contention() -> Unavailable:
    return Unavailable(f"etcd: the write met newer changes {ATTEMPTS} times in a row "
                       "(other fleetd writing the same state); it was not made, try again")

