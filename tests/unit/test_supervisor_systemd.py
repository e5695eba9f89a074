"""The supervisor's Driver=systemd wiring, against a fake systemd driver: start through
the driver, poll its view, report changes, stop, forget, re-adopt after a restart.
(The driver itself is tested against a real systemd in tests/integration.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fleetd import protocol
from fleetd.agent import systemd_units
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.testing.systemd import FakeSystemd, status
from fleetd.testing.waiting import until

UNIT = {"name": "sd.service", "hash": "h" * 64, "want": protocol.WANT_RUNNING,
        "driver": "systemd", "config": {"unit_text": "[Service]\nExecStart=/bin/true\n"},
        "generation": 0}


class Harness:
    def __init__(self, root: Path, fake: FakeSystemd) -> None:
        self.reports: List[Dict[str, Any]] = []
        self.sup = Supervisor(AgentState(str(root)), "m1", self._emit, backend=NoneBackend("test"))
        self.sup.drivers["systemd"] = fake
        self.sup.systemd.driver = fake

    def _emit(self, data: bytes) -> None:
        msg = json.loads(data)
        if msg["type"] == "unit":
            self.reports.append(msg["unit"])

    def states(self) -> List[str]:
        return [r["state"] for r in self.reports]


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_units, "POLL_S", 0.02)


def test_start_poll_stop_forget(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeSystemd()
        h = Harness(tmp_path, fake)
        h.sup.recover()
        h.sup.set_desired([UNIT])
        await until(lambda: "running" in h.states())
        assert h.reports[-1]["pid"] == 4242
        # systemd restarts it by itself: the poll reports its pid and NRestarts
        fake.now["sd.service"] = status("running", pid=5151, restarts=1)
        await until(lambda: h.reports[-1]["pid"] == 5151)
        assert h.reports[-1]["restarts"] == 1
        # it gives up (its own start limit): failed, with systemd's reason
        fake.now["sd.service"] = status("failed", error="restarted too often")
        await until(lambda: h.reports[-1]["state"] == "failed")
        assert h.reports[-1]["error"] == "restarted too often"
        assert fake.calls == ["start sd.service"]  # no restart of ours on top of systemd's
        h.sup.set_desired([UNIT])  # a new generation restarts it
        h.sup.set_desired([{**UNIT, "generation": 1}])
        await until(lambda: fake.calls.count("start sd.service") == 2)
        h.sup.set_desired([{**UNIT, "generation": 1, "want": protocol.WANT_STOPPED}])
        await until(lambda: h.reports[-1]["state"] == "stopped")
        assert "stop sd.service" in fake.calls
        h.sup.set_desired([])
        await until(lambda: "forget sd.service" in fake.calls)

    asyncio.run(scenario())


def test_ran_out_on_its_own_is_exited(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeSystemd()
        h = Harness(tmp_path, fake)
        h.sup.recover()
        h.sup.set_desired([UNIT])
        await until(lambda: "running" in h.states())
        fake.now["sd.service"] = status("stopped")  # nobody asked systemd to stop it
        await until(lambda: h.reports[-1]["state"] == "exited")

    asyncio.run(scenario())


def test_readopted_after_an_agent_restart_and_strays_forgotten(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeSystemd()
        first = Harness(tmp_path, fake)
        first.sup.recover()
        first.sup.set_desired([UNIT])
        await until(lambda: "running" in first.states())
        fake.left = ["sd.service", "stray.service"]
        second = Harness(tmp_path, fake)  # same state directory: a restarted agent
        second.sup.recover()
        assert second.sup.units["sd.service"].state == "running"
        await until(lambda: "forget stray.service" in fake.calls)
        assert fake.calls.count("start sd.service") == 1  # adopted, not started again
        assert "forget sd.service" not in fake.calls

    asyncio.run(scenario())
