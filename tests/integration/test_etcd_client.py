"""fleetd.registry.etcdv3 against real etcd processes (Debian's etcd-server 3.4):
one member for the KV, lease and watch semantics, three for failover and a lost quorum,
one with TLS and client certificates."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Coroutine, Iterator, List, TypeVar

import pytest
from etcdkit import EtcdCluster, etcd_cluster

from fleetd.registry.etcdv3 import EtcdClient, tls_context
from fleetd.registry.etcdv3_types import (
    Compare,
    Delete,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdQuorumLost,
    EtcdUnavailable,
    Event,
    Get,
    Put,
    RangeResult,
)
from fleetd.registry.etcdv3_watch import Watch

pytestmark = pytest.mark.etcd
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))  # bounds a hang, asserts nothing


async def until(what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Await ``probe()`` until it returns something truthy (it may raise EtcdError
    meanwhile); fail naming ``what`` and the last outcome past ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if last:
                return last
        except EtcdError as e:
            last = e
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def next_events(w: Watch, n: int) -> List[Event]:
    return [await w.__anext__() for _ in range(n)]


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    # progress notifications every 0.5 s instead of 10 min, for the watch's tests
    with etcd_cluster(str(tmp_path_factory.mktemp("etcd1")), 1,
                      extra_args=["--experimental-watch-progress-notify-interval=500ms"]) as c:
        yield c


@pytest.fixture
def etcd3(tmp_path: Any) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path / "etcd3"), 3) as c:
        yield c


def test_put_get_range_delete(etcd1: EtcdCluster) -> None:
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            r1 = await c.put("kv/a", "1")
            r2 = await c.put(b"kv/b", b"\x00\xff")  # bytes through base64 unchanged
            await c.put("kv/c/d", "3")
            await c.put("kvz", "outside the prefix")
            assert r2 > r1 > 0
            got = await c.get("kv/a")
            assert [(kv.key, kv.value) for kv in got.kvs] == [(b"kv/a", b"1")]
            assert got.kvs[0].create_revision == got.kvs[0].mod_revision == r1
            assert got.revision >= r2
            assert (await c.get("kv/none")).kvs == ()
            every = await c.range("kv/")
            assert [kv.key for kv in every.kvs] == [b"kv/a", b"kv/b", b"kv/c/d"]
            assert every.kvs[1].value == b"\x00\xff" and every.count == 3
            assert (await c.range("kv/", serializable=True)).count == 3
            v2 = await c.put("kv/a", "again")
            a = (await c.get("kv/a")).kvs[0]
            assert (a.value, a.version, a.create_revision, a.mod_revision) == \
                (b"again", 2, r1, v2)
            gone = await c.delete("kv/c/d")
            assert gone.deleted == 1 and gone.revision > v2
            gone = await c.delete("kv/", prefix=True)
            assert gone.deleted == 2
            assert (await c.range("kv/")).kvs == ()
            assert (await c.get("kvz")).kvs[0].value == b"outside the prefix"
            with pytest.raises(EtcdError) as e:
                await c.range("kv/", revision=10**9)  # etcd's own refusal, passed on
            assert "future rev" in e.value.message and e.value.code == 11
    run(go())


def test_txn_compare_and_swap(etcd1: EtcdCluster) -> None:
    """create-if-absent (create_revision == 0): of two racing clients exactly one wins,
    and the loser's failure branch reads the winner's value; then compare-and-swap on
    mod_revision, version and value: a stale compare fails and changes nothing."""
    async def claim(who: str) -> Any:
        async with EtcdClient(etcd1.endpoints) as c:
            return await c.txn([Compare.create("txn/lock", "==", 0)],
                               [Put("txn/lock", who)], [Get("txn/lock")])

    async def go() -> None:
        a, b = await asyncio.gather(claim("a"), claim("b"))
        assert sorted([a.succeeded, b.succeeded]) == [False, True]
        won, lost = (a, b) if a.succeeded else (b, a)
        winner = "a" if a.succeeded else "b"
        held = lost.responses[0]
        assert isinstance(held, RangeResult)
        assert held.kvs[0].value == winner.encode() and held.kvs[0].mod_revision == won.revision
        async with EtcdClient(etcd1.endpoints) as c:
            cur = (await c.get("txn/lock")).kvs[0]
            stale = await c.txn([Compare.mod("txn/lock", "==", cur.mod_revision - 1)],
                                [Put("txn/lock", "stale")])
            assert not stale.succeeded and stale.responses == ()
            ok = await c.txn([Compare.mod("txn/lock", "==", cur.mod_revision),
                              Compare.version("txn/lock", "==", 1),
                              Compare.value("txn/lock", "==", winner)],
                             [Put("txn/lock", "next"), Put("txn/other", "x")])
            assert ok.succeeded and ok.revision == cur.mod_revision + 1
            assert (await c.get("txn/lock")).kvs[0].value == b"next"
            neq = await c.txn([Compare.value("txn/lock", "!=", "next")], [Delete("txn/lock")],
                              [Delete("txn/", prefix=True)])
            assert not neq.succeeded and neq.responses[0].deleted == 2  # type: ignore[union-attr]
            assert (await c.range("txn/")).kvs == ()
    run(go())


def test_lease_expires_unless_kept_alive(etcd1: EtcdCluster) -> None:
    """Two keys on two 2 s leases: the one not kept alive goes when its lease expires;
    the other, kept alive the while and a whole TTL more, stays; revoked, it goes."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            dying, kept = await c.grant(2), await c.grant(2)
            assert dying != kept
            await c.put("lease/dying", "x", lease=dying)
            await c.put("lease/kept", "y", lease=kept)
            info = await c.time_to_live(kept, keys=True)
            assert info.granted_ttl == 2 and 0 < info.ttl <= 2 and info.keys == (b"lease/kept",)
            assert (await c.get("lease/kept")).kvs[0].lease == kept

            async def dying_gone() -> bool:
                assert await c.keepalive_once(kept) == 2
                return not (await c.get("lease/dying")).kvs

            await until("the key whose lease was not renewed to go", dying_gone)
            assert (await c.time_to_live(dying)).ttl == -1
            end = time.monotonic() + 3  # a full TTL more of renewals
            while time.monotonic() < end:
                assert await c.keepalive_once(kept) == 2
                await asyncio.sleep(0.3)
            assert (await c.get("lease/kept")).kvs[0].value == b"y"
            await c.revoke(kept)
            assert (await c.get("lease/kept")).kvs == ()
            with pytest.raises(EtcdLeaseNotFound):
                await c.keepalive_once(kept)
            with pytest.raises(EtcdLeaseNotFound):
                await c.revoke(kept)
            with pytest.raises(EtcdLeaseNotFound):
                await c.put("lease/late", "z", lease=kept)
    run(go())


