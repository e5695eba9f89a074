"""The systemd driver against a real systemd: a Debian bookworm booted with systemd as
PID 1 in its own namespaces (fleetd.lab.systemd_host), the driver running inside it on
the guest's python3, exactly as the agent would run on such a host. Here the fleetd source
is bind-mounted at /opt/fleetd (``source=REPO_ROOT``), to test the driver and the agent
alone; the lab's systemd hosts (test_lab_systemd_hosts.py) have no such mount.

What is checked is what we rely on systemd for: it runs the unit, restarts it by
Restart=, enforces MemoryMax=/TasksMax=/CPUQuota=, and tells us all of that through
``systemctl show``; plus that the driver installs and removes only its own files.

The rootfs is built once (debootstrap, ~40 s) and cached in /var/cache/fleetd-lab; if the
Debian mirror cannot be reached the tests fail saying so: a skipped systemd suite would
look like a passing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, Iterator

import pytest
from agentkit import Attached
from labkit import wait_for

from fleetd import protocol
from fleetd.drivers.systemd import SystemdDriver
from fleetd.lab import systemd_host
from fleetd.lab.systemd_host import SystemdHost, SystemdHostError
from fleetd.units import systemd_text
from fleetd.units.context import UnitContext
from fleetd.units.model import load, parse_name
from fleetd.units.parser import parse

NETNS = "fs-sd1"
UNIT_DIR = "/run/systemd/system"
TIMINGS: Dict[str, float] = {}

# Runs inside the host: one driver call, its result as JSON on stdout.
HELPER = r"""
import json, sys, time
from fleetd.drivers.base import DriverError, StartContext
from fleetd.drivers.systemd import SystemdDriver
d = SystemdDriver()
op, args = sys.argv[1], json.loads(sys.argv[2])
began = time.monotonic()
try:
    if op == "start":
        ctx = StartContext(unit=args["name"], machine_id="m-sd1", log_path="/dev/null",
                           invocation_id="inv-1")
        out = d.start(args["config"], ctx).to_record()
    elif op == "status":
        out = d.status(args["name"])
    elif op == "stop":
        out = d.stop(args["name"])
    elif op == "forget":
        out = d.forget(args["name"])
    elif op == "recover":
        handle = d.recover(args["record"])
        out = handle.to_record() if handle else None
    elif op == "installed":
        out = d.installed()
    elif op == "available":
        out = d.available()
    print(json.dumps({"ok": out, "seconds": time.monotonic() - began}))
except DriverError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


@pytest.fixture(scope="session")
def rootfs() -> str:
    if os.geteuid() != 0:
        pytest.fail("the systemd host needs root (namespaces, mounts, cgroups)")
    began = time.monotonic()
    try:
        root = systemd_host.rootfs()
    except SystemdHostError as exc:
        pytest.fail(f"cannot build the systemd host's rootfs: {exc}")
    TIMINGS["rootfs (cached or built)"] = time.monotonic() - began
    return root


@pytest.fixture(scope="session")
def host(rootfs: str) -> Iterator[SystemdHost]:
    _netns(NETNS)
    systemd_host.sweep("sd1")  # what a crashed earlier run left behind
    try:
        h = systemd_host.boot(NETNS, "sd1", root=rootfs, source=systemd_host.REPO_ROOT)
        TIMINGS["boot"] = h.boot_seconds
        yield h
        TIMINGS["poweroff"] = h.poweroff()
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        print("\nsystemd lab timings: " +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in TIMINGS.items()))


def call(host: SystemdHost, op: str, **args: Any) -> Any:
    """The driver's answer to ``op``, run inside the host; fails the test on a DriverError."""
    answer = _call(host, op, **args)
    if "error" in answer:
        pytest.fail(f"{op}: {answer['error']}")
    return answer["ok"]


def _call(host: SystemdHost, op: str, **args: Any) -> Dict[str, Any]:
    out = host.run(["python3", "-c", HELPER, op, json.dumps(args)])
    assert out.returncode == 0, out.stderr
    answer: Dict[str, Any] = json.loads(out.stdout)
    if op == "start" and "seconds" in answer:
        TIMINGS.setdefault("unit start (driver.start)", answer["seconds"])
    return answer


def config(name: str, text: str) -> Dict[str, Any]:
    """What fleetd would send: the unit's systemd config, made daemon-side."""
    ctx = UnitContext(parse(text, name), parse_name(name), name)
    return systemd_text.config(ctx)


def start(host: SystemdHost, name: str, text: str) -> Dict[str, Any]:
    handle: Dict[str, Any] = call(host, "start", name=name, config=config(name, text))
    return handle


def status(host: SystemdHost, name: str) -> Dict[str, Any]:
    st: Dict[str, Any] = call(host, "status", name=name)
    return st


