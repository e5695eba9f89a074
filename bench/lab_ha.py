"""The HA lab's own costs and what its fault injections show: bring-up and teardown of a
lab with 3 hosts, 3 etcd members and 3 fleetd (each in a namespace of its own), an etcd
member's kill -9 and return, and, when fleetd runs on etcd, how long until another
fleetd leads after the leader is killed (kill -9) or cut off from etcd (lab.servers.cut).

    .venv/bin/python bench/lab_ha.py [--runs 3]

Each run is a fresh lab (prefix fh, 10.79.0.0/24; not while tests/integration/
test_lab_ha.py runs). Leadership is read from each fleetd's /v1/health, polled every
50 ms: a figure includes up to that much polling. Prints a table; writes
bench/results/lab_ha.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import fleetd_takes_etcd  # noqa: E402

from fleetd.client import Client  # noqa: E402
from fleetd.lab.daemon import register, wait_up  # noqa: E402
from fleetd.lab.netns import Lab  # noqa: E402


def until(what: str, predicate: Callable[[], object], timeout: float = 120.0) -> float:
    """Seconds until ``predicate()`` holds, polled every 50 ms."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - began


def one_run(base: str, on_etcd: bool) -> Dict[str, float]:
    lab = Lab(os.path.join(base, "lab"), prefix="fh", subnet="10.79.0")
    lab.down()
    got: Dict[str, float] = {}
    try:
        t = time.monotonic()
        hosts = lab.up(3)
        got["hosts_up_s"] = time.monotonic() - t
        t = time.monotonic()
        lab.etcd.up(3)
        got["etcd_up_s"] = time.monotonic() - t
        t = time.monotonic()
        lab.servers.up(3, lab.etcd.registry if on_etcd else None)
        got["fleetd_up_s"] = time.monotonic() - t
        t = time.monotonic()
        client = Client(lab.servers.endpoint)
        register(lab, client, hosts)
        wait_up(client, [h.name for h in hosts])
        got["register_s"] = time.monotonic() - t

        t = time.monotonic()
        lab.etcd.kill("e2")
        lab.etcd.start("e2")
        lab.etcd.wait_healthy(["e2"])
        got["etcd_member_back_s"] = time.monotonic() - t

        if on_etcd:
            s = lab.servers
            got["first_leader_s"] = until("a leader", lambda: len(s.leaders()) == 1)
            leader = s.leaders()[0]
            t = time.monotonic()
            s.kill(leader)
            until("another leader", lambda: [n for n in s.leaders() if n != leader])
            got["leader_kill9_to_new_leader_s"] = time.monotonic() - t
            s.start(leader)
            leader = s.leaders()[0]
            t = time.monotonic()
            s.cut(leader)
            until("a leader besides the cut one",
                  lambda: [n for n in s.leaders() if n != leader])
            got["leader_cut_to_new_leader_s"] = time.monotonic() - t
            until("the cut one to step down", lambda: s.role(leader) != "leader")
            got["cut_leader_steps_down_s"] = time.monotonic() - t
            s.heal(leader)
    finally:
        t = time.monotonic()
        lab.down()
        got["down_s"] = time.monotonic() - t
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    on_etcd = fleetd_takes_etcd()
    runs: List[Dict[str, float]] = []
    for _ in range(args.runs):
        base = tempfile.mkdtemp(prefix="lab-ha-")
        try:
            runs.append(one_run(base, on_etcd))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    keys = list(runs[0])
    print(f"HA lab: 3 hosts, 3 etcd, 3 fleetd ({'on etcd' if on_etcd else 'each on SQLite'}),"
          f" {args.runs} runs")
    print(f"{'measure':32} {'median':>8} {'min':>8} {'max':>8}")
    for k in keys:
        values = [r[k] for r in runs]
        print(f"{k:32} {statistics.median(values):8.2f} {min(values):8.2f} "
              f"{max(values):8.2f}")
    print("wrote", save("lab_ha", {"on_etcd": on_etcd, "runs": runs}))


if __name__ == "__main__":
    main()