def test_watch_from_a_revision(etcd1: EtcdCluster) -> None:
    """A watch from a past revision replays the puts and deletes since, in order, then
    the live ones; another prefix's changes are not in it."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            start = await c.put("w/a", "1")
            await c.put("w/a", "2")
            await c.put("wother", "not watched")
            await c.delete("w/a")
            async with c.watch("w/", start_revision=start, prev_kv=True) as w:
                evs = await next_events(w, 3)
                assert [(e.type, e.kv.key, e.kv.value) for e in evs] == [
                    ("PUT", b"w/a", b"1"), ("PUT", b"w/a", b"2"), ("DELETE", b"w/a", b"")]
                assert evs[1].prev_kv is not None and evs[1].prev_kv.value == b"1"
                assert evs[0].kv.mod_revision == start and evs[1].kv.version == 2
                live = await c.put("w/b", "live")
                (e,) = await next_events(w, 1)
                assert (e.type, e.kv.key, e.kv.mod_revision) == ("PUT", b"w/b", live)
                assert w.revision == live + 1
            async with c.watch("w/b", prefix=False) as w:  # from now: only what follows
                await c.put("w/bb", "not this key")
                rev = await c.put("w/b", "now")
                (e,) = await next_events(w, 1)
                assert (e.kv.value, e.kv.mod_revision) == (b"now", rev)
    run(go())


def test_a_quiet_watch_moves_on_with_progress_notifications(etcd1: EtcdCluster) -> None:
    """Writes elsewhere move the store's revision; a watch that sees none of them learns
    from etcd's progress notifications that nothing under it changed up to there, so it
    would go on from there on another endpoint."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c, c.watch("pn/") as w:
            waiting = asyncio.ensure_future(w.__anext__())
            elsewhere = 0
            for _ in range(3):
                elsewhere = await c.put("pn-other", "x")

            async def moved_on() -> bool:
                return w.revision > elsewhere
            await until("a progress notification past the other writes", moved_on)
            assert not waiting.done()
            rev = await c.put("pn/a", "1")
            e = await waiting
            assert (e.kv.key, e.kv.mod_revision) == (b"pn/a", rev)
    run(go())


