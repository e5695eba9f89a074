"""Issue 2's acceptance, each in the real 3-host lab: fleetctl -> fleetd -> SSH -> agent."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import List

import pytest
from labkit import (
    ROOT,
    Fleet,
    alive,
    cmdline,
    netns_inode,
    pid_netns_inode,
    wait_for,
)

from fleetd.client import ApiError

HELLO = os.path.join(ROOT, "units", "hello.service")


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def start_hello(fleet: Fleet) -> dict:
    out = fleet.ctl("start", "--timeout", "2", HELLO)
    assert "hello.service running on" in out.stdout
    row = fleet.unit("hello.service")
    assert row is not None and row["state"] == "running", row
    return row


def test_start_runs_the_program_in_one_hosts_namespace(cluster: Fleet) -> None:
    row = start_hello(cluster)
    pid, machine = row["pid"], row["machine"]
    host = cluster.host(machine)
    assert pid_netns_inode(pid) == netns_inode(host), "the program is not in its host's netns"
    assert cmdline(pid).startswith("/bin/sh -c while true; do echo")
    # exactly one copy, on exactly one host
    copies = [h.name for h in cluster.lab.hosts()
              for p in cluster.lab.pids(h) if "GREETING" in cmdline(p)]
    assert copies == [machine]
    listing = cluster.ctl("list-units").stdout
    assert any(line.split()[:4] == ["hello.service", machine, "running", str(pid)]
               for line in listing.splitlines()), listing
    # its stdout went to the unit's log on that host, with that host's hostname
    log = os.path.join(host.state_dir, "logs", "hello.service.log")
    wait_for("the greeting in the log", lambda: os.path.exists(log) and
             f"hello from {machine}" in read(log))


def test_stop_ends_the_process_and_destroy_forgets_the_unit(cluster: Fleet) -> None:
    pid = start_hello(cluster)["pid"]
    cluster.ctl("stop", "hello.service")
    assert not alive(pid)
    assert cluster.unit("hello.service")["state"] == "stopped"
    assert "hello.service" in cluster.ctl("list-unit-files").stdout

    cluster.ctl("destroy", "hello.service")
    assert "hello.service" not in cluster.ctl("list-unit-files").stdout
    assert "hello.service" not in cluster.ctl("list-units").stdout
    assert cluster.unit_files() == []


def test_fleetd_killed_and_restarted_restarts_nothing(cluster: Fleet) -> None:
    row = start_hello(cluster)
    pid, started = row["pid"], row["started_at"]
    cluster.kill9()
    assert alive(pid), "killing fleetd killed the program"
    cluster.start()
    after = wait_for("the restarted fleetd to learn the unit runs", lambda: (
        (u := cluster.unit("hello.service")) and u["state"] == "running" and u["current"] and u
    ))
    assert after["pid"] == pid and after["started_at"] == started
    assert alive(pid)


def _session_sshd_children(fleet: Fleet, machine: str) -> List[int]:
    host = fleet.host(machine)
    listener = fleet.lab.sshd_pid(host)
    return [p for p in fleet.lab.pids(host)
            if p != listener and cmdline(p).startswith("sshd:")]


def test_cut_ssh_connection_reconnects_by_itself(cluster: Fleet) -> None:
    row = start_hello(cluster)
    pid, machine = row["pid"], row["machine"]
    before = _session_sshd_children(cluster, machine)
    assert before, "no sshd serving fleetd's session?"
    for p in before:
        os.kill(p, signal.SIGKILL)
    # fleetd notices the cut, and comes back through a new sshd child, unasked
    wait_for("a new SSH session", lambda: (
        (now := _session_sshd_children(cluster, machine)) and not set(now) & set(before)
    ))
    wait_for(f"{machine} up again", lambda: cluster.machines()[machine]["state"] == "up")
    assert "connection to the agent closed" in cluster.dump()
    u = cluster.unit("hello.service")
    assert u["state"] == "running" and u["pid"] == pid and alive(pid)
    # and the session works: a stop goes through it
    cluster.ctl("stop", "hello.service")
    assert not alive(pid)


def test_host_key_mismatch_stops_before_anything_runs(fleet: Fleet, tmp_path) -> None:
    host = fleet.host("h3")
    wrong_key = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)],
                   check=True)
    algo, blob = wrong_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{host.address} {algo} {blob}\n")
    sshd_log = os.path.join(host.dir, "sshd.log")
    log_before = os.path.getsize(sshd_log)

    out = fleet.add(host, known_hosts=str(known_hosts), check=False)
    assert out.returncode != 0
    assert "host key mismatch" in out.stderr and host.address in out.stderr, out.stderr
    assert "SHA256:" in out.stderr  # the key the host offered, to compare by hand
    m = fleet.machines()["h3"]
    assert m["state"] == "error" and "host key mismatch" in m["error"]
    assert "host key mismatch" in fleet.ctl("list-machines").stdout

    # nothing ran there: no agent, no state, no login
    assert fleet.lab.agent_pid(host) is None
    assert os.listdir(host.state_dir) == []
    assert not [p for p in fleet.lab.pids(host) if "fleetd.agent" in cmdline(p)]
    with open(sshd_log, errors="replace") as f:
        f.seek(log_before)
        assert "Accepted" not in f.read()


BAD = """\
[Unit]
Description=broken on purpose

[Service]
ExecStart=/bin/echo "unterminated
"""


def test_malformed_unit_is_refused_with_file_line_and_nothing_stored(
    cluster: Fleet, tmp_path
) -> None:
    good = tmp_path / "good.service"
    good.write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    bad = tmp_path / "bad.service"
    bad.write_text(BAD)
    cluster.ctl("start", HELLO)
    before = cluster.unit_files()

    out = cluster.ctl("start", str(good), str(bad), check=False)
    assert out.returncode != 0
    assert f"{bad}:5: ExecStart=: unbalanced quote" in out.stderr, out.stderr
    assert cluster.unit_files() == before

    # the API refuses on its own too (a client that skips fleetctl's check)
    with pytest.raises(ApiError) as refused:
        cluster.api.post("/v1/units", {"units": [
            {"name": "good.service", "text": good.read_text(), "source": "good.service"},
            {"name": "bad.service", "text": BAD, "source": "bad.service"},
        ]})
    assert refused.value.status == 400
    assert str(refused.value).startswith("bad.service:5: ExecStart=")
    assert cluster.unit_files() == before


def test_api_socket_is_private(fleet: Fleet) -> None:
    assert os.stat(fleet.socket).st_mode & 0o777 == 0o600
