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
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetd.cli.client import ApiError, Client  # noqa: E402
from fleetd.lab.daemon import agent_command  # noqa: E402
from fleetd.lab.netns import Host, Lab  # noqa: E402

UNITS = 20


def add(api: Client, lab: Lab, h: Host) -> None:
    api.post("/v1/machines", {"name": h.name, "address": h.address, "identity": lab.identity,
                              "known_hosts": lab.known_hosts, "agent_command": agent_command()})


def until(what: str, check: object, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if check():  # type: ignore[operator]
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def stale_on(lab: Lab, h: Host) -> int:
    """Processes of the bench's units still alive in ``h``'s network namespace."""
    count = 0
    for pid in lab.pids(h):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"FLEET_UNIT=fo-" in f.read():
                    count += 1
        except OSError:
            continue
    return count


def one_run(work: str, run: int) -> Dict[str, float]:
    lab = Lab(os.path.join(work, f"lab{run}"), prefix="fo", subnet="10.83.0")
    lab.down()
    hosts = lab.up(3)
    sock = os.path.join(work, f"fleetd{run}.sock")
    with open(os.path.join(work, "fleetd.log"), "ab") as log:
        fleetd = subprocess.Popen([sys.executable, "-m", "fleetd.daemon", "--state-dir",
                                   os.path.join(work, f"state{run}"), "--socket", sock,
                                   "--log-level", "info"], stdout=log, stderr=log)
    api = Client(f"unix://{sock}")
    try:
        until("fleetd", lambda: _healthy(api))
        add(api, lab, hosts[0])
        until("h1 up", lambda: _states(api).get("h1") == "up")
        api.post("/v1/units", {"desired": "launched", "units": [
            {"name": f"fo-{i}.service", "text": f"[Service]\nExecStart=/bin/sleep 100000\n"
                                                f"Environment=N={i}\n"} for i in range(UNITS)]})
        until("20 units on h1", lambda: len(_running(api, "h1")) == UNITS)
        for h in hosts[1:]:
            add(api, lab, h)
        until("all up", lambda: set(_states(api).values()) == {"up"})
        link = f"{hosts[0].netns}-br"
        t0 = time.perf_counter()
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        t_lost = until("h1 lost", lambda: _states(api).get("h1") == "lost")
        t_moved = until("all 20 elsewhere", lambda: len(
            _running(api, "h2") | _running(api, "h3")) == UNITS)
        t1 = time.perf_counter()
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        t_back = until("h1 back", lambda: _states(api).get("h1") == "up")
        t_clean = until("stale copies gone", lambda: stale_on(lab, hosts[0]) == 0)
        return {"lost_s": t_lost - t0, "all_elsewhere_s": t_moved - t0,
                "back_up_s": t_back - t1, "stale_stopped_s": t_clean - t1}
    finally:
        fleetd.terminate()
        try:
            fleetd.wait(20)
        except subprocess.TimeoutExpired:
            fleetd.send_signal(signal.SIGUSR1)  # its tasks' stacks, into the log
            time.sleep(0.5)
            fleetd.kill()
            fleetd.wait()
            raise SystemExit("fleetd did not stop within 20 s of SIGTERM; see "
                             f"{work}/fleetd.log") from None
        subprocess.run(["ip", "link", "set", f"{hosts[0].netns}-br", "up"],
                       capture_output=True)
        lab.down()


def _healthy(api: Client) -> bool:
    try:
        api.get("/v1/health")
        return True
    except ApiError:
        return False


def _states(api: Client) -> Dict[str, str]:
    return {m["name"]: m["state"] for m in api.get("/v1/machines")["machines"]}


def _running(api: Client, machine: str) -> set:  # type: ignore[type-arg]
    return {u["unit"] for u in api.get("/v1/units")["units"]
            if u["machine"] == machine and u["state"] == "running" and u["current"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-failover-")
    runs: List[Dict[str, float]] = [one_run(work, r) for r in range(args.runs)]
    print(f"{'after h1 goes off the network (20 units)':<44}{'median s':>10}{'max s':>8}")
    for key, label in (("lost_s", "h1 declared lost"),
                       ("all_elsewhere_s", "all 20 running on h2/h3"),
                       ("back_up_s", "after the link returns: h1 up"),
                       ("stale_stopped_s", "after the link returns: stale copies gone")):
        values = [r[key] for r in runs]
        print(f"{label:<44}{statistics.median(values):>10.2f}{max(values):>8.2f}")
    print("defaults: heartbeat 1 s, TTL 5 s; target all elsewhere <= 7 s "
          "(fleet 30-32 s, Nomad 20-30 s)")
    out = os.path.join(ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "failover.json"), "w") as f:
        json.dump({"runs": runs, "units": UNITS, "ttl_s": 5.0, "heartbeat_s": 1.0}, f, indent=1)


if __name__ == "__main__":
    main()
