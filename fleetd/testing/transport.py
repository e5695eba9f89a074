"""A fake transport for tests of fleetd's machine session (fleetd.daemon.session).

``FakeTransport`` satisfies ``fleetd.transport.base.Transport`` the way the session uses
it: each ``open`` is a new connection, a ``FakeChannel`` whose first line is the agent's
hello; the test then plays the agent on it. ``Unreachable`` is a host that never
answers. The real transport (SSH) is tested in tests/unit/test_ssh_files.py against an
SSH server in the test's process, and in tests/integration against real hosts.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, cast

from fleetd import protocol
from fleetd.registry.base import MachineRecord
from fleetd.transport.base import TransportError
from fleetd.wire import messages


class FakeChannel:
    """The agent's end of one session channel, played by the test.

    What fleetd writes is decoded, in order, into ``written``; what the test puts in
    ``incoming`` (``say`` encodes a message) is what fleetd reads. ``close`` ends what
    fleetd reads, as a command whose output ended."""

    def __init__(self, command: str = "", stderr: str = "") -> None:
        self.command = command
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: List[Dict[str, Any]] = []
        self.closed = False
        self.stderr = stderr

    # -- fleetd.transport.base.Channel -----------------------------------------------------
    async def readline(self) -> bytes:
        return await self.incoming.get()

    def write(self, data: bytes) -> None:
        self.written.append(protocol.decode(data))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(b"")

    async def stderr_tail(self) -> str:
        return self.stderr

    # -- for the test ---------------------------------------------------------------------
    def say(self, kind: str, **fields: Any) -> None:
        """The agent sends the message ``kind`` with ``fields``."""
        self.incoming.put_nowait(protocol.encode(kind, **fields))

    def kinds(self) -> List[str]:
        """The type of each message fleetd wrote, in order."""
        return [m["type"] for m in self.written]


class FakeTransport:
    """A host whose agent answers every ``open`` with its hello.

    ``fenced``: what the hello lists (None: an agent older than fencing, whose hello has
    no "fenced"). ``channels``: every connection opened, in order."""

    def __init__(self, fenced: Optional[Sequence[str]] = (), machine_id: str = "m1",
                 hostname: str = "h1", agent_version: str = "t") -> None:
        self.fenced = fenced
        self.machine_id = machine_id
        self.hostname = hostname
        self.agent_version = agent_version
        self.channels: List[FakeChannel] = []

    @property
    def channel(self) -> FakeChannel:
        """The latest connection."""
        return self.channels[-1]

    async def open(self, command: str) -> FakeChannel:
        channel = FakeChannel(command)
        hello: Dict[str, Any] = dict(messages.agent_hello(
            self.machine_id, self.hostname, self.agent_version, {}, list(self.fenced or ())))
        if self.fenced is None:
            del hello["fenced"]
        channel.incoming.put_nowait(protocol.dump(cast(messages.Message, hello)))
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self.channels:
            channel.close()


class Unreachable:
    """A host that never answers: every session to it stays down, quietly. Pass the
    class itself as the Daemon's or the session's transport factory."""

    def __init__(self, machine: MachineRecord) -> None:
        self.machine = machine

    async def open(self, command: str) -> FakeChannel:
        raise TransportError("unreachable", f"{self.machine.name}: a test host, never there")

    async def close(self) -> None:
        pass
