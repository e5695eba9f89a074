"""Listing many units: the API and fleetctl with 10,000 units (fleet took minutes at 2,500).

    .venv/bin/python bench/list_units.py [--units 10000]

Submits N units through the API (in batches, validated as always), places them on 20
machines and gives each an observed row, written straight into the registry before
fleetd starts (no lab needed: what is measured is listing, not running). The machines
point at a closed port, so fleetd keeps them unreachable and their units where they are.
Then it times GET /v1/units and /v1/unit-files and the blocking CLI commands, and writes
bench/results/list_units.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Callable, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import FLEETCTL, Fleet  # noqa: E402

from fleetd.registry.base import MachineRecord, ObservedRecord  # noqa: E402
from fleetd.registry.sqlite import SqliteRegistry  # noqa: E402
from fleetd.testing.registry import at_once  # noqa: E402

MACHINES = 20


def timed(fn: Callable[[], object], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=10000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-list-")
    try:
        result = bench(work, args.units)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'measure':<34}{'value':>12}")
    for key, value in result.items():
        print(f"{key:<34}{value:>12.1f}")
    print("target: listing 10,000 units well under a second")
    save("list_units", result)


def bench(work: str, units: int) -> Dict[str, float]:
    known_hosts = os.path.join(work, "known_hosts")
    open(known_hosts, "w").close()
    fleet = Fleet(None, work, args=["--log-level", "warning"])
    try:
        fleet.start()
        t0 = time.perf_counter()
        batch = 500
        for first in range(0, units, batch):
            fleet.api.post("/v1/units", {"desired": "loaded", "units": [
                {"name": f"app-{i:05d}.service",
                 "text": f"[Service]\nExecStart=/bin/sleep 1000\nEnvironment=N={i}\n"}
                for i in range(first, min(first + batch, units))]}, timeout=300)
        submit_s = time.perf_counter() - t0
    finally:
        fleet.stop()

    registry = SqliteRegistry(os.path.join(fleet.state_dir, "registry.db"))
    for m in range(MACHINES):
        at_once(registry.add_machine(MachineRecord(
            name=f"m{m:02d}", address="127.0.0.1", port=1 + m, user="root", identity=None,
            known_hosts=known_hosts, agent_command="fleet-agent attach", metadata={})))
    rows = registry.list_units()
    at_once(registry.set_placements((u.name, f"m{i % MACHINES:02d}", "bench")
                                    for i, u in enumerate(rows)))
    now = time.time()
    for m in range(MACHINES):
        at_once(registry.replace_observed(f"m{m:02d}", [
            ObservedRecord(unit=u.name, machine=f"m{m:02d}", hash=u.hash, state="running",
                           pid=1000 + i, started_at=now, exit_status=None, restarts=0,
                           error=None, updated_at=now)
            for i, u in enumerate(rows) if i % MACHINES == m]))
    at_once(registry.close())

    env = dict(os.environ, FLEETCTL_ENDPOINT=fleet.endpoint)
    result: Dict[str, float] = {"units": units, "submit_s": submit_s}
    try:
        fleet.start()
        listed: List[object] = fleet.api.get("/v1/units", timeout=120)["units"]
        assert len(listed) == units, len(listed)
        result["api_list_units_ms"] = timed(lambda: fleet.api.get("/v1/units", timeout=120))
        result["api_list_unit_files_ms"] = timed(
            lambda: fleet.api.get("/v1/unit-files", timeout=120))
        for name, argv in (("fleetctl_list_units_ms", ["list-units"]),
                           ("fleetctl_list_unit_files_ms", ["list-unit-files"]),
                           ("fleetctl_list_units_json_ms", ["list-units", "-o", "json"])):
            # output to /dev/null: what is timed is fleetctl, not a pipe into this process
            result[name] = timed(partial(subprocess.run, [FLEETCTL, *argv], env=env,
                                         check=True, stdout=subprocess.DEVNULL))
    finally:
        fleet.stop()
    return result


if __name__ == "__main__":
    main()
