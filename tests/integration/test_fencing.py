"""FenceAfterSec= under a real partition (the host's veth link down, not a hook inside
fleetd or the agent): the cut-off agent stops the unit that asked for fencing - and only
that one - once fleetd has been silent that long, and Restart= does not bring it back
while the cut lasts. When the link returns, fleetd's desired set starts it again where
it is still placed; a unit that could move has moved meanwhile, with never two copies
at once, and the returning host does not start it again. After convergence each unit
runs exactly once."""

from __future__ import annotations

import os
import subprocess
import time

from labkit import ON_BOTH_REGISTRIES, Fleet, alive, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry

UNIT = """[Service]
ExecStart=/bin/sleep 100000
Restart=always
RestartSec=100ms
TimeoutStopSec=5s

[X-Fleet]
MachineMetadata=hostname={host}
"""


def test_a_cut_off_agent_fences_only_the_unit_that_asks(cluster: Fleet, tmp_path) -> None:
    victim = sorted(cluster.machines())[-1]
    fenced, free = "fence-yes.service", "fence-no.service"
    (tmp_path / fenced).write_text(UNIT.format(host=victim) + "FenceAfterSec=3s\n")
    (tmp_path / free).write_text(UNIT.format(host=victim))
    cluster.ctl("start", str(tmp_path / fenced), str(tmp_path / free))
    wait_for(f"both running on {victim}", lambda: cluster.placed() == {
        fenced: victim, free: victim}, 20)
    wait_for("one copy of each",
             lambda: len(cluster.copies(fenced)) == len(cluster.copies(free)) == 1)
    before_fenced, before_free = cluster.copies(fenced), cluster.copies(free)
    agent_log = os.path.join(cluster.host(victim).state_dir, "agent.log")
    link = f"{cluster.host(victim).netns}-br"

    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    cut = time.monotonic()
    try:
        wait_for("the fenced unit stopped on the cut-off host",
                 lambda: not any(alive(p) for p in before_fenced), 15)
        # fleetd pings every second: 3s of silence cannot be over before 2s of cut
        assert time.monotonic() - cut > 2.0
        assert all(alive(p) for p in before_free)  # no FenceAfterSec=: it keeps running
        wait_for(f"{victim} lost", lambda: cluster.machines()[victim]["state"] == "lost", 20)
        # seconds later, still cut off: Restart=always did not bring it back
        assert cluster.copies(fenced) == []
        assert all(alive(p) for p in before_free)
        with open(agent_log) as f:
            text = f.read()
        assert f"{fenced}: stopping: fenced: no word from fleetd for " in text
        assert "(FenceAfterSec=3s)" in text
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)

    wait_for(f"{victim} up again", lambda: cluster.machines()[victim]["state"] == "up", 30)
    # pinned there: fleetd's desired set, sent as the session resumes, starts it again
    wait_for("the fenced unit running again", lambda: cluster.placed().get(fenced) == victim
             and len(cluster.copies(fenced)) == 1, 30)
    wait_for("the other one running", lambda: cluster.placed().get(free) == victim
             and len(cluster.copies(free)) == 1, 30)
    time.sleep(1.0)  # settled: nothing starts a second copy after convergence
    assert len(cluster.copies(fenced)) == 1 and len(cluster.copies(free)) == 1
    assert not set(cluster.copies(fenced)) & set(before_fenced)


def test_a_fenced_unit_moves_without_ever_running_twice(cluster: Fleet, tmp_path) -> None:
    first, second = sorted(cluster.machines())[1:]
    fenced = "fence-move.service"
    (tmp_path / fenced).write_text(
        UNIT.format(host=f"{first} hostname={second}").replace(
            "TimeoutStopSec=5s", "TimeoutStopSec=1s") + "FenceAfterSec=3s\n")
    cluster.ctl("start", str(tmp_path / fenced))
    victim = wait_for("it runs", lambda: cluster.placed().get(fenced))
    other = second if victim == first else first
    wait_for("one copy", lambda: len(cluster.copies(fenced)) == 1)
    most = 0

    def moved() -> bool:
        nonlocal most
        running = cluster.programs().get(fenced, {})
        most = max(most, len(running))
        return list(running.values()) == [other] and cluster.placed().get(fenced) == other

    link = f"{cluster.host(victim).netns}-br"
    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    try:
        wait_for(f"it runs on {other} only", moved, 30)
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    wait_for(f"{victim} up again", lambda: cluster.machines()[victim]["state"] == "up", 30)
    # the returning agent gets a current set (without the unit), not the one from before
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert moved(), cluster.programs().get(fenced, {})
        time.sleep(0.02)
    assert most == 1, "two copies ran at once"
