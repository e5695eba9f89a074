"""fleetd.procfs, the lab's and the tests' one reader of /proc, on this machine's own
processes: a child that runs, the same child as a zombie, and a pid that is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from fleetd import procfs
from fleetd.testing.waiting import alive


def test_a_running_child_is_read_whole() -> None:
    script = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # past its exec: its command line is its own
        assert procfs.alive(child.pid) and alive(child.pid)
        ticks = procfs.start_ticks(child.pid)
        assert ticks > 0 and procfs.alive(child.pid, ticks)
        assert not procfs.alive(child.pid, ticks + 1)  # another process with that pid
        assert procfs.ppid(child.pid) == os.getpid()
        assert child.pid in procfs.children(os.getpid())
        assert procfs.comm(child.pid) == os.path.basename(sys.executable)[:15]
        assert procfs.cmdline(child.pid) == f"{sys.executable} -c {script}"
        assert procfs.nspid(child.pid) == child.pid  # no PID namespace of its own
        assert procfs.namespace(child.pid) == procfs.namespace(os.getpid()) is not None
        assert procfs.namespace(child.pid, "mnt") == procfs.namespace(os.getpid(), "mnt")
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while procfs.status_field(child.pid, "State") != "Z (zombie)":
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.01)
    try:
        assert not procfs.alive(child.pid) and not alive(child.pid)
        assert procfs.ppid(child.pid) == os.getpid()  # still there, to be reaped
    finally:
        child.wait()


def test_a_gone_pid_answers_without_raising() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    pid = child.pid
    assert not procfs.alive(pid) and procfs.start_ticks(pid) == -1
    assert procfs.status_field(pid, "Name") is None
    assert (procfs.ppid(pid), procfs.comm(pid), procfs.nspid(pid)) == (None, None, None)
    assert procfs.children(pid) == [] and procfs.cmdline(pid) == ""
    assert procfs.namespace(pid) is None
