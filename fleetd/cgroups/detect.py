"""Which cgroups this host has, read from the mount table - never guessed from the
kernel version or the init system.

``/proc/self/mountinfo`` says where each hierarchy is mounted, with which controllers
(v1: in the super-block options, like ``rw,cpu,cpuacct``), read-only or not, and which
cgroup is mounted there (its root field). Only mounts at or below ``root`` count: that
is where fleetd works. The v2 tree's controllers come from its ``cgroup.controllers``
(the kernel lists only those not bound to a v1 hierarchy).

``detect`` takes the mount table as text and reads files below ``root`` only, so tests
can hand it a fake tree.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

from fleetd.cgroups import v2
from fleetd.cgroups.base import Backend
from fleetd.cgroups.kernel import V1_CONTROLLERS, KernelBackend, Layout, Mount, clean_parent
from fleetd.cgroups.none import NoneBackend

DEFAULT_ROOT = "/sys/fs/cgroup"


@dataclasses.dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    root: str
    fstype: str
    options: Tuple[str, ...]  # per mount: rw/ro, ...
    super_options: Tuple[str, ...]  # v1: the controllers


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> List[MountEntry]:
    """``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER``"""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        entries.append(MountEntry(
            mountpoint=_unescape(fields[4]), root=_unescape(fields[3]), fstype=fields[sep + 1],
            options=tuple(fields[5].split(",")), super_options=tuple(fields[sep + 3].split(","))))
    return entries


def _below(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == \
        os.path.abspath(root)


def find_layout(entries: List[MountEntry], root: str = DEFAULT_ROOT) -> Tuple[Layout, str]:
    """The usable hierarchies at or below ``root``, and why there are none if so."""
    found_v1: Dict[str, Mount] = {}
    found_v2: Optional[Mount] = None
    read_only = []
    for e in entries:
        if e.fstype not in ("cgroup", "cgroup2") or not _below(e.mountpoint, root):
            continue
        if "ro" in e.options:
            read_only.append(e.mountpoint)
            continue
        mount = Mount(path=e.mountpoint, root=e.root)
        if e.fstype == "cgroup2":
            found_v2 = found_v2 or mount
            continue
        for controller in V1_CONTROLLERS:
            if controller in e.super_options:
                found_v1.setdefault(controller, mount)
    v2_controllers = tuple(v2.offered(found_v2.path)) if found_v2 is not None else ()
    layout = Layout(v1=found_v1, v2=found_v2, v2_controllers=v2_controllers)
    if layout.version != "none":
        return layout, ""
    if read_only:
        return layout, f"the cgroup file systems are mounted read-only ({', '.join(read_only)})"
    return layout, f"no cgroup file system is mounted at {root}"


def _writable(path: str) -> bool:
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def detect(root: str = DEFAULT_ROOT, parent: str = "fleet", mountinfo: Optional[str] = None,
           proc: str = "/proc") -> Backend:
    """This host's backend. ``parent`` is the cgroup (below each hierarchy's root) that
    holds this agent's units: include the machine id (``fleet/<machine-id>``), as several
    agents may share one kernel. ``mountinfo`` defaults to /proc/self/mountinfo.

    Never fails: a host whose cgroups cannot be used gets the none backend, whose facts
    carry the reason."""
    parent = clean_parent(parent)
    if mountinfo is None:
        try:
            with open(os.path.join(proc, "self/mountinfo")) as f:
                mountinfo = f.read()
        except OSError as exc:
            return NoneBackend(f"cannot read the mount table: {exc.strerror}", parent)
    layout, reason = find_layout(parse_mountinfo(mountinfo), root)
    if reason:
        return NoneBackend(reason, parent)
    _kind, membership = layout.membership()
    where = os.path.join(membership.path, parent)
    if not _writable(where):
        return NoneBackend(f"{where} is not writable by uid {os.geteuid()}", parent)
    return KernelBackend(layout, parent, proc)
