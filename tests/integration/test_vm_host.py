"""fleetd on a real cgroup v2 kernel: a QEMU VM of the lab (fleetd.lab.vm), reached over
SSH with strict host-key checking, the agent installed there by the bootstrap, as on any
VM. This machine is hybrid (its v1 hierarchies hold the controllers), so only here do the
v2 backend's limits meet a kernel that enforces them.

One VM and one fleetd serve the module (TCG boots in ~20 s; Python is ~15-20x slower in
the guest): each test cleans up its own units. Marked ``vm``: ``-m 'not vm'`` skips
them locally; CI runs them. Needs root, qemu-system-x86 and debootstrap (the image is
built once, ~1 min, into /var/cache/fleetd-lab).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from labkit import FLEETCTL, ROOT, Fleet, wait_for

from fleetd import procfs
from fleetd.lab import vm
from fleetd.lab.vm_image import CACHE_DIR

pytestmark = pytest.mark.vm

MACHINE = "vm1"
STATE_DIR = "/var/lib/fleet-agent"  # the bootstrap's default state dir on the host
HOG = "b = b'x' * (400 << 20)\nprint('allocated 400 MiB: NOT killed', flush=True)\n"
FORKER = ("import json, os, sys\nr, w = os.pipe()\nok = failed = 0\nfor i in range(30):\n"
          "    try:\n        pid = os.fork()\n    except OSError:\n        failed += 1\n"
          "        continue\n    if pid == 0:\n        os.close(w); os.read(r, 1); os._exit(0)\n"
          "    ok += 1\nos.close(w)\nfor i in range(ok):\n    os.wait()\n"
          "result = json.dumps({'ok': ok, 'failed': failed})\nprint(result, flush=True)\n"
          "if len(sys.argv) > 1:\n    open(sys.argv[1], 'w').write(result)\n")
# a daemon in its own session that ignores SIGTERM, beside the main process
TREE = "#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; exec sleep 1000' &\nexec sleep 1001\n"


class Guest:
    def __init__(self, machine: vm.Vm, subtree_at_boot: str) -> None:
        self.vm = machine
        self.subtree_at_boot = subtree_at_boot

    def sh(self, command: str, input: Optional[str] = None, check: bool = True) -> str:
        proc = self.vm.run(command, input=input.encode() if input is not None else None)
        if check and proc.returncode != 0:
            pytest.fail(f"in the VM: {command}: exit {proc.returncode}: "
                        f"{proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode(errors="replace")

    def put(self, path: str, text: str, mode: str = "644") -> None:
        self.sh(f"cat > {path} && chmod {mode} {path}", input=text)

    def read(self, path: str) -> Optional[str]:
        proc = self.vm.run(f"cat {path}")
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def alive(self, pid: int) -> bool:
        return self.vm.run(f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status"
                           ).returncode == 0

    def cgroup_of(self, pid: int) -> str:
        """The pid's cgroup directory (a v2 host: the one ``0::`` line)."""
        return "/sys/fs/cgroup" + self.sh(f"cat /proc/{pid}/cgroup").strip().split(":", 2)[2]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (the image is built with debootstrap)")
    if shutil.which(vm.QEMU) is None:  # a failure, not a skip: CI must run these
        pytest.fail(f"{vm.QEMU} not found: apt-get install -y --no-install-recommends "
                    "qemu-system-x86")
    work = tmp_path_factory.mktemp("vm")
    identity = str(work / "id_vm")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", identity], check=True)
    vm.sweep("fleet-test-vm")  # the VM of a test run that was killed
    machine = vm.boot(f"fleet-test-vm-{os.getpid()}", identity, str(work / "vm"))
    try:
        print(f"\nVM up in {machine.boot_seconds:.1f}s ({machine.accel}), "
              f"ssh root@127.0.0.1:{machine.port}")
        g = Guest(machine, "")
        g.subtree_at_boot = g.sh("cat /sys/fs/cgroup/cgroup.subtree_control").strip()
        yield g
    finally:
        machine.stop()
    assert not machine.alive()
    assert not os.path.exists(machine.dir)


