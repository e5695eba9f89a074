"""The leader lock of several fleetd on one etcd cluster: a key held by a lease.

``EtcdLock`` is the ``LeaderLock`` (engine/leadership.py) the leadership loop
(engine/leader.py) campaigns for when the registry is etcd. Whoever holds
``<prefix>/leader`` leads; the key is bound to a lease of the holder's, so it goes when
the holder stops renewing, and its create revision is the term's epoch: etcd's revisions
only grow, so a later term always has a larger epoch, which is what the agents' fencing
needs (they refuse a lower one).

Each campaign is a fresh lease and one transaction (put the key if it does not exist),
so a term never outlives its lease and never inherits an old one. A key that is ours
from an earlier lease (a resignation that did not arrive, a campaign whose answer was
lost) is not the lock: its lease is revoked (which deletes it) or, when the revocation
does not arrive, the key is deleted, conditioned on its mod revision so nobody else's
key can go by mistake; then the campaign starts a new term.

TTL: etcd grants whole seconds and no less than its minimum, 1.5 election timeouts
rounded up (2 s with etcd's defaults: asked for 1 s, etcd 3.4.23 grants 2), and its
lessor deletes an expired lease's keys within 0.5 s of the expiry (measured: a 2 s lease
goes after 2.5 s, a 3 s one after 3.49 s). A follower watches the key (``vacated``) and
campaigns as soon as it goes. Measured on 3 members on loopback (bench/leader_lock.py,
5 runs each), from a leader's death to the next leader: TTL 2: 1.9-2.2 s, TTL 3:
2.5-3.3 s, TTL 5: 4.0-4.6 s. But kill -9 of etcd's *raft* leader stalls renewals through
etcd's election (1.9-2.8 s with its 1 s election timeout): a fleetd leader rides that out
only when TTL - margin > TTL/3 + the stall, which TTL 5 did 3 times of 4 and TTL 3 never
(it steps down, and a fleetd leads again 1.0-1.2 s later, in a new term).
``DEFAULT_TTL`` is 3 s: the issue's failover targets (a new leader within ~3 s) need it,
and it is the shortest that leaves the loop's default margin (skew 0.5 s + stop 1 s) room
to renew. An etcd with a shorter election timeout stalls less; a site that values
riding out etcd's own elections over a fast failover sets 5 s or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence, Set, Tuple

from fleetd.engine.leadership import Campaign, LockLost
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import (
    Compare,
    Delete,
    EtcdError,
    EtcdLeaseNotFound,
    Get,
    KeyValue,
    Put,
    RangeResult,
)

DEFAULT_TTL = 3  # s; see the module's docstring
MIN_TTL = 1      # etcd refuses less (and grants its own minimum, 2 s by default, for 1)


def leader_key(prefix: str) -> str:
    """``<prefix>/leader``, one slash between them whatever ``prefix`` ends with."""
    return f"{prefix.rstrip('/')}/leader"


@dataclasses.dataclass(frozen=True)
class LeaderInfo:
    """Who holds the leader key, as its value says: for messages and ``list-servers``.
    ``epoch`` is the key's create revision, ``lease`` its lease; ``error`` says why the
    value could not be read (then name is "?")."""

    name: str
    api: Sequence[str]
    pid: int
    since: float  # wall-clock time the term began, as the holder wrote it
    epoch: int
    lease: int
    error: str = ""

    def describe(self) -> str:
        """"fleetd NAME (pid P, API)" for a message naming the holder."""
        if self.error:
            return f"an unreadable leader key (epoch {self.epoch}: {self.error})"
        where = ", ".join(self.api)
        return f"fleetd {self.name} (pid {self.pid}{', ' + where if where else ''})"


def _text(j: Any, field: str) -> str:
    v = j.get(field)
    if not isinstance(v, str):
        raise ValueError(f"{field!r} is not a string")
    return v


def leader_info(kv: KeyValue) -> LeaderInfo:
    """The holder from the leader key as read. Another program's (or a newer fleetd's)
    value is not trusted: what cannot be read is said in ``error``, never raised."""
    try:
        j = json.loads(kv.value.decode("utf-8"))
        if not isinstance(j, dict):
            raise ValueError("not a JSON object")
        api = j.get("api") or []
        if not isinstance(api, list) or not all(isinstance(a, str) for a in api):
            raise ValueError("'api' is not a list of strings")
        pid, since = j.get("pid"), j.get("since")
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ValueError("'pid' is not a number")
        if not isinstance(since, (int, float)) or isinstance(since, bool) \
                or not math.isfinite(since):
            raise ValueError("'since' is not a time")
        return LeaderInfo(_text(j, "name"), tuple(api), pid, float(since),
                          kv.create_revision, kv.lease)
    except (ValueError, UnicodeDecodeError) as e:
        return LeaderInfo("?", (), 0, 0.0, kv.create_revision, kv.lease, str(e)[:200])


async def read_leader(client: EtcdClient, prefix: str) -> Optional[LeaderInfo]:
    """Who leads now (a quorum read), or None when nobody holds the key."""
    got = await client.get(leader_key(prefix))
    return leader_info(got.kvs[0]) if got.kvs else None


class EtcdLock:
    """``LeaderLock`` on ``<prefix>/leader`` of the etcd cluster ``client`` reaches.

    ``name`` and ``api`` (this fleetd's API addresses) go into the key's value for the
    others to show; ``ttl`` is the lease asked for, in whole seconds (etcd may grant
    more, which only makes the lease outlive this fleetd's deadline by more: the loop
    counts with the TTL asked). ``clock`` is the wall clock written as ``since``.
    """

    def __init__(self, client: EtcdClient, prefix: str, name: str,
                 api: Sequence[str] = (), ttl: int = DEFAULT_TTL, *,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < MIN_TTL:
            raise ValueError(f"leader lock TTL: {ttl!r} is not a whole number of seconds "
                             f">= {MIN_TTL}")
        self.client = client
        self.key = leader_key(prefix)
        self.prefix = prefix
        self.name = name
        self.api = tuple(api)
        self._ttl = ttl
        self._clock = clock
        self.epoch: Optional[int] = None
        self.lease = 0
        # leases of ours that may still hold the key: a campaign whose answer was lost,
        # a term whose resignation did not arrive. A key on one of them is ours.
        self._stale: Set[int] = set()
        self._lost_at = 0  # the revision at which the last campaign found the key held

    @property
    def ttl(self) -> float:
        return float(self._ttl)

    def _value(self) -> bytes:
        return json.dumps({"name": self.name, "api": list(self.api), "pid": os.getpid(),
                           "since": self._clock()}, sort_keys=True).encode()

    async def campaign(self) -> Campaign:
        if self.lease:  # campaigning again while holding: that term is over
            self._stale.add(self.lease)
            self.epoch, self.lease = None, 0
        self._lost_at = 0
        await self._drop_stale()
        lease = await self.client.grant(self._ttl)
        try:
            epoch, holder = await self._take(lease)
        except BaseException:
            self._stale.add(lease)  # the put may have been applied
            raise
        if epoch is not None:
            self.lease, self.epoch = lease, epoch
            return Campaign(epoch)
        self._stale.add(lease)
        await self._drop_stale()
        return Campaign(None, holder)

    async def _take(self, lease: int) -> Tuple[Optional[int], Optional[str]]:
        """Put the key with ``lease`` unless it exists: the epoch, or None and who holds
        it. A key of ours from an older lease (its revocation did not arrive) is deleted,
        conditioned on its mod revision, and the put tried once more."""
        for _ in range(2):
            r = await self.client.txn([Compare.create(self.key, "==", 0)],
                                      [Put(self.key, self._value(), lease)], [Get(self.key)])
            if r.succeeded:
                return r.revision, None
            self._lost_at = r.revision
            got = r.responses[0]
            assert isinstance(got, RangeResult)
            if not got.kvs:  # deleted between the compare and the read: cannot be
                continue
            kv = got.kvs[0]
            if kv.lease not in self._stale:
                return None, leader_info(kv).describe()
            await self.client.txn([Compare.mod(self.key, "==", kv.mod_revision)],
                                  [Delete(self.key)])
        return None, f"{self.key}: an old key of this fleetd's that would not go"

    async def _drop_stale(self) -> None:
        """Revoke the leases of ours that may still be alive, deleting their keys
        (best-effort: they expire anyway, as nobody renews them)."""
        for lease in sorted(self._stale):
            try:
                await self.client.revoke(lease)
            except EtcdLeaseNotFound:
                pass
            except EtcdError:
                continue
            self._stale.discard(lease)

    async def renew(self) -> float:
        if self.epoch is None or not self.lease:
            raise LockLost(f"{self.key}: this fleetd holds no term")
        try:
            ttl = await self.client.keepalive_once(self.lease)
        except EtcdLeaseNotFound:
            raise LockLost(f"{self.key}: etcd says lease {self.lease:x} of epoch "
                           f"{self.epoch} is gone") from None
        if ttl <= 0:
            raise LockLost(f"{self.key}: lease {self.lease:x} has expired")
        got = await self.client.get(self.key)
        if not got.kvs or got.kvs[0].create_revision != self.epoch:
            now = leader_info(got.kvs[0]).describe() if got.kvs else "nobody"
            raise LockLost(f"{self.key} is no longer epoch {self.epoch}'s: "
                           f"held by {now}")
        return float(ttl)

    async def resign(self) -> None:
        """Delete the key if it is still this term's, and end the lease. Best-effort:
        what did not arrive is remembered, so the next campaign cleans it up."""
        if not self.lease:
            return
        lease, epoch = self.lease, self.epoch
        self._stale.add(lease)
        self.epoch, self.lease = None, 0
        if epoch is not None:
            await self.client.txn([Compare.create(self.key, "==", epoch)],
                                  [Delete(self.key)])
        with contextlib.suppress(EtcdLeaseNotFound):
            await self.client.revoke(lease)
        self._stale.discard(lease)

    async def vacated(self) -> None:
        """Return once the leader key is deleted (resigned, or its lease expired) after
        the last lost campaign saw it (``leadership.Vacancy``): a watch from the
        revision after that campaign's, so a deletion in between is not missed. After a
        campaign that failed, or when etcd cannot be watched, it never returns: the
        follower's timer campaigns."""
        if self._lost_at:
            try:
                async with self.client.watch(self.key, prefix=False,
                                             start_revision=self._lost_at + 1) as events:
                    async for event in events:
                        if event.type == "DELETE":
                            return
            except EtcdError:
                pass
        await asyncio.Event().wait()

    async def leader(self) -> Optional[LeaderInfo]:
        """Who leads now (for ``list-servers`` and messages), or None."""
        return await read_leader(self.client, self.prefix)

