"""Issue 12's figures: what a fleetd leader's death costs, what a host's costs, what etcd
costs over SQLite, and what an idle fleet writes to etcd. A lab of 3 hosts, 3 etcd
members and 3 fleetd on them, 30 units of /bin/sleep.

    .venv/bin/python bench/ha_failover.py [--runs 3] [--submits 100]

Per run (a fresh lab, prefix fx on 10.82.0.0/24):

- idle writes: etcd's revision over 10 s with the 30 units running and nothing asked
  (heartbeats write nothing: target 0/s);
- kill -9 of the leader fleetd, then, from the kill, through the other two only:
  (a) ``write_accepted_s`` a submit accepted; ``started_running_s`` a unit started after
  the kill reported running (that needs a leader: placing and pushing);
  (b) ``sessions_up_s`` every machine up as list-machines shows it through a survivor,
  heard by the new leader (last_seen after the kill), with a leader of a higher epoch;
  ``new_leader_s`` another fleetd says it leads; and the programs restarted (pids of the
  30 that differ after; target 0);
- (c) ``host_cut_moved_s``: a host cut off (its veth down, as tests/integration/
  test_failover.py cuts one), from the cut until one of its units runs elsewhere
  (machine_ttl_s, 5 s by default, is most of it);
- submits/s: ``--submits`` one-unit submits in a row through the API (one fleetd's
  socket) on etcd, and the same against a lone fleetd on SQLite.

Leadership, machines and units are polled every 20 ms: a figure includes up to that.
Prints min/median/max of each; writes bench/results/ha_failover.json. With ``--profile``
it also prints, per run, the survivors' log lines from the kill on (lock expiry,
campaign, election, session connects), each with its offset from the kill.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

import agentkit  # noqa: E402
from labkit import FLEETCTL, Fleet, fleetd_takes_etcd, lab_slot  # noqa: E402

from fleetd import procfs  # noqa: E402
from fleetd.client import ApiError, Client  # noqa: E402
from fleetd.lab import wiring  # noqa: E402
from fleetd.lab.daemon import register, wait_up  # noqa: E402
from fleetd.lab.netns import Lab  # noqa: E402

PREFIX, SUBNET = "fx", "10.82.0"  # not fb: bench/start_latency.py has it
UNITS = 30
SLEEPER = "[Service]\nExecStart=/bin/sleep 100000\n"
POLL_S = 0.02


def until(what: str, predicate: Callable[[], object], timeout: float = 120.0) -> float:
    """Seconds until ``predicate()`` holds, polled every POLL_S."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - began


def quiet(f: Callable[[], Any]) -> Any:
    """``f()``, or None when the API (or the etcdctl behind it) does not answer."""
    try:
        return f()
    except (ApiError, OSError, ValueError, KeyError):
        return None


