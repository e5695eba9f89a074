"""What fleetd asks one agent over a session, apart from its desired set: requests that
wait for one reply (``tail`` of a unit's log, ``usage``) and standing requests that
stream messages until told to stop (``follow``).

Kept apart from the session (fleetd.daemon.session), which owns the channel's life: this
object only numbers what is asked, matches what comes back by id, and ends every wait in
flight when the channel goes (``fail``), so no caller waits for an answer that cannot
come."""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator, Callable, Dict, Optional, Set, cast

from fleetd import protocol
from fleetd.daemon import reports
from fleetd.transport.base import Channel, TransportError
from fleetd.wire import messages

# what an agent says of a message type it does not know (fleetd.agent.daemon)
_UNKNOWN_TYPE = re.compile(r"unknown message type '([a-z_]+)'")
STREAM_QUEUE = 1000  # log lines held for a slow reader; beyond, the oldest are lost


class Asks:
    """The pending replies and streams of one session. ``channel`` says the session's
    channel now (None while it is not connected); ``parts`` gathers a reply that comes
    in several messages (a long journal tail: protocol.chunks)."""

    def __init__(self, machine: str, channel: Callable[[], Optional[Channel]],
                 parts: reports.Parts) -> None:
        self.machine = machine
        self._channel = channel
        self._parts = parts
        self._replies: Dict[int, asyncio.Future[messages.Reply]] = {}
        self._kinds: Dict[int, str] = {}  # what each pending request asked
        self._streams: Dict[int, asyncio.Queue[Optional[messages.Log]]] = {}
        self._next_id = 0
        # requests this connection's agent does not know (older than them): asked again,
        # they fail at once instead of waiting out their timeout on every question
        self._unknown: Set[str] = set()

    def _open(self) -> Channel:
        channel = self._channel()
        if channel is None:
            raise TransportError("unreachable", f"machine {self.machine} is not connected")
        return channel

    async def request(self, kind: str, timeout: float = 5.0, **fields: Any
                      ) -> messages.Reply:
        """Ask the agent something and wait for its reply (checked for its id only: a
        caller reads its fields as untrusted)."""
        channel = self._open()
        if kind in self._unknown:
            raise TransportError("unsupported", self._unsupported(kind))
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[messages.Reply] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        self._kinds[ident] = kind
        try:
            channel.write(protocol.encode(kind, id=ident, **fields))
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TransportError(
                "unreachable", f"machine {self.machine} did not answer within {timeout:.0f}s"
            ) from None
        finally:
            self._replies.pop(ident, None)
            self._kinds.pop(ident, None)

    def _unsupported(self, kind: str) -> str:
        return f"machine {self.machine}: its agent is older than the {kind!r} request"

    def agent_error(self, message: str) -> None:
        """An error the agent sent with no id. One that says it does not know a message
        type (an agent older than the request) ends every pending request of that kind
        now, and later ones at once, until the next connection (an upgraded agent)."""
        m = _UNKNOWN_TYPE.search(message)
        if m is None:
            return
        kind = m.group(1)
        self._unknown.add(kind)
        for ident, asked in self._kinds.items():
            future = self._replies.get(ident)
            if asked == kind and future is not None and not future.done():
                future.set_exception(TransportError("unsupported", self._unsupported(kind)))

    async def stream(self, kind: str, stop: str, **fields: Any
                     ) -> AsyncIterator[messages.Log]:
        """Messages the agent sends for a standing request until the caller stops
        iterating; then ``stop`` ({id}) tells the agent to end it. Ends by itself if the
        session drops (``fail``)."""
        channel = self._open()
        self._next_id += 1
        ident = self._next_id
        queue: asyncio.Queue[Optional[messages.Log]] = asyncio.Queue(maxsize=STREAM_QUEUE)
        self._streams[ident] = queue
        try:
            channel.write(protocol.encode(kind, id=ident, **fields))
            while True:
                msg = await queue.get()
                if msg is None:
                    return
                yield msg
        finally:
            self._streams.pop(ident, None)
            if self._channel() is channel:
                channel.write(protocol.encode(stop, id=ident))

    def reply(self, msg: Dict[str, Any]) -> None:
        """A ``reply`` from the agent: the answer of the request with its id, if one
        still waits (a late answer is dropped)."""
        ident = reports.message_id(msg)
        future = self._replies.get(ident)
        if future is None or future.done():
            return
        if "lines" in msg:  # a journal tail: perhaps in several replies
            lines = self._parts.whole(msg, "lines", ident)
            if lines is None:
                return
            msg = {**msg, "lines": lines}
        future.set_result(cast(messages.Reply, msg))  # its id checked, as a reply's

    def log(self, msg: Dict[str, Any]) -> None:
        """A ``log`` line of a standing request, to its stream if one still reads."""
        queue = self._streams.get(reports.message_id(msg))
        if queue is not None:
            if queue.full():  # a reader this far behind loses lines, not fleetd
                queue.get_nowait()
            queue.put_nowait(cast(messages.Log, msg))  # its id checked, as a log's

    def fail(self, reason: str) -> None:
        """The channel is gone: every request in flight fails with ``reason`` and every
        stream ends; the next connection's agent may know more requests."""
        self._unknown.clear()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(TransportError("unreachable", reason))
        for queue in self._streams.values():
            if queue.full():  # a reader far behind still hears the end (QueueFull else)
                queue.get_nowait()
            queue.put_nowait(None)
