"""Nothing on the host but the agent (issue 15, part 4): fleetd reaches the agent's socket
through sshd's stream-local forwarding, with no ``fleet-agent attach`` relay process on
the host; it starts the agent with one short command when the socket does not answer
(first contact, and after a kill -9); where sshd refuses forwarding it relays as before,
and ``list-machines`` says which and why.

A lab of its own (slot ``fe``, 10.86.0.0/24): two plain hosts, one of whose sshd is
reconfigured (``AllowStreamLocalForwarding no``, ``SetEnv``), and a systemd host that
fleetd installs the agent on (the bootstrap's launcher, a systemd service).
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any, Dict, Iterator, List

import pytest
from labkit import Fleet, alive, cmdline, lab_slot, reset_host, wait_for

from fleetd.lab import sshd
from fleetd.lab.daemon import register
from fleetd.lab.host import AGENT_STATE_MOUNT, remove_agent_cgroups
from fleetd.lab.netns import Host, Lab
from fleetd.transport import forward

UNIT = """[Service]
ExecStart=/bin/sleep {n}
Restart=always
[X-Fleet]
MachineMetadata=hostname={host}
"""


@pytest.fixture(scope="module")
def fe_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, sshd, cgroups)")
    with lab_slot("fe"):
        lab = Lab(str(tmp_path_factory.mktemp("fe-lab")), prefix="fe", subnet="10.86.0")
        lab.down()  # what a crashed run of this slot left
        try:
            lab.up(3, systemd=1)
            yield lab
        finally:
            lab.down()


@pytest.fixture
def fleet(fe_lab: Lab, tmp_path: Any) -> Iterator[Fleet]:
    f = Fleet(fe_lab, str(tmp_path))
    f.start()
    yield f
    f.stop()
    for h in fe_lab.hosts():
        if not h.systemd:  # h3's agent stays installed: one test uses it
            reset_host(fe_lab, h)


def host(lab: Lab, name: str) -> Host:
    return next(h for h in lab.hosts() if h.name == name)


def relays(lab: Lab, h: Host) -> List[int]:
    """``fleet-agent attach`` relay processes on ``h``."""
    return [p for p in lab.pids(h) if "attach" in cmdline(p).split()
            and ("fleetd.agent" in cmdline(p) or "fleet-agent" in cmdline(p))]


def start_unit(fleet: Fleet, tmp: Any, name: str, h: Host, n: int) -> Dict[str, Any]:
    path = os.path.join(str(tmp), name)
    with open(path, "w") as f:
        f.write(UNIT.format(n=n, host=h.name))
    out = fleet.ctl("start", "--timeout", "10", path)
    assert f"{name} running on {h.name}" in out.stdout, out.stdout
    row = fleet.unit(name)
    assert row is not None and row["state"] == "running"
    return row


def hellos(fleet: Fleet, name: str) -> int:
    """How many times fleetd's session to ``name`` has had its agent's hello."""
    with open(fleet.log, errors="replace") as f:
        return len(re.findall(rf"INFO {name}: agent \S+ up \(machine id", f.read()))


def up(fleet: Fleet, name: str) -> Dict[str, Any]:
    return wait_for(f"{name} up", lambda: (m := fleet.machines().get(name))
                    and m["state"] == "up" and m, 30)


def test_forwarded_session_leaves_only_the_agent_and_restarts_a_killed_one(
        fleet: Fleet, fe_lab: Lab, tmp_path: Any) -> None:
    h1 = host(fe_lab, "h1")
    assert fe_lab.agent_pid(h1) is None and not os.path.exists(
        os.path.join(h1.state_dir, "agent.sock")), "h1 is not fresh"
    fleet.add(h1)
    machine = up(fleet, "h1")
    assert machine["link"] == forward.FORWARDED, machine
    agent = fe_lab.agent_pid(h1)
    assert agent is not None, "the agent was not started on demand"
    pid = start_unit(fleet, tmp_path, "fw-sleep.service", h1, 424242)["pid"]
    assert relays(fe_lab, h1) == [], [cmdline(p) for p in relays(fe_lab, h1)]
    listing = fleet.ctl("list-machines", "--fields", "machine,link", "--no-legend").stdout
    assert listing.split() == ["h1", "forwarded"], listing

    # kill -9 of the agent: the forwarded channel ends, the session reconnects, starting
    # the agent again, which re-adopts the program (same pid)
    assert hellos(fleet, "h1") == 1
    os.kill(agent, signal.SIGKILL)
    wait_for("a new agent on h1", lambda: (p := fe_lab.agent_pid(h1)) and p != agent, 30)
    wait_for("the session's hello from the new agent", lambda: hellos(fleet, "h1") == 2, 30)
    wait_for("h1 up", lambda: fleet.machines()["h1"]["state"] == "up", 30)
    assert alive(pid)
    row = wait_for("the unit reported by the new agent", lambda: (
        (u := fleet.unit("fw-sleep.service")) and u["state"] == "running" and u), 30)
    assert row["pid"] == pid
    assert fleet.machines()["h1"]["link"] == forward.FORWARDED
    assert relays(fe_lab, h1) == []
    # and the session works: a stop goes through it
    fleet.ctl("stop", "fw-sleep.service")
    assert not alive(pid)


def test_sshd_that_refuses_forwarding_gets_the_relay_and_list_machines_says_why(
        fleet: Fleet, fe_lab: Lab, tmp_path: Any) -> None:
    h2 = host(fe_lab, "h2")
    sshd.configure(h2, AllowStreamLocalForwarding="no")
    try:
        fleet.add(h2)
        machine = up(fleet, "h2")
        assert machine["link"] == forward.RELAY_REFUSED, machine
        listing = fleet.ctl("list-machines", "--fields", "machine,link", "--no-legend",
                            "--full").stdout
        assert "h2" in listing and forward.RELAY_REFUSED in listing, listing
        assert relays(fe_lab, h2), "no relay on a host whose sshd refuses forwarding"
        pid = start_unit(fleet, tmp_path, "fw-relayed.service", h2, 434343)["pid"]
        fleet.ctl("stop", "fw-relayed.service")
        assert not alive(pid)
    finally:
        fleet.stop()  # its session goes with the sshd it came through
        sshd.configure(h2, AllowStreamLocalForwarding="yes")


def test_the_socket_is_where_the_host_says_when_fleetd_cannot_tell(
        fleet: Fleet, fe_lab: Lab) -> None:
    """The host's sshd gives sessions FLEET_AGENT_STATE_DIR (SetEnv): the agent command
    names no state directory, so fleetd's guess (the default) finds no socket; the
    socket ``attach --start-only`` printed is the one it forwards to."""
    h2 = host(fe_lab, "h2")
    alt = os.path.join(h2.state_dir, "alt")
    sshd.configure(h2, SetEnv=f"FLEET_AGENT_STATE_DIR={AGENT_STATE_MOUNT}/alt")
    try:
        fleet.add(h2)
        machine = up(fleet, "h2")
        assert machine["link"] == forward.FORWARDED, machine
        with open(os.path.join(alt, "agent.pid")) as f:
            assert alive(int(f.read()))
        assert not os.path.exists(os.path.join(h2.state_dir, "agent.sock"))
        assert relays(fe_lab, h2) == []
    finally:
        fleet.stop()
        sshd.configure(h2, SetEnv=None)
        for pid in fe_lab.pids(h2):
            if "--state-dir" in cmdline(pid) and cmdline(pid).endswith("/alt"):
                os.kill(pid, signal.SIGKILL)
        remove_agent_cgroups(alt)


def test_a_bootstrapped_systemd_host_is_forwarded_too(fleet: Fleet, fe_lab: Lab) -> None:
    """fleetd installs the agent (a systemd service, its launcher in the agent command);
    the session forwards to it, and after a kill -9 it is forwarded to again."""
    h3 = host(fe_lab, "h3")
    assert h3.systemd
    register(fe_lab, fleet.api, [h3])
    machine = up(fleet, "h3")
    assert machine["link"] == forward.FORWARDED, machine
    agent = fe_lab.agent_pid(h3)
    assert agent is not None
    assert relays(fe_lab, h3) == [], [cmdline(p) for p in relays(fe_lab, h3)]
    assert hellos(fleet, "h3") == 1
    os.kill(agent, signal.SIGKILL)
    wait_for("h3's agent again", lambda: fe_lab.agent_pid(h3) not in (None, agent), 60)
    wait_for("the session's hello from the new agent", lambda: hellos(fleet, "h3") == 2, 60)
    wait_for("h3 up again", lambda: fleet.machines()["h3"]["state"] == "up", 60)
    assert fleet.machines()["h3"]["link"] == forward.FORWARDED
    assert relays(fe_lab, h3) == []
