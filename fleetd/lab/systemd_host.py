"""A real systemd host for the lab: a Debian root file system booted with systemd as PID 1.

The systemd driver can only be tested against a real systemd, and the machines this
project runs on are not booted by systemd. So the lab boots one: a debootstrap'ed
bookworm (fleetd.lab.rootfs: built once, cached outside the repo, never modified),
under an overlayfs whose writable layer lives in a temp dir per host, with systemd as
PID 1 of fresh PID, mount, UTS, IPC and cgroup namespaces inside a lab network
namespace (scripts/guest-launch.sh, scripts/guest-pid1.sh).

systemd-nspawn is not used on purpose: it mounts the cgroup controllers read-only, so
MemoryMax=/CPUQuota=/TasksMax= would silently not be enforced. Instead the boot follows
the lab's recipe (shared/lab/sd-pid1.sh), whose every step prevents a leak or a lie:

* the launcher moves into its own subtree of *every* cgroup v1 hierarchy before the
  cgroup namespace is made, so the guest's systemd roots its tree there; a hierarchy
  left out would get the guest's slices at the machine's root;
* the hierarchies are mounted fresh inside the guest, writable, so limits are enforced;
* ``/proc/sys`` is read-only: the guest's systemd-sysctl would otherwise change the
  machine's global sysctls (kernel.pid_max);
* the root is switched with pivot_root, so nothing of the machine stays reachable;
* after poweroff the cgroup subtree is removed depth-first, because systemd leaves its
  empty children behind.

Mounts live only in the guest's private mount namespace and vanish with its processes,
so poweroff leaves no mounts, no processes and no cgroups behind.

Two uses, two ways for fleetd's code to get in:

* the systemd driver's tests (``boot(..., source=REPO_ROOT)``): the fleetd source tree
  is bind-mounted read-only at /opt/fleetd, so the agent-side code runs in the guest
  against the guest's own python3 and psutil (PYTHONPATH=/opt/fleetd);
* the lab's systemd hosts (``fleetctl lab up --systemd M``, fleetd.lab.netns): no
  ``source`` (the default), nothing of the machine is mounted in, and the agent arrives
  the way it arrives on a real VM, over SSH. Their sshd is the guest's own (ssh.service), with
  the files the lab puts into the overlay's upper layer before boot (``files=``): a host
  key, root's authorized_keys and an sshd_config.d drop-in.

A host booted by one process can be powered off by another (``lab up`` and ``lab down``
are two fleetctl runs): ``poweroff_pid`` takes PID 1's pid and start time (checked, so a
reused pid is never signalled) and the cgroup subtrees, which the lab records.

This module is lab code (daemon side): it is never imported on a managed host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.resources
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from fleetd import procfs
from fleetd.bootstrap.bundle import source_root
from fleetd.cgroups import fs
from fleetd.cgroups.base import CgroupError
from fleetd.lab.rootfs import SystemdHostError as SystemdHostError  # re-exported: both
from fleetd.lab.rootfs import rootfs as rootfs  # raise it; systemd_host.rootfs() builds

# The guest gets every hierarchy this process is in (v1 controllers, the named systemd
# one, the cgroup2 mount) except cpuset, as in sd-pid1.sh: a new cpuset cgroup refuses
# processes until cpus/mems are set, and systemd on v1 does not manage cpuset anyway.
SKIPPED_CONTROLLERS = ("cpuset",)
CGROUP_ROOT = "/sys/fs/cgroup"
GUEST_SOURCE = "/opt/fleetd"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TEMP_PREFIX = "fleetd-sdhost-"
REPO_ROOT = source_root()  # the fleetd source tree a driver test mounts at GUEST_SOURCE


# --- cgroups ------------------------------------------------------------------------------
def _own_cgroups() -> Dict[str, str]:
    """This process's cgroup per hierarchy directory name under /sys/fs/cgroup."""
    out: Dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and controllers == "":
                out["unified"] = path
            elif controllers == "name=systemd":
                out["systemd"] = path
            else:
                out[controllers] = path
    return out


def _hierarchies() -> List[Tuple[str, str]]:
    """(directory name, cgroup path of this process) for every hierarchy the guest gets.

    The guest's subtree hangs below this process's own cgroup, not the machine's root,
    so whatever limits the test runner lives under also bound the guest."""
    if not os.path.isdir(os.path.join(CGROUP_ROOT, "memory")):
        raise SystemdHostError(
            "the systemd lab host needs cgroup v1 controllers under /sys/fs/cgroup/<name> "
            "(a hybrid cgroup layout); this machine has none")
    found = []
    for directory, path in _own_cgroups().items():
        if any(c in SKIPPED_CONTROLLERS for c in directory.split(",")):
            continue
        if os.path.isdir(os.path.join(CGROUP_ROOT, directory)):
            found.append((directory, path))
    if "systemd" not in dict(found):
        raise SystemdHostError(
            "no name=systemd cgroup hierarchy at /sys/fs/cgroup/systemd: the lab's systemd "
            "host needs it to root the guest's cgroups below its own subtree")
    return sorted(found)


