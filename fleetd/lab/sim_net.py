"""A simulated machine's network: the TCP connections between fleetd and its SSH server,
relayed so that they can be cut off silently or slowed.

Each accepted connection is relayed to the machine's SSH server through a socket pair
(``Link``). That relay is the simulated wire, and the only thing the levers touch:

- **cut**: both ends stop being read, and nothing more is written; the sockets stay
  open, so fleetd gets no FIN and no RST - its writes fill the kernel's buffers and
  then wait, its reads get nothing, as in a network partition. A connect made while
  cut completes in the kernel (the listen backlog) and then hears nothing, not even the
  SSH banner: fleetd's connect times out, as it does on a host that drops packets.
  ``heal`` resumes reading: what was held back flows, nothing is lost or reordered.
- **slow**: every chunk either way is delivered ``delay`` seconds late (in order).

The relay copies bytes and never looks at them: SSH runs end to end over it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, List, Optional, Set


class _End(asyncio.Protocol):
    """One side of a link: what it reads is written to the other side."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.transport: Optional[asyncio.Transport] = None
        self.peer: Optional[_End] = None
        self.pending: List[bytes] = []  # for this side, read before it was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.link.wire.cut:
            # not here: Python 3.11's transport starts reading after connection_made,
            # undoing a pause made in it; the next turn of the loop is still before any
            # read (test_sim: a connection made while cut hears nothing)
            asyncio.get_running_loop().call_soon(self._hold)
        for data in self.pending:
            self.transport.write(data)  # type: ignore[union-attr]
        self.pending = []

    def _hold(self) -> None:
        if self.link.wire.cut and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        if peer.transport is None:
            peer.pending.append(data)
            return
        delay = self.link.wire.delay
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, _write, peer.transport, data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> Optional[bool]:
        if self.peer is not None and self.peer.transport is not None \
                and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True  # half-close: the other direction may still flow

    def pause_writing(self) -> None:  # our buffer is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None \
                and not self.link.wire.cut:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.link.close()


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


class Wire:
    """The levers of one machine's network, and every link over it."""

    def __init__(self) -> None:
        self.cut = False
        self.delay = 0.0
        self.links: Set[Link] = set()

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        for link in list(self.links):
            link.reading(not cut)

    def close_all(self) -> None:
        for link in list(self.links):
            link.close()


class Link:
    """One relayed connection: ``outer`` is fleetd's TCP connection, ``inner`` the
    socket pair's end whose twin the SSH server runs on."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.outer = _End(self)
        self.inner = _End(self)
        self.outer.peer, self.inner.peer = self.inner, self.outer
        self.closed = False
        wire.links.add(self)

    def reading(self, on: bool) -> None:
        for end in (self.outer, self.inner):
            if end.transport is not None and not end.transport.is_closing():
                if on:
                    end.transport.resume_reading()
                else:
                    end.transport.pause_reading()

    def close(self) -> None:
        """Either end closed: close the other (a FIN, as the host's kernel would send)."""
        if self.closed:
            return
        self.closed = True
        self.wire.links.discard(self)
        for end in (self.outer, self.inner):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()


async def serve(host: str, port: int, wire: Wire,
                ssh: Callable[[socket.socket], None]) -> asyncio.Server:
    """Listen on ``host:port``; each connection is relayed over ``wire`` to a socket pair
    whose other end goes to ``ssh`` (which runs the SSH server on it)."""
    loop = asyncio.get_running_loop()
    pending: Set[asyncio.Future[None]] = set()  # attaches under way (held: not collected)

    def accepted() -> asyncio.Protocol:
        link = Link(wire)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)

        async def attach() -> None:
            try:
                await loop.create_connection(lambda: link.inner, sock=ours)
            except OSError:
                link.close()
                theirs.close()
                return
            ssh(theirs)
        task = asyncio.ensure_future(attach())
        pending.add(task)
        task.add_done_callback(pending.discard)
        return link.outer

    return await loop.create_server(accepted, host, port, backlog=128, reuse_address=True)