def read(host: SystemdHost, path: str) -> str:
    return host.run(["cat", path], check=True).stdout


@pytest.fixture
def cleanup(host: SystemdHost) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        _call(host, "forget", name=name)


def test_available_inside_the_host_and_not_on_this_machine(host: SystemdHost) -> None:
    assert call(host, "available") is True
    with open("/proc/1/comm") as f:
        if f.read().strip() == "systemd":
            pytest.skip("this machine is booted by systemd")
    assert SystemdDriver().available() is False


def test_start_runs_the_unit_under_systemd(host: SystemdHost, cleanup: list[str]) -> None:
    cleanup.append("web.service")
    text = ("[Unit]\nDescription=web\n[Service]\nExecStart=/bin/sleep infinity\n"
            "[X-Fleet]\nDriver=systemd\n")
    handle = start(host, "web.service", text)
    st = status(host, "web.service")
    assert st["state"] == "running"
    assert st["pid"] == handle["pid"] > 0
    assert handle["unit"] == "web.service"
    # the installed file is the user's, without fleetd's section; identity in a drop-in
    installed = read(host, f"{UNIT_DIR}/web.service")
    assert "X-Fleet" not in installed and "ExecStart=/bin/sleep infinity" in installed
    environ = read(host, f"/proc/{st['pid']}/environ").split("\0")
    assert "FLEET_UNIT=web.service" in environ and "FLEET_MACHINE_ID=m-sd1" in environ
    cgroup = read(host, f"/proc/{st['pid']}/cgroup")
    assert "/system.slice/web.service" in cgroup  # systemd's cgroup, not ours


def test_systemd_restarts_after_kill_9(host: SystemdHost, cleanup: list[str]) -> None:
    cleanup.append("again.service")
    handle = start(host, "again.service",
                   "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\n"
                   "RestartSec=100ms\n")
    host.run(["kill", "-9", str(handle["pid"])], check=True)
    st = wait_for("systemd to restart the unit", lambda: (
        s if (s := status(host, "again.service"))["restarts"] == 1
        and s["state"] == "running" else None), 10)
    assert st["pid"] not in (None, handle["pid"])


def test_memory_max_kills_a_400_mib_allocator(host: SystemdHost, cleanup: list[str]) -> None:
    cleanup.append("hog.service")
    start(host, "hog.service",
          "[Service]\nExecStart=/usr/bin/python3 -c 'b = bytearray(400 << 20); "
          "import time; time.sleep(60)'\nMemoryMax=64M\n")
    st = wait_for("the allocator to be killed", lambda: (
        s if (s := status(host, "hog.service"))["state"] == "failed" else None), 20)
    # cgroup v1 hosts report an OOM kill as SIGKILL (Result=signal), v2 as oom-kill
    assert st["result"] in ("oom-kill", "signal")
    assert st["exit_status"] == -9
    assert "OOM" in st["error"] and "MemoryMax=64M" in st["error"]


def test_limits_are_systemds_and_tasks_max_holds(host: SystemdHost,
                                                 cleanup: list[str]) -> None:
    cleanup.append("forks.service")
    spawn = ("import subprocess, time\n"
             "ok = 0\n"
             "for _ in range(30):\n"
             "    try:\n"
             "        subprocess.Popen(['sleep', '60']); ok += 1\n"
             "    except OSError:\n"
             "        pass\n"
             "open('/run/forks.count', 'w').write(str(ok))\n"
             "time.sleep(60)\n")
    host.run(["sh", "-c", "cat > /run/forks.py"], input=spawn, check=True)
    start(host, "forks.service",
          "[Service]\nExecStart=/usr/bin/python3 /run/forks.py\nTasksMax=8\n"
          "MemoryMax=64M\nCPUQuota=20%\n")
    count = wait_for("the fork loop to finish", lambda: host.run(
        ["cat", "/run/forks.count"]).stdout.strip(), 15)
    assert int(count) < 8  # python itself is one of the 8 tasks
    cg = "/sys/fs/cgroup/{}/system.slice/forks.service/{}"
    assert read(host, cg.format("pids", "pids.max")).strip() == "8"
    assert read(host, cg.format("memory", "memory.limit_in_bytes")).strip() == str(64 << 20)
    assert read(host, cg.format("cpu", "cpu.cfs_quota_us")).strip() == "20000"


def test_a_failed_start_says_why(host: SystemdHost, cleanup: list[str]) -> None:
    cleanup += ["missing.service", "pre.service"]
    answer = _call(host, "start", name="missing.service", config=config(
        "missing.service", "[Service]\nType=exec\nExecStart=/nonexistent/prog\n"))
    assert "error" in answer
    assert "exited 203" in answer["error"]
    assert "systemd could not execute /nonexistent/prog" in answer["error"]
    answer = _call(host, "start", name="pre.service", config=config(
        "pre.service", "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep 60\n"))
    assert "ExecStartPre=" in answer.get("error", "")


