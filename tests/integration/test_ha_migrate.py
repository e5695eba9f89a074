"""Issue 12's acceptance of ``fleetd migrate``: a running single fleetd on SQLite, with
units on 3 lab hosts, is stopped, its registry migrated into the lab's etcd cluster, and
3 fleetd started on etcd: the same units run on the same hosts with the same pids (read
on the hosts, from /proc), and the agents take the new leader's desired sets although
the SQLite fleetd's epoch was above anything etcd's revision would have reached alone
(its ``fleetd.epoch`` starts at 400, as after many restarts).

Prefix ``fd`` on 10.84.0.0/24: apart from the other HA tests' labs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from labkit import Fleet, cmdline, fleetd_takes_etcd, ha_lab, wait_for

from fleetd.lab.servers import ETCD_PREFIX

pytestmark = [pytest.mark.lab, pytest.mark.etcd]
PREFIX, SUBNET = "fd", "10.84.0"
OLD_EPOCH = 400  # the SQLite fleetd's term count before this test's start
SLEEP = "[Service]\nExecStart=/bin/sleep 100000\n"


def pinned(host: str) -> str:
    return f"{SLEEP}[X-Fleet]\nMachineMetadata=hostname={host}\n"


def programs(fleet: Fleet) -> Dict[str, List[int]]:
    """unit -> pids of its ``sleep`` on this lab's hosts (not a prepared shell)."""
    found = {unit: sorted(p for p in pids if cmdline(p).startswith("/bin/sleep "))
             for unit, pids in fleet.programs().items()}
    return {unit: pids for unit, pids in found.items() if pids}


def test_a_sqlite_fleetd_moves_to_etcd_and_nothing_restarts(tmp_path: Path) -> None:
    if not fleetd_takes_etcd():
        pytest.skip("this fleetd does not take registry = etcd://")
    with ha_lab(str(tmp_path), hosts=3, etcd=3, fleetd=0, prefix=PREFIX,
                subnet=SUBNET) as ha:
        lab = ha.lab
        hosts = [h for h in lab.hosts() if not h.systemd]
        fleet = Fleet(lab, str(tmp_path / "single"))
        os.makedirs(fleet.state_dir, mode=0o700)
        with open(os.path.join(fleet.state_dir, "fleetd.epoch"), "w") as f:
            f.write(f"{OLD_EPOCH}\n")
        names = [f"mig-{h.name}.service" for h in hosts]
        for name, h in zip(names, hosts):
            (tmp_path / name).write_text(pinned(h.name))
        fleet.start()
        try:
            for h in hosts:
                fleet.add(h)
            fleet.ctl("start", *(str(tmp_path / n) for n in names))
            wait_for("the units running on SQLite",
                     lambda: set(fleet.placed()) == set(names), 60)
            placed = fleet.placed()
            before = wait_for("one sleep per unit",
                              lambda: (lambda p: p if set(p) == set(names) and all(
                                  len(v) == 1 for v in p.values()) else None)(
                                  programs(fleet)), 30)
            seen_epoch = fleet.api.get("/v1/health")["epoch"]
            assert seen_epoch == OLD_EPOCH + 1
        finally:
            fleet.stop()

        out = subprocess.run([sys.executable, "-m", "fleetd.daemon", "migrate",
                              "--from", fleet.state_dir, "--to", lab.etcd.registry,
                              "--prefix", ETCD_PREFIX],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"copied {len(names)} units" in out.stdout

        lab.servers.up(3, lab.etcd.registry)
        leader = ha.wait_leader()
        health = ha.api(leader).get("/v1/health")
        assert health["epoch"] > seen_epoch  # else the agents refuse the new leader

        def same_units() -> bool:
            rows = {u["unit"]: u for u in ha.api().get("/v1/units")["units"]
                    if u["state"] == "running" and u["current"]}
            return set(rows) == set(names) and all(
                rows[n]["machine"] == placed[n] and rows[n]["pid"] == before[n][0]
                for n in names)

        wait_for("the fleetd on etcd to show the same units, hosts and pids", same_units, 60)
        servers = json.loads(ha.ctl("list-servers", "-o", "json").stdout)
        fleetd = {r["name"]: r for r in servers if r["kind"] == "fleetd"}
        assert sorted(fleetd) == ["fleetd-1", "fleetd-2", "fleetd-3"]
        assert [n for n, r in fleetd.items() if r["leader"]] == [leader]
        assert fleetd[leader]["epoch"] == health["epoch"]
        members = [r for r in servers if r["kind"] == "etcd"]
        assert len(members) == 3 and all(r["healthy"] for r in members)
        assert programs(fleet) == before  # on the hosts: same pids, nothing restarted

        # the agents take the new leader's desired sets: a new unit starts
        (tmp_path / "after.service").write_text(pinned(hosts[0].name))
        ha.ctl("start", str(tmp_path / "after.service"))
        wait_for("a unit started through the fleetd on etcd",
                 lambda: "after.service" in programs(fleet), 60)
        now = programs(fleet)
        assert {n: now[n] for n in names} == before
        # the SQLite copy is not run again by mistake
        again = subprocess.run([sys.executable, "-m", "fleetd.daemon", "--state-dir",
                                fleet.state_dir, "--socket", str(tmp_path / "x.sock")],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "was migrated to etcd://" in again.stderr, \
            again.stderr
