"""API tokens shared by several fleetd on etcd: each token (name, role, SHA-256,
created; never the token) is a key ``<prefix>/api-tokens/<name>``, so a token made
through any fleetd is taken by all, and a revoked one is refused by all.

Requests are answered from memory, as with the file (tokens.py): each fleetd reads the
keys when it starts and again every POLL_S, so a token made or revoked through another
fleetd counts here within POLL_S; through this one, at once. Made with create-if-absent
(two fleetd making one name: one wins, the other is told it exists). While etcd cannot
be read, the last tokens read stay in force (fleetd says so in its log); a revoke needs
etcd's quorum, as every write does. ``last_used`` is each fleetd's own, in memory: a
write to etcd per request would cost more than it tells.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Dict

from fleetd.daemon.service.errors import Conflict
from fleetd.daemon.tokens import StoreError, Token, TokenStore
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import Compare, EtcdError, Put

log = logging.getLogger("fleetd.tokens")
POLL_S = 1.0  # a token made or revoked elsewhere counts here within this long


class EtcdTokenStore(TokenStore):
    def __init__(self, client: EtcdClient, prefix: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(None, clock)
        self.client = client
        self.prefix = f"{prefix}/api-tokens/".encode()
        self._failing = False

    def _key(self, name: str) -> bytes:
        return self.prefix + name.encode()

    async def load(self) -> None:
        """Read every token from etcd (EtcdError if it cannot be read)."""
        found: Dict[str, Token] = {}
        for kv in (await self.client.range(self.prefix)).kvs:
            try:
                doc: Dict[str, Any] = json.loads(kv.value)
                t = Token(doc["name"], doc["role"], doc["sha256"], doc["created"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s: not a token fleetd wrote; ignored", kv.key.decode(
                    errors="replace"))
                continue
            old = self.tokens.get(t.name)
            t.last_used = old.last_used if old and old.sha256 == t.sha256 else None
            found[t.name] = t
        self.tokens = found

    async def run(self) -> None:
        """Read the tokens again every POLL_S, for fleetd's life."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.load()
            except EtcdError as exc:
                if not self._failing:
                    log.warning("cannot read the API tokens from etcd (%s); the %d read "
                                "last stay in force", exc, len(self.tokens))
                self._failing = True
                continue
            if self._failing:
                log.info("API tokens read from etcd again (%d)", len(self.tokens))
            self._failing = False

    async def _add(self, t: Token) -> None:
        doc = json.dumps({"name": t.name, "role": t.role, "sha256": t.sha256,
                          "created": t.created})
        try:
            result = await self.client.txn([Compare.create(self._key(t.name), "==", 0)],
                                           [Put(self._key(t.name), doc.encode())])
        except EtcdError as exc:
            raise StoreError(f"etcd: the token {t.name!r} was not stored: {exc}") from None
        if not result.succeeded:
            raise Conflict(f"token {t.name!r} exists (revoke it first to make a new one)")
        self.tokens[t.name] = t

    async def _remove(self, t: Token) -> None:
        try:
            await self.client.delete(self._key(t.name))
        except EtcdError as exc:
            raise StoreError(f"etcd: the token {t.name!r} was not revoked: {exc}") from None
        self.tokens.pop(t.name, None)
