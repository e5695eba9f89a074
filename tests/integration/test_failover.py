"""A machine cut off by a real partition (its veth link down, not a killed process):
lost after its TTL, its units rescheduled onto the other machines; when the link comes
back, its stale copies are stopped as soon as its session resumes — and after
convergence each unit runs exactly once."""

from __future__ import annotations

import subprocess

from labkit import ON_BOTH_REGISTRIES, Fleet, alive, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry


def test_partition_moves_units_and_the_return_stops_stale_copies(cluster: Fleet,
                                                                 tmp_path) -> None:
    names = [f"p{i}.service" for i in range(6)]
    for name in names:
        (tmp_path / name).write_text("[Service]\nExecStart=/bin/sleep 100000\n")
    cluster.ctl("start", *(str(tmp_path / n) for n in names))
    before = cluster.placed()
    victim = before["p0.service"]
    moved = [n for n in names if before[n] == victim]
    stale = {n: cluster.copies(n) for n in moved}
    link = f"{cluster.host(victim).netns}-br"

    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    try:
        wait_for(f"{victim} lost", lambda: cluster.machines()[victim]["state"] == "lost", 20)
        assert "silent for" in cluster.machines()[victim]["error"]
        wait_for("its units running elsewhere", lambda: all(
            cluster.placed().get(n) not in (None, victim) for n in moved), 20)
        # cut off, the victim's agent goes on running its copies (no fencing asked)
        assert all(alive(pid) for pids in stale.values() for pid in pids)
        reason = next(f["reason"] for f in cluster.unit_files() if f["unit"] == moved[0])
        assert f"machine {victim} was lost" in reason
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)

    wait_for(f"{victim} up again", lambda: cluster.machines()[victim]["state"] == "up", 30)
    wait_for("stale copies stopped", lambda: not any(
        alive(pid) for pids in stale.values() for pid in pids), 20)
    for name in names:
        assert len(cluster.copies(name)) == 1, f"{name} runs {len(cluster.copies(name))} times"
    assert set(cluster.placed()) == set(names)
    # and fleetd still shuts down (it once hung on a session's read after a partition)
    assert cluster.proc is not None
    cluster.proc.terminate()
    cluster.proc.wait(10)
