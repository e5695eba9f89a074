"""What a host offers the agent, read with one SSH command before anything is pushed.

The probe is a POSIX sh script (scripts/probe.sh) fed to ``sh -s`` on the host (no
Python needed to run it: a host without Python must still say so). It prints one
``key=value`` fact a line; for each python3 it finds it runs that interpreter once,
isolated (``-I``, as the agent will run), for its version, psutil and C library. Write
access is tested by making and removing a temp directory in the nearest existing
ancestor of each path the agent needs, so a read-only mount, a full disk or missing
permissions are seen as such and nothing is left behind.

``parse`` turns the output into a ``HostReport``; ``HostReport.problems`` lists, in
words for the user, everything that stops the agent from being installed.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Dict, List, Optional, Tuple

from fleetd.bootstrap import scripts
from fleetd.wire import numbers

MIN_PYTHON = (3, 9)
UNIT_MARK = "# Installed by fleetd (fleetd.bootstrap)"  # a service file's first line: ours
MIN_PSUTIL = (5, 9)  # pyproject's psutil>=5.9: an older one on the host is not used

# Fed to ``sh -s -- ARGS`` on stdin (see ``command``), free of the command line's quoting.
SCRIPT = scripts.text("probe.sh")


def command(prefix: str, state_dir: str, service: str) -> str:
    return "sh -s -- " + " ".join(shlex.quote(a) for a in (prefix, state_dir, service,
                                                           UNIT_MARK))


def _version(text: str) -> Optional[Tuple[int, ...]]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def _dotted(v: Tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


@dataclasses.dataclass(frozen=True)
class Python:
    path: str
    version: Optional[Tuple[int, ...]]  # None: it would not run
    psutil: Optional[str]  # the host's psutil version, None if it has none
    libc: Tuple[str, str]  # ("glibc", "2.36"); ("", "") when unknown (musl, say)

    @property
    def usable(self) -> bool:
        return self.version is not None and self.version[:2] >= MIN_PYTHON

    @property
    def psutil_usable(self) -> bool:
        v = _version(self.psutil or "")
        return v is not None and v[:2] >= MIN_PSUTIL


@dataclasses.dataclass(frozen=True)
class PathCheck:
    path: str  # what the agent needs (the install prefix, its state directory, ...)
    existing: str  # its nearest existing ancestor (itself, if it exists)
    writable: bool
    error: str  # why not, as the host said it (mktemp's message)
    free_kb: Optional[int]
    mount: str

    def problem(self, need_kb: int) -> Optional[str]:
        what = self.path if self.existing == self.path else self.existing
        if not self.writable:
            low = self.error.lower()
            if "read-only" in low:
                return f"{what} is read-only (on the file system mounted at {self.mount})" \
                    if self.mount and self.mount != what else f"{what} is read-only"
            if "no space" in low:
                return f"no space left under {what} (needs {_mib(need_kb)} MiB)"
            if self.error:
                return f"cannot write under {what}: {self.error}"
            return f"cannot write under {what}"
        if self.free_kb is not None and self.free_kb < need_kb:
            return (f"only {_mib(self.free_kb, up=False)} MiB free under {what} "
                    f"(needs {_mib(need_kb)} MiB)")
        return None


def _mib(kb: int, up: bool = True) -> int:
    return -(-kb // 1024) if up else kb // 1024


@dataclasses.dataclass(frozen=True)
class HostReport:
    uid: Optional[int]
    user: str
    arch: str
    kernel: str
    pid1: str
    run_systemd: bool
    cgroup_fs: str
    cgroup_unified: bool
    pythons: Tuple[Python, ...]
    paths: Dict[str, PathCheck]  # "prefix", "state", "units" (systemd hosts)
    installed: Optional[str]  # the version id <prefix>/current points at
    versions: Tuple[str, ...]  # what <prefix>/versions holds
    service_file: bool
    service_active: str  # systemctl is-active: active, inactive, failed, ...; "" without
    agent_pid: Optional[int]  # the agent's pid file names a live process
    agent_cmdline: str
    javas: Tuple[Tuple[str, str], ...]  # (java home, version)
    service_ours: bool = False  # the service file is one fleetd wrote (its first line)

    @property
    def systemd(self) -> bool:
        """PID 1 is systemd (and says so the way sd_booted() checks)."""
        return self.pid1 == "systemd" and self.run_systemd

    @property
    def cgroups(self) -> str:
        if self.cgroup_fs == "cgroup2fs":
            return "v2"
        if self.cgroup_fs == "tmpfs":
            return "hybrid" if self.cgroup_unified else "v1"
        return "none"

    @property
    def python(self) -> Optional[Python]:
        """The interpreter the agent runs on: ``python3`` if new enough, else the newest
        python3.N that is."""
        usable = [p for p in self.pythons if p.usable]
        if not usable:
            return None
        first = self.pythons[0]
        if first.usable and first.path.endswith("/python3"):
            return first
        return max(usable, key=lambda p: p.version or ())

    @property
    def agent_running(self) -> bool:
        return self.agent_pid is not None and "fleet" in self.agent_cmdline

    def summary(self) -> Dict[str, object]:
        py = self.python
        return {
            "arch": self.arch, "kernel": self.kernel, "systemd": self.systemd,
            "cgroups": self.cgroups,
            "python": (f"{_dotted(py.version)} ({py.path})" if py and py.version else None),
            "psutil": py.psutil if py else None,
            "java": [v for _home, v in self.javas],
        }

    def problems(self, need_prefix_kb: int, need_state_kb: int,
                 have_wheel: bool, wheelhouse: str = "") -> List[str]:
        """Everything that stops the install, in words for the user, most basic first.
        ``have_wheel``: the wheelhouse holds a psutil wheel for this host."""
        out: List[str] = []
        if self.uid is not None and self.uid != 0:
            out.append(f"installing the agent needs root, and {self.user or 'this user'} is "
                       f"uid {self.uid} (add the machine as root@...)")
        py = self.python
        if py is None:
            runnable = [p for p in self.pythons if p.version is not None]
            if not runnable:
                out.append(f"no python3 (needs Python {_dotted(MIN_PYTHON)}+)")
            else:
                best = max(runnable, key=lambda p: p.version or ())
                out.append(f"Python {_dotted(best.version or ())} ({best.path}) is too old "
                           f"(needs {_dotted(MIN_PYTHON)}+)")
        elif not py.psutil_usable and not have_wheel:
            what = (f"psutil {py.psutil} on the host is older than {_dotted(MIN_PSUTIL)}"
                    if py.psutil else "no psutil on the host")
            libc = f"{py.libc[0]} {py.libc[1]}" if py.libc[0] else "a C library pip has no " \
                                                                    "manylinux wheels for"
            out.append(f"{what} and no psutil wheel for {self.arch} ({libc}) in the "
                       f"wheelhouse{f' {wheelhouse}' if wheelhouse else ''}")
        for key, need in (("prefix", need_prefix_kb), ("state", need_state_kb),
                          ("units", 64)):
            check = self.paths.get(key)
            problem = check.problem(need) if check is not None else None
            if problem and problem not in out:
                out.append(problem)
        return out


class ProbeError(Exception):
    pass


def parse(where: str, output: str, prefix: str, state_dir: str) -> HostReport:
    """The probe's output as a report; ProbeError if it is not the probe's output."""
    facts: Dict[str, str] = {}
    pythons: List[Python] = []
    javas: List[Tuple[str, str]] = []
    for line in output.splitlines():
        key, eq, value = line.partition("=")
        if not eq:
            continue
        if key == "python":
            pythons.append(_python(value))
        elif key == "java":
            home, _, version = value.partition(" ")
            javas.append((home, version))
        else:
            facts[key] = value.strip()
    if facts.get("probe") != "1" or facts.get("probe_end") != "1":
        raise ProbeError(f"{where}: the host probe did not run to its end "
                         f"(output: {output.strip()[-300:]!r})")
    paths = {}
    for key, path in (("prefix", prefix), ("state", state_dir),
                      ("units", "/etc/systemd/system")):
        if f"{key}_existing" in facts:
            paths[key] = PathCheck(
                path=path, existing=facts[f"{key}_existing"],
                writable=facts.get(f"{key}_writable") == "1",
                error=facts.get(f"{key}_error", ""),
                free_kb=_int(facts.get(f"{key}_free_kb")),
                mount=facts.get(f"{key}_mount", ""))
    pid = _int(facts.get("agent_pid"))
    return HostReport(
        uid=_int(facts.get("uid")), user=facts.get("user", ""),
        arch=facts.get("arch", ""), kernel=facts.get("kernel", ""),
        pid1=facts.get("pid1", ""), run_systemd=facts.get("run_systemd") == "1",
        cgroup_fs=facts.get("cgroup_fs", ""), cgroup_unified=facts.get("cgroup_unified") == "1",
        pythons=tuple(pythons), paths=paths, installed=facts.get("installed") or None,
        versions=tuple(facts.get("versions", "").split()),
        service_file=facts.get("service_file") == "1",
        service_active=facts.get("service_active", ""),
        agent_pid=pid, agent_cmdline=facts.get("agent_cmdline", "") if pid else "",
        javas=tuple(javas), service_ours=facts.get("service_ours") == "1",
    )


def _int(text: Optional[str]) -> Optional[int]:
    """A whole number the host printed, or None: what the host says is outside input."""
    try:
        return numbers.parse_int(text, 0) if text else None
    except numbers.NumberError:
        return None


def _python(value: str) -> Python:
    """``/usr/bin/python3 3.11.2 5.9.4 glibc:2.36`` (``-`` for none, ``?`` for a python
    that would not run)."""
    parts = value.split()
    path = parts[0] if parts else ""
    version = _version(parts[1]) if len(parts) > 1 else None
    psutil = parts[2] if len(parts) > 2 and parts[2] not in ("-", "") else None
    lib, _, ver = (parts[3] if len(parts) > 3 else "-:-").partition(":")
    return Python(path=path, version=version, psutil=psutil,
                  libc=("" if lib == "-" else lib, "" if ver == "-" else ver))
