"""fleetd.cgroups on a fake cgroupfs: which value is written to which file, for v1, v2
and hybrid hosts, and what detection makes of a mount table.

``FakeKernel`` lays out directories with the control files the kernel would create on
mkdir (a cgroup directory is never empty on a real host), so that the code under test
meets the same files - and a file the kernel would not have stays missing, making a
write to it fail as it would for real. Nothing here needs root or touches /sys.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from fleetd.cgroups import CgroupError, HostSize, Limits, LimitsUnsupported, detect
from fleetd.cgroups import v1 as cg_v1
from fleetd.cgroups import v2 as cg_v2
from fleetd.cgroups.detect import parse_mountinfo
from fleetd.cgroups.kernel import KernelBackend, escape, unescape
from fleetd.cgroups.none import NoneBackend

PARENT = "fleet/m1"
UNIT = "app.service"

V2_ROOT_FILES = {"cgroup.procs": "", "cgroup.subtree_control": "", "cpu.stat": "usage_usec 0\n"}
V2_FILES = {"cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.controllers": "",
            "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0", "cgroup.kill": "",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"}
V2_CONTROLLER_FILES = {
    "memory": {"memory.max": "max\n", "memory.current": "0\n", "memory.peak": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
               "memory.swap.max": "max\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n", "cpu.idle": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
V1_FILES = {
    "memory": {"memory.limit_in_bytes": "9223372036854771712\n",
               "memory.memsw.limit_in_bytes": "9223372036854771712\n",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
               "memory.usage_in_bytes": "0\n", "memory.max_usage_in_bytes": "0\n"},
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n",
            "cpu.idle": "0\n", "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
    "cpuacct": {"cpuacct.usage": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}
Spawn = Callable[[int], List["subprocess.Popen[bytes]"]]
HYBRID_V1 = ("cpu", "cpuacct", "memory", "pids", "freezer", "devices")


class FakeKernel:
    """A cgroupfs under ``root``: v1 hierarchies named by controller and/or a v2 tree at
    ``v2_at`` ("" for the root itself, as on a pure v2 host)."""

    def __init__(self, root: str, v1: Tuple[str, ...] = (), v2_at: Optional[str] = None,
                 v2_controllers: str = "", ro: bool = False) -> None:
        self.root = root
        self.v1 = v1
        self.v2_at = v2_at
        self.lines: List[str] = []
        opt = "ro" if ro else "rw"
        if v2_at is not None:
            self.v2_path = os.path.join(root, v2_at) if v2_at else root
            os.makedirs(self.v2_path, exist_ok=True)
            self._files(self.v2_path, {**V2_ROOT_FILES, "cgroup.controllers": v2_controllers})
            self.lines.append(f"41 31 0:38 / {self.v2_path} {opt},relatime - cgroup2 cgroup2 {opt}")
        for i, controller in enumerate(v1):
            path = os.path.join(root, controller)
            os.makedirs(path, exist_ok=True)
            self._files(path, {"cgroup.procs": "", "tasks": ""})
            self.lines.append(f"{32 + i} 31 0:{29 + i} / {path} {opt},relatime - cgroup cgroup "
                              f"{opt},{controller}")
        self.v2_controllers = v2_controllers.split()

    @staticmethod
    def _files(directory: str, files: Dict[str, str]) -> None:
        for name, text in files.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)

    def mountinfo(self) -> str:
        return "\n".join(["31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
                          *self.lines]) + "\n"

    def mkdir(self, rel: str) -> None:
        """What the kernel does on mkdir, in every hierarchy, for each level of ``rel``."""
        parts = rel.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if self.v2_at is not None:
                d = os.path.join(self.v2_path, sub)
                if not os.path.isdir(d):
                    os.makedirs(d)
                    self._files(d, V2_FILES)
                    for c in self.v2_controllers:
                        self._files(d, V2_CONTROLLER_FILES.get(c, {}))
            for controller in self.v1:
                d = os.path.join(self.root, controller, sub)
                if not os.path.isdir(d):
                    os.makedirs(d)
                    self._files(d, {"cgroup.procs": "", "tasks": "",
                                    **V1_FILES.get(controller, {})})

    def backend(self, proc: str = "/proc") -> KernelBackend:
        backend = detect(root=self.root, parent=PARENT, mountinfo=self.mountinfo(), proc=proc)
        assert isinstance(backend, KernelBackend), backend
        return backend

    def unit_dir(self, hierarchy: str) -> str:
        base = self.v2_path if hierarchy == "v2" else os.path.join(self.root, hierarchy)
        return os.path.join(base, PARENT, UNIT)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def put(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def hybrid(tmp_path: Path) -> FakeKernel:
    """This lab's machines: v1 controllers, a cgroup2 tree at unified/ with none."""
    k = FakeKernel(str(tmp_path / "cg"), v1=HYBRID_V1, v2_at="unified", v2_controllers="hugetlb")
    k.mkdir(f"{PARENT}/{UNIT}")
    return k


