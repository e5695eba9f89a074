"""The supervisor's RELOAD (OnPeersChange=reload, fleetd.agent.reloading) with the real
exec driver and real processes: ExecReload= runs with the new spec's environment and
$MAINPID, the program keeps running (same pid) and the unit reports the new hash; a
failing ExecReload= falls back to a restart; without ``reload`` a new hash restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from fleetd import protocol
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.drivers.exec import ExecDriver
from fleetd.testing.waiting import until

BASE = "c" * 64


def spec(content: str, peers: str, out: Path, reload: Optional[bool] = True,
         command: str = 'echo "$PEERS $MAINPID" > "$OUT"') -> Dict[str, Any]:
    config = {"commands": [{"words": ["/bin/sleep", "60"]}],
              "reload": [{"words": ["/bin/sh", "-c", command]}],
              "environment": {"PEERS": peers, "OUT": str(out)}, "timeout_stop_s": 5.0}
    s: Dict[str, Any] = dict(protocol.unit_spec("lb.service", content * 64,
                                                protocol.WANT_RUNNING, "exec", config))
    s["base"] = BASE
    if reload:
        s["reload"] = True
    return s


class Harness:
    def __init__(self, root: Path) -> None:
        self.reports: List[Dict[str, Any]] = []
        self.sup = Supervisor(AgentState(str(root)), "m1", self._emit, NoneBackend("test"),
                              {"exec": ExecDriver(NoneBackend("test"))})

    def _emit(self, data: bytes) -> None:
        msg = json.loads(data)
        if msg["type"] == "unit":
            self.reports.append(msg["unit"])

    def last(self) -> Dict[str, Any]:
        return self.reports[-1] if self.reports else {}

    async def running(self, s: Dict[str, Any]) -> int:
        """Give it ``s``; the pid once it reports ``s`` running."""
        self.sup.set_desired([s])  # type: ignore[list-item]
        await until(lambda: self.last().get("hash") == s["hash"]
                    and self.last().get("state") == protocol.RUNNING
                    and self.last().get("pid"), timeout=10.0)
        return int(self.last()["pid"])

    async def close(self) -> None:
        self.sup.set_desired([])
        await until(lambda: "lb.service" not in self.sup.units, timeout=10.0)


def run(root: Path, first: Dict[str, Any], second: Dict[str, Any]) -> List[int]:
    async def scenario() -> List[int]:
        h = Harness(root / "agent")
        try:
            return [await h.running(first), await h.running(second)]
        finally:
            await h.close()
    return asyncio.run(scenario())


def test_a_reload_keeps_the_program_and_takes_the_new_spec(tmp_path: Path) -> None:
    out = tmp_path / "reloaded"
    before, after = run(tmp_path, spec("a", "h2", out), spec("b", "h3", out))
    assert after == before  # the same process: reloaded, not restarted
    assert out.read_text().split() == ["h3", str(before)]  # the new env, $MAINPID


def test_a_failing_reload_is_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "reloaded"
    before, after = run(tmp_path, spec("a", "h2", out),
                        spec("b", "h3", out, command="exit 3"))
    assert after != before


def test_without_reload_a_new_hash_is_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "reloaded"
    before, after = run(tmp_path, spec("a", "h2", out, reload=None),
                        spec("b", "h3", out, reload=None))
    assert after != before and not out.exists()
