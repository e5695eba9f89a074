"""``fleetctl``: fleet's verbs against fleetd's HTTP API (and the local lab).

Unit arguments are files (their base name is the unit name) or names of units already
submitted, as with fleet. Errors go to stderr with a non-zero exit and say where the
problem is: ``file:line`` for unit files, the option for bad flags, the machine for
host trouble.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional, Tuple

import click

from fleetd import __version__
from fleetd.cli import drain, listing, rollouts, secrets, servers
from fleetd.cli import units as unit_commands
from fleetd.cli import vagrant as vagrant_cli
from fleetd.cli.audit import audit as audit_command
from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.events import events as events_command
from fleetd.cli.lab import lab
from fleetd.cli.output import echo, visible
from fleetd.cli.tokens import token as token_group
from fleetd.client import segment
from fleetd.endpoints import TlsFiles


class _VisibleError(click.ClickException):
    """A command's error as printed: through ``visible``, since errors quote what fleetd
    answered (a unit's text, a host's or an agent's words)."""

    def __init__(self, error: click.ClickException) -> None:
        super().__init__(visible(error.format_message(), lines=True))


class _Fleetctl(click.Group):
    """fleetctl's top group: every command's error is printed as a _VisibleError (usage
    errors, about the command line itself, keep click's usage hint)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError:
            raise
        except click.ClickException as exc:
            raise _VisibleError(exc) from None


_FILE = click.Path(exists=True, dir_okay=False)


@click.group(cls=_Fleetctl, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="FLEETCTL_ENDPOINT",
              help="fleetd API: unix:///PATH (default unix:///run/fleetd/fleetd.sock), "
                   "https://HOST:PORT or http://127.0.0.1:PORT, or several, "
                   "comma-separated: each request goes to the first that answers, "
                   "starting from the last that did.")
@click.option("--token-file", type=_FILE,
              help="File holding the bearer token for a TCP endpoint (or FLEETCTL_TOKEN "
                   "in the environment).")
@click.option("--token", hidden=True,
              help="Deprecated: any user sees it in ps. Use --token-file or FLEETCTL_TOKEN.")
@click.option("--ca-file", envvar="FLEETCTL_CA_FILE", type=_FILE,
              help="https://: the CA that signed fleetd's certificate (default: the "
                   "system's CAs).")
@click.option("--cert-file", envvar="FLEETCTL_CERT_FILE", type=_FILE,
              help="https://: this client's certificate, where fleetd has api.client_ca.")
@click.option("--key-file", envvar="FLEETCTL_KEY_FILE", type=_FILE,
              help="https://: the private key of --cert-file.")
@click.version_option(__version__)
@click.pass_context
def cli(ctx: click.Context, endpoint: Optional[str], token: Optional[str],
        token_file: Optional[str], ca_file: Optional[str], cert_file: Optional[str],
        key_file: Optional[str]) -> None:
    """Run units across machines, fleet-style."""
    if token is not None:
        click.echo("Warning: --token shows the token to every user of this machine (ps); "
                   "use --token-file FILE or FLEETCTL_TOKEN", err=True)
    if token_file is not None:
        token = read_token(token_file)
    ctx.obj = Ctx(endpoint, token, TlsFiles(ca_file, cert_file, key_file))


def read_token(path: str) -> str:
    """The token in ``path``: its first line, stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: {getattr(exc, 'strerror', None) or exc}",
                                 param_hint="--token-file") from None
    if not token:
        raise click.BadParameter(f"{path}: no token in its first line",
                                 param_hint="--token-file")
    return token


# --- machines ---------------------------------------------------------------------------
@cli.group()
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


for command in [*unit_commands.COMMANDS, *listing.COMMANDS, *servers.COMMANDS, *drain.COMMANDS,
                *secrets.COMMANDS, *rollouts.COMMANDS, lab]:
    cli.add_command(command)
cli.add_command(token_group)
cli.add_command(audit_command)
cli.add_command(events_command)


def main() -> None:
    sys.exit(cli())
