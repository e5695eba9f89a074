"""The supervisor with real processes, through the real ``fleet-agent attach`` relay.

Every Restart= policy against real exits and signals; backoff that grows; the start
limit; limits the kernel enforces (MemoryMax= OOM kill reported as such, CPUQuota=,
TasksMax=); the cgroup reaching a double-forked child on stop; User=, EnvironmentFile=,
LimitNOFILE=, ExecStartPre=/Post=/Stop=, SuccessExitStatus=, TimeoutStopSec=.

Timing is never asserted, only order (delays that grow) and outcomes. Units of one
test run side by side in one agent, so the whole file takes a few seconds.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from agentkit import Attached, clean, machine_id, spec, unit_cgroup
from labkit import alive, wait_for

from fleetd import protocol
from fleetd.agent import host, restart
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor

MARK = b"FLEET_UNIT=sup-"
USER = "fleettest"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "agent")
    yield d
    clean(d, MARK)


@pytest.fixture
def agent(state_dir: str) -> Iterator[Attached]:
    a = Attached(state_dir)
    yield a
    a.close()


def settled(names: List[str]) -> Any:
    """All named units have come to rest: running after a restart, or ended."""
    def check(units: Dict[str, Dict[str, Any]]) -> bool:
        return all(n in units and (units[n]["state"] in ("exited", "failed")
                                   or (units[n]["state"] == "running"
                                       and units[n]["restarts"] >= 1)) for n in names)
    return check


# --- Restart= -------------------------------------------------------------------------------
# Each program ends as asked on its first run and sleeps on later runs (a marker file
# tells them apart), so a restart shows as: running again, restarts 1.
ENDINGS = {
    "exit0": "exit 0",
    "exit3": "exit 3",
    "term": "kill -TERM $$$$",  # $$ is a literal $ in ExecStart=
    "kill": "kill -KILL $$$$",
}
# Restart= -> the endings that restart it (systemd.service(5)); SIGTERM is a clean end
# for a daemon, so it counts as success.
RESTARTS = {
    "no": set(),
    "always": {"exit0", "exit3", "term", "kill"},
    "on-success": {"exit0", "term"},
    "on-failure": {"exit3", "kill"},
    "on-abnormal": {"kill"},
    "on-abort": {"kill"},
    "on-watchdog": set(),
}


def once_then_sleep(marker: Path, ending: str) -> str:
    return (f"/bin/sh -c 'if [ -e {marker} ]; then exec sleep 1000; fi; "
            f"touch {marker}; {ending}'")


def test_each_restart_policy_on_real_exits_and_signals(agent: Attached, tmp_path: Path) -> None:
    specs, names = [], []
    for policy in RESTARTS:
        for ending, shell in ENDINGS.items():
            name = f"sup-{policy}-{ending}.service"
            names.append(name)
            start = once_then_sleep(tmp_path / name, shell)
            specs.append(spec(name, f"[Service]\nExecStart={start}\n"
                                    f"Restart={policy}\nRestartSec=0\n"))
    # SuccessExitStatus=3 makes "exit 3" clean: on-failure leaves it, on-success restarts
    for policy in ("on-failure", "on-success"):
        name = f"sup-ses-{policy}.service"
        names.append(name)
        start = once_then_sleep(tmp_path / name, "exit 3")
        specs.append(spec(name, f"[Service]\nExecStart={start}\n"
                                f"Restart={policy}\nRestartSec=0\nSuccessExitStatus=3\n"))
    agent.desire(*specs)
    units = agent.wait_units(settled(names), timeout=20)
    for policy, restarting in RESTARTS.items():
        for ending in ENDINGS:
            u = units[f"sup-{policy}-{ending}.service"]
            if ending in restarting:
                assert (u["state"], u["restarts"]) == ("running", 1), (policy, ending, u)
                assert alive(u["pid"])
            else:
                clean_end = ending in ("exit0", "term")
                assert u["state"] == ("exited" if clean_end else "failed"), (policy, ending, u)
                assert u["restarts"] == 0
    assert units["sup-no-exit3.service"]["error"] == "exited 3"
    assert units["sup-no-exit3.service"]["exit_status"] == 3
    assert units["sup-no-kill.service"]["error"] == "killed by SIGKILL"
    assert units["sup-no-term.service"]["exit_status"] == -15
    assert units["sup-ses-on-failure.service"]["state"] == "exited"
    assert units["sup-ses-on-success.service"]["state"] == "running"


def test_backoff_delays_grow_and_the_start_limit_fails_the_unit(agent: Attached,
                                                                tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    agent.desire(
        spec("sup-backoff.service",
             f"[Service]\nExecStart=/bin/sh -c 'date +%%s.%%N >> {starts}; exit 1'\n"
             "Restart=on-failure\nRestartSec=40ms\nRestartSteps=3\nRestartMaxDelaySec=320ms\n"
             "StartLimitIntervalSec=0\n"),
        spec("sup-limit.service",
             "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=0\n"
             "StartLimitBurst=3\nStartLimitIntervalSec=1min\n"),
    )
    limited = agent.wait_state("sup-limit.service", "failed")
    assert limited["error"] == "start limit hit: 3 starts within 1min (last: exited 1)"
    assert limited["restarts"] == 2  # 3 starts: the first and two automatic restarts
    wait_for("6 starts", lambda: starts.exists() and len(starts.read_text().split()) >= 6, 10)
    times = [float(t) for t in starts.read_text().split()[:6]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"\nbackoff 40ms -> 320ms in 3 steps, observed gaps (ms): "
          f"{', '.join(f'{g * 1000:.0f}' for g in gaps)}")
    # 40, 80, 160, 320, 320 ms planned: the first three grow (timing itself not asserted)
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3]
    during = [u for u in agent.history if u["name"] == "sup-backoff.service"
              and u["state"] == "starting"]
    assert during and during[-1]["error"] == "exited 1"  # waiting to restart: not "failed"
    agent.desire(spec("sup-backoff.service",
                      f"[Service]\nExecStart=/bin/sh -c 'date +%%s.%%N >> {starts}; exit 1'\n"
                      "Restart=on-failure\nRestartSec=40ms\nRestartSteps=3\n"
                      "RestartMaxDelaySec=320ms\nStartLimitIntervalSec=0\n",
                      want=protocol.WANT_STOPPED))
    agent.wait_state("sup-backoff.service", "stopped")
    count = len(starts.read_text().split())
    time.sleep(0.5)
    assert len(starts.read_text().split()) == count, "restarted after a stop"


# --- limits ---------------------------------------------------------------------------------
HOG = ("import time\nchunks = []\nfor i in range(400):\n"
       "    chunks.append(b'x' * (1 << 20))\nprint('allocated 400 MiB: NOT killed', flush=True)\n")
FORKER = ("import json, os\nr, w = os.pipe()\nok = failed = 0\nfor i in range(30):\n"
          "    try:\n        pid = os.fork()\n    except OSError:\n        failed += 1\n"
          "        continue\n    if pid == 0:\n        os.close(w); os.read(r, 1); os._exit(0)\n"
          "    ok += 1\nos.close(w)\nfor i in range(ok):\n    os.wait()\n"
          "print(json.dumps({'ok': ok, 'failed': failed}), flush=True)\n")


def _py(code: str, path: Path) -> str:
    path.write_text(code)
    return f"{sys.executable} {path}"


def test_limits_oom_kill_cpu_quota_and_tasks_max(agent: Attached, state_dir: str,
                                                 tmp_path: Path) -> None:
    facts = agent.hello["facts"]["cgroups"]
    if not {"memory_max", "cpu_quota", "tasks_max"} <= set(facts["limits"]):
        pytest.skip(f"this host's cgroups cannot enforce the limits: {facts}")
    agent.desire(
        spec("sup-oom.service", f"[Service]\nExecStart={_py(HOG, tmp_path / 'hog.py')}\n"
                                "MemoryMax=64M\n"),
        spec("sup-busy.service", "[Service]\nExecStart=/bin/sh -c 'while :; do :; done'\n"
                                 "CPUQuota=20%\n"),
        spec("sup-forks.service", f"[Service]\nType=oneshot\n"
                                  f"ExecStart={_py(FORKER, tmp_path / 'forker.py')}\n"
                                  "TasksMax=10\n"),
    )
    oom = agent.wait_state("sup-oom.service", "failed", timeout=30)
    print(f"\nMemoryMax=64M: {oom['error']} (exit status {oom['exit_status']})")
    assert oom["error"] == "killed by the kernel: out of memory (MemoryMax=64M)"
    assert oom["exit_status"] == -9
    busy = agent.wait_state("sup-busy.service", "running")
    cg = unit_cgroup(state_dir, "sup-busy.service")
    assert cg.pids() == [busy["pid"]]
    wait_for("throttling", lambda: cg.stats().get("cpu_throttled_periods", 0) > 0, 5)
    quota = Path(f"/sys/fs/cgroup/cpu/fleet/{machine_id(state_dir)}/sup-busy.service/"
                 "cpu.cfs_quota_us")
    if quota.exists():  # v1 cpu controller (this machine); on v2 it is cpu.max
        assert quota.read_text().strip() == "20000"
    print(f"CPUQuota=20%: throttled in {cg.stats()['cpu_throttled_periods']} periods")
    agent.wait_state("sup-forks.service", "exited", timeout=20)
    log = Path(state_dir, "logs", "sup-forks.service.log").read_text()
    print(f"TasksMax=10: {log.strip()}")
    assert json.loads(log) == {"ok": 9, "failed": 21}  # itself + 9 children


# --- the cgroup: every process of the unit -------------------------------------------------
def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return -1


def test_stop_kills_a_double_forked_child_and_removes_the_cgroup(agent: Attached,
                                                                 state_dir: str) -> None:
    text = "[Service]\nExecStart=/bin/sh -c '(setsid sleep 1000 &); exec sleep 1001'\n"
    leaving = ("[Service]\nExecStart=/bin/sh -c '(setsid sleep 1002 &); sleep 0.2'\n"
               "TimeoutStopSec=1\n")
    agent.desire(spec("sup-tree.service", text), spec("sup-leaves.service", leaving))
    main = agent.wait_state("sup-tree.service", "running")["pid"]
    cg = unit_cgroup(state_dir, "sup-tree.service")

    def daemonised() -> List[int]:  # out of the program's session: killpg cannot reach it
        return [p for p in cg.pids() if p != main and _sid(p) not in (main, -1)]

    [daemon] = wait_for("the daemonised child in its own session", daemonised)
    # a program whose main process ends takes what it left behind with it
    left = unit_cgroup(state_dir, "sup-leaves.service")
    agent.wait_state("sup-leaves.service", "exited")
    assert left.empty() and not any(os.path.exists(d) for d in left.directories())

    agent.desire(spec("sup-tree.service", text, want=protocol.WANT_STOPPED),
                 spec("sup-leaves.service", leaving))
    agent.wait_state("sup-tree.service", "stopped")
    wait_for("both gone", lambda: not alive(main) and not alive(daemon), 5)
    assert not any(os.path.exists(d) for d in cg.directories()), "the cgroup was left behind"


def test_timeout_stop_escalates_to_sigkill_after_exec_stop(agent: Attached, state_dir: str,
                                                           tmp_path: Path) -> None:
    stopped = tmp_path / "stop-ran"
    text = ("[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; sleep 1000'\n"
            f"ExecStop=/bin/sh -c 'echo $MAINPID > {stopped}'\nTimeoutStopSec=300ms\n")
    agent.desire(spec("sup-stubborn.service", text))
    pid = agent.wait_state("sup-stubborn.service", "running")["pid"]
    agent.desire(spec("sup-stubborn.service", text, want=protocol.WANT_STOPPED))
    u = agent.wait_state("sup-stubborn.service", "stopped")
    assert stopped.read_text().strip() == str(pid)  # ExecStop= ran first, with $MAINPID
    assert not alive(pid) and u["exit_status"] == -9  # TERM ignored: SIGKILL after 300ms


# --- User=, EnvironmentFile=, LimitNOFILE=, ExecStartPre=/Post= -------------------------------
@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged user, made for these tests and deleted after them."""
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", f"/tmp/{USER}-home",
                    "--shell", "/bin/sh", USER], check=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["userdel", "-r", USER], capture_output=True)


