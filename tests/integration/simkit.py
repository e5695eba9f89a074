"""The machine simulator as a process of its own (``python -m fleetd.lab.sim``), for the
scale test and bench/scale.py: started against a real fleetd, its levers through its
control socket (fleetd.lab.sim_control), stopped by SIGTERM (SIGKILL if it hangs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from fleetd.lab.sim_control import SimControl

READY_TIMEOUT_S = 300.0


class SimProcess:
    def __init__(self, workdir: str, machines: int, endpoint: str, prefix: str = "sim"
                 ) -> None:
        self.dir = os.path.join(workdir, "sim")
        self.log = os.path.join(workdir, "sim.log")
        self.count = machines
        self.endpoint = endpoint
        self.prefix = prefix
        self.proc: Optional[subprocess.Popen[str]] = None
        self.control = SimControl(self.dir, timeout=120)

    def start(self) -> None:
        """Start it; return once every machine listens and is registered with fleetd."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetd.lab.sim", "--dir", self.dir,
                 "--machines", str(self.count), "--prefix", self.prefix,
                 "--endpoint", self.endpoint],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready ..." once registered; "" if it died
        if not line.startswith("ready"):
            self.proc.wait(10)
            raise RuntimeError(f"the simulator exited {self.proc.returncode}: "
                               f"{self.tail()}")

    def tail(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def names(self) -> List[str]:
        return [m["name"] for m in self.control.listing()]

    def lever(self, op: str, machines: Sequence[str], **fields: Any) -> Dict[str, Any]:
        return self.control.lever(op, machines, **fields)

    def machines(self) -> Dict[str, Dict[str, Any]]:
        return self.control.machines()

    def running(self, machines: Optional[Dict[str, Dict[str, Any]]] = None
                ) -> Dict[str, List[str]]:
        """unit -> the machines where it "runs" now (by the fake drivers)."""
        out: Dict[str, List[str]] = {}
        for name, m in (machines or self.machines()).items():
            for unit in m["running"]:
                out.setdefault(unit, []).append(name)
        return out

    def counts(self, machines: Optional[Dict[str, Dict[str, Any]]] = None
               ) -> Dict[str, Dict[str, Dict[str, int]]]:
        """machine -> {"starts": {unit: n}, "stops": {unit: n}}: what the drivers did."""
        return {name: {"starts": m["starts"], "stops": m["stops"]}
                for name, m in (machines or self.machines()).items()}


def wait_until(what: str, predicate: Any, timeout: float, poll: float = 0.5,
               what_else: Any = None) -> Any:
    """Poll until truthy; raise naming ``what`` and the last value, or ``what_else()``
    (bounds a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    if what_else is not None:
        last = what_else()
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                         f"last: {str(last)[:2000]}")
