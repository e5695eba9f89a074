"""``--block-attempts N`` means what it meant in fleet (issue 14 §3): N attempts, each
fleet's 2-second poll of the unit's state (fleetctl.go: ``defaultSleepTime``,
``waitForState``), so a blocking verb gives up after 2*N seconds; 0 is no limit, which
here is ``--timeout``. Checked on the wait fleetctl asks of fleetd (a scripted API)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.client import Client


class Answers:
    """fleetd as far as a blocking verb sees it: every request accepted, every wait
    reached at once; the waits' paths are kept."""

    def __init__(self) -> None:
        self.waits: List[str] = []

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: float = 60.0) -> Dict[str, Any]:
        if "/wait?" in path:
            self.waits.append(path)
            return {"unit": path.split("/")[3], "reached": True, "why": "running on h1"}
        return {}


def timeouts(monkeypatch: pytest.MonkeyPatch, *args: str) -> List[str]:
    api = Answers()
    monkeypatch.setattr(Client, "request", lambda self, *a, **k: api.request(*a, **k))
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == 0, out.output
    return [w.split("timeout=")[1] for w in api.waits]


@pytest.mark.parametrize(("args", "timeout"), [
    (["start", "--block-attempts", "3", "a.service"], "6.000"),  # 3 attempts of 2 s
    (["start", "--block-attempts", "1", "a.service"], "2.000"),
    (["start", "--block-attempts", "0", "a.service"], "60.000"),  # 0: --timeout's
    (["start", "a.service"], "60.000"),
    (["start", "--timeout", "5", "a.service"], "5.000"),
    (["stop", "--block-attempts", "10", "a.service"], "20.000"),
    (["unload", "--block-attempts", "2", "a.service"], "4.000"),
    (["load", "--block-attempts", "2", "a.service"], "4.000"),
    (["restart", "--block-attempts", "4", "a.service"], "8.000"),
])
def test_block_attempts_are_fleets_two_second_attempts(
        monkeypatch: pytest.MonkeyPatch, args: List[str], timeout: str) -> None:
    assert timeouts(monkeypatch, *args) == [timeout]


def test_destroy_waits_as_many_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert timeouts(monkeypatch, "destroy", "--block-attempts", "5", "a.service",
                    "b.service") == ["10.000", "10.000"]


def test_help_says_what_an_attempt_is() -> None:
    text = " ".join(CliRunner().invoke(cli, ["start", "--help"]).output.split())
    assert "--block-attempts N Give up after N attempts, as fleet did" in text
    assert "each attempt waits 2s" in text and "0: no limit but --timeout" in text
