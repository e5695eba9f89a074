"""A loopback TCP proxy in front of one etcd member, for faults a member's death cannot
make on cue: a transaction whose answer is lost (it landed, the client cannot know),
one that never reaches etcd although the client sent it, and a watch stream that goes
quiet and then breaks (so the watch resumes elsewhere from an old revision)."""

from __future__ import annotations

import asyncio
from typing import List, Optional

from etcdkit import free_port


class Cutter:
    """Forwards every connection to the member at ``target_port`` on loopback. Armed
    (``armed = "after"`` or ``"before"``), it cuts the connection of the next
    transaction request: after etcd answered it (the answer is dropped) or before
    sending it on. ``hold_watches()`` stops passing on what watch streams say;
    ``cut_watches()`` then breaks them. ``pause()`` cuts everything and takes no new
    connection until ``resume()``."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.armed: Optional[str] = None
        self.cut = 0
        self.holding = False
        self._watches: List[asyncio.StreamWriter] = []
        self._open: List[asyncio.StreamWriter] = []
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def pause(self) -> None:
        """Cut every connection and refuse new ones (a fleetd cut off from etcd)."""
        await self.close()
        for w in self._open:
            w.transport.abort()
        self._open.clear()

    async def resume(self) -> None:
        await self.start()

    def hold_watches(self) -> None:
        self.holding = True

    def cut_watches(self) -> None:
        self.holding = False
        for w in self._watches:
            w.transport.abort()
        self._watches.clear()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        self._open.append(cw)
        dropping = False  # a transaction went on to etcd: its answer is dropped
        watch = False

        async def back() -> None:
            while data := await sr.read(65536):
                if dropping:
                    cw.transport.abort()
                    return
                if watch and self.holding:
                    continue  # swallowed: the stream looks alive and says nothing
                cw.write(data)
                await cw.drain()
            cw.close()
        pump = asyncio.ensure_future(back())
        try:
            while data := await cr.read(65536):
                if data.startswith(b"POST /v3/watch"):
                    watch = True
                    self._watches.append(cw)
                if self.armed and data.startswith(b"POST /v3/kv/txn"):
                    how, self.armed = self.armed, None
                    self.cut += 1
                    if how == "before":
                        cw.transport.abort()
                        break
                    dropping = True
                sw.write(data)
                await sw.drain()
        except ConnectionError:
            pass
        finally:
            await asyncio.sleep(0)
            if not dropping:
                pump.cancel()
            sw.close()
            if cw in self._open:
                self._open.remove(cw)