def ctl(endpoint: str, *args: str) -> None:
    out = subprocess.run([FLEETCTL, "--endpoint", endpoint, *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"fleetctl {' '.join(args)}: {out.stdout}{out.stderr}")


def item(name: str) -> Dict[str, Any]:
    return {"name": name, "text": SLEEPER}


def submit(client: Client, name: str, desired: Optional[str] = None) -> None:
    client.post("/v1/units", {"units": [item(name)], "desired": desired, "replace": False},
                timeout=30)


def revision(lab: Lab) -> int:
    out = subprocess.run(["etcdctl", "--endpoints", ",".join(lab.etcd.endpoints),
                          "endpoint", "status", "-w", "json"], capture_output=True,
                         text=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30)
    return max(int(r["Status"]["header"]["revision"]) for r in json.loads(out.stdout))


def programs(lab: Lab) -> Dict[str, List[int]]:
    """unit -> pids of its processes on this lab's hosts (FLEET_UNIT=, their netns)."""
    ours = {os.stat(f"/run/netns/{h.netns}").st_ino for h in lab.hosts()}
    return {u: sorted(p for p in pids if (procfs.namespace(p, "net") or 0) in ours)
            for u, pids in agentkit.unit_processes().items()}


def health(endpoint: str) -> Dict[str, Any]:
    return dict(Client(endpoint).get("/v1/health", timeout=2))


def leader_of(lab: Lab, besides: str) -> Optional[Dict[str, Any]]:
    for s in lab.servers.servers():
        if s.name == besides:
            continue
        h = quiet(lambda s=s: health(s.endpoint))
        if h and h.get("leader") is True:
            return h
    return None


def running(client: Client) -> Dict[str, str]:
    units = client.get("/v1/units", timeout=10)["units"]
    return {u["unit"]: u["machine"] for u in units if u["state"] == "running"
            and u.get("current", True)}


def stamp_of(line: str) -> Optional[float]:
    try:
        return datetime.datetime.strptime(" ".join(line.split()[:2]),
                                          "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def profile(lab: Lab, dead: str, t_kill: float, horizon: float) -> List[str]:
    """The survivors' log lines from the kill to ``horizon`` s after, with offsets."""
    rows = []
    for s in lab.servers.servers():
        if s.name == dead:
            continue
        with open(s.log, errors="replace") as f:
            for line in f:
                at = stamp_of(line)
                if at is not None and t_kill - 0.01 <= at <= t_kill + horizon:
                    rows.append((at - t_kill, s.name, line.split(" ", 3)[-1].rstrip()))
    return [f"  +{dt:6.3f}s {name}: {text[:150]}" for dt, name, text in sorted(rows)]


def leader_kill(lab: Lab, got: Dict[str, float], show_profile: bool) -> None:
    s = lab.servers
    until("one leader", lambda: len(s.leaders()) == 1)
    leader = s.leaders()[0]
    old_epoch = health(s.get(leader).endpoint)["epoch"]
    rest = ",".join(x.endpoint for x in s.servers() if x.name != leader)
    client = Client(rest)
    before = programs(lab)
    t_kill_wall = time.time()
    t0 = time.monotonic()
    s.kill(leader)
    marks: Dict[str, float] = {}
    hosts = [h.name for h in lab.hosts()]

    def tick() -> bool:
        now = time.monotonic() - t0
        if "write_accepted_s" not in marks:
            try:
                submit(client, "fb-after.service", "launched")
                marks["write_accepted_s"] = time.monotonic() - t0
            except ApiError:
                pass
        lead = leader_of(lab, leader)
        if "new_leader_s" not in marks and lead and lead.get("epoch", 0) > old_epoch:
            marks["new_leader_s"] = now
        if "started_running_s" not in marks and "write_accepted_s" in marks and \
                "fb-after.service" in (quiet(lambda: running(client)) or {}):
            marks["started_running_s"] = now
        if "sessions_up_s" not in marks and "new_leader_s" in marks:
            ms = quiet(lambda: client.get("/v1/machines", timeout=5)["machines"]) or []
            if sorted(m["name"] for m in ms) == sorted(hosts) and all(
                    m["state"] == "up" and (m["last_seen"] or 0) >= t_kill_wall for m in ms):
                marks["sessions_up_s"] = time.monotonic() - t0
        return len(marks) == 4

    until("the survivors to take over", tick, 120)
    got.update(marks)
    after = programs(lab)
    got["programs_restarted"] = float(sum(1 for u in before if u.startswith("fb-u")
                                          and after.get(u) != before[u]))
    if show_profile:
        print(f"-- kill -9 {leader} (epoch {old_epoch}): {marks}")
        print("\n".join(profile(lab, leader, t_kill_wall, max(marks.values()) + 0.5)))
    s.start(leader)


def host_cut(lab: Lab, got: Dict[str, float]) -> None:
    client = Client(lab.servers.endpoint)
    placed = running(client)
    unit = sorted(u for u in placed if u.startswith("fb-u"))[0]
    victim = next(h for h in lab.hosts() if h.name == placed[unit])
    wiring.link(victim.netns, up=False)
    try:
        got["host_cut_moved_s"] = until(f"{unit} running off {victim.name}", lambda: (
            quiet(lambda: running(client)) or {}).get(unit) not in (None, victim.name), 120)
    finally:
        wiring.link(victim.netns, up=True)
    until(f"{victim.name} up again", lambda: all(
        m["state"] == "up" for m in client.get("/v1/machines")["machines"]), 120)


def submits_per_s(client: Client, stem: str, count: int) -> float:
    t = time.monotonic()
    for i in range(count):
        submit(client, f"{stem}{i}.service")
    return count / (time.monotonic() - t)


def one_run(base: str, submits: int, show_profile: bool) -> Dict[str, float]:
    lab = Lab(os.path.join(base, "lab"), prefix=PREFIX, subnet=SUBNET)
    lab.down()
    got: Dict[str, float] = {}
    try:
        hosts = lab.up(3, etcd=3)
        lab.servers.up(3, lab.etcd.registry)
        client = Client(lab.servers.endpoint)
        register(lab, client, hosts)
        wait_up(client, [h.name for h in hosts])
        units = os.path.join(base, "units")
        os.makedirs(units)
        for i in range(UNITS):
            with open(os.path.join(units, f"fb-u{i}.service"), "w") as f:
                f.write(SLEEPER)
        ctl(lab.servers.endpoint, "start", "--timeout", "240",
            *sorted(os.path.join(units, n) for n in os.listdir(units)))
        time.sleep(2)  # the starts' last reports in
        r0 = revision(lab)
        time.sleep(10)
        got["idle_etcd_writes_per_s"] = (revision(lab) - r0) / 10.0

        leader_kill(lab, got, show_profile)
        host_cut(lab, got)
        got["submits_per_s_etcd"] = submits_per_s(
            Client(lab.servers.servers()[0].endpoint), "fb-sub", submits)
    finally:
        lab.down()

    os.makedirs(os.path.join(base, "sqlite"))
    lone = Fleet(None, os.path.join(base, "sqlite"))
    lone.start()
    try:
        got["submits_per_s_sqlite"] = submits_per_s(lone.api, "fb-sub", submits)
    finally:
        lone.stop()
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--submits", type=int, default=100)
    ap.add_argument("--profile", action="store_true",
                    help="print the survivors' log lines after each leader kill")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not fleetd_takes_etcd():
        raise SystemExit("this fleetd does not run on etcd")
    runs: List[Dict[str, float]] = []
    for _ in range(args.runs):
        base = tempfile.mkdtemp(prefix="ha-failover-")
        try:
            with lab_slot(PREFIX):
                runs.append(one_run(base, args.submits, args.profile))
        except BaseException:
            print(f"failed; its logs are under {base}", file=sys.stderr)
            raise
        shutil.rmtree(base, ignore_errors=True)
    print(f"HA failover: 3 hosts, 3 etcd, 3 fleetd, {UNITS} units, {args.runs} runs "
          "(targets: write_accepted_s <= 3, sessions_up_s <= 4, programs_restarted 0, "
          "idle_etcd_writes_per_s 0)")
    print(f"{'measure':26} {'min':>8} {'median':>8} {'max':>8}")
    for k in runs[0]:
        values = [r[k] for r in runs]
        print(f"{k:26} {min(values):8.2f} {statistics.median(values):8.2f} "
              f"{max(values):8.2f}")
    print("wrote", save("ha_failover", {"units": UNITS, "submits": args.submits,
                                        "runs": runs}))


if __name__ == "__main__":
    main()
