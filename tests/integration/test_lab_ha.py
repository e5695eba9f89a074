"""The lab's etcd cluster and fleetd servers (issue 12): ``fleetctl lab up --etcd E
--fleetd M``, each member and each fleetd in a network namespace of its own, kill -9 and
start again, cuts, ``lab status``, and ``lab down`` leaving nothing.

Prefix ``fh`` on 10.79.0.0/24: apart from the session lab (``ft``/10.78.x) and the demo's.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import subprocess
from typing import Dict, Iterator, List

import pytest
from click.testing import CliRunner
from labkit import (
    FLEETCTL,
    ROOT,
    alive,
    fleetd_takes_etcd,
    ha_lab,
    ha_leftovers,
    lab_slot,
    pid_netns_inode,
    wait_for,
)
from netprobe import HELD, LISTENER, PUSHER, nsenter, reach

from fleetd import procfs
from fleetd.cli.main import cli
from fleetd.client import ApiError, Client
from fleetd.endpoints import TlsFiles
from fleetd.lab import etcd as lab_etcd
from fleetd.lab.netns import Host, Lab

pytestmark = pytest.mark.etcd
PREFIX, SUBNET = "fh", "10.79.0"


@pytest.fixture
def fh_slot() -> Iterator[None]:
    """The ``fh`` lab is this test's alone (ha_lab takes the slot itself)."""
    with lab_slot(PREFIX):
        yield


def fleetctl(*args: str, env: Dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=180)


def lab_env(lab_dir: str) -> Dict[str, str]:
    return dict(os.environ, FLEET_LAB_DIR=lab_dir)


def etcdctl(endpoints: List[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["etcdctl", "--endpoints", ",".join(endpoints),
                           "--dial-timeout", "3s", "--command-timeout", "5s", *args],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, ETCDCTL_API="3"))


def netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def dev_null() -> tuple:
    st = os.stat("/dev/null")
    return st.st_mode, st.st_uid, st.st_gid, st.st_rdev


def machine_id(h: Host) -> str:
    with open(os.path.join(h.state_dir, "machine-id")) as f:
        return f.read().strip()


def rows(status: str, first: str) -> Dict[str, List[str]]:
    """The rows of the ``lab status`` table whose header starts with ``first``, by name."""
    lines = status.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(first))
    found = {}
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        found[ln.split()[0]] = ln.split()
    return found


