"""EtcdRegistry (fleetd/registry/etcd.py) on real etcd members (Debian's etcd-server
3.4): what only a shared store has. Fencing by epoch against a real leader key held by
a lease; two registries on one etcd seeing each other's writes (on_change); a lost
quorum (reads answer, stale; writes refused naming etcd; nothing lost when it returns);
a write whose answer is lost on the wire, landed or not, made exactly once; values in
etcd that fleetd did not write; heartbeats that write nothing; etcd's transaction
limits. The Registry contract itself runs on etcd in test_registry_contract_etcd.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterator, List, TypeVar

import pytest
from etcdkit import EtcdCluster, etcd_cluster
from etcdproxy import Cutter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from registrykit import A_TEXT, B_TEXT, machine, observed, u

from fleetd.registry.base import (
    BEFORE_VERSIONS,
    LAUNCHED,
    LOADED,
    FailureRecord,
    NotLeader,
    RegistryError,
    Unavailable,
    UnitInput,
)
from fleetd.registry.etcd import EtcdRegistry
from fleetd.registry.etcd_keys import encode, key
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.units.model import content_hash

pytestmark = pytest.mark.etcd
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 180))  # bounds a hang, asserts nothing


async def until(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``probe()`` (awaited when it returns an awaitable) until truthy; fail naming
    ``what`` past ``timeout`` (which bounds a hang, it measures nothing)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if isinstance(last, Awaitable):
                last = await last
            if last:
                return last
        except RegistryError as e:
            last = e
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def etcd1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path_factory.mktemp("regetcd1")), 1) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    """A prefix of the test's own: tests share the module's etcd, never its keys."""
    return f"/t-{uuid.uuid4().hex[:8]}"


async def revision(c: EtcdClient) -> int:
    return (await c.get("/none")).revision


def test_a_write_fenced_by_a_deposed_epoch_is_refused(etcd1: EtcdCluster, prefix: str) -> None:
    """The leader key held by a lease, as the lock holds it: writes with its create
    revision land; once the lease is revoked and another term holds the key, every
    fenced write of the old epoch raises NotLeader and changes nothing, the new epoch's
    land, and writes without an epoch (a user's) are not fenced."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            reg = await EtcdRegistry.open(c, prefix)
            await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await reg.add_machine(machine("m1"))
            lease = await c.grant(30)
            old = await c.put(f"{prefix}/leader", "one", lease=lease)
            await reg.set_placements([("a.service", "m1", "first")], epoch=old)
            await reg.update_machine("m1", state="up", epoch=old)
            await c.revoke(lease)
            new = await c.put(f"{prefix}/leader", "two", lease=await c.grant(30))
            assert new > old
            before = await revision(c)
            fenced: List[Callable[[], Awaitable[None]]] = [
                lambda: reg.set_placements([("a.service", "m2", "stale")], epoch=old),
                lambda: reg.record_failure(FailureRecord("a.service", "h", "m1", 1.0, "x"),
                                           epoch=old),
                lambda: reg.update_machine("m1", state="lost", epoch=old),
                lambda: reg.replace_observed("m1", [observed("a.service", "m1")], epoch=old),
                lambda: reg.upsert_observed(observed("a.service", "m1"), epoch=old),
                # a rollout's step (engine/rolling.py)
                lambda: reg.put_units([u("a.service", B_TEXT)], None, replace=True,
                                      epoch=old),
            ]
            for write in fenced:
                with pytest.raises(NotLeader) as e:
                    await write()
                assert f"epoch {old} no longer leads (epoch {new} leads)" in str(e.value)
            assert await revision(c) == before  # nothing written
            a, m = reg.get_unit("a.service"), reg.get_machine("m1")
            assert a is not None and (a.machine, a.reason) == ("m1", "first")
            assert m is not None and m.state == "up"
            assert reg.list_failures() == {} and reg.list_observed() == []
            await reg.set_placements([("a.service", "m2", "new term")], epoch=new)
            await reg.set_desired(["a.service"], LOADED)  # a user's write: no epoch
            a = reg.get_unit("a.service")
            assert a is not None and (a.machine, a.desired) == ("m2", LOADED)
            await c.delete(f"{prefix}/leader")
            with pytest.raises(NotLeader, match="no one leads"):
                await reg.set_placements([("a.service", "m1", "nobody")], epoch=new)
            await reg.close()
    run(go())


def test_a_second_registry_sees_the_first_ones_writes(etcd1: EtcdCluster, prefix: str) -> None:
    """Two registries on one etcd (two fleetd): what one writes the other reads once its
    watch brings it, and its on_change fires; the writer's own on_change does not fire
    for its own writes (its waits are woken by the write itself)."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c1, EtcdClient(etcd1.endpoints) as c2:
            one = await EtcdRegistry.open(c1, prefix)
            two = await EtcdRegistry.open(c2, prefix)
            seen: List[str] = []
            mine: List[str] = []
            two.on_change(lambda: seen.append("two"))
            one.on_change(lambda: mine.append("one"))
            await one.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await until("the second registry to read the unit",
                        lambda: two.get_unit("a.service"))
            assert seen
            assert two.unit_text(content_hash(A_TEXT)) == A_TEXT
            n = len(seen)
            await one.add_machine(machine("m1"))
            await one.set_placements([("a.service", "m1", "fewest")])
            await until("the placement on the other side",
                        lambda: getattr(two.get_unit("a.service"), "machine", None) == "m1")
            assert len(seen) > n
            await two.set_desired(["a.service"], LOADED)  # and back the other way
            await until("the first to read the second's write",
                        lambda: getattr(one.get_unit("a.service"), "desired", None) == LOADED)
            assert mine  # that was news to it
            k = len(mine)
            await one.delete_units(["a.service"])
            await until("the delete on the other side", lambda: not two.list_units())
            assert len(mine) == k and one.staleness() is None and two.staleness() is None
            await one.close()
            await two.close()
    run(go())


def test_heartbeats_and_idle_write_nothing(etcd1: EtcdCluster, prefix: str) -> None:
    """update_machine with only last_seen, and observed rows that change only their
    updated_at, move this registry's view and write nothing to etcd; a real change is
    written (carrying the newest last_seen); an idle registry writes nothing."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            reg = await EtcdRegistry.open(c, prefix)
            await reg.add_machine(machine("m1"))
            await reg.update_machine("m1", state="up", last_seen=1.0)
            row = observed("a.service", "m1")
            await reg.replace_observed("m1", [row])
            before = await revision(c)
            for i in range(50):
                await reg.update_machine("m1", last_seen=2.0 + i)
                await reg.upsert_observed(dataclasses.replace(row, updated_at=10.0 + i))
                await reg.replace_observed("m1", [dataclasses.replace(row, updated_at=10.5 + i)])
            await asyncio.sleep(1.0)  # idle: the watch open, nothing to write
            assert await revision(c) == before
            m = reg.get_machine("m1")
            assert m is not None and m.last_seen == 51.0
            assert [r.updated_at for r in reg.list_observed()] == [59.5]
            await reg.update_machine("m1", state="unreachable")
            assert await revision(c) == before + 1
            got = (await c.get(f"{prefix}/machinestate/m1")).kvs[0].value
            assert b'"last_seen":51.0' in got and b'"unreachable"' in got
            await reg.upsert_observed(dataclasses.replace(row, state="exited", updated_at=70.0))
            assert await revision(c) == before + 2
            await reg.close()
    run(go())


def test_values_fleetd_did_not_write_are_skipped(etcd1: EtcdCluster, prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Garbage under the prefix (not JSON, wrong types, a text whose hash is not its
    key's, a key of no known shape), before the registry opens and while it runs: each
    record is left out with a warning naming its key; the good ones read as written."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            good = await EtcdRegistry.open(c, prefix)
            await good.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await good.add_machine(machine("m1"))
            await good.close()
            await c.put(f"{prefix}/units/bad.service", b"\xff not json")
            await c.put(f"{prefix}/units/nan.service",
                        '{"hash":"x","vars":{},"desired":"launched","generation":NaN,'
                        '"updated_at":1}')
            await c.put(f"{prefix}/machines/m2", '{"address": 7}')
            await c.put(f"{prefix}/texts/{'0' * 64}", '{"text": "not this hash"}')
            await c.put(f"{prefix}/observed/m1", '{}')  # no unit part: not a key of ours
            await c.put(f"{prefix}/machinestate/m1", '{"state": ["up"]}')
            with caplog.at_level(logging.WARNING, logger="fleetd.registry.etcd_cache"):
                reg = await EtcdRegistry.open(c, prefix)
                assert [x.name for x in reg.list_units()] == ["a.service"]
                assert [m.name for m in reg.list_machines()] == ["m1"]
                m = reg.get_machine("m1")
                assert m is not None and m.state == "new"  # its bad state left out
                assert reg.unit_text("0" * 64) is None
                assert reg.unit_text(content_hash(A_TEXT)) == A_TEXT
                await c.put(f"{prefix}/units/a.service", "[1, 2]")  # while it runs
                await until("the live garbage to be left out", lambda: not reg.list_units())
                await reg.put_units([u("b.service", B_TEXT)], LOADED)  # still writes
                assert [x.name for x in reg.list_units()] == ["b.service"]
            text = caplog.text
            for k in ("units/bad.service", "units/nan.service", "machines/m2",
                      f"texts/{'0' * 64}", "machinestate/m1", "units/a.service"):
                assert f"etcd key {prefix}/{k}" in text, k
            assert "NaN is not JSON" in text and "'address' not a string" in text
            await reg.close()
    run(go())


def test_etcd_transaction_limits(etcd1: EtcdCluster, prefix: str) -> None:
    """etcd's default --max-txn-ops is 128: 100 new units with 100 texts (201 puts) land
    whole (texts first, then the units in one transaction); 200 units cannot be one
    transaction and are refused naming the limit, leaving no unit behind; 300
    placements go in several fenced transactions."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            reg = await EtcdRegistry.open(c, prefix)
            batch = [u(f"u{i}.service", f"[Service]\nExecStart=/bin/u{i}\n")
                     for i in range(100)]
            assert len(await reg.put_units(batch, LAUNCHED)) == 100
            assert len(reg.list_units()) == 100
            big = [u(f"v{i}.service", A_TEXT) for i in range(200)]
            with pytest.raises(RegistryError, match=r"at most 128 operations.*--max-txn-ops"):
                await reg.put_units(big, LAUNCHED)
            assert len(reg.list_units()) == 100
            await reg.put_units(big[:120], LAUNCHED)
            await reg.put_units(big[120:], LAUNCHED)
            lease = await c.grant(30)
            epoch = await c.put(f"{prefix}/leader", "me", lease=lease)
            await reg.set_placements([(x.name, "m1", "p") for x in reg.list_units()],
                                     epoch=epoch)
            assert {x.machine for x in reg.list_units()} == {"m1"}
            await reg.delete_units([x.name for x in reg.list_units()][:100])
            assert len(reg.list_units()) == 200
            got = await c.range(f"{prefix}/placements/")
            assert len(got.kvs) == 200  # the deleted units' placements went too
            await reg.close()
    run(go())


@pytest.mark.parametrize("how", ["after", "before"])
def test_a_write_whose_answer_is_lost_is_made_exactly_once(etcd1: EtcdCluster, prefix: str,
                                                           how: str) -> None:
    """The connection to the member cut mid-write (the client cannot know whether it
    landed: maybe_applied): restart, which bumps a generation and so shows a double
    write, returns once the write is known landed, and it landed once."""
    async def go() -> None:
        cutter = Cutter(etcd1.members[0].client_port)
        await cutter.start()
        async with EtcdClient([cutter.endpoint, *etcd1.endpoints]) as c:
            reg = await EtcdRegistry.open(c, prefix)
            await reg.put_units([u("a.service", A_TEXT)], LOADED)
            cutter.armed = how
            await reg.restart(["a.service"])
            assert cutter.cut == 1
            a = reg.get_unit("a.service")
            assert a is not None and (a.generation, a.desired) == (1, LAUNCHED)
            async with EtcdClient(etcd1.endpoints) as direct:
                other = await EtcdRegistry.open(direct, prefix)
                b = other.get_unit("a.service")
                assert b is not None and b.generation == 1
                await other.close()
            await reg.close()
        await cutter.close()
    run(go())


@pytest.fixture
def etcd3(tmp_path: Any) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path / "regetcd3"), 3) as c:
        yield c


def test_quorum_lost_reads_answer_writes_refused_then_back(etcd3: EtcdCluster) -> None:
    """Stop 2 of 3 members: reads answer from the cache and staleness() says etcd has no
    quorum; writes raise Unavailable naming etcd and every endpoint. Start them: the
    registry is current again, writes work, nothing written before is lost, and a
    write made meanwhile through another registry is read."""
    async def go() -> None:
        async with EtcdClient(etcd3.endpoints) as c:
            reg = await EtcdRegistry.open(c, "/fleetd")
            await reg.put_units([u("a.service", A_TEXT)], LAUNCHED)
            await reg.add_machine(machine("m1"))
            for m in etcd3.members[1:]:
                m.stop()
            await until("the registry to say its answers may be stale", reg.staleness)
            why = reg.staleness()
            assert why is not None and why.startswith("etcd: no quorum since")
            assert "answers may be stale" in why
            assert [x.name for x in reg.list_units()] == ["a.service"]
            with pytest.raises(Unavailable) as e:
                await reg.set_desired(["a.service"], LOADED)
            assert "etcd has lost its quorum" in str(e.value)
            for m in etcd3.members:
                assert m.endpoint in str(e.value)
            a = reg.get_unit("a.service")
            assert a is not None and a.desired == LAUNCHED  # not made
            for m in etcd3.members[1:]:
                m.start()
            etcd3.wait_healthy()
            await until("the registry current again", lambda: reg.staleness() is None)
            async with EtcdClient(etcd3.endpoints) as c2:
                other = await EtcdRegistry.open(c2, "/fleetd")
                await other.put_units([UnitInput("b.service", B_TEXT, content_hash(B_TEXT))],
                                      LOADED)
                await other.close()
            await until("the other's write", lambda: reg.get_unit("b.service"))
            await reg.set_desired(["a.service"], LOADED)
            assert [(x.name, x.desired) for x in reg.list_units()] == [
                ("a.service", LOADED), ("b.service", LOADED)]
            assert [m.name for m in reg.list_machines()] == ["m1"]
            await reg.close()
    run(go())


def test_a_unit_stored_before_versions_gets_its_content_as_the_first_one(
        etcd1: EtcdCluster, prefix: str) -> None:
    """A unit document without versions (an older fleetd's, or ``fleetd migrate``'s):
    when the unit changes, its content becomes version 1 (a rollout then knows its
    instances' content for the template's)."""
    async def go() -> None:
        async with EtcdClient(etcd1.endpoints) as c:
            reg = await EtcdRegistry.open(c, prefix)
            await reg.put_units([u("web@.service", A_TEXT)], None)
            doc = {"hash": content_hash(A_TEXT), "vars": {}, "desired": "inactive",
                   "generation": 0, "updated_at": 5.0}  # as migrate writes it
            await c.put(key(prefix, "units", "web@.service"), encode(doc))
            await until("the cache without versions",
                        lambda: reg.list_versions("web@.service") == [])
            await reg.put_units([u("web@.service", B_TEXT)], None, replace=True,
                                follow=False, via="alice")
            assert [(v.version, v.hash, v.via, v.at) for v in
                    reg.list_versions("web@.service")] == [
                (1, content_hash(A_TEXT), BEFORE_VERSIONS, 5.0),
                (2, content_hash(B_TEXT), "alice", reg.list_versions("web@.service")[1].at)]
            await reg.close()
    run(go())