@pytest.fixture
def pure_v2(tmp_path: Path) -> FakeKernel:
    k = FakeKernel(str(tmp_path / "cg"), v2_at="", v2_controllers="cpuset cpu io memory pids")
    k.mkdir(f"{PARENT}/{UNIT}")
    return k


@pytest.fixture
def pure_v1(tmp_path: Path) -> FakeKernel:
    k = FakeKernel(str(tmp_path / "cg"), v1=("cpu", "cpuacct", "memory", "pids", "freezer"))
    k.mkdir(f"{PARENT}/{UNIT}")
    return k


@pytest.fixture
def sleepers() -> Iterator[Spawn]:
    """Real processes to signal, listed in fake cgroup.procs files."""
    procs: List[subprocess.Popen[bytes]] = []

    def spawn(n: int) -> List[subprocess.Popen[bytes]]:
        new = [subprocess.Popen(["sleep", "30"]) for _ in range(n)]
        procs.extend(new)
        return new

    yield spawn
    for p in procs:
        p.kill()
        p.wait()


# --- detection ---------------------------------------------------------------------------
def test_detects_this_labs_hybrid_host(hybrid: FakeKernel) -> None:
    backend = hybrid.backend()
    assert backend.version == "hybrid"
    facts = backend.facts()
    assert facts["limits"] == ["cpu_quota", "cpu_weight", "memory_max", "tasks_max"]
    assert facts["controllers"] == {"memory": "v1", "cpu": "v1", "cpuacct": "v1", "pids": "v1",
                                    "freezer": "v1"}
    assert facts["membership"] == "v2"  # cgroup.kill and cgroup.events, even without controllers
    assert facts["parent"] == PARENT


def test_detects_pure_v2(pure_v2: FakeKernel) -> None:
    facts = pure_v2.backend().facts()
    assert facts["version"] == "v2"
    assert facts["controllers"] == {"memory": "v2", "cpu": "v2", "pids": "v2"}
    assert facts["limits"] == ["cpu_quota", "cpu_weight", "memory_max", "tasks_max"]


def test_detects_v1_with_comounted_cpu_cpuacct_and_no_freezer(tmp_path: Path) -> None:
    root = str(tmp_path / "cg")
    text = "\n".join([
        f"25 24 0:22 / {root}/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        f"26 24 0:23 / {root}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        f"27 24 0:24 / {root}/memory rw - cgroup cgroup rw,memory",
        f"28 24 0:25 / {root}/pids rw - cgroup cgroup rw,pids",
    ])
    os.makedirs(root)
    backend = detect(root=root, parent=PARENT, mountinfo=text)
    assert isinstance(backend, KernelBackend)
    assert backend.version == "v1"
    assert backend.layout.v1["cpu"] is backend.layout.v1["cpuacct"]
    assert "freezer" not in backend.layout.v1  # and name=systemd is not ours
    assert backend.facts()["membership"] == "v1:pids"
    dirs = backend.unit(UNIT).directories()
    assert dirs == [f"{root}/cpu,cpuacct/{PARENT}/{UNIT}", f"{root}/memory/{PARENT}/{UNIT}",
                    f"{root}/pids/{PARENT}/{UNIT}"]