def test_lab_up_etcd_three_members_in_namespaces_a_killed_one_rejoins_down_leaves_nothing(
        tmp_path, fh_slot) -> None:
    lab_dir = str(tmp_path / "lab")
    env = lab_env(lab_dir)
    null_before = dev_null()
    up = fleetctl("lab", "up", "--hosts", "1", "--etcd", "3", "--no-fleetd",
                  "--prefix", PREFIX, "--subnet", SUBNET, env=env)
    the_lab = Lab(lab_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        endpoints = [f"{SUBNET}.{k}:2379" for k in (201, 202, 203)]
        assert f"etcd: 3 members at {', '.join(endpoints)}" in up.stdout
        # each member is etcd in a namespace of its own, at its own address
        for k in (1, 2, 3):
            pid = the_lab.etcd.pid(f"e{k}")
            assert pid is not None and procfs.comm(pid) == "etcd"
            assert pid_netns_inode(pid) == netns_inode(f"{PREFIX}-e{k}")
        health = etcdctl(endpoints, "endpoint", "health")
        assert health.returncode == 0 and health.stderr.count("is healthy") == 3, health
        members = etcdctl(endpoints, "member", "list").stdout
        assert sorted(ln.split(", ")[2] for ln in members.splitlines()) == ["e1", "e2", "e3"]
        assert etcdctl(endpoints[:1], "put", "/lab/a", "1").returncode == 0
        assert etcdctl(endpoints[2:], "get", "/lab/a", "--print-value-only").stdout == "1\n"

        status = fleetctl("lab", "status", env=env).stdout
        assert {n: r[4] for n, r in rows(status, "ETCD").items()} == {
            "e1": "up", "e2": "up", "e3": "up"}

        # kill -9 one member from this process (not the one that started it): the other
        # two keep the quorum and take writes; the status says it is down
        killed = the_lab.etcd.pid("e2")
        the_lab.etcd.kill("e2")
        assert killed is not None and not alive(killed)
        assert rows(fleetctl("lab", "status", env=env).stdout, "ETCD")["e2"][3:] == [
            "-", "down"]
        assert etcdctl([endpoints[0]], "put", "/lab/b", "2").returncode == 0
        # started again, it rejoins with its data and catches up on what it missed
        the_lab.etcd.start("e2")
        the_lab.etcd.wait_healthy(["e2"])
        caught_up = wait_for("e2 to have /lab/b", lambda: etcdctl(
            [endpoints[1]], "get", "/lab/b", "--consistency=s", "--print-value-only"
        ).stdout == "2\n", 30)
        assert caught_up
        health = etcdctl(endpoints, "endpoint", "health")
        assert health.returncode == 0 and health.stderr.count("is healthy") == 3, health
        pids = [the_lab.etcd.pid(f"e{k}") for k in (1, 2, 3)]
    finally:
        down = fleetctl("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(p is not None and alive(p) for p in pids)
    assert ha_leftovers(the_lab) == []
    assert not os.path.exists(os.path.join(lab_dir, "lab.json"))
    assert dev_null() == null_before
    the_lab.down()  # reaps the member this process started (a zombie is not alive)


def test_lab_up_fleetd_servers_in_namespaces_sockets_token_status_restart_and_down(
        tmp_path, fh_slot) -> None:
    """Several fleetd, each on its own SQLite (no --etcd): the plumbing of servers."""
    lab_dir = str(tmp_path / "lab")
    env = lab_env(lab_dir)
    up = fleetctl("lab", "up", "--hosts", "2", "--fleetd", "2", "--prefix", PREFIX,
                  "--subnet", SUBNET, env=env)
    the_lab = Lab(lab_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        sockets = [f"/run/fleetd/{PREFIX}-fleetd-1.sock", f"/run/fleetd/{PREFIX}-fleetd-2.sock"]
        endpoint = ",".join(f"unix://{s}" for s in sockets)
        assert f"fleetctl --endpoint {endpoint}" in up.stdout
        assert "all up" in up.stdout
        for k, sock in enumerate(sockets, 1):
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            pid = the_lab.servers.pid(f"fleetd-{k}")
            assert pid is not None and pid_netns_inode(pid) == netns_inode(f"{PREFIX}-f{k}")
        token_file = os.path.join(lab_dir, "servers", "token")
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        machines = fleetctl("--endpoint", endpoint, "list-machines", env=env).stdout
        assert [ln.split()[:3] for ln in machines.splitlines()[1:]] == [
            ["h1", f"{SUBNET}.11", "up"], ["h2", f"{SUBNET}.12", "up"]]
        # TLS on the namespace address, with the lab's CA and token only
        tcp = f"https://{SUBNET}.211:7070"
        ca = TlsFiles(os.path.join(lab_dir, "servers", "ca.pem"))
        with open(token_file) as f:
            token = f.read().strip()
        assert Client(tcp, token=token, tls=ca).get("/v1/health")["ok"] is True
        with pytest.raises(ApiError) as refused:
            Client(tcp, token="x" * 32, tls=ca).get("/v1/health")
        assert refused.value.status == 401

        status = fleetctl("lab", "status", env=env).stdout
        servers = rows(status, "FLEETD")
        assert {n: r[1:4] for n, r in servers.items()} == {
            "fleetd-1": [f"{SUBNET}.211", sockets[0], str(the_lab.servers.pid("fleetd-1"))],
            "fleetd-2": [f"{SUBNET}.212", sockets[1], str(the_lab.servers.pid("fleetd-2"))]}
        assert f"fleetctl --endpoint {endpoint}" in status

        # kill -9 fleetd-1: the endpoint list still answers (fleetd-2); status says down;
        # started again with its configuration it answers on the same socket
        first = the_lab.servers.pid("fleetd-1")
        the_lab.servers.kill("fleetd-1")
        assert first is not None and not alive(first)
        assert fleetctl("--endpoint", endpoint, "list-machines", env=env).returncode == 0
        assert rows(fleetctl("lab", "status", env=env).stdout, "FLEETD")["fleetd-1"][3:] == [
            "-", "down"]
        the_lab.servers.start("fleetd-1")
        assert Client(f"unix://{sockets[0]}").get("/v1/health")["pid"] == \
            the_lab.servers.pid("fleetd-1")
        pids = [the_lab.servers.pid("fleetd-1"), the_lab.servers.pid("fleetd-2")]
        start = fleetctl("--endpoint", endpoint, "start",
                         os.path.join(ROOT, "units", "hello.service"), env=env)
        assert start.returncode == 0, start.stdout + start.stderr
        agent_cgroups = [d for h in the_lab.hosts()
                         for d in glob.glob(f"/sys/fs/cgroup/*/fleet/{machine_id(h)}")]
        assert agent_cgroups  # the agents made theirs (a plain host shares the kernel)
    finally:
        down = fleetctl("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(p is not None and alive(p) for p in pids)
    assert ha_leftovers(the_lab) == []
    assert [d for d in agent_cgroups if os.path.exists(d)] == []
    the_lab.down()  # reaps the fleetd this process started


def test_cut_parts_a_fleetd_from_etcd_only_cut_all_from_everything_heal_undoes(
        tmp_path) -> None:
    with ha_lab(str(tmp_path), hosts=1, etcd=3, fleetd=2, shared=False) as ha:
        etcd = ha.etcd_endpoints
        host = f"{SUBNET}.11:22"
        f1, f2 = ha.netns_of("fleetd-1"), ha.netns_of("fleetd-2")
        assert reach(f1, *etcd, host) == ["ok"] * 4
        # a connection opened before the cut goes silent with it
        held = nsenter(f1, HELD, etcd[0].split(":")[0], pipes=True)
        assert held.stdout is not None and held.stdin is not None
        assert held.stdout.readline().strip() == "connected"

        # and nothing a member sends reaches it any more: the cut is both ways
        listener = nsenter(f1, LISTENER, pipes=True)
        pusher = nsenter(ha.netns_of("e1"), PUSHER, f"{SUBNET}.211")
        try:
            assert listener.stdout is not None and listener.stdin is not None
            assert listener.stdout.readline().strip() == "flowing"

            ha.cut("fleetd-1")
            held.stdin.write("go\n")
            held.stdin.flush()
            listener.stdin.write("go\n")
            listener.stdin.flush()
            assert held.stdout.readline().strip() == "silent"
            assert listener.stdout.readline().strip() == "silent"
            held.wait(10)
            listener.wait(10)
        finally:
            pusher.kill()
            pusher.wait()
        assert reach(f1, *etcd, host) == ["silent"] * 3 + ["ok"]  # etcd only
        assert reach(f2, *etcd) == ["ok"] * 3  # the other fleetd is not cut
        # nor do the members reach its API
        assert reach(ha.netns_of("e1"), f"{SUBNET}.211:7070") == ["silent"]
        status = rows(subprocess.run([FLEETCTL, "lab", "status"], capture_output=True,
                                     text=True, env=lab_env(ha.lab.dir)).stdout, "FLEETD")
        assert " ".join(status["fleetd-1"][5:]) == "(cut off from etcd)"  # after its role
        assert status["fleetd-2"][5:] == []

        ha.heal("fleetd-1")
        assert reach(f1, *etcd, host) == ["ok"] * 4
        assert reach(ha.netns_of("e1"), f"{SUBNET}.211:7070") == ["ok"]

        ha.cut_all("fleetd-1")  # a pulled cable: no answer, or no route once ARP gives up
        assert "ok" not in reach(f1, etcd[0], host, f"{SUBNET}.212:7070")
        assert Client(ha.endpoints[0]).get("/v1/health")["ok"] is True  # its socket answers
        ha.heal("fleetd-1")
        assert reach(f1, etcd[0], host, f"{SUBNET}.212:7070") == ["ok"] * 3


def test_lab_up_three_fleetd_on_the_lab_etcd_one_leads_a_killed_leader_is_replaced(
        tmp_path, fh_slot) -> None:
    if not fleetd_takes_etcd():
        pytest.skip("fleetd does not take registry = \"etcd://...\" yet (issue 12's daemon "
                    "side, 'daemon: fleetd on etcd')")
    lab_dir = str(tmp_path / "lab")
    env = lab_env(lab_dir)
    up = fleetctl("lab", "up", "--hosts", "2", "--etcd", "3", "--fleetd", "3",
                  "--prefix", PREFIX, "--subnet", SUBNET, env=env)
    the_lab = Lab(lab_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all up" in up.stdout and "on etcd" in up.stdout
        endpoint = the_lab.servers.endpoint
        machines = fleetctl("--endpoint", endpoint, "list-machines", env=env).stdout
        assert [ln.split()[:3] for ln in machines.splitlines()[1:]] == [
            ["h1", f"{SUBNET}.11", "up"], ["h2", f"{SUBNET}.12", "up"]]
        # the machines live in etcd, under the configured prefix: every fleetd sees them
        keys = etcdctl(the_lab.etcd.endpoints, "get", "--prefix", "/fleetd/", "--keys-only")
        assert keys.returncode == 0 and keys.stdout.strip(), keys
        for s in the_lab.servers.servers():
            names = {m["name"] for m in Client(s.endpoint).get("/v1/machines")["machines"]}
            assert names == {"h1", "h2"}, s.name

        def one_leader() -> str:
            roles = {s.name: the_lab.servers.role(s.name) for s in the_lab.servers.servers()}
            leaders = [n for n, r in roles.items() if r == "leader"]
            return leaders[0] if len(leaders) == 1 and list(roles.values()).count(
                "follower") == len(roles) - 1 else ""

        leader = wait_for("one leader and the rest followers", one_leader, 30)
        status = rows(fleetctl("lab", "status", env=env).stdout, "FLEETD")
        assert status[leader][4] == "leader"
        the_lab.servers.kill(leader)
        successor = wait_for("another fleetd to lead", lambda: next(
            (n for n in the_lab.servers.leaders() if n != leader), ""), 60)
        the_lab.servers.start(leader)
        wait_for("the old leader back as a follower",
                 lambda: the_lab.servers.role(leader) == "follower", 30)
        assert the_lab.servers.leaders() == [successor]
    finally:
        down = fleetctl("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert ha_leftovers(the_lab) == []
    the_lab.down()


def test_a_leader_cut_off_from_etcd_is_replaced_and_heals_as_a_follower(tmp_path) -> None:
    """The lab's cut in the setting it is for: the leader loses etcd but not its hosts."""
    if not fleetd_takes_etcd():
        pytest.skip("fleetd does not take registry = \"etcd://...\" yet (issue 12's daemon "
                    "side, 'daemon: fleetd on etcd')")
    with ha_lab(str(tmp_path), hosts=1, etcd=3, fleetd=2) as ha:
        leader = ha.wait_leader()
        ha.cut(leader)
        successor = ha.wait_leader(timeout=60, besides=[leader])
        wait_for("the cut leader to stop saying it leads", lambda: ha.role(leader) != "leader",
                 60)
        ha.heal(leader)
        wait_for("the healed one to follow", lambda: ha.role(leader) == "follower", 60)
        assert ha.leaders() == [successor]


def test_lab_up_refuses_more_than_nine_members_or_servers_naming_the_option(
        tmp_path, fh_slot) -> None:
    env = lab_env(str(tmp_path / "lab"))
    for option in ("--etcd", "--fleetd"):
        out = fleetctl("lab", "up", "--hosts", "1", option, "10", "--prefix", PREFIX,
                       "--subnet", SUBNET, env=env)
        assert out.returncode != 0
        assert f"{option} 10: want 0 to 9" in out.stderr
        assert "Traceback" not in out.stderr
    out = fleetctl("lab", "up", "--hosts", "191", "--etcd", "3", "--prefix", PREFIX,
                   "--subnet", SUBNET, env=env)
    assert out.returncode != 0
    assert "--hosts 191 with --etcd or --fleetd: want at most 190" in out.stderr
    assert ha_leftovers(Lab(str(tmp_path / "lab"), PREFIX, SUBNET)) == []


def test_lab_up_without_etcd_installed_says_what_to_install_and_makes_nothing(
        tmp_path, fh_slot, monkeypatch) -> None:
    monkeypatch.setattr(lab_etcd, "ETCD", str(tmp_path / "no-etcd-here"))
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", "1", "--etcd", "3",
                                      "--prefix", PREFIX, "--subnet", SUBNET,
                                      "--lab-dir", str(tmp_path / "lab")])
    assert result.exit_code != 0
    assert "no-etcd-here not found: install etcd-server" in result.output
    assert ha_leftovers(Lab(str(tmp_path / "lab"), PREFIX, SUBNET)) == []
    assert not os.path.exists(tmp_path / "lab" / "lab.json")


def test_lab_up_with_etcd_members_that_die_fails_naming_one_and_makes_nothing(
        tmp_path, fh_slot, monkeypatch) -> None:
    monkeypatch.setattr(lab_etcd, "ETCD", "/bin/false")  # installed, but exits at once
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", "1", "--etcd", "3",
                                      "--prefix", PREFIX, "--subnet", SUBNET,
                                      "--lab-dir", str(tmp_path / "lab")])
    assert result.exit_code != 0
    assert re.search(r"etcd member (e[123]) is not running; see \S+/etcd/\1\.log",
                     result.output), result.output
    assert "Traceback" not in result.output
    assert ha_leftovers(Lab(str(tmp_path / "lab"), PREFIX, SUBNET)) == []
