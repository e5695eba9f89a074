"""Three fleetd on a three-member etcd (issue 12, acceptance part B), faults from outside:

- kill -9 of the leader while 500 submits are in flight, spread over the three fleetd
  (each through the real fleetd.client, its endpoint list starting at a different
  fleetd, so a submit whose connection broke goes on to the next one as fleetctl's
  would): every acknowledged submit is there afterwards exactly once, in every fleetd's
  list and in etcd's keys, with the text and desired state it was acknowledged with;
  the few submitted to run run exactly once;
- a machine cut off while no fleetd runs at all is found lost by the next leader, which
  moves its units; the cut host's return leaves each unit running exactly once.

Prefix ``fc`` on 10.83.0.0/24 (apart from the other labs).
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

import agentkit
import pytest
from labkit import HaLab, alive, fleetd_takes_etcd, ha_lab, netns_inode, pid_netns_inode, wait_for

from fleetd.client import ApiError, Client
from fleetd.units.model import content_hash

pytestmark = pytest.mark.etcd
PREFIX, SUBNET = "fc", "10.83.0"
SUBMITS = 500
KILL_AFTER = 100  # acknowledgements seen before the leader's kill -9
LAUNCHED_EVERY = 50  # every 50th submit asks to run (10 programs, not 500)


@pytest.fixture(autouse=True)
def _needs_etcd_daemon() -> None:
    if not fleetd_takes_etcd():
        pytest.skip("fleetd does not take registry = \"etcd://...\" yet")


def desired_of(i: int) -> str:
    if i % LAUNCHED_EVERY == 0:
        return "launched"
    return "inactive" if i % 2 else "loaded"


def name_of(i: int) -> str:
    return f"storm-{i:03d}.service"


def text_of(name: str) -> str:
    # distinct contents: a unit stored with another's text or hash would show
    return f"[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/sleep 100000\n"


def programs(ha: HaLab) -> Dict[str, Dict[int, str]]:
    """Live processes of units on this lab's hosts: unit -> {pid: host} (the hosts share
    this machine's kernel; another lab's processes are left out by network namespace)."""
    ours = {netns_inode(h): h.name for h in ha.lab.hosts()}
    found: Dict[str, Dict[int, str]] = {}
    for unit, pids in agentkit.unit_processes().items():
        for pid in pids:
            host = ours.get(pid_netns_inode(pid) or 0)
            if host is not None:
                found.setdefault(unit, {})[pid] = host
    return found


def placed(client: Client) -> Dict[str, str]:
    """unit -> machine of every unit running there on its current content."""
    return {u["unit"]: u["machine"] for u in client.get("/v1/units")["units"]
            if u["state"] == "running" and u["current"]}


class Storm:
    """SUBMITS submits, all released at once, each its own Client; submit i's endpoint
    list starts at fleetd (i mod 3) + 1."""

    def __init__(self, endpoints: List[str]) -> None:
        self.endpoints = endpoints
        self.acked: Set[int] = set()
        self.failed: Dict[int, str] = {}
        self.lock = threading.Lock()
        self.enough = threading.Event()
        self.go = threading.Barrier(SUBMITS + 1)
        self.threads = [threading.Thread(target=self.submit, args=(i,), daemon=True)
                        for i in range(SUBMITS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.go.wait()

    def submit(self, i: int) -> None:
        k = i % len(self.endpoints)
        client = Client(",".join(self.endpoints[k:] + self.endpoints[:k]))
        name = name_of(i)
        body = {"desired": desired_of(i),
                "units": [{"name": name, "text": text_of(name), "source": name}]}
        self.go.wait()
        try:
            reply = client.post("/v1/units", body, timeout=60)
        except ApiError as exc:
            with self.lock:
                self.failed[i] = f"{exc.status}: {exc}"
            return
        with self.lock:
            assert [u["name"] for u in reply["units"]] == [name], reply
            self.acked.add(i)
            if len(self.acked) >= KILL_AFTER:
                self.enough.set()

    def join(self) -> None:
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a submit never returned"


def etcd_unit_keys(ha: HaLab) -> List[str]:
    got = ha.etcdctl("get", "--prefix", "/fleetd/units/", "--keys-only")
    assert got.returncode == 0, got.stderr
    return [k for k in got.stdout.splitlines() if k]


def test_kill9_of_the_leader_during_500_submits_over_three_fleetd_keeps_each_ack_once(
        tmp_path) -> None:
    with ha_lab(str(tmp_path), hosts=3, etcd=3, fleetd=3, prefix=PREFIX, subnet=SUBNET) as ha:
        leader = ha.wait_leader()
        storm = Storm(ha.endpoints)
        storm.start()
        assert storm.enough.wait(60), f"not {KILL_AFTER} acks in 60s: {storm.failed}"
        ha.kill_fleetd(leader)
        killed = time.monotonic()
        storm.join()
        joined = time.monotonic()
        acked = sorted(storm.acked)
        assert len(acked) + len(storm.failed) == SUBMITS
        successor = ha.wait_leader(timeout=60, besides=[leader])
        print(f"\n{leader} killed after {KILL_AFTER} acks; {len(acked)} of {SUBMITS} "
              f"acknowledged, {len(storm.failed)} refused; the rest returned "
              f"{joined - killed:.1f}s after the kill; {successor} leads")
        if storm.failed:
            print("refusals, e.g.:", sorted(storm.failed.items())[:3])
        ha.start_fleetd(leader)

        # every fleetd (the killed one back as a follower) lists each ack exactly once
        wanted = {name_of(i) for i in acked}
        for name in ("fleetd-1", "fleetd-2", "fleetd-3"):
            client = ha.api(name)

            def listed(c: Client = client) -> bool:
                files = [f["unit"] for f in c.get("/v1/unit-files")["unit_files"]]
                return wanted <= set(files)
            wait_for(f"{name} to list every acknowledged unit", listed, 30)
            files = [f["unit"] for f in client.get("/v1/unit-files")["unit_files"]]
            assert len(files) == len(set(files)), f"{name} lists a unit twice"
            rows = [(u["unit"], u.get("machine")) for u in client.get("/v1/units")["units"]]
            assert len(rows) == len(set(rows)), f"{name}'s list-units has a row twice"
        listing = ha.ctl("list-unit-files", "--no-legend").stdout.split("\n")
        names = [ln.split()[0] for ln in listing if ln.strip()]
        assert len(names) == len(set(names))
        assert {name_of(i) for i in acked} <= set(names)

        # etcd holds each acknowledged unit under one key, and no unit nobody submitted
        keys = etcd_unit_keys(ha)
        assert len(keys) == len(set(keys))
        stored = {k.rsplit("/", 1)[1] for k in keys}
        missing = {name_of(i) for i in acked} - stored
        assert not missing, f"acknowledged but not in etcd: {sorted(missing)[:10]}"
        assert stored <= {name_of(i) for i in range(SUBMITS)}, stored
        print(f"etcd: {len(stored)} unit keys ({len(stored) - len(acked)} of "
              f"{len(storm.failed)} refused submits landed)")

        # each as acknowledged: its own text and hash, the desired state it asked for
        api = ha.api()
        for i in acked:
            u = api.get(f"/v1/units/{name_of(i)}")
            text = text_of(name_of(i))
            assert (u["text"], u["hash"], u["desired"]) == (
                text, content_hash(text), desired_of(i)), name_of(i)

        # the few submitted to run run exactly once, on the lab's hosts
        run = sorted(name_of(i) for i in acked if desired_of(i) == "launched")
        wait_for(f"{len(run)} launched units running", lambda: set(run) <= set(placed(api)), 60)
        now = programs(ha)
        assert {n: len(now.get(n, {})) for n in run} == {n: 1 for n in run}
        idle = [n for n in now if n.startswith("storm-") and n not in run]
        launched_unacked = {name_of(i) for i in storm.failed if desired_of(i) == "launched"}
        assert set(idle) <= launched_unacked, f"running but not launched: {idle}"


def test_a_machine_lost_while_no_fleetd_ran_is_handled_by_the_next_leader(tmp_path) -> None:
    with ha_lab(str(tmp_path), hosts=3, etcd=3, fleetd=3, prefix=PREFIX, subnet=SUBNET) as ha:
        names = [f"orphan-{i}.service" for i in range(6)]
        for name in names:
            (tmp_path / name).write_text("[Service]\nExecStart=/bin/sleep 100000\n")
        ha.ctl("start", *(str(tmp_path / n) for n in names))
        api = ha.api()
        before = wait_for("all six running", lambda: (lambda p: p if set(p) == set(names)
                                                      else None)(placed(api)), 30)
        victim = before[names[0]]
        moved = [n for n in names if before[n] == victim]
        at_start = programs(ha)
        stale = {pid for n in moved for pid in at_start.get(n, {})}
        assert len(stale) == len(moved)
        kept = {n: at_start.get(n) for n in names if n not in moved}

        leader = ha.wait_leader()
        ha.kill_fleetd(leader)
        others = [n for n in ("fleetd-1", "fleetd-2", "fleetd-3") if n != leader]
        for name in others:
            ha.stop_fleetd(name)
        assert ha.leaders() == []
        host = next(h for h in ha.lab.hosts() if h.name == victim)
        link = f"{host.netns}-br"
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        try:
            first = others[0]
            ha.start_fleetd(first)
            assert ha.wait_leader(timeout=60) == first
            client = ha.api(first)

            def state(m: str) -> Optional[str]:
                return {x["name"]: x["state"] for x in
                        client.get("/v1/machines")["machines"]}.get(m)
            wait_for(f"{victim} lost", lambda: state(victim) == "lost", 60)
            wait_for("its units running elsewhere", lambda: all(
                placed(client).get(n) not in (None, victim) for n in moved), 60)
            now = programs(ha)
            # the machines that were there all along are not taken for lost (their last
            # word in etcd is older than the TTL): their units did not move or restart
            assert {n: now.get(n) for n in kept} == kept
            for n in moved:  # the new copy on another host; the cut-off one runs on
                hosts = sorted(now.get(n, {}).values())
                assert victim in hosts and len(hosts) == 2, (n, hosts)
            reasons = {f["unit"]: f["reason"] for f in
                       client.get("/v1/unit-files")["unit_files"]}
            assert f"machine {victim} was lost" in reasons[moved[0]], reasons[moved[0]]
        finally:
            subprocess.run(["ip", "link", "set", link, "up"], check=True)

        wait_for(f"{victim} up again", lambda: state(victim) == "up", 60)
        wait_for("stale copies stopped", lambda: not any(alive(p) for p in stale), 30)
        final: Dict[str, Tuple[str, ...]] = {
            n: tuple(programs(ha).get(n, {}).values()) for n in names}
        assert all(len(hosts) == 1 for hosts in final.values()), final
        assert set(placed(client)) == set(names)
