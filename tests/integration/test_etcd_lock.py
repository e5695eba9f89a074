"""The etcd leader lock (fleetd.engine.etcd_lock) and the server roster
(fleetd.engine.roster) against real etcd members (Debian's etcd-server 3.4), and the
real leadership loop (fleetd.engine.leader) driving two locks.

Time is only ever used for order here: when a test needs "A happened before B", it
records both on the monotonic clock and compares them; how long things take is
bench/leader_lock.py's business.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Awaitable, Callable, Coroutine, Iterator, List, Optional, Tuple, TypeVar

import pytest
from etcdkit import EtcdCluster, etcd_cluster, free_port

from fleetd.engine.etcd_lock import EtcdLock, leader_key, read_leader
from fleetd.engine.leader import Leadership, Timing
from fleetd.engine.leadership import LockLost
from fleetd.engine.roster import ETCD, FLEETD, NameInUse, Roster, ServerInfo, list_servers
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import EtcdError, EtcdUnavailable, Put

pytestmark = pytest.mark.etcd
T = TypeVar("T")
Log = List[Tuple[float, str, str, Any]]  # (monotonic time, fleetd, what, epoch or why)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))  # bounds a hang, asserts nothing


async def until(what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Await ``probe()`` until it is truthy; fail naming ``what`` past ``timeout`` (which
    only bounds a hang)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if last:
                return last
        except EtcdError as e:
            last = e
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def fresh_prefix() -> str:
    return f"/fleetd-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path_factory.mktemp("etcd1")), 1) as c:
        yield c


@pytest.fixture
def etcd3(tmp_path: Any) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path / "etcd3"), 3) as c:
        yield c


# -- the lock alone ---------------------------------------------------------------


def test_one_wins_the_other_learns_the_holder(etcd1: EtcdCluster) -> None:
    async def go() -> None:
        prefix = fresh_prefix()
        async with EtcdClient(etcd1.endpoints) as c:
            a = EtcdLock(c, prefix, "alpha", ["unix:///run/fleetd/a.sock"])
            b = EtcdLock(c, prefix, "beta")
            won = await a.campaign()
            lost = await b.campaign()
            assert won.epoch is not None and lost.epoch is None
            assert lost.holder is not None and "alpha" in lost.holder
            assert "unix:///run/fleetd/a.sock" in lost.holder
            key = (await c.get(leader_key(prefix))).kvs[0]
            assert won.epoch == key.create_revision
            assert key.lease == a.lease
            assert json.loads(key.value)["name"] == "alpha"
            # the loser's fresh lease was revoked, not left to expire
            assert not b._stale and not b.lease
            info = await b.leader()
            assert info is not None and info.name == "alpha" and info.epoch == won.epoch
            await a.resign()
            assert await read_leader(c, prefix) is None
            later = await b.campaign()
            assert later.epoch is not None and later.epoch > won.epoch
            again = await a.campaign()
            assert again.epoch is None and again.holder and "beta" in again.holder
            await b.resign()

    run(go())


def test_campaigning_again_is_a_new_term(etcd1: EtcdCluster) -> None:
    """A holder whose resignation did not arrive campaigns again: a new key, a larger
    epoch, the old lease gone; the old term's renewal is refused."""
    async def go() -> None:
        prefix = fresh_prefix()
        async with EtcdClient(etcd1.endpoints) as c:
            a = EtcdLock(c, prefix, "alpha")
            first = await a.campaign()
            old_lease = a.lease
            second = await a.campaign()
            assert first.epoch is not None and second.epoch is not None
            assert second.epoch > first.epoch
            key = (await c.get(leader_key(prefix))).kvs[0]
            assert key.create_revision == second.epoch and key.lease == a.lease != old_lease
            assert (await c.time_to_live(old_lease)).ttl == -1
            assert await a.renew() > 0
            await a.resign()

    run(go())


class NoRevoke(EtcdClient):
    """A real client whose revocations never arrive (as when the network drops them)."""

    async def revoke(self, lease: int) -> int:
        raise EtcdUnavailable([(self.endpoints[0], "the test dropped the revocation")],
                              maybe_applied=False)


