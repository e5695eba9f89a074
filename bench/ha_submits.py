"""Concurrent submits on three fleetd sharing one etcd: how many are refused for
contention, and how long they take, when 500 arrive at once spread over the three, or
all through one. (Every write to the unit table compares and bumps ``seq/units``; a
fleetd whose compare fails reloads and plans again, ``ATTEMPTS`` times, then answers
503 "the write met newer changes": writes through several fleetd race for that key,
writes through one are queued by its lock.)

    .venv/bin/python bench/ha_submits.py [--runs 2] [--submits 500]

Each run is a fresh lab (3 hosts, 3 etcd members, 3 fleetd; prefix fc, 10.83.0.0/24,
not while tests/integration/test_ha_submits.py runs). Submits are ``loaded``: nothing
runs. Each submit is its own fleetd.client.Client on its own thread, its endpoint list
starting at the fleetd it is spread to. Prints a table; writes bench/results/ha_submits.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Dict, List

from benchkit import pct, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import ha_lab  # noqa: E402

from fleetd.client import ApiError, Client  # noqa: E402


def storm(endpoints: List[str], submits: int, tag: str) -> Dict[str, Any]:
    """``submits`` submits released at once; submit i starts at endpoints[i % len]."""
    go = threading.Barrier(submits + 1)
    took: List[float] = []
    refused: Counter[str] = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        k = i % len(endpoints)
        client = Client(",".join(endpoints[k:] + endpoints[:k]))
        name = f"{tag}-{i:04d}.service"
        body = {"desired": "loaded", "units": [{
            "name": name, "source": name,
            "text": f"[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/sleep 1\n"}]}
        go.wait()
        t = time.monotonic()
        try:
            client.post("/v1/units", body, timeout=120)
        except ApiError as exc:
            why = "met newer changes" if "met newer changes" in str(exc) else str(exc)[:80]
            with lock:
                refused[why] += 1
            return
        with lock:
            took.append(time.monotonic() - t)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(submits)]
    for t in threads:
        t.start()
    go.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    return {"acked": len(took), "refused": dict(refused), "wall_s": wall,
            "p50_s": pct(took, 50) if took else None, "p99_s": pct(took, 99) if took else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--submits", type=int, default=500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    rows: List[Dict[str, Any]] = []
    for run in range(args.runs):
        base = tempfile.mkdtemp(prefix="ha-submits-")
        try:
            with ha_lab(base, hosts=3, etcd=3, fleetd=3, prefix="fc", subnet="10.83.0") as ha:
                ha.wait_leader()
                for how, endpoints in (("spread over 3", ha.endpoints),
                                       ("through 1", ha.endpoints[:1])):
                    got = storm(endpoints, args.submits, f"r{run}-{len(endpoints)}")
                    rows.append({"run": run, "how": how, **got})
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{args.submits} concurrent submits on 3 fleetd sharing a 3-member etcd, "
          f"{args.runs} runs")
    print(f"{'run':>3} {'submits':14} {'acked':>6} {'refused':>8} {'wall s':>7} "
          f"{'p50 s':>6} {'p99 s':>6}  why refused")
    for r in rows:
        p50 = f"{r['p50_s']:6.2f}" if r["p50_s"] is not None else "     -"
        p99 = f"{r['p99_s']:6.2f}" if r["p99_s"] is not None else "     -"
        print(f"{r['run']:>3} {r['how']:14} {r['acked']:>6} {sum(r['refused'].values()):>8} "
              f"{r['wall_s']:7.2f} {p50} {p99}  {r['refused'] or ''}")
    print("wrote", save("ha_submits", {"submits": args.submits, "rows": rows}))


if __name__ == "__main__":
    main()
