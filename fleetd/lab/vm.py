"""A lab host that is a real virtual machine: QEMU booting Debian's cloud kernel with a
bookworm root file system, so that fleetd meets a pure cgroup v2 kernel with every
controller, which the machines this project runs on (hybrid v1/v2) cannot offer.

The image (``image``): debootstrap bookworm with systemd, udev, kmod, iproute2, python3,
python3-psutil and sshd; the kernel of ``linux-image-cloud-amd64`` unpacked aside with
``dpkg -x`` (its modules copied in, depmod run); one fixed host key; an ext4 image made
with ``mkfs.ext4 -d`` (no loop device, no mount). Built by scripts/vm-build.sh into a
temp dir beside the cache and renamed into place only when complete, like the systemd
hosts' rootfs (fleetd.lab.rootfs), in the same cache directory.

A boot (``boot``) never writes the image: the disk is ``snapshot=on`` (QEMU keeps the
writes in a temp file in the VM's own directory), so every boot is clean and any number
of VMs share one image. What differs between VMs comes on the kernel command line:
root's authorized key (``fleet_lab.key=``, which the guest's sshd reads through an
AuthorizedKeysCommand: the lab's identity is the lab's, not the image's), the hostname
and the machine id. The network is QEMU's user mode with ``restrict=on`` (the guest
reaches nothing, neither this machine nor the outside) and one forward, from a free
port on this machine's loopback to the guest's sshd: fleetd reaches the VM as
``root@127.0.0.1:PORT``, with strict host-key checking against the image's host key.

Acceleration: KVM only where it can boot a stock kernel. On this project's machines
``/dev/kvm`` is the ``kvm_pvm`` module, under which a stock Debian kernel does not boot
(no console output, ``kvm-pvm: INTERNAL_ERROR`` in dmesg), so ``accel()`` answers
``tcg`` (software emulation: ~14 s to sshd, Python ~15-20x slower than here).
$FLEETD_LAB_VM_ACCEL (kvm or tcg) overrides the probe.

A VM is a daemonised QEMU process, identified by pid and start time (``Vm.pid``,
``Vm.pid_start``) so that another process (``lab down`` after ``lab up``) stops it
without ever signalling a reused pid. Stopping is SIGTERM to QEMU: the disk is a
snapshot, so there is nothing to save; nothing of the VM stays on this machine but its
directory, which ``stop`` removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from fleetd import procfs
from fleetd.lab import rootfs

SUITE = rootfs.SUITE
PACKAGES = ("systemd", "systemd-sysv", "dbus", "udev", "kmod", "iproute2", "procps",
            "python3", "python3-psutil", "openssh-server")
CACHE_DIR = rootfs.CACHE_DIR
IMAGE_NAME = f"{SUITE}-vm"
RECIPE = 1  # bump when scripts/vm-build.sh changes: a cached image then rebuilds
QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
CPUS = 2
ACCEL_VARIABLE = "FLEETD_LAB_VM_ACCEL"
BOOT_TIMEOUT_S = {"kvm": 120.0, "tcg": 600.0}  # TCG on 2 busy cores: minutes, not seconds
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"
ADDRESS = "127.0.0.1"


class VmError(Exception):
    """The VM could not be built, booted or reached; the message says why and what to do."""


# --- the image -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Image:
    dir: str

    @property
    def kernel(self) -> str:
        return os.path.join(self.dir, "vmlinuz")

    @property
    def disk(self) -> str:
        return os.path.join(self.dir, "root.img")

    def host_key(self) -> str:
        """``ALGO BASE64`` of the image's one host key."""
        with open(os.path.join(self.dir, HOST_KEY_FILE)) as f:
            algo, blob = f.read().split()[:2]
        return f"{algo} {blob}"

    def known_hosts_line(self, port: int) -> str:
        return f"[{ADDRESS}]:{port} {self.host_key()}\n"


