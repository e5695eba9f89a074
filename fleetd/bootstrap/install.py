"""Install, upgrade and remove the agent on a host, over its SSH connection.

``install`` is one transaction with the host:

1. probe (one command): refuse with every problem at once if the host cannot run the
   agent; nothing has been written yet;
2. if the wanted version is already current and its agent runs, stop here;
3. stage: ``<prefix>/versions/<id>.partial/`` gets the payload's zip over SFTP, which
   the host's python3 unpacks, byte-compiles and imports (the agent's modules and
   psutil, from there, isolated); the launcher must answer ``version``; then the
   directory is renamed to ``<id>``;
4. switch ``<prefix>/current`` to it with one rename (a symlink replaced atomically);
5. start it: where PID 1 is systemd, as ``fleet-agent.service`` (``KillMode=process``:
   stopping or restarting the agent signals only the agent; its programs run on and
   the next agent re-adopts them), enabled, and restarted on an upgrade; elsewhere
   detached, as ``fleet-agent attach`` starts it, after the old agent has been asked
   to stop with SIGTERM (its programs run on there too);
6. wait until the agent's socket answers; prune old versions (keep current + previous).

Any failure undoes what this attempt did, in reverse: the staged directory goes, the
link points back (or is removed), the service file is restored (or removed), the old
agent is started again if it ran, and directories this attempt created are removed.
So a host that cannot take the agent keeps nothing, and a failed upgrade leaves the old
version running. The error names the host and the step and quotes what the host said.

A successful install leaves ``<prefix>/install-record`` (``InstallRecord``), written by
the first one and kept by every later one: the paths it installed to, the directories
it made, and whether the state directory was its own (absent or empty before).

``uninstall`` stops the agent (``systemctl disable --now``, or SIGTERM to the pid in
its state directory, SIGKILL past STOP_TIMEOUT_S, as ``install`` stops a detached one)
and, with ``purge``, removes what ``install`` put there and nothing else: the version
directories and link, the service file, the record, the state directory if it was the
install's own, the directories the install made (if empty), and the agent's now-empty
cgroups. Without a record that matches the machine's paths, or when the prefix or the
state directory is a symlink now, the purge is refused (the agent is stopped) and the
error says why: what an agent command names is not proof that fleetd installed there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import re
import shlex
import time
from typing import Any, Dict, List, Optional, Tuple

from fleetd.agent.state import DEFAULT_STATE_DIR
from fleetd.bootstrap import bundle as bundles
from fleetd.bootstrap import probe as probes
from fleetd.bootstrap.probe import HostReport
from fleetd.transport.base import CommandResult, Shell, TransportError

DEFAULT_PREFIX = "/opt/fleetd-agent"
SERVICE = "fleet-agent.service"
UNIT_DIR = "/etc/systemd/system"
STATE_NEED_KB = 8 * 1024
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
RECORD = "install-record"  # in the prefix: what the first install made (InstallRecord)
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)+")
# never removed by a purge, whatever --prefix or --state-dir said
_PROTECTED = {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
              "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/local",
              "/var", "/var/lib", "/var/log", "/var/tmp", "/var/cache", "/mnt", "/media"}


class BootstrapError(Exception):
    """The agent could not be installed (or removed); the message is for the user."""

    def __init__(self, message: str, problems: Optional[List[str]] = None,
                 report: Optional[HostReport] = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.report = report


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the agent goes on a host."""

    prefix: str = DEFAULT_PREFIX
    state_dir: str = DEFAULT_STATE_DIR
    service: str = SERVICE

    def check(self) -> None:
        """Refuse paths a purge could not safely remove, or that need quoting."""
        for what, path in (("prefix", self.prefix), ("state directory", self.state_dir)):
            problem = path_problem(path)
            if problem:
                raise BootstrapError(f"{what} {path!r}: {problem}")
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+\.service", self.service):
            raise BootstrapError(f"service {self.service!r} is not a unit name")

    @property
    def launcher(self) -> str:
        return f"{self.prefix}/current/bin/fleet-agent"

    def agent_command(self, systemd: bool) -> str:
        """What fleetd runs over SSH to reach this agent (MachineRecord.agent_command)."""
        cmd = f"{self.launcher} attach --state-dir {self.state_dir}"
        return cmd + (f" --systemd-service {self.service}" if systemd else "")

    @property
    def unit_path(self) -> str:
        return f"{UNIT_DIR}/{self.service}"


