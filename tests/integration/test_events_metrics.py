"""Issue 18's events (and metrics), end to end in a real lab (prefix ``fz``, 10.96.0.0/24):
a real fleetd and fleet-agent over SSH. A unit starts; its program is killed from
outside; ``fleetctl events -o json`` shows it submitted, placed (and why), started,
exited and restarted, with reasons, and ``events -f`` printed the same as they came; a
consumer that comes back with the last id it saw gets exactly what it missed.
``/metrics`` parses (Prometheus' parser), with the unit's restarts and the memory and
CPU its agent reads from the unit's cgroup, which ``status`` and ``list-units --fields
unit,cpu,memory`` show too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from labkit import FLEETCTL, ROOT, Fleet, lab_slot, reset_host, wait_for
from prometheus_client.parser import text_string_to_metric_families

from fleetd.lab.netns import Lab

UNIT = "[Service]\nExecStart=/bin/sleep 100000\nRestart=always\nRestartSec=100ms\n"


@pytest.fixture(scope="module")
def fz_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, sshd, cgroups)")
    with lab_slot("fz"):
        lab = Lab(str(tmp_path_factory.mktemp("fz-lab")), prefix="fz", subnet="10.96.0")
        lab.down()  # what a crashed run of this slot left
        try:
            lab.up(1)
            yield lab
        finally:
            lab.down()


@pytest.fixture
def fleet(fz_lab: Lab, tmp_path: Any) -> Iterator[Fleet]:
    f = Fleet(fz_lab, str(tmp_path))
    f.start()
    for h in fz_lab.hosts():
        f.add(h)
    wait_for("the machine up", lambda: all(m["state"] == "up"
                                           for m in f.machines().values()), 20)
    yield f
    f.stop()
    for h in fz_lab.hosts():
        reset_host(fz_lab, h)


def events(fleet: Fleet, *args: str) -> List[Dict[str, Any]]:
    out = fleet.ctl("events", "-o", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def scrape(fleet: Fleet) -> Dict[str, Dict[Any, float]]:
    """name -> {labels (sorted items): value} of /metrics, read by Prometheus' parser."""
    text = b"".join(fleet.api.stream("/metrics", timeout=30)).decode()
    out: Dict[str, Dict[Any, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


class Follower:
    """``fleetctl events -f -o json ARGS`` running beside the test, its lines read as
    they come (a thread: the command never ends by itself)."""

    def __init__(self, fleet: Fleet, *args: str) -> None:
        env = dict(os.environ, FLEETCTL_ENDPOINT=fleet.endpoint)
        self.proc = subprocess.Popen([FLEETCTL, "events", "-f", "-o", "json", *args],
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def seen(self) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        self.reader.join(10)


def kinds(evs: List[Dict[str, Any]], unit: str) -> List[str]:
    return [e["kind"] for e in evs if e["unit"] == unit]


def test_a_killed_program_shows_in_the_events_and_a_consumer_resumes(
        fleet: Fleet, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    machine = next(iter(fleet.machines()))
    seen = events(fleet, "--machine", machine)
    assert seen and seen[-1]["kind"] == "machine-up", seen
    assert "answered" in seen[-1]["reason"]
    last_seen = max(e["id"] for e in events(fleet))  # the consumer goes away here
    # another follows from there on (it may take its first look after the submit)
    follower = Follower(fleet, "--unit", "ev.*", "--after", str(last_seen))
    request.addfinalizer(follower.stop)  # even if the test fails before it is stopped

    unit = tmp_path / "ev.service"
    unit.write_text(UNIT)
    fleet.ctl("start", str(unit))
    row = wait_for("the unit running", lambda: (
        (u := fleet.unit("ev.service")) and u["state"] == "running" and u["pid"] and u))
    os.kill(row["pid"], 9)
    wait_for("the unit restarted", lambda: (
        (u := fleet.unit("ev.service")) and u["state"] == "running"
        and u["pid"] not in (None, row["pid"])))
    wait_for("the restart among the events",
             lambda: "restarted" in kinds(events(fleet, "--unit", "ev.*"), "ev.service"))
    followed = wait_for("the restart followed by events -f", lambda: (
        "restarted" in kinds(follower.seen(), "ev.service") and follower.seen()))
    follower.stop()

    evs = events(fleet, "--unit", "ev.*")
    assert kinds(evs, "ev.service") == ["submitted", "placed", "started", "exited",
                                        "restarted"], evs
    by_kind = {e["kind"]: e for e in evs}
    assert by_kind["submitted"]["reason"] == "submitted, desired launched"
    assert by_kind["placed"]["machine"] == machine and by_kind["placed"]["reason"]
    assert by_kind["started"]["reason"] == f"running, pid {row['pid']}"
    assert "killed by SIGKILL" in by_kind["exited"]["reason"] and "Restart=" in \
        by_kind["exited"]["reason"]
    assert by_kind["restarted"]["restarts"] == 1
    assert "restart 1" in by_kind["restarted"]["reason"]
    assert all(e["machine"] == machine for e in evs if e["kind"] != "submitted")

    # the consumer comes back with the last id it saw: exactly what came since
    everything = events(fleet, "-n", "10000")
    missed = [e for e in everything if e["id"] > last_seen]
    resumed = events(fleet, "--after", str(last_seen))
    assert resumed == missed and [e["id"] for e in resumed] == list(
        range(last_seen + 1, last_seen + 1 + len(resumed)))
    assert {e["id"] for e in evs} <= {e["id"] for e in resumed}
    assert followed == evs  # -f printed them as they came, the same events
    # the table says the same, with the reasons
    table = fleet.ctl("events", "--unit", "ev.service").stdout
    assert "restarted" in table and "restart 1" in table


def test_metrics_show_the_units_restarts(fleet: Fleet, tmp_path: Path) -> None:
    unit = tmp_path / "mx.service"
    unit.write_text(UNIT)
    fleet.ctl("start", str(unit))
    row = wait_for("the unit running", lambda: (
        (u := fleet.unit("mx.service")) and u["state"] == "running" and u["pid"] and u))
    os.kill(row["pid"], 9)
    wait_for("the unit restarted", lambda: (
        (u := fleet.unit("mx.service")) and u["state"] == "running"
        and u["pid"] not in (None, row["pid"])))
    key = (("machine", row["machine"]), ("unit", "mx.service"))
    found = wait_for("the restart in /metrics", lambda: (
        (m := scrape(fleet)) and m["fleetd_unit_restarts_total"].get(key) == 1 and m))
    assert found["fleetd_units"][(("desired", "launched"),)] == 1
    assert found["fleetd_machines"][(("state", "up"),)] == 1
    assert found["fleetd_unit_health"][(("health", "unknown"), *key)] == 1
    assert found["fleetd_engine_passes_total"][(("outcome", "done"),)] >= 1
    assert found["fleetd_placements_total"][(("kind", "placed"),)] >= 1
    assert found["fleetd_api_requests_total"][
        (("method", "POST"), ("route", "/v1/units"), ("status", "200"))] >= 1
    # usage, read by the agent from the unit's cgroup when /metrics asks
    assert found["fleetd_unit_memory_bytes"][key] > 0
    assert found["fleetd_unit_cpu_seconds_total"][key] >= 0
    assert found["fleetd_unit_oom_kills_total"][key] == 0
    # and the same usage where an operator looks: status, list-units --fields
    status = fleet.ctl("status", "-n", "0", "mx.service").stdout
    assert re.search(r"restarts 1, health unknown, memory [0-9.]+[KMG], cpu [0-9.]+s",
                     status), status
    listed = fleet.ctl("list-units", "--no-legend", "--fields", "unit,cpu,memory").stdout
    assert re.search(r"^mx\.service +[0-9.]+s +[0-9.]+[KMG]$", listed, re.M), listed