def _script(name: str) -> str:
    return (importlib.resources.files(__package__) / "scripts" / name).read_text(encoding="utf-8")


def _stamp() -> Dict[str, object]:
    return {"suite": SUITE, "packages": sorted(PACKAGES), "recipe": RECIPE}


def _read_stamp(path: str) -> Optional[Dict[str, object]]:
    try:
        with open(os.path.join(path, ".fleetd-lab.json")) as f:
            data: Dict[str, object] = json.load(f)
    except (OSError, ValueError):
        return None
    data.pop("mirror", None)
    data.pop("build_seconds", None)
    return data


def image(cache_dir: str = CACHE_DIR, mirror: Optional[str] = None) -> Image:
    """The cached VM image, built first (~1 min, ~1.1 GB of disk at peak, 2 GB sparse
    after) if it is missing or was built from another package list or recipe."""
    path = os.path.join(cache_dir, IMAGE_NAME)
    if _read_stamp(path) == _stamp():
        return Image(path)
    if os.geteuid() != 0:
        raise VmError("building the lab VM's image needs root (debootstrap, chroot)")
    for tool, package in (("debootstrap", "debootstrap"), ("mkfs.ext4", "e2fsprogs"),
                          ("apt-get", "apt"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            raise VmError(f"{tool} not found: apt-get install -y {package} "
                          "(the lab VM's image is built with it)")
    mirror = mirror or os.environ.get(rootfs.MIRROR_VARIABLE) or rootfs.MIRROR
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    with rootfs._locked(os.path.join(cache_dir, f".{IMAGE_NAME}.lock")):
        if _read_stamp(path) == _stamp():  # another run built it while we waited
            return Image(path)
        build = tempfile.mkdtemp(prefix=f".{IMAGE_NAME}-build-", dir=cache_dir)
        log_path = os.path.join(cache_dir, f"{IMAGE_NAME}.log")
        began = time.monotonic()
        try:
            env = dict(os.environ, BUILD=build, MIRROR=mirror, SUITE=SUITE,
                       PACKAGES=",".join(PACKAGES), DEBIAN_FRONTEND="noninteractive")
            with open(log_path, "w") as log:
                proc = subprocess.run(["/bin/bash", "-c", _script("vm-build.sh")], env=env,
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise VmError(f"building the lab VM's image failed (exit {proc.returncode}); "
                              f"full log: {log_path}\n{_tail(log_path, 8)}")
            os.chmod(os.path.join(build, "root.img"), 0o444)  # only ever a snapshot's base
            with open(os.path.join(build, ".fleetd-lab.json"), "w") as f:
                json.dump(dict(_stamp(), mirror=mirror,
                               build_seconds=round(time.monotonic() - began, 1)), f, indent=2)
            os.chmod(build, 0o755)
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=f".{IMAGE_NAME}-old-", dir=cache_dir)
                os.rename(path, os.path.join(old, "image"))
                os.rename(build, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(build, path)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return Image(path)


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


# --- booting ---------------------------------------------------------------------------------
def kvm_usable() -> bool:
    """Can /dev/kvm boot a stock kernel? Not under kvm_pvm (this project's machines), nor
    without hardware virtualisation (vmx/svm) or a /dev/kvm this process can open."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return bool(flags & {"vmx", "svm"})


def accel() -> str:
    """kvm or tcg: $FLEETD_LAB_VM_ACCEL if set, else the probe's answer."""
    chosen = os.environ.get(ACCEL_VARIABLE, "").strip()
    if chosen:
        if chosen not in BOOT_TIMEOUT_S:
            raise VmError(f"${ACCEL_VARIABLE}={chosen!r}: want kvm or tcg")
        return chosen
    return "kvm" if kvm_usable() else "tcg"


def free_port() -> int:
    """A loopback port free right now (QEMU binds it; ``boot`` retries if it is taken)."""
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Vm:
    """A booted VM: sshd at root@127.0.0.1:``port``, QEMU's pid and start time."""

    name: str
    port: int
    pid: int
    pid_start: int
    dir: str  # console.log, QEMU's snapshot overlay, the ssh control socket
    identity: str  # the private key whose public half root accepts
    known_hosts: str  # lists the image's host key for this port
    accel: str = "tcg"
    boot_seconds: float = 0.0

    def alive(self) -> bool:
        return procfs.alive(self.pid, self.pid_start)

    def ssh_argv(self, *, control: bool = True) -> List[str]:
        """``ssh`` to the VM, strict host-key checking; ``control``: over one master
        connection kept open (a new connection costs ~1 s under TCG)."""
        argv = ["ssh", "-i", self.identity, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
                "-o", "LogLevel=ERROR", "-p", str(self.port)]
        if control:
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.dir}/ssh.ctl",
                     "-o", "ControlPersist=300"]
        return [*argv, f"root@{ADDRESS}"]

    def run(self, command: str, *, input: Optional[bytes] = None, timeout: float = 300.0,
            check: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run a shell command in the VM as root (through the master connection)."""
        proc = subprocess.run([*self.ssh_argv(), command], input=input, capture_output=True,
                              timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise VmError(f"{self.name}: {command}: exit {proc.returncode}: "
                          f"{proc.stderr.decode(errors='replace').strip()}")
        return proc

    def console(self, lines: int = 20) -> str:
        return _tail(os.path.join(self.dir, "console.log"), lines)

    def stop(self) -> None:
        """Close the master connection, stop QEMU, remove the VM's directory."""
        if os.path.exists(os.path.join(self.dir, "ssh.ctl")):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run([*self.ssh_argv(), "-O", "exit"], capture_output=True,
                               timeout=10, stdin=subprocess.DEVNULL)
        stop(self.pid, self.pid_start, self.dir)


def stop(pid: int, pid_start: int, directory: Optional[str] = None,
         timeout: float = 10.0) -> bool:
    """Stop the QEMU (``pid``, ``pid_start``): SIGTERM, SIGKILL if it lingers; a process
    that merely reuses the pid is left alone. Removes ``directory``. False if it was gone."""
    was = procfs.alive(pid, pid_start)
    if was:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while procfs.alive(pid, pid_start) and time.monotonic() < deadline:
            time.sleep(0.02)
        if procfs.alive(pid, pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while procfs.alive(pid, pid_start) and time.monotonic() < deadline + 5:
                time.sleep(0.02)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
    return was


def _public_key(identity: str) -> str:
    """``ALGO:BASE64`` of the identity's public half: one kernel command-line word."""
    try:
        with open(identity + ".pub") as f:
            algo, blob = f.read().split()[:2]
    except (OSError, ValueError):
        raise VmError(f"{identity}.pub: not a readable public key "
                      "(ssh-keygen -y -f IDENTITY > IDENTITY.pub)") from None
    return f"{algo}:{blob}"


def qemu_argv(img: Image, name: str, port: int, key: str, mode: str) -> List[str]:
    """QEMU's command line; run in the VM's directory (console.log, qemu.pid)."""
    cmdline = ["console=ttyS0", "root=/dev/nvme0n1", "rw", "panic=-1",
               f"systemd.hostname={name}", f"systemd.machine_id={uuid.uuid4().hex}",
               f"fleet_lab.key={key}"]
    acceleration = ["-accel", "kvm", "-cpu", "host"] if mode == "kvm" else \
        ["-accel", "tcg", "-cpu", "max"]
    return [QEMU, "-name", f"fleet-lab-{name}", *acceleration, "-machine", "q35",
            "-smp", str(CPUS), "-m", str(MEMORY_MB), "-no-reboot",
            "-kernel", img.kernel, "-append", " ".join(cmdline),
            # the cloud kernel has NVMe built in (virtio-blk is a module): no initrd
            "-drive", f"file={img.disk},if=none,id=root,format=raw,snapshot=on",
            "-device", "nvme,drive=root,serial=fleetlab",
            "-netdev", f"user,id=net,restrict=on,hostfwd=tcp:{ADDRESS}:{port}-:22",
            "-device", "virtio-net-pci,netdev=net",
            "-display", "none", "-serial", "file:console.log", "-monitor", "none",
            "-pidfile", "qemu.pid", "-daemonize"]


def boot(name: str, identity: str, directory: str, *, img: Optional[Image] = None,
         known_hosts: Optional[str] = None, timeout: Optional[float] = None) -> Vm:
    """Boot the VM ``name`` in ``directory`` (made; removed again if the boot fails) and
    wait until its sshd lets root in with ``identity``. ``known_hosts`` (default:
    ``directory``/known_hosts) gets the line for the VM's port appended."""
    if not name.replace("-", "").isalnum():
        raise VmError(f"VM name {name!r}: letters, digits and - only")
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found: apt-get install -y --no-install-recommends "
                      "qemu-system-x86 (the lab's VM hosts run under QEMU)")
    img = img or image()
    key = _public_key(identity)
    mode = accel()
    os.makedirs(directory, mode=0o700, exist_ok=False)
    known_hosts = known_hosts or os.path.join(directory, "known_hosts")
    began = time.monotonic()
    try:
        port, pid = _start(img, name, key, mode, directory)
        with open(known_hosts, "a") as f:
            f.write(img.known_hosts_line(port))
        vm = Vm(name=name, port=port, pid=pid, pid_start=procfs.start_ticks(pid),
                dir=directory, identity=identity, known_hosts=known_hosts, accel=mode)
        _wait_ssh(vm, began + (timeout or BOOT_TIMEOUT_S[mode]))
        vm.boot_seconds = time.monotonic() - began
        return vm
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(directory, "qemu.pid")) as f:
                pid = int(f.read())
            stop(pid, procfs.start_ticks(pid))
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _start(img: Image, name: str, key: str, mode: str, directory: str) -> Tuple[int, int]:
    """Start QEMU daemonised on a free port (another, if that one was taken meanwhile);
    its snapshot overlay goes to the VM's directory (TMPDIR)."""
    for _attempt in range(3):
        port = free_port()
        proc = subprocess.run(qemu_argv(img, name, port, key, mode), cwd=directory,
                              env=dict(os.environ, TMPDIR=directory), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=120)
        if proc.returncode == 0:
            with open(os.path.join(directory, "qemu.pid")) as f:
                return port, int(f.read().strip())
        error = proc.stderr.strip()
        if "host forwarding" not in error:  # anything but a port taken meanwhile
            raise VmError(f"{QEMU} for {name} exited {proc.returncode}: {error}")
    raise VmError(f"{QEMU} for {name}: no free loopback port for ssh: {error}")


def _banner(port: int) -> bool:
    """Does an sshd answer behind the forward? (QEMU accepts the connection itself and
    closes it when nothing listens in the guest yet.)"""
    try:
        with socket.create_connection((ADDRESS, port), timeout=5) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _wait_ssh(vm: Vm, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not vm.alive():
            raise VmError(f"{vm.name}: QEMU exited during boot; console:\n{vm.console()}")
        if _banner(vm.port):
            proc = subprocess.run([*vm.ssh_argv(control=False), "true"], capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
            if proc.returncode == 0:
                return
            if "Host key verification failed" in proc.stderr or "denied" in proc.stderr:
                raise VmError(f"{vm.name}: ssh root@{ADDRESS}:{vm.port}: {proc.stderr.strip()}")
        time.sleep(0.5)
    raise VmError(f"{vm.name}: sshd did not answer in time ({vm.accel}); console:\n"
                  f"{vm.console()}")


def stop_all(vms: Sequence[Vm]) -> None:
    for vm in vms:
        vm.stop()
