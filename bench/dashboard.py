"""The dashboard's pages at fleet scale: how long fleetd takes to build and render one
page of machines and one of units from 1,000 machines and 10,000 list-units rows, and how
big that page is (what a browser downloads each time the live view swaps it).

    .venv/bin/python bench/dashboard.py [--machines 1000] [--units 10000] [--runs 20]

In process and pure (fleetd/daemon/dashboard/pages.py and render.py with fixed rows):
no registry, no agents' usage (which a real page asks of the <= 100 machines it shows,
within usage.USAGE_TIMEOUT_S), no HTTP. Prints min / median / max milliseconds per page
and writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

from benchkit import save

from fleetd.daemon.dashboard import pages
from fleetd.daemon.dashboard.render import render
from fleetd.daemon.http.access import Caller

STATES = ("up", "up", "up", "up", "up", "up", "up", "up", "unreachable", "lost")


def fleet(n_machines: int, n_units: int) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    machines = [{"name": f"m{i}", "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                 "state": STATES[i % len(STATES)], "metadata": {"rack": f"r{i % 20}"},
                 "drain": None} for i in range(1, n_machines + 1)]
    units = [{"unit": f"web@{i}.service", "machine": f"m{i % n_machines + 1}",
              "state": "running" if i % 50 else "failed", "desired": "launched",
              "health": "passing", "restarts": i % 3, "pid": 1000 + i}
             for i in range(1, n_units + 1)]
    return machines, units


def timed(runs: int, build: Callable[[], str]) -> Tuple[List[float], int]:
    out, size = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        size = len(build().encode())
        out.append((time.perf_counter() - t0) * 1000)
    return out, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--units", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    machines, units = fleet(args.machines, args.units)
    reasons = {u["unit"]: "least loaded of 900 candidate machines" for u in units}
    base = {"caller": Caller("ops", "operate"), "after": 1, "unit_glob": None,
            "operate": True}

    def machines_page(page: int) -> Callable[[], str]:
        def build() -> str:
            listing = pages.machines_listing(machines, None, None, page)
            views = pages.machine_views(listing.page.rows, units, {})
            return render("machines.html", {**base, "listing": listing, "views": views})
        return build

    def units_page(page: int) -> Callable[[], str]:
        def build() -> str:
            listing = pages.units_listing(units, None, None, page)
            views = [pages.unit_view(r, reasons, {}) for r in listing.page.rows]
            return render("units.html", {**base, "listing": listing, "views": views})
        return build

    print(f"{args.machines} machines, {args.units} units, {args.runs} runs; ms per page")
    print(f"{'page':34} {'min':>7} {'median':>7} {'max':>7} {'KiB':>6}")
    results: Dict[str, Any] = {"machines": args.machines, "units": args.units,
                               "runs": args.runs, "pages": {}}
    for name, build in (("machines, page 1 of 100 rows", machines_page(1)),
                        ("machines, last page", machines_page(10 ** 6)),
                        ("units, page 1 of 100 rows", units_page(1)),
                        ("units, page 50", units_page(50))):
        ms, size = timed(args.runs, build)
        print(f"{name:34} {min(ms):7.1f} {statistics.median(ms):7.1f} {max(ms):7.1f} "
              f"{size / 1024:6.1f}")
        results["pages"][name] = {"min_ms": min(ms), "median_ms": statistics.median(ms),
                                  "max_ms": max(ms), "bytes": size}
    print("saved", save("dashboard", results))


if __name__ == "__main__":
    main()
