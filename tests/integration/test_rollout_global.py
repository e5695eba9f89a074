"""A Global unit's rolling update in the lab (issue 16): its new content reaches its
copies on the three hosts one healthy machine at a time, watched from outside (HTTP
every 50 ms to each host's address), and ``fleetctl events`` shows each step (issue 18).
Lab ``fy`` (10.95.0.0/24, shared with test_rollout.py by its slot), three hosts; SQLite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from labkit import Fleet, wait_for
from test_rollout import PORT, SERVE, TEMPLATE, Sampler, answers, fleet, fy_lab

from fleetd.lab.netns import Lab

__all__ = ["fleet", "fy_lab"]  # the fixtures, as test_rollout.py sets them up

UNIT = TEMPLATE.replace("Conflicts=web@*.service", "Global=true").replace(" %i", "")


def write_unit(tmp_path: Path, version: str) -> Path:
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    path = tmp_path / "web.service"
    path.write_text(UNIT.format(python=sys.executable, script=script, version=version,
                                port=PORT, extra=""))
    return path


def status(fleet: Fleet) -> str:
    row = next(u for u in fleet.unit_files() if u["unit"] == "web.service")
    return str(row.get("reason") or "")


def test_a_global_units_new_content_rolls_with_two_of_three_answering(
        fleet: Fleet, fy_lab: Lab, tmp_path: Path) -> None:
    fleet.ctl("start", str(write_unit(tmp_path, "v1")))
    wait_for("3 hosts answering v1", lambda: list(answers(fy_lab).values()) == ["v1"] * 3,
             30)
    with Sampler(fy_lab) as s:
        fleet.ctl("submit", "--replace", str(write_unit(tmp_path, "v2")))
        wait_for("all 3 answering v2", lambda: list(answers(fy_lab).values()) == ["v2"] * 3,
                 90)
        wait_for("the rollout done", lambda: status(fleet).endswith("on all 3 copies"), 30)
    assert len(s.samples) > 50, len(s.samples)
    s.one_step_at_a_time("v1", "v2")
    out = fleet.ctl("events", "-o", "json", "--unit", "web.service").stdout
    events = [json.loads(line) for line in out.splitlines()]
    steps = [(e["kind"], e["machine"]) for e in events if e["kind"].startswith("rollout-")]
    changed = [m for k, m in steps if k == "rollout-change"]
    healthy = [m for k, m in steps if k == "rollout-healthy"]
    hosts = sorted(h.name for h in fy_lab.hosts())
    assert sorted(changed) == hosts and sorted(healthy) == hosts, steps
    # each machine healthy before the next one changes
    order = [k for k, _ in steps if k in ("rollout-change", "rollout-healthy")]
    assert order == ["rollout-change", "rollout-healthy"] * 3, steps
    assert steps[-1] == ("rollout-done", None), steps
    done = next(e for e in events if e["kind"] == "rollout-done")
    assert done["reason"].endswith("on all 3 copies"), done