def test_an_old_key_of_ours_is_deleted_not_taken_for_the_lock(etcd1: EtcdCluster) -> None:
    """The resignation and the revocation both lost: the key is still there on our old
    lease. The next campaign must not take it for the lock (its epoch would be old):
    it deletes it (conditioned on its mod revision) and starts a new term."""
    async def go() -> None:
        prefix = fresh_prefix()
        async with NoRevoke(etcd1.endpoints) as lossy, EtcdClient(etcd1.endpoints) as c:
            a = EtcdLock(lossy, prefix, "alpha")
            first = await a.campaign()
            assert first.epoch is not None
            old_lease = a.lease
            a.epoch = None  # as if the resignation's delete was lost too
            with pytest.raises(EtcdUnavailable):
                await a.resign()
            key = (await c.get(leader_key(prefix))).kvs[0]
            assert key.lease == old_lease  # still there, still ours
            second = await a.campaign()
            assert second.epoch is not None and second.epoch > first.epoch
            key = (await c.get(leader_key(prefix))).kvs[0]
            assert key.create_revision == second.epoch and key.lease == a.lease
            # someone else's key is never deleted that way
            b = EtcdLock(c, prefix, "beta")
            assert (await b.campaign()).epoch is None
            assert (await c.get(leader_key(prefix))).kvs[0].lease == a.lease
            await c.revoke(a.lease)
            await c.revoke(old_lease)

    run(go())


def test_lock_lost_when_the_lease_is_revoked_or_the_key_taken(etcd1: EtcdCluster) -> None:
    async def go() -> None:
        prefix = fresh_prefix()
        async with EtcdClient(etcd1.endpoints) as c:
            a = EtcdLock(c, prefix, "alpha")
            assert (await a.campaign()).epoch is not None
            assert await a.renew() == a.ttl
            await c.revoke(a.lease)  # behind its back
            with pytest.raises(LockLost, match="gone"):
                await a.renew()

            b = EtcdLock(c, prefix, "beta")
            won = await b.campaign()
            assert won.epoch is not None
            # the key deleted and written again under b's own lease: the lease lives on,
            # but the key is another term's
            await c.delete(leader_key(prefix))
            await c.txn([], [Put(leader_key(prefix), b'{"name": "gamma"}', b.lease)])
            with pytest.raises(LockLost, match=f"no longer epoch {won.epoch}"):
                await b.renew()
            await c.revoke(b.lease)

    run(go())


def test_bad_ttl_is_refused_naming_it(etcd1: EtcdCluster) -> None:
    client = EtcdClient(etcd1.endpoints)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="leader lock TTL"):
            EtcdLock(client, "/x", "a", ttl=bad)  # type: ignore[arg-type]


# -- the leadership loop over two locks ---------------------------------------------


class Fleetd:
    """One fleetd's leadership: its loop over an EtcdLock, and what it was told
    (elected/deposed, on the monotonic clock)."""

    def __init__(self, name: str, client: EtcdClient, prefix: str, log: Log,
                 ttl: int = 3) -> None:
        self.name = name
        self.client = client
        self.lock = EtcdLock(client, prefix, name, ttl=ttl)
        self.log = log
        self.loop = Leadership(self.lock, self.elected, self.deposed, Timing())
        self.task: Optional[asyncio.Task[None]] = None

    async def elected(self, epoch: int) -> None:
        self.log.append((time.monotonic(), self.name, "elected", epoch))

    async def deposed(self, reason: str) -> None:
        self.log.append((time.monotonic(), self.name, "deposed", reason))

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.loop.run())

    async def kill(self) -> None:
        """Cancel the loop without resigning: the process died."""
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def events(self, what: str) -> Log:
        return [e for e in self.log if e[1] == self.name and e[2] == what]


async def leading(log: Log, n: int) -> Tuple[float, str, str, Any]:
    """The n-th election of the log, once it happened."""
    await until(f"election #{n}", lambda: _count(log, "elected", n))
    return [e for e in log if e[2] == "elected"][n - 1]


async def _count(log: Log, what: str, n: int) -> bool:
    return sum(1 for e in log if e[2] == what) >= n


