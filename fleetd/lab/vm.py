"""A lab host that is a real virtual machine: QEMU booting Debian's cloud kernel with a
bookworm root file system, so that fleetd meets a pure cgroup v2 kernel with every
controller, which the machines this project runs on (hybrid v1/v2) cannot offer.

The image (``image``, fleetd.lab.vm_image): a debootstrap'ed bookworm and the cloud
kernel, built once into the lab's cache (/var/cache/fleetd-lab) like the systemd hosts'
rootfs.

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
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from typing import List, Optional, Tuple

from fleetd import procfs
from fleetd.lab.vm_image import ADDRESS as ADDRESS  # re-exported: the lab's users
from fleetd.lab.vm_image import HOST_KEY_FILE as HOST_KEY_FILE  # know them from here
from fleetd.lab.vm_image import Image as Image
from fleetd.lab.vm_image import VmError as VmError
from fleetd.lab.vm_image import image as image
from fleetd.lab.vm_image import tail

QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
CPUS = 2
ACCEL_VARIABLE = "FLEETD_LAB_VM_ACCEL"
BOOT_TIMEOUT_S = {"kvm": 120.0, "tcg": 600.0}  # TCG on 2 busy cores: minutes, not seconds


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
        return tail(os.path.join(self.dir, "console.log"), lines)

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
        with contextlib.suppress(OSError, ValueError), \
                open(os.path.join(directory, "qemu.pid")) as f:
            stop_named(int(f.read()), name)
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _qemu_name(pid: int) -> Optional[str]:
    """The ``-name`` a QEMU process was started with (None: not a QEMU, or gone)."""
    words = procfs.cmdline(pid).split()
    if not words or not os.path.basename(words[0]).startswith("qemu-system"):
        return None
    with contextlib.suppress(ValueError, IndexError):
        return words[words.index("-name") + 1]
    return None


def stop_named(pid: int, name: str) -> bool:
    """Stop ``pid`` only if it is the QEMU of the VM ``name`` (a pid file can outlive its
    process, and the pid be another's by now)."""
    ticks = procfs.start_ticks(pid)
    if ticks < 0 or _qemu_name(pid) != f"fleet-lab-{name}":
        return False
    return stop(pid, ticks)


def sweep(prefix: str) -> int:
    """Stop the QEMUs of VMs named ``PREFIX-PID`` whose PID, the process that booted them
    (a test run), is gone: what a killed run left behind. Another run's VMs, whose PID
    still runs, are left alone. Returns how many were stopped."""
    stopped = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = re.fullmatch(rf"fleet-lab-({re.escape(prefix)}-(\d+))",
                             _qemu_name(int(entry)) or "")
        if found and not procfs.alive(int(found.group(2))):
            stopped += stop_named(int(entry), found.group(1))
    return stopped


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
