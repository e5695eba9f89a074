"""EtcdRegistry's cache when its watch cannot keep up, on a real etcd member behind a
loopback proxy (etcdproxy.Cutter): a watch that resumes from a revision etcd has
compacted reloads everything; a follower whose cache is behind does not answer
"not found" for a unit made through another fleetd a moment ago; a fleetd cut off
from etcd answers reads (stale) and refuses writes, then catches up; a registry that
cannot reach etcd at all does not open."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, List, TypeVar

import pytest
from etcdkit import EtcdCluster, etcd_cluster, free_port
from etcdproxy import Cutter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from registrykit import A_TEXT, B_TEXT, u

from fleetd.registry.base import LAUNCHED, LOADED, Unavailable
from fleetd.registry.etcd import EtcdRegistry
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.units.model import content_hash

pytestmark = pytest.mark.etcd
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))  # bounds a hang, asserts nothing


async def until(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path_factory.mktemp("regwatch")), 1) as c:
        yield c


def test_a_watch_resuming_past_a_compaction_reloads(etcd1: EtcdCluster) -> None:
    """The registry's watch goes quiet (the proxy swallows it) while another fleetd
    writes and etcd compacts its history; the stream then breaks and resumes on the
    member itself from a revision etcd no longer has: the registry reloads, reads the
    other's writes (including a delete it never saw as an event) and says so through
    on_change; its own writes work on."""
    async def go() -> None:
        cutter = Cutter(etcd1.members[0].client_port)
        await cutter.start()
        async with EtcdClient([cutter.endpoint, *etcd1.endpoints]) as c, \
                EtcdClient(etcd1.endpoints) as direct:
            reg = await EtcdRegistry.open(c, "/compact")
            other = await EtcdRegistry.open(direct, "/compact")
            await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await until("the other to read a.service", lambda: other.get_unit("a.service"))
            changes: List[int] = []
            reg.on_change(lambda: changes.append(1))
            cutter.hold_watches()
            await other.put_units([u("b.service", B_TEXT)], LOADED)
            await other.delete_units(["a.service"])
            now = (await direct.get("/none")).revision
            await direct.compact(now)
            await asyncio.sleep(0.3)
            assert reg.get_unit("a.service") is not None  # it has not heard
            cutter.cut_watches()
            await until("the reload after the compaction", lambda: reg.get_unit("b.service"))
            assert [x.name for x in reg.list_units()] == ["b.service"]
            assert changes and reg.staleness() is None
            await reg.set_desired(["b.service"], LAUNCHED)
            await until("the other to read it", lambda: getattr(
                other.get_unit("b.service"), "desired", None) == LAUNCHED)
            await reg.close()
            await other.close()
        await cutter.close()
    run(go())


def test_a_follower_behind_loses_nothing_and_does_not_say_not_found(
        etcd1: EtcdCluster) -> None:
    """A fleetd whose watch has not brought another's writes yet: its own write, planned
    on what it has, fails its compare, and is planned again on a reload (both land); a
    unit made through the other and at once stopped through it is found (it reloads
    before it would answer NotFound)."""
    async def go() -> None:
        cutter = Cutter(etcd1.members[0].client_port)
        await cutter.start()
        async with EtcdClient([cutter.endpoint]) as c, EtcdClient(etcd1.endpoints) as direct:
            behind = await EtcdRegistry.open(c, "/behind")
            first = await EtcdRegistry.open(direct, "/behind")
            cutter.hold_watches()
            await first.put_units([u("b.service", B_TEXT)], LAUNCHED)
            await asyncio.sleep(0.3)
            assert behind.get_unit("b.service") is None  # its watch is held
            # planned on a unit table etcd has moved past: the compare fails, it reloads
            # and plans again, and neither write is lost
            await behind.put_units([u("c.service", A_TEXT)], LAUNCHED)
            assert [x.name for x in behind.list_units()] == ["b.service", "c.service"]
            await first.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await asyncio.sleep(0.3)
            assert behind.get_unit("a.service") is None
            await behind.set_desired(["a.service"], LOADED)  # not NotFound
            a = behind.get_unit("a.service")
            assert a is not None and a.desired == LOADED
            await until("the first to read it", lambda: getattr(
                first.get_unit("a.service"), "desired", None) == LOADED)
            assert [x.name for x in first.list_units()] == ["a.service", "b.service",
                                                            "c.service"]
            cutter.cut_watches()
            await behind.close()
            await first.close()
        await cutter.close()
    run(go())


def test_a_fleetd_cut_off_from_etcd_answers_stale_then_catches_up(etcd1: EtcdCluster) -> None:
    """Every endpoint of a registry unreachable (its only one, a proxy, stops): reads
    answer from the cache and staleness() says etcd is unreachable; writes raise
    Unavailable naming etcd and the endpoint, and are not made. Reachable again: it
    reads what another fleetd wrote meanwhile and writes again."""
    async def go() -> None:
        cutter = Cutter(etcd1.members[0].client_port)
        await cutter.start()
        async with EtcdClient([cutter.endpoint]) as c, EtcdClient(etcd1.endpoints) as direct:
            cut = await EtcdRegistry.open(c, "/cutoff")
            other = await EtcdRegistry.open(direct, "/cutoff")
            await cut.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await cutter.pause()
            await until("the cut registry to say it is stale", cut.staleness)
            why = cut.staleness()
            assert why is not None and why.startswith("etcd: unreachable since")
            assert cutter.endpoint in why and why.endswith("answers may be stale")
            assert [x.name for x in cut.list_units()] == ["a.service"]
            with pytest.raises(Unavailable) as e:
                await cut.set_desired(["a.service"], LOADED)
            assert f"no etcd endpoint answered: {cutter.endpoint}" in str(e.value)
            await other.put_units([u("b.service", B_TEXT)], LOADED)
            a = other.get_unit("a.service")
            assert a is not None and a.desired == LAUNCHED  # the refused write was not made
            await cutter.resume()
            await until("the cut registry current again", lambda: cut.get_unit("b.service"))
            assert cut.staleness() is None
            await cut.set_desired(["a.service"], LOADED)
            await until("the other to read it", lambda: getattr(
                other.get_unit("a.service"), "desired", None) == LOADED)
            await cut.close()
            await other.close()
        await cutter.close()
    run(go())


def test_two_fleetd_writing_at_once_lose_nothing(etcd1: EtcdCluster) -> None:
    """Two registries submit and destroy units at the same time, every unit with the
    same text: their transactions race on the unit table (each compares what it
    planned on), the losers plan again; every unit either should be there is, and the
    shared text stays while a unit uses it and goes with the last."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c1, EtcdClient(etcd1.endpoints) as c2:
            one = await EtcdRegistry.open(c1, "/race")
            two = await EtcdRegistry.open(c2, "/race")

            async def churn(reg: EtcdRegistry, tag: str) -> None:
                for i in range(15):
                    await reg.put_units([u(f"{tag}{i}.service", A_TEXT)], LAUNCHED)
                    if i % 3 == 0:
                        await reg.delete_units([f"{tag}{i}.service"])

            await asyncio.gather(churn(one, "x"), churn(two, "y"))
            want = sorted(f"{t}{i}.service" for t in "xy" for i in range(15) if i % 3)
            for reg in (one, two):
                await until("both to agree", lambda r=reg: [
                    x.name for x in r.list_units()] == want)
                assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT
            await one.delete_units(want)
            await until("the text gone with the last unit",
                        lambda: two.unit_text(content_hash(A_TEXT)) is None)
            assert (await c1.range("/race/texts/")).kvs == ()
            await one.close()
            await two.close()
    run(go())


