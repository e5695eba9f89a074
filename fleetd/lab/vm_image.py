"""The lab VM's image (fleetd.lab.vm boots it): debootstrap bookworm with systemd, udev,
kmod, iproute2, python3, python3-psutil and sshd; the kernel of ``linux-image-cloud-amd64``
unpacked aside with ``dpkg -x`` (its modules copied in, depmod run); one fixed host key;
an ext4 image made with ``mkfs.ext4 -d`` (no loop device, no mount). Built by
scripts/vm-build.sh into a temp dir beside the cache and renamed into place only when
complete, like the systemd hosts' rootfs (fleetd.lab.rootfs), in the same cache directory.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Dict, Optional

from fleetd.lab import rootfs

SUITE = rootfs.SUITE
PACKAGES = ("systemd", "systemd-sysv", "dbus", "udev", "kmod", "iproute2", "procps",
            "python3", "python3-psutil", "openssh-server", "libnss-myhostname")
CACHE_DIR = rootfs.CACHE_DIR
IMAGE_NAME = f"{SUITE}-vm"
RECIPE = 2  # bump when scripts/vm-build.sh changes: a cached image then rebuilds
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"
ADDRESS = "127.0.0.1"  # where the VMs' sshd is forwarded: the known_hosts lines name it


class VmError(Exception):
    """The VM could not be built, booted or reached; the message says why and what to do."""


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
                              f"full log: {log_path}\n{tail(log_path, 8)}")
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


def tail(path: str, lines: int) -> str:
    """The last ``lines`` of a log, for an error message ("" if unreadable)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""
