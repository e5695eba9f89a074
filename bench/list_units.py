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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetd.cli.client import ApiError, Client  # noqa: E402
from fleetd.registry.base import MachineRecord, ObservedRecord  # noqa: E402
from fleetd.registry.sqlite import SqliteRegistry  # noqa: E402

MACHINES = 20


def start_fleetd(work: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(work, "fleetd.log"), "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "fleetd.daemon", "--state-dir",
                             os.path.join(work, "state"), "--socket",
                             os.path.join(work, "sock"), "--log-level", "warning"],
                            stdout=log, stderr=log)


def wait_up(api: Client) -> None:
    for _ in range(600):
        try:
            api.get("/v1/health")
            return
        except ApiError:
            time.sleep(0.05)
    raise SystemExit("fleetd did not start")


def timed(fn: object, runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=10000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-list-")
    known_hosts = os.path.join(work, "known_hosts")
    open(known_hosts, "w").close()
    api = Client(f"unix://{work}/sock")

    fleetd = start_fleetd(work)
    try:
        wait_up(api)
        t0 = time.perf_counter()
        batch = 500
        for first in range(0, args.units, batch):
            api.post("/v1/units", {"desired": "loaded", "units": [
                {"name": f"app-{i:05d}.service",
                 "text": f"[Service]\nExecStart=/bin/sleep 1000\nEnvironment=N={i}\n"}
                for i in range(first, min(first + batch, args.units))]}, timeout=300)
        submit_s = time.perf_counter() - t0
    finally:
        fleetd.terminate()
        fleetd.wait()

    registry = SqliteRegistry(os.path.join(work, "state", "registry.db"))
    for m in range(MACHINES):
        registry.add_machine(MachineRecord(
            name=f"m{m:02d}", address="127.0.0.1", port=1 + m, user="root", identity=None,
            known_hosts=known_hosts, agent_command="fleet-agent attach", metadata={}))
    units = registry.list_units()
    registry.set_placements((u.name, f"m{i % MACHINES:02d}", "bench") for i, u in enumerate(units))
    now = time.time()
    for m in range(MACHINES):
        registry.replace_observed(f"m{m:02d}", [
            ObservedRecord(unit=u.name, machine=f"m{m:02d}", hash=u.hash, state="running",
                           pid=1000 + i, started_at=now, exit_status=None, restarts=0,
                           error=None, updated_at=now)
            for i, u in enumerate(units) if i % MACHINES == m])
    registry.close()

    fleetd = start_fleetd(work)
    env = dict(os.environ, FLEETCTL_ENDPOINT=f"unix://{work}/sock")
    fleetctl = os.path.join(os.path.dirname(sys.executable), "fleetctl")
    result: Dict[str, float] = {"units": args.units, "submit_s": submit_s}
    try:
        wait_up(api)
        rows: List[object] = api.get("/v1/units", timeout=120)["units"]
        assert len(rows) == args.units, len(rows)
        result["api_list_units_ms"] = timed(lambda: api.get("/v1/units", timeout=120))
        result["api_list_unit_files_ms"] = timed(lambda: api.get("/v1/unit-files", timeout=120))
        for name, argv in (("fleetctl_list_units_ms", ["list-units"]),
                           ("fleetctl_list_unit_files_ms", ["list-unit-files"]),
                           ("fleetctl_list_units_json_ms", ["list-units", "-o", "json"])):
            result[name] = timed(lambda a=argv: subprocess.run(
                [fleetctl, *a], env=env, check=True, stdout=subprocess.DEVNULL))
    finally:
        fleetd.terminate()
        fleetd.wait()

    print(f"{'measure':<34}{'value':>12}")
    for key, value in result.items():
        print(f"{key:<34}{value:>12.1f}")
    print("target: listing 10,000 units well under a second")
    out = os.path.join(ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "list_units.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