def test_oneshot_is_followed_by_status(host: SystemdHost, cleanup: list[str]) -> None:
    cleanup.append("once.service")
    start(host, "once.service",
          "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 1; exit 3'\n")
    assert status(host, "once.service")["state"] == "starting"  # --no-block: still running
    st = wait_for("the oneshot to end", lambda: (
        s if (s := status(host, "once.service"))["state"] == "failed" else None), 10)
    assert st["exit_status"] == 3 and st["error"] == "exited 3"


def test_stop_then_forget_leaves_nothing(host: SystemdHost) -> None:
    handle = start(host, "gone.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    assert call(host, "recover", record=handle)["pid"] == handle["pid"]
    assert "gone.service" in call(host, "installed")
    st = call(host, "stop", name="gone.service")
    assert st["state"] == "stopped" and st["pid"] is None
    assert host.run(["kill", "-0", str(handle["pid"])]).returncode != 0
    call(host, "forget", name="gone.service")
    assert host.run(["test", "-e", f"{UNIT_DIR}/gone.service"]).returncode != 0
    assert host.run(["test", "-e", f"{UNIT_DIR}/gone.service.d"]).returncode != 0
    assert status(host, "gone.service")["known"] is False
    assert call(host, "recover", record=handle) is None
    assert "gone.service" not in call(host, "installed")
    units = host.run(["systemctl", "list-units", "--all", "--plain", "--no-legend"]).stdout
    assert "gone.service" not in units


def test_boot_and_poweroff_leave_nothing_behind(rootfs: str) -> None:
    netns = "fs-sd2"
    _netns(netns)
    systemd_host.sweep("sd2")
    try:
        h = systemd_host.boot(netns, "sd2", root=rootfs, source=systemd_host.REPO_ROOT)
        assert h.state in ("running", "degraded"), h.failed_units()
        assert h.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        assert h.run(["hostname"]).stdout.strip() == "sd2"
        # the guest cannot change the machine's sysctls
        assert h.run(["sh", "-c", "echo 4194304 > /proc/sys/kernel/pid_max"]).returncode != 0
        assert h.run(["test", "-e", "/opt/fleetd/fleetd/drivers/systemd.py"]).returncode == 0
        assert h.run(["touch", "/opt/fleetd/x"]).returncode != 0  # read-only source
        pid1, workdir, cgroups = h.pid1, h.dir, list(h.cgroups)
        h.poweroff()
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    assert not os.path.exists(f"/proc/{pid1}")
    assert not os.path.exists(workdir)
    assert [c for c in cgroups if os.path.exists(c)] == []
    with open("/proc/self/mountinfo") as f:
        assert workdir not in f.read()
    with open(os.path.join(rootfs, "etc", "machine-id")) as f:
        assert f.read() == ""  # the cache stays pristine: per-host files went to the overlay


AGENT_UNIT = """\
[Service]
ExecStart=/bin/sleep infinity
Restart=always
RestartSec=100ms
[X-Fleet]
Driver=systemd
"""


def test_the_agent_runs_systemd_units_through_the_hosts_systemd(host: SystemdHost) -> None:
    """The whole agent, not the driver alone, inside the systemd host: it reports the
    systemd capability, starts a Driver=systemd unit through systemd, sees systemd
    restart it after kill -9, and forgets it (unit file gone) when it is undesired."""
    inside = ["nsenter", "-t", str(host.pid1), "-a", "-r", "-w", "--", "env", "-i",
              "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH=/opt/fleetd", "python3"]
    agent = Attached("/var/lib/fleet-agent", command=inside)
    try:
        facts = agent.hello["facts"]
        assert facts["systemd"] is True and "systemd" in facts["capabilities"]
        unit = load("sd-agent.service", AGENT_UNIT)
        assert "systemd" in unit.requirements.capabilities
        agent.desire(unit.spec(protocol.WANT_RUNNING))
        first = agent.wait_state("sd-agent.service", "running", timeout=20)["pid"]
        assert first and "sd-agent.service" in read(host, f"/proc/{first}/cgroup")
        host.run(["kill", "-9", str(first)], check=True)
        again = agent.wait_units(lambda units: (
            (u := units.get("sd-agent.service", {})).get("restarts", 0) >= 1
            and u.get("state") == "running" and u.get("pid") not in (None, first)), 20)
        assert again["sd-agent.service"]["restarts"] == 1
        agent.desire()
        agent.read_until(lambda m: m["type"] == "removed", 20)
        gone = host.run(["test", "-e", "/run/systemd/system/sd-agent.service"])
        assert gone.returncode != 0, "the runtime unit file is still there"
    finally:
        agent.close()
        host.run(["sh", "-c", "kill $(cat /var/lib/fleet-agent/agent.pid)"])