def test_watch_from_a_compacted_revision_fails_clearly(etcd1: EtcdCluster) -> None:
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            old = await c.put("cw/a", "1")
            now = await c.put("cw/a", "2")
            await c.compact(now)
            with pytest.raises(EtcdCompacted) as e:
                async with c.watch("cw/", start_revision=old) as w:
                    await w.__anext__()
            assert e.value.compact_revision == now
            assert "compacted" in str(e.value) and "start over" in str(e.value)
    run(go())


def test_failover_when_a_member_is_killed(etcd3: EtcdCluster) -> None:
    """kill -9 of the endpoint the client uses (a follower, so no election): reads,
    writes and a running watch go on through the others; the statuses say which is
    down; started again, it rejoins and has every write."""
    async def go() -> None:
        leader_first = EtcdClient(etcd3.endpoints)
        statuses = await leader_first.statuses()
        await leader_first.close()
        assert all(s.healthy for s in statuses), statuses
        assert sum(s.is_leader for s in statuses) == 1
        assert len({s.member_id for s in statuses}) == 3
        leader = next(s.endpoint for s in statuses if s.is_leader)
        follower = next(m for m in etcd3.members if m.endpoint != leader)
        order = [follower.endpoint] + [e for e in etcd3.endpoints if e != follower.endpoint]
        async with EtcdClient(order) as c:
            members = await c.members()
            assert sorted(m.name for m in members) == ["m1", "m2", "m3"]
            assert {m.id for m in members} == {s.member_id for s in statuses}
            rev = await c.put("fo/a", "1")
            assert c.current == follower.endpoint
            async with c.watch("fo/", start_revision=rev) as w:
                (e,) = await next_events(w, 1)
                assert w.endpoint == follower.endpoint
                follower.kill()
                assert (await c.get("fo/a")).kvs[0].value == b"1"
                assert c.current != follower.endpoint
                rev2 = await c.put("fo/b", "2")
                (e,) = await next_events(w, 1)  # resumed elsewhere, nothing lost
                assert (e.kv.key, e.kv.mod_revision) == (b"fo/b", rev2)
                assert w.endpoint not in (None, follower.endpoint)
            by_ep = {s.endpoint: s for s in await c.statuses()}
            assert not by_ep[follower.endpoint].healthy
            assert by_ep[follower.endpoint].error == "connection refused"
            assert sum(s.healthy for s in by_ep.values()) == 2
            follower.start()
            etcd3.wait_healthy()
            async with EtcdClient([follower.endpoint]) as alone:
                got = await until("the restarted member to have every write",
                                  lambda: alone.range("fo/"))
                assert [kv.value for kv in got.kvs] == [b"1", b"2"]
    run(go())


