"""A new term marks the machines the last leader left up as not heard *before* the
fleetd says it leads: while it says so, its list-machines never shows a machine up that
it has not heard (seen on etcd: a restarted fleetd answered leader with the dead
leader's "up" still in the registry, tests/integration/test_fleetd_crash.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, List, Tuple

from fleetd.daemon.app import Daemon
from fleetd.daemon.config import Config
from fleetd.registry.base import MachineRecord
from fleetd.testing.leader import FakeLock, FakeStore
from fleetd.testing.registry import MemoryRegistry
from fleetd.testing.transport import FakeTransport


def test_a_new_leader_says_it_leads_only_after_marking_the_old_leaders_up_machines(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = MemoryRegistry()
        await registry.add_machine(MachineRecord(
            name="h1", address="10.0.0.1", port=22, user="root", identity=None,
            known_hosts=None, agent_command="agent", metadata={}))
        await registry.update_machine("h1", state="up")  # as the dead leader left it
        config = Config(state_dir=str(tmp_path / "a"), socket=str(tmp_path / "a.sock"),
                        name="a")
        transport = FakeTransport()
        d = Daemon(config, registry, FakeLock(FakeStore(lambda: 0.0), "a", ttl=3.0),
                   lambda m: transport)
        seen: List[Tuple[Any, ...]] = []
        update = registry.update_machine

        async def marking(name: str, **fields: Any) -> None:
            seen.append((d.status()["leader"], d.machines.following() is None,
                         registry.get_machine(name).state))
            await update(name, **fields)

        registry.update_machine = marking
        await d._elected(7)
        try:
            assert seen[0] == (False, False, "up"), seen
            assert d.status()["leader"] is True and d.epoch == 7
            assert registry.get_machine("h1").state == "unreachable"
            assert "h1" in d.sessions  # and its session opened, in the term
        finally:
            await d._deposed("test over")

    asyncio.run(scenario())
