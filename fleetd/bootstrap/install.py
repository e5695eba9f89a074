"""Install or upgrade the agent on a host, over its SSH connection.

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

Any failure undoes what this attempt did, in reverse (``_Undo``): the staged directory
goes, the link points back (or is removed), the service file is restored (or removed),
the old agent is started again if it ran, and directories this attempt created are
removed. So a host that cannot take the agent keeps nothing, and a failed upgrade leaves
the old version running. The error names the host and the step and quotes what the host
said.

A successful install leaves ``<prefix>/install-record`` (fleetd.bootstrap.record), which
``fleetd.bootstrap.uninstall`` goes by. The scripts each step runs on the host are files
in fleetd/bootstrap/scripts/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

from fleetd.bootstrap import bundle as bundles
from fleetd.bootstrap import probe as probes
from fleetd.bootstrap import scripts
from fleetd.bootstrap.probe import HostReport
from fleetd.bootstrap.record import RECORD, InstallRecord, facts
from fleetd.bootstrap.remote import STOP_TIMEOUT_S, Host, py_command, sh_command
from fleetd.bootstrap.target import BootstrapError, Target
from fleetd.transport.base import Shell, TransportError

STATE_NEED_KB = 8 * 1024
READY_TIMEOUT_S = 20.0

_PREPARE = scripts.text("prepare.sh")
_RECORD = scripts.text("record.sh")
_UNPACK = scripts.text("unpack.py")
_ACTIVATE = scripts.text("activate.py")
_STOP_DETACHED = scripts.text("stop.sh")
_READY = scripts.text("ready.py")
_PRUNE = scripts.text("prune.sh")
_UNDO_DIRS = scripts.text("undo-dirs.sh")


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


async def probe(shell: Shell, where: str, target: Target = Target()) -> HostReport:
    host = Host(shell, where)
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
        return await _install(Host(shell, where), target, suffix, files,
                              wheelhouse or bundles.wheelhouse(), force, systemd)


async def _install(host: Host, target: Target, suffix: Optional[str],
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


async def _stage(host: Host, target: Target, payload: bundles.Bundle, python: str,
                 undo: _Undo, force: bool) -> None:
    staged = f"{target.prefix}/versions/{payload.version}.partial"
    final = f"{target.prefix}/versions/{payload.version}"
    out = await host.sh("stage", f"creating {staged}", _PREPARE, target.prefix,
                        payload.version, target.state_dir)
    found = facts(out.stdout)
    undo.created = found.get("created", [])
    undo.own_state = bool(found.get("own_state"))
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


async def _start_service(host: Host, target: Target, report: HostReport,
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


async def _start_detached(host: Host, target: Target, undo: _Undo) -> None:
    undo.restarted = True
    await host.sh("start", "stopping the old agent", _STOP_DETACHED, target.state_dir,
                  str(int(STOP_TIMEOUT_S)))
    await host.run("start", "starting the agent", _start_command(target), timeout=30.0)


class _Undo:
    """What this install attempt changed on the host, and how to take it back."""

    def __init__(self, host: Host, target: Target, report: HostReport, python: str) -> None:
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
            await step("stopping the agent", sh_command(t.state_dir, str(int(STOP_TIMEOUT_S))),
                       _STOP_DETACHED)
        if self.switched:
            if r.installed:
                await step("pointing current back", py_command(self.python, t.prefix, r.installed),
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
            await step("removing created directories", sh_command(*reversed(self.created)),
                       _UNDO_DIRS)
        if failed and isinstance(cause, BootstrapError):
            cause.args = (f"{cause.args[0]}; undoing it failed too: " + "; ".join(failed),)
