"""Helpers for the lab tests: a real fleetd process, the real fleetctl, host probes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import agentkit
import pytest

from fleetd import procfs
from fleetd.client import ApiError, Client
from fleetd.lab.daemon import agent_command
from fleetd.lab.netns import Host, Lab
from fleetd.procfs import cmdline as cmdline  # the command line, arguments joined by spaces
from fleetd.testing.waiting import alive as alive  # the tests' one meaning of alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
FLEETCTL = os.path.join(BIN, "fleetctl")


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (not a timing assertion:
    the timeout only bounds how long a broken build hangs)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def netns_inode(h: Host) -> int:
    return os.stat(f"/run/netns/{h.netns}").st_ino


def pid_netns_inode(pid: int) -> Optional[int]:
    return procfs.namespace(pid, "net")


def reset_host(lab: Lab, h: Host) -> None:
    """Back to a host with only its sshd listener: no agent, no programs, no state."""
    keep = lab.sshd_pid(h)
    for pid in lab.pids(h):
        if pid != keep:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for(f"{h.name} to be empty", lambda: set(lab.pids(h)) <= {keep}, 5)
    agentkit.clean(h.state_dir)  # the agent's unit cgroups (shared by all lab hosts' kernel)
    for entry in os.listdir(h.state_dir):
        path = os.path.join(h.state_dir, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


class Fleet:
    """A real fleetd process and the real fleetctl, for one test (or one bench run)."""

    def __init__(self, lab: Optional[Lab], workdir: str, config: Optional[str] = None,
                 args: Sequence[str] = ()) -> None:
        """``args``: more of fleetd's command-line options (``--log-level warning``)."""
        self.lab = lab
        self.state_dir = os.path.join(workdir, "fleetd")
        self.socket = os.path.join(workdir, "fleetd.sock")
        self.log = os.path.join(workdir, "fleetd.log")
        self.config = config
        self.args = list(args)
        self.endpoint = f"unix://{self.socket}"
        self.api = Client(self.endpoint)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "fleetd.daemon", "--state-dir", self.state_dir,
                "--socket", self.socket]
        if self.config:
            argv += ["--config", self.config]
        argv += self.args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for("fleetd to answer", self._healthy, 15)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(self.log) as f:
                pytest.fail(f"fleetd exited {self.proc.returncode}: {f.read()[-2000:]}")
        try:
            self.api.get("/v1/health", timeout=1)
            return True
        except ApiError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; a fleetd that does not exit fails the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # its tasks' stacks, into the log
                time.sleep(0.5)
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"fleetd did not stop within 15s of SIGTERM:\n{self.dump()}")

    def ctl(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, FLEETCTL_ENDPOINT=self.endpoint)
        proc = subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            pytest.fail(f"fleetctl {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout}{proc.stderr}")
        return proc

    def add(self, h: Host, known_hosts: Optional[str] = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        assert self.lab is not None
        return self.ctl("machine", "add", f"root@{h.address}", "--name", h.name,
                        "--metadata", f"hostname={h.name},lab={self.lab.prefix}",
                        "--identity", self.lab.identity,
                        "--known-hosts", known_hosts or self.lab.known_hosts,
                        "--agent-command", agent_command(), check=check)

    def units(self) -> List[Dict[str, Any]]:
        return list(self.api.get("/v1/units")["units"])

    def unit(self, name: str) -> Optional[Dict[str, Any]]:
        return next((u for u in self.units() if u["unit"] == name), None)

    def unit_files(self) -> List[Dict[str, Any]]:
        return list(self.api.get("/v1/unit-files")["unit_files"])

    def machines(self) -> Dict[str, Dict[str, Any]]:
        return {m["name"]: m for m in self.api.get("/v1/machines")["machines"]}

    def heard_since(self, t0: float) -> bool:
        """Every machine up, and its agent heard by this fleetd at or after ``t0`` (not a
        state left in the registry by an earlier fleetd)."""
        return all(m["state"] == "up" and (m["last_seen"] or 0) >= t0
                   for m in self.machines().values())

    def placed(self) -> Dict[str, str]:
        """unit -> machine of every unit running there on its current content."""
        return {u["unit"]: u["machine"] for u in self.units()
                if u["state"] == "running" and u["current"]}

    def programs(self) -> Dict[str, Dict[int, str]]:
        """Live processes of units on this lab's hosts: unit -> {pid: host}, from each
        process's FLEET_UNIT= (the lab hosts share this machine's kernel; another test
        run's lab, which may run units of the same names, is left out)."""
        assert self.lab is not None
        ours = {netns_inode(h): h.name for h in self.lab.hosts()}
        found: Dict[str, Dict[int, str]] = {}
        for unit, pids in agentkit.unit_processes().items():
            for pid in pids:
                host = ours.get(pid_netns_inode(pid) or 0)
                if host is not None:
                    found.setdefault(unit, {})[pid] = host
        return found

    def copies(self, unit: str) -> List[int]:
        """Live processes of ``unit`` on this lab's hosts."""
        return sorted(self.programs().get(unit, {}))

    def host(self, name: str) -> Host:
        assert self.lab is not None
        return next(h for h in self.lab.hosts() if h.name == name)

    def dump(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-4000:]