def path_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a prefix or state directory (None: it can): it must be
    absolute and normal (no ``.``, ``..``, ``//`` or trailing ``/``: what the shell
    removes is the path as written), two levels deep, of characters that need no
    quoting, and none of the system's own directories."""
    if not _SAFE_PATH.fullmatch(path) or posixpath.normpath(path) != path:
        return ("want an absolute, normal path (no . or .. or //), two levels deep at "
                "least, of letters, digits and _ . + -")
    if path in _PROTECTED:
        return "a system directory cannot be the agent's own (a purge removes it)"
    return None


@dataclasses.dataclass(frozen=True)
class InstallRecord:
    """What the first successful install on a host made, as ``<prefix>/install-record``
    says (``key=value`` lines); a purge removes that and nothing else."""

    target: Target
    created: Tuple[str, ...]  # directories it made, outermost first (removed if empty)
    own_state: bool  # the state directory was absent or empty before it

    def text(self) -> str:
        t = self.target
        return "".join(f"{line}\n" for line in (
            f"prefix={t.prefix}", f"state={t.state_dir}", f"service={t.service}",
            *(f"created={d}" for d in self.created), f"own_state={int(self.own_state)}"))

    @classmethod
    def parse(cls, text: str, target: Target) -> InstallRecord:
        """The record, if it is one of an install of ``target``; else BootstrapError
        saying what does not match (the caller adds where)."""
        facts = _facts(text)
        recorded = {key: facts.get(key, []) for key in ("prefix", "state", "service")}
        wanted = {"prefix": target.prefix, "state": target.state_dir,
                  "service": target.service}
        for key, value in wanted.items():
            if recorded[key] != [value]:
                raise BootstrapError(f"it records {key} {recorded[key] or 'none'}, not "
                                     f"{value}")
        created = tuple(facts.get("created", []))
        mine = {target.prefix, f"{target.prefix}/versions"}
        for d in created:
            normal = d.startswith("/") and posixpath.normpath(d) == d
            if not normal or not (d in mine or target.prefix.startswith(d + "/")):
                raise BootstrapError(f"it records making {d!r}, which is not the prefix, "
                                     "one of its parents or its versions directory")
        return cls(target, created, facts.get("own_state") == ["1"])


def parse_agent_command(command: str) -> Optional[Tuple[Target, bool]]:
    """(target, runs as a systemd service) if ``command`` is one ``install`` made."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    suffix = "/current/bin/fleet-agent"
    if len(argv) < 2 or not argv[0].endswith(suffix) or argv[1] != "attach":
        return None
    opts = dict(zip(argv[2::2], argv[3::2]))
    if len(argv[2:]) % 2 or set(opts) - {"--state-dir", "--systemd-service"}:
        return None
    target = Target(prefix=argv[0][: -len(suffix)],
                    state_dir=opts.get("--state-dir", DEFAULT_STATE_DIR),
                    service=opts.get("--systemd-service", SERVICE))
    return target, "--systemd-service" in opts


def unit_file(target: Target) -> str:
    return f"""\
{probes.UNIT_MARK}; `fleetctl machine remove --purge` removes it.
[Unit]
Description=fleet-agent: runs fleetd's units on this host
After=network.target

[Service]
Type=simple
ExecStart={target.launcher} daemon --state-dir {target.state_dir}
# Only the agent's own process is signalled when it stops or restarts: the programs it
# supervises keep running, and the next agent re-adopts them (pid, start time, cgroup).
KillMode=process
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


@dataclasses.dataclass
class Installed:
    version: str
    previous: Optional[str]
    changed: bool  # False: that version already ran there
    systemd: bool  # runs as a systemd service (else detached)
    agent_command: str
    report: HostReport
    psutil: str  # "host 5.9.4" or "pushed 7.2.2"
    seconds: float
    steps: Dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {"version": self.version, "previous": self.previous, "changed": self.changed,
                "mode": "systemd" if self.systemd else "detached",
                "agent_command": self.agent_command, "psutil": self.psutil,
                "seconds": round(self.seconds, 3),
                "steps": {k: round(v, 3) for k, v in self.steps.items()},
                "host": self.report.summary()}


@dataclasses.dataclass
class Removed:
    stopped: bool  # an agent was running and was stopped
    purged: bool
    left_running: List[str]  # units whose records were still there (purge only)


