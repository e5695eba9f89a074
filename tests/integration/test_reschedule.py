"""Units that keep failing on a machine move by their [X-Fleet] reschedule policy,
avoiding machines where they failed; with no attempts left they stay failed and say
why. Real agents give up on the units (start limit, health check): nothing is faked."""

from __future__ import annotations

from typing import Any, Dict, List

from labkit import ON_BOTH_REGISTRIES, Fleet, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry

POLICY = "RescheduleDelaySec=500ms\nRescheduleMaxDelaySec=2s\n"
FAST_FAIL = ("Restart=on-failure\nRestartSec=100ms\nStartLimitBurst=2\n"
             "StartLimitIntervalSec=30s\n")


def unit_file(fleet: Fleet, name: str) -> Dict[str, Any]:
    return next(f for f in fleet.unit_files() if f["unit"] == name)


def running_on(fleet: Fleet, name: str) -> List[str]:
    return [u["machine"] for u in fleet.units()
            if u["unit"] == name and u["state"] == "running" and u["current"]]


def test_unit_failing_on_one_machine_moves_to_another(cluster: Fleet, tmp_path) -> None:
    marker = tmp_path / "first-machine"
    # fails (start limit hit) on whichever machine it lands on first, runs anywhere else
    script = (f"m={{{{ machine.name }}}}; [ -e {marker} ] || echo $m > {marker}; "
              f"[ \"$(cat {marker})\" = $m ] && exit 3; exec sleep 100000")
    (tmp_path / "flaky.service").write_text(
        f"[Service]\nExecStart=/bin/sh -c '{script}'\n{FAST_FAIL}"
        f"[X-Fleet]\nRescheduleAttempts=3\n{POLICY}")
    cluster.ctl("start", "--no-block", str(tmp_path / "flaky.service"))
    wait_for("flaky.service running on another machine", lambda: marker.exists() and [
        m for m in running_on(cluster, "flaky.service") if m != marker.read_text().strip()],
        30)
    first = marker.read_text().strip()
    info = unit_file(cluster, "flaky.service")
    assert info["reschedule"]["used"] == 1 and info["reschedule"]["attempts"] == 3
    assert [f["machine"] for f in info["reschedule"]["failures"]] == [first]
    assert "start limit" in info["reschedule"]["failures"][0]["reason"]
    assert info["reason"].startswith(f"failed on {first}: ")
    assert "(reschedule attempt 1 of 3)" in info["reason"]
    listing = cluster.ctl("list-unit-files").stdout
    row = next(line for line in listing.splitlines() if line.startswith("flaky.service"))
    assert " 1/3 " in row and f"failed on {first}" in row
    status = cluster.ctl("status", "flaky.service").stdout
    assert "Rescheduled: 1 of 3 attempts in 1h" in status
    assert f"failed on {first}" in status


def test_unit_failing_everywhere_tries_each_machine_then_stays_failed(cluster: Fleet,
                                                                       tmp_path) -> None:
    (tmp_path / "broken.service").write_text(
        f"[Service]\nExecStart=/bin/sh -c 'exit 7'\n{FAST_FAIL}"
        f"[X-Fleet]\nRescheduleAttempts=2\n{POLICY}")
    cluster.ctl("start", "--no-block", str(tmp_path / "broken.service"))
    wait_for("all attempts used", lambda: "attempts in 1h used"
             in unit_file(cluster, "broken.service")["reason"], 40)
    info = unit_file(cluster, "broken.service")
    failed_on = [f["machine"] for f in info["reschedule"]["failures"]]
    assert len(failed_on) == 3 and len(set(failed_on)) == 3  # never back where it failed
    assert info["machine"] == failed_on[-1]  # it stays, failed, where it failed last
    assert info["reason"].startswith(f"failed on {failed_on[-1]}: ")
    assert "not moved: all 2 reschedule attempts in 1h used" in info["reason"]
    assert info["state"] == "failed"
    # a user's restart is a fresh start: the failures are forgotten (the unit fails
    # again at once, so new ones may follow; none of the old ones stays)
    old_failures = info["reschedule"]["failures"]
    cluster.ctl("restart", "--no-block", "broken.service")
    wait_for("failures forgotten", lambda: not any(
        f in old_failures for f in unit_file(cluster, "broken.service")["reschedule"]["failures"]
    ), 10)


def test_health_check_failing_past_its_threshold_moves_the_unit(cluster: Fleet,
                                                                tmp_path) -> None:
    marker = tmp_path / "first-machine"
    # serves HTTP except on the first machine it lands on
    script = (f"m={{{{ machine.name }}}}; [ -e {marker} ] || echo $m > {marker}; "
              f"[ \"$(cat {marker})\" = $m ] && exec sleep 100000; "
              "exec python3 -m http.server 18081 --bind 127.0.0.1")
    (tmp_path / "sick.service").write_text(
        f"[Service]\nExecStart=/bin/sh -c '{script}'\nRestart=no\n"
        "[X-Check]\nType=http\nURL=http://127.0.0.1:18081/\nInterval=1s\nTimeout=500ms\n"
        "StartGrace=0\nFailureThreshold=1\n"
        f"[X-Fleet]\n{POLICY}")
    cluster.ctl("start", "--no-block", str(tmp_path / "sick.service"))
    wait_for("sick.service running and passing elsewhere", lambda: any(
        u["unit"] == "sick.service" and u.get("health") == "passing" for u in cluster.units()), 30)
    first = marker.read_text().strip()
    info = unit_file(cluster, "sick.service")
    assert info["machine"] != first
    assert [f["machine"] for f in info["reschedule"]["failures"]] == [first]
    assert "health check failing" in info["reschedule"]["failures"][0]["reason"]