def test_a_write_outlasts_a_burst_of_another_fleetds_writes(etcd1: EtcdCluster) -> None:
    """For 1.5 s another fleetd writes the unit table between each of this one's plans
    and its commit, so every attempt in that time fails its compare: the write backs
    off and lands once the burst is over (it gave up after 8 attempts in ~0.1 s, with
    "met newer changes 8 times in a row", as two fleetd churning at once on a loaded
    machine saw)."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c1, EtcdClient(etcd1.endpoints) as c2:
            one = await EtcdRegistry.open(c1, "/burst")
            two = await EtcdRegistry.open(c2, "/burst")
            commit, burst_ends = one._commit, time.monotonic() + 1.5
            met: List[str] = []

            async def between(plan: Any, epoch: Any) -> bool:
                if time.monotonic() < burst_ends:
                    met.append(f"b{len(met)}.service")
                    await two.put_units([u(met[-1], B_TEXT)], LAUNCHED)
                return await commit(plan, epoch)
            one._commit = between  # type: ignore[method-assign]
            await one.put_units([u("a.service", A_TEXT)], LAUNCHED)
            assert len(met) >= 2  # it met the burst, more than once
            await until("both to see every unit", lambda: all(
                sorted(x.name for x in r.list_units()) == sorted(["a.service", *met])
                for r in (one, two)))
            await one.close()
            await two.close()
    run(go())


def test_open_without_etcd_fails_naming_it() -> None:
    async def go() -> None:
        port = free_port()  # nothing listens there
        async with EtcdClient([f"127.0.0.1:{port}"]) as c:
            with pytest.raises(Unavailable) as e:
                await EtcdRegistry.open(c)
            assert "etcd" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
            assert "connection refused" in str(e.value)
    run(go())
