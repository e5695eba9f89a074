"""A supervisor wired to a fake systemd driver (fleetd.testing.driver.FakeDriver), for
unit tests of the agent's Driver=systemd runner: the drivers and the cgroups are
injected, nothing of the host is probed. The real driver is tested against a real
systemd host in tests/integration.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.testing.driver import FakeDriver

FAST_S = 0.02  # the harness's systemd poll and fencing look: tests need not wait a second


class Supervised:
    """A supervisor (machine m1, no cgroups) whose only driver is ``fake`` (a new
    FakeDriver by default; share one to play an agent restart), and the ``unit``
    reports it emits, in order. ``fence_check_s``: its fencing timer's longest sleep."""

    def __init__(self, root: str, fake: Optional[FakeDriver] = None,
                 fence_check_s: float = FAST_S) -> None:
        self.fake = fake if fake is not None else FakeDriver()
        self.reports: List[Dict[str, Any]] = []
        self.sup = Supervisor(AgentState(root), "m1", self._emit, NoneBackend("test"),
                              {self.fake.name: self.fake}, systemd_poll_s=FAST_S,
                              fence_check_s=fence_check_s)

    def _emit(self, data: bytes) -> None:
        msg = json.loads(data)
        if msg["type"] == "unit":
            self.reports.append(msg["unit"])

    def states(self) -> List[str]:
        return [r["state"] for r in self.reports]

    def last(self, name: str) -> Dict[str, Any]:
        """The last report of unit ``name`` ({} before the first)."""
        return ([r for r in self.reports if r["name"] == name] or [{}])[-1]

    def starts(self, name: str) -> int:
        return self.fake.calls.count(f"start {name}")
