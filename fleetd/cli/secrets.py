"""``fleetctl secret set NAME``, ``secret list``, ``secret rm NAME``.

A value never comes from the command line (any user sees it in ``ps``, and the shell
keeps it in its history): ``set`` reads it from stdin, or from ``--file PATH``, or asks
for it without echo when stdin is a terminal. One trailing newline is dropped (``echo``
and editors add one; a password has none). fleetd seals it (fleetd/daemon/secrets.py);
``list`` shows names, when each was set and the units that use it, never a value.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import ago, echo, table
from fleetd.client import segment


@click.group()
def secret() -> None:
    """Set, list and remove secrets (SecretEnvironment= in a unit's [Service])."""


def read_value(path: Optional[str]) -> str:
    """The value from ``path``, stdin, or a prompt on a terminal; errors name where."""
    where = f"--file {path}" if path else "stdin"
    if path is None and sys.stdin.isatty():
        entered: str = click.prompt("Value", hide_input=True, confirmation_prompt=True,
                                    err=True)
        return entered
    try:
        if path is None:
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--file") from None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{where}: the value is not UTF-8 text (byte "
                                   f"{exc.start})") from None
    value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value:
        raise click.ClickException(f"{where}: the value is empty")
    return value


@secret.command("set")
@click.argument("name")
@click.option("--file", "path", type=click.Path(dir_okay=False), metavar="PATH",
              help="Read the value from PATH (default: stdin).")
@pass_ctx
def secret_set(c: Ctx, name: str, path: Optional[str]) -> None:
    """Set the secret NAME to a value read from stdin or --file; the units that use it
    restart with the new value."""
    value = read_value(path)
    row = c.call("PUT", f"/v1/secrets/{segment(name)}", {"value": value})
    users = row.get("units") or []
    echo(f"Secret {row['name']} set (version {row['version']})" +
         (f"; restarting {', '.join(users)}" if users else ""))


@secret.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_ctx
def secret_list(c: Ctx, output: str) -> None:
    """The secrets' names, when each was set and the units that use it (never a value)."""
    rows = c.call("GET", "/v1/secrets")["secrets"]
    if output == "json":
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    click.echo(table(["NAME", "SET", "UNITS"],
                     [[r["name"], ago(r.get("set_at")), ",".join(r.get("units") or []) or None]
                      for r in rows]))


@secret.command("rm")
@click.argument("name")
@pass_ctx
def secret_rm(c: Ctx, name: str) -> None:
    """Remove the secret NAME (refused while a unit uses it)."""
    c.call("DELETE", f"/v1/secrets/{segment(name)}")
    echo(f"Secret {name} removed")


COMMANDS = [secret]
