"""Restart through a prepared process (fleetd.drivers.spare), with a real agent, real
cgroups and real processes: a unit that restarts at once keeps a /bin/sh waiting in its
cgroups, and its next program is that process, exec'd.

What must hold as without it: nothing of the old run survives into the new one
(KillMode=control-group); limits hold for the program started that way (TasksMax=
exactly, MemoryMax= OOM kill reported as such); re-adoption after kill -9 of the agent;
no prepared process is left once the unit is stopped or removed or the agent stops; a
prepared process is never reported or recorded as the unit's main pid.

No timing is asserted (bench/restart_latency.py measures); only which process runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from agentkit import Attached, agent_pid, clean, kill_agent, machine_id, spec, unit_cgroup
from labkit import alive, wait_for

from fleetd import protocol

MARK = b"FLEET_UNIT=prep-"
FAST = "Restart=always\nRestartSec=0\nStartLimitIntervalSec=0\n"
# first run: sleeps (a marker file tells later runs apart); later runs do MODE, then sleep
PROGRAM = """import json, os, sys, time
mode, marker = sys.argv[1], sys.argv[2]
if not os.path.exists(marker):
    open(marker, "w").close()
elif mode == "hog":
    chunks = [b"x" * (1 << 20) for i in range(400)]
    print("allocated 400 MiB: NOT killed", flush=True)
elif mode == "fork":
    r, w = os.pipe()
    ok = failed = 0
    for i in range(30):
        try:
            pid = os.fork()
        except OSError:
            failed += 1
            continue
        if pid == 0:
            os.close(w); os.read(r, 1); os._exit(0)
        ok += 1
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)
while True:
    time.sleep(1000)
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "agent")
    yield d
    if os.path.exists(os.path.join(d, "machine-id")):
        _kill_cgroup_members(d)  # prepared processes carry no marker: found by cgroup
    clean(d, MARK)


@pytest.fixture
def agent(state_dir: str) -> Iterator[Attached]:
    a = Attached(state_dir)
    if a.hello["facts"]["cgroups"]["version"] not in ("v1", "hybrid"):
        a.close()
        pytest.skip("prepared processes need a cgroup of each run (v1 or hybrid hosts)")
    yield a
    a.close()


def _kill_cgroup_members(state_dir: str) -> None:
    pattern = f"/sys/fs/cgroup/*/fleet/{machine_id(state_dir)}/**/cgroup.procs"
    for path in glob.glob(pattern, recursive=True):
        with open(path) as f:
            for pid in f.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def spares(state_dir: str) -> List[int]:
    """The agent's children that are prepared processes (argv ``fleet-spare``)."""
    found = []
    for pid in _children(agent_pid(state_dir)):
        if _cmdline(pid) == b"fleet-spare\0" and alive(pid):
            found.append(pid)
    return found


def spare_of(state_dir: str, unit: str) -> int:
    """The one prepared process waiting in ``unit``'s cgroups."""
    cg = unit_cgroup(state_dir, unit)

    def waiting() -> Optional[int]:
        mine = [p for p in spares(state_dir) if cg.contains(p)]
        return mine[0] if len(mine) == 1 else None

    return int(wait_for(f"a prepared process for {unit}", waiting, 10))


