"""fleetd's side of epoch fencing (issue 12): the session says the daemon's epoch in its
hello, and an agent's epoch refusal - of the hello, or later of a desired set - ends the
session with the refusal as the machine's error and the longest backoff before the next
try (a deposed fleetd knocks slowly; the real agent's side is
tests/integration/test_agent_epoch.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from fleetd import protocol
from fleetd.daemon.app import Daemon
from fleetd.daemon.config import Config
from fleetd.daemon.session import BACKOFF_MAX_S, BACKOFF_MIN_S, MachineSession
from fleetd.registry.base import MachineRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.leader import Held
from fleetd.testing.registry import at_once
from fleetd.testing.transport import FakeChannel, FakeTransport
from fleetd.testing.waiting import until
from fleetd.wire import messages

REFUSED = "refused by the agent: a newer fleetd (epoch 7) leads this host"


class RefusingAgent(FakeTransport):
    """An agent that answers every hello with ``first`` instead of its own hello."""

    def __init__(self, first: messages.Error) -> None:
        super().__init__()
        self.first = first

    async def open(self, command: str) -> FakeChannel:
        channel = FakeChannel(command)
        channel.incoming.put_nowait(protocol.dump(self.first))
        self.channels.append(channel)
        return channel


def machine() -> MachineRecord:
    return MachineRecord(name="h1", address="10.0.0.1", port=22, user="root",
                         identity=None, known_hosts=None, agent_command="agent", metadata={})


def new_session(tmp_path: Path, transport: FakeTransport, **kwargs: Any
                ) -> Tuple[MachineSession, SqliteRegistry]:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.add_machine(machine()))
    record = registry.get_machine("h1")
    assert record is not None
    return MachineSession(record, registry, lambda m: transport, lambda r: None,
                          heartbeat_s=60, **kwargs), registry


def machine_error(registry: SqliteRegistry) -> str:
    record = registry.get_machine("h1")
    assert record is not None
    return f"{record.state} {record.error or ''}".strip()


@pytest.mark.parametrize("epoch", [None, 0, 5, messages.EPOCH_MAX])
def test_the_hello_says_the_daemons_epoch(tmp_path: Path, epoch: Any) -> None:
    async def scenario() -> None:
        transport = FakeTransport()
        session, registry = new_session(
            tmp_path, transport, **({} if epoch is None else {"epoch": epoch}))
        session.start()
        try:
            await until(lambda: session.connected)
            assert transport.channel.written[0] == messages.daemon_hello(
                60, epoch=epoch or 0)
        finally:
            await session.stop()
            await registry.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("answer", "error", "retry_in"), [
    (messages.epoch_refused(5, 7), f"error {REFUSED}", BACKOFF_MAX_S),
    # any other refusal of the hello: retried as before, soon
    (messages.error("hello: heartbeat_s: want a number"),
     "error agent spoke nonsense: the agent refused: hello: heartbeat_s: want a number",
     BACKOFF_MIN_S),
    ({**messages.epoch_refused(5, 7), "epoch": "7"},
     "error agent spoke nonsense: error message: epoch: want a whole number from 0 to "
     f"{messages.EPOCH_MAX}, not '7'", BACKOFF_MIN_S),
])
def test_a_refused_hello_is_the_machines_error(
        tmp_path: Path, answer: messages.Error, error: str, retry_in: float) -> None:
    async def scenario() -> None:
        transport = RefusingAgent(answer)
        session, registry = new_session(tmp_path, transport, epoch=5)
        session.start()
        try:
            await until(lambda: session.retry_in is not None)
            assert machine_error(registry) == error
            assert not session.connected
            assert session.retry_in == retry_in
            assert transport.channels[0].written[0]["epoch"] == 5
        finally:
            await session.stop()
            await registry.close()

    asyncio.run(scenario())


def test_a_refused_desired_set_ends_the_session_and_it_backs_off(tmp_path: Path) -> None:
    """Another fleetd said hello since: the agent refuses this one's set. The session
    does not go on as if it led the host, nor reconnect at once."""
    async def scenario() -> None:
        transport = FakeTransport()
        changes: List[bool] = []
        session, registry = new_session(tmp_path, transport, epoch=5)
        session.changed = changes.append
        session.start()
        try:
            await until(lambda: session.connected)
            assert machine_error(registry) == "up"
            session.push([])
            await until(lambda: "desired" in transport.channel.kinds())
            transport.channel.say("error", **{
                k: v for k, v in messages.epoch_refused(5, 7).items()
                if k not in ("v", "type")})
            await until(lambda: session.retry_in is not None)
            assert machine_error(registry) == f"error {REFUSED}"
            assert not session.connected and transport.channel.closed
            assert session.retry_in == BACKOFF_MAX_S
            assert len(transport.channels) == 1
            assert changes[-1] is True  # the engine hears the machine is no longer up
        finally:
            await session.stop()
            await registry.close()

    asyncio.run(scenario())


def test_an_error_without_an_epoch_leaves_the_session_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = FakeTransport()
        session, registry = new_session(tmp_path, transport, epoch=5)
        session.start()
        try:
            await until(lambda: session.connected)
            transport.channel.say("error", message="refused from the desired set: x")
            transport.channel.say("heartbeat", seq=1, time=1.0)  # read after the error
            await until(lambda: transport.channel.incoming.empty())
            await asyncio.sleep(0)
            assert session.connected and session.retry_in is None
            assert machine_error(registry) == "up"
        finally:
            await session.stop()
            await registry.close()

    asyncio.run(scenario())


def test_the_daemon_gives_its_epoch_to_every_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        state = str(tmp_path / "state")
        os.makedirs(state)
        registry = SqliteRegistry(os.path.join(state, "registry.db"))
        transport = FakeTransport()
        d = Daemon(Config(state_dir=state, socket=str(tmp_path / "s")), registry, Held(9),
                   lambda m: transport)
        try:
            await registry.add_machine(machine())
            await d._elected(9)  # the term begins: a session to every machine
            await until(lambda: d.sessions["h1"].connected)
            assert transport.channel.written[0]["epoch"] == 9
        finally:
            await d._deposed("the test ends")
            await registry.close()

    asyncio.run(scenario())
