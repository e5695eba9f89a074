"""fleetd.daemon.asks: an agent older than a request (it answers "unknown message type")
ends that request now, and the same request later at once, not after its timeout."""

from __future__ import annotations

import asyncio
import json
from typing import List, Optional

import pytest

from fleetd.daemon import reports
from fleetd.daemon.asks import STREAM_QUEUE, Asks
from fleetd.transport.base import TransportError


class Channel:
    """What Asks writes, and a hook to answer it as an old agent does."""

    def __init__(self) -> None:
        self.written: List[dict] = []
        self.on_write = lambda msg: None

    def write(self, line: str) -> None:
        msg = json.loads(line)
        self.written.append(msg)
        self.on_write(msg)


def old_agent(asks: Asks, channel: Channel) -> None:
    """An agent from before ``usage``: an error with no id (fleetd.agent.daemon)."""
    channel.on_write = lambda msg: asyncio.get_running_loop().call_soon(
        asks.agent_error, f"unknown message type {msg['type']!r}")


def test_a_request_the_agent_does_not_know_fails_now_and_then_at_once() -> None:
    async def main() -> None:
        channel = Channel()
        current: Optional[Channel] = channel
        asks = Asks("h1", lambda: current, reports.Parts())  # type: ignore[arg-type,return-value]
        old_agent(asks, channel)
        with pytest.raises(TransportError, match="older than the 'usage' request"):
            await asks.request("usage", timeout=0.5)
        channel.on_write = lambda msg: None
        with pytest.raises(TransportError, match="older than the 'usage' request"):
            await asks.request("usage", timeout=0.5)
        assert len(channel.written) == 1  # the second never went to the agent
        # other requests are still asked; a new connection asks usage again
        asks.fail("connection to the agent closed")
        with pytest.raises(TransportError, match="did not answer"):
            await asks.request("usage", timeout=0.05)
        assert len(channel.written) == 2

    asyncio.run(main())


def test_other_agent_errors_leave_requests_waiting() -> None:
    async def main() -> None:
        channel = Channel()
        asks = Asks("h1", lambda: channel, reports.Parts())  # type: ignore[arg-type,return-value]
        channel.on_write = lambda msg: asyncio.get_running_loop().call_soon(
            asks.agent_error, "line too long")
        with pytest.raises(TransportError, match="did not answer"):
            await asks.request("usage", timeout=0.05)

    asyncio.run(main())


def test_a_stream_whose_reader_is_far_behind_still_ends_when_the_channel_goes() -> None:
    async def main() -> None:
        channel = Channel()
        asks = Asks("h1", lambda: channel, reports.Parts())  # type: ignore[arg-type,return-value]
        stream = asks.stream("follow", "unfollow", unit="a.service")
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # the request is written; its queue waits
        ident = channel.written[0]["id"]
        for n in range(STREAM_QUEUE + 1):
            asks.log({"type": "log", "id": ident, "line": str(n)})
        asks.fail("connection to the agent closed")  # the queue is full: no QueueFull
        got = [await first] + [msg async for msg in stream]
        assert len(got) == STREAM_QUEUE - 1 and got[-1]["line"] == str(STREAM_QUEUE)

    asyncio.run(main())
