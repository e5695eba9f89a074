"""``fleetctl lab``: bring a local multi-host lab up, show it, tear it down.

The lab's modules (fleetd.lab.netns, .systemd_host, .daemon: cgroups, psutil, threads)
are imported by the lab's commands only: every other fleetctl command, which imports
this module too, does not pay for them at start-up.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import click

from fleetd.cli.output import table
from fleetd.client import ApiError, Client
from fleetd.lab import DEFAULT_LAB_DIR

if TYPE_CHECKING:
    from fleetd.lab.netns import Host, Lab


def _lab(lab_dir: str, prefix: str, subnet: str) -> Lab:
    from fleetd.lab.netns import Lab, LabError

    try:
        return Lab(lab_dir, prefix, subnet)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


lab_dir_option = click.option("--lab-dir", envvar="FLEET_LAB_DIR", default=DEFAULT_LAB_DIR,
                              show_default=True, help="Where the lab keeps keys and host dirs.")


@click.group()
def lab() -> None:
    """A local lab: N hosts as network namespaces, each with its own sshd; some of them
    may be real systemd hosts with a file system of their own (--systemd)."""


@lab.command("up")
@click.option("--hosts", "count", default=3, show_default=True, help="How many hosts.")
@click.option("--systemd", "systemd", default=0, show_default=True, metavar="M",
              help="The last M of the hosts are real systemd hosts: a Debian rootfs of "
                   "their own (cached in /var/cache/fleetd-lab) booted with systemd as "
                   "PID 1, with its own sshd and python3. fleetd reaches them only by "
                   "bootstrap (fleetctl machine add).")
@click.option("--vm", "vms", default=0, show_default=True, metavar="M",
              help="The last M of the hosts are QEMU virtual machines: Debian's cloud "
                   "kernel (pure cgroup v2) and a bookworm image cached in "
                   "/var/cache/fleetd-lab, sshd at root@127.0.0.1:PORT. fleetd installs "
                   "the agent there by bootstrap.")
@click.option("--without-psutil", "without_psutil", default=0, show_default=True,
              metavar="K", help="The last K of the systemd hosts lack python3-psutil.")
@click.option("--prefix", default="fl", show_default=True,
              help="Name prefix for namespaces and the bridge.")
@click.option("--subnet", default="10.77.0", show_default=True,
              help="First three octets of the lab's /24.")
@click.option("--no-fleetd", is_flag=True, help="Do not start or register with fleetd.")
@click.option("--etcd", "etcd", default=0, show_default=True, metavar="E",
              help="Also an etcd cluster of E members (Debian's etcd), each in a namespace "
                   "of its own at SUBNET.201 up; the lab's fleetd servers use it.")
@click.option("--fleetd", "servers", default=0, show_default=True, metavar="M",
              help="Run M fleetd, each in a namespace of its own at SUBNET.211 up, with its "
                   "API on /run/fleetd/fleetd-K.sock and on https://ADDRESS:7070 (the "
                   "token in LAB_DIR/servers/token, the CA in LAB_DIR/servers/ca.pem), "
                   "on the --etcd cluster (without it, "
                   "each on its own SQLite); the hosts are registered through them.")
@lab_dir_option
@click.pass_context
def lab_up(ctx: click.Context, count: int, systemd: int, without_psutil: int, prefix: str,
           subnet: str, no_fleetd: bool, etcd: int, servers: int, lab_dir: str,
           vms: int) -> None:
    """Create the hosts; start fleetd if none runs; register the plain hosts with it."""
    from fleetd.lab import daemon as lab_daemon
    from fleetd.lab.netns import LabError

    if no_fleetd and servers:
        raise click.UsageError("--no-fleetd and --fleetd: choose one")
    the_lab = _lab(lab_dir, prefix, subnet)
    try:
        from fleetd.lab import vm_lab  # --vm: fleetd.lab.vm_lab says what it does

        vm_lab.check(count, vms, systemd)
        hosts = the_lab.up(count - vms, systemd=systemd, without_psutil=without_psutil,
                           etcd=etcd, servers=servers)
        booted = vm_lab.lab_up(the_lab, count, vms)
        sd = [h.name for h in hosts if h.systemd]
        kinds = f"; systemd host{'s' if len(sd) > 1 else ''} {', '.join(sd)}" if sd else ""
        click.echo(f"Lab up: {count} hosts on {the_lab.subnet}.0/24{kinds} "
                   f"(bridge {the_lab.bridge}, dir {the_lab.dir})")
        _say_cluster(the_lab)
        if booted:
            click.echo(vm_lab.summary(booted))
        if no_fleetd:
            _bootstrap_hints(the_lab, [h for h in hosts if h.systemd])
            for line in vm_lab.hints(the_lab, booted):
                click.echo(line)
            return
        client: Client = ctx.find_root().obj.client
        if servers:
            client = Client(the_lab.servers.endpoint)  # the first that answers
        else:
            pid = lab_daemon.ensure_fleetd(the_lab, client)
            if pid is not None:
                the_lab._save(fleetd_pid=pid)
                click.echo(f"Started fleetd (pid {pid}) at {client.endpoint}; "
                           f"log {the_lab.dir}/fleetd.log")
        bootstrapped = [h.name for h in lab_daemon.register(the_lab, client, hosts)]
        lab_daemon.wait_up(client, [h.name for h in hosts])
        plain = [h.name for h in hosts if not h.systemd]
        click.echo(f"Registered {', '.join(plain) or 'no plain host'} with fleetd"
                   + (f"; installed the agent on {', '.join(bootstrapped)}" if bootstrapped
                      else "") + "; all up")
        if booted:
            click.echo(vm_lab.lab_register(the_lab, client, booted))
    except (LabError, ApiError) as exc:
        raise click.ClickException(str(exc)) from None


def _say_cluster(the_lab: Lab) -> None:
    """The etcd members and fleetd servers ``up`` started, and how fleetctl reaches them."""
    members = the_lab.etcd.members()
    if members:
        click.echo(f"etcd: {len(members)} members at {', '.join(the_lab.etcd.endpoints)} "
                   f"(namespaces {', '.join(m.netns for m in members)})")
    servers = the_lab.servers.servers()
    if not servers:
        return
    on = "etcd" if members else "each its own SQLite registry"
    click.echo(f"fleetd: {', '.join(s.name for s in servers)} on {on}, TLS on "
               f"{', '.join(s.listen for s in servers)} with the token in "
               f"{the_lab.servers.token_file} (--token-file) and the CA "
               f"{the_lab.servers.ca_file} (--ca-file)")
    click.echo(f"Use them with: fleetctl --endpoint {the_lab.servers.endpoint}")


def _bootstrap_hints(the_lab: Lab, hosts: List[Host]) -> None:
    from fleetd.lab import daemon as lab_daemon

    for h in hosts:
        click.echo(f"{h.name}: systemd host, add it with "
                   f"`{shlex.join(lab_daemon.machine_add_argv(the_lab, h))}`")


@lab.command("status")
@lab_dir_option
def lab_status(lab_dir: str) -> None:
    """Each host: address, namespace, sshd and agent; each etcd member: address, pid,
    up or down; each fleetd server: address, socket, pid, leader or follower."""
    the_lab = _lab(lab_dir, "fl", "10.77.0")
    rows = the_lab.status()
    if not rows:
        click.echo(f"No lab in {the_lab.dir}")
        return
    click.echo(table(["HOST", "KIND", "ADDRESS", "NETNS", "SSHD", "AGENT", "PROCESSES"],
                     [[r["host"], _kind(r), r["address"],
                       r["netns"] if r["netns_up"] else "missing",
                       r["sshd"] or "down", r["agent"] or "-", r["processes"]] for r in rows]))
    pid: Optional[int] = the_lab.info().get("fleetd_pid")
    if pid:
        click.echo(f"fleetd started by the lab: pid {pid}")
    from fleetd.lab import vm_lab

    for line in vm_lab.status_lines(the_lab.dir):
        click.echo(line)
    members = the_lab.etcd.status()
    if members:
        click.echo("\n" + table(["ETCD", "ADDRESS", "NETNS", "PID", "STATE"], [
            [m["name"], m["endpoint"], m["netns"], m["pid"] or "-",
             "up" if m["healthy"] else ("unhealthy" if m["pid"] else "down")]
            for m in members]))
    servers = the_lab.servers.status()
    if servers:
        click.echo("\n" + table(["FLEETD", "ADDRESS", "SOCKET", "PID", "ROLE"], [
            [s["name"], s["address"], s["socket"], s["pid"] or "-",
             _role(s)] for s in servers]))
        click.echo(f"\nUse them with: fleetctl --endpoint {the_lab.servers.endpoint}")


def _role(row: Dict[str, Any]) -> str:
    """leader, follower, down, or "up" for a fleetd that does not say; and its cut."""
    role = "up" if row["role"] == "?" else row["role"]
    return role + (f" (cut off {row['cut']})" if row["cut"] else "")


def _kind(row: Dict[str, Any]) -> str:
    """netns (shares this machine's file system) or systemd (pid 1234: its PID 1 here,
    "down" once it is gone), with "no psutil" for a host built without python3-psutil."""
    if not row["systemd"]:
        return "netns"
    kind = f"systemd (pid {row['pid1']})" if row["pid1"] else "systemd (down)"
    return kind + (", no psutil" if row["without_psutil"] else "")


@lab.command("down")
@lab_dir_option
def lab_down(lab_dir: str) -> None:
    """Power off the systemd hosts; remove every namespace, veth, bridge, mount, cgroup
    and process the lab made."""
    from fleetd.lab.netns import LabError

    the_lab = _lab(lab_dir, "fl", "10.77.0")
    try:
        the_lab.require_root()
        from fleetd.lab import vm_lab

        vm_lab.down(the_lab.dir)  # the VM hosts' QEMUs (--vm)
        the_lab.down()
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("Lab down")
