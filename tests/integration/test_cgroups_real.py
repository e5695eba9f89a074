"""fleetd.cgroups on the real kernel of this machine: limits are enforced, every process
of a unit - daemonised ones too - is found and killed, and nothing is left behind.

Needs root. Each test works below its own parent cgroup ``fleet-test-<pid>-<n>`` in
every hierarchy, and the fixtures kill and remove everything made there, even when the
test fails (and sweep what an earlier, crashed run left).

Each mechanism is tested where the kernel has it, and only there: limits on the cgroup
version that holds memory, cpu and pids (``LIMIT_VERSIONS``: v1 on this lab's hybrid
machines, v2 on a pure v2 kernel), so nothing here skips for want of a mechanism. The v2
limits run in a real v2 kernel: tests/integration/test_vm_host.py boots one and runs this
file inside it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
from labkit import wait_for

from fleetd.cgroups import Backend, Limits, LimitsUnsupported, UnitCgroup, detect
from fleetd.cgroups.detect import DEFAULT_ROOT, parse_mountinfo
from fleetd.cgroups.kernel import KernelBackend, Layout

MiB = 1 << 20
MakeBackend = Callable[..., Backend]
_counter = itertools.count()

HOG = ("chunks = []\n"
       "for i in range(400):\n"
       "    chunks.append(b'x' * (1 << 20))  # written, so really resident\n"
       "print('allocated 400 MiB - NOT killed', flush=True)\n")
BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2.0:\n    pass\n"
FORKER = ("import errno, json, os\n"
          "r, w = os.pipe()\n"
          "ok = failed = 0\n"
          "err = None\n"
          "for i in range(30):\n"
          "    try:\n"
          "        pid = os.fork()\n"
          "    except OSError as e:\n"
          "        failed += 1; err = e.errno; continue\n"
          "    if pid == 0:\n"
          "        os.close(w); os.read(r, 1); os._exit(0)\n"
          "    ok += 1\n"
          "os.close(w)\n"
          "for i in range(ok):\n"
          "    os.wait()\n"
          "print(json.dumps({'ok': ok, 'failed': failed, 'errno': err}))\n")


def v2_mount() -> Optional[str]:
    with open("/proc/self/mountinfo") as f:
        for entry in parse_mountinfo(f.read()):
            if entry.fstype == "cgroup2" and entry.mountpoint.startswith(DEFAULT_ROOT):
                return entry.mountpoint
    return None


def limit_versions() -> List[str]:
    """The cgroup versions whose hierarchies hold all of memory, cpu and pids here (at
    most one: a controller is bound to one version)."""
    try:
        probe = detect(parent="probe")
    except Exception:  # no cgroups to speak of: the limit tests have nothing to run on
        return []
    if not isinstance(probe, KernelBackend):
        return []
    placement = probe.layout.placement()
    found = {placement.get(c) for c in ("memory", "cpu", "pids")}
    return [v for v in found if v is not None] if len(found) == 1 else []


LIMIT_VERSIONS = limit_versions()


def clean(backend: Backend) -> List[str]:
    """Kill and remove every unit cgroup below the backend's parent, then the parent;
    what could not be removed, as messages."""
    problems = []
    for name in backend.units():
        unit = backend.unit(name)
        unit.kill(signal.SIGKILL)
        try:
            wait_for(f"{name} to empty", unit.empty, 5)
            unit.remove()
        except (Exception, pytest.fail.Exception) as exc:  # keep cleaning the rest
            problems.append(f"{name}: {exc}")
    backend.remove()
    if isinstance(backend, KernelBackend):
        mounts = [backend.layout.v2] if backend.layout.v2 else []
        mounts += list(backend.layout.v1.values())
        top = backend.parent.split("/")[0]
        problems += [f"left behind: {m.path}/{top}" for m in mounts
                     if os.path.isdir(os.path.join(m.path, top))]
    return problems


@pytest.fixture(scope="module", autouse=True)
def root_and_sweep() -> None:
    if os.geteuid() != 0:
        pytest.fail("cgroup integration tests need root")
    backend = detect(parent="sweep")
    if not isinstance(backend, KernelBackend):
        return
    _kind, mount = backend.layout.membership()
    for entry in os.listdir(mount.path):
        m = re.fullmatch(r"fleet-test-(\d+)-\d+", entry)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            clean(detect(parent=entry))  # a crashed earlier run's


@pytest.fixture
def make_backend() -> Iterator[MakeBackend]:
    made: List[Backend] = []

    def make(root: str = DEFAULT_ROOT, layout: Optional[Layout] = None) -> Backend:
        parent = f"fleet-test-{os.getpid()}-{next(_counter)}"
        backend = KernelBackend(layout, parent) if layout else detect(root=root, parent=parent)
        made.append(backend)
        return backend

    yield make
    problems = [p for b in made for p in clean(b)]
    assert not problems, problems


@pytest.fixture
def host(make_backend: MakeBackend) -> KernelBackend:
    """The backend the agent gets on this machine."""
    backend = make_backend()
    if not isinstance(backend, KernelBackend):
        pytest.skip(f"no usable cgroups here: {backend.facts()['reason']}")
    return backend


@pytest.fixture(params=LIMIT_VERSIONS)
def limited(request: pytest.FixtureRequest, make_backend: MakeBackend) -> KernelBackend:
    """A backend whose memory, cpu and pids controllers are all on cgroup ``param`` (one
    of LIMIT_VERSIONS: the probe said they are there)."""
    mount = v2_mount() if request.param == "v2" else None
    backend = make_backend(mount) if mount else make_backend()
    assert isinstance(backend, KernelBackend), backend.facts()
    placement = backend.layout.placement()
    wanted = {c: placement.get(c) for c in ("memory", "cpu", "pids")}
    assert set(wanted.values()) == {request.param}, wanted
    return backend


def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return -1


def start(cg: UnitCgroup, argv: List[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, preexec_fn=cg.preexec(), start_new_session=True, **kw)


# --- limits, enforced ----------------------------------------------------------------------
def test_memory_max_gets_the_program_oom_killed(limited: KernelBackend) -> None:
    cg = limited.unit("oom.service")
    cg.create(Limits(memory_max=64 * MiB))
    p = start(cg, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, out
    assert b"NOT killed" not in out
    assert cg.oom_kills() >= 1
    stats = cg.stats()
    print(f"\nMemoryMax=64M: rc {p.returncode}, oom_kills {cg.oom_kills()}, "
          f"peak {stats.get('memory_peak_bytes', 0) // MiB} MiB")
    assert stats.get("memory_peak_bytes", 64 * MiB) <= 64 * MiB


def test_cpu_quota_holds_a_busy_loop_near_its_share(limited: KernelBackend) -> None:
    cg = limited.unit("busy.service")
    cg.create(Limits(cpu_quota=0.2))
    before = cg.stats()["cpu_throttled_periods"]
    t0 = time.monotonic()
    p = start(cg, [sys.executable, "-c", BUSY])
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    share = (usage.ru_utime + usage.ru_stime) / wall
    throttled = cg.stats()["cpu_throttled_periods"] - before
    print(f"\nCPUQuota=20%: {share:.0%} of one core over {wall:.2f}s, "
          f"throttled in {throttled} periods")
    assert p.returncode == 0
    assert 0.05 < share < 0.35
    assert throttled > 0  # the kernel held it back: that is the behaviour, not the timing


def test_tasks_max_makes_the_tenth_task_fail_to_fork(limited: KernelBackend) -> None:
    cg = limited.unit("forky.service")
    cg.create(Limits(tasks_max=10))
    p = start(cg, [sys.executable, "-c", FORKER], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    result = json.loads(out)
    print(f"\nTasksMax=10: {result}")
    assert result == {"ok": 9, "failed": 21, "errno": 11}  # itself + 9 children; EAGAIN


# --- every process, even daemonised ones -------------------------------------------------
def test_kill_sigterm_reaches_a_daemonised_redis(host: KernelBackend, tmp_path: Path) -> None:
    cg = host.unit("redis.service")
    cg.create(Limits(memory_max=256 * MiB, tasks_max=64))
    sock, pidfile = tmp_path / "r.sock", tmp_path / "r.pid"
    launcher = start(cg, ["redis-server", "--daemonize", "yes", "--port", "0",
                          "--unixsocket", str(sock), "--pidfile", str(pidfile),
                          "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log"),
                          "--save", "", "--appendonly", "no"])
    assert launcher.wait(10) == 0  # the launcher exits once the daemon is on its own
    wait_for("redis' pid file and socket", lambda: pidfile.exists() and sock.exists())
    daemon = int(pidfile.read_text())
    assert daemon != launcher.pid
    assert os.getsid(daemon) != launcher.pid  # it left the session: killpg would miss it
    assert cg.pids() == [daemon]
    assert cg.contains(daemon)
    assert not cg.contains(os.getpid())
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    assert cg.kill(signal.SIGTERM) == 1
    wait_for("redis to exit on SIGTERM", cg.empty)
    cg.remove()
    assert not any(os.path.exists(d) for d in cg.directories())
    assert "ready to exit" in (tmp_path / "redis.log").read_text()  # a clean shutdown


def test_kill_sigkill_reaches_nginx_master_and_workers(host: KernelBackend, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pidfile = tmp_path / "n.pid"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
pid {pidfile};
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    cg = host.unit("nginx.service")
    cg.create(Limits())
    launcher = start(cg, ["nginx", "-c", str(conf), "-p", str(tmp_path),
                          "-e", str(tmp_path / "error.log"), "-g", "daemon on;"])
    assert launcher.wait(10) == 0
    wait_for("nginx' pid file", pidfile.exists)
    master = int(pidfile.read_text())
    wait_for("master and 2 workers", lambda: len(cg.pids()) == 3)
    assert master in cg.pids() and os.getsid(master) != launcher.pid
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
        assert reply.read() == b"ok\n"
    t0 = time.monotonic()
    assert cg.kill(signal.SIGKILL) == 3
    wait_for("nginx to die", cg.empty)
    print(f"\nnginx: 3 processes killed, cgroup empty after "
          f"{(time.monotonic() - t0) * 1000:.1f} ms")
    cg.remove()
    assert not any(os.path.exists(d) for d in cg.directories())


def test_remove_refuses_a_cgroup_with_processes(host: KernelBackend) -> None:
    cg = host.unit("busy-remove.service")
    cg.create(Limits())
    p = start(cg, ["sleep", "30"])
    try:
        with pytest.raises(Exception, match="processes remain"):
            cg.remove()
    finally:
        cg.kill(signal.SIGKILL)
        p.wait(5)
    wait_for("empty", cg.empty)
    cg.remove()


# --- membership and kill, by each mechanism this kernel has ------------------------------
def tree_mechanisms() -> List[str]:
    """How this kernel can hold and kill a unit's tree: v2 (a cgroup2 mount: cgroup.kill,
    cgroup.freeze), v1-freezer (the v1 freezer), v1-iterate (v1 without it)."""
    found = ["v2"] if v2_mount() is not None else []
    try:
        probe = detect(parent="probe")
    except Exception:
        return found
    v1 = probe.layout.v1 if isinstance(probe, KernelBackend) else {}
    if v1:
        found += (["v1-freezer"] if "freezer" in v1 else []) + ["v1-iterate"]
    return found


TREE_MECHANISMS = tree_mechanisms()


def _tree(mechanism: str, make_backend: MakeBackend) -> KernelBackend:
    if mechanism == "v2":
        mount = v2_mount()
        assert mount is not None
        backend = make_backend(mount)
        assert isinstance(backend, KernelBackend) and backend.version == "v2", backend
        return backend
    host = detect(parent="probe")
    v1 = dict(host.layout.v1) if isinstance(host, KernelBackend) else {}
    if mechanism == "v1-iterate":
        v1.pop("freezer", None)
    backend = make_backend(layout=Layout(v1=v1))
    assert isinstance(backend, KernelBackend) and backend.version == "v1"
    return backend


@pytest.fixture(params=TREE_MECHANISMS)
def tree(request: pytest.FixtureRequest, make_backend: MakeBackend) -> KernelBackend:
    """v2: the cgroup2 tree alone (cgroup.kill, cgroup.freeze); v1-freezer: the v1
    hierarchies alone, killing through the freezer; v1-iterate: the same without the
    freezer, chasing cgroup.procs. Each that this kernel has."""
    return _tree(request.param, make_backend)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_finds_and_kills_a_double_forked_daemon(tree: KernelBackend, signum: int) -> None:
    cg = tree.unit("tree.service")
    if not tree.facts()["limits"]:
        with pytest.raises(LimitsUnsupported, match="MemoryMax=64M cannot be enforced"):
            cg.create(Limits(memory_max=64 * MiB))
    cg.create(Limits())
    # sh runs a foreground sleep and a daemon: a subshell that setsids and exits at once
    shell = start(cg, ["sh", "-c", "(setsid sleep 60 &); exec sleep 60"])

    def daemonised() -> List[int]:
        pids = cg.pids()
        return [p for p in pids if len(pids) == 2 and p != shell.pid and _sid(p) != shell.pid]

    wait_for("the daemon in its own session, the shell's sleep", daemonised)
    [daemon] = daemonised()
    assert os.getpgid(daemon) != shell.pid  # killpg(program) would miss it
    assert cg.contains(daemon) and cg.contains(shell.pid)
    t0 = time.monotonic()
    assert cg.kill(signum) == 2
    wait_for("the tree to die", cg.empty)
    print(f"\n{tree.facts()['membership']} {signal.Signals(signum).name}: empty after "
          f"{(time.monotonic() - t0) * 1000:.1f} ms")
    assert shell.wait(5) == -signum
    for d in cg.directories():  # thawed again, wherever it was frozen
        for name, thawed in (("cgroup.freeze", "0"), ("freezer.state", "THAWED")):
            if os.path.exists(os.path.join(d, name)):
                assert Path(d, name).read_text().strip() == thawed
    cg.remove()


CHURN = ("import ctypes, os\n"
         "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come here\n"
         "if os.fork() == 0:\n"
         "    while True:  # a new pid every millisecond: fork, let the parent exit\n"
         "        if os.fork():\n"
         "            os._exit(0)\n"
         "while True:\n"
         "    try:\n"
         "        os.wait()\n"
         "    except ChildProcessError:\n"
         "        pass\n")


@pytest.fixture(params=[m for m in TREE_MECHANISMS if m != "v1-iterate"])
def stopping_tree(request: pytest.FixtureRequest, make_backend: MakeBackend
                  ) -> KernelBackend:
    """A tree that can stop a forking program for good: cgroup.kill/freeze (v2) or the
    v1 freezer. Without either, a kill chases new pids best-effort: nothing to assert."""
    return _tree(request.param, make_backend)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_kill_wins_against_a_program_that_keeps_forking(stopping_tree: KernelBackend,
                                                        signum: int) -> None:
    tree = stopping_tree
    cg = tree.unit("churn.service")
    cg.create(Limits())
    reaper = start(cg, [sys.executable, "-c", CHURN])
    wait_for("the churn", lambda: len(cg.pids()) >= 2)
    first = set(cg.pids())
    wait_for("new pids", lambda: set(cg.pids()) - first - {reaper.pid})
    cg.kill(signum)
    wait_for("every process of the churn to die", cg.empty, 5)
    assert reaper.wait(5) == -signum
    cg.remove()
