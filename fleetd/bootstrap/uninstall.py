"""Remove the agent from a host, over its SSH connection.

``uninstall`` stops the agent (``systemctl disable --now``, or SIGTERM to the pid in
its state directory, SIGKILL past STOP_TIMEOUT_S, as ``install`` stops a detached one)
and, with ``purge``, removes what ``install`` put there and nothing else: the version
directories and link, the service file, the record, the state directory if it was the
install's own, the directories the install made (if empty), and the agent's now-empty
cgroups (scripts/uninstall.sh). Without a record that matches the machine's paths, or
when the prefix or the state directory is a symlink now, the purge is refused (the agent
is stopped) and the error says why: what an agent command names is not proof that
fleetd installed there.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import List, Optional

from fleetd.bootstrap import probe as probes
from fleetd.bootstrap import scripts
from fleetd.bootstrap.record import RECORD, InstallRecord, facts
from fleetd.bootstrap.remote import STOP_TIMEOUT_S, Host
from fleetd.bootstrap.target import BootstrapError, Target
from fleetd.transport.base import Shell

_UNINSTALL = scripts.text("uninstall.sh")


@dataclasses.dataclass
class Removed:
    stopped: bool  # an agent was running and was stopped
    purged: bool
    left_running: List[str]  # units whose records were still there (purge only)


async def uninstall(shell: Shell, where: str, target: Target, purge: bool) -> Removed:
    """Stop the agent; with ``purge``, remove what the install recorded making there
    (InstallRecord), or nothing, saying why."""
    target.check()
    host = Host(shell, where)
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
    found = facts(out.stdout)
    if found.get("symlink"):
        refused = f"{found['symlink'][0]} is a symlink now, not the directory installed to"
    if refused:
        raise BootstrapError(f"{where}: nothing was removed: {refused}")
    if found.get("remains"):
        raise BootstrapError(f"{where}: could not remove " + ", ".join(found["remains"]))
    if record and not record.own_state:
        raise BootstrapError(f"{where}: removed what fleetd installed, but not "
                             f"{target.state_dir}: it held files already when the install began")
    return Removed(stopped=bool(found.get("stopped")),
                   purged=bool(found.get("purged")), left_running=found.get("left", []))


async def _read_record(host: Host, target: Target) -> InstallRecord:
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