def test_killing_the_leader_rides_out_the_election(etcd3: EtcdCluster) -> None:
    """kill -9 of the leader, the endpoint the client uses: a write right after may fail
    while the others elect a leader, only ever with EtcdUnavailable (saying whether it
    may have been applied), and soon works again; nothing is lost."""
    async def go() -> None:
        async with EtcdClient(etcd3.endpoints) as probe:
            leader = next(s.endpoint for s in await probe.statuses() if s.is_leader)
        order = [leader] + [e for e in etcd3.endpoints if e != leader]
        async with EtcdClient(order) as c:
            await c.put("el/a", "1")
            assert c.current == leader
            next(m for m in etcd3.members if m.endpoint == leader).kill()
            failures: List[EtcdUnavailable] = []

            async def write() -> bool:
                try:
                    await c.put("el/b", "2")
                    return True
                except EtcdUnavailable as e:
                    failures.append(e)
                    return False

            await until("a write after the leader's death", write)
            assert all(type(f) in (EtcdUnavailable, EtcdQuorumLost) for f in failures)
            assert (await c.get("el/a")).kvs[0].value == b"1"
            assert (await c.get("el/b")).kvs[0].value == b"2"
            assert c.current != leader
    run(go())


def test_quorum_lost_then_back(etcd3: EtcdCluster) -> None:
    """Stop 2 of 3 members: writes fail with EtcdQuorumLost naming every endpoint (and
    why), linearizable reads, new watches and the watch that was running too;
    serializable reads still answer. Start them again: writes work and nothing written
    before is lost."""
    async def go() -> None:
        async with EtcdClient(etcd3.endpoints) as c:
            await c.put("q/a", "before")
            watching = c.watch("q/")
            await watching.start()
            for m in etcd3.members[1:]:
                m.stop()

            async def refused() -> Any:
                try:
                    await c.put("q/b", "during")
                except EtcdQuorumLost as e:
                    return e
                except EtcdUnavailable:
                    return None  # still finding out (a proposal timed out)
                return None

            lost: EtcdQuorumLost = await until("writes refused for a lost quorum", refused)
            assert str(lost).startswith("etcd has lost its quorum")
            for m in etcd3.members:
                assert m.endpoint in str(lost)
            assert (etcd3.members[0].endpoint, "etcdserver: no leader") in lost.tried
            assert (etcd3.members[1].endpoint, "connection refused") in lost.tried
            with pytest.raises(EtcdQuorumLost):
                await c.get("q/a")
            stale = await c.get("q/a", serializable=True)
            assert stale.kvs[0].value == b"before"
            with pytest.raises(EtcdQuorumLost):
                await c.grant(5)
            with pytest.raises(EtcdQuorumLost):  # its member drops it, no other takes it
                await watching.__anext__()
            with pytest.raises(EtcdQuorumLost):
                async with c.watch("q/"):
                    pass
            for m in etcd3.members[1:]:
                m.start()
            etcd3.wait_healthy()
            await until("a write once the quorum is back", lambda: c.put("q/c", "after"))
            got = await c.range("q/")
            assert {kv.key: kv.value for kv in got.kvs}[b"q/a"] == b"before"
            assert {kv.key: kv.value for kv in got.kvs}[b"q/c"] == b"after"
    run(go())


def test_tls_with_client_certificates(tmp_path: Any) -> None:
    """etcd on TLS asking for client certificates: the client with the CA, cert and key
    works; without a certificate, or not trusting the CA, it fails naming TLS."""
    with etcd_cluster(str(tmp_path / "etcdtls"), 1, tls=True) as e:
        async def go() -> None:
            ctx = tls_context(e.ca, e.cert, e.key)
            async with EtcdClient(e.endpoints, tls=ctx) as c:
                rev = await c.put("tls/a", "1")
                assert (await c.get("tls/a")).kvs[0].mod_revision == rev
                assert (await c.statuses())[0].healthy
            async with EtcdClient(e.endpoints, tls=tls_context(e.ca)) as c:
                with pytest.raises(EtcdUnavailable) as err:
                    await c.get("tls/a")
                assert e.endpoints[0] in str(err.value)
            async with EtcdClient(e.endpoints, tls=tls_context()) as c:
                with pytest.raises(EtcdUnavailable) as err:
                    await c.get("tls/a")
                assert "TLS" in str(err.value)
        run(go())
