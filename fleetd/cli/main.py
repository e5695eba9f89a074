"""``fleetctl``: fleet's verbs against fleetd's HTTP API (and the local lab).

Unit arguments are files (their base name is the unit name) or names of units already
submitted, as with fleet. Errors go to stderr with a non-zero exit and say where the
problem is: ``file:line`` for unit files, the option for bad flags, the machine for
host trouble.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import click

from fleetd import __version__
from fleetd.cli.client import ApiError, Client
from fleetd.cli.lab import lab
from fleetd.cli.output import ago, table
from fleetd.units.model import load, parse_name
from fleetd.units.parser import UnitError


class Ctx:
    def __init__(self, endpoint: Optional[str], token: Optional[str]) -> None:
        self.client = Client(endpoint, token)

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: float = 60.0) -> Dict[str, Any]:
        try:
            return self.client.request(method, path, body, timeout=timeout)
        except ApiError as exc:
            errors = exc.body.get("errors")
            if isinstance(errors, list) and len(errors) > 1:
                raise click.ClickException("\n".join(str(e) for e in errors)) from None
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="FLEETCTL_ENDPOINT",
              help="fleetd API: unix:///PATH (default unix:///run/fleetd/fleetd.sock) "
                   "or http://HOST:PORT.")
@click.option("--token", envvar="FLEETCTL_TOKEN", help="Bearer token for a TCP endpoint.")
@click.version_option(__version__)
@click.pass_context
def cli(ctx: click.Context, endpoint: Optional[str], token: Optional[str]) -> None:
    """Run units across machines, fleet-style."""
    ctx.obj = Ctx(endpoint, token)


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
@click.argument("address")
@click.option("--name", help="Machine name (default: the host).")
@click.option("--metadata", help="key=value,... for scheduling and templates.")
@click.option("--identity", type=click.Path(exists=True, dir_okay=False),
              help="SSH private key.")
@click.option("--known-hosts", type=click.Path(exists=True, dir_okay=False),
              help="known_hosts file the host key must be in (default ~/.ssh/known_hosts).")
@click.option("--agent-command", help="Command that attaches to the agent "
                                      "(default: fleet-agent attach).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the machine is up (or says why not).")
@pass_ctx
def machine_add(c: Ctx, address: str, name: Optional[str], metadata: Optional[str],
                identity: Optional[str], known_hosts: Optional[str],
                agent_command: Optional[str], wait: bool) -> None:
    """Register the machine at [USER@]HOST[:PORT]."""
    user, host, port = parse_address(address)
    body: Dict[str, Any] = {
        "address": host, "port": port, "user": user, "name": name or host,
        "metadata": parse_metadata(metadata),
        "identity": os.path.abspath(identity) if identity else None,
        "known_hosts": os.path.abspath(known_hosts) if known_hosts else None,
        "agent_command": agent_command,
    }
    added = c.call("POST", "/v1/machines", body)["machine"]
    if not wait:
        click.echo(f"Machine {added['name']} added")
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = next(x for x in c.call("GET", "/v1/machines")["machines"]
                 if x["name"] == added["name"])
        if m["state"] == "up":
            click.echo(f"Machine {m['name']} up ({m['address']}, machine id {m['machine_id']})")
            return
        if m["state"] == "error":
            raise click.ClickException(f"machine {m['name']}: {m['error']}")
        time.sleep(0.05)
    raise click.ClickException(f"machine {added['name']} not up after 30s: {m.get('error')}")


@machine.command("remove")
@click.argument("name")
@pass_ctx
def machine_remove(c: Ctx, name: str) -> None:
    """Stop the machine's units and forget it (they are placed elsewhere)."""
    c.call("DELETE", f"/v1/machines/{name}", timeout=120)
    click.echo(f"Machine {name} removed")


@cli.command("list-machines")
@click.option("--full", is_flag=True, help="Show errors in full.")
@pass_ctx
def list_machines(c: Ctx, full: bool) -> None:
    """Machines, their state and how many units they hold."""
    rows = []
    now = time.time()
    for m in c.call("GET", "/v1/machines")["machines"]:
        state = m["state"]
        if m.get("error") and state != "up":
            err = m["error"] if full else m["error"][:60]
            state = f"{state}: {err}"
        rows.append([m["name"], m["address"], state, m["metadata"], m["units"],
                     ago(m["last_seen"], now)])
    click.echo(table(["MACHINE", "ADDRESS", "STATE", "METADATA", "UNITS", "LAST SEEN"], rows))


