"""fleetd's side of the bootstrap: a registered (or about to be registered) machine's SSH
settings -> a Shell -> install / uninstall, with the connection closed afterwards.

The registry keeps no extra field for it: a machine whose agent fleetd installed has the
agent command ``install`` made (``<prefix>/current/bin/fleet-agent attach ...``), which
names the prefix, the state directory and whether the agent is a systemd service. A
machine added with ``--agent-command`` is the user's business: fleetd neither upgrades
nor removes an agent it did not install.
"""

from __future__ import annotations

from typing import Optional, Tuple

from fleetd.bootstrap.install import Installed, install
from fleetd.bootstrap.target import DEFAULT_PREFIX, BootstrapError, Target, parse_agent_command
from fleetd.bootstrap.uninstall import Removed, uninstall
from fleetd.registry.base import MachineRecord
from fleetd.transport.ssh import to_machine

__all__ = ["DEFAULT_PREFIX", "BootstrapError", "Installed", "Removed", "Target", "install_on",
           "installed_by_fleetd", "uninstall_from", "where"]


def where(machine: MachineRecord) -> str:
    """root@10.0.0.5, or root@10.0.0.5:2222 off port 22: how messages name the host."""
    host = f"[{machine.address}]" if ":" in machine.address else machine.address
    return f"{machine.user}@{host}" + (f":{machine.port}" if machine.port != 22 else "")


def installed_by_fleetd(machine: MachineRecord) -> Optional[Tuple[Target, bool]]:
    return parse_agent_command(machine.agent_command)


async def install_on(machine: MachineRecord, target: Target, force: bool = False,
                     systemd: Optional[bool] = None) -> Installed:
    """Install or upgrade the agent on ``machine`` (BootstrapError, TransportError);
    ``systemd``: how the agent ran there so far (an upgrade keeps it)."""
    shell = to_machine(machine)
    try:
        return await install(shell, where(machine), target, force=force, systemd=systemd)
    finally:
        await shell.close()


async def uninstall_from(machine: MachineRecord, purge: bool) -> Removed:
    """Stop the agent fleetd installed on ``machine``; ``purge``: remove it too."""
    found = installed_by_fleetd(machine)
    if found is None:
        raise BootstrapError(f"machine {machine.name}: fleetd did not install its agent "
                             f"(agent command {machine.agent_command!r})")
    shell = to_machine(machine)
    try:
        return await uninstall(shell, where(machine), found[0], purge)
    finally:
        await shell.close()
