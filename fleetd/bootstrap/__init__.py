"""Putting the agent on a host that has only SSH and Python 3.9+ (``fleetctl machine add``).

  probe     one SSH command: what the host offers (Python, psutil, architecture, systemd,
            cgroups, Java, room and write access where the agent goes); the problems
            that stop an install, in words for the user
  bundle    the payload: the agent-side modules, a launcher, psutil if the host has none;
            a version id that changes whenever the agent's code does
  target    where the agent goes (prefix, state directory, service) and which paths a
            purge may ever remove; the agent command that names them
  record    <prefix>/install-record: what the first install made, all a purge removes
  remote    a host's shell running fleetd's scripts, each step timed and named in errors
  scripts/  those scripts (sh and python3), package data that shellcheck and ruff read
  install   the transaction: probe, stage, verify, switch, start (as a systemd service
            where PID 1 is systemd, else detached), undo on any failure
  uninstall stop the agent; with purge, remove what the install recorded making
  machines  the daemon's entry points: a registered machine -> install / uninstall

On the host:

  <prefix>/versions/<id>/   one directory per version (current + previous are kept)
  <prefix>/current          -> versions/<id>, switched atomically
  /etc/systemd/system/fleet-agent.service   on systemd hosts (KillMode=process)
  /var/lib/fleet-agent/     the agent's own state (fleetd.agent.state)

Daemon side (Python 3.11+): it runs in fleetd and only talks to the host through
fleetd.transport's ``Shell``.
"""
