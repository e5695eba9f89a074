"""A new term's engine places nothing until every session has connected or failed its
first try (at most SETTLE_S): placing at once put every unit started while nobody led on
the first agent to answer (tests/integration/test_ha_failover.py: 6 of 6 on one host)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Dict

import pytest

from fleetd.daemon import app
from fleetd.daemon.app import Daemon
from fleetd.daemon.config import Config
from fleetd.registry.base import MachineRecord
from fleetd.testing.leader import FakeLock, FakeStore
from fleetd.testing.registry import MemoryRegistry
from fleetd.testing.transport import FakeChannel, FakeTransport


class Held(FakeTransport):
    """A host whose agent answers only once ``go`` is set (a slow SSH connect)."""

    def __init__(self, hostname: str) -> None:
        super().__init__(machine_id=f"id-{hostname}", hostname=hostname)
        self.go = asyncio.Event()

    async def open(self, command: str) -> FakeChannel:
        await self.go.wait()
        return await super().open(command)


async def daemon(tmp_path: Path, transports: Dict[str, FakeTransport]) -> Daemon:
    registry = MemoryRegistry()
    for k, name in enumerate(transports, 1):
        await registry.add_machine(MachineRecord(
            name=name, address=f"10.0.0.{k}", port=22, user="root", identity=None,
            known_hosts=None, agent_command="agent", metadata={}))
        await registry.update_machine(name, state="up")  # as the last leader left it
    config = Config(state_dir=str(tmp_path / "a"), socket=str(tmp_path / "a.sock"), name="a")
    return Daemon(config, registry, FakeLock(FakeStore(lambda: 0.0), "a", ttl=3.0),
                  lambda m: transports[m.name])


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_the_engine_places_once_every_session_has_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        slow = Held("h2")
        d = await daemon(tmp_path, {"h1": FakeTransport(hostname="h1"), "h2": slow})
        await d._elected(5)
        try:
            await until(lambda: d.sessions["h1"].connected)
            await asyncio.sleep(0.2)
            assert not d.engine.leading  # h2 has not answered yet: nothing placed
            slow.go.set()
            await until(lambda: d.engine.leading)
            assert d.sessions["h2"].connected and d.engine.epoch == 5
        finally:
            await d._deposed("test over")

    asyncio.run(scenario())


def test_a_host_that_never_answers_holds_the_engine_at_most_settle_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "SETTLE_S", 0.3)

    async def scenario() -> None:
        d = await daemon(tmp_path, {"h1": FakeTransport(hostname="h1"), "h2": Held("h2")})
        await d._elected(5)
        try:
            await until(lambda: d.engine.leading, timeout=2.0)
            assert not d.sessions["h2"].connected
        finally:
            await d._deposed("test over")

    asyncio.run(scenario())


def test_a_term_that_ends_while_settling_never_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        d = await daemon(tmp_path, {"h1": Held("h1")})
        await d._elected(5)
        await d._deposed("lost the lock")
        await asyncio.sleep(0.1)
        assert not d.engine.leading and d.engine.epoch is None

    asyncio.run(scenario())
