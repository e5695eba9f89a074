"""Re-adoption at scale: 50 programs (exec and JVM units) survive their agent's kill -9,
and the next agent adopts every one of them - same pids, no second copy of anything.

Proof of identity is pid + the exact start tick + membership of the unit's cgroup.
The forged record here passes the first two on purpose (it names a live stranger by
its real pid and start tick), so only the cgroup check stands between the agent and
adopting someone else's process. How long recovery takes is printed, not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest
from agentkit import (
    Attached,
    clean,
    kill_agent,
    program_pids,
    spec,
    unit_cgroup,
    unit_processes,
)
from labkit import alive
from test_java_driver import App, app  # noqa: F401  (the session's tiny jar)

from fleetd.drivers.base import start_ticks

EXEC_UNITS = 42
JAVA_UNITS = 8
ONCE = "ro-e40.service"  # Restart=no
FORGED = "ro-e41.service"
MARK = b"FLEET_UNIT=ro-"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "agent")
    yield d
    clean(d, MARK)


def units_of(jar: Path) -> Dict[str, str]:
    texts = {}
    for i in range(EXEC_UNITS):
        policy = "no" if f"ro-e{i}.service" == ONCE else "always"
        texts[f"ro-e{i}.service"] = (f"[Service]\nExecStart=/bin/sleep {10000 + i}\n"
                                     f"Restart={policy}\nRestartSec=0\n")
    for i in range(JAVA_UNITS):
        texts[f"ro-j{i}.service"] = ("[Service]\nRestart=always\nRestartSec=0\n"
                                     f"[X-Fleet]\nDriver=java\n[X-Java]\nJar={jar}\n")
    return texts


def assert_one_copy_each(state_dir: str, units: Dict[str, Dict[str, object]]) -> None:
    programs = unit_processes()
    for name, u in units.items():
        if u["state"] != "running":
            continue
        # a spare being prepared is, until its exec, a fork of the agent: look again
        deadline = time.monotonic() + 5
        while program_pids(state_dir, name) != [u["pid"]] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert program_pids(state_dir, name) == [u["pid"]], name
        assert programs.get(name) == [u["pid"]], name


def test_fifty_programs_outlive_the_agent_and_are_readopted(state_dir: str, app: App,  # noqa: F811
                                                           tmp_path: Path) -> None:
    texts = units_of(app.jar)
    specs = [spec(name, text) for name, text in texts.items()]
    a = Attached(state_dir)
    t0 = time.monotonic()
    a.desire(*specs)
    a.wait_units(lambda us: len(us) == len(texts) and
                 all(u["state"] == "running" for u in us.values()), timeout=60)
    print(f"\n{len(texts)} units running {time.monotonic() - t0:.2f}s after the desired set")
    pids = {name: int(u["pid"]) for name, u in a.units.items()}
    assert_one_copy_each(state_dir, a.units)
    a.close()

    old_agent = kill_agent(state_dir)
    assert all(alive(p) for p in pids.values()), "a program died with its agent"

    # FORGED's program dies unseen, and its record is made to name a live stranger -
    # with the stranger's real pid *and* start tick, so only the cgroup can tell
    os.kill(pids[FORGED], signal.SIGKILL)
    stranger = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        record_path = Path(state_dir, "units", FORGED + ".json")
        record = json.loads(record_path.read_text())
        record["handle"].update(pid=stranger.pid, start_ticks=start_ticks(stranger.pid))
        record_path.write_text(json.dumps(record))

        t1 = time.monotonic()
        b = Attached(state_dir)  # starts a new agent, which re-adopts from its records
        recovered = time.monotonic() - t1
        assert b.hello["machine_id"] == a.hello["machine_id"]
        adopted = {n: u for n, u in b.units.items() if n != FORGED}
        not_running = {n: u["state"] for n, u in adopted.items() if u["state"] != "running"}
        assert not not_running, not_running
        assert {n: u["pid"] for n, u in adopted.items()} == \
            {n: p for n, p in pids.items() if n != FORGED}
        print(f"re-adoption: a new agent (pid != {old_agent}) reported all "
              f"{len(adopted)} programs running, same pids, {recovered * 1000:.0f} ms after "
              f"its attach was started (agent start + recovery)")

        # the forged record adopted nothing; Restart=always starts the unit afresh
        forged = b.wait_units(lambda us: us[FORGED]["state"] == "running")[FORGED]
        assert forged["pid"] not in (stranger.pid, pids[FORGED])
        assert stranger.poll() is None, "the agent touched a process that is not its own"
        assert forged["restarts"] == 1 and forged["exit_status"] is None

        # adopted programs are watched: a crash is seen, its status honestly unknown,
        # and Restart= applies as to an unclean end
        victim = "ro-e0.service"
        os.kill(pids[victim], signal.SIGKILL)
        os.kill(pids[ONCE], signal.SIGKILL)
        os.kill(pids["ro-j0.service"], signal.SIGKILL)
        b.wait_units(lambda us: us[victim]["state"] == "running"
                     and us[victim]["pid"] != pids[victim]
                     and us["ro-j0.service"]["state"] == "running"
                     and us["ro-j0.service"]["pid"] != pids["ro-j0.service"]
                     and us[ONCE]["state"] == "failed", timeout=20)
        u = b.units[victim]
        assert u["restarts"] == 1 and u["exit_status"] is None
        waiting = [h for h in b.history if h["name"] == victim and h["state"] == "starting"]
        assert waiting and "status unknown" in waiting[0]["error"]
        once = b.units[ONCE]
        assert once["exit_status"] is None and "status unknown" in once["error"]
        assert not unit_cgroup(state_dir, ONCE).pids()

        # never a duplicate: each running unit's cgroup holds exactly its one program
        assert_one_copy_each(state_dir, b.units)
        b.close()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_record_from_an_agent_before_cgroups_is_adopted(state_dir: str) -> None:
    """Upgrading the agent must not start a second copy of what the old one runs: its
    records have no cgroup, so pid + start tick + invocation id are the proof."""
    a = Attached(state_dir)
    text = "[Service]\nExecStart=/bin/sleep 1000\nTimeoutStopSec=2\n"
    a.desire(spec("ro-old.service", text))
    pid = a.wait_state("ro-old.service", "running")["pid"]
    a.close()
    kill_agent(state_dir)
    # what an agent before cgroups left: the program outside any cgroup, no "unit"
    cg = unit_cgroup(state_dir, "ro-old.service")
    for d in cg.directories():  # <mount>/fleet/<machine-id>/<unit>: back to <mount>
        with open(os.path.join(d, "..", "..", "..", "cgroup.procs"), "w") as f:
            f.write(str(pid))
    assert not cg.contains(pid)
    record_path = Path(state_dir, "units", "ro-old.service.json")
    record = json.loads(record_path.read_text())
    del record["handle"]["unit"]
    record_path.write_text(json.dumps(record))

    b = Attached(state_dir)
    u = b.units["ro-old.service"]
    assert (u["state"], u["pid"]) == ("running", pid)
    assert unit_processes().get("ro-old.service") == [pid]
    b.desire(spec("ro-old.service", text, want="stopped"))  # reached by its process group
    b.wait_state("ro-old.service", "stopped")
    assert not alive(pid)
    b.close()
