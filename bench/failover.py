"""Failover in a real 3-host lab: a machine running 20 units goes off the network.

    .venv/bin/python bench/failover.py [--runs 3]

h1 is registered alone and given 20 units; then h2 and h3 join. The clock starts when
h1's veth link goes down (a partition: nothing is killed) and stops when all 20 units
are reported running on h2/h3. Then the link comes back, and the second clock runs
until h1's stale copies are gone. Default settings: heartbeat 1 s, machine TTL 5 s.
Target: all 20 elsewhere within TTL + 2 s = 7 s (fleet: 30-32 s by its agent_ttl;
Nomad: 20-30 s). Prints a table; writes bench/results/failover.json.
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
from typing import Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import Fleet, reset_host, wait_for  # noqa: E402

from fleetd.lab.netns import Lab  # noqa: E402

UNITS = 20


def one_run(work: str, run: int) -> Dict[str, float]:
    lab = Lab(os.path.join(work, f"lab{run}"), prefix="fo", subnet="10.83.0")
    lab.down()
    hosts = lab.up(3)
    link = f"{hosts[0].netns}-br"
    os.makedirs(os.path.join(work, f"run{run}"))
    fleet = Fleet(lab, os.path.join(work, f"run{run}"))

    def states() -> Dict[str, str]:
        return {name: m["state"] for name, m in fleet.machines().items()}

    def on(*machines: str) -> int:
        return sum(1 for m in fleet.placed().values() if m in machines)

    try:
        fleet.start()
        fleet.add(hosts[0])
        wait_for("h1 up", lambda: states().get("h1") == "up", 60)
        fleet.api.post("/v1/units", {"desired": "launched", "units": [
            {"name": f"fo-{i}.service", "text": f"[Service]\nExecStart=/bin/sleep 100000\n"
                                                f"Environment=N={i}\n"} for i in range(UNITS)]})
        wait_for("20 units on h1", lambda: on("h1") == UNITS, 60)
        for h in hosts[1:]:
            fleet.add(h)
        wait_for("all up", lambda: set(states().values()) == {"up"}, 60)
        t0 = time.perf_counter()
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        wait_for("h1 lost", lambda: states().get("h1") == "lost", 60)
        t_lost = time.perf_counter()
        wait_for("all 20 elsewhere", lambda: on("h2", "h3") == UNITS, 60)
        t_moved = t1 = time.perf_counter()
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        wait_for("h1 back", lambda: states().get("h1") == "up", 60)
        t_back = time.perf_counter()
        wait_for("stale copies gone", lambda: not any(
            "h1" in pids.values() for unit, pids in fleet.programs().items()
            if unit.startswith("fo-")), 60)
        t_clean = time.perf_counter()
        return {"lost_s": t_lost - t0, "all_elsewhere_s": t_moved - t0,
                "back_up_s": t_back - t1, "stale_stopped_s": t_clean - t1}
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], capture_output=True)
        fleet.stop()
        for h in lab.hosts():
            reset_host(lab, h)  # the agents' unit cgroups too
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-failover-")
    try:
        runs: List[Dict[str, float]] = [one_run(work, r) for r in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'after h1 goes off the network (20 units)':<44}{'median s':>10}{'max s':>8}")
    for key, label in (("lost_s", "h1 declared lost"),
                       ("all_elsewhere_s", "all 20 running on h2/h3"),
                       ("back_up_s", "after the link returns: h1 up"),
                       ("stale_stopped_s", "after the link returns: stale copies gone")):
        values = [r[key] for r in runs]
        print(f"{label:<44}{statistics.median(values):>10.2f}{max(values):>8.2f}")
    print("defaults: heartbeat 1 s, TTL 5 s; target all elsewhere <= 7 s "
          "(fleet 30-32 s, Nomad 20-30 s)")
    save("failover", {"runs": runs, "units": UNITS, "ttl_s": 5.0, "heartbeat_s": 1.0})


if __name__ == "__main__":
    main()
