"""The pure scheduler at scale: place 1,000 / 10,000 / 50,000 units on 1,000 machines.

    .venv/bin/python bench/schedule.py [--sizes 1000,10000,50000] [--machines 1000]

Each size is one ``reconciler.plan`` call from nothing placed (every unit needs a
machine) on one core, with a mix of what real unit files ask for: MachineMetadata=
(role, zone, a hostname pin), Conflicts= globs spreading template instances,
MachineOf= sidecars, MachineID= pins, a Java capability, MemoryMax=/CPUQuota=
reservations of several sizes (some too big for any machine), units that reserve
nothing, and two Global agents (one with a Conflicts= glob) that every placement must
work around. Machines differ in size, role, zone and capabilities; 2% are down. Then the
same plan applied and planned again ("steady"): what every engine wake-up costs once
the cluster has settled, which must be fast and must find nothing to do.

Prints a table (placements/s, time, time per unit, how time grows with size) and writes
bench/results/schedule.json. Target (issue): >= 2,000 placements/s on one core, and
near-linear growth in units. The inputs come from a seeded generator, so runs compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import random
import sys
import time
from typing import Any, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetd.engine.reconciler import plan  # noqa: E402
from fleetd.engine.views import MachineView, UnitView  # noqa: E402
from fleetd.units.xfleet import Requirements  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
ROLES = ("web",) * 5 + ("db",) * 2 + ("cache",) * 2 + ("batch",)


def machines(n: int, seed: int) -> List[MachineView]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        caps = {"systemd"}
        if i % 2 == 0:
            caps |= {"java", "java:8", "java:11", "java:17"}
        out.append(MachineView(
            name=f"m{i:04d}", machine_id=f"{rnd.getrandbits(128):032x}",
            up=rnd.random() >= 0.02,
            metadata={"role": ROLES[i % len(ROLES)], "zone": "abc"[i % 3],
                      "hostname": f"m{i:04d}"},
            cpus=float(rnd.choice((8, 16, 32))), memory_bytes=rnd.choice((16, 32, 64)) * GiB,
            capabilities=frozenset(caps)))
    return out


def units(n: int, fleet: List[MachineView], seed: int) -> List[UnitView]:
    """A seeded mix; every kind of constraint is a share of the whole, at any size."""
    rnd = random.Random(seed)
    out: List[UnitView] = [  # host-wide agents, which every placement then works around
        UnitView("node-exporter.service", "launched", None, "",
                 Requirements(is_global=True, memory_bytes=64 * MiB, cpus=0.1)),
        UnitView("log-shipper.service", "launched", None, "",
                 Requirements(is_global=True, metadata=(("role", ("web", "db")),),
                              conflicts=("spread0@*",), memory_bytes=128 * MiB)),
    ]
    names: List[str] = []
    i = 0
    while len(out) < n + 2:
        kind = rnd.random()
        mem = rnd.choice((128, 256, 512, 512, 1024)) * MiB
        cpu = rnd.choice((0.1, 0.25, 0.25, 0.5, 1.0))
        if kind < 0.30:  # plain service instances with reservations
            req = Requirements(memory_bytes=mem, cpus=cpu)
        elif kind < 0.45:  # role (and zone) metadata
            role = rnd.choice(("web", "db", "cache"))
            meta = (("role", (role,)),) if rnd.random() < 0.5 else \
                (("role", (role,)), ("zone", ("a", "b")))
            req = Requirements(metadata=meta, memory_bytes=mem, cpus=cpu)
        elif kind < 0.55:  # instances of a family kept apart by a glob
            family = rnd.randrange(max(1, n // 200))
            name = f"spread{family}@{i}.service"
            out.append(UnitView(name, "launched", None, "", Requirements(
                conflicts=(f"spread{family}@*.service",), memory_bytes=mem, cpus=cpu)))
            names.append(name)
            i += 1
            continue
        elif kind < 0.65 and names:  # a sidecar next to an earlier unit
            req = Requirements(machine_of=(rnd.choice(names),), memory_bytes=64 * MiB)
        elif kind < 0.70:  # a Java unit
            req = Requirements(capabilities=("java:17",), memory_bytes=2 * mem, cpus=cpu)
        elif kind < 0.73:  # pinned by MachineID (a 12-character prefix)
            req = Requirements(machine_id=(rnd.choice(fleet).machine_id or "")[:12] or None,
                               memory_bytes=mem)
        elif kind < 0.75:  # pinned by hostname metadata, fleet's %i template idiom
            req = Requirements(metadata=(("hostname", (rnd.choice(fleet).name,)),))
        elif kind < 0.752:  # far too big for any machine
            req = Requirements(memory_bytes=128 * GiB)
        else:  # reserves nothing
            req = Requirements()
        name = f"u{i}.service"
        out.append(UnitView(name, "launched", None, "", req))
        names.append(name)
        i += 1
    return out


def run(n: int, fleet: List[MachineView], seed: int) -> Dict[str, Any]:
    todo = units(n, fleet, seed)
    gc.collect()
    t0 = time.perf_counter()
    tasks = plan(todo, fleet)
    first = time.perf_counter() - t0
    placed = sum(t.machine is not None for t in tasks)
    size = sum(not u.req.is_global for u in todo)
    got = {t.unit: t for t in tasks}
    settled = [dataclasses.replace(u, machine=got[u.name].machine, reason=got[u.name].reason)
               if u.name in got else u for u in todo]
    gc.collect()
    t0 = time.perf_counter()
    again = plan(settled, fleet)
    steady = time.perf_counter() - t0
    return {"units": size, "machines": len(fleet), "placed": placed,
            "unplaced": size - placed, "seconds": first,
            "placements_per_s": placed / first if first else 0.0,
            "us_per_unit": first / size * 1e6, "steady_seconds": steady,
            "steady_tasks": len(again)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    fleet = machines(args.machines, args.seed)
    rows = [run(int(s), fleet, args.seed) for s in args.sizes.split(",")]

    print(f"{'units':>7} {'machines':>8} {'placed':>7} {'unplaced':>8} {'time s':>8} "
          f"{'placed/s':>9} {'us/unit':>8} {'growth':>7} {'steady s':>9} {'steady tasks':>12}")
    base = rows[0]
    for r in rows:
        growth = (r["seconds"] / base["seconds"]) / (r["units"] / base["units"])
        r["time_growth_vs_linear"] = growth
        print(f"{r['units']:>7} {r['machines']:>8} {r['placed']:>7} {r['unplaced']:>8} "
              f"{r['seconds']:>8.2f} {r['placements_per_s']:>9.0f} {r['us_per_unit']:>8.1f} "
              f"{growth:>7.2f} {r['steady_seconds']:>9.2f} {r['steady_tasks']:>12}")
    print("growth: time ratio over unit ratio vs the smallest size (1.00 = linear). "
          "target: >= 2,000 placements/s, one core")
    save("schedule", {"python": platform.python_version(), "machine": platform.machine(),
                      "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
