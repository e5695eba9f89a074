"""fleetd at size: a real fleetd process against simulated machines (fleetd.lab.sim).

    .venv/bin/python bench/scale.py [--machines 100,300,1000] [--registry sqlite|etcd]
                                    [--units-per-machine 10] [--profile DIR]

For each size N, in a fresh directory: fleetd (SQLite, or a one-member etcd on loopback)
and one simulator process serving N machines over real SSH (the real agent, a fake
driver that counts starts). Then, timed from the moment each step begins:

  cold start      fleetd stopped and started again with N machines registered: spawn ->
                  every machine up and heard by the new process (N SSH handshakes);
  start units     10 units a machine (``w@1..w@10N.service``) started with ``fleetctl
                  start --no-block`` (one call on SQLite; calls of 100 on etcd, whose
                  transactions take at most 128 operations) -> all running, current;
  steady state    fleetd's CPU (% of one core) and RSS over 10 s of 1 s heartbeats;
  cut 10          10 loaded machines cut off silently -> every unit of theirs running
                  elsewhere (the TTL is 5 s); then healed, old copies stopped;
  kill -9         fleetd killed and started again -> every machine heard again; and the
                  starts and stops the simulator counted meanwhile (0: nothing restarted);
  list-units      ``fleetctl list-units`` wall time (median of 3).

The simulator shares this machine's cores with fleetd (all N agents in one Python
process, or ``--sim-procs K`` processes): its load is part of what the figures include,
and it says how often its own loop stalled past a second (all its machines silent at
once: fleetd drops a session after 3 s of silence, so such stalls are the simulator's
doing, not fleetd's). ``--profile DIR`` runs fleetd
under cProfile (DIR/fleetd-N.prof, written at its SIGTERM stop at the end; the kill -9
step then restarts it unprofiled). Prints a table; writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from etcdkit import etcd_cluster  # noqa: E402
from labkit import FLEETCTL, Fleet  # noqa: E402
from simkit import SimProcess, wait_until  # noqa: E402

from fleetd.lab.daemon import wait_up  # noqa: E402

TEMPLATE = "[Service]\nExecStart=/bin/sleep 100000\n"
CUT = 10
STEADY_S = 10.0
ETCD_BATCH = 100
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def running_once(fleet: Fleet, names: List[str]) -> Dict[str, str]:
    """unit -> machine once each unit runs (current) on exactly one machine; else {}."""
    rows: Dict[str, List[str]] = {}
    for u in fleet.api.get("/v1/units", timeout=120)["units"]:
        if u["state"] == "running" and u["current"]:
            rows.setdefault(u["unit"], []).append(u["machine"])
    if any(len(rows.get(n, ())) != 1 for n in names):
        return {}
    return {n: rows[n][0] for n in names}


def ctl(fleet: Fleet, *args: str) -> float:
    """Run fleetctl; its wall time. Fails loudly (not pytest's way: a bench)."""
    env = dict(os.environ, FLEETCTL_ENDPOINT=fleet.endpoint)
    t0 = time.perf_counter()
    proc = subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fleetctl {args[0]} exited {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return wall


class Sims:
    """K simulator processes sharing the machines (``--sim-procs``), seen as one."""

    def __init__(self, work: str, machines: int, procs: int, endpoint: str) -> None:
        sizes = [machines // procs + (1 if k < machines % procs else 0)
                 for k in range(procs)]
        self.procs = [SimProcess(os.path.join(work, f"p{k}"), n, endpoint,
                                 prefix="sim" if procs == 1 else f"sim{k}x")
                      for k, n in enumerate(sizes)]
        self.owner: Dict[str, SimProcess] = {}

    def start(self) -> None:
        for p in self.procs:
            os.makedirs(os.path.dirname(p.dir), exist_ok=True)
            p.start()
            self.owner.update({n: p for n in p.names()})

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def names(self) -> List[str]:
        return list(self.owner)

    def lever(self, op: str, machines: List[str]) -> None:
        for p in self.procs:
            mine = [m for m in machines if self.owner[m] is p]
            if mine:
                p.lever(op, mine)

    def machines(self) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        for p in self.procs:
            out.update(p.machines())
        return out

    def running(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for p in self.procs:
            for unit, where in p.running().items():
                out.setdefault(unit, []).extend(where)
        return out

    def counts(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        out: Dict[str, Dict[str, Dict[str, int]]] = {}
        for p in self.procs:
            out.update(p.counts())
        return out

    def stalls(self) -> Tuple[int, float]:
        got = [p.control.stalls() for p in self.procs]
        return sum(n for n, _ in got), max(w for _, w in got)

    def rss_mb(self) -> float:
        return sum(rss_mb(p.pid) for p in self.procs)


def total(counts: Dict[str, Dict[str, Dict[str, int]]], kind: str) -> int:
    return sum(sum(c[kind].values()) for c in counts.values())


@contextlib.contextmanager
def registry(kind: str, work: str) -> Iterator[Optional[str]]:
    if kind == "sqlite":
        yield None
        return
    with etcd_cluster(os.path.join(work, "etcd"), 1) as c:
        yield "etcd://" + ",".join(c.endpoints)


def bench(work: str, machines: int, per_machine: int, kind: str,
          profile: Optional[str], procs: int, sim_work: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {"machines": machines, "units": machines * per_machine,
                           "registry": kind}
    with registry(kind, work) as url:
        fleet = Fleet(None, work, args=["--log-level", "warning"], registry=url)
        fleet.start()
        sim = Sims(sim_work, machines, procs, fleet.endpoint)
        try:
            t0 = time.monotonic()
            sim.start()
            names = sim.names()
            out["sim_ready_s"] = time.monotonic() - t0  # keys, listeners, registration
            wait_up(fleet.api, names, timeout=600)

            # cold start: N handshakes
            fleet.stop()
            prof = os.path.join(profile, f"fleetd-{kind}-{machines}.prof") if profile \
                else None
            t0w, t0 = time.time(), time.monotonic()
            start_fleetd(fleet, prof)
            wait_until("all machines heard", lambda: fleet.heard_since(t0w), 600, 0.25)
            out["cold_start_all_up_s"] = time.monotonic() - t0

            # start 10 units a machine
            template = os.path.join(work, "w@.service")
            with open(template, "w") as f:
                f.write(TEMPLATE)
            ctl(fleet, "submit", template)
            units = [f"w@{i}.service" for i in range(1, machines * per_machine + 1)]
            batch = ETCD_BATCH if kind == "etcd" else len(units)
            t0 = time.monotonic()
            for i in range(0, len(units), batch):
                ctl(fleet, "start", "--no-block", *units[i:i + batch])
            out["start_call_s"] = time.monotonic() - t0
            where = wait_until("all units running", lambda: running_once(fleet, units),
                               1200, 0.5)
            out["start_all_running_s"] = time.monotonic() - t0
            out["start_sim_stalls"], out["start_sim_worst_stall_s"] = sim.stalls()
            out["start_restarts"] = total(sim.counts(), "starts") - len(units)

            # steady state
            time.sleep(3)
            pid = fleetd_pid(fleet)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(STEADY_S)
            out["steady_cpu_pct"] = 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            out["steady_rss_mb"] = rss_mb(pid)
            out["sim_rss_mb"] = sim.rss_mb()

            # cut 10 loaded machines
            cut = sorted(set(where.values()))[:CUT]
            t0 = time.monotonic()
            sim.lever("cut", cut)

            def moved() -> Dict[str, str]:
                now = running_once(fleet, units)
                return now if now and not set(now.values()) & set(cut) else {}
            wait_until("cut machines' units elsewhere", moved, 600, 0.25)
            out["cut_units_elsewhere_s"] = time.monotonic() - t0
            sim.lever("heal", cut)
            wait_until("one copy each again",
                       lambda: all(len(m) == 1 for m in sim.running().values()), 600, 1)

            # list-units
            out["list_units_s"] = statistics.median(
                ctl(fleet, "list-units", "--no-legend") for _ in range(3))

            # kill -9 and restart
            time.sleep(6)
            if profile:
                fleet.stop()  # SIGTERM: cProfile writes its file
                start_fleetd(fleet, None)
                wait_until("all machines heard", lambda: fleet.heard_since(0), 600, 0.5)
                time.sleep(6)
            before = sim.counts()
            fleet.kill9()
            t0w, t0 = time.time(), time.monotonic()
            fleet.start()
            wait_until("all machines heard", lambda: fleet.heard_since(t0w), 600, 0.25)
            out["kill9_all_up_s"] = time.monotonic() - t0
            wait_until("units reported", lambda: running_once(fleet, units), 600, 0.5)
            time.sleep(6)  # more than the TTL: what a wrong verdict sets off has happened
            after = sim.counts()
            out["kill9_starts"] = total(after, "starts") - total(before, "starts")
            out["kill9_stops"] = total(after, "stops") - total(before, "stops")
            out["sim_stalls"], out["sim_worst_stall_s"] = sim.stalls()
        finally:
            sim.stop()
            fleet.stop()
    return out


def start_fleetd(fleet: Fleet, prof: Optional[str]) -> None:
    """Fleet.start, or fleetd under cProfile writing ``prof`` when it stops."""
    if not prof:
        fleet.start()
        return
    argv = [sys.executable, "-m", "cProfile", "-o", prof, "-m", "fleetd.daemon", "--state-dir",
            fleet.state_dir, "--socket", fleet.socket, "--log-level", "warning"]
    if fleet.config:
        argv += ["--config", fleet.config]
    with open(fleet.log, "ab") as log:
        fleet.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    wait_until("fleetd to answer", fleet._healthy, 60, 0.1)


def fleetd_pid(fleet: Fleet) -> int:
    assert fleet.proc is not None
    return fleet.proc.pid


ROWS = [
    ("sim_ready_s", "simulator up, machines registered (s)"),
    ("cold_start_all_up_s", "fleetd start -> all machines up (s)"),
    ("start_call_s", "fleetctl start call(s) return (s)"),
    ("start_all_running_s", "start -> all units running (s)"),
    ("start_restarts", "  starts beyond one a unit"),
    ("start_sim_stalls", "  simulator loop stalls > 1 s so far"),
    ("start_sim_worst_stall_s", "  worst simulator stall (s)"),
    ("steady_cpu_pct", "steady fleetd CPU (% of a core)"),
    ("steady_rss_mb", "steady fleetd RSS (MB)"),
    ("sim_rss_mb", "simulator RSS (MB)"),
    ("cut_units_elsewhere_s", "cut 10 -> units elsewhere (s)"),
    ("kill9_all_up_s", "kill -9 + restart -> all up (s)"),
    ("kill9_starts", "  starts meanwhile (must be 0)"),
    ("kill9_stops", "  stops meanwhile (must be 0)"),
    ("list_units_s", "fleetctl list-units (s)"),
    ("sim_stalls", "simulator loop stalls > 1 s, in all"),
    ("sim_worst_stall_s", "worst simulator stall (s)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", default="100,300,1000",
                        help="sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--registry", choices=("sqlite", "etcd"), default="sqlite")
    parser.add_argument("--units-per-machine", type=int, default=10)
    parser.add_argument("--profile", help="run fleetd under cProfile; .prof files here")
    parser.add_argument("--sim-procs", type=int, default=1,
                        help="simulator processes sharing the machines (default 1)")
    parser.add_argument("--sim-dir", help="the simulators' directories (their agents' "
                        "state) under this one, e.g. a tmpfs: 1,000 agents in one process "
                        "fsync their records on its one loop")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.machines.split(",") if s]
    except ValueError:
        parser.error(f"--machines: {args.machines!r} is not a list of numbers")
    if not sizes or min(sizes) < 1:
        parser.error("--machines: at least one size, each 1 or more")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    results = []
    for n in sizes:
        work = tempfile.mkdtemp(prefix=f"fleet-bench-scale-{n}-")
        sim_work = tempfile.mkdtemp(prefix=f"fleet-bench-sim-{n}-", dir=args.sim_dir) \
            if args.sim_dir else work
        try:
            results.append(bench(work, n, args.units_per_machine, args.registry,
                                 args.profile, max(1, args.sim_procs), sim_work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(sim_work, ignore_errors=True)
        print_table(results)
    print(f"results: {save('scale-' + args.registry, results)}")


def print_table(results: List[Dict[str, Any]]) -> None:
    head = f"{'measure (' + results[0]['registry'] + ')':<42}"
    print(head + "".join(f"{str(r['machines']) + ' m/' + str(r['units']) + ' u':>16}"
                         for r in results))
    for key, label in ROWS:
        print(f"{label:<42}" + "".join(f"{r.get(key, float('nan')):>16.2f}"
                                       for r in results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
