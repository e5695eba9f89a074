"""Issue 4 through the whole stack: [X-Check] verdicts reach list-units and status, a
failing check restarts the unit through Restart=, and fleetctl journal reads (and
follows) a unit's output on its host through fleetd."""

from __future__ import annotations

import os
import subprocess
import time

from labkit import FLEETCTL, ROOT, Fleet, wait_for

SERVED = """\
[Service]
WorkingDirectory=/tmp
ExecStart=/usr/bin/python3 -m http.server 18080 --bind {{ machine.address }}
[X-Check]
Type=http
URL=http://{{ machine.address }}:18080/
Interval=1s
Timeout=500ms
"""

DOOMED = """\
[Service]
ExecStart=/bin/sleep 100000
Restart=always
RestartSec=200ms
[X-Check]
Type=tcp
Address=127.0.0.1:1
Interval=1s
Timeout=200ms
FailureThreshold=2
"""


def unit_row(fleet: Fleet, name: str) -> dict:
    return fleet.unit(name) or {}


def test_health_checks_report_and_a_failing_one_restarts_the_unit(cluster: Fleet,
                                                                  tmp_path) -> None:
    (tmp_path / "served.service").write_text(SERVED)
    (tmp_path / "doomed.service").write_text(DOOMED)
    cluster.ctl("start", str(tmp_path / "served.service"), str(tmp_path / "doomed.service"))

    wait_for("served passing", lambda: unit_row(cluster, "served.service").get("health")
             == "passing", 15)
    listing = cluster.ctl("list-units").stdout
    assert any(line.split()[0] == "served.service" and line.split()[-1] == "passing"
               for line in listing.splitlines())
    assert "health passing" in cluster.ctl("status", "served.service").stdout

    first = unit_row(cluster, "doomed.service")["pid"]
    restarted = wait_for("doomed restarted by its failing check", lambda: (
        (u := unit_row(cluster, "doomed.service")).get("restarts", 0) >= 1
        and u.get("pid") not in (None, first) and u), 20)
    # it was the check that ended it (the program itself never exits), as the host says
    with open(os.path.join(cluster.host(restarted["machine"]).state_dir, "agent.log")) as f:
        agent_log = f.read()
    assert "doomed.service: health failing (127.0.0.1:1" in agent_log
    assert "health check failing" in agent_log


def test_journal_shows_and_follows_a_units_output(cluster: Fleet, tmp_path) -> None:
    (tmp_path / "ticker.service").write_text(
        "[Service]\nExecStart=/bin/sh -c 'i=0; while true; do i=$((i+1)); "
        "echo tick $i; sleep 0.2; done'\n")
    cluster.ctl("start", str(tmp_path / "ticker.service"))
    wait_for("a few ticks", lambda: "tick 3" in cluster.ctl("journal", "-n", "50",
                                                            "ticker.service").stdout)
    two = cluster.ctl("journal", "-n", "2", "ticker.service").stdout.splitlines()
    assert len(two) == 2 and all(line.startswith("tick ") for line in two)

    env = dict(os.environ, FLEETCTL_ENDPOINT=cluster.endpoint)
    follower = subprocess.Popen([FLEETCTL, "journal", "-f", "-n", "1", "ticker.service"],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline().strip() for _ in range(4)]
        numbers = [int(line.split()[1]) for line in seen]
        assert numbers == sorted(numbers) and len(set(numbers)) == 4, seen
    finally:
        follower.terminate()
        follower.wait(5)
    time.sleep(0.3)  # the agent ends the follow when fleetd's stream closes
    bad = cluster.ctl("journal", "nothere.service", check=False)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
