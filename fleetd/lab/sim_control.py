"""The simulator's control socket: its ops, and a client for tests and benchmarks.

One JSON object a line each way over ``DIR/sim.sock``. A request names an ``op`` and,
for the levers, the ``machines`` it pulls (a list of names); the answer is ``{"ok":
true, ...}`` or ``{"ok": false, "error": ...}`` naming what was wrong (an unknown op or
machine, a bad field). Nothing is done unless the whole request is valid.

- ``kill``: the machine loses power: listener, connections, agent and programs gone.
- ``revive``: a killed machine boots again on its port: a fresh agent on its old state
  directory (whose records it finds dead: nothing "ran" across the kill).
- ``cut``/``heal``: its network drops everything silently (no FIN, no RST), or not.
- ``slow``: every chunk either way is ``delay`` seconds late.
- ``fail``: ``units`` (names) "exit" with status 1 on each of the machines.
- ``machines``: each machine's state and its driver's counts (sim_host.SimMachine.report),
  and how often the simulator's own loop stalled (its machines all silent meanwhile).
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from fleetd.lab.sim_host import SimMachine

SOCKET = "sim.sock"
MACHINES = "machines.json"
LEVERS = ("kill", "revive", "cut", "heal", "slow", "fail")


class ControlError(Exception):
    pass


class Simulator(Protocol):
    """What the ops need of fleetd.lab.sim.Simulator (which imports this module)."""

    machines: Dict[str, SimMachine]
    stalls: int
    worst_stall_s: float


def _names(sim: Simulator, msg: Dict[str, Any]) -> List[str]:
    names = msg.get("machines")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ControlError("machines: a list of machine names")
    unknown = [n for n in names if n not in sim.machines]
    if unknown:
        raise ControlError(f"machines: no such machine {', '.join(unknown[:5])}")
    return names


async def apply(sim: Simulator, msg: Any) -> Dict[str, Any]:
    """Do what one request asks (all of it or, if any part is invalid, none)."""
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ControlError('a request is {"op": ..., ...}')
    op = msg["op"]
    if op == "machines":
        return {"ok": True, "machines": [m.report() for m in sim.machines.values()],
                "stalls": sim.stalls, "worst_stall_s": sim.worst_stall_s}
    if op not in LEVERS:
        raise ControlError(f"op: {op!r} is not one of machines, {', '.join(LEVERS)}")
    names = _names(sim, msg)
    machines = [sim.machines[n] for n in names]
    if op == "slow":
        delay = msg.get("delay")
        if not isinstance(delay, (int, float)) or not math.isfinite(delay) \
                or not 0 <= delay <= 60:
            raise ControlError("delay: seconds, 0 to 60")
        for m in machines:
            m.slow(float(delay))
    elif op == "fail":
        units = msg.get("units")
        if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
            raise ControlError("units: a list of unit names")
        failed = [f"{m.name}/{u}" for m in machines for u in units if m.fail(u)]
        return {"ok": True, "failed": failed}
    elif op == "kill":
        for m in machines:
            m.kill()
    elif op == "revive":
        for m in machines:
            await m.start()
    else:
        for m in machines:
            m.cut(op == "cut")
    return {"ok": True}


class SimControl:
    """A blocking client of a simulator's control socket (tests, bench/scale.py)."""

    def __init__(self, root: str, timeout: float = 60.0) -> None:
        self.root = root
        self.timeout = timeout

    def call(self, op: str, **fields: Any) -> Dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(f"{self.root}/{SOCKET}")
            s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        answer: Dict[str, Any] = json.loads(data)
        if not answer.get("ok"):
            raise ControlError(f"simulator: {op}: {answer.get('error')}")
        return answer

    def lever(self, op: str, machines: Sequence[str], **fields: Any) -> Dict[str, Any]:
        return self.call(op, machines=list(machines), **fields)

    def stalls(self) -> Tuple[int, float]:
        """How often the simulator's loop stalled past a second, and the worst stall."""
        answer = self.call("machines")
        return int(answer["stalls"]), float(answer["worst_stall_s"])

    def machines(self) -> Dict[str, Dict[str, Any]]:
        return {m["name"]: m for m in self.call("machines")["machines"]}

    def listing(self) -> List[Dict[str, Any]]:
        """machines.json: where each machine is, as fleetd is told."""
        with open(f"{self.root}/{MACHINES}") as f:
            result: List[Dict[str, Any]] = json.load(f)
        return result

    def starts(self, machines: Optional[Dict[str, Dict[str, Any]]] = None
               ) -> Dict[str, Dict[str, int]]:
        """unit -> {machine: starts there} over every machine."""
        out: Dict[str, Dict[str, int]] = {}
        for name, m in (machines or self.machines()).items():
            for unit, n in m["starts"].items():
                out.setdefault(unit, {})[name] = n
        return out
