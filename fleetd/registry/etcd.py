"""EtcdRegistry: fleetd's state in etcd, shared by several fleetd (issue 12).

The Registry's methods: reads answer from the watch-fed cache (etcd_cache.py), writes
are planned from it (etcd_writes.py, keys in etcd_keys.py) and committed by EtcdStore
(etcd_store.py: read-your-writes, fencing by epoch, exactly once, etcd's limits, a lost
quorum). Open one with ``await EtcdRegistry.open(client, prefix)``.

etcd's load does not grow with heartbeats: ``update_machine`` that changes only
``last_seen``, and observed rows equal to the stored one but for ``updated_at``, are
kept in this process's overlay (etcd_cache.py) and not written (nor fenced: they
change nothing outside this process); neither are placements that did not change, so an
engine pass with nothing new writes nothing. Idle, nothing is written.

Limits: etcd takes at most ``--max-txn-ops`` (128) operations and compares per
transaction and ``--max-request-bytes`` (1.5 MiB) per request (``max_txn_ops`` and
``max_txn_bytes`` here must not exceed the cluster's; measured on Debian's 3.4.23 with
its defaults, bench/registry_etcd.py: 128 operations pass, 129 are refused "too many
operations in txn request"; one put carries a value of up to ~1,572,600 bytes; the
default ``max_txn_bytes`` is 1 MiB, leaving room for keys and the gateway). A user's write is one
transaction when it fits; else the texts it adds go first, in transactions of their
own (content-addressed, harmless), and the clean-up of keys nothing reads any more
(a destroyed unit's placement and failures, unused texts) after; the units themselves
always land together, or the write is refused naming the limit (submit fewer at once).
The engine's placements and the sessions' observed rows are independent per unit, and
are split into as many fenced transactions as they need.

What is left behind: each EtcdRegistry ever opened has its ``writers/<id>`` key (one
small key; ``close`` deletes it, a crash leaves it); a write cut short between its
parts may leave unused texts, or a destroyed unit's placement and failures (a unit
made again under that name clears them).
"""

from __future__ import annotations

import time
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from fleetd.registry import etcd_writes as writes
from fleetd.registry.base import (
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    SecretRecord,
    UnitInput,
    UnitRecord,
    VersionRecord,
)
from fleetd.registry.etcd_store import EtcdStore
from fleetd.registry.etcd_writes import Plan
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import Op


