"""Start latency in a real 3-host lab: API start call -> the agent reports the program running.

    .venv/bin/python bench/start_latency.py [--starts 50]

For each of N units: POST the unit (desired launched) and then wait on the API until
the agent's "running" report for it has reached fleetd; the clock runs from before the
POST to the wait's answer. Then the wall time of a blocking ``fleetctl start`` (a new
process: Python start-up, request, wait). Prints a table; writes bench/results/*.json.
Targets (issue 2): p50 <= 100 ms, p99 <= 300 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

from benchkit import pct, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import Fleet, reset_host, wait_for  # noqa: E402

from fleetd.lab.netns import Lab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--cli-starts", type=int, default=10)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="fleet-bench-")
    lab = Lab(os.path.join(work, "lab"), prefix="fb", subnet="10.80.0")
    lab.down()
    lab.up(3)
    fleet = Fleet(lab, work, args=["--log-level", "warning"])
    try:
        fleet.start()
        for h in lab.hosts():
            fleet.add(h)
        wait_for("3 machines up",
                 lambda: all(m["state"] == "up" for m in fleet.machines().values()), 60)

        latencies: List[float] = []
        for i in range(args.starts):
            name = f"bench-{i}.service"
            text = f"[Service]\nExecStart=/bin/sleep 1000\nEnvironment=N={i}\n"
            t0 = time.perf_counter()
            fleet.api.post("/v1/units", {"units": [{"name": name, "text": text}],
                                         "desired": "launched"})
            res = fleet.api.get(f"/v1/units/{name}/wait?until=running&timeout=30")
            latencies.append((time.perf_counter() - t0) * 1000)
            if not res["reached"]:
                raise SystemExit(f"{name} did not run: {res['why']}")

        unit_dir = os.path.join(work, "units")
        os.makedirs(unit_dir)
        cli_walls: List[float] = []
        for i in range(args.cli_starts):
            path = os.path.join(unit_dir, f"cli-{i}.service")
            with open(path, "w") as f:
                f.write("[Service]\nExecStart=/bin/sleep 1000\n")
            t0 = time.perf_counter()
            fleet.ctl("start", path)
            cli_walls.append((time.perf_counter() - t0) * 1000)
    finally:
        fleet.stop()
        for h in lab.hosts():
            reset_host(lab, h)  # the agents' unit cgroups too
        lab.down()
        shutil.rmtree(work, ignore_errors=True)

    result: Dict[str, float] = {
        "starts": args.starts,
        "api_to_running_p50_ms": statistics.median(latencies),
        "api_to_running_p99_ms": pct(latencies, 99),
        "api_to_running_max_ms": max(latencies),
        "fleetctl_start_wall_p50_ms": statistics.median(cli_walls),
        "fleetctl_start_wall_max_ms": max(cli_walls),
    }
    print(f"{'measure':<40}{'value':>10}")
    print(f"{'starts (3-host lab, real sshd)':<40}{args.starts:>10}")
    for key in list(result)[1:]:
        print(f"{key:<40}{result[key]:>10.1f}")
    print("targets: p50 <= 100 ms, p99 <= 300 ms")
    save("start_latency", {**result, "samples_ms": latencies, "cli_samples_ms": cli_walls})


if __name__ == "__main__":
    main()
