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
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetd.cgroups import detect  # noqa: E402
from fleetd.cli.client import ApiError, Client  # noqa: E402
from fleetd.lab.daemon import agent_command  # noqa: E402
from fleetd.lab.netns import Lab  # noqa: E402


def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check():
            return time.time()
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def healthy(api: Client) -> bool:
    try:
        api.get("/v1/health", timeout=1)
        return True
    except ApiError:
        return False


def running(api: Client) -> Dict[str, int]:
    """unit -> pid of every unit running and current."""
    return {u["unit"]: u["pid"] for u in api.get("/v1/units")["units"]
            if u["state"] == "running" and u["current"]}


def heard_since(api: Client, t0: float) -> bool:
    return all(m["state"] == "up" and (m["last_seen"] or 0) >= t0
               for m in api.get("/v1/machines")["machines"])


class Fleetd:
    def __init__(self, work: str) -> None:
        self.argv = [sys.executable, "-m", "fleetd.daemon", "--state-dir",
                     os.path.join(work, "state"), "--socket", os.path.join(work, "fleetd.sock")]
        self.log = os.path.join(work, "fleetd.log")
        self.api = Client(f"unix://{os.path.join(work, 'fleetd.sock')}")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> float:
        t0 = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        return t0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def clean_cgroups(lab: Lab) -> None:
    """The agents' unit cgroups (the lab's namespaces share this kernel's hierarchy)."""
    for h in lab.hosts():
        try:
            with open(os.path.join(h.state_dir, "machine-id")) as f:
                backend = detect(parent=f"fleet/{f.read().strip()}")
        except OSError:
            continue
        for name in backend.units():
            cg = backend.unit(name)
            cg.kill(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not cg.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
            cg.remove()
        backend.remove()


def bench(work: str, units: int, runs: int) -> List[Dict[str, float]]:
    lab = Lab(os.path.join(work, "lab"), prefix="fr", subnet="10.84.0")
    lab.down()
    hosts = lab.up(3)
    fleetd = Fleetd(work)
    try:
        fleetd.start()
        api = fleetd.api
        until("fleetd", lambda: healthy(api))
        for h in hosts:
            api.post("/v1/machines", {"name": h.name, "address": h.address,
                                      "identity": lab.identity, "known_hosts": lab.known_hosts,
                                      "agent_command": agent_command()})
        until("3 machines up", lambda: heard_since(api, 0))
        for first in range(0, units, 100):
            api.post("/v1/units", {"desired": "launched", "units": [
                {"name": f"rs-{i:04d}.service",
                 "text": f"[Service]\nExecStart=/bin/sleep 100000\nEnvironment=N={i}\n"}
                for i in range(first, min(units, first + 100))]})
        until(f"{units} units running", lambda: len(running(api)) == units, 120)
        time.sleep(6)  # fleetd has run longer than a machine TTL: registry last_seen is old
        results = []
        for _ in range(runs):
            before = running(api)
            fleetd.kill9()
            t0 = fleetd.start()
            t_ready = until("API ready", lambda: healthy(api))
            t_pass = until("first pass", lambda: len(running(api)) == units)
            t_up = until("machines up", partial(heard_since, api, t0))
            time.sleep(2)  # what a wrong verdict would set off has had time to happen
            after = running(api)
            restarted = sum(1 for n, pid in before.items() if after.get(n) != pid)
            results.append({"ready_s": t_ready - t0, "first_pass_s": t_pass - t0,
                            "machines_up_s": t_up - t0, "restarted": restarted})
            time.sleep(4)
        return results
    finally:
        fleetd.stop()
        clean_cgroups(lab)
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
    out = os.path.join(ROOT, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "fleetd_restart.json"), "w") as f:
        json.dump({"runs": runs, "units": args.units, "hosts": 3}, f, indent=1)


if __name__ == "__main__":
    main()
