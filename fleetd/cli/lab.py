"""``fleetctl lab``: bring a local multi-host lab up, show it, tear it down."""

from __future__ import annotations

from typing import Optional

import click

from fleetd.cli.client import ApiError, Client
from fleetd.cli.output import table
from fleetd.lab import daemon as lab_daemon
from fleetd.lab.netns import DEFAULT_LAB_DIR, Lab, LabError


def _lab(lab_dir: str, prefix: str, subnet: str) -> Lab:
    try:
        return Lab(lab_dir, prefix, subnet)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


lab_dir_option = click.option("--lab-dir", envvar="FLEET_LAB_DIR", default=DEFAULT_LAB_DIR,
                              show_default=True, help="Where the lab keeps keys and host dirs.")


@click.group()
def lab() -> None:
    """A local lab: N hosts as network namespaces, each with its own sshd."""


@lab.command("up")
@click.option("--hosts", "count", default=3, show_default=True, help="How many hosts.")
@click.option("--prefix", default="fl", show_default=True,
              help="Name prefix for namespaces and the bridge.")
@click.option("--subnet", default="10.77.0", show_default=True,
              help="First three octets of the lab's /24.")
@click.option("--no-fleetd", is_flag=True, help="Do not start or register with fleetd.")
@lab_dir_option
@click.pass_context
def lab_up(ctx: click.Context, count: int, prefix: str, subnet: str, no_fleetd: bool,
           lab_dir: str) -> None:
    """Create the hosts; start fleetd if none runs; register the hosts with it."""
    the_lab = _lab(lab_dir, prefix, subnet)
    try:
        hosts = the_lab.up(count)
        click.echo(f"Lab up: {count} hosts on {the_lab.subnet}.0/24 "
                   f"(bridge {the_lab.bridge}, dir {the_lab.dir})")
        if no_fleetd:
            return
        client: Client = ctx.find_root().obj.client
        pid = lab_daemon.ensure_fleetd(the_lab, client)
        if pid is not None:
            the_lab._save(fleetd_pid=pid)
            click.echo(f"Started fleetd (pid {pid}) at {client.endpoint}; "
                       f"log {the_lab.dir}/fleetd.log")
        lab_daemon.register(the_lab, client, hosts)
        lab_daemon.wait_up(client, [h.name for h in hosts])
        click.echo(f"Registered {', '.join(h.name for h in hosts)} with fleetd; all up")
    except (LabError, ApiError) as exc:
        raise click.ClickException(str(exc)) from None


@lab.command("status")
@lab_dir_option
def lab_status(lab_dir: str) -> None:
    """Each host: address, namespace, sshd and agent."""
    the_lab = _lab(lab_dir, "fl", "10.77.0")
    rows = the_lab.status()
    if not rows:
        click.echo(f"No lab in {the_lab.dir}")
        return
    click.echo(table(["HOST", "ADDRESS", "NETNS", "SSHD", "AGENT", "PROCESSES"],
                     [[r["host"], r["address"], r["netns"] if r["netns_up"] else "missing",
                       r["sshd"] or "down", r["agent"] or "-", r["processes"]] for r in rows]))
    pid: Optional[int] = the_lab.info().get("fleetd_pid")
    if pid:
        click.echo(f"fleetd started by the lab: pid {pid}")


@lab.command("down")
@lab_dir_option
def lab_down(lab_dir: str) -> None:
    """Remove every namespace, veth, bridge, mount and process the lab made."""
    the_lab = _lab(lab_dir, "fl", "10.77.0")
    try:
        the_lab.require_root()
        the_lab.down()
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("Lab down")