# --- units -------------------------------------------------------------------------------
def read_units(args: List[str]) -> Tuple[List[Dict[str, str]], List[str]]:
    """Files to submit (validated here first) and names of already-submitted units."""
    files, names, errors = [], [], []
    for arg in args:
        if os.path.isfile(arg):
            name = os.path.basename(arg)
            try:
                with open(arg, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise click.ClickException(f"{arg}: {exc}") from None
            try:
                load(name, text, arg)
            except UnitError as exc:
                errors.append(str(exc))
                continue
            files.append({"name": name, "text": text, "source": arg})
        else:
            try:
                parse_name(arg)
            except UnitError:
                raise click.ClickException(
                    f"{arg}: no such file, and not a unit name") from None
            names.append(arg)
    if errors:
        raise click.ClickException("\n".join(errors))
    return files, names


def _wait_all(c: Ctx, names: List[str], until: str, timeout: float) -> None:
    failed = []
    for name in names:
        res = c.call("GET", f"/v1/units/{name}/wait?until={until}&timeout={timeout}",
                     timeout=timeout + 10)
        if res["reached"]:
            click.echo(f"Unit {name} {res['why']}")
        else:
            failed.append(f"{name}: {'timed out: ' if res.get('timeout') else ''}{res['why']}")
    if failed:
        raise click.ClickException("\n".join(failed))


def _submit(c: Ctx, args: List[str], desired: str) -> List[str]:
    files, names = read_units(args)
    if files:
        c.call("POST", "/v1/units", {"units": files, "desired": desired})
    if names:
        c.call("POST", "/v1/units/state", {"names": names, "desired": desired})
    return [f["name"] for f in files] + names


@cli.command()
@click.argument("units", nargs=-1, required=True)
@click.option("--no-block", is_flag=True, help="Return once stored; do not wait.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
@pass_ctx
def start(c: Ctx, units: Tuple[str, ...], no_block: bool, timeout: float) -> None:
    """Submit units (files) if needed, place them and run them."""
    names = _submit(c, list(units), "launched")
    if no_block:
        for n in names:
            click.echo(f"Triggered unit {n} start")
        return
    _wait_all(c, names, "running", timeout)


@cli.command()
@click.argument("units", nargs=-1, required=True)
@click.option("--no-block", is_flag=True)
@click.option("--timeout", default=120.0, show_default=True)
@pass_ctx
def stop(c: Ctx, units: Tuple[str, ...], no_block: bool, timeout: float) -> None:
    """Stop units (they stay placed: loaded)."""
    c.call("POST", "/v1/units/state", {"names": list(units), "desired": "loaded"})
    if no_block:
        for n in units:
            click.echo(f"Triggered unit {n} stop")
        return
    _wait_all(c, list(units), "stopped", timeout)


@cli.command()
@click.argument("units", nargs=-1, required=True)
@click.option("--no-block", is_flag=True)
@click.option("--timeout", default=120.0, show_default=True)
@pass_ctx
def destroy(c: Ctx, units: Tuple[str, ...], no_block: bool, timeout: float) -> None:
    """Stop units and forget them."""
    c.call("POST", "/v1/units/destroy", {"names": list(units)})
    if no_block:
        for n in units:
            click.echo(f"Destroyed {n}")
        return
    for name in units:
        res = c.call("GET", f"/v1/units/{name}/wait?until=gone&timeout={timeout}",
                     timeout=timeout + 10)
        if not res["reached"]:
            raise click.ClickException(f"{name}: destroyed, but {res['why']}")
        click.echo(f"Destroyed {name}")


@cli.command("list-units")
@pass_ctx
def list_units(c: Ctx) -> None:
    """Units on machines as the agents report them."""
    rows = []
    for u in c.call("GET", "/v1/units")["units"]:
        state = u["state"]
        if u.get("error") and state not in ("running",):
            state = f"{state} ({u['error']})"
        if u.get("desired") == "-":
            state += " [not placed here]"
        rows.append([u["unit"], u["machine"], state, u.get("pid")])
    click.echo(table(["UNIT", "MACHINE", "STATE", "PID"], rows))


@cli.command("list-unit-files")
@pass_ctx
def list_unit_files(c: Ctx) -> None:
    """Submitted units: content hash, desired and current state, target machine."""
    rows = []
    for u in c.call("GET", "/v1/unit-files")["unit_files"]:
        reason = u["reason"] if u["state"] != "running" else ""
        rows.append([u["unit"], u["hash"][:7], u["desired"], u["state"], u["machine"],
                     reason or None])
    click.echo(table(["UNIT", "HASH", "DSTATE", "STATE", "TARGET", "REASON"], rows))


@cli.command()
@click.argument("unit")
@pass_ctx
def cat(c: Ctx, unit: str) -> None:
    """Print a submitted unit file."""
    click.echo(c.call("GET", f"/v1/units/{unit}")["text"], nl=False)


cli.add_command(lab)


def main() -> None:
    sys.exit(cli())
