"""A watch over etcd's JSON gateway: one streaming ``POST /v3/watch`` whose body creates
the watch and whose answer is newline-separated JSON messages (``{"result": ...}`` or
``{"error": ...}``) for as long as the connection lasts.

The first message says the watch is ``created`` (with the store's revision then), the
next ones carry ``events``, or none (a progress notification: nothing happened up to
the header's revision), or say it was ``canceled``: with a ``compact_revision`` when
the revision asked for is no longer in etcd's history (``EtcdCompacted``). The client
asks with ``hasleader``: a member that loses its leader ends the stream (after a few
election timeouts) instead of going quiet while the others go on without it.

When the stream breaks (the member dies, loses its leader, the connection drops) the
watch opens again on the next endpoint from the revision after the last one it saw, so
its caller sees every change once, in order. It gives up, raising ``EtcdUnavailable``
(``EtcdQuorumLost`` when members said they had no leader, after the client's
``election_wait``), when every endpoint has failed since the last stream that worked
(etcd created the watch on it, or sent events or progress).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any, Deque, Dict, List, Optional, Protocol, Tuple

import aiohttp

from fleetd.registry.etcdv3_types import (
    EtcdCompacted,
    EtcdError,
    EtcdQuorumLost,
    EtcdUnavailable,
    Event,
    Json,
    error_kind,
    key_range,
    num,
)


class Source(Protocol):
    """What a watch needs of ``EtcdClient``."""

    endpoints: List[str]
    election_wait: float

    def first(self) -> int: ...

    async def open_stream(self, path: str, body: Json, i: int
                          ) -> Tuple[Optional[aiohttp.ClientResponse], str, str]: ...


class Watch:
    """An async iterator of ``Event``s; ``revision`` is the next revision it will deliver
    (where a new watch would go on from). Use it in ``async with`` (or call ``start``
    and ``close``)."""

    def __init__(self, client: Source, key: bytes, prefix: bool, start_revision: int,
                 prev_kv: bool) -> None:
        self._client = client
        self._range = key_range(key, prefix)
        self._prev_kv = prev_kv
        self.revision = start_revision  # 0: from now, until etcd says which revision
        self._resp: Optional[aiohttp.ClientResponse] = None
        self._at = -1  # the endpoint index of the open stream
        self._buf = b""
        self._pending: Deque[Event] = collections.deque()
        # since the last sign of a working stream: each endpoint's last failure (why,
        # and whether it said it had no leader), and when the first was
        self._failed: Dict[str, Tuple[str, bool]] = {}
        self._since = 0.0
        self._closed = False
        self._created = False  # etcd created the watch, on any stream

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            await self._step()
        return self._pending.popleft()

    async def start(self) -> None:
        """Open the stream and wait until etcd has created the watch: a watch from now
        sees every change after this returns (``async with`` calls it; iterating
        without it starts the watch at the first ``__anext__``)."""
        while not self._created and not self._closed:
            await self._step()

    async def close(self) -> None:
        self._closed = True
        self._drop()

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint whose stream is open (None between streams)."""
        return self._client.endpoints[self._at] if self._resp is not None else None

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        self._buf = b""

    async def _open(self) -> None:
        """Open a stream on the endpoint after the last one (first: the client's)."""
        create: Json = {**self._range, "progress_notify": True}
        if self.revision:
            create["start_revision"] = str(self.revision)
        if self._prev_kv:
            create["prev_kv"] = True
        n = len(self._client.endpoints)
        i = self._client.first() if self._at < 0 else (self._at + 1) % n
        while True:
            resp, why, kind = await self._client.open_stream(
                "watch", {"create_request": create}, i)
            self._at = i
            if resp is not None:
                self._resp = resp
                return
            if kind == "refused":
                raise EtcdError(why)
            await self._failure(why, kind in ("no-leader", "timed-out"))
            i = (i + 1) % n

    async def _failure(self, why: str, no_quorum: bool) -> None:
        """Note that the endpoint at ``_at`` failed; give up once every endpoint has
        failed since the last working stream (after ``election_wait`` when some said
        they had no leader: an election may be under way)."""
        loop = asyncio.get_running_loop()
        if not self._failed:
            self._since = loop.time()
        self._failed[self._client.endpoints[self._at]] = (why, no_quorum)
        if len(self._failed) < len(self._client.endpoints):
            return
        quorum = any(q for _, q in self._failed.values())
        if quorum and loop.time() < self._since + self._client.election_wait:
            await asyncio.sleep(0.1)
            return
        tried = [(ep, w) for ep, (w, _) in self._failed.items()]
        raise (EtcdQuorumLost if quorum else EtcdUnavailable)(tried)

    async def _lost(self, why: str, no_quorum: bool = False) -> None:
        self._drop()
        await self._failure(why, no_quorum)

    async def _message(self) -> Optional[Any]:
        """The next JSON message of the open stream; None at its end."""
        assert self._resp is not None
        while b"\n" not in self._buf:
            chunk = await self._resp.content.readany()
            if not chunk:
                return json.loads(self._buf) if self._buf.strip() else None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line) if line.strip() else await self._message()

    async def _step(self) -> None:
        """Read one message (opening a stream first if none is open), queueing its
        events, or note the stream's loss."""
        if self._resp is None:
            await self._open()
        try:
            msg = await self._message()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            await self._lost(str(e) or type(e).__name__)
            return
        if msg is None:
            await self._lost("ended the watch stream")
            return
        if not isinstance(msg, dict):
            await self._lost(f"answered {str(msg)[:100]!r}")
            return
        if "error" in msg:
            err = msg["error"]
            text = str(err.get("message") if isinstance(err, dict) else err)
            code = err.get("grpc_code") if isinstance(err, dict) else None
            kind = error_kind(code, text)
            if kind == "refused":
                raise EtcdError(text, code)
            await self._lost(text, kind != "unavailable")
            return
        self._result(msg.get("result") or {})

    def _result(self, r: Json) -> None:
        if r.get("canceled"):
            compacted = num(r, "compact_revision")
            if compacted:
                raise EtcdCompacted(compacted)
            raise EtcdError(r.get("cancel_reason") or "etcd canceled the watch")
        header_rev = num(r.get("header") or {}, "revision")
        events = [Event.from_json(e) for e in r.get("events") or ()]
        if events:
            self.revision = events[-1].kv.mod_revision + 1
            self._pending.extend(events)
            self._failed.clear()
        elif r.get("created"):
            self._created = True
            if not self.revision:
                self.revision = header_rev + 1
            self._failed.clear()  # (a member without a leader refuses to create one)
        else:  # progress: nothing under the range up to header_rev
            self.revision = max(self.revision, header_rev + 1)
            self._failed.clear()