def test_detects_no_cgroups(tmp_path: Path) -> None:
    backend = detect(root=str(tmp_path), parent=PARENT,
                     mountinfo="22 1 0:21 / /proc rw - proc proc rw\n")
    assert isinstance(backend, NoneBackend)
    assert backend.facts() == {"version": "none", "limits": [], "controllers": {},
                               "membership": "pgid",
                               "reason": f"no cgroup file system is mounted at {tmp_path}"}


def test_read_only_cgroups_are_unusable(tmp_path: Path) -> None:
    """systemd-nspawn mounts the v1 controllers read-only: nothing can be enforced."""
    k = FakeKernel(str(tmp_path / "cg"), v1=("memory", "cpu"), ro=True)
    backend = detect(root=k.root, parent=PARENT, mountinfo=k.mountinfo())
    assert isinstance(backend, NoneBackend)
    assert "read-only" in backend.reason


def test_mounts_outside_root_do_not_count(tmp_path: Path) -> None:
    k = FakeKernel(str(tmp_path / "cg"), v1=("memory",))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    backend = detect(root=str(elsewhere), parent=PARENT, mountinfo=k.mountinfo())
    assert backend.version == "none"


def test_mountinfo_fields_and_escapes() -> None:
    line = ("36 31 0:33 /sub /sys/fs/with\\040space rw,nosuid shared:9 master:1 - "
            "cgroup cgroup rw,cpu,cpuacct")
    [entry] = parse_mountinfo(line)
    assert entry.mountpoint == "/sys/fs/with space"
    assert entry.root == "/sub"
    assert entry.fstype == "cgroup"
    assert entry.super_options == ("rw", "cpu", "cpuacct")


def test_parent_must_stay_below_the_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        detect(root=str(tmp_path), parent="../escape", mountinfo="")
    with pytest.raises(ValueError):
        detect(root=str(tmp_path), parent="/", mountinfo="")


# --- v2 ----------------------------------------------------------------------------------
def test_v2_writes_each_limit_and_enables_controllers_top_down(pure_v2: FakeKernel) -> None:
    put(os.path.join(pure_v2.root, "cgroup.subtree_control"), "cpuset memory\n")  # as systemd
    unit = pure_v2.backend().unit(UNIT)
    unit.create(Limits(memory_max=64 << 20, cpu_quota=0.2, cpu_weight=500, tasks_max=10))
    d = pure_v2.unit_dir("v2")
    assert read(f"{d}/memory.max") == str(64 << 20)
    assert read(f"{d}/cpu.max") == "20000 100000"
    assert read(f"{d}/cpu.idle") == "0"
    assert read(f"{d}/cpu.weight") == "500"
    assert read(f"{d}/pids.max") == "10"
    assert read(f"{d}/memory.swap.max") == "max\n"  # MemoryMax is memory only, like systemd
    # the root already had memory on: only what was missing is written there
    assert read(f"{pure_v2.root}/cgroup.subtree_control") == "+cpu +pids"
    assert read(f"{pure_v2.root}/fleet/cgroup.subtree_control") == "+cpu +memory +pids"
    assert read(f"{pure_v2.root}/{PARENT}/cgroup.subtree_control") == "+cpu +memory +pids"
    assert read(f"{d}/cgroup.subtree_control") == ""  # a leaf delegates nothing


def test_v2_unset_limits_are_reset(pure_v2: FakeKernel) -> None:
    unit = pure_v2.backend().unit(UNIT)
    unit.create(Limits(memory_max=1 << 30, cpu_quota=2.0, cpu_weight=1, tasks_max=5))
    assert read(f"{pure_v2.unit_dir('v2')}/cpu.max") == "200000 100000"
    unit.create(Limits())
    d = pure_v2.unit_dir("v2")
    assert [read(f"{d}/{f}") for f in ("memory.max", "cpu.max", "cpu.weight", "pids.max")] == \
        ["max", "max 100000", "100", "max"]