def _children(pid: int) -> List[int]:
    out: List[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _leaf(pid: int) -> str:
    """The last part of ``pid``'s cgroup in the v2 (membership) tree."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line.strip().rsplit("/", 1)[-1]
    return ""


def _record(state_dir: str, unit: str) -> Dict[str, Any]:
    """The unit's record on disk: what a restarted agent adopts by."""
    with open(os.path.join(state_dir, "units", f"{unit}.json")) as f:
        return dict(json.load(f))


def _program(tmp_path: Path, mode: str, name: str) -> str:
    script = tmp_path / f"{name}.py"
    script.write_text(PROGRAM)
    return f"{sys.executable} {script} {mode} {tmp_path / (name + '.ran')}"


def test_restart_execs_the_prepared_process_and_nothing_of_the_old_run_survives(
        agent: Attached, state_dir: str) -> None:
    name = "prep-tree.service"
    agent.desire(spec(name, "[Service]\nExecStart=/bin/sh -c 'sleep 1000 & exec sleep 1001'\n"
                            + FAST))
    first = agent.wait_state(name, "running")["pid"]
    cg = unit_cgroup(state_dir, name)
    [left] = wait_for("the program's background child", lambda: [
        p for p in cg.pids() if p != first and _cmdline(p).startswith(b"sleep\0")] or None)
    spare = spare_of(state_dir, name)
    # waiting beside the run, in a cgroup of its own below the unit's, and never the unit's
    first_leaf = _leaf(first)
    assert spare not in (first, left)
    assert _leaf(spare) != first_leaf == _leaf(left)
    assert agent.units[name]["pid"] == first
    assert _record(state_dir, name)["handle"]["pid"] == first

    os.kill(first, signal.SIGKILL)
    second = agent.wait_units(lambda u: u[name]["state"] == "running"
                              and u[name]["pid"] != first)[name]["pid"]
    assert second == spare  # the prepared process became the program: no fork, no migration
    wait_for("the new program exec'd", lambda: _cmdline(second) == b"sleep\x001001\x00", 5)
    assert _leaf(second) == _leaf(spare)
    # KillMode=control-group: the old run's child went with it
    wait_for("the old run's child killed", lambda: not alive(left), 5)
    assert _record(state_dir, name)["handle"]["pid"] == second
    # the next run's process is prepared where the old run was; only the new run and it
    # are in the unit's cgroups
    again = spare_of(state_dir, name)
    assert again != second and _leaf(again) == first_leaf
    for pid in cg.pids():
        assert pid == again or _leaf(pid) == _leaf(second)
        assert pid == again or b"FLEET_INVOCATION_ID" in Path(f"/proc/{pid}/environ").read_bytes()
    reported = {u["pid"] for u in agent.history if u["name"] == name and u["pid"]}
    assert reported == {first, second}  # a prepared process is never reported as main pid


def test_limits_hold_for_a_program_started_from_a_prepared_process(
        agent: Attached, state_dir: str, tmp_path: Path) -> None:
    facts = agent.hello["facts"]["cgroups"]
    if not {"memory_max", "tasks_max"} <= set(facts["limits"]):
        pytest.skip(f"this host's cgroups cannot enforce the limits: {facts}")
    forks, hog = "prep-forks.service", "prep-hog.service"
    agent.desire(
        spec(forks, f"[Service]\nExecStart={_program(tmp_path, 'fork', 'forks')}\n"
                    f"TasksMax=4\n{FAST}"),
        spec(hog, f"[Service]\nExecStart={_program(tmp_path, 'hog', 'hog')}\n"
                  f"MemoryMax=64M\n{FAST}"))
    firsts = {}
    prepared = {}
    for unit, ran in ((forks, "forks.ran"), (hog, "hog.ran")):
        firsts[unit] = agent.wait_state(unit, "running")["pid"]
        prepared[unit] = spare_of(state_dir, unit)
        wait_for(f"{unit}'s first run under way", (tmp_path / ran).exists)
    for unit in (forks, hog):
        os.kill(firsts[unit], signal.SIGKILL)
    # TasksMax=4: the program and 3 children, exactly, with a prepared process beside it
    log = Path(state_dir, "logs", f"{forks}.log")
    wait_for("the forker's count", lambda: "ok" in (log.read_text() if log.exists() else ""),
             10)
    assert any(u["name"] == forks and u["state"] == "running" and u["pid"] == prepared[forks]
               for u in agent.read_until(lambda m: any(
                   u["name"] == forks and u["pid"] == prepared[forks] for u in agent.history))
               and agent.history)
    assert json.loads(log.read_text().strip().splitlines()[-1]) == {"ok": 3, "failed": 27}
    # MemoryMax=64M: the program from the prepared process is OOM-killed, and told so
    agent.read_until(lambda m: any(
        u["name"] == hog and u["error"] == "killed by the kernel: out of memory (MemoryMax=64M)"
        for u in agent.history), 30)
    assert any(u["name"] == hog and u["state"] == "running" and u["pid"] == prepared[hog]
               for u in agent.history)
    assert "NOT killed" not in Path(state_dir, "logs", f"{hog}.log").read_text()


def test_readoption_after_agent_kill9_keeps_the_program_and_prepares_anew(
        agent: Attached, state_dir: str) -> None:
    name = "prep-adopt.service"
    agent.desire(spec(name, f"[Service]\nExecStart=/bin/sleep 1002\n{FAST}"))
    program = agent.wait_state(name, "running")["pid"]
    old_spare = spare_of(state_dir, name)
    kill_agent(state_dir)
    agent.close()
    # the dead agent's pipe ends: its prepared process goes by itself
    wait_for("the dead agent's prepared process gone", lambda: not alive(old_spare), 5)
    assert alive(program)
    again = Attached(state_dir)
    try:
        adopted = again.wait_units(lambda u: u.get(name, {}).get("state") == "running")[name]
        assert adopted["pid"] == program
        spare = spare_of(state_dir, name)
        assert spare != old_spare
        os.kill(program, signal.SIGKILL)
        new = again.wait_units(lambda u: u[name]["state"] == "running"
                               and u[name]["pid"] != program)[name]["pid"]
        assert new == spare
    finally:
        again.close()


def test_no_prepared_process_outlives_a_stop_a_removal_or_the_agent(
        agent: Attached, state_dir: str) -> None:
    text = f"[Service]\nExecStart=/bin/sleep 1003\n{FAST}"
    stopped, removed, kept = "prep-stop.service", "prep-rm.service", "prep-kept.service"
    agent.desire(spec(stopped, text), spec(removed, text), spec(kept, text))
    waiting = {}
    for unit in (stopped, removed, kept):
        agent.wait_state(unit, "running")
        waiting[unit] = spare_of(state_dir, unit)
    agent.desire(spec(stopped, text, protocol.WANT_STOPPED), spec(kept, text))
    agent.wait_units(lambda u: u.get(stopped, {}).get("state") == "stopped"
                     and removed not in u)
    for unit in (stopped, removed):
        assert not alive(waiting[unit]), unit
        cg = unit_cgroup(state_dir, unit)
        assert not any(os.path.exists(d) for d in cg.directories()), unit
    assert spares(state_dir) == [waiting[kept]]
    # the agent stops: its program runs on, its prepared process does not
    program = agent.units[kept]["pid"]
    pid = agent_pid(state_dir)
    os.kill(pid, signal.SIGTERM)
    wait_for("the agent stopped", lambda: not alive(pid), 10)
    assert not os.path.exists(f"/proc/{waiting[kept]}"), "a prepared process outlived the agent"
    assert alive(program)
    assert machine_id(state_dir)