# --- the scripts run on the host ------------------------------------------------------
_PREPARE = r"""
set -e
umask 022
p=$1; missing=""
while [ ! -d "$p" ]; do missing="$p $missing"; p=$(dirname "$p"); done
for d in $missing; do mkdir "$d"; echo "created=$d"; done
if [ ! -d "$1/versions" ]; then mkdir "$1/versions"; echo "created=$1/versions"; fi
rm -rf "$1/versions/$2.partial"
mkdir "$1/versions/$2.partial"
if [ ! -e "$3" ] || { [ -d "$3" ] && [ -z "$(ls -A "$3")" ]; }; then echo "own_state=1"; fi
"""

# the first install's record stays: an upgrade makes nothing a purge would not remove
_RECORD = r"""
[ -e "$1" ] && exit 0
printf '%s' "$2" > "$1.new" && mv "$1.new" "$1"
"""

# run by the host's python3: unpack, byte-compile, import everything the agent needs
_UNPACK = r"""
import compileall, os, sys, zipfile
staged, final = sys.argv[1], sys.argv[2]
archive = os.path.join(staged, "agent.zip")
with zipfile.ZipFile(archive) as z:
    z.extractall(staged)
os.unlink(archive)
os.chmod(os.path.join(staged, "bin", "fleet-agent"), 0o755)
compileall.compile_dir(staged, quiet=2, ddir=final)
sys.path[:0] = [staged, os.path.join(staged, "lib")]
for name in sys.argv[3:]:
    __import__(name)
import psutil
print("psutil=%s %s" % (psutil.__version__, psutil.__file__))
"""

_ACTIVATE = r"""
import os, sys
prefix, version = sys.argv[1], sys.argv[2]
link = os.path.join(prefix, "current")
new = link + ".new"
if os.path.lexists(new):
    os.unlink(new)
os.symlink(os.path.join("versions", version), new)
os.replace(new, link)
"""

# a process is gone once it is a zombie: a detached agent's parent (the attach that
# started it) is long gone, and whoever inherited it may reap it late
_ALIVE = r"""
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1)" != Z ]
}
"""

# stop_detached STATE WAIT_S: stop the agent named by the pid file, if it is one (not a
# reused pid): SIGTERM, wait, SIGKILL past WAIT_S (its programs are not signalled)
_STOP_DETACHED_FN = _ALIVE + r"""
stop_detached() {
  pid=$(cat "$1/agent.pid" 2>/dev/null) || return 0
  [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\000' ' ' < "/proc/$pid/cmdline" | grep -q fleet || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  echo "stopped=$pid"
  i=0
  while alive "$pid" && [ $i -lt $(($2 * 20)) ]; do sleep 0.05; i=$((i + 1)); done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; echo "killed=$pid"; fi
}
"""

_STOP_DETACHED = _STOP_DETACHED_FN + r"""
stop_detached "$1" "$2"
"""

# wait for the agent's socket; a systemd service whose agent exits (systemd restarts it,
# NRestarts grows) has failed at once: its journal says why
_READY = r"""
import os, socket, subprocess, sys, time
state, timeout, service = sys.argv[1], float(sys.argv[2]), sys.argv[3]
path = os.path.join(state, "agent.sock")

def restarts():
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", service],
                         stdout=subprocess.PIPE, universal_newlines=True)
    return out.stdout.strip()

def journal():
    out = subprocess.run(["journalctl", "-u", service, "-n", "8", "-o", "cat", "--no-pager"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True)
    return out.stdout.strip()

before = restarts() if service else ""
deadline = time.monotonic() + timeout
while True:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        break
    except OSError as exc:
        if service and restarts() != before:
            sys.exit("%s exited and is being restarted by systemd:\n%s" % (service, journal()))
        if time.monotonic() > deadline:
            sys.exit("the agent's socket %s did not answer within %ds: %s%s" % (
                path, timeout, exc, ("\n" + journal()) if service else ""))
        time.sleep(0.05)
    finally:
        s.close()
with open(os.path.join(state, "agent.pid")) as f:
    print("pid=" + f.read().strip())
"""

_PRUNE = r"""
cd "$1/versions" || exit 0
for d in *; do
  [ -e "$d" ] || continue
  case " $2 " in *" $d "*) continue ;; esac
  rm -rf "$d" && echo "pruned=$d"
done
"""

