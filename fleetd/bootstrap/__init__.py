"""Putting the agent on a host that has only SSH and Python 3.9+ (``fleetctl machine add``).

  probe     one SSH command: what the host offers (Python, psutil, architecture, systemd,
            cgroups, Java, room and write access where the agent goes); the problems
            that stop an install, in words for the user
  bundle    the payload: the agent-side modules, a launcher, psutil if the host has none;
            a version id that changes whenever the agent's code does
  install   the transaction: probe, stage, verify, switch, start (as a systemd service
            where PID 1 is systemd, else detached), undo on any failure; and uninstall

On the host:

  <prefix>/versions/<id>/   one directory per version (current + previous are kept)
  <prefix>/current          -> versions/<id>, switched atomically
  /etc/systemd/system/fleet-agent.service   on systemd hosts (KillMode=process)
  /var/lib/fleet-agent/     the agent's own state (fleetd.agent.state)

Daemon side (Python 3.11+): it runs in fleetd and only talks to the host through
fleetd.transport's ``Shell``.
"""
