"""The backend for hosts with usable cgroups: v1, v2 or hybrid, one implementation.

Each controller fleetd needs lives in exactly one place on a given host, and that place
decides where its limit is written: on v1 in the controller's own hierarchy, on v2 in the
one tree, if the tree offers it. A hybrid host simply has both: here (Debian, not booted
by systemd) memory, cpu and pids are v1 hierarchies and the v2 tree at
/sys/fs/cgroup/unified has no controllers, but it has what v1 lacks - cgroup.kill,
cgroup.freeze and cgroup.events. So:

- limits go wherever their controller lives (``Layout.placement``);
- membership (``pids``, ``contains``, ``kill``, ``empty``) uses the v2 tree whenever
  one is mounted, even without controllers; otherwise the v1 freezer hierarchy (which
  also makes kill race-free), else any v1 hierarchy the unit joined;
- the program joins the unit's cgroup in every hierarchy, before exec.

A unit's cgroup is ``<mount>/<parent>/<escaped unit name>`` in every hierarchy.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from fleetd.cgroups import fs, v1, v2
from fleetd.cgroups.base import CgroupError, LimitsUnsupported
from fleetd.cgroups.limits import Limits

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
LIMIT_CONTROLLERS = {"memory_max": "memory", "cpu_quota": "cpu", "cpu_weight": "cpu",
                     "tasks_max": "pids"}
# A unit's directory must not look like a control file (systemd's cg_escape rule).
_RESERVED = {"notify_on_release", "release_agent", "tasks"}
_KNOWN_CONTROLLERS = {"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb",
                      "io", "memory", "misc", "net_cls", "net_prio", "perf_event", "pids",
                      "rdma"}


@dataclasses.dataclass(frozen=True)
class Mount:
    path: str  # where the hierarchy is mounted
    root: str = "/"  # the cgroup mounted there, as /proc/<pid>/cgroup names paths


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this host's hierarchies are, as ``detect`` found them."""

    v1: Mapping[str, Mount]  # controller -> its hierarchy (co-mounted ones share a Mount)
    v2: Optional[Mount] = None
    v2_controllers: Tuple[str, ...] = ()  # what the v2 root offers

    def placement(self) -> Dict[str, str]:
        """controller -> "v1" or "v2", for the controllers fleetd uses and has."""
        out = {c: "v1" for c in V1_CONTROLLERS if c in self.v1}
        if self.v2 is not None:
            for c in V2_CONTROLLERS:
                if c not in out and c in self.v2_controllers:
                    out[c] = "v2"
        return out

    @property
    def version(self) -> str:
        if self.v2 is not None:
            return "hybrid" if self.v1 else "v2"
        return "v1" if self.v1 else "none"

    def membership(self) -> Tuple[str, Mount]:
        """("v2", mount) or (v1 controller, mount): the hierarchy that lists a unit's
        processes and signals them."""
        if self.v2 is not None:
            return "v2", self.v2
        for c in ("freezer", "pids", "memory", "cpu", "cpuacct"):
            if c in self.v1:
                return c, self.v1[c]
        raise ValueError("a layout without any hierarchy has no membership")


