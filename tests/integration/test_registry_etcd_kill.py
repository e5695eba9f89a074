"""EtcdRegistry while the etcd member its writes go to is killed (kill -9) in the middle
of one: every write either returns, having landed exactly once, or raises Unavailable
having not landed. ``restart`` bumps a generation, so the final generation counts the
writes that landed: it must equal the calls that returned."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator, List

import pytest
from etcdkit import EtcdCluster, etcd_cluster

from fleetd.registry.base import LAUNCHED, RegistryError, Unavailable, UnitInput, Unsure
from fleetd.registry.etcd import EtcdRegistry
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.units.model import content_hash

pytestmark = pytest.mark.etcd
TEXT = "[Service]\nExecStart=/bin/a\n"


@pytest.fixture
def etcd3(tmp_path: Any) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path / "regkill"), 3) as c:
        yield c


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_killing_the_member_mid_write_lands_each_write_once(etcd3: EtcdCluster,
                                                            victim: str) -> None:
    async def go() -> None:
        async with EtcdClient(etcd3.endpoints) as probe:
            statuses = await probe.statuses()
        leader = next(s.endpoint for s in statuses if s.is_leader)
        target = leader if victim == "leader" else next(
            s.endpoint for s in statuses if not s.is_leader)
        order = [target] + [e for e in etcd3.endpoints if e != target]
        async with EtcdClient(order) as c:
            reg = await EtcdRegistry.open(c, "/kill")
            await reg.put_units([UnitInput("a.service", TEXT, content_hash(TEXT))], LAUNCHED)
            done: List[int] = []
            refused: List[RegistryError] = []

            async def restart(i: int) -> None:
                try:
                    await reg.restart(["a.service"])
                    done.append(i)
                except (Unavailable, Unsure) as e:  # not made, or cannot say
                    refused.append(e)

            for i in range(12):
                if i == 4:  # this one is in flight when its member dies
                    task = asyncio.ensure_future(restart(i))
                    await asyncio.sleep(0.002)
                    next(m for m in etcd3.members if m.endpoint == target).kill()
                    await task
                else:
                    await restart(i)
            a = reg.get_unit("a.service")
            assert a is not None and a.generation == len(done)
            for e in refused:
                assert "etcd" in str(e) and "may or may not" not in str(e)
            await reg.close()
        rest = [e for e in etcd3.endpoints if e != target]
        async with EtcdClient(rest) as fresh:
            other = await EtcdRegistry.open(fresh, "/kill")
            b = other.get_unit("a.service")
            assert b is not None and b.generation == len(done) >= 8
            await other.close()
    asyncio.run(asyncio.wait_for(go(), 120))
