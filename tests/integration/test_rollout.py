"""Rolling updates in the lab (issue 16): a template's new content reaches its three
running instances one healthy copy at a time, watched from outside (HTTP every 50 ms
to each host's address), and a broken new version with AutoRevert= stops after its
first copy and goes back. Lab ``fy`` (10.95.0.0/24), three hosts; SQLite and etcd."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from labkit import ON_BOTH_REGISTRIES, Fleet, lab_slot, reset_host, wait_for

from fleetd.lab.netns import Lab

pytestmark = ON_BOTH_REGISTRIES  # each also on a real one-member etcd registry

PORT = 18300
# serves its version on /, and /health: 200, or 500 for a version named broken*
SERVE = """\
import http.server, sys
version, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = self.path == "/health" and version.startswith("broken")
        body = version.encode()
        self.send_response(500 if bad else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((address, port), H).serve_forever()
"""

TEMPLATE = """\
[Unit]
Description=versioned web %i

[Service]
ExecStart={python} {script} {version} {{{{ machine.address }}}} {port}
Restart=always
RestartSec=200ms

[X-Fleet]
Conflicts=web@*.service

[X-Check]
Type=http
URL=http://{{{{ machine.address }}}}:{port}/health
Interval=1s
Timeout=400ms
FailureThreshold=1

[X-Update]
MinHealthySec=2s
HealthyDeadlineSec=8s
{extra}
"""
NAMES = [f"web@{i}.service" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def fy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, sshd, cgroups)")
    with lab_slot("fy"):
        lab = Lab(str(tmp_path_factory.mktemp("fy-lab")), prefix="fy", subnet="10.95.0")
        lab.down()  # what a crashed run of this slot left
        try:
            lab.up(3)
            yield lab
        finally:
            lab.down()


@pytest.fixture
def fleet(fy_lab: Lab, tmp_path: Any, registry: Optional[str]) -> Iterator[Fleet]:
    f = Fleet(fy_lab, str(tmp_path), registry=registry)
    f.start()
    for h in fy_lab.hosts():
        f.add(h)
    wait_for("3 machines up", lambda: all(m["state"] == "up"
                                          for m in f.machines().values()), 20)
    yield f
    f.stop()
    for h in fy_lab.hosts():
        reset_host(fy_lab, h)


def write_template(tmp_path: Path, version: str, extra: str = "") -> Path:
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    path = tmp_path / "web@.service"
    path.write_text(TEMPLATE.format(python=sys.executable, script=script, version=version,
                                    port=PORT, extra=extra))
    return path


def answers(lab: Lab) -> Dict[str, Optional[str]]:
    """Each host's answer on the port (its version), None where nothing answers."""
    out: Dict[str, Optional[str]] = {}
    for h in lab.hosts():
        try:
            with urllib.request.urlopen(f"http://{h.address}:{PORT}/", timeout=0.5) as r:
                out[h.name] = r.read().decode()
        except (OSError, http.client.HTTPException):  # refused, or cut off mid-answer
            out[h.name] = None
    return out


class Sampler:
    """Every ~50 ms, from outside: what each host answers."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.samples: List[Dict[str, Optional[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(answers(self.lab))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def one_step_at_a_time(self, old: str, new: str) -> None:
        """At least 2 of 3 hosts answered in every sample, and each step was seen from
        outside: one copy on ``new``, then two."""
        worst = min(sum(v is not None for v in x.values()) for x in self.samples)
        assert worst >= 2, [x for x in self.samples
                            if sum(v is not None for v in x.values()) < 2][:3]
        mixed = {tuple(sorted(v for v in x.values() if v)) for x in self.samples}
        assert (old, new, new) in mixed and (old, old, new) in mixed, mixed


def start_v1(fleet: Fleet, tmp_path: Path, lab: Lab, extra: str = "") -> None:
    write_template(tmp_path, "v1", extra)
    fleet.ctl("start", *(str(tmp_path / n) for n in NAMES))
    wait_for("3 hosts answering v1", lambda: list(answers(lab).values()) == ["v1"] * 3, 30)


def status(fleet: Fleet) -> str:
    row = next(f for f in fleet.unit_files() if f["unit"] == "web@.service")
    return str(row.get("reason") or "")


def test_new_content_rolls_with_two_of_three_answering_throughout(
        fleet: Fleet, fy_lab: Lab, tmp_path: Path) -> None:
    start_v1(fleet, tmp_path, fy_lab)
    with Sampler(fy_lab) as s:
        write_template(tmp_path, "v2")
        fleet.ctl("submit", "--replace", str(tmp_path / "web@.service"))
        wait_for("all 3 answering v2", lambda: list(answers(fy_lab).values()) == ["v2"] * 3,
                 90)
        wait_for("the rollout done", lambda: status(fleet).endswith("on all 3 copies"), 30)
        # and back, the same way
        assert "web@.service: back to v1 (" in fleet.ctl("rollback", "web@.service").stdout
        wait_for("all 3 answering v1", lambda: list(answers(fy_lab).values()) == ["v1"] * 3,
                 90)
        wait_for("the rollback done", lambda: status(fleet).endswith("on all 3 copies"), 30)
    assert len(s.samples) > 100, len(s.samples)
    s.one_step_at_a_time("v1", "v2")
    assert status(fleet).startswith("v3 (")  # v1's content again, as version 3
    history = fleet.ctl("history", "web@.service").stdout
    assert "rolled back by v3 (rollback to v1 by root (unix socket))" in history, history


def test_a_broken_version_stops_after_one_copy_and_auto_reverts(
        fleet: Fleet, fy_lab: Lab, tmp_path: Path) -> None:
    start_v1(fleet, tmp_path, fy_lab, extra="AutoRevert=yes")
    with Sampler(fy_lab) as s:
        write_template(tmp_path, "broken2", extra="AutoRevert=yes")
        fleet.ctl("submit", "--replace", str(tmp_path / "web@.service"))
        wait_for("the revert", lambda: "AutoRevert" in status(fleet), 60)
        wait_for("the revert done", lambda: " on all 3 copies (AutoRevert: v2" in status(fleet),
                 60)
        wait_for("all 3 answering v1", lambda: list(answers(fy_lab).values()) == ["v1"] * 3,
                 30)
    broken_at_once = max(sum(v == "broken2" for v in x.values()) for x in s.samples)
    assert broken_at_once == 1  # the first copy, and no other
    assert "web@1.service failed: " in status(fleet)
    history = fleet.ctl("history", "web@.service").stdout.splitlines()
    assert history[2].startswith("v2 ") and \
        "failed: reverted by v3 (AutoRevert: v2 (" in history[2], history
    # the reason is the copy's own: its check failing restarted it to its start limit
    # (or it was not healthy by HealthyDeadlineSec=, whichever came first)
    assert "web@1.service failed: " in history[2] and (
        "health check failing" in history[2] or "HealthyDeadlineSec=" in history[2]), history
    assert history[3].startswith("v3 *") and "AutoRevert: v2 (" in history[3], history


def test_a_canary_waits_for_promote_and_another_for_rollback(
        fleet: Fleet, fy_lab: Lab, tmp_path: Path) -> None:
    start_v1(fleet, tmp_path, fy_lab)
    with Sampler(fy_lab) as s:
        write_template(tmp_path, "v2")
        fleet.ctl("submit", "--replace", "--canary", "1", str(tmp_path / "web@.service"))
        wait_for("the canary healthy, waiting", lambda: status(fleet).endswith(
            "waiting for fleetctl promote web@.service (or rollback)"), 60)
        time.sleep(3)  # longer than MinHealthySec=: nothing else moves
        assert sorted(v or "" for v in answers(fy_lab).values()) == ["v1", "v1", "v2"]
        assert "v2 promoted" in fleet.ctl("promote", "web@.service").stdout
        wait_for("all 3 answering v2", lambda: list(answers(fy_lab).values()) == ["v2"] * 3,
                 60)
        wait_for("the rollout done", lambda: status(fleet).endswith("on all 3 copies"), 30)

        write_template(tmp_path, "v3")
        fleet.ctl("submit", "--replace", "--canary", "1", str(tmp_path / "web@.service"))
        wait_for("the second canary waiting", lambda: "waiting for fleetctl promote" in
                 status(fleet), 60)
        assert sorted(v or "" for v in answers(fy_lab).values()) == ["v2", "v2", "v3"]
        fleet.ctl("rollback", "web@.service")
        wait_for("all 3 back on v2", lambda: list(answers(fy_lab).values()) == ["v2"] * 3,
                 60)
        wait_for("the rollback done", lambda: status(fleet).endswith("on all 3 copies"), 30)
    worst = min(sum(v is not None for v in sample.values()) for sample in s.samples)
    assert worst >= 2


def test_with_a_spare_host_each_old_copy_serves_until_its_successor_is_healthy(
        fleet: Fleet, fy_lab: Lab, tmp_path: Path) -> None:
    """Two instances on three hosts: each new copy starts on the free host (a hand-off,
    as a drain's), so both instances answer in every sample, and for a while three
    hosts do (the old copy and its successor)."""
    write_template(tmp_path, "v1")
    two = NAMES[:2]
    fleet.ctl("start", *(str(tmp_path / n) for n in two))
    wait_for("2 hosts answering v1", lambda: sorted(
        v for v in answers(fy_lab).values() if v) == ["v1", "v1"], 30)
    with Sampler(fy_lab) as s:
        write_template(tmp_path, "v2")
        fleet.ctl("submit", "--replace", str(tmp_path / "web@.service"))
        wait_for("2 hosts answering v2, and only those", lambda: sorted(
            v or "" for v in answers(fy_lab).values()) == ["", "v2", "v2"], 90)
        wait_for("the rollout done", lambda: status(fleet).endswith("on all 2 copies"), 30)
    answering = [sum(v is not None for v in x.values()) for x in s.samples]
    assert min(answering) >= 2, answering
    assert max(answering) == 3  # an old copy and its successor at once
    out = fleet.ctl("events", "-o", "json", "--unit", "web@1.service").stdout
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert "handoff" in kinds, kinds