def _remove_tree(path: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup and its children (cgroups.fs.remove_tree); the kernel frees a
    cgroup a moment after its last process is gone, so a busy one is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fs.remove_tree(path)
            return
        except CgroupError as exc:
            if time.monotonic() > deadline:
                raise SystemdHostError(f"cgroup {path} is still busy: {exc}") from None
            time.sleep(0.02)


# --- the booted host ------------------------------------------------------------------------
def _script(name: str) -> str:
    """A shell script of fleetd/lab/scripts/ (package data, checked by shellcheck)."""
    return (importlib.resources.files(__package__) / "scripts" / name).read_text(encoding="utf-8")


_INNER = _script("guest-pid1.sh")  # PID 1 of the new namespaces, until it execs systemd
_OUTER = _script("guest-launch.sh")  # into the cgroups and namespaces, then _INNER


@dataclasses.dataclass
class SystemdHost:
    """A booted systemd host. ``pid1`` is its PID 1 as the machine numbers it."""

    name: str
    netns: str
    pid1: int
    dir: str  # temp dir: the overlay's upper and work dirs, the launcher's log
    cgroups: List[str]  # the host's subtree in each hierarchy, absolute paths
    launcher: subprocess.Popen[bytes]
    boot_seconds: float = 0.0
    state: str = ""  # systemctl is-system-running once booted: running or degraded
    source: bool = False  # the fleetd source tree is mounted at /opt/fleetd
    pid1_start: int = 0  # PID 1's start time (clock ticks after the machine's boot)

    def run(self, argv: Sequence[str], *, timeout: Optional[float] = 60.0, check: bool = False,
            env: Optional[Dict[str, str]] = None,
            input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host: its namespaces, its root, a clean environment
        (PATH, LANG, HOME, PYTHONPATH=/opt/fleetd if the source is mounted, then ``env``)."""
        environment = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/root",
                       "PYTHONDONTWRITEBYTECODE": "1"}
        if self.source:
            environment["PYTHONPATH"] = GUEST_SOURCE
        environment.update(env or {})
        # -a: every namespace of PID 1; -r/-w: its root and working directory too, else
        # the command would resolve paths against the machine's root
        command = ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "--", *argv]
        proc = subprocess.run(command, env=environment, capture_output=True, text=True,
                              timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise SystemdHostError(f"{self.name}: {' '.join(argv)}: exit {proc.returncode}: "
                                   f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def failed_units(self) -> List[str]:
        out = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def alive(self) -> bool:
        return self.launcher.poll() is None

    def poweroff(self, timeout: float = 20.0) -> float:
        """Power the host off and remove everything it left; returns the seconds taken.

        SIGRTMIN+4 is systemd's "poweroff" request: units stop in order, then PID 1
        exits and the kernel tears the namespaces down. SIGKILL if it hangs."""
        began = time.monotonic()
        try:
            if self.launcher.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGRTMIN + 4)
                try:
                    self.launcher.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid1, signal.SIGKILL)  # the whole PID namespace dies
                    self.launcher.wait(10)
            for path in self.cgroups:
                _remove_tree(path)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        return time.monotonic() - began


def request_poweroff(pid1: int, pid1_start: int) -> bool:
    """Ask the host whose PID 1 is (``pid1``, ``pid1_start``) to power off; False if that
    process is gone already (a different process with a reused pid is left alone)."""
    if not procfs.alive(pid1, pid1_start):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid1, signal.SIGRTMIN + 4)
    return True


def poweroff_pid(pid1: int, pid1_start: int, cgroups: Sequence[str],
                 timeout: float = 20.0) -> float:
    """Power off a host that another process booted, given what it recorded (PID 1's pid
    and start time, the cgroup subtrees): poweroff request, wait until PID 1 is gone,
    SIGKILL if it is not within ``timeout``, then remove the subtrees. Returns seconds.

    The caller removes the overlay's directory (it chose where it was, ``workdir_parent``)."""
    began = time.monotonic()
    if request_poweroff(pid1, pid1_start):
        deadline = began + timeout
        while procfs.alive(pid1, pid1_start) and time.monotonic() < deadline:
            time.sleep(0.02)
        if procfs.alive(pid1, pid1_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)  # the whole PID namespace dies with it
            while procfs.alive(pid1, pid1_start) and time.monotonic() < deadline + 10:
                time.sleep(0.02)
    for path in cgroups:
        _remove_tree(path)
    return time.monotonic() - began


def boot(netns: str, name: str, *, root: Optional[str] = None,
         source: Optional[str] = None, hostname: Optional[str] = None,
         files: Optional[Mapping[str, Tuple[Union[str, bytes], int]]] = None,
         workdir_parent: Optional[str] = None, timeout: float = 30.0) -> SystemdHost:
    """Boot a systemd host called ``name`` in the network namespace ``netns`` (from
    ``ip netns add``) and wait until systemd says it is running (or degraded).

    ``root`` is the read-only lower layer (default: the cached rootfs, built if needed);
    ``source`` (a fleetd source tree, e.g. REPO_ROOT) is bind-mounted read-only at
    /opt/fleetd; by default nothing of the machine is.
    ``name`` names the host's cgroup subtrees and overlay directory, so it must be
    unique on the machine; ``hostname`` is what the guest calls itself (default: name).
    ``files`` maps guest paths to (content, mode): written into the overlay's upper layer
    before boot, they replace the rootfs's files (missing directories are made 0700).
    The overlay's directory is made in ``workdir_parent`` (default: the temp dir)."""
    if os.geteuid() != 0:
        raise SystemdHostError("booting a systemd host needs root (namespaces, mounts, cgroups)")
    hostname = hostname or name
    for what in (name, hostname):
        if not what.replace("-", "").isalnum():
            raise SystemdHostError(f"host name {what!r}: letters, digits and - only")
    netns_path = f"/run/netns/{netns}"
    if not os.path.exists(netns_path):
        raise SystemdHostError(f"network namespace {netns} does not exist (ip netns add {netns})")
    lower = root or rootfs()
    began = time.monotonic()
    cgroups = _make_cgroups(name)
    workdir = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{name}-", dir=workdir_parent)
    launcher: Optional[subprocess.Popen[bytes]] = None
    try:
        upper, work, merged = (os.path.join(workdir, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            os.mkdir(d, 0o755)
        _personalise(upper, lower, hostname, files or {})
        env = {"PATH": GUEST_PATH, "NETNS_PATH": netns_path, "INNER": _INNER,
               "R": merged, "LOWER": lower, "UPPER": upper, "WORK": work,
               "SOURCE": os.path.abspath(source) if source else "",
               "GUEST_SOURCE": GUEST_SOURCE,
               "HOST_NAME": hostname, "CG": " ".join(d for d, _ in _hierarchies())}
        with open(os.path.join(workdir, "launcher.log"), "wb") as log:
            # a session of its own: a Ctrl-C at the test runner must not reach the guest's
            # PID 1 (SIGINT is systemd's ctrl-alt-del)
            launcher = subprocess.Popen(["/bin/sh", "-ec", _OUTER, "sh", *cgroups], env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        pid1 = _wait_pid1(launcher, workdir)
        host = SystemdHost(name=name, netns=netns, pid1=pid1, dir=workdir, cgroups=cgroups,
                           launcher=launcher, source=bool(source),
                           pid1_start=procfs.start_ticks(pid1))
        host.state = _wait_running(host, began + timeout)
        host.boot_seconds = time.monotonic() - began
        return host
    except BaseException:
        if launcher is not None and launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                for child in procfs.children(launcher.pid):
                    os.kill(child, signal.SIGKILL)
            launcher.kill()
            launcher.wait(10)
        for path in cgroups:
            with contextlib.suppress(SystemdHostError, OSError):
                _remove_tree(path)
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _subtrees(name: str) -> List[str]:
    """The host's subtree in each hierarchy, below this process's own cgroup there."""
    return [os.path.join(CGROUP_ROOT, directory, own.lstrip("/"), f"fleetd-lab-{name}")
            for directory, own in _hierarchies()]


def _make_cgroups(name: str) -> List[str]:
    paths = _subtrees(name)
    for path in paths:
        if os.path.isdir(path):
            try:  # a leftover of a crashed run: empty subtrees go, busy ones are an error
                _remove_tree(path, timeout=0.5)
            except SystemdHostError:
                raise SystemdHostError(
                    f"cgroup {path} has processes: is a host named {name} still running? "
                    "(power it off, or systemd_host.sweep(name) after a crashed run)"
                ) from None
        os.mkdir(path)
    return paths


def sweep(name: str) -> int:
    """Kill what a crashed run left of the host ``name`` (its guest's processes, found
    through the host's own cgroup subtree, never by name) and remove the subtree.
    Returns how many processes were killed. For test set-up, like Lab.down before up."""
    subtrees = _subtrees(name)
    try:
        killed = sum(fs.signal_all(fs.procs(path), signal.SIGKILL) for path in subtrees)
    except CgroupError as exc:
        raise SystemdHostError(str(exc)) from None
    for path in subtrees:
        _remove_tree(path)
    # its overlay layers (the mounts went with the guest's mount namespace); mkdtemp adds
    # exactly 8 characters, so a host "a" never sweeps the layers of a host "a-b"
    pattern = f"{_TEMP_PREFIX}{name}-{'?' * 8}"
    for entry in glob.glob(os.path.join(tempfile.gettempdir(), pattern)):
        shutil.rmtree(entry, ignore_errors=True)
    return killed


HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


def _make_dirs(upper: str, lower: str, guest_dir: str) -> None:
    """Make ``guest_dir`` in the upper layer. The upper layer's directory decides the
    merged one's mode, so each takes the rootfs's mode where the rootfs has it, else 0700
    (safe for /root/.ssh, which sshd's StrictModes checks)."""
    here = upper
    for part in guest_dir.strip("/").split("/"):
        if not part:
            continue
        here = os.path.join(here, part)
        if os.path.isdir(here):
            continue
        try:
            mode = os.stat(lower + here[len(upper):]).st_mode & 0o7777
        except OSError:
            mode = 0o700
        os.mkdir(here)
        os.chmod(here, mode)


def _personalise(upper: str, lower: str, name: str,
                 files: Mapping[str, Tuple[Union[str, bytes], int]]) -> None:
    """Per-host files, put into the overlay's upper layer before boot: a machine id (else
    systemd treats every boot as a first boot), a hostname, an ssh host key (unless
    ``files`` brings one), then ``files``."""
    etc = os.path.join(upper, "etc")
    _make_dirs(upper, lower, "/etc/ssh")
    with open(os.path.join(etc, "machine-id"), "w") as f:
        f.write(uuid.uuid4().hex + "\n")
    with open(os.path.join(etc, "hostname"), "w") as f:
        f.write(name + "\n")
    # the guest's console is a null device (guest-pid1.sh): console-getty cannot open a
    # terminal on it, fails five times and hits its start limit ~10 s after boot, and the
    # host then says "degraded". Masked: nothing reads a lab guest's console.
    _make_dirs(upper, lower, "/etc/systemd/system")
    os.symlink("/dev/null", upper + "/etc/systemd/system/console-getty.service")
    if HOST_KEY not in files and shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                        "-f", upper + HOST_KEY],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
    for guest_path, (content, mode) in files.items():
        if not guest_path.startswith("/") or ".." in guest_path.split("/"):
            raise SystemdHostError(f"files: {guest_path!r} is not an absolute guest path")
        _make_dirs(upper, lower, os.path.dirname(guest_path))
        path = upper + guest_path
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)


def _launcher_log(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, "launcher.log"), errors="replace") as f:
            return f.read()[-2000:].strip()
    except OSError:
        return ""


def _wait_pid1(launcher: subprocess.Popen[bytes], workdir: str, timeout: float = 10.0) -> int:
    """The guest's PID 1 is the child unshare forks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise SystemdHostError(f"the systemd host's launcher exited {launcher.returncode} "
                                   f"before booting: {_launcher_log(workdir)}")
        children = procfs.children(launcher.pid)
        if children:
            return children[0]
        time.sleep(0.005)
    raise SystemdHostError("the systemd host's launcher did not fork its PID 1")


def _wait_running(host: SystemdHost, deadline: float) -> str:
    """Poll ``systemctl is-system-running`` until boot is over (running or degraded)."""
    last = ""
    while time.monotonic() < deadline:
        if not host.alive():
            raise SystemdHostError(f"{host.name}: systemd exited during boot "
                                   f"({host.launcher.returncode}): {_launcher_log(host.dir)}")
        out = host.run(["systemctl", "is-system-running"], timeout=10)
        last = (out.stdout.strip() or out.stderr.strip())
        if last in ("running", "degraded"):
            return last
        time.sleep(0.02)
    jobs = host.run(["systemctl", "list-jobs", "--no-legend"], timeout=10).stdout.strip()
    raise SystemdHostError(f"{host.name}: not up in time (systemctl is-system-running: "
                           f"{last!r}; jobs: {jobs or 'none'})")
