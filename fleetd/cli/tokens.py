"""``fleetctl token``: API tokens, each with a role (read, operate, admin), for the TCP
API. Made and revoked by an admin (root on the Unix socket, or an admin token); the
token is printed once, by ``create``: fleetd keeps only its hash."""

from __future__ import annotations

import json
import time

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import ago, echo, table
from fleetd.client import segment

ROLES = ("read", "operate", "admin")


@click.group("token")
def token() -> None:
    """Make, list and revoke API tokens (who may do what over TCP)."""


@token.command("create")
@click.option("--name", required=True, help="Who or what uses it (grafana, alice).")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="read: lists, status, cat, journal; operate: also start, stop, restart, "
                   "destroy, drain, submit; admin: also machines, tokens, secrets, audit.")
@pass_ctx
def create(c: Ctx, name: str, role: str) -> None:
    """Make a token and print it (to stdout, once: fleetd keeps only its hash)."""
    answer = c.call("POST", "/v1/tokens", {"name": name, "role": role})
    click.echo(answer["token"])
    echo(f"Token {name} ({role}) made: store it now, it is not shown again "
         "(fleetctl --token-file FILE, or FLEETCTL_TOKEN)", err=True)


@token.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_ctx
def list_tokens(c: Ctx, output: str) -> None:
    """Names, roles, when made and when last used (never the tokens)."""
    rows = c.call("GET", "/v1/tokens")["tokens"]
    if output == "json":
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    now = time.time()
    click.echo(table(["NAME", "ROLE", "CREATED", "LAST USED"], [
        [r["name"], r["role"], ago(r["created"], now), ago(r["last_used"], now)]
        for r in rows]))


@token.command("revoke")
@click.argument("name")
@pass_ctx
def revoke(c: Ctx, name: str) -> None:
    """Forget NAME's token: fleetd refuses it from the next request on."""
    c.call("DELETE", f"/v1/tokens/{segment(name)}")
    echo(f"Token {name} revoked")