@pytest.fixture(scope="module")
def fleet(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(None, str(tmp_path_factory.mktemp("vm-fleetd")))
    f.start()
    try:
        out = f.ctl("machine", "add", f"root@{vm.ADDRESS}:{guest.vm.port}", "--name", MACHINE,
                    "--identity", guest.vm.identity, "--known-hosts", guest.vm.known_hosts,
                    timeout=900)
        print(out.stdout.strip())
        assert "running as a systemd service" in out.stdout and "cgroups v2" in out.stdout
        yield f
    finally:
        f.stop()


def unit_row(fleet: Fleet, name: str) -> Dict[str, Any]:
    return fleet.unit(name) or {}


def start(fleet: Fleet, tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    fleet.ctl("start", "--no-block", str(tmp_path / name), timeout=120)


def destroy(fleet: Fleet, *names: str) -> None:
    fleet.ctl("destroy", *names, check=False, timeout=120)


def running(fleet: Fleet, name: str, timeout: float = 120) -> Dict[str, Any]:
    row: Dict[str, Any] = wait_for(f"{name} running", lambda: (
        r if (r := unit_row(fleet, name)).get("state") == "running" and r.get("pid")
        else None), timeout)
    return row


# --- the kernel -----------------------------------------------------------------------------
def test_the_guest_is_pure_cgroup_v2_with_every_controller(guest: Guest) -> None:
    assert guest.sh("stat -fc %T /sys/fs/cgroup").strip() == "cgroup2fs"
    offered = set(guest.sh("cat /sys/fs/cgroup/cgroup.controllers").split())
    assert {"cpu", "memory", "pids", "io", "cpuset"} <= offered
    assert guest.sh("cat /proc/1/comm").strip() == "systemd"
    # nobody enabled cpu for the root's children: whoever needs cpu.max must (fleetd does)
    assert "cpu" not in guest.subtree_at_boot.split()
    # its own name (given per boot) resolves without a name server, which it cannot reach
    name = guest.sh("hostname").strip()
    assert name == guest.vm.name
    assert name in guest.sh(f"getent hosts {name}").split()


def test_the_v2_limit_tests_this_machine_cannot_run_pass_in_the_guest(guest: Guest) -> None:
    """tests/integration/test_cgroups_real.py's v2 tests, run by pytest in the guest, on
    its kernel: the fleetd source, those tests and pytest (pure Python, from this venv)
    are copied in; the guest's own python3 and python3-psutil run them. On this hybrid
    machine that file generates no v2 limit test (its LIMIT_VERSIONS is v1): here they
    run, and none skips."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(os.path.join(ROOT, "fleetd"), "fleetd",
                filter=lambda t: None if "__pycache__" in t.name else t)
        for name in ("test_cgroups_real.py", "labkit.py", "agentkit.py"):
            tar.add(os.path.join(ROOT, "tests", "integration", name),
                    f"tests/integration/{name}")
        for dist in ("pytest", "pluggy", "iniconfig", "packaging", "pygments"):
            for file in importlib.metadata.distribution(dist).files or []:
                if file.parts[0] != ".." and "__pycache__" not in file.parts:
                    tar.add(str(file.locate()), f"site/{file}")
    here = "/opt/fleet-tests"
    guest.vm.run(f"rm -rf {here} && mkdir -p {here} && tar xz -C {here}",
                 input=buf.getvalue(), check=True)
    t0 = time.monotonic()
    proc = guest.vm.run(
        f"cd {here} && PYTHONPATH=site:. PYTHONDONTWRITEBYTECODE=1 python3 -m pytest "
        "-p no:cacheprovider --noconftest -o addopts= -v -s -rA -k v2 "
        "-W ignore::pytest.PytestUnknownMarkWarning "  # the marks are pyproject's, not here
        "tests/integration/test_cgroups_real.py", timeout=900)
    out = proc.stdout.decode(errors="replace")
    print(f"\nin the guest ({time.monotonic() - t0:.0f}s):\n{out[-6000:]}")
    assert proc.returncode == 0, out[-3000:] + proc.stderr.decode(errors="replace")
    for test in ("test_memory_max_gets_the_program_oom_killed[v2]",
                 "test_cpu_quota_holds_a_busy_loop_near_its_share[v2]",
                 "test_tasks_max_makes_the_tenth_task_fail_to_fork[v2]"):
        assert f"PASSED tests/integration/test_cgroups_real.py::{test}" in out
    assert "SKIPPED" not in out and " skipped" not in out and "7 passed" in out
    guest.sh(f"rm -rf {here}")


# --- the exec driver, through fleetd and the bootstrapped agent --------------------------------
def test_memory_max_oom_kill_is_reported_as_such(fleet: Fleet, guest: Guest,
                                                 tmp_path: Path) -> None:
    guest.put("/root/hog.py", HOG)
    start(fleet, tmp_path, "vm-hog.service",
          "[Service]\nExecStart=/usr/bin/python3 /root/hog.py\nMemoryMax=64M\n")
    try:
        row = wait_for("the allocator OOM-killed", lambda: (
            r if (r := unit_row(fleet, "vm-hog.service")).get("error") else None), 120)
        print(f"\nMemoryMax=64M: {row['error']} (exit {row['exit_status']})")
        assert row["error"] == "killed by the kernel: out of memory (MemoryMax=64M)"
        assert row["exit_status"] == -9
    finally:
        destroy(fleet, "vm-hog.service")


def test_cpu_quota_throttles_and_cpu_weight_is_set(fleet: Fleet, guest: Guest,
                                                   tmp_path: Path) -> None:
    start(fleet, tmp_path, "vm-busy.service",
          "[Service]\nExecStart=/bin/sh -c 'while :; do :; done'\nCPUQuota=20%\n"
          "CPUWeight=500\n")
    try:
        pid = running(fleet, "vm-busy.service")["pid"]
        cg = guest.cgroup_of(pid)
        assert cg.endswith("/vm-busy.service")
        assert guest.read(f"{cg}/cpu.max") == "20000 100000"
        assert guest.read(f"{cg}/cpu.weight") == "500"
        # the agent enabled cpu for the root's children: it had only "memory pids"
        assert "cpu" in guest.sh("cat /sys/fs/cgroup/cgroup.subtree_control").split()

        def throttled() -> int:
            stat = dict(line.split() for line in (guest.read(f"{cg}/cpu.stat") or "").splitlines())
            return int(stat.get("nr_throttled", 0))

        periods = wait_for("the busy loop throttled", throttled, 60)
        print(f"\nCPUQuota=20%: throttled in {periods} periods")
    finally:
        destroy(fleet, "vm-busy.service")


def test_tasks_max_makes_the_fork_past_the_limit_fail(fleet: Fleet, guest: Guest,
                                                      tmp_path: Path) -> None:
    guest.put("/root/forker.py", FORKER)
    start(fleet, tmp_path, "vm-forks.service",
          "[Service]\nType=oneshot\nExecStart=/usr/bin/python3 /root/forker.py\nTasksMax=10\n")
    try:
        wait_for("the forker done", lambda: unit_row(fleet, "vm-forks.service").get("state")
                 == "exited", 120)
        log = guest.read(f"{STATE_DIR}/logs/vm-forks.service.log") or ""
        print(f"\nTasksMax=10: {log}")
        assert json.loads(log) == {"ok": 9, "failed": 21}  # itself + 9 children
    finally:
        destroy(fleet, "vm-forks.service")


def test_stop_kills_the_whole_cgroup(fleet: Fleet, guest: Guest, tmp_path: Path) -> None:
    guest.put("/root/tree.sh", TREE, mode="755")
    start(fleet, tmp_path, "vm-tree.service",
          "[Service]\nExecStart=/root/tree.sh\nTimeoutStopSec=2s\n")
    try:
        main = running(fleet, "vm-tree.service")["pid"]
        cg = guest.cgroup_of(main)
        pids: List[int] = wait_for("the daemon beside the main process", lambda: (
            p if len(p := [int(x) for x in (guest.read(f"{cg}/cgroup.procs") or "").split()])
            == 2 else None), 60)
        [daemon] = [p for p in pids if p != main]
        assert guest.sh(f"ps -o sid= -p {daemon}").strip() != str(main)  # its own session
        fleet.ctl("stop", "vm-tree.service", timeout=120)
        wait_for("both gone", lambda: not guest.alive(main) and not guest.alive(daemon), 60)
        wait_for("the cgroup removed", lambda: guest.vm.run(f"test -d {cg}").returncode != 0,
                 30)
    finally:
        destroy(fleet, "vm-tree.service")


def test_kill_9_of_the_agent_readopts_the_same_pids(fleet: Fleet, guest: Guest,
                                                    tmp_path: Path) -> None:
    start(fleet, tmp_path, "vm-keep.service",
          "[Service]\nExecStart=/bin/sh -c 'sleep 1000 & exec sleep 1001'\n")
    try:
        main = running(fleet, "vm-keep.service")["pid"]
        cg = guest.cgroup_of(main)
        before = sorted(int(x) for x in (guest.read(f"{cg}/cgroup.procs") or "").split())
        assert len(before) == 2
        agent = int(guest.sh("systemctl show -p MainPID --value fleet-agent").strip())
        assert agent > 0
        killed = time.time()
        guest.sh(f"kill -9 {agent}")
        wait_for("a new agent (systemd restarts it)", lambda: int(
            guest.sh("systemctl show -p MainPID --value fleet-agent").strip() or 0)
            not in (0, agent), 60)
        wait_for("fleetd to hear the new agent", lambda: fleet.heard_since(killed), 120)
        row = running(fleet, "vm-keep.service")
        assert row["pid"] == main and row["restarts"] == 0
        after = sorted(int(x) for x in (guest.read(f"{cg}/cgroup.procs") or "").split())
        assert after == before
    finally:
        destroy(fleet, "vm-keep.service")


# --- the systemd driver: the guest's systemd enforces the same limits ---------------------------
def test_systemd_driver_enforces_the_same_limits(fleet: Fleet, guest: Guest,
                                                 tmp_path: Path) -> None:
    guest.put("/root/hog.py", HOG)
    guest.put("/root/forker.py", FORKER)
    sd = "[X-Fleet]\nDriver=systemd\n"
    names = ["vm-sd-hog.service", "vm-sd-busy.service", "vm-sd-forks.service"]
    start(fleet, tmp_path, names[0],
          f"[Service]\nExecStart=/usr/bin/python3 /root/hog.py\nMemoryMax=64M\n{sd}")
    start(fleet, tmp_path, names[1], "[Service]\nExecStart=/bin/sh -c 'while :; do :; done'\n"
                                     f"CPUQuota=20%\nCPUWeight=500\n{sd}")
    start(fleet, tmp_path, names[2], "[Service]\nExecStart=/usr/bin/python3 /root/forker.py "
                                     f"/run/vm-sd-forks.json\nTasksMax=10\n{sd}")
    try:
        hog = wait_for("the allocator OOM-killed", lambda: (
            r if (r := unit_row(fleet, names[0])).get("error") else None), 120)
        print(f"\nsystemd, MemoryMax=64M: {hog['error']} (exit {hog['exit_status']})")
        assert "OOM" in hog["error"] and "MemoryMax=64M" in hog["error"]
        assert hog["exit_status"] == -9

        pid = running(fleet, names[1])["pid"]
        cg = guest.cgroup_of(pid)
        assert cg == f"/sys/fs/cgroup/system.slice/{names[1]}"  # systemd's cgroup
        assert guest.read(f"{cg}/cpu.max") == "20000 100000"
        assert guest.read(f"{cg}/cpu.weight") == "500"
        wait_for("the busy loop throttled", lambda: "nr_throttled 0" not in (
            guest.read(f"{cg}/cpu.stat") or "nr_throttled 0"), 60)

        forks = wait_for("the forker's result", lambda: guest.read("/run/vm-sd-forks.json"), 120)
        print(f"systemd, TasksMax=10: {forks}")
        assert json.loads(forks) == {"ok": 9, "failed": 21}
    finally:
        destroy(fleet, *names)


# --- fleetctl lab up --vm ------------------------------------------------------------------------
def test_lab_up_with_a_vm_host_and_down_again(tmp_path: Path) -> None:
    """``fleetctl lab up --hosts 2 --vm 1``: h2 is a VM, registered with the lab's fleetd
    by bootstrap over SSH (strict host-key checking against the lab's known_hosts);
    ``lab down`` stops its QEMU and leaves nothing of it."""
    lab_dir = tmp_path / "lab"
    env = dict(os.environ, FLEETCTL_ENDPOINT=f"unix://{tmp_path}/fleetd.sock",
               FLEET_LAB_DIR=str(lab_dir))
    slot = os.getpid() % 250
    record: Dict[str, Any] = {}
    dev_null = _dev_null()

    def ctl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    try:
        up = ctl("lab", "up", "--hosts", "2", "--vm", "1", "--prefix", f"vm{slot}",
                 "--subnet", f"10.79.{slot}")
        print(f"\n{up.stdout}{up.stderr}")
        assert up.returncode == 0, up.stderr
        assert "VM host h2 at root@127.0.0.1:" in up.stdout
        assert "Installed the agent on VM host h2; up" in up.stdout
        machines = json.loads(ctl("list-machines", "-o", "json").stdout)
        rows = machines["machines"] if isinstance(machines, dict) else machines
        h2 = next(m for m in rows if m["name"] == "h2")
        assert h2["state"] == "up" and h2["metadata"]["vm"] == "true"
        record.update(json.loads((lab_dir / "vms.json").read_text())["h2"])
        assert h2["port"] == record["port"]
        known = (lab_dir / "known_hosts").read_text()
        assert f"[127.0.0.1]:{record['port']} ssh-ed25519 " in known
        status = ctl("lab", "status").stdout
        assert f"h2: VM host at root@127.0.0.1:{record['port']}, QEMU pid {record['pid']}" \
            in status
    finally:
        down = ctl("lab", "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert record and not procfs.alive(record["pid"], record["pid_start"])
    assert not (lab_dir / "vms").exists() and not (lab_dir / "vms.json").exists()
    # the machine as found: its /dev/null untouched, nothing mounted or looped for the VM
    assert _dev_null() == dev_null
    assert str(lab_dir) not in Path("/proc/self/mountinfo").read_text()
    assert not [b for b in Path("/sys/block").glob("loop*/loop/backing_file")
                if CACHE_DIR in b.read_text()]


def _dev_null() -> tuple[int, int, int, int]:
    st = os.stat("/dev/null")
    return st.st_mode, st.st_uid, st.st_gid, st.st_rdev


def test_sweep_stops_only_the_qemus_of_runs_that_are_gone() -> None:
    """``vm.sweep``: a QEMU named after a test run whose process is gone (killed before
    its fixture could stop the VM) is stopped; one whose run still lives is not. Stand-ins
    named like QEMU, since booting two VMs for this would cost a minute."""
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid nobody has now

    def fake_qemu(owner: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["bash", "-c", 'exec -a qemu-system-x86_64 "$0" -c '
                                 '"import time; time.sleep(600)" "$@"', sys.executable,
                                 "-name", f"fleet-lab-sweep-test-{owner}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    orphan, ours = fake_qemu(ended.pid), fake_qemu(os.getpid())
    try:
        wait_for("both stand-ins named like QEMU", lambda: all(
            procfs.cmdline(p.pid).startswith("qemu-system-x86_64 -c ")
            for p in (orphan, ours)))
        assert vm.sweep("sweep-test") == 1
        assert orphan.wait(10) == -15  # SIGTERM, as a QEMU is stopped
        assert ours.poll() is None
    finally:
        for p in (orphan, ours):
            p.kill()
            p.wait()
