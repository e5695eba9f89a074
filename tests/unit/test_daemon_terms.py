"""Two fleetd on one registry: the leader alone drives hosts and writes; a follower
decides without writing, and takes over with a newer epoch when the leader's lock can
no longer be renewed, after the leader has stopped its sessions.

The registry is shared in memory (MemoryRegistry fences writes by ``leader_epoch``, as
etcd does in the write's transaction), the lock store is ``FakeStore``; the real etcd
versions of this are tests/integration/test_ha_*.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any, List, Tuple

from fleetd.daemon.app import Daemon
from fleetd.daemon.config import Config
from fleetd.daemon.service.errors import NotLeading
from fleetd.registry.base import LAUNCHED, MachineRecord, NotLeader, UnitInput
from fleetd.testing.leader import FakeLock, FakeStore
from fleetd.testing.registry import MemoryRegistry
from fleetd.testing.transport import FakeTransport
from fleetd.testing.waiting import until
from fleetd.units.model import content_hash

SERVICE = "[Service]\nExecStart=/bin/sleep 1000\n"


def machine() -> MachineRecord:
    return MachineRecord(name="h1", address="10.0.0.1", port=22, user="root", identity=None,
                         known_hosts=None, agent_command="agent", metadata={})


def fleetd(tmp_path: Path, name: str, registry: MemoryRegistry, store: FakeStore
           ) -> Tuple[Daemon, FakeLock, FakeTransport]:
    lock = FakeLock(store, name, ttl=3.0)
    transport = FakeTransport()
    config = Config(state_dir=str(tmp_path / name), socket=str(tmp_path / f"{name}.sock"),
                    name=name)
    return Daemon(config, registry, lock, lambda m: transport), lock, transport


def start(d: Daemon) -> List[asyncio.Task[None]]:
    return [asyncio.ensure_future(d.engine.run()), asyncio.ensure_future(d.leadership.run())]


def test_only_the_leader_drives_hosts_and_a_deposed_one_stops_before_the_other_leads(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = MemoryRegistry()
        await registry.add_machine(machine())
        await registry.put_units([UnitInput("a.service", SERVICE, content_hash(SERVICE))],
                                 LAUNCHED)
        store = FakeStore(time.monotonic)
        a, lock_a, hosts_a = fleetd(tmp_path, "a", registry, store)
        tasks = start(a)
        await until(lambda: a.epoch is not None)
        registry.leader_epoch = first = a.epoch
        b, _, hosts_b = fleetd(tmp_path, "b", registry, store)
        deposed_at: List[float] = []
        elected_at: List[float] = []
        a_deposed, b_elected = a._deposed, b._elected

        async def a_steps_down(reason: str) -> None:
            deposed_at.append(time.monotonic())
            await a_deposed(reason)

        async def b_leads(epoch: int) -> None:
            elected_at.append(time.monotonic())
            registry.leader_epoch = epoch  # the store's term, as etcd's txn compares it
            await b_elected(epoch)

        a.leadership._on_deposed = a_steps_down
        b.leadership._on_elected = b_leads
        tasks += start(b)
        try:
            # the leader connects, places and pushes; the follower touches no host
            await until(lambda: "h1" in a.sessions and a.sessions["h1"].connected)
            await until(lambda: getattr(registry.get_unit("a.service"), "machine", None)
                        == "h1")
            await until(lambda: any(w.get("type") == "desired"
                                    for w in hosts_a.channel.written))
            assert hosts_a.channel.written[0]["epoch"] == first
            for callback in registry.callbacks:  # what etcd's watch tells the follower
                callback()
            await until(lambda: ("a.service", "h1") in b.engine.snapshot().expected())
            assert b.epoch is None and b.sessions == {} and hosts_b.channels == []
            # what needs a host's session is refused by the follower, naming the leader,
            # with ready: false so that a client goes on to another endpoint
            for refused in (lambda: b.units.log_of("a.service"),
                            lambda: b.machines.remove(machine(), purge=False)):
                try:
                    result = refused()
                    if asyncio.iscoroutine(result):
                        await result
                except NotLeading as exc:
                    assert "this fleetd follows" in str(exc) and exc.details["leader"] == "a"
                    assert exc.details["ready"] is False
                else:
                    raise AssertionError("a follower did what only the leader can")

            lock_a.cut()  # the leader can no longer reach the lock's store
            await until(lambda: b.epoch is not None, timeout=15)
            assert deposed_at and elected_at and deposed_at[0] < elected_at[0]
            assert a.epoch is None and a.sessions == {} and not a.engine.leading
            assert hosts_a.channel.closed
            assert b.epoch is not None and b.epoch > first
            await until(lambda: "h1" in b.sessions and b.sessions["h1"].connected)
            assert hosts_b.channel.written[0]["epoch"] == b.epoch
            # what the old term would still write is refused, as etcd refuses it
            try:
                await registry.set_placements([("a.service", None, "stale")], epoch=first)
            except NotLeader:
                pass
            else:
                raise AssertionError("a write of the old term was taken")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a._deposed("test over")
            await b._deposed("test over")

    asyncio.run(scenario())


def test_a_term_whose_beginning_outlasts_the_lock_ttl_keeps_the_lock(tmp_path: Path) -> None:
    """Marking 8 machines the last leader left up takes 4 s here (0.5 s a write), more
    than the lock's 3 s TTL: the leadership loop renews meanwhile, so the term begins
    and goes on. When the marks ran inside the loop, the new leader stepped down as
    soon as they were done ("no renewal confirmed in time") and every next term did the
    same: test_scale_sim saw minutes without a leader at 200 machines on etcd."""
    async def scenario() -> None:
        registry = MemoryRegistry()
        names = [f"h{i}" for i in range(8)]
        for name in names:
            await registry.add_machine(dataclasses.replace(machine(), name=name,
                                                           address=f"10.0.0.{name[1:]}"))
            await registry.update_machine(name, state="up")
        update = registry.update_machine

        async def slow(name: str, **fields: Any) -> None:
            if fields.get("error") == "not heard since this fleetd leads":
                await asyncio.sleep(0.5)
            await update(name, **fields)
        registry.update_machine = slow  # type: ignore[method-assign]
        store = FakeStore(time.monotonic)
        config = Config(state_dir=str(tmp_path / "a"), socket=str(tmp_path / "a.sock"),
                        name="a")
        a = Daemon(config, registry, FakeLock(store, "a", ttl=3.0),
                   lambda m: FakeTransport(hostname=m.name))
        deposed: List[str] = []
        on_deposed = a._deposed

        async def steps_down(reason: str) -> None:
            deposed.append(reason)
            await on_deposed(reason)
        a.leadership._on_deposed = steps_down
        tasks = start(a)
        try:
            await until(lambda: a.epoch is not None, timeout=15)
            first = a.epoch
            assert all(registry.get_machine(n).state == "unreachable" or n in a.sessions
                       for n in names)
            await asyncio.sleep(2.0)  # past the deadline of a renewal missed while marking
            assert deposed == [] and a.epoch == first
            await until(lambda: all(a.sessions[n].connected for n in names))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a._deposed("test over")

    asyncio.run(scenario())