def escape(name: str) -> str:
    """A unit name as a cgroup directory name; refuses names that are not one."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a cgroup")
    prefix = name.split(".", 1)[0]
    if (name[0] in "_." or name in _RESERVED or name.startswith("cgroup.")
            or ("." in name and prefix in _KNOWN_CONTROLLERS)):
        return "_" + name
    return name


def unescape(directory: str) -> str:
    return directory[1:] if directory.startswith("_") else directory


def clean_parent(parent: str) -> str:
    parts = [p for p in parent.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{parent!r} is not a cgroup path below the root")
    return "/".join(parts)


class KernelUnit:
    def __init__(self, layout: Layout, parent: str, name: str, proc: str = "/proc") -> None:
        self.name = name
        self._layout = layout
        self._parent = parent
        self._rel = f"{parent}/{escape(name)}"
        self._proc = proc
        self._placement = layout.placement()
        self._v1 = {c: os.path.join(m.path, self._rel) for c, m in layout.v1.items()}
        self._v2 = os.path.join(layout.v2.path, self._rel) if layout.v2 is not None else None
        self._v2_controllers = [c for c, where in self._placement.items() if where == "v2"]
        self._member_kind, self._member_mount = layout.membership()
        self._members = os.path.join(self._member_mount.path, self._rel)
        # /proc/<pid>/cgroup names a cgroup from its hierarchy's root, not the mount's
        self._member_path = "/" + "/".join(
            p for p in f"{self._member_mount.root}/{self._rel}".split("/") if p)

    def __repr__(self) -> str:
        return f"KernelUnit({self.name!r}, {self._layout.version}, {self._rel!r})"

    def directories(self) -> List[str]:
        """The unit's cgroup in every hierarchy it joins (v2 first)."""
        dirs = [self._v2] if self._v2 is not None else []
        for d in self._v1.values():
            if d not in dirs:
                dirs.append(d)
        return dirs

    def create(self, limits: Limits) -> None:
        missing = [n for n in limits.requested() if LIMIT_CONTROLLERS[n] not in self._placement]
        if missing:
            controllers = sorted({LIMIT_CONTROLLERS[n] for n in missing})
            raise LimitsUnsupported(
                f"{self.name}: {limits.describe(missing)} cannot be enforced on this host: "
                f"its cgroups ({self._layout.version}) have no "
                f"{' or '.join(controllers)} controller")
        if self._layout.v2 is not None:
            v2.enable(self._layout.v2.path, self._parent, self._v2_controllers)
        for d in self.directories():
            fs.make(d)
        if self._v2 is not None:
            v2.apply(self._v2, limits, self._v2_controllers)
        v1.apply({c: d for c, d in self._v1.items() if c in ("memory", "cpu", "pids")}, limits)

    def leaf(self, name: str) -> Optional[KernelUnit]:
        """The cgroup ``name`` below this one, in every hierarchy: a run of a unit whose
        prepared process (fleetd.drivers.spare) waits in a sibling, so that either can
        be emptied without the other. None where a limit lives on v2: a v2 cgroup whose
        children hold the processes must delegate its controllers, which only the v2
        backend knows how to do (there, clone3's CLONE_INTO_CGROUP is the better tool)."""
        if self._v2_controllers:
            return None
        return KernelUnit(self._layout, self._rel, name, self._proc)

    def preexec(self) -> Callable[[], None]:
        return fs.joiner([os.path.join(d, "cgroup.procs") for d in self.directories()])

    def pids(self) -> List[int]:
        return fs.procs(self._members)

    def contains(self, pid: int) -> bool:
        try:
            text = fs.read(os.path.join(self._proc, str(pid), "cgroup"))
        except CgroupError:  # exiting (ESRCH) or not ours to read: no evidence
            return False
        want = self._member_path
        for line in (text or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hierarchy, controllers, path = parts
            if self._member_kind == "v2":
                if hierarchy != "0" or controllers:
                    continue
            elif self._member_kind not in controllers.split(","):
                continue
            return path == want or path.startswith(want + "/")
        return False

    def kill(self, signum: int) -> int:
        if self._member_kind == "v2":
            return v2.kill(self._members, signum)
        return v1.kill(self._members, self._v1.get("freezer"), signum)

    def empty(self) -> bool:
        if self._member_kind == "v2":
            return not v2.populated(self._members)
        return not fs.procs(self._members)

    def remove(self) -> None:
        errors = []
        for d in self.directories():
            try:
                fs.remove_tree(d)
            except CgroupError as exc:
                errors.append(str(exc))
        if errors:
            raise CgroupError("; ".join(errors))

    def oom_kills(self) -> int:
        where = self._placement.get("memory")
        if where == "v1":
            return v1.oom_kills(self._v1["memory"])
        if where == "v2" and self._v2 is not None:
            return v2.oom_kills(self._v2)
        return 0

    def stats(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        if self._v2 is not None:
            out.update(v2.stats(self._v2, self._v2_controllers))
        out.update(v1.stats(self._v1))
        return out


class KernelBackend:
    def __init__(self, layout: Layout, parent: str, proc: str = "/proc") -> None:
        if layout.version == "none":
            raise ValueError("no cgroup hierarchy: use the none backend")
        self.layout = layout
        self.version = layout.version
        self.parent = clean_parent(parent)
        self.proc = proc

    def __repr__(self) -> str:
        return f"KernelBackend({self.version}, parent={self.parent!r})"

    def unit(self, name: str, pgid: Optional[int] = None) -> KernelUnit:
        return KernelUnit(self.layout, self.parent, name, self.proc)

    def units(self) -> List[str]:
        _kind, mount = self.layout.membership()
        try:
            entries = os.scandir(os.path.join(mount.path, self.parent))
        except FileNotFoundError:
            return []
        with entries:
            return sorted(unescape(e.name) for e in entries if e.is_dir(follow_symlinks=False))

    def facts(self) -> Dict[str, Any]:
        placement = self.layout.placement()
        kind, _mount = self.layout.membership()
        return {
            "version": self.version,
            "limits": sorted(n for n, c in LIMIT_CONTROLLERS.items() if c in placement),
            "controllers": placement,
            "membership": "v2" if kind == "v2" else f"v1:{kind}",
            "parent": self.parent,
        }

    def remove(self) -> None:
        mounts = [self.layout.v2] if self.layout.v2 is not None else []
        mounts += [m for m in self.layout.v1.values() if m not in mounts]
        parts = self.parent.split("/")
        for mount in mounts:
            for depth in range(len(parts), 0, -1):
                path = os.path.join(mount.path, *parts[:depth])
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        break  # still used, by our units or another agent's
                    raise CgroupError(f"{path}: cannot remove: {exc.strerror}") from None
