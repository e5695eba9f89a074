"""``fleetd migrate`` (fleetd/daemon/migrate.py) on a real 3-member etcd cluster on
loopback (Debian's etcd-server 3.4): how long a copy takes for a registry of N units on
M machines, and how long the epoch bump takes when the last SQLite epoch is above etcd's
revision by a gap G (each scratch write is one revision; BUMP_BATCH go at once).

    .venv/bin/python bench/migrate.py [--units 100,1000] [--machines 20] [--gaps 0,1000,10000]

Prints one line per case; writes bench/results/migrate.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from etcdkit import etcd_cluster  # noqa: E402

from fleetd.daemon.migrate import migrate  # noqa: E402
from fleetd.registry.base import LAUNCHED, MachineRecord, UnitInput  # noqa: E402
from fleetd.registry.etcdv3 import EtcdClient  # noqa: E402
from fleetd.registry.sqlite import SqliteRegistry  # noqa: E402
from fleetd.units.model import content_hash  # noqa: E402


async def make_registry(state: str, units: int, machines: int) -> None:
    reg = SqliteRegistry(os.path.join(state, "registry.db"))
    try:
        for i in range(machines):
            await reg.add_machine(MachineRecord(
                f"h{i}", f"10.1.{i // 250}.{i % 250 + 1}", 22, "root", "/id", None,
                "fleet-agent", {"rack": f"r{i % 4}"}))
            await reg.update_machine(f"h{i}", state="up", machine_id=f"m{i}",
                                     facts={"cpus": 4})
        texts = [f"[Service]\nExecStart=/bin/sleep {i}\n" for i in range(units)]
        await reg.put_units([UnitInput(f"u{i}.service", t, content_hash(t))
                             for i, t in enumerate(texts)], LAUNCHED)
        await reg.set_placements([(f"u{i}.service", f"h{i % machines}", "bench")
                                  for i in range(units)])
    finally:
        await reg.close()


async def case(endpoints: List[str], base: str, units: int, machines: int, gap: int,
               n: int) -> Dict[str, Any]:
    state = os.path.join(base, f"state{n}")
    os.makedirs(state)
    await make_registry(state, units, machines)
    async with EtcdClient(endpoints) as client:
        rev = (await client.get("/x")).revision
        if gap:
            with open(os.path.join(state, "fleetd.epoch"), "w") as f:
                f.write(f"{rev + gap}\n")
        t0 = time.perf_counter()
        report = await migrate(state, client, f"/bench{n}", "etcd://bench")
        took = time.perf_counter() - t0
    return {"units": units, "machines": machines, "gap": gap, "seconds": round(took, 3),
            "bumped": report.bumped, "revision": report.revision}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", default="100,1000")
    ap.add_argument("--machines", type=int, default=20)
    ap.add_argument("--gaps", default="0,1000,10000")
    args = ap.parse_args()
    out: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as base, etcd_cluster(os.path.join(base, "etcd"), 3) as c:
        n = 0
        for units in (int(x) for x in args.units.split(",")):
            for gap in (int(x) for x in args.gaps.split(",")):
                n += 1
                row = asyncio.run(case(c.endpoints, base, units, args.machines, gap, n))
                out.append(row)
                print(f"units {units:5d}  machines {args.machines:3d}  epoch gap {gap:6d}: "
                      f"{row['seconds']:7.3f} s  ({row['bumped']} scratch writes)")
    print("wrote", save("migrate", out))


if __name__ == "__main__":
    main()
