"""The rest of issue 2's verbs, through the real fleetctl against the lab."""

from __future__ import annotations

import os

from labkit import ROOT, Fleet, alive, wait_for

HELLO = os.path.join(ROOT, "units", "hello.service")


def test_start_by_name_cat_and_no_block(cluster: Fleet, tmp_path) -> None:
    out = cluster.ctl("start", "--no-block", HELLO)
    assert out.stdout.strip() == "Triggered unit hello.service start"
    wait_for("hello running", lambda: (cluster.unit("hello.service") or {}).get("state")
             == "running")
    with open(HELLO) as f:
        assert cluster.ctl("cat", "hello.service").stdout == f.read()
    cluster.ctl("stop", "hello.service")
    # a submitted unit starts by its name alone, from anywhere
    again = cluster.ctl("start", "hello.service")
    assert "hello.service running on" in again.stdout
    listing = cluster.ctl("list-unit-files").stdout.splitlines()
    assert listing[0].split() == ["UNIT", "HASH", "DSTATE", "STATE", "TARGET", "RESCHEDULED",
                                  "REASON"]
    assert listing[1].split()[2:4] == ["launched", "running"]

    missing = cluster.ctl("start", "nope.service", check=False)
    assert missing.returncode != 0 and "unit nope.service does not exist" in missing.stderr
    # different content under a submitted name is refused, not silently replaced
    changed = tmp_path / "hello.service"
    changed.write_text("[Service]\nExecStart=/bin/sleep 5\n")
    clash = cluster.ctl("start", str(changed), check=False)
    assert clash.returncode != 0 and "already exists with different content" in clash.stderr


def test_machine_remove_moves_its_units_elsewhere(cluster: Fleet) -> None:
    cluster.ctl("start", HELLO)
    row = cluster.unit("hello.service")
    first, pid = row["machine"], row["pid"]
    cluster.ctl("machine", "remove", first)
    assert not alive(pid), "the removed machine's copy still runs"
    assert first not in cluster.ctl("list-machines").stdout
    moved = wait_for("hello running elsewhere", lambda: (
        (u := cluster.unit("hello.service")) and u["state"] == "running" and u))
    assert moved["machine"] != first
    reason = next(u for u in cluster.unit_files() if u["unit"] == "hello.service")["reason"]
    assert f"machine {first} was removed" in reason


def test_a_broken_agent_command_is_named(fleet: Fleet) -> None:
    host = fleet.host("h2")
    out = fleet.ctl("machine", "add", f"root@{host.address}", "--name", "h2",
                    "--identity", fleet.lab.identity, "--known-hosts", fleet.lab.known_hosts,
                    "--agent-command", "/nonexistent/fleet-agent attach", check=False)
    assert out.returncode != 0
    assert "machine h2: agent command '/nonexistent/fleet-agent attach'" in out.stderr
    assert "No such file or directory" in out.stderr