_UNDO_DIRS = r"""
for d in "$@"; do rmdir "$d" 2>/dev/null || true; done
"""

_UNINSTALL = _STOP_DETACHED_FN + r"""
prefix=$1; state=$2; service=$3; purge=$4; wait_s=$5; own_state=$6; mark=$7; shift 7
unit="/etc/systemd/system/$service"
ours=0  # a service file fleetd did not write is never stopped nor removed
if [ -f "$unit" ]; then case "$(head -n 1 "$unit")" in "$mark"*) ours=1 ;; esac; fi
if [ $ours = 1 ] && command -v systemctl >/dev/null 2>&1; then
  if [ "$(systemctl is-active "$service" 2>/dev/null)" = active ]; then echo "stopped=1"; fi
  systemctl disable --now --quiet "$service" 2>&1 || true
fi
stop_detached "$state" "$wait_s"
[ "$purge" = 1 ] || exit 0
for p in "$prefix" "$state"; do
  if [ -L "$p" ]; then echo "symlink=$p"; exit 0; fi
done
for r in "$state"/units/*.json; do [ -e "$r" ] && basename "$r" .json | sed 's/^/left=/'; done
mid=$(cat "$state/machine-id" 2>/dev/null)
mine=""
if [ $ours = 1 ]; then
  rm -f "$unit"
  systemctl daemon-reload 2>&1 || true
  mine="$unit"
fi
rm -rf "$prefix/current" "$prefix/current.new" "$prefix/versions" "$prefix/install-record"
if [ "$own_state" = 1 ]; then rm -rf "$state"; mine="$mine $state"; fi
for d in "$@"; do rmdir "$d" 2>/dev/null || true; [ "$d" = "$prefix" ] && mine="$mine $d"; done
if [ -n "$mid" ]; then
  for d in /sys/fs/cgroup/*/fleet/"$mid" /sys/fs/cgroup/fleet/"$mid"; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$(dirname "$d")" 2>/dev/null || true
  done
fi
for p in $mine; do
  [ -e "$p" ] || continue
  # a mount point cannot go (a lab host's own state directory is one): emptied is gone
  if [ -d "$p" ] && [ -z "$(ls -A "$p")" ] \
     && awk -v p="$p" '$5 == p { m = 1 } END { exit !m }' /proc/self/mountinfo; then
    continue
  fi
  echo "remains=$p"
done
echo "purged=1"
"""


def _sh(*args: str) -> str:
    """Run the script on stdin with ``args`` (``sh -s -- ARGS``): the script is then free
    of the command line's quoting, which the user's login shell does."""
    return shlex.join(["sh", "-s", "--", *args])


def _py(python: str, *args: str) -> str:
    """Run the Python script on stdin, isolated (``-I``, as the agent runs), with ``args``."""
    return shlex.join([python, "-I", "-", *args])


def _facts(out: str) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for line in out.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            found.setdefault(key, []).append(value)
    return found


class _Host:
    """The shell of one host with this install's messages and timings."""

    def __init__(self, shell: Shell, where: str) -> None:
        self.shell = shell
        self.where = where
        self.steps: Dict[str, float] = {}

    async def run(self, step: str, what: str, command: str, *, input: Optional[str] = None,
                  timeout: float = 60.0, check: bool = True) -> CommandResult:
        began = time.monotonic()
        try:
            result = await self.shell.run(command, input=input, timeout=timeout)
        except TransportError as exc:
            raise BootstrapError(f"{self.where}: {what}: {exc}") from None
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + time.monotonic() - began
        if check and not result.ok:
            said = (result.stderr.strip() or result.stdout.strip())[-800:]
            raise BootstrapError(f"{self.where}: {what} failed (exit {result.exit_status})"
                                 + (f": {said}" if said else ""))
        return result

    async def sh(self, step: str, what: str, script: str, *args: str,
                 timeout: float = 60.0, check: bool = True) -> CommandResult:
        return await self.run(step, what, _sh(*args), input=script, timeout=timeout,
                              check=check)

    async def py(self, step: str, what: str, python: str, script: str, *args: str,
                 timeout: float = 60.0) -> CommandResult:
        return await self.run(step, what, _py(python, *args), input=script, timeout=timeout)


