"""The bootstrap on the lab's real systemd hosts (issue 6): ``fleetctl machine add`` on a
host with only SSH and Python pushes and starts the agent; units run there with limits
enforced; ``fleetctl machine upgrade`` replaces the agent without touching them (same
pids); ``fleetctl machine remove --purge`` leaves no trace. And the hosts that cannot take
the agent: each says what is missing, and keeps nothing.

One lab serves the module (prefix ``fk``, 10.88.0.0/24): h1 and h2 are systemd hosts
with python3-psutil, h3 one without. Each test runs its own fleetd (``Fleet``). The hosts
are reached the way a user would, over SSH with the lab's key and strict host keys.

"No trace" is checked on the host's own root file system: ``find / -xdev`` before the
add and after the purge list the same paths (logs aside), and no cgroup of the agent's,
no process of the agent's and no unit of systemd's remain.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from typing import Any, Dict, Iterator, List, Set

import pytest
from labkit import Fleet, alive, wait_for

from fleetd.bootstrap import bundle
from fleetd.bootstrap.install import install
from fleetd.bootstrap.target import BootstrapError, Target
from fleetd.lab import systemd_host
from fleetd.lab.netns import Host, Lab
from fleetd.transport.ssh import SshTransport

TIMINGS: Dict[str, Any] = {}
PREFIX, STATE = "/opt/fleetd-agent", "/var/lib/fleet-agent"
UNIT_FILE = "/etc/systemd/system/fleet-agent.service"
# a program of the host's that shows TasksMax= at work: it starts up to N threads, says
# how many it could, and waits
THREADS = """\
import sys, threading, time
stop = threading.Event()
started = 0
for _ in range(int(sys.argv[1])):
    try:
        threading.Thread(target=stop.wait, daemon=True).start()
        started += 1
    except RuntimeError:
        break
print("started %d of %s threads" % (started, sys.argv[1]), flush=True)
while True:
    time.sleep(3600)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab's systemd hosts need root (namespaces, mounts, cgroups)")
    try:
        systemd_host.rootfs()  # built once (~40 s), then cached
    except systemd_host.SystemdHostError as exc:
        pytest.fail(f"cannot build the systemd hosts' rootfs: {exc}")
    if not bundle.pick_wheel(bundle.wheelhouse(), "x86_64", ("glibc", "2.36"), (3, 11)):
        pytest.fail(f"no psutil wheel in {bundle.wheelhouse()}: ./run.sh setup fetches them")
    the_lab = Lab(str(tmp_path_factory.mktemp("bootlab")), prefix="fk", subnet="10.88.0")
    the_lab.down()
    try:
        the_lab.up(3, systemd=3, without_psutil=1)
        yield the_lab
    finally:
        the_lab.down()
        print("\nbootstrap timings: " + json.dumps(TIMINGS, indent=1))