def test_killed_leader_is_succeeded_with_a_higher_epoch(etcd1: EtcdCluster) -> None:
    async def go() -> None:
        prefix = fresh_prefix()
        log: Log = []
        async with EtcdClient(etcd1.endpoints) as ca, EtcdClient(etcd1.endpoints) as cb:
            a, b = Fleetd("alpha", ca, prefix, log), Fleetd("beta", cb, prefix, log)
            a.start()
            first = await leading(log, 1)
            b.start()
            await asyncio.sleep(a.lock.ttl)  # b campaigns and loses meanwhile
            assert b.loop.state.holder and "alpha" in b.loop.state.holder
            await a.kill()
            second = await leading(log, 2)
            assert (first[1], second[1]) == ("alpha", "beta")
            assert second[3] > first[3]
            assert (await read_leader(cb, prefix)).epoch == second[3]  # type: ignore[union-attr]
            assert not a.events("deposed")  # killed, not deposed
            await b.kill()
            await b.loop.resign()

    run(go())


def test_a_follower_campaigns_when_the_key_goes_not_at_its_next_tick(
        etcd1: EtcdCluster) -> None:
    """beta watches the leader key: alpha resigns, beta is elected before the campaign
    its timer had scheduled (a TTL of 30 s: a tick every 10 s)."""
    async def go() -> None:
        prefix = fresh_prefix()
        log: Log = []
        async with EtcdClient(etcd1.endpoints) as ca, EtcdClient(etcd1.endpoints) as cb:
            a = Fleetd("alpha", ca, prefix, log, ttl=30)
            b = Fleetd("beta", cb, prefix, log, ttl=30)
            a.start()
            await leading(log, 1)
            b.start()
            await until("beta following", _true_when(lambda: b.loop.state.holder is not None))
            next_tick = b.loop.state.campaign_at
            await a.kill()
            await a.loop.resign()
            second = await leading(log, 2)
            assert second[1] == "beta" and second[0] < next_tick
            await b.kill()
            await b.loop.resign()

    run(go())


def test_cut_off_leader_steps_down_before_the_other_is_elected(etcd3: EtcdCluster) -> None:
    """alpha reaches etcd only through member m3; m3 stops, so alpha's renewals fail.
    It must be deposed before beta (through m1 and m2) can be elected."""
    async def go() -> None:
        prefix = fresh_prefix()
        log: Log = []
        m1, m2, m3 = etcd3.members
        async with EtcdClient([m3.endpoint]) as ca, \
                EtcdClient([m1.endpoint, m2.endpoint]) as cb:
            a, b = Fleetd("alpha", ca, prefix, log), Fleetd("beta", cb, prefix, log)
            a.start()
            first = await leading(log, 1)
            b.start()
            await asyncio.sleep(a.lock.ttl)
            await asyncio.get_running_loop().run_in_executor(None, m3.stop)
            second = await leading(log, 2)
            deposed = a.events("deposed")
            assert deposed, log
            assert deposed[0][0] < second[0], log  # the order, not a speed
            assert second[1] == "beta" and second[3] > first[3]
            await a.kill()
            await b.kill()
            await b.loop.resign()

    run(go())


@pytest.mark.parametrize("raft_leader, ttl", [(False, 3), (True, 10)],
                         ids=["a raft follower", "the raft leader"])
def test_killing_an_etcd_member_changes_no_leader(etcd3: EtcdCluster, raft_leader: bool,
                                                  ttl: int) -> None:
    """kill -9 of one member of 3: the quorum stays, the fleetd leader keeps leading in
    the same term. etcd's raft leader killed, renewals stall through etcd's election
    (2.1-2.5 s measured with the default 1 s election timeout): the TTL must leave room
    for that (TTL - margin > TTL/3 + the stall), which 10 s does and the default 3 s
    does not (bench/leader_lock.py counts how often)."""
    async def go() -> None:
        prefix = fresh_prefix()
        log: Log = []
        async with EtcdClient(etcd3.endpoints) as ca, EtcdClient(etcd3.endpoints) as cb:
            a = Fleetd("alpha", ca, prefix, log, ttl=ttl)
            b = Fleetd("beta", cb, prefix, log, ttl=ttl)
            a.start()
            first = await leading(log, 1)
            b.start()
            statuses = await ca.statuses()
            victim = next(m for m, s in zip(etcd3.members, statuses)
                          if s.is_leader == raft_leader)
            renewals = a.lock.renew
            count = 0

            async def counted() -> float:
                nonlocal count
                ttl = await renewals()
                count += 1
                return ttl
            a.lock.renew = counted  # type: ignore[method-assign]
            await asyncio.get_running_loop().run_in_executor(None, victim.kill)
            await until("three renewals after the kill", _true_when(lambda: count >= 3), 60)
            assert [e[1:] for e in log] == [first[1:]]  # nobody deposed, nobody else elected
            assert (await read_leader(cb, prefix)).epoch == first[3]  # type: ignore[union-attr]
            victim.start()
            etcd3.wait_healthy()
            await a.kill()
            await b.kill()
            await a.loop.resign()

    run(go())


