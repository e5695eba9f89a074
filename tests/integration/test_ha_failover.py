"""Issue 12's acceptance, in a real lab: three etcd members, three fleetd on them, three
hosts with real agents and programs. What an operator must be able to count on when a
part of the control plane dies or is cut off: the leader fleetd killed, an etcd member
killed, etcd's quorum lost, the leader cut off from etcd - and in every case the
programs on the hosts keep their pids (the control plane going away is not a reason to
restart anything), the API answers, and a deposed leader changes nothing on a host.

Prefix ``fa`` on 10.81.0.0/24 (apart from the other HA tests' labs).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import agentkit
import pytest
from labkit import FLEETCTL, ROOT, HaLab, fleetd_takes_etcd, ha_lab, pid_netns_inode, wait_for

from fleetd import protocol
from fleetd.client import ApiError, Client
from fleetd.lab.daemon import agent_command

pytestmark = [pytest.mark.etcd, pytest.mark.lab]
PREFIX, SUBNET = "fa", "10.81.0"
SLEEPER = "[Service]\nExecStart=/bin/sleep 100000\n"


@pytest.fixture
def ha(tmp_path) -> Iterator[HaLab]:
    if not fleetd_takes_etcd():
        pytest.skip("fleetd does not take registry = \"etcd://...\"")
    with ha_lab(str(tmp_path), hosts=3, etcd=3, fleetd=3, prefix=PREFIX, subnet=SUBNET) as lab:
        yield lab


def unit_files(tmp_path, count: int, stem: str = "fa-u", text: str = SLEEPER) -> List[str]:
    paths = []
    for i in range(count):
        path = tmp_path / f"{stem}{i}.service"
        path.write_text(text)
        paths.append(str(path))
    return paths


def programs(ha: HaLab) -> Dict[str, Dict[int, str]]:
    """unit -> {pid: host} of the live processes of units on this lab's hosts (by their
    FLEET_UNIT= and their network namespace, as labkit's Fleet.programs reads them)."""
    ours = {os.stat(f"/run/netns/{h.netns}").st_ino: h.name for h in ha.lab.hosts()}
    found: Dict[str, Dict[int, str]] = {}
    for unit, pids in agentkit.unit_processes().items():
        for pid in pids:
            host = ours.get(pid_netns_inode(pid) or 0)
            if host is not None:
                found.setdefault(unit, {})[pid] = host
    return found


def health(ha: HaLab, name: str) -> Dict[str, Any]:
    return dict(ha.api(name).get("/v1/health", timeout=5))


def epoch_of(ha: HaLab, name: str) -> int:
    return int(health(ha, name)["epoch"])


def running(ha: HaLab, endpoint: Optional[str] = None) -> Dict[str, str]:
    """unit -> machine of every unit reported running, through ``endpoint`` or all."""
    units = Client(endpoint or ha.endpoint).get("/v1/units", timeout=10)["units"]
    return {u["unit"]: u["machine"] for u in units if u["state"] == "running"}


def all_up(ha: HaLab, endpoint: str, since: float = 0.0) -> bool:
    """list-machines through ``endpoint`` says every host is up, and each was heard at or
    after ``since`` (by a session of the leader now, not left up by the one before)."""
    out = subprocess.run([FLEETCTL, "--endpoint", endpoint, "list-machines", "--no-legend",
                          "--fields", "machine,state"], capture_output=True, text=True,
                         cwd=ROOT, timeout=30)
    states = dict(ln.split(None, 1) for ln in out.stdout.splitlines() if ln.strip())
    if out.returncode != 0 or states != {h.name: "up" for h in ha.lab.hosts()}:
        return False
    machines = Client(endpoint).get("/v1/machines", timeout=10)["machines"]
    return all((m["last_seen"] or 0) >= since for m in machines)


def survivors(ha: HaLab, dead: str) -> str:
    return ",".join(s.endpoint for s in ha.lab.servers.servers() if s.name != dead)