@pytest.fixture
def fleet(lab: Lab, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    monkeypatch.delenv(bundle.SUFFIX_VARIABLE, raising=False)
    f = Fleet(lab, str(tmp_path))
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def plain_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One plain lab host (PID 1 not systemd: the agent runs detached). It shares this
    machine's file system but for /root and the agent's state directory, so the agent is
    installed under /root."""
    the_lab = Lab(str(tmp_path_factory.mktemp("plainlab")), prefix="fj", subnet="10.89.0")
    the_lab.down()
    try:
        the_lab.up(1)
        yield the_lab
    finally:
        the_lab.down()


def host(lab: Lab, name: str) -> Host:
    return next(h for h in lab.hosts() if h.name == name)


def ssh(lab: Lab, h: Host, command: str, check: bool = True) -> str:
    out = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", lab.identity, "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={lab.known_hosts}",
         "-o", "ConnectTimeout=5", f"root@{h.address}", command],
        capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        pytest.fail(f"{h.name}: {command}: exit {out.returncode}: {out.stderr}{out.stdout}")
    return out.stdout


def add(fleet: Fleet, h: Host, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fleetctl machine add`` as a user types it: no --agent-command, so fleetd installs."""
    assert fleet.lab is not None
    return fleet.ctl("machine", "add", f"root@{h.address}", "--name", h.name,
                     "--metadata", f"hostname={h.name}", "--identity", fleet.lab.identity,
                     "--known-hosts", fleet.lab.known_hosts, check=check, timeout=300)


def snapshot(lab: Lab, h: Host) -> Set[str]:
    """Every path of the host's root file system, but logs and systemd's own bookkeeping."""
    out = ssh(lab, h, "find / -xdev \\( -path /var/log -o -path /var/lib/systemd "
                      "-o -path '/var/tmp/systemd-private-*' -o -path /var/cache \\) -prune "
                      "-o -print")
    return set(out.splitlines())


def traces(lab: Lab, h: Host) -> List[str]:
    """What the agent could have left outside the root file system: cgroups, processes,
    systemd units."""
    out = ssh(lab, h, "ls -d /sys/fs/cgroup/*/fleet /sys/fs/cgroup/fleet 2>/dev/null; "
                      "pgrep -af fleet-agent | grep -v pgrep; "
                      "systemctl list-units --all --no-legend --plain 'fleet*' 'bt-*'; "
                      "ls /run/systemd/system | grep -e fleet -e bt- ; true")
    return [line for line in out.splitlines() if line.strip()]


def units_for(tmp_path: Any, name: str) -> List[str]:
    """An exec unit and a Driver=systemd unit for the host ``name``, each limited."""
    paths = []
    for unit, driver, tasks, memory in (("bt-exec", "exec", 6, "48M"),
                                        ("bt-sd", "systemd", 4, "40M")):
        path = os.path.join(str(tmp_path), f"{unit}-{name}.service")
        with open(path, "w") as f:
            f.write(f"""[Unit]
Description={driver} unit on {name}, limited
[Service]
ExecStart=/usr/bin/python3 -u /usr/local/bin/bt-threads.py 20
MemoryMax={memory}
TasksMax={tasks}
[X-Fleet]
Driver={driver}
MachineMetadata=hostname={name}
""")
        paths.append(path)
    return paths


def put_program(lab: Lab, h: Host) -> None:
    ssh(lab, h, "cat > /usr/local/bin/bt-threads.py <<'EOF'\n" + THREADS + "EOF\n")


def running(fleet: Fleet, unit: str) -> Dict[str, Any]:
    return wait_for(f"{unit} running", lambda: next(
        (u for u in fleet.units() if u["unit"] == unit and u["state"] == "running"
         and u["pid"]), None), 20)


# --- the acceptance flow -------------------------------------------------------------------
def test_add_run_upgrade_remove(lab: Lab, fleet: Fleet, tmp_path: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    h = host(lab, "h1")
    put_program(lab, h)
    before = snapshot(lab, h)
    assert traces(lab, h) == []

    # add: the agent is installed and runs as a systemd service
    began = time.monotonic()
    out = add(fleet, h)
    TIMINGS["add (fresh host, CLI round trip)"] = round(time.monotonic() - began, 3)
    assert re.search(r"Machine h1: agent installed 0\.1\.0-[0-9a-f]{12}, running as a systemd "
                     r"service, in \d+\.\ds \(x86_64, Python 3\.11\.\d+ \(/usr/bin/python3\), "
                     r"cgroups hybrid, psutil host 5\.9\.\d+\)", out.stdout), out.stdout
    assert "Machine h1 up (" in out.stdout
    first = readlink(lab, h)
    assert ssh(lab, h, "systemctl is-enabled fleet-agent; systemctl is-active fleet-agent; "
                       "systemctl show -p KillMode --value fleet-agent").split() == \
        ["enabled", "active", "process"]
    agent = int(ssh(lab, h, "systemctl show -p MainPID --value fleet-agent"))
    assert ssh(lab, h, f"cat {STATE}/agent.pid").strip() == str(agent)
    machine = fleet.machines()["h1"]
    assert machine["state"] == "up"
    assert fleet.api.get("/v1/machines")["machines"][0]["name"] == "h1"

    # an exec unit and a Driver=systemd unit run there, their limits enforced
    exec_file, sd_file = units_for(tmp_path, "h1")
    fleet.ctl("start", exec_file, sd_file, timeout=120)
    ex, sd = running(fleet, "bt-exec-h1.service"), running(fleet, "bt-sd-h1.service")
    assert ex["machine"] == sd["machine"] == "h1"
    sd_pid = int(ssh(lab, h, "systemctl show -p MainPID --value bt-sd-h1.service"))
    assert sd_pid == sd["pid"]
    mid = machine["machine_id"]
    limits = ssh(lab, h, f"cd /sys/fs/cgroup; cat memory/fleet/{mid}/bt-exec-h1.service/"
                         f"memory.limit_in_bytes pids/fleet/{mid}/bt-exec-h1.service/pids.max; "
                         "systemctl show -p MemoryMax -p TasksMax --value bt-sd-h1.service")
    assert limits.split() == [str(48 << 20), "6", str(40 << 20), "4"]
    # usage for both (issue 18): the exec unit's read by the agent from its own cgroup,
    # the systemd unit's from systemd's counters of the cgroup systemd keeps for it
    wait_for("both units' memory in list-units", lambda: all(
        re.search(rf"^{re.escape(unit)} +[0-9.]+[KMG]$", fleet.ctl(
            "list-units", "--no-legend", "--fields", "unit,memory").stdout, re.M)
        for unit in ("bt-exec-h1.service", "bt-sd-h1.service")), 15)
    wait_for("TasksMax= to stop the threads", lambda: (
        "started 5 of 20 threads" in fleet.ctl("journal", "bt-exec-h1.service").stdout
        and "started 3 of 20 threads" in ssh(lab, h, "journalctl -u bt-sd-h1.service "
                                                     "-o cat --no-pager")), 20)
    # the exec unit is not in the agent service's cgroup where systemd tracks (and kills)
    service_procs = ssh(lab, h, "cat /sys/fs/cgroup/unified/system.slice/fleet-agent.service/"
                                "cgroup.procs").split()
    assert service_procs == [str(agent)]

    # upgrade: a new agent version (a new fleetd), the units untouched
    fleet.stop()
    monkeypatch.setenv(bundle.SUFFIX_VARIABLE, "upgrade-test")
    fleet.start()
    wait_for("h1 up under the new fleetd", lambda: fleet.machines()["h1"]["state"] == "up")
    began = time.monotonic()
    out = fleet.ctl("machine", "upgrade", "h1", timeout=300)
    TIMINGS["upgrade (CLI round trip, session back up)"] = round(time.monotonic() - began, 3)
    second = readlink(lab, h)
    assert second != first
    assert f"Machine h1: agent upgraded from {first} to {second}, running as a systemd " \
           "service" in out.stdout, out.stdout
    new_agent = int(ssh(lab, h, "systemctl show -p MainPID --value fleet-agent"))
    assert new_agent != agent
    assert sorted(ssh(lab, h, f"ls {PREFIX}/versions").split()) == sorted([first, second])
    after = {u["unit"]: u["pid"] for u in fleet.units()}
    assert after == {"bt-exec-h1.service": ex["pid"], "bt-sd-h1.service": sd_pid}
    assert int(ssh(lab, h, "systemctl show -p MainPID --value bt-sd-h1.service")) == sd_pid
    assert ssh(lab, h, f"cat /proc/{ex['pid']}/cmdline | tr '\\0' ' '").startswith(
        "/usr/bin/python3 -u /usr/local/bin/bt-threads.py")
    journal = ssh(lab, h, "journalctl -u fleet-agent -o cat --no-pager")
    assert f"bt-exec-h1.service: re-adopted pid {ex['pid']}" in journal
    TIMINGS["pids before/after upgrade"] = {"exec": [ex["pid"], after["bt-exec-h1.service"]],
                                            "systemd": [sd_pid, after["bt-sd-h1.service"]],
                                            "agent": [agent, new_agent]}
    wait_for("h1 up with the new agent", lambda: fleet.machines()["h1"]["state"] == "up")
    again = fleet.ctl("machine", "upgrade", "h1")
    assert f"agent {second} already runs there as a systemd service" in again.stdout

    # remove --purge: units stopped, agent stopped, nothing left
    began = time.monotonic()
    out = fleet.ctl("machine", "remove", "h1", "--purge", timeout=300)
    TIMINGS["remove --purge (units stopped first)"] = round(time.monotonic() - began, 3)
    assert out.stdout.strip() == ("Machine h1 removed; its agent stopped; what fleetd "
                                  "installed there removed"), out.stdout + out.stderr
    assert out.stderr == ""
    assert "h1" not in fleet.machines()
    assert snapshot(lab, h) == before
    assert traces(lab, h) == []


def readlink(lab: Lab, h: Host) -> str:
    return ssh(lab, h, f"readlink {PREFIX}/current").strip().split("/")[-1]


# --- hosts that cannot take the agent ------------------------------------------------------
BREAKAGES = [
    # (what, set up in the guest, undo, the error fleetctl prints)
    ("no python3", "mkdir -p /root/away && mv /usr/bin/python3 /usr/bin/python3.11 /root/away/",
     "mv /root/away/python3 /root/away/python3.11 /usr/bin/ && rmdir /root/away",
     r"Error: root@10\.88\.0\.12: no python3 \(needs Python 3\.9\+\)"),
    ("an old python3", "mkdir -p /root/away && mv /usr/bin/python3 /usr/bin/python3.11 "
                       "/root/away/ && printf '#!/bin/sh\\necho 3.7.3 - glibc:2.28\\n' "
                       "> /usr/local/bin/python3 && chmod +x /usr/local/bin/python3",
     "rm /usr/local/bin/python3 && mv /root/away/python3 /root/away/python3.11 /usr/bin/ "
     "&& rmdir /root/away",
     r"Error: root@10\.88\.0\.12: Python 3\.7\.3 \(/usr/local/bin/python3\) is too old "
     r"\(needs 3\.9\+\)"),
    ("a read-only prefix", f"mkdir -p {PREFIX} && mount --bind {PREFIX} {PREFIX} && "
                           f"mount -o remount,bind,ro {PREFIX}",
     f"umount {PREFIX} && rmdir {PREFIX}",
     r"Error: root@10\.88\.0\.12: /opt/fleetd-agent is read-only"),
    ("a read-only /opt", "mount --bind /opt /opt && mount -o remount,bind,ro /opt",
     "umount /opt", r"Error: root@10\.88\.0\.12: /opt is read-only"),
    ("no space", f"mkdir -p {PREFIX} && mount -t tmpfs -o size=1m tmpfs {PREFIX}",
     f"umount {PREFIX} && rmdir {PREFIX}",
     r"Error: root@10\.88\.0\.12: only 1 MiB free under /opt/fleetd-agent \(needs \d+ MiB\)"),
    # fails after the install began (its directories made): the undo removes them
    ("no SFTP server", "mkdir -p /root/away && mv /usr/lib/openssh/sftp-server /root/away/",
     "mv /root/away/sftp-server /usr/lib/openssh/ && rmdir /root/away",
     r"Error: root@10\.88\.0\.12: uploading the agent \(\d+ KiB\) to /opt/fleetd-agent/"
     r"versions/0\.1\.0-[0-9a-f]{12}\.partial: root@10\.88\.0\.12:22: the host's SFTP "
     r"server did not start \(.*\): its sshd must offer the sftp subsystem \(Subsystem sftp "
     r"in sshd_config\)"),
]


def test_a_host_that_cannot_take_the_agent_says_why_and_keeps_nothing(
        lab: Lab, fleet: Fleet) -> None:
    h = host(lab, "h2")
    before = snapshot(lab, h)
    for what, setup, undo, message in BREAKAGES:
        ssh(lab, h, setup)
        try:
            broken = snapshot(lab, h)
            out = add(fleet, h, check=False)
            assert out.returncode == 1, (what, out.stdout)
            assert re.fullmatch(message, out.stderr.strip()), (what, out.stderr)
            TIMINGS[f"refused: {what}"] = out.stderr.strip()
            assert fleet.machines() == {}, what
            assert snapshot(lab, h) == broken, what  # nothing half-installed
            assert traces(lab, h) == [], what
        finally:
            ssh(lab, h, undo)
    assert snapshot(lab, h) == before


def test_a_failed_upgrade_leaves_the_old_agent_and_its_units_running(
        lab: Lab, fleet: Fleet, tmp_path: Any) -> None:
    """The new version's agent does not run: the install puts the old one back, which
    re-adopts the units; the staged version is gone."""
    h = host(lab, "h2")
    put_program(lab, h)
    before = snapshot(lab, h)
    add(fleet, h)
    exec_file, _sd = units_for(tmp_path, "h2")
    fleet.ctl("start", exec_file, timeout=120)
    pid = running(fleet, "bt-exec-h2.service")["pid"]
    old = readlink(lab, h)
    agent = int(ssh(lab, h, "systemctl show -p MainPID --value fleet-agent"))
    files = bundle.agent_files()
    files["fleetd/agent/daemon.py"] += (b"\n\ndef run(state_dir):\n"
                                        b"    raise SystemExit('this agent refuses to run')\n")

    async def upgrade() -> str:
        shell = SshTransport(h.address, 22, "root", lab.identity, lab.known_hosts)
        try:
            await install(shell, f"root@{h.address}", Target(), suffix="broken", files=files)
        except BootstrapError as exc:
            return str(exc)
        finally:
            await shell.close()
        return "installed"

    began = time.monotonic()
    message = asyncio.run(upgrade())
    TIMINGS["failed upgrade, undone"] = round(time.monotonic() - began, 3)
    assert message.startswith("root@10.88.0.12: waiting for the agent to answer failed "
                              "(exit 1): fleet-agent.service exited and is being restarted "
                              "by systemd:"), message
    assert "this agent refuses to run" in message
    assert readlink(lab, h) == old
    assert ssh(lab, h, f"ls {PREFIX}/versions").split() == [old]
    assert ssh(lab, h, "systemctl is-active fleet-agent").strip() == "active"
    assert int(ssh(lab, h, "systemctl show -p MainPID --value fleet-agent")) != agent
    wait_for("h2 up again", lambda: fleet.machines()["h2"]["state"] == "up", 20)
    assert [(u["unit"], u["pid"]) for u in fleet.units()] == [("bt-exec-h2.service", pid)]

    fleet.ctl("machine", "remove", "h2", "--purge", timeout=300)
    assert snapshot(lab, h) == before
    assert traces(lab, h) == []


def test_a_host_without_psutil_gets_the_wheel(lab: Lab, fleet: Fleet, tmp_path: Any) -> None:
    h = host(lab, "h3")
    put_program(lab, h)
    before = snapshot(lab, h)
    assert "No module named 'psutil'" in ssh(lab, h, "python3 -c 'import psutil' 2>&1; true")
    began = time.monotonic()
    out = add(fleet, h)
    TIMINGS["add (host without psutil: wheel pushed)"] = round(time.monotonic() - began, 3)
    assert "psutil pushed 7." in out.stdout, out.stdout
    where = ssh(lab, h, f"{PREFIX}/current/bin/fleet-agent version; "
                        f"ls {PREFIX}/current/lib; ls -d {PREFIX}/current/lib/psutil-* "
                        "2>/dev/null; true").split()
    assert where == ["0.1.0", "psutil"]  # no dist-info: only the package
    exec_file, sd_file = units_for(tmp_path, "h3")
    fleet.ctl("start", exec_file, sd_file, timeout=120)
    running(fleet, "bt-exec-h3.service")
    running(fleet, "bt-sd-h3.service")
    fleet.ctl("machine", "remove", "h3", "--purge", timeout=300)
    assert snapshot(lab, h) == before
    assert traces(lab, h) == []


def test_purge_needs_an_agent_fleetd_installed(lab: Lab, fleet: Fleet) -> None:
    """A machine added with --agent-command is the user's: no upgrade, no purge."""
    h = host(lab, "h3")
    fleet.ctl("machine", "add", f"root@{h.address}", "--name", "h3", "--identity",
              lab.identity, "--known-hosts", lab.known_hosts, "--agent-command",
              "/nonexistent/fleet-agent attach", "--no-wait")
    out = fleet.ctl("machine", "remove", "h3", "--purge", check=False)
    assert out.returncode == 1
    assert "added with --agent-command: fleetd did not install its agent" in out.stderr
    out = fleet.ctl("machine", "upgrade", "h3", check=False)
    assert out.returncode == 1 and "does not upgrade it" in out.stderr
    assert fleet.ctl("machine", "remove", "h3").stdout.strip() == "Machine h3 removed"


def test_an_agent_command_cannot_make_fleetd_stop_replace_or_remove_others(
        lab: Lab, fleet: Fleet) -> None:
    """An --agent-command shaped like one fleetd's install makes, naming a service and
    directories of the host's own: ``machine upgrade`` does not replace that service,
    ``machine remove --purge`` neither stops nor removes it nor the directories."""
    h = host(lab, "h3")
    victim = "/etc/systemd/system/victim.service"
    ssh(lab, h, f"printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > {victim} && "
                "mkdir -p /srv/data && echo mine > /srv/data/file && "
                "systemctl daemon-reload && systemctl start victim")
    try:
        fleet.ctl("machine", "add", f"root@{h.address}", "--name", "h3", "--identity",
                  lab.identity, "--known-hosts", lab.known_hosts, "--agent-command",
                  "/srv/data/current/bin/fleet-agent attach --state-dir /srv/data "
                  "--systemd-service victim.service", "--no-wait")
        out = fleet.ctl("machine", "upgrade", "h3", check=False, timeout=300)
        assert out.returncode == 1
        assert f"{victim} is not a service file fleetd wrote (its first line is not " \
               "fleetd's): fleetd does not replace it" in out.stderr, out.stderr
        out = fleet.ctl("machine", "remove", "h3", "--purge", timeout=300)
        assert out.stdout.strip() == "Machine h3 removed", out.stdout
        assert "nothing was removed: /srv/data/install-record, which fleetd's install " \
               "leaves, is not there" in out.stderr, out.stderr
        assert ssh(lab, h, "systemctl is-active victim").strip() == "active"
        assert ssh(lab, h, f"head -n 1 {victim}").strip() == "[Service]"
        assert ssh(lab, h, "cat /srv/data/file").strip() == "mine"
    finally:
        ssh(lab, h, f"systemctl stop victim; rm -f {victim}; systemctl daemon-reload; "
                    "rm -rf /srv/data")


def test_detached_agent_upgrade_and_purge(plain_lab: Lab, tmp_path: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PID 1 is not systemd the agent runs detached; an upgrade stops it with SIGTERM
    and starts the new one, which re-adopts the units (same pids)."""
    monkeypatch.delenv(bundle.SUFFIX_VARIABLE, raising=False)
    lab, h = plain_lab, plain_lab.hosts()[0]
    prefix = "/root/fleetd-agent"
    fleet = Fleet(lab, str(tmp_path))
    fleet.start()
    try:
        began = time.monotonic()
        out = fleet.ctl("machine", "add", f"root@{h.address}", "--name", h.name,
                        "--metadata", f"hostname={h.name}", "--identity", lab.identity,
                        "--known-hosts", lab.known_hosts, "--prefix", prefix, timeout=300)
        TIMINGS["add (plain host, detached)"] = round(time.monotonic() - began, 3)
        assert ", running detached, in " in out.stdout, out.stdout
        unit = os.path.join(str(tmp_path), "bt-plain.service")
        with open(unit, "w") as f:
            f.write("[Service]\nExecStart=/bin/sleep infinity\nMemoryMax=32M\n")
        fleet.ctl("start", unit, timeout=120)
        pid = running(fleet, "bt-plain.service")["pid"]
        agent = lab.agent_pid(h)
        assert agent is not None
        fleet.stop()
        monkeypatch.setenv(bundle.SUFFIX_VARIABLE, "detached-upgrade")
        fleet.start()
        began = time.monotonic()
        out = fleet.ctl("machine", "upgrade", h.name, timeout=300)
        TIMINGS["upgrade (plain host, detached)"] = round(time.monotonic() - began, 3)
        assert "agent upgraded from " in out.stdout and "running detached" in out.stdout
        new_agent = lab.agent_pid(h)
        assert new_agent is not None and new_agent != agent
        assert not alive(agent)  # a zombie until whoever inherited it reaps it
        assert [(u["unit"], u["pid"]) for u in fleet.units()] == [("bt-plain.service", pid)]
        TIMINGS["pids before/after detached upgrade"] = {"unit": [pid, pid],
                                                         "agent": [agent, new_agent]}
        out = fleet.ctl("machine", "remove", h.name, "--purge", timeout=300)
        assert out.stdout.strip() == (f"Machine {h.name} removed; its agent stopped; what "
                                      "fleetd installed there removed"), out.stderr
        assert out.stderr == ""
        assert lab.agent_pid(h) is None and not alive(new_agent)
        # the state directory is the lab host's own mount point: emptied, not removed
        assert ssh(lab, h, f"test -e {prefix} || echo gone; ls -A {STATE}").split() == ["gone"]
    finally:
        fleet.stop()
