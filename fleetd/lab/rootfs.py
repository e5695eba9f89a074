"""The systemd hosts' root file system: a debootstrap'ed Debian (bookworm, minbase, with
systemd, python3, psutil and sshd), built once into CACHE_DIR outside the repo and never
modified: each booted host writes to an overlay of its own (fleetd.lab.systemd_host).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Iterator, Optional, Sequence

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = "http://deb.debian.org/debian"
MIRROR_VARIABLE = "FLEETD_LAB_MIRROR"  # a closer mirror or a caching proxy
# ssh and python so that later lab tests can reach the host and run the agent in it
PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-psutil",
            "openssh-server")
CACHE_DIR = "/var/cache/fleetd-lab"
# Bump when the post-install steps below change: a cached rootfs then rebuilds.
RECIPE = 1


class SystemdHostError(Exception):
    """The systemd host could not be built or booted; the message says why and what to do."""


def _stamp(suite: str, packages: Sequence[str]) -> Dict[str, object]:
    """What the rootfs is made of; a different stamp means a rebuild (the mirror it came
    from is recorded too, but a different mirror serves the same packages)."""
    return {"suite": suite, "variant": VARIANT, "packages": sorted(packages), "recipe": RECIPE}


def _read_stamp(root: str) -> Optional[Dict[str, object]]:
    try:
        with open(os.path.join(root, ".fleetd-lab.json")) as f:
            data: Dict[str, object] = json.load(f)
    except (OSError, ValueError):
        return None
    data.pop("mirror", None)
    return data


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Two test runs building the same cache wait for each other instead of racing."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def rootfs(cache_dir: str = CACHE_DIR, suite: str = SUITE,
           packages: Sequence[str] = PACKAGES, mirror: Optional[str] = None) -> str:
    """The cached root file system, built first if it is missing or was built from a
    different package list, suite or recipe.

    It is built into a temp dir next to the cache and renamed into place only when
    complete, so an interrupted build never leaves a half rootfs that looks usable.
    The mirror is ``mirror``, else $FLEETD_LAB_MIRROR, else deb.debian.org."""
    mirror = mirror or os.environ.get(MIRROR_VARIABLE) or MIRROR
    name = f"{suite}-systemd"
    root = os.path.join(cache_dir, name)
    want = _stamp(suite, packages)
    if _read_stamp(root) == want:
        return root
    if os.geteuid() != 0:
        raise SystemdHostError("building the systemd host's rootfs needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise SystemdHostError("debootstrap not found: apt-get install -y debootstrap "
                               "(the lab's systemd host is a debootstrap'ed Debian)")
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    with _locked(os.path.join(cache_dir, f".{name}.lock")):
        if _read_stamp(root) == want:  # built by another run while we waited
            return root
        build = tempfile.mkdtemp(prefix=f".{name}-build-", dir=cache_dir)
        try:
            _debootstrap(build, suite, packages, mirror, os.path.join(cache_dir, f"{name}.log"))
            _prepare(build)
            with open(os.path.join(build, ".fleetd-lab.json"), "w") as f:
                json.dump(dict(want, mirror=mirror), f, indent=2)
            os.chmod(build, 0o755)
            if os.path.exists(root):
                old = tempfile.mkdtemp(prefix=f".{name}-old-", dir=cache_dir)
                os.rename(root, os.path.join(old, "rootfs"))
                os.rename(build, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(build, root)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return root


def _debootstrap(target: str, suite: str, packages: Sequence[str], mirror: str,
                 log_path: str) -> None:
    argv = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(packages)}",
            suite, target, mirror]
    with open(log_path, "w") as log:
        log.write(" ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-8:]).strip()
        raise SystemdHostError(
            f"debootstrap of {suite} from {mirror} failed (exit {proc.returncode}); "
            f"can this machine reach the mirror? Full log: {log_path}\n{tail}")


def _prepare(root: str) -> None:
    """Make the rootfs a template: nothing per-host may be shared between hosts."""
    # Each host gets its own host key (made at boot) and machine id; shared ones would
    # make the hosts indistinguishable to ssh and to journald.
    etc_ssh = os.path.join(root, "etc", "ssh")
    for entry in os.listdir(etc_ssh) if os.path.isdir(etc_ssh) else []:
        if entry.startswith("ssh_host_"):
            os.unlink(os.path.join(etc_ssh, entry))
    with open(os.path.join(root, "etc", "machine-id"), "w"):
        pass
    archives = os.path.join(root, "var", "cache", "apt", "archives")
    for entry in os.listdir(archives) if os.path.isdir(archives) else []:
        if entry.endswith(".deb"):
            os.unlink(os.path.join(archives, entry))