async def probe(shell: Shell, where: str, target: Target = Target()) -> HostReport:
    host = _Host(shell, where)
    result = await host.run("probe", "probing the host",
                            probes.command(target.prefix, target.state_dir, target.service),
                            input=probes.SCRIPT, timeout=30.0, check=False)
    try:
        return probes.parse(where, result.stdout, target.prefix, target.state_dir)
    except probes.ProbeError as exc:
        said = result.stderr.strip()[-300:]
        raise BootstrapError(str(exc) + (f"; it said: {said}" if said else "")) from None


_locks: Dict[str, asyncio.Lock] = {}


async def install(shell: Shell, where: str, target: Target = Target(), *,
                  suffix: Optional[str] = None, files: Optional[Dict[str, bytes]] = None,
                  wheelhouse: Optional[str] = None, force: bool = False,
                  systemd: Optional[bool] = None) -> Installed:
    """Install (or upgrade to) this fleetd's agent on the host behind ``shell``;
    ``where`` (root@10.0.0.5) names it in messages. One install per host at a time.
    ``suffix``/``files`` are for tests (see bundle.build); ``force`` reinstalls the
    same version; ``systemd`` (an upgrade): how the agent ran so far, which must hold
    (fleetd's registration names it)."""
    target.check()
    lock = _locks.setdefault(where, asyncio.Lock())
    async with lock:
        return await _install(_Host(shell, where), target, suffix, files,
                              wheelhouse or bundles.wheelhouse(), force, systemd)


async def _install(host: _Host, target: Target, suffix: Optional[str],
                   files: Optional[Dict[str, bytes]], wheelhouse: str,
                   force: bool, expect_systemd: Optional[bool]) -> Installed:
    began = time.monotonic()
    where = host.where
    report = await probe(host.shell, where, target)
    host.steps["probe"] = time.monotonic() - began
    python = report.python
    wheel = None
    if python is not None and python.version is not None and not python.psutil_usable:
        wheel = bundles.pick_wheel(wheelhouse, report.arch, python.libc, python.version)
    payload = bundles.build(python.path if python else "/usr/bin/python3", wheel, suffix, files)
    problems = report.problems(payload.need_kb(), STATE_NEED_KB, wheel is not None, wheelhouse)
    if problems or python is None:
        raise BootstrapError(f"{where}: " + "; ".join(problems), problems, report)
    systemd = report.systemd
    if expect_systemd is not None and systemd != expect_systemd:
        raise BootstrapError(
            f"{where}: PID 1 is {'now' if systemd else 'no longer'} systemd, and the agent "
            f"ran {'detached' if systemd else 'as a systemd service'}: remove the machine "
            "and add it again", report=report)
    if systemd and report.service_file and not report.service_ours:
        raise BootstrapError(
            f"{where}: {target.unit_path} is not a service file fleetd wrote (its first "
            "line is not fleetd's): fleetd does not replace it", report=report)
    psutil = f"pushed {wheel.version}" if wheel else f"host {python.psutil}"
    result = Installed(version=payload.version, previous=report.installed,
                       changed=True, systemd=systemd,
                       agent_command=target.agent_command(systemd), report=report,
                       psutil=psutil, seconds=0.0, steps=host.steps)
    running = (report.service_active == "active") if systemd else report.agent_running
    if (report.installed == payload.version and running and not force
            and (not systemd or report.service_file)):
        result.changed = False
        result.seconds = time.monotonic() - began
        return result
    undo = _Undo(host, target, report, python.path)
    try:
        if payload.version not in report.versions or force:
            await _stage(host, target, payload, python.path, undo, force)
        undo.switched = True
        await host.py("activate", f"pointing {target.prefix}/current at {payload.version}",
                      python.path, _ACTIVATE, target.prefix, payload.version)
        if systemd:
            await _start_service(host, target, report, undo)
        else:
            await _start_detached(host, target, undo)
        await host.py("ready", "waiting for the agent to answer", python.path, _READY,
                      target.state_dir, str(READY_TIMEOUT_S),
                      target.service if systemd else "", timeout=READY_TIMEOUT_S + 10)
        if systemd:
            await host.run("ready", f"checking {target.service}",
                           f"systemctl is-active --quiet {target.service}")
        record = InstallRecord(target, tuple(undo.created), undo.own_state)
        await host.sh("record", f"writing {target.prefix}/{RECORD}", _RECORD,
                      f"{target.prefix}/{RECORD}", record.text())
    except BaseException as exc:
        await undo.run(exc)
        raise
    keep = [payload.version] + ([report.installed] if report.installed else [])
    await host.sh("prune", "pruning old agent versions", _PRUNE, target.prefix, " ".join(keep),
                  check=False)
    result.seconds = time.monotonic() - began
    return result


