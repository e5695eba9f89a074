"""How long fleetd counts a machine as silent, for liveness and for fencing alike."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fleetd.daemon.config import Config
from fleetd.daemon.main import open_daemon
from fleetd.daemon.session import MachineSession
from fleetd.registry.base import MachineRecord
from fleetd.testing.transport import FakeTransport


def test_a_restarted_fleetd_counts_silence_from_its_start_not_from_the_old_last_seen(
        tmp_path: Path) -> None:
    """The registry's last_seen is the previous fleetd's last connect, maybe an hour old;
    the agent heard that fleetd until it died. Counting from last_seen would move a
    fenced unit at once, while its agent may still run it."""
    async def scenario() -> None:
        d = open_daemon(Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s")))
        try:
            hour_ago = time.time() - 3600
            record = MachineRecord("h1", "10.0.0.1", 22, "root", None, None, "agent", {},
                                   last_seen=hour_ago, state="unreachable")
            await d.registry.add_machine(record)

            unused = FakeTransport()  # never started
            d.sessions["h1"] = MachineSession(record, d.registry, lambda m: unused, d.changed)
            now = d.started_at + 2.0
            view = d.engine.machine_view(record, now)
            assert view.silent_s < 2.0  # not ~3600 s
        finally:
            await d.registry.close()

    asyncio.run(scenario())


def test_a_machine_whose_first_connect_of_the_term_is_under_way_is_not_silent(
        tmp_path: Path) -> None:
    """An hour after fleetd's start, a session still on its first connect says nothing
    of the machine (a restart's backlog of handshakes is fleetd's, not the machine's
    silence); once that try has failed, silence counts from the start as before."""
    async def scenario() -> None:
        d = open_daemon(Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s")))
        try:
            record = MachineRecord("h1", "10.0.0.1", 22, "root", None, None, "agent", {},
                                   last_seen=time.time() - 60, state="unreachable")
            await d.registry.add_machine(record)
            unused = FakeTransport()  # never started: its first connect not through yet
            session = MachineSession(record, d.registry, lambda m: unused, d.changed)
            d.sessions["h1"] = session
            later = d.started_at + 3600
            assert d.engine.machine_view(record, later).silent_s == 0.0
            session.retry_in = 1.0  # the first try failed: waiting to retry
            assert d.engine.machine_view(record, later).silent_s > 3000
        finally:
            await d.registry.close()

    asyncio.run(scenario())
