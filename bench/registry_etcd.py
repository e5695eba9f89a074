"""EtcdRegistry against SQLite: writes per second, and what etcd takes in one transaction.

    .venv/bin/python bench/registry_etcd.py [--members 1|3] [--calls 200] [--idle 10]

Starts real etcd members on loopback (Debian's etcd-server; tests/integration/etcdkit),
opens an EtcdRegistry and a SqliteRegistry on a tmpfs-less temporary file (fsync'd:
``synchronous=FULL``), and times, one call after another:

- ``put_units`` of 1 unit per call, and of 100 units per call (units/s);
- ``set_placements`` of 1 unit per call (fenced by an epoch on etcd), and of every unit
  of the batch in one call;
- heartbeats: ``update_machine(last_seen=...)`` and unchanged observed rows, an engine
  pass that places nothing anew, and an idle registry: etcd's revision before and after
  (0 writes expected);
- etcd's limits as this etcd answers: the most operations one transaction may hold
  (``--max-txn-ops``) and the largest value one put may carry (``--max-request-bytes``).

Prints a table and writes bench/results/registry_etcd.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from etcdkit import etcd_cluster  # noqa: E402

from fleetd.registry.base import (  # noqa: E402
    LAUNCHED,
    MachineRecord,
    ObservedRecord,
    Registry,
    UnitInput,
)
from fleetd.registry.etcd import EtcdRegistry  # noqa: E402
from fleetd.registry.etcdv3 import EtcdClient  # noqa: E402
from fleetd.registry.etcdv3_types import EtcdError, Put  # noqa: E402
from fleetd.registry.sqlite import SqliteRegistry  # noqa: E402
from fleetd.units.model import content_hash  # noqa: E402


def unit(name: str) -> UnitInput:
    text = f"[Service]\nExecStart=/bin/{name}\n"
    return UnitInput(name, text, content_hash(text))


async def rate(n: int, call: Callable[[int], Awaitable[Any]]) -> float:
    """Calls per second of ``call(i)`` for i in range(n), one after another."""
    t0 = time.perf_counter()
    for i in range(n):
        await call(i)
    return n / (time.perf_counter() - t0)


async def writes(reg: Registry, calls: int, epoch: Any) -> Dict[str, float]:
    out: Dict[str, float] = {}
    out["put_units 1/call (calls/s)"] = await rate(
        calls, lambda i: reg.put_units([unit(f"one{i}.service")], LAUNCHED))
    batches = max(1, calls // 20)
    per = await rate(batches, lambda i: reg.put_units(
        [unit(f"b{i}x{j}.service") for j in range(100)], LAUNCHED))
    out["put_units 100/call (calls/s)"] = per
    out["put_units 100/call (units/s)"] = per * 100
    out["set_placements 1/call (calls/s)"] = await rate(
        calls, lambda i: reg.set_placements([(f"one{i}.service", "m1", "b")], epoch=epoch))
    names = [u.name for u in reg.list_units()]
    t0 = time.perf_counter()
    await reg.set_placements([(n, "m2", "all") for n in names], epoch=epoch)
    out[f"set_placements {len(names)} in 1 call (s)"] = time.perf_counter() - t0
    return out


ROW = ObservedRecord("one0.service", "hb", "h", "running", 1, 1.0, None, 0, None, 1.0)


async def heartbeats(reg: Registry, n: int) -> None:
    """What a session writes while a host only says it is alive."""
    for _ in range(n):
        await reg.update_machine("hb", last_seen=time.time())
        await reg.upsert_observed(dataclasses.replace(ROW, updated_at=time.time()))


async def limits(c: EtcdClient) -> Dict[str, int]:
    """What this etcd takes: ops per transaction, bytes of one value."""
    ops = 0
    for n in (64, 128, 129, 256, 1024):
        try:
            await c.txn([], [Put(f"/bench-limit/{i}", "x") for i in range(n)])
            ops = n
        except EtcdError:
            break
    lo, hi = 1024, 8 * 1024 * 1024
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        try:
            await c.put("/bench-limit/big", b"x" * mid)
            lo = mid
        except EtcdError:
            hi = mid
    await c.delete("/bench-limit/", prefix=True)
    return {"max ops in one txn (accepted)": ops, "max value bytes in one put (±1 KiB)": lo}


async def main(args: argparse.Namespace, endpoints: List[str]) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    async with EtcdClient(endpoints) as c:
        results["etcd limits"] = await limits(c)
        reg = await EtcdRegistry.open(c, "/bench")
        lease = await c.grant(60)
        epoch = await c.put("/bench/leader", "bench", lease=lease)
        results["etcd"] = await writes(reg, args.calls, epoch)
        await reg.add_machine(MachineRecord("hb", "10.0.0.9", 22, "root", None, None, "a", {}))
        await reg.replace_observed("hb", [ROW])
        before = (await c.get("/none")).revision
        await heartbeats(reg, args.calls)
        hb = (await c.get("/none")).revision - before
        before = (await c.get("/none")).revision
        await reg.set_placements([(x.name, x.machine, x.reason) for x in reg.list_units()],
                                 epoch=epoch)
        results["etcd"]["etcd writes for a pass placing nothing new"] = \
            (await c.get("/none")).revision - before
        before = (await c.get("/none")).revision
        await asyncio.sleep(args.idle)
        idle = (await c.get("/none")).revision - before
        results["etcd"][f"etcd writes for {args.calls} heartbeats"] = hb
        results["etcd"][f"etcd writes while idle {args.idle:.0f} s"] = idle
        await reg.close()
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as d:
        sq = SqliteRegistry(os.path.join(d, "registry.db"))
        results["sqlite"] = await writes(sq, args.calls, None)
        await sq.close()
    return results


def show(results: Dict[str, Any]) -> None:
    print(f"{'':44} {'etcd':>12} {'sqlite':>12}")
    for k, v in results["etcd"].items():
        s = results["sqlite"].get(k)
        print(f"{k:44} {v:12.4g} {'' if s is None else f'{s:12.4g}'}")
    for k, v in results["etcd limits"].items():
        print(f"{k:44} {v:12d}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=1, choices=(1, 3))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--idle", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as base, \
            etcd_cluster(base, a.members) as cluster:
        res = asyncio.run(main(a, cluster.endpoints))
    res["members"] = a.members
    show(res)
    print("wrote", save("registry_etcd", res))