async def _stage(host: _Host, target: Target, payload: bundles.Bundle, python: str,
                 undo: _Undo, force: bool) -> None:
    staged = f"{target.prefix}/versions/{payload.version}.partial"
    final = f"{target.prefix}/versions/{payload.version}"
    out = await host.sh("stage", f"creating {staged}", _PREPARE, target.prefix,
                        payload.version, target.state_dir)
    facts = _facts(out.stdout)
    undo.created = facts.get("created", [])
    undo.own_state = bool(facts.get("own_state"))
    undo.staged = staged
    began = time.monotonic()
    try:
        await host.shell.put(f"{staged}/agent.zip", payload.data, 0o600)
    except TransportError as exc:
        raise BootstrapError(f"{host.where}: uploading the agent ({len(payload.data) // 1024} "
                             f"KiB) to {staged}: {exc}") from None
    finally:
        host.steps["upload"] = time.monotonic() - began
    await host.py("unpack", f"unpacking and importing the agent in {staged} with {python}",
                  python, _UNPACK, staged, final, *bundles.VERIFY_MODULES)
    out = await host.run("unpack", "running the agent's launcher",
                         f"{staged}/bin/fleet-agent version")
    if out.stdout.strip() != payload.version.split("-")[0]:
        raise BootstrapError(f"{host.where}: the agent's launcher answered "
                             f"{out.stdout.strip()!r} to 'version'")
    if force:
        await host.run("stage", "replacing the same version", f"rm -rf {final}")
    await host.run("stage", f"moving {staged} to {final}", f"mv {staged} {final}")
    undo.staged = final


async def _start_service(host: _Host, target: Target, report: HostReport,
                         undo: _Undo) -> None:
    if report.service_file:
        old = await host.run("service", f"reading {target.unit_path}",
                             f"cat {target.unit_path}")
        undo.old_unit = old.stdout
    undo.unit_written = True
    text = unit_file(target)
    if text != undo.old_unit:
        await host.run("service", f"writing {target.unit_path}",
                       f"cat > {target.unit_path}.tmp && mv {target.unit_path}.tmp "
                       f"{target.unit_path} && systemctl daemon-reload", input=text)
    if report.agent_running and report.service_active != "active":
        # a detached agent (started by an attach before the service existed) holds the
        # state directory's lock: the service's agent would find it and exit
        await host.sh("service", "stopping the detached agent", _STOP_DETACHED,
                      target.state_dir, str(int(STOP_TIMEOUT_S)))
    undo.restarted = True
    await host.run("service", f"starting {target.service}",
                   f"systemctl enable --quiet {target.service} && "
                   f"systemctl restart {target.service}", timeout=90.0)


def _start_command(target: Target) -> str:
    """``attach`` starts the agent if none runs; an empty stdin then ends it at once (a
    pipe: attach polls its stdin, and /dev/null cannot be polled)."""
    return f"true | {target.launcher} attach --state-dir {target.state_dir} > /dev/null"


async def _start_detached(host: _Host, target: Target, undo: _Undo) -> None:
    undo.restarted = True
    await host.sh("start", "stopping the old agent", _STOP_DETACHED, target.state_dir,
                  str(int(STOP_TIMEOUT_S)))
    await host.run("start", "starting the agent", _start_command(target), timeout=30.0)