def log_lines(ha: HaLab, name: str, pattern: str) -> List[str]:
    with open(ha.lab.servers.get(name).log, errors="replace") as f:
        return [ln for ln in f if re.search(pattern, ln)]


def stamp(line: str) -> str:
    """The asctime of a fleetd log line (``2026-12-03 21:40:01,123``): sortable."""
    return " ".join(line.split()[:2])


def start_units(ha: HaLab, paths: List[str]) -> Dict[str, Dict[int, str]]:
    ha.ctl("start", "--timeout", "120", *paths, timeout=180)
    names = {os.path.basename(p) for p in paths}
    found = wait_for("every unit's program", lambda: (lambda p: p if names <= set(p) and all(
        len(p[n]) == 1 for n in names) else None)(programs(ha)), 30)
    return {n: found[n] for n in names}


# --- 1. the leader fleetd killed -----------------------------------------------------------
def test_leader_killed_another_leads_a_blocked_start_completes_programs_keep_pids(
        ha: HaLab, tmp_path) -> None:
    before = start_units(ha, unit_files(tmp_path, 20))
    leader = ha.wait_leader()
    epoch = epoch_of(ha, leader)
    # a unit whose start takes a while (ExecStartPre=), so that the blocking start is
    # still waiting when the leader dies; fleetctl has every fleetd as its endpoint
    late = tmp_path / "fa-late.service"
    late.write_text("[Service]\nExecStartPre=/bin/sleep 3\nExecStart=/bin/sleep 100000\n")
    blocked = subprocess.Popen(
        [FLEETCTL, "--endpoint", ha.endpoint, "start", "--timeout", "120", str(late)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for("the late unit submitted", lambda: any(
            f["unit"] == "fa-late.service"
            for f in ha.api().get("/v1/unit-files")["unit_files"]), 30)
        assert blocked.poll() is None, "the start returned before the kill"
        killed_at = time.time()
        ha.kill_fleetd(leader)
        out, err = blocked.communicate(timeout=150)
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.communicate()
    assert blocked.returncode == 0, out + err
    successor = ha.wait_leader(timeout=60, besides=[leader])
    assert successor != leader and epoch_of(ha, successor) > epoch
    assert "fa-late.service" in running(ha, survivors(ha, leader))

    # the sessions are back: every machine up through the survivors; every program of
    # before runs with the same pid on the same host (nothing was restarted)
    wait_for("every machine up through the survivors, heard since the kill",
             lambda: all_up(ha, survivors(ha, leader), killed_at), 60)
    after = programs(ha)
    assert {n: after.get(n) for n in before} == before
    assert len(after["fa-late.service"]) == 1


def test_units_started_while_nobody_leads_spread_over_the_machines_once_one_does(
        ha: HaLab, tmp_path) -> None:
    """The new leader places what was started in the gap once its sessions are back, not
    on whichever agent answers first (seen: all 6 on one of 3 equally loaded hosts)."""
    start_units(ha, unit_files(tmp_path, 6))
    leader = ha.wait_leader()
    ha.kill_fleetd(leader)
    gap = unit_files(tmp_path, 6, stem="fa-gap")
    ha.ctl("--endpoint", survivors(ha, leader), "start", "--no-block", *gap)
    ha.wait_leader(timeout=60, besides=[leader])
    names = {os.path.basename(p) for p in gap}
    placed = wait_for("the gap's units running", lambda: (lambda r: r if names <= set(r)
                                                          else None)(running(ha)), 60)
    hosts = sorted(placed[n] for n in names)
    assert set(hosts) == {h.name for h in ha.lab.hosts()}, hosts


# --- 2. an etcd member killed --------------------------------------------------------------
def raft_leader(ha: HaLab) -> str:
    """The etcd member (eK) that leads etcd's raft now."""
    out = ha.etcdctl("endpoint", "status", "-w", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    leader_id = rows[0]["Status"]["leader"]
    row = next(r for r in rows if r["Status"]["header"]["member_id"] == leader_id)
    return f"e{int(row['Endpoint'].split(':')[0].rsplit('.', 1)[1]) - 200}"


class Reader(threading.Thread):
    """Asks every fleetd for list-units, again and again, until stopped: the errors it
    saw are the API's failures while etcd lost a member."""

    def __init__(self, ha: HaLab) -> None:
        super().__init__(daemon=True)
        self.clients = [Client(e) for e in ha.endpoints]
        self.errors: List[str] = []
        self.reads = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for client in self.clients:
                try:
                    client.get("/v1/units", timeout=10)
                    self.reads += 1
                except ApiError as exc:
                    self.errors.append(f"{client.endpoint}: {exc}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def healthy_members(ha: HaLab) -> int:
    return ha.etcdctl("endpoint", "health").stderr.count("is healthy")


@pytest.mark.parametrize("which", ["follower", "raft-leader"])
def test_an_etcd_member_killed_the_api_answers_and_it_rejoins(
        ha: HaLab, tmp_path, which: str) -> None:
    before = start_units(ha, unit_files(tmp_path, 6))
    leader = ha.wait_leader()
    epoch = epoch_of(ha, leader)
    raft = raft_leader(ha)
    victim = raft if which == "raft-leader" else next(
        f"e{k}" for k in (1, 2, 3) if f"e{k}" != raft)
    reader = Reader(ha)
    reader.start()
    try:
        time.sleep(1)  # reads before the kill
        ha.kill_etcd(victim)
        assert ha.etcd_pid(victim) is None
        time.sleep(6)  # reads through two of the leader lock's TTLs without the member
    finally:
        reader.stop()
    assert reader.errors == [] and reader.reads > 0
    fleetd_leader = ha.wait_leader(timeout=60)
    if which == "follower":  # nothing for fleetd to do: the same leader in the same term
        assert fleetd_leader == leader and epoch_of(ha, leader) == epoch
    else:  # its term may have ended with etcd's election: never an older one
        assert epoch_of(ha, fleetd_leader) >= epoch
    # writes go on without it
    extra = unit_files(tmp_path, 1, stem="fa-during")
    ha.ctl("start", "--timeout", "60", *extra, timeout=90)

    ha.start_etcd(victim)
    wait_for("all three members healthy", lambda: healthy_members(ha) == 3, 60)
    after = programs(ha)
    assert {n: after.get(n) for n in before} == before


# --- 3. etcd's quorum lost -----------------------------------------------------------------
def test_quorum_lost_writes_refused_naming_etcd_reads_answer_stale_nothing_lost(
        ha: HaLab, tmp_path) -> None:
    before = start_units(ha, unit_files(tmp_path, 6))
    extra = unit_files(tmp_path, 1, stem="fa-noquorum")
    ha.stop_etcd("e2")
    ha.stop_etcd("e3")
    try:
        wait_for("fleetd to see reads may be stale", lambda: all(
            health(ha, s.name).get("stale") for s in ha.lab.servers.servers()), 60)
        refused = ha.ctl("submit", *extra, check=False, timeout=120)
        assert refused.returncode != 0, refused.stdout
        assert "etcd" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        started = ha.ctl("start", "--timeout", "5", *extra, check=False, timeout=120)
        assert started.returncode != 0 and "etcd" in started.stderr, started.stderr

        listed = ha.ctl("list-units", "--no-legend", "--fields", "unit,state", timeout=60)
        assert {ln.split()[0] for ln in listed.stdout.splitlines()} >= set(before)
        assert "may be stale" in listed.stderr and "etcd" in listed.stderr, listed.stderr
        assert {n: programs(ha).get(n) for n in before} == before
    finally:
        ha.start_etcd("e2")
        ha.start_etcd("e3")
    wait_for("fleetd's reads current again", lambda: not any(
        health(ha, s.name).get("stale") for s in ha.lab.servers.servers()), 60)
    quiet = ha.ctl("list-units", timeout=60)
    assert "stale" not in quiet.stderr
    wait_for("a write accepted again", lambda: ha.ctl(
        "start", "--timeout", "60", *extra, check=False, timeout=90).returncode == 0, 90)
    names = {u["unit"] for u in ha.api().get("/v1/unit-files")["unit_files"]}
    assert names == set(before) | {"fa-noquorum0.service"}
    wait_for("every unit running", lambda: set(running(ha)) >= names, 60)
    after = programs(ha)
    assert {n: after.get(n) for n in before} == before


# --- 4. the leader cut off from etcd (not from the hosts) ----------------------------------
def old_epoch_hello(ha: HaLab, host: str, epoch: int) -> List[Dict[str, Any]]:
    """What the agent on ``host`` answers a fleetd hello with ``epoch``, over real SSH
    (as the deposed leader's session would say it), until it closes the connection."""
    h = next(x for x in ha.lab.hosts() if x.name == host)
    proc = subprocess.Popen(
        ["ssh", "-i", ha.lab.identity, "-o", f"UserKnownHostsFile={ha.lab.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{h.address}",
         agent_command()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    hang = threading.Timer(30, proc.kill)
    hang.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(protocol.encode("hello", daemon="fleetd", heartbeat_s=0.5,
                                         epoch=epoch))
        proc.stdin.flush()
        answers = [protocol.decode(line) for line in proc.stdout]
        proc.wait()
        return answers
    finally:
        hang.cancel()
        proc.kill()
        proc.wait()


def test_leader_cut_from_etcd_steps_down_another_leads_hosts_refuse_the_old_epoch(
        ha: HaLab, tmp_path) -> None:
    before = start_units(ha, unit_files(tmp_path, 6))
    old = ha.wait_leader()
    old_epoch = epoch_of(ha, old)
    placed = placement_revisions(ha)
    assert len(placed) == len(before)
    cut_at = time.time()
    ha.cut(old)
    new = ha.wait_leader(timeout=60, besides=[old])
    new_epoch = epoch_of(ha, new)
    assert new_epoch > old_epoch
    wait_for("the cut leader to say it follows", lambda: ha.role(old) != "leader", 60)
    wait_for("the new leader's sessions up",
             lambda: all_up(ha, survivors(ha, old), cut_at), 60)

    # the old leader stepped down before the new one began to lead
    down = log_lines(ha, old, rf"stepping down from epoch {old_epoch}|no longer leading")
    lead = log_lines(ha, new, rf"leading: epoch {new_epoch}")
    assert down and lead, (down, lead)
    assert stamp(down[0]) <= stamp(lead[0]), (down[0], lead[0])
    # and, deposed, it opened no session to any host (it does not even try)
    with open(ha.lab.servers.get(old).log, errors="replace") as f:
        after_down = f.read().split(down[0], 1)[1]
    assert not re.search(r"agent \S+ up|leading: epoch|leading as", after_down), \
        after_down[-2000:]

    # every host took the new epoch; a hello from the old one is refused by its agent
    for h in ha.lab.hosts():
        wait_for(f"{h.name}'s agent at epoch {new_epoch}",
                 lambda h=h: _epoch_file(h.state_dir) == new_epoch, 30)
        answers = old_epoch_hello(ha, h.name, old_epoch)
        assert answers and answers[-1]["type"] == "error", answers
        assert answers[-1]["message"] == (f"epoch {old_epoch} is older than {new_epoch}: "
                                          "a newer fleetd leads this host"), answers

    # no engine rewrote a placement (the old one deposed, the new one found them right)
    # and the programs are the ones of before
    assert placement_revisions(ha) == placed
    after = programs(ha)
    assert {n: after.get(n) for n in before} == before
    assert set(running(ha, survivors(ha, old))) >= set(before)


def placement_revisions(ha: HaLab) -> Dict[str, int]:
    """placements/<unit> key -> the etcd revision that last wrote it."""
    out = ha.etcdctl("get", "--prefix", "/fleetd/placements/", "-w", "json")
    assert out.returncode == 0, out.stderr
    return {base64.b64decode(kv["key"]).decode(): int(kv["mod_revision"])
            for kv in json.loads(out.stdout).get("kvs", [])}


def _epoch_file(state_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(state_dir, "epoch")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
