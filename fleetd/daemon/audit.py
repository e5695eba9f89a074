"""The audit record: every write to the API (POST, PUT, DELETE), who made it (the
token's name, or root on the Unix socket), what (method, route, the unit, machine,
token or secret it names), when, from where (the peer's address) and how it ended (the
answer's status, refusals included). ``fleetctl audit`` reads it.

A JSON-lines file in fleetd's state directory (0600), appended and flushed line by line:
a fleetd killed loses no line it wrote. Bounded: past MAX_BYTES the file becomes
``audit.jsonl.1`` (replacing the one before) and a new one begins, so at most two
files, 2 x MAX_BYTES, are kept. Each record has a ``seq`` that grows across the
rotation (read back from the files when fleetd starts), which ``fleetctl audit -f``
follows. With several fleetd on etcd each records what it served, in its own state
directory. A record that cannot be written is logged, and the request stands: it has
been done already.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger("fleetd.audit")

AUDIT_FILE = "audit.jsonl"
MAX_BYTES = 4 * 1024 * 1024  # ~20,000 records a file
WRITES = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class AuditLog:
    def __init__(self, path: str, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.old = path + ".1"
        self.max_bytes = max_bytes
        self.clock = clock
        self.seq = max((r["seq"] for r in self.records()), default=0)
        self._waiters: List[asyncio.Future[None]] = []

    def record(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        """Append ``entry`` with the next seq and the time; wakes ``wait``."""
        self.seq += 1
        rec = {"seq": self.seq, "time": self.clock(), **entry}
        line = json.dumps(rec, sort_keys=True, ensure_ascii=True) + "\n"
        try:
            self._append(line.encode())
        except OSError as exc:
            log.error("%s: cannot record %s %s by %s: %s", self.path, entry.get("method"),
                      entry.get("path"), entry.get("who"), exc.strerror)
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()
        return rec

    def _append(self, line: bytes) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        try:
            if os.path.getsize(self.path) + len(line) > self.max_bytes:
                os.replace(self.path, self.old)
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self, after: int = 0, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The records after seq ``after``, oldest first; the last ``limit`` of them. A
        line that does not read (a crash mid-write, a hand edit) is skipped."""
        out: List[Dict[str, Any]] = []
        for path in (self.old, self.path):
            try:
                with open(path, "rb") as f:
                    for raw in f:
                        try:
                            rec = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(rec, dict) and isinstance(rec.get("seq"), int) \
                                and rec["seq"] > after:
                            out.append(rec)
            except FileNotFoundError:
                continue
            except OSError as exc:  # the record is fleetd's to read; say it, serve the rest
                log.error("%s: cannot read the audit record: %s", path, exc.strerror)
        return out[-limit:] if limit is not None else out

    async def wait(self, after: int, timeout: float, limit: int) -> List[Dict[str, Any]]:
        """The records after ``after``; if none yet, the first ones that come within
        ``timeout`` seconds (then none)."""
        found = self.records(after, limit)
        if found or timeout <= 0:
            return found
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            return []
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self.records(after, limit)