class _Undo:
    """What this install attempt changed on the host, and how to take it back."""

    def __init__(self, host: _Host, target: Target, report: HostReport, python: str) -> None:
        self.host = host
        self.target = target
        self.report = report
        self.python = python
        self.created: List[str] = []  # directories this attempt made, outermost first
        self.own_state = False  # the state directory was absent or empty before it
        self.staged: Optional[str] = None  # the version directory it made (partial or not)
        self.switched = False
        self.unit_written = False
        self.old_unit: Optional[str] = None
        self.restarted = False

    async def run(self, cause: BaseException) -> None:
        """Best effort, every step tried; a step that fails is added to the error."""
        failed: List[str] = []
        t, r = self.target, self.report

        async def step(what: str, command: str, input: Optional[str] = None) -> None:
            try:
                out = await self.host.shell.run(command, input=input, timeout=60.0)
                if not out.ok:
                    failed.append(f"{what}: {(out.stderr or out.stdout).strip()[-200:]}")
            except TransportError as exc:
                failed.append(f"{what}: {exc}")

        had_agent = (r.service_active == "active") if r.systemd else r.agent_running
        if self.restarted:  # the new agent may run: stop it before the files go
            if r.systemd:
                await step("stopping the service", f"systemctl stop {t.service}")
            await step("stopping the agent", _sh(t.state_dir, str(int(STOP_TIMEOUT_S))),
                       _STOP_DETACHED)
        if self.switched:
            if r.installed:
                await step("pointing current back", _py(self.python, t.prefix, r.installed),
                           _ACTIVATE)
            else:
                await step("removing current", f"rm -f {t.prefix}/current")
        if self.unit_written:
            if self.old_unit is not None:
                await step("restoring the service file",
                           f"cat > {t.unit_path} && systemctl daemon-reload", self.old_unit)
            else:
                await step("removing the service file",
                           f"systemctl disable --quiet {t.service} 2>/dev/null; "
                           f"rm -f {t.unit_path} && systemctl daemon-reload")
        if self.staged is not None and os.path.basename(self.staged) != r.installed:
            await step("removing the staged version", f"rm -rf {self.staged}")
        if self.restarted and had_agent:  # the old agent, back as it was
            if r.systemd:
                await step("restarting the old agent", f"systemctl start {t.service}")
            else:
                await step("restarting the old agent", _start_command(t))
        state = r.paths.get("state")
        if self.restarted and state is not None and state.existing != t.state_dir:
            # the state directory did not exist before: the failed agent made it
            await step("removing the state directory", f"rm -rf {t.state_dir}")
        if self.created:
            await step("removing created directories", _sh(*reversed(self.created)),
                       _UNDO_DIRS)
        if failed and isinstance(cause, BootstrapError):
            cause.args = (f"{cause.args[0]}; undoing it failed too: " + "; ".join(failed),)


async def uninstall(shell: Shell, where: str, target: Target, purge: bool) -> Removed:
    """Stop the agent; with ``purge``, remove what the install recorded making there
    (InstallRecord), or nothing, saying why."""
    target.check()
    host = _Host(shell, where)
    record: Optional[InstallRecord] = None
    refused: Optional[str] = None
    if purge:
        try:
            record = await _read_record(host, target)
        except BootstrapError as exc:
            refused = str(exc)
    out = await host.sh("uninstall", "removing the agent" if record else "stopping the agent",
                        _UNINSTALL, target.prefix, target.state_dir, target.service,
                        "1" if record else "0", str(int(STOP_TIMEOUT_S)),
                        "1" if record and record.own_state else "0", probes.UNIT_MARK,
                        *reversed(record.created if record else ()), timeout=60.0)
    facts = _facts(out.stdout)
    if facts.get("symlink"):
        refused = f"{facts['symlink'][0]} is a symlink now, not the directory installed to"
    if refused:
        raise BootstrapError(f"{where}: nothing was removed: {refused}")
    if facts.get("remains"):
        raise BootstrapError(f"{where}: could not remove " + ", ".join(facts["remains"]))
    if record and not record.own_state:
        raise BootstrapError(f"{where}: removed what fleetd installed, but not "
                             f"{target.state_dir}: it held files already when the install began")
    return Removed(stopped=bool(facts.get("stopped")),
                   purged=bool(facts.get("purged")), left_running=facts.get("left", []))


async def _read_record(host: _Host, target: Target) -> InstallRecord:
    """The install record in the prefix, if it is one of an install of ``target``."""
    path = f"{target.prefix}/{RECORD}"
    out = await host.run("uninstall", f"reading {path}", shlex.join(["cat", "--", path]),
                         check=False)
    if not out.ok:
        raise BootstrapError(f"{path}, which fleetd's install leaves, is not there: "
                             "fleetd removes only what its install recorded making")
    try:
        return InstallRecord.parse(out.stdout, target)
    except BootstrapError as exc:
        raise BootstrapError(f"{path} is not the record of this install: {exc}") from None
