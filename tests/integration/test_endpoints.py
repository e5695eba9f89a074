"""``fleetctl --endpoint A,B,C`` (issue 12) against real fleetd processes and the real
fleetctl: a dead endpoint is passed, none alive is an error naming each, and a blocking
wait whose fleetd is killed goes on through another.

Without etcd two fleetd do not share state: each test gives the fleetds what its
scenario needs (the etcd version of the failover test comes with the registry).
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, Iterator, Set, Tuple

import pytest
from labkit import FLEETCTL, ROOT, Fleet, wait_for

HELLO = os.path.join(ROOT, "units", "hello.service")
HINT = "(is fleetd running? `fleetctl lab up` starts one)"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 bound and not listening: connecting is refused, and no
    other process can take the port while the test holds it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def fleetctl(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEETCTL_ENDPOINT"}
    return subprocess.run([FLEETCTL, "--endpoint", endpoints, *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)


def killed_fleetd(workdir: str) -> Fleet:
    """A fleetd killed with -9: its socket file is left, with nothing behind it."""
    os.makedirs(workdir)
    f = Fleet(None, workdir)
    f.start()
    f.kill9()
    assert os.path.exists(f.socket)
    return f


def test_dead_endpoints_first_are_passed_for_a_read_and_a_write(
        lone_fleet: Fleet, closed_port: int, tmp_path: Any) -> None:
    """A killed fleetd's socket, no socket at all and a closed TCP port come before the
    live fleetd: a write (submit) and a read (list-unit-files) go through it."""
    dead = killed_fleetd(str(tmp_path / "dead"))
    endpoints = (f"{dead.endpoint},unix://{tmp_path}/nothing.sock,"
                 f"http://127.0.0.1:{closed_port},{lone_fleet.endpoint}")
    out = fleetctl(endpoints, "submit", HELLO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "Unit hello.service submitted"
    assert [u["unit"] for u in lone_fleet.unit_files()] == ["hello.service"]
    listed = fleetctl(endpoints, "list-unit-files", "--no-legend")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert listed.stdout.split()[0] == "hello.service"


def test_when_no_fleetd_answers_the_error_names_each_endpoint_and_why(
        closed_port: int, tmp_path: Any) -> None:
    dead = killed_fleetd(str(tmp_path / "dead"))
    endpoints = [dead.endpoint, f"unix://{tmp_path}/nothing.sock",
                 f"http://127.0.0.1:{closed_port}"]
    for args in (["list-units"], ["submit", HELLO]):
        out = fleetctl(",".join(endpoints), *args)
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stderr.strip() == (
            f"Error: cannot reach fleetd at {endpoints[0]}: Connection refused; "
            f"at {endpoints[1]}: No such file or directory; "
            f"at {endpoints[2]}: Connection refused {HINT}")


def _socket_inodes(pid: int) -> Set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _peers(socket_path: str) -> Set[int]:
    """The inodes of the client sockets connected to the Unix socket at ``socket_path``
    (ss: the listener's accepted sockets, each with its peer's inode)."""
    out = subprocess.run(["ss", "-xH", "src", socket_path], capture_output=True,
                         text=True, check=True).stdout
    return {int(line.split()[-1]) for line in out.splitlines() if line.strip()}


def _connected(pid: int, fleet: Fleet) -> Tuple[bool, Set[int]]:
    mine = _socket_inodes(pid)
    return bool(mine & _peers(fleet.socket)), mine


def test_a_blocking_start_goes_on_through_another_fleetd_when_its_own_is_killed(
        cluster: Fleet, tmp_path: Any) -> None:
    """``fleetctl --endpoint ONE,TWO start hello.service``: ONE (a fleetd without
    machines, so the unit it stores waits to be placed forever) takes the submit and the
    wait; ONE is killed with -9 while fleetctl waits on it; the wait goes on through TWO,
    the lab's fleetd, where the same unit (same file) already runs, and the start ends
    with TWO's verdict: running, the same program (no restart). Without etcd, TWO knows
    the unit only because the test started it there first: what this shows is the
    client's failover (the cut long poll resent to the next endpoint with its time
    left), not shared state."""
    cluster.ctl("start", HELLO)
    row = cluster.unit("hello.service")
    assert row is not None and row["state"] == "running", row
    os.makedirs(tmp_path / "one")
    one = Fleet(None, str(tmp_path / "one"))
    one.start()
    try:
        proc = subprocess.Popen(
            [FLEETCTL, "--endpoint", f"{one.endpoint},{cluster.endpoint}", "start",
             "--timeout", "60", HELLO], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT)
        wait_for("ONE to store hello.service as launched", lambda: any(
            u["unit"] == "hello.service" and u["desired"] == "launched"
            for u in one.unit_files()), 20)
        # the submit's connection is closed once its answer is read; the one fleetctl
        # holds to ONE now is its wait (ss: ONE's accepted sockets and their peers)
        wait_for("fleetctl waiting on ONE", lambda: _connected(proc.pid, one)[0], 20)
        assert proc.poll() is None, proc.communicate()
        one.kill9()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        one.stop()
    assert proc.returncode == 0, stdout + stderr
    # TWO's verdict (ONE never placed it: it has no machine)
    assert stdout.strip() == f"Unit hello.service running on {row['machine']} " \
                             f"(pid {row['pid']})", stdout + stderr
    again = cluster.unit("hello.service")
    assert again is not None and (again["pid"], again["machine"]) == \
        (row["pid"], row["machine"]), (row, again)
