"""``fleetctl machine add|upgrade|remove``: register a machine (installing fleetd's agent
there over SSH), upgrade its agent, forget it. Loaded only when invoked
(fleetd.cli.commands), like every command."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import click

from fleetd.cli import vagrant as vagrant_cli
from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.metadata import set_metadata
from fleetd.cli.output import echo
from fleetd.client import segment


@click.group()
def machine() -> None:
    """Add and remove machines."""


def parse_address(address: str) -> Tuple[str, str, int]:
    """``[USER@]HOST[:PORT]`` (IPv6 in brackets) -> user, host, port."""
    user, _, hostport = address.rpartition("@")
    host, port = hostport, 22
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], address)
    elif hostport.count(":") == 1:
        host, _, p = hostport.partition(":")
        port = _port(p, address)
    if not host:
        raise click.BadParameter(f"{address!r}: no host", param_hint="ADDRESS")
    return user or "root", host, port


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise click.BadParameter(f"{address!r}: bad port {text!r}", param_hint="ADDRESS")
    return int(text)


def parse_metadata(text: Optional[str]) -> Dict[str, str]:
    meta: Dict[str, str] = {}
    for part in filter(None, (text or "").split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{part!r} is not key=value", param_hint="--metadata")
        meta[key.strip()] = value.strip()
    return meta


@machine.command("add")
@click.argument("address", required=False)
@click.option("--vagrant", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Instead of ADDRESS: add the running machines of the Vagrant project in "
                   "DIR (all but one named fleetd), each with the user, port and key "
                   "`vagrant ssh-config` gives, logging in as root (fleetd pushes the "
                   "agent, as for ADDRESS). Host key: DIR/.keys/host_NAME_ed25519.pub "
                   "if the project pinned one, else what ssh-keyscan reads now (trust on "
                   "first use), kept in DIR/.vagrant/fleetd/NAME.known_hosts.")
@click.option("--machine", "vagrant_machines", multiple=True, metavar="NAME",
              help="With --vagrant: add this Vagrant machine only (repeatable).")
@click.option("--name", help="Machine name (default: the host).")
@click.option("--metadata", help="key=value,... for scheduling and templates.")
@click.option("--identity", type=click.Path(exists=True, dir_okay=False),
              help="SSH private key.")
@click.option("--known-hosts", type=click.Path(exists=True, dir_okay=False),
              help="known_hosts file the host key must be in (default ~/.ssh/known_hosts).")
@click.option("--agent-command", help="Command that attaches to an agent you installed "
                                      "yourself (default: fleetd installs the agent).")
@click.option("--prefix", metavar="DIR",
              help="Where fleetd installs the agent on the host (default /opt/fleetd-agent).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the machine is up (or says why not).")
@pass_ctx
def machine_add(c: Ctx, address: Optional[str], name: Optional[str], metadata: Optional[str],
                vagrant: Optional[str], vagrant_machines: Tuple[str, ...],
                identity: Optional[str], known_hosts: Optional[str],
                agent_command: Optional[str], wait: bool, prefix: Optional[str]) -> None:
    """Register the machine at [USER@]HOST[:PORT] (or a Vagrant project's: --vagrant)."""
    if vagrant is not None or vagrant_machines:
        vagrant_cli.add_command(c, vagrant, vagrant_machines, parse_metadata(metadata),
                                agent_command, wait, {"ADDRESS": address, "--name": name,
                                "--identity": identity, "--known-hosts": known_hosts})
        return
    if address is None:
        raise click.UsageError("Missing argument 'ADDRESS' (or --vagrant DIR).")
    user, host, port = parse_address(address)
    body: Dict[str, Any] = {
        "address": host, "port": port, "user": user, "name": name or host,
        "metadata": parse_metadata(metadata),
        "identity": os.path.abspath(identity) if identity else None,
        "known_hosts": os.path.abspath(known_hosts) if known_hosts else None,
        "agent_command": agent_command,
        **({"prefix": prefix} if prefix else {}),
    }
    answer = c.call("POST", "/v1/machines", body, timeout=300)
    added = answer["machine"]
    if answer.get("agent"):
        echo(describe_install(added["name"], answer["agent"]))
    if not wait:
        click.echo(f"Machine {added['name']} added")
        return
    vagrant_cli.wait_up(c, [added["name"]])


def describe_install(name: str, agent: Dict[str, Any]) -> str:
    """One line on what the bootstrap did (fleetd.bootstrap.install.Installed.to_json)."""
    host = agent.get("host") or {}
    how = "as a systemd service" if agent["mode"] == "systemd" else "detached"
    facts = ", ".join(str(x) for x in (
        host.get("arch"), f"Python {host.get('python')}" if host.get("python") else None,
        f"cgroups {host.get('cgroups')}", f"psutil {agent.get('psutil')}",
        "Java " + "/".join(host["java"]) if host.get("java") else None) if x)
    if not agent["changed"]:
        return f"Machine {name}: agent {agent['version']} already runs there {how} ({facts})"
    verb = (f"upgraded from {agent['previous']} to" if agent.get("previous") and
            agent["previous"] != agent["version"] else "installed")
    return (f"Machine {name}: agent {verb} {agent['version']}, running {how}, in "
            f"{agent['seconds']:.1f}s ({facts})")


@machine.command("upgrade")
@click.argument("name")
@click.option("--force", is_flag=True, help="Reinstall even if that version runs there.")
@pass_ctx
def machine_upgrade(c: Ctx, name: str, force: bool) -> None:
    """Install this fleetd's agent where fleetd installed an older one; the units keep
    running (same pids), the new agent re-adopts them."""
    answer = c.call("POST", f"/v1/machines/{segment(name)}/upgrade", {"force": force}, timeout=300)
    echo(describe_install(name, answer["agent"]))
    if answer.get("state") != "up":
        raise click.ClickException(f"machine {name} is {answer.get('state')} after the "
                                   f"upgrade: {answer.get('error')}")


@machine.command("remove")
@click.argument("name")
@click.option("--purge", is_flag=True,
              help="Also remove what fleetd installed there: the agent's versions, its "
                   "service and its state directory.")
@pass_ctx
def machine_remove(c: Ctx, name: str, purge: bool) -> None:
    """Stop the machine's units and forget it (they are placed elsewhere); where fleetd
    installed the agent, stop it there too."""
    answer = c.call("DELETE", f"/v1/machines/{segment(name)}" + ("?purge=1" if purge else ""),
                    timeout=300)
    done = [f"Machine {name} removed"]
    if answer.get("agent_stopped"):
        done.append("its agent stopped")
    if answer.get("purged"):
        done.append("what fleetd installed there removed")
    click.echo("; ".join(done))
    if answer.get("units_left"):
        echo(f"Warning: units still there: {', '.join(answer['units_left'])}", err=True)
    if answer.get("warning"):
        echo(f"Warning: {answer['warning']}", err=True, lines=True)


machine.add_command(set_metadata)
