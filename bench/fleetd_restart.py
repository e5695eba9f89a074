"""fleetd restart in a real 3-host lab: kill -9 fleetd with N units running, start it again.

    .venv/bin/python bench/fleetd_restart.py [--units 300] [--runs 3]

N units (``/bin/sleep``) run spread over 3 lab hosts. Each run kills fleetd with
SIGKILL, starts it again on the same state directory and times, from the moment the new
process is spawned:

  API ready      /v1/health answers;
  first pass     every unit listed as running *and current*: the engine has made a pass
                 (``current`` compares the agent's report with the hash that pass expects);
  machines up    all 3 machines up and heard by this fleetd (last_seen after the spawn),
                 which the issue bounds at 5 s;

and checks that no program was restarted (the same pids before and after). Prints a
table; writes bench/results/fleetd_restart.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import Fleet, reset_host, wait_for  # noqa: E402

from fleetd.lab.netns import Lab  # noqa: E402


def running(fleet: Fleet) -> Dict[str, int]:
    """unit -> pid of every unit running and current."""
    return {u["unit"]: u["pid"] for u in fleet.units() if u["state"] == "running"
            and u["current"]}


def bench(work: str, units: int, runs: int) -> List[Dict[str, float]]:
    lab = Lab(os.path.join(work, "lab"), prefix="fr", subnet="10.84.0")
    lab.down()
    hosts = lab.up(3)
    fleet = Fleet(lab, work)
    try:
        fleet.start()
        for h in hosts:
            fleet.add(h)
        wait_for("3 machines up", lambda: fleet.heard_since(0), 60)
        for first in range(0, units, 100):
            fleet.api.post("/v1/units", {"desired": "launched", "units": [
                {"name": f"rs-{i:04d}.service",
                 "text": f"[Service]\nExecStart=/bin/sleep 100000\nEnvironment=N={i}\n"}
                for i in range(first, min(units, first + 100))]})
        wait_for(f"{units} units running", lambda: len(running(fleet)) == units, 120)
        time.sleep(6)  # fleetd has run longer than a machine TTL: registry last_seen is old
        results = []
        for _ in range(runs):
            before = running(fleet)
            fleet.kill9()
            t0 = time.time()
            fleet.start()  # returns once the API answers
            t_ready = time.time()
            wait_for("first pass", lambda: len(running(fleet)) == units, 60)
            t_pass = time.time()
            wait_for("machines up", partial(fleet.heard_since, t0), 60)
            t_up = time.time()
            time.sleep(2)  # what a wrong verdict would set off has had time to happen
            after = running(fleet)
            restarted = sum(1 for n, pid in before.items() if after.get(n) != pid)
            results.append({"ready_s": t_ready - t0, "first_pass_s": t_pass - t0,
                            "machines_up_s": t_up - t0, "restarted": restarted})
            time.sleep(4)
        return results
    finally:
        fleet.stop()
        for h in lab.hosts():
            reset_host(lab, h)  # the agents' unit cgroups too
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-restart-")
    try:
        runs = bench(work, args.units, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{f'fleetd kill -9 + start, {args.units} units on 3 hosts':<46}"
          f"{'median s':>10}{'max s':>8}")
    for key, label in (("ready_s", "API answers"),
                       ("first_pass_s", "first engine pass (all units current)"),
                       ("machines_up_s", "all 3 machines up, heard again")):
        values = [r[key] for r in runs]
        print(f"{label:<46}{statistics.median(values):>10.2f}{max(values):>8.2f}")
    print(f"programs restarted by the restart: {sum(int(r['restarted']) for r in runs)} "
          f"(target 0); machines up target <= 5 s")
    save("fleetd_restart", {"runs": runs, "units": args.units, "hosts": 3})


if __name__ == "__main__":
    main()