def _true_when(pred: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return pred()
    return probe


# -- the roster -----------------------------------------------------------------------


def test_roster_and_list_servers(etcd3: EtcdCluster) -> None:
    async def go() -> None:
        prefix = fresh_prefix()
        async with EtcdClient(etcd3.endpoints) as c:
            alpha = Roster(c, prefix, "alpha", ["10.0.0.1:8080"], ttl=2)
            beta = Roster(c, prefix, "beta", ["10.0.0.2:8080"], ttl=2)
            runs = [asyncio.ensure_future(r.run()) for r in (alpha, beta)]
            lock = EtcdLock(c, prefix, "alpha", ["10.0.0.1:8080"])
            won = await lock.campaign()

            async def fleetds() -> List[ServerInfo]:
                return [r for r in await list_servers(c, prefix) if r.kind == FLEETD]
            rows = await until("both fleetd in the roster",
                               lambda: _having(fleetds, {"alpha", "beta"}))
            assert [(r.name, r.leader, r.epoch) for r in rows] == [
                ("alpha", True, won.epoch), ("beta", False, None)]
            assert rows[0].since is not None and rows[0].addresses == ("10.0.0.1:8080",)

            runs[1].cancel()  # beta dies: its lease is not renewed, its entry expires
            await until("beta gone from the roster", lambda: _having(fleetds, {"alpha"}))

            victim = etcd3.members[2]
            await asyncio.get_running_loop().run_in_executor(None, victim.stop)
            rows = await list_servers(c, prefix)
            members = [r for r in rows if r.kind == ETCD]
            assert sorted(r.name for r in members) == ["m1", "m2", "m3"]
            down = [r for r in members if not r.healthy]
            assert [r.name for r in down] == ["m3"] and down[0].detail
            assert sum(r.leader for r in members) == 1
            assert all(r.raft_index > 0 for r in members if r.healthy)
            assert [r.name for r in rows if r.kind == FLEETD and r.leader] == ["alpha"]
            runs[0].cancel()
            await alpha.close()
            await lock.resign()
            victim.start()

    run(go())


def test_a_second_fleetd_of_the_same_name_is_refused_a_restarted_one_replaces(
        etcd1: EtcdCluster) -> None:
    async def go() -> None:
        prefix = fresh_prefix()
        async with EtcdClient(etcd1.endpoints) as c:
            first = Roster(c, prefix, "alpha", ["10.0.0.1:8080"])
            await first.register()
            other = Roster(c, prefix, "alpha", ["10.0.0.9:8080"])
            with pytest.raises(NameInUse, match=r"'alpha' is already registered .* "
                                                r"10\.0\.0\.1:8080 .*10\.0\.0\.9:8080"):
                await other.run()  # ends the loop: a configuration mistake
            assert not other.lease
            again = Roster(c, prefix, "alpha", ["10.0.0.1:8080"])  # first, restarted
            await again.register()
            got = (await c.get(first.key)).kvs[0]
            assert got.lease == again.lease != first.lease
            await again.close()
            await c.revoke(first.lease)
            assert not (await c.get(first.key)).kvs

    run(go())


async def _having(read: Callable[[], Awaitable[List[ServerInfo]]],
                  names: set) -> Optional[List[ServerInfo]]:  # type: ignore[type-arg]
    rows = await read()
    return rows if {r.name for r in rows} == names else None


def test_list_servers_says_what_it_could_not_read(tmp_path: Any) -> None:
    """No etcd at all: rows that say so, not a traceback."""
    async def go() -> None:
        async with EtcdClient([f"127.0.0.1:{free_port()}"], timeout=1) as c:
            rows = await list_servers(c, "/nowhere")
            assert rows and not any(r.healthy for r in rows)
            assert any("refused" in r.detail for r in rows), rows

    run(go())