def test_v2_idle_weight(pure_v2: FakeKernel) -> None:
    unit = pure_v2.backend().unit(UNIT)
    unit.create(Limits(cpu_weight=0))
    assert read(f"{pure_v2.unit_dir('v2')}/cpu.idle") == "1"
    os.remove(f"{pure_v2.unit_dir('v2')}/cpu.idle")  # a kernel before 5.15
    unit.create(Limits(cpu_weight=0))
    assert read(f"{pure_v2.unit_dir('v2')}/cpu.weight") == "1"


def test_v2_without_controllers_refuses_limits_but_keeps_membership(tmp_path: Path) -> None:
    """A container whose cgroup2 tree has no controllers delegated."""
    k = FakeKernel(str(tmp_path / "cg"), v2_at="", v2_controllers="")
    k.mkdir(f"{PARENT}/{UNIT}")
    backend = k.backend()
    assert backend.facts()["limits"] == []
    unit = backend.unit(UNIT)
    with pytest.raises(LimitsUnsupported) as err:
        unit.create(Limits(memory_max=64 << 20, tasks_max=10))
    assert str(err.value) == (f"{UNIT}: MemoryMax=64M TasksMax=10 cannot be enforced on this "
                              "host: its cgroups (v2) have no memory or pids controller")
    unit.create(Limits())  # no limits: fine, the program is still tracked and killable
    assert read(f"{k.root}/cgroup.subtree_control") == ""


def test_v2_sigkill_uses_cgroup_kill(pure_v2: FakeKernel) -> None:
    d = pure_v2.unit_dir("v2")
    put(f"{d}/cgroup.procs", "101\n102\n")
    assert pure_v2.backend().unit(UNIT).kill(signal.SIGKILL) == 2
    assert read(f"{d}/cgroup.kill") == "1"


def test_v2_other_signals_freeze_signal_thaw(pure_v2: FakeKernel, sleepers: Spawn) -> None:
    d = pure_v2.unit_dir("v2")
    procs = sleepers(2)
    put(f"{d}/cgroup.procs", "".join(f"{p.pid}\n" for p in procs))
    put(f"{d}/cgroup.events", "populated 1\nfrozen 1\n")  # the fake kernel freezes at once
    assert pure_v2.backend().unit(UNIT).kill(signal.SIGTERM) == 2
    assert [p.wait(5) for p in procs] == [-signal.SIGTERM] * 2
    assert read(f"{d}/cgroup.freeze") == "0"  # thawed again
    assert read(f"{d}/cgroup.kill") == ""


def test_v2_leaves_a_cgroup_frozen_by_someone_else_frozen(pure_v2: FakeKernel,
                                                          sleepers: Spawn) -> None:
    d = pure_v2.unit_dir("v2")
    [proc] = sleepers(1)
    put(f"{d}/cgroup.procs", f"{proc.pid}\n")
    put(f"{d}/cgroup.freeze", "1\n")
    pure_v2.backend().unit(UNIT).kill(signal.SIGINT)
    assert proc.wait(5) == -signal.SIGINT
    assert read(f"{d}/cgroup.freeze") == "1\n"


