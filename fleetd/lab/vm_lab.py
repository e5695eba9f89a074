"""The lab's VM hosts: ``fleetctl lab up --hosts N --vm M`` makes the last M of the N
hosts real virtual machines (fleetd.lab.vm), the first N-M the usual namespace hosts
(fleetd.lab.netns, which knows nothing of the VMs).

A VM host ``hI`` is QEMU on this machine, its sshd forwarded from a free loopback port:
fleetd reaches it as ``root@127.0.0.1:PORT`` with the lab's identity and the lab's
known_hosts (to which ``up`` appends the image's host key for that port), and installs
the agent there by bootstrap, as on any VM (``register``, or by hand what
``machine_add_argv`` prints). Metadata ``vm=true`` and ``systemd=true`` target them.

Each VM is recorded in the lab directory's ``vms.json`` as soon as it answers (name,
port, QEMU's pid and start time, its directory), so ``down``, run by another fleetctl
process, stops exactly those QEMUs, and a VM whose boot failed halfway is stopped too
(its qemu.pid, left in its directory under ``vms/``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import threading
from typing import Any, Dict, List, Optional, Sequence

from fleetd import procfs
from fleetd.client import Client
from fleetd.lab import vm
from fleetd.lab.daemon import wait_up
from fleetd.lab.host import LabError
from fleetd.lab.netns import Lab

RECORD = "vms.json"
UP_TIMEOUT_S = 300.0  # from added to up: the agent's first hello, Python slow under TCG
REGISTER_TIMEOUT_S = 900.0  # the bootstrap under TCG: a fresh SSH connection is ~1 s there
_lock = threading.Lock()


def check(count: int, vms: int, systemd: int) -> None:
    """``--hosts``, ``--vm`` and ``--systemd`` fit together (the namespace hosts, of which
    ``--systemd`` are systemd ones, are the N-M others; at least one: the lab's bridge and
    fleetd's lab hosts come with them)."""
    if vms == 0:
        return
    if not 0 < vms < count:
        raise LabError(f"--vm {vms}: want 0 to --hosts minus 1 ({count - 1}); the lab "
                       "needs one namespace host besides its VMs")
    if systemd > count - vms:
        raise LabError(f"--systemd {systemd} with --vm {vms}: want at most --hosts minus "
                       f"--vm ({count - vms})")


def names(count: int, vms: int) -> List[str]:
    """The VM hosts' names: the last ``vms`` of h1..h``count``."""
    return [f"h{i}" for i in range(count - vms + 1, count + 1)]


def _dir(lab_dir: str, name: str = "") -> str:
    return os.path.join(lab_dir, "vms", name)


def _load(lab_dir: str) -> Dict[str, Dict[str, Any]]:
    try:
        with open(os.path.join(lab_dir, RECORD)) as f:
            data: Dict[str, Dict[str, Any]] = json.load(f)
            return data
    except (OSError, ValueError):
        return {}


def _record(lab_dir: str, name: str, fields: Dict[str, Any]) -> None:
    with _lock:
        data = _load(lab_dir)
        data[name] = fields
        with open(os.path.join(lab_dir, RECORD), "w") as f:
            json.dump(data, f, indent=2)


def up(lab_dir: str, identity: str, known_hosts: str, hosts: Sequence[str]) -> List[vm.Vm]:
    """Boot the VMs ``hosts`` at once, each recorded as soon as its sshd lets root in and
    its host key appended to ``known_hosts``; on any failure the caller runs ``down``."""
    if not hosts:
        return []
    try:
        img = vm.image()
    except vm.VmError as exc:
        raise LabError(f"the VM hosts' image: {exc}") from None
    os.makedirs(_dir(lab_dir), mode=0o700, exist_ok=True)

    def one(name: str) -> vm.Vm:
        try:
            booted = vm.boot(name, identity, _dir(lab_dir, name), img=img)
        except vm.VmError as exc:
            raise LabError(f"{name}: {exc}") from None
        _record(lab_dir, name, {"port": booted.port, "pid": booted.pid,
                                "pid_start": booted.pid_start, "dir": booted.dir,
                                "accel": booted.accel,
                                "boot_seconds": round(booted.boot_seconds, 1)})
        with _lock, open(known_hosts, "a") as f:
            f.write(img.known_hosts_line(booted.port))
        booted.known_hosts = known_hosts
        return booted

    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        futures = [pool.submit(one, name) for name in hosts]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def metadata(prefix: str, name: str) -> Dict[str, str]:
    return {"hostname": name, "lab": prefix, "vm": "true", "systemd": "true"}


def machine_add_argv(prefix: str, identity: str, known_hosts: str,
                     booted: vm.Vm) -> List[str]:
    meta = ",".join(f"{k}={v}" for k, v in metadata(prefix, booted.name).items())
    return ["fleetctl", "machine", "add", f"root@{vm.ADDRESS}:{booted.port}",
            "--name", booted.name, "--metadata", meta, "--identity", identity,
            "--known-hosts", known_hosts]


def register(client: Client, prefix: str, identity: str, known_hosts: str,
             vms: Sequence[vm.Vm]) -> List[str]:
    """Add the VMs fleetd does not know yet, all at once; fleetd installs the agent on
    each (no agent command: the bootstrap). Returns the names added."""
    known = {m["name"] for m in client.get("/v1/machines")["machines"]}
    todo = [v for v in vms if v.name not in known]

    def one(v: vm.Vm) -> str:
        client.post("/v1/machines", {
            "name": v.name, "address": vm.ADDRESS, "port": v.port, "user": "root",
            "identity": identity, "known_hosts": known_hosts, "agent_command": None,
            "metadata": metadata(prefix, v.name)}, timeout=REGISTER_TIMEOUT_S)
        return v.name

    if not todo:
        return []
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
        return list(pool.map(one, todo))


def status(lab_dir: str) -> List[Dict[str, Any]]:
    """Each recorded VM: name, port, QEMU's pid if it still runs."""
    return [{"host": name, "port": r["port"], "accel": r.get("accel", ""),
             "pid": r["pid"] if procfs.alive(r["pid"], r["pid_start"]) else None}
            for name, r in sorted(_load(lab_dir).items())]


def down(lab_dir: str) -> int:
    """Stop every VM of the lab in ``lab_dir`` (recorded, or left by a failed boot in
    ``vms/``) and remove their directories and the record. Returns how many ran."""
    stopped = 0
    for r in _load(lab_dir).values():
        stopped += vm.stop(r["pid"], r["pid_start"], r["dir"])
    for name in os.listdir(_dir(lab_dir)) if os.path.isdir(_dir(lab_dir)) else []:
        pid = _pidfile(os.path.join(_dir(lab_dir, name), "qemu.pid"))
        if pid is not None:
            stopped += vm.stop_named(pid, name)
    shutil.rmtree(_dir(lab_dir), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(lab_dir, RECORD))
    return stopped


def _pidfile(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# --- what fleetctl lab runs ---------------------------------------------------------------------
def lab_up(the_lab: Lab, count: int, vms: int) -> List[vm.Vm]:
    """After ``the_lab.up(count - vms)``: boot the last ``vms`` of the ``count`` hosts as
    VMs; if one fails, the whole lab goes down again (as Lab.up does on its own failures)."""
    try:
        return up(the_lab.dir, the_lab.identity, the_lab.known_hosts, names(count, vms))
    except BaseException:
        down(the_lab.dir)
        the_lab.down()
        raise


def summary(vms: Sequence[vm.Vm]) -> str:
    return "; ".join(f"VM host {v.name} at root@{vm.ADDRESS}:{v.port} ({v.accel}, sshd after "
                     f"{v.boot_seconds:.0f}s)" for v in vms)


def hints(the_lab: Lab, vms: Sequence[vm.Vm]) -> List[str]:
    return [f"{v.name}: VM host, add it with `"
            + " ".join(machine_add_argv(the_lab.prefix, the_lab.identity, the_lab.known_hosts,
                                        v)) + "`" for v in vms]


def lab_register(the_lab: Lab, client: Client, vms: Sequence[vm.Vm]) -> str:
    """Register the VMs with fleetd (the agent installed by bootstrap) and wait until up."""
    added = register(client, the_lab.prefix, the_lab.identity, the_lab.known_hosts, vms)
    wait_up(client, [v.name for v in vms], timeout=UP_TIMEOUT_S)
    return (f"Installed the agent on VM host{'s' if len(added) > 1 else ''} "
            f"{', '.join(added)}; up" if added else "VM hosts up")


def status_lines(lab_dir: str) -> List[str]:
    return [f"{r['host']}: VM host at root@{vm.ADDRESS}:{r['port']}, "
            + (f"QEMU pid {r['pid']} ({r['accel']})" if r["pid"] else "QEMU down")
            for r in status(lab_dir)]
