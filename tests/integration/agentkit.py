"""Driving one real agent through its real ``fleet-agent attach`` relay, on this machine
(no SSH, no lab namespace), and cleaning up after it: its processes *and* its cgroups
(the agent makes ``fleet/<machine-id>`` in every hierarchy; a test must not leave them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from fleetd import protocol
from fleetd.cgroups import UnitCgroup, detect
from fleetd.lab.host import remove_agent_cgroups
from fleetd.testing.waiting import alive
from fleetd.units.model import load


class Attached:
    """One ``fleet-agent attach`` process, spoken to like fleetd does over SSH."""

    def __init__(self, state_dir: str, command: Optional[List[str]] = None,
                 heartbeat_s: float = 0.2, **hello: Any) -> None:
        """``command``: how to run the agent's Python elsewhere (inside another host's
        namespaces, say); by default this machine's interpreter. ``hello``: fields of
        the hello over the defaults (``daemon="fleetd", epoch=5``: as a fleetd would)."""
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            [*(command or [sys.executable]), "-m", "fleetd.agent", "attach", "--state-dir",
             state_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.units: Dict[str, Dict[str, Any]] = {}
        self.history: List[Dict[str, Any]] = []  # every unit report, in order
        self.send("hello", **{"daemon": "test", "heartbeat_s": heartbeat_s, **hello})
        self.hello = self.read_until(lambda m: m["type"] == "hello")
        self.read_until(lambda m: m["type"] == "status")  # the snapshot follows hello

    def send(self, kind: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(kind, **fields))
        self.proc.stdin.flush()

    def desire(self, *specs: Dict[str, Any]) -> None:
        self.send("desired", units=list(specs))

    def read(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the agent closed the channel"
        return self._take(protocol.decode(line))

    def follow(self, on_message: Callable[[Dict[str, Any]], None]) -> threading.Thread:
        """From now on read on a thread, until the channel closes, handing each message
        to ``on_message`` (for benches that measure while the agent talks; nothing else
        may read then)."""
        def loop() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                on_message(self._take(protocol.decode(line)))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def _take(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        if msg["type"] == "status":
            self.units = {u["name"]: u for u in msg["units"]}
        elif msg["type"] == "unit":
            self.units[msg["unit"]["name"]] = msg["unit"]
            self.history.append(msg["unit"])
        elif msg["type"] == "removed":
            self.units.pop(msg["name"], None)
        return msg

    def read_until(self, pred: Callable[[Dict[str, Any]], Any],
                   timeout: float = 10.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.read()
            if pred(msg):
                return msg
        pytest.fail(f"no such message from the agent within {timeout}s; units: {self.units}")

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> Dict[str, Any]:
        self.read_until(lambda m: self.units.get(name, {}).get("state") == state, timeout)
        return self.units[name]

    def wait_units(self, pred: Callable[[Dict[str, Dict[str, Any]]], Any],
                   timeout: float = 10.0) -> Dict[str, Dict[str, Any]]:
        """Until ``pred(units)`` holds (checked on the current picture first)."""
        if not pred(self.units):
            self.read_until(lambda m: pred(self.units), timeout)
        return self.units

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(5)


def spec(name: str, text: str, want: str = protocol.WANT_RUNNING,
         generation: int = 0) -> Dict[str, Any]:
    return load(name, text).spec(want, generation)


def agent_pid(state_dir: str) -> int:
    with open(os.path.join(state_dir, "agent.pid")) as f:
        return int(f.read())


def machine_id(state_dir: str) -> str:
    with open(os.path.join(state_dir, "machine-id")) as f:
        return f.read().strip()


def unit_cgroup(state_dir: str, unit: str) -> UnitCgroup:
    return detect(parent=f"fleet/{machine_id(state_dir)}").unit(unit)


def program_pids(state_dir: str, unit: str) -> List[int]:
    """The pids in the unit's cgroup but its prepared restart process (drivers/spare.py:
    a /bin/sh named fleet-spare waiting in the unit's cgroups to exec the next run)."""
    pids = []
    for pid in unit_cgroup(state_dir, unit).pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == b"fleet-spare\0":
                    continue
        except OSError:  # gone meanwhile: not a program of the unit either
            continue
        pids.append(pid)
    return pids


def kill_agent(state_dir: str) -> int:
    """kill -9 the agent of ``state_dir`` (its programs live on); its pid."""
    pid = agent_pid(state_dir)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)
    return pid


def processes_with(marker: bytes) -> List[int]:
    """Processes whose command line or environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker in cmd or marker in env:
            found.append(int(entry))
    return found


def unit_processes() -> Dict[str, List[int]]:
    """Every live process with ``FLEET_UNIT=`` in its environment, by unit: one pass over
    /proc for all units."""
    found: Dict[str, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        unit = next((v[len(b"FLEET_UNIT="):].decode() for v in env
                     if v.startswith(b"FLEET_UNIT=")), None)
        if unit is not None and alive(int(entry)):
            found.setdefault(unit, []).append(int(entry))
    return found


def clean(state_dir: str, marker: Optional[bytes] = None) -> None:
    """Kill the agent of ``state_dir``, every program of its units (found by their
    cgroups, and by ``marker`` where given) and remove its cgroups."""
    pids = processes_with(state_dir.encode())
    if marker:
        pids += processes_with(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_agent_cgroups(state_dir)


async def until(what: str, predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    """Await ``predicate()`` in a test's event loop; fail naming ``what`` (the timeout
    only bounds how long a broken build hangs)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