def test_v2_empty_oom_and_stats(pure_v2: FakeKernel) -> None:
    d = pure_v2.unit_dir("v2")
    unit = pure_v2.backend().unit(UNIT)
    assert unit.empty()
    put(f"{d}/cgroup.events", "populated 1\nfrozen 0\n")
    assert not unit.empty()
    put(f"{d}/memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    assert unit.oom_kills() == 2
    put(f"{d}/cpu.stat", "usage_usec 5\nnr_periods 9\nnr_throttled 4\nthrottled_usec 300\n")
    put(f"{d}/memory.current", "4096\n")
    assert unit.stats() == {"cpu_usage_usec": 5, "cpu_throttled_periods": 4,
                            "cpu_throttled_usec": 300, "memory_bytes": 4096,
                            "memory_peak_bytes": 0, "tasks": 0}
    assert pure_v2.backend().unit("gone.service").empty()


# --- v1 ----------------------------------------------------------------------------------
def test_v1_writes_each_limit_where_systemd_would(pure_v1: FakeKernel) -> None:
    pure_v1.backend().unit(UNIT).create(
        Limits(memory_max=64 << 20, cpu_quota=0.2, cpu_weight=200, tasks_max=10))
    mem, cpu, pids = (pure_v1.unit_dir(c) for c in ("memory", "cpu", "pids"))
    assert read(f"{mem}/memory.limit_in_bytes") == str(64 << 20)
    assert read(f"{mem}/memory.memsw.limit_in_bytes") == "9223372036854771712\n"  # untouched
    assert read(f"{cpu}/cpu.cfs_period_us") == "100000"
    assert read(f"{cpu}/cpu.cfs_quota_us") == "20000"
    assert read(f"{cpu}/cpu.shares") == "2048"
    assert read(f"{cpu}/cpu.idle") == "0"
    assert read(f"{pids}/pids.max") == "10"


def test_v1_unset_limits_are_reset(pure_v1: FakeKernel) -> None:
    unit = pure_v1.backend().unit(UNIT)
    unit.create(Limits(memory_max=1 << 20, cpu_quota=0.5, cpu_weight=0, tasks_max=3))
    cpu = pure_v1.unit_dir("cpu")
    assert (read(f"{cpu}/cpu.shares"), read(f"{cpu}/cpu.idle")) == ("2", "1")  # idle
    unit.create(Limits())
    assert read(f"{pure_v1.unit_dir('memory')}/memory.limit_in_bytes") == "-1"
    assert read(f"{cpu}/cpu.cfs_quota_us") == "-1"
    assert (read(f"{cpu}/cpu.shares"), read(f"{cpu}/cpu.idle")) == ("1024", "0")
    assert read(f"{pure_v1.unit_dir('pids')}/pids.max") == "max"


@pytest.mark.parametrize("weight, shares", [(None, 1024), (100, 1024), (1, 10), (50, 512),
                                            (10000, 102400), (0, 2)])
def test_cpu_weight_to_shares_like_systemd(weight: Optional[int], shares: int) -> None:
    assert cg_v1.shares(weight) == shares


@pytest.mark.parametrize("cpus, quota", [(0.2, 20000), (2.0, 200000), (0.0001, 1000),
                                         (1.5, 150000)])
def test_cpu_quota_in_microseconds_per_100ms(cpus: float, quota: int) -> None:
    assert cg_v2.quota_us(cpus) == quota


def test_v1_kill_freezes_signals_and_thaws(pure_v1: FakeKernel, sleepers: Spawn) -> None:
    procs = sleepers(2)
    put(f"{pure_v1.unit_dir('freezer')}/cgroup.procs", "".join(f"{p.pid}\n" for p in procs))
    assert pure_v1.backend().unit(UNIT).kill(signal.SIGTERM) == 2
    assert [p.wait(5) for p in procs] == [-signal.SIGTERM] * 2
    assert read(f"{pure_v1.unit_dir('freezer')}/freezer.state") == "THAWED"


def test_v1_kill_without_freezer_iterates(tmp_path: Path, sleepers: Spawn) -> None:
    k = FakeKernel(str(tmp_path / "cg"), v1=("memory", "pids"))
    k.mkdir(f"{PARENT}/{UNIT}")
    procs = sleepers(3)
    put(f"{k.unit_dir('pids')}/cgroup.procs", "".join(f"{p.pid}\n" for p in procs))
    unit = k.backend().unit(UNIT)
    assert unit.pids() == sorted(p.pid for p in procs)
    assert unit.kill(signal.SIGKILL) == 3
    assert [p.wait(5) for p in procs] == [-signal.SIGKILL] * 3


def test_v1_oom_kills_and_stats(pure_v1: FakeKernel) -> None:
    unit = pure_v1.backend().unit(UNIT)
    put(f"{pure_v1.unit_dir('memory')}/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert unit.oom_kills() == 3
    put(f"{pure_v1.unit_dir('cpu')}/cpu.stat",
        "nr_periods 20\nnr_throttled 15\nthrottled_time 2000000\n")
    put(f"{pure_v1.unit_dir('cpuacct')}/cpuacct.usage", "400000000\n")
    stats = unit.stats()
    assert (stats["cpu_throttled_periods"], stats["cpu_throttled_usec"]) == (15, 2000)
    assert stats["cpu_usage_usec"] == 400000


# --- hybrid: limits on v1, membership on v2 ----------------------------------------------
def tree(root: str) -> Dict[str, Optional[str]]:
    """Every directory (None) and file (its text) below ``root``."""
    out: Dict[str, Optional[str]] = {}
    for here, dirs, files in os.walk(root):
        out.update({os.path.join(here, d): None for d in dirs})
        out.update({os.path.join(here, f): read(os.path.join(here, f)) for f in files})
    return out


def test_hybrid_limits_go_to_v1_and_v2_enables_nothing(hybrid: FakeKernel) -> None:
    devices = tree(f"{hybrid.root}/devices")
    hybrid.backend().unit(UNIT).create(Limits(memory_max=64 << 20, tasks_max=10))
    assert read(f"{hybrid.unit_dir('memory')}/memory.limit_in_bytes") == str(64 << 20)
    assert read(f"{hybrid.unit_dir('pids')}/pids.max") == "10"
    assert read(f"{hybrid.v2_path}/cgroup.subtree_control") == ""
    assert tree(f"{hybrid.root}/devices") == devices  # a hierarchy fleetd does not use


def test_preexec_joins_every_hierarchy_with_its_own_pid(hybrid: FakeKernel) -> None:
    unit = hybrid.backend().unit(UNIT)
    unit.preexec()()  # what the forked child does; "0" is "me" to the kernel
    for h in ("v2", "memory", "cpu", "cpuacct", "pids", "freezer"):
        assert read(f"{hybrid.unit_dir(h)}/cgroup.procs") == "0", h
    assert read(f"{hybrid.root}/devices/cgroup.procs") == ""  # not a hierarchy fleetd uses


def test_preexec_fails_loudly_when_the_cgroup_is_missing(hybrid: FakeKernel) -> None:
    join = hybrid.backend().unit("never-created.service").preexec()
    with pytest.raises(FileNotFoundError):
        join()


def test_contains_reads_proc_cgroup_of_the_membership_hierarchy(hybrid: FakeKernel,
                                                                tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    lines = {
        10: f"6:freezer:/{PARENT}/{UNIT}\n0::/{PARENT}/{UNIT}\n",
        11: f"6:freezer:/{PARENT}/{UNIT}\n0::/\n",  # left the v2 cgroup
        12: f"0::/{PARENT}/{UNIT}2\n",  # a prefix is not membership
        13: f"0::/{PARENT}/{UNIT}/worker\n",  # a sub-cgroup the program made
    }
    for pid, text in lines.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(text)
    unit = hybrid.backend(proc=str(proc)).unit(UNIT)
    assert [unit.contains(pid) for pid in (10, 11, 12, 13, 14)] == [True, False, False, True,
                                                                    False]


def test_hybrid_pids_come_from_v2(hybrid: FakeKernel) -> None:
    put(f"{hybrid.unit_dir('v2')}/cgroup.procs", "7\n5\n")
    os.makedirs(f"{hybrid.unit_dir('v2')}/worker")
    put(f"{hybrid.unit_dir('v2')}/worker/cgroup.procs", "9\n")
    put(f"{hybrid.unit_dir('memory')}/cgroup.procs", "1\n")
    assert hybrid.backend().unit(UNIT).pids() == [5, 7, 9]


def test_remove_tolerates_gone_cgroups_and_units_lists_names(hybrid: FakeKernel) -> None:
    backend = hybrid.backend()
    backend.unit("never-created.service").remove()
    hybrid.mkdir(f"{PARENT}/_memory.service")
    assert backend.units() == [UNIT, "memory.service"]


def test_remove_reports_a_busy_cgroup(hybrid: FakeKernel) -> None:
    # a fake directory with files in it stands for a cgroup rmdir(2) refuses
    with pytest.raises(CgroupError) as err:
        hybrid.backend().unit(UNIT).remove()
    assert hybrid.unit_dir("v2") in str(err.value)


@pytest.mark.parametrize("name, directory", [
    ("app.service", "app.service"), ("app@1.service", "app@1.service"),
    ("memory.service", "_memory.service"), ("_x.service", "__x.service"),
    ("tasks", "_tasks"), ("cgroup.procs", "_cgroup.procs"), (".hidden", "_.hidden"),
])
def test_unit_names_never_look_like_control_files(name: str, directory: str) -> None:
    assert escape(name) == directory
    assert unescape(directory) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_unit_names_that_cannot_be_directories(name: str) -> None:
    with pytest.raises(ValueError):
        escape(name)


# --- limits ------------------------------------------------------------------------------
def test_limits_from_config_resolves_percentages_against_the_host() -> None:
    host = HostSize(memory_bytes=8 << 30, tasks=32767)
    config = {"memory_max": None, "memory_max_percent": 25.0, "cpu_quota": 0.2,
              "cpu_weight": 0, "tasks_max": None, "tasks_max_percent": 10.0,
              "nofile": [1024, 4096]}
    limits = Limits.from_config(config, host)
    assert limits == Limits(memory_max=2 << 30, cpu_quota=0.2, cpu_weight=0, tasks_max=3276)
    assert limits.describe() == "MemoryMax=2G CPUQuota=20% CPUWeight=idle TasksMax=3276"


def test_limits_from_config_without_percentages_never_probes_the_host() -> None:
    config = {"memory_max": 64 << 20, "cpu_quota": None, "cpu_weight": None, "tasks_max": 10}
    assert Limits.from_config(config) == Limits(memory_max=64 << 20, tasks_max=10)
    assert Limits.from_config({}) == Limits()
    assert Limits().requested() == []


def test_host_size_follows_systemd_for_tasks(tmp_path: Path) -> None:
    kernel = tmp_path / "sys" / "kernel"
    kernel.mkdir(parents=True)
    (kernel / "pid_max").write_text("32768\n")
    (kernel / "threads-max").write_text("192730\n")
    host = HostSize.probe(proc=str(tmp_path))
    assert host.tasks == 32767  # pid_max - 1: pid 0 is not a pid
    assert host.memory_bytes > 0
    (kernel / "threads-max").write_text("1000\n")
    assert HostSize.probe(proc=str(tmp_path)).tasks == 1000


def test_zero_percent_is_refused_rather_than_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="TasksMax"):
        Limits.from_config({"tasks_max_percent": 0.0}, HostSize(1 << 30, 100))


@pytest.mark.parametrize("bad", [{"memory_max": 0}, {"cpu_quota": 0.0}, {"cpu_weight": 10001},
                                 {"tasks_max": 0}])
def test_limits_refuse_impossible_values(bad: Dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**bad)  # type: ignore[arg-type]


# --- none --------------------------------------------------------------------------------
def test_none_backend_refuses_limits_and_falls_back_to_the_process_group() -> None:
    backend = NoneBackend("not root")
    unit = backend.unit(UNIT)
    unit.create(Limits())
    with pytest.raises(LimitsUnsupported, match="MemoryMax=64M cannot be enforced on this "
                                                "host: not root"):
        unit.create(Limits(memory_max=64 << 20))
    # a shell and its background child share the process group the shell leads
    p = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        grouped = backend.unit(UNIT, pgid=p.pid)
        for _ in range(200):
            if len(grouped.pids()) == 2:
                break
            subprocess.run(["sleep", "0.01"], check=True)
        assert len(grouped.pids()) == 2 and grouped.contains(p.pid)
        assert not grouped.contains(os.getpid())
        assert grouped.kill(signal.SIGTERM) == 2
        assert p.wait(5) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    assert backend.unit(UNIT).kill(signal.SIGTERM) == 0  # no group known: nothing to do