def _uids(pid: int) -> List[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def test_user_runs_as_that_user_and_an_unknown_user_fails(agent: Attached, state_dir: str,
                                                          user: pwd.struct_passwd) -> None:
    agent.desire(
        spec("sup-user.service", f"[Service]\nUser={USER}\nLimitNOFILE=1234:2345\n"
                                 "ExecStart=/bin/sh -c 'echo $USER $LOGNAME $HOME $SHELL; "
                                 "ulimit -Sn; ulimit -Hn; id -G; exec sleep 1000'\n"),
        spec("sup-nouser.service", "[Service]\nUser=no-such-user-here\nExecStart=/bin/true\n"),
    )
    u = agent.wait_state("sup-user.service", "running")
    assert _uids(u["pid"]) == [user.pw_uid] * 4  # real, effective, saved, fs
    log = Path(state_dir, "logs", "sup-user.service.log")
    wait_for("its output", lambda: log.exists() and len(log.read_text().split("\n")) > 4)
    lines = log.read_text().splitlines()
    assert lines[0] == f"{USER} {USER} {user.pw_dir} /bin/sh"
    assert lines[1:3] == ["1234", "2345"]
    assert lines[3].split() == [str(user.pw_gid)]  # root's groups are gone
    bad = agent.wait_state("sup-nouser.service", "failed")
    assert bad["error"] == "User=no-such-user-here: no such user on this host"


def test_environment_files_pre_and_post(agent: Attached, state_dir: str,
                                        tmp_path: Path) -> None:
    env1, env2 = tmp_path / "one.env", tmp_path / "two.env"
    env1.write_text("# settings\nA=from-file\nB='quoted  value'\nC=one\n")
    env2.write_text('C="two \\"quoted\\""\n')
    marker = tmp_path / "main-ran"
    agent.desire(
        spec("sup-env.service",
             f"[Service]\nType=oneshot\nEnvironment=A=from-unit D=unit-only\n"
             f"EnvironmentFile={env1}\nEnvironmentFile=-{tmp_path}/missing.env\n"
             f"EnvironmentFile={env2}\n"
             "ExecStart=/bin/sh -c 'echo \"$A|$B|$C|$D\"'\n"),
        spec("sup-envmissing.service",
             f"[Service]\nEnvironmentFile={tmp_path}/missing.env\nExecStart=/bin/true\n"),
        spec("sup-prefail.service",
             f"[Service]\nExecStartPre=/bin/true\nExecStartPre=/bin/false\n"
             f"ExecStart=/bin/touch {marker}\n"),
        spec("sup-preok.service",
             "[Service]\nExecStartPre=-/bin/false\nExecStart=/bin/sleep 1000\n"
             "ExecStartPost=/bin/sh -c 'echo post $MAINPID'\n"),
    )
    agent.wait_state("sup-env.service", "exited")
    out = Path(state_dir, "logs", "sup-env.service.log").read_text()
    # files override Environment=, later files override earlier ones
    assert out == 'from-file|quoted  value|two "quoted"|unit-only\n'
    missing = agent.wait_state("sup-envmissing.service", "failed")
    assert missing["error"].endswith("missing.env: No such file or directory")
    pre = agent.wait_state("sup-prefail.service", "failed")
    assert pre["error"] == "ExecStartPre=/bin/false: exited 1"
    assert not marker.exists(), "ExecStart= ran although ExecStartPre= failed"
    ok = agent.wait_state("sup-preok.service", "running")
    log = Path(state_dir, "logs", "sup-preok.service.log")
    wait_for("ExecStartPost= output", lambda: log.exists() and log.read_text())
    assert log.read_text() == f"post {ok['pid']}\n"


# --- a failing health check ----------------------------------------------------------------
FAILING_CHECK = ("[X-Check]\nType=tcp\nAddress=127.0.0.1:1\nInterval=1s\nTimeout=200ms\n"
                 "StartGrace=0\nFailureThreshold=1\n")


def test_a_failing_check_ends_the_run_and_restart_judges_it(agent: Attached) -> None:
    """A real check failing (nothing listens on its port) ends the program as a watchdog
    would: Restart=on-watchdog restarts it, Restart=on-abort does not."""
    agent.desire(
        spec("sup-wd.service", "[Service]\nExecStart=/bin/sleep 1000\n"
                               "Restart=on-watchdog\nRestartSec=0\n" + FAILING_CHECK),
        spec("sup-abort.service", "[Service]\nExecStart=/bin/sleep 1001\n"
                                  "Restart=on-abort\n" + FAILING_CHECK))
    units = agent.wait_units(lambda us: us.get("sup-abort.service", {}).get("state") == "failed"
                             and us.get("sup-wd.service", {}).get("restarts", 0) >= 1
                             and us["sup-wd.service"]["state"] == "running", timeout=15)
    first = {u["name"]: u["pid"] for u in reversed(agent.history) if u["state"] == "running"}
    assert units["sup-abort.service"]["error"] == \
        "health check failing: 127.0.0.1:1: Connection refused"
    assert not alive(first["sup-abort.service"])
    assert units["sup-wd.service"]["pid"] != first["sup-wd.service"]
    assert not alive(first["sup-wd.service"])


def test_end_run_of_a_unit_that_does_not_run_is_refused(tmp_path: Path) -> None:
    state = AgentState(str(tmp_path / "agent"))
    backend = host.cgroups(state.machine_id())
    sup = Supervisor(state, state.machine_id(), lambda data: None, backend,
                     host.drivers(backend))
    try:
        assert not sup.end_run("nope.service", restart.WATCHDOG, "x")
    finally:
        clean(str(tmp_path / "agent"))