class EtcdRegistry(EtcdStore):
    """The Registry on etcd."""

    @classmethod
    async def open(cls, client: EtcdClient, prefix: str = "/fleetd",
                   **limits: int) -> EtcdRegistry:
        """Load everything under ``prefix`` and follow it; Unavailable naming etcd when
        it cannot be read (no member answers, or no quorum). ``limits``:
        ``max_txn_ops``, ``max_txn_bytes`` (etcd_store.py)."""
        reg = cls(client, prefix, **limits)
        await reg.start()
        return reg

    # --- units ---------------------------------------------------------------------

    async def put_units(self, units: Sequence[UnitInput], desired: Optional[str],
                        replace: bool = False, *, follow: bool = True,
                        via: str = "", options: Optional[Dict[str, Any]] = None,
                        epoch: Optional[int] = None) -> List[str]:
        changed: List[str] = []

        def build() -> Plan:
            names, plan = writes.put_units(self.cache, units, desired, replace, time.time(),
                                           follow, via, options)
            changed[:] = names
            return plan
        await self._write(build, epoch)
        return changed

    async def restart(self, names: Sequence[str]) -> None:
        await self._write(lambda: writes.restart(self.cache, names, time.time()))

    async def set_desired(self, names: Sequence[str], desired: str) -> None:
        await self._write(lambda: writes.set_desired(self.cache, names, desired, time.time()))

    async def delete_units(self, names: Sequence[str]) -> None:
        await self._write(lambda: writes.delete_units(self.cache, names))

    def get_unit(self, name: str) -> Optional[UnitRecord]:
        return self.cache.unit(name)

    def list_units(self) -> List[UnitRecord]:
        return self.cache.units()

    def unit_text(self, content_hash: str) -> Optional[str]:
        return self.cache.text(content_hash)

    def list_versions(self, unit: str) -> List[VersionRecord]:
        e = self.cache.kinds["units"].get((unit,))
        kept = e.doc.get("versions") or [] if e else []
        return [VersionRecord(unit, int(v[0]), str(v[1]), float(v[2]), str(v[3]),
                              dict(v[4]) if len(v) > 4 else {}) for v in kept]

    async def set_version_options(self, unit: str, version: int,
                                  options: Mapping[str, Any]) -> None:
        await self._write(lambda: writes.set_version_options(self.cache, unit, version,
                                                             options))

    async def set_placements(self, placements: Iterable[Tuple[str, Optional[str], str]],
                             handoffs: Optional[Mapping[str, Optional[str]]] = None,
                             retry: Sequence[str] = (), *,
                             epoch: Optional[int] = None) -> None:
        given = list(placements)
        hand = dict(handoffs or {})
        now = time.time()

        def build(todo: Set[str]) -> List[Tuple[str, Plan]]:
            return writes.set_placements(
                self.cache, [p for p in given if p[0] in todo],
                {u: m for u, m in hand.items() if u in todo},
                [u for u in retry if u in todo], now)
        await self._write_each(build, {p[0] for p in given} | set(hand) | set(retry), epoch)

    async def record_failure(self, failure: FailureRecord, *,
                             epoch: Optional[int] = None) -> None:
        await self._write(lambda: writes.record_failure(self.cache, failure), epoch)

    def list_failures(self, unit: Optional[str] = None) -> Dict[str, List[FailureRecord]]:
        return self.cache.failures(unit)

    # --- machines --------------------------------------------------------------------

    async def add_machine(self, machine: MachineRecord) -> None:
        await self._write(lambda: writes.add_machine(self.cache, machine))

    async def remove_machine(self, name: str) -> None:
        await self._write(lambda: writes.remove_machine(self.cache, name))

    def get_machine(self, name: str) -> Optional[MachineRecord]:
        return self.cache.machine(name)

    def list_machines(self) -> List[MachineRecord]:
        return self.cache.machines()

    async def update_machine(self, name: str, *, epoch: Optional[int] = None,
                             **fields: Any) -> None:
        await self._write(lambda: writes.update_machine(self.cache, name, fields), epoch)

    # --- observed state --------------------------------------------------------------

    async def _observed(self, ops: Callable[[], List[Op]], epoch: Optional[int]) -> None:
        """Rows are the sessions' alone (no compares): planned once, in as many
        transactions as they need."""
        async with self._lock:
            await self.each(ops(), epoch)

    async def replace_observed(self, machine: str, rows: Sequence[ObservedRecord], *,
                               epoch: Optional[int] = None) -> None:
        await self._observed(lambda: writes.replace_observed(self.cache, machine, rows),
                             epoch)

    async def upsert_observed(self, row: ObservedRecord, *,
                              epoch: Optional[int] = None) -> None:
        await self._observed(lambda: writes.observed_ops(self.cache, [row]), epoch)

    async def delete_observed(self, machine: str, unit: str, *,
                              epoch: Optional[int] = None) -> None:
        await self._observed(lambda: writes.observed_ops(self.cache, [], [(machine, unit)]),
                             epoch)

    def list_observed(self, unit: Optional[str] = None) -> List[ObservedRecord]:
        return self.cache.observed(unit)

    # --- secrets (sealed) --------------------------------------------------------------

    async def put_secret(self, secret: SecretRecord) -> None:
        await self._write(lambda: writes.put_secret(self.cache, secret))

    async def delete_secret(self, name: str) -> None:
        await self._write(lambda: writes.delete_secret(self.cache, name))

    def get_secret(self, name: str) -> Optional[SecretRecord]:
        return self.cache.secret(name)

    def list_secrets(self) -> List[SecretRecord]:
        return self.cache.secrets()
