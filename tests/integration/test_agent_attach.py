"""The agent through its real ``fleet-agent attach`` relay, on this machine (no SSH).

What fleetd relies on: attach starts the agent if none runs, the agent outlives every
attach, keeps its programs through its own kill -9, and re-adopts them by pid + start
tick + cgroup membership (a reused pid is not adopted). The Attached helper lives in
agentkit.py, shared with test_supervisor.py and test_readoption.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List

import pytest
from agentkit import Attached, agent_pid, clean, processes_with, spec
from labkit import alive, cmdline, wait_for

SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"


@pytest.fixture
def state_dir(tmp_path: Any) -> Iterator[str]:
    d = str(tmp_path / "agent")
    yield d
    clean(d, b"FLEET_UNIT=agent-test")


def _agent_and_programs(state_dir: str) -> List[int]:
    return processes_with(state_dir.encode()) + processes_with(b"FLEET_UNIT=agent-test")


def test_agent_outlives_attach_and_its_own_kill9_readopting_programs(state_dir: str) -> None:
    a = Attached(state_dir)
    a.send("desired", units=[spec("agent-test.service", SLEEPER)])
    running = a.wait_state("agent-test.service", "running")
    pid = running["pid"]
    first_agent = agent_pid(state_dir)
    a.close()  # the SSH channel drops
    assert alive(first_agent) and alive(pid)

    os.kill(first_agent, signal.SIGKILL)
    wait_for("the agent to die", lambda: not alive(first_agent))
    assert alive(pid), "the program died with its agent"

    b = Attached(state_dir)  # starts a new agent, which re-adopts
    assert agent_pid(state_dir) != first_agent
    assert b.units["agent-test.service"]["state"] == "running"
    assert b.units["agent-test.service"]["pid"] == pid
    # the same desired set again: a no-op, not a restart
    b.send("desired", units=[spec("agent-test.service", SLEEPER)])
    time.sleep(0.3)
    assert alive(pid) and b.units["agent-test.service"]["pid"] == pid
    # the adopted program is watched: its death is seen, exit status honestly unknown
    os.kill(pid, signal.SIGKILL)
    gone = b.wait_state("agent-test.service", "failed")
    assert gone["exit_status"] is None and "status unknown" in gone["error"]
    b.close()


def test_a_reused_pid_is_not_adopted(state_dir: str) -> None:
    a = Attached(state_dir)
    a.send("desired", units=[spec("agent-test.service", SLEEPER)])
    pid = a.wait_state("agent-test.service", "running")["pid"]
    a.close()
    agent = agent_pid(state_dir)
    os.kill(agent, signal.SIGKILL)
    wait_for("the agent to die", lambda: not alive(agent))

    # The program dies while no agent watches, and its pid now belongs to a stranger:
    # forge that by pointing the record at another live process of ours.
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.03)  # a reused pid starts ticks (10 ms each) after the program it replaces
    stranger = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        record_path = os.path.join(state_dir, "units", "agent-test.service.json")
        with open(record_path) as f:
            record = json.load(f)
        record["handle"]["pid"] = stranger.pid
        with open(record_path, "w") as f:
            json.dump(record, f)

        b = Attached(state_dir)
        u = b.units["agent-test.service"]
        assert u["state"] == "failed" and u["pid"] is None
        assert "exited while the agent was not running" in u["error"]
        assert stranger.poll() is None, "the agent touched a process that is not its own"
        b.close()
    finally:
        stranger.kill()
        stranger.wait()


def test_attach_twice_at_once_makes_one_agent(state_dir: str) -> None:
    # both relays start together, each finding no agent and starting one
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: Attached(state_dir), range(2))
    assert a.hello["machine_id"] == b.hello["machine_id"]
    # the agent that lost the race for the state directory's lock exits
    wait_for("one agent", lambda: [p for p in _agent_and_programs(state_dir)
                                   if "daemon" in cmdline(p)] == [agent_pid(state_dir)], 5)
    assert a.proc.poll() is None and b.proc.poll() is None  # both relays still serve
    a.close()
    b.close()


ARGV_UNIT = r"""[Service]
Type=oneshot
WorkingDirectory=/tmp
Environment="WHO=the agent" EMPTY=
ExecStart=/bin/sh -c 'pwd; printf "%%s|" "$@"; echo; echo "$WHO"' sh "a  b" c\x41 ${WHO} $EMPTY d
"""


def test_exec_driver_splits_like_systemd_with_no_shell(state_dir: str) -> None:
    a = Attached(state_dir)
    a.send("desired", units=[spec("agent-test.service", ARGV_UNIT)])
    done = a.wait_state("agent-test.service", "exited")
    assert done["exit_status"] == 0
    with open(os.path.join(state_dir, "logs", "agent-test.service.log")) as f:
        assert f.read() == "/tmp\na  b|cA|the agent|d|\nthe agent\n"
    a.close()
