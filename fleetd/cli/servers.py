"""``fleetctl list-servers``: the fleetd servers and etcd members behind the API.

Two tables from ``/v1/servers`` (fleetd/engine/roster.py makes the rows): the fleetd
servers (who leads, in which term since when, each one's pid and version) and, when the
registry is etcd, its members (raft leader, health, database size), because an operator
who runs this is usually asking "who is in charge, and is etcd well?". ``-o json``
prints the API's rows unchanged, as the other listings do (fleetd/cli/listing.py).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.listing import Column
from fleetd.cli.output import ago, table

Row = Dict[str, Any]


def _health(r: Row, full: bool) -> str:
    if r.get("healthy", True):
        return "healthy"
    detail = r.get("detail") or ""
    if not full and len(detail) > 60:
        detail = detail[:59] + "…"
    return f"unhealthy: {detail}" if detail else "unhealthy"


def _size(n: Any) -> str:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


FLEETD_COLUMNS: List[Column] = [
    ("NAME", lambda r, f: r["name"]),
    ("ADDRESSES", lambda r, f: ",".join(r.get("addresses") or []) or "-"),
    ("ROLE", lambda r, f: "leader" if r.get("leader") else "follower"),
    ("EPOCH", lambda r, f: r.get("epoch") if r.get("leader") else None),
    # the leader's term, else how long the fleetd has run
    ("SINCE", lambda r, f: ago(r.get("since") if r.get("leader") else r.get("started_at"))
     if (r.get("since") if r.get("leader") else r.get("started_at")) else None),
    ("PID", lambda r, f: r.get("pid") or None),
    ("VERSION", lambda r, f: r.get("version") or None),
    ("HEALTH", _health),
]
ETCD_COLUMNS: List[Column] = [
    ("NAME", lambda r, f: r["name"]),
    ("ADDRESS", lambda r, f: ",".join(r.get("addresses") or []) or "-"),
    ("RAFT", lambda r, f: "leader" if r.get("leader") else "follower"),
    ("HEALTH", _health),
    ("DB SIZE", lambda r, f: _size(r.get("db_size"))),
]


def _table(columns: List[Column], rows: List[Row], full: bool, no_legend: bool) -> str:
    text = table([c[0] for c in columns], [[c[1](r, full) for c in columns] for r in rows])
    return "\n".join(text.splitlines()[1:]) if no_legend else text


@click.command("list-servers")
@click.option("--full", is_flag=True, help="Do not shorten why a server is unhealthy.")
@click.option("--no-legend", is_flag=True, help="No header lines.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@pass_ctx
def list_servers(c: Ctx, full: bool, no_legend: bool, output: str, as_json: bool) -> None:
    """The fleetd servers (who leads, epoch, since) and the etcd members."""
    rows: List[Row] = c.call("GET", "/v1/servers")["servers"]
    if output == "json" or as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    fleetd = [r for r in rows if r.get("kind", "fleetd") == "fleetd"]
    etcd = [r for r in rows if r.get("kind") == "etcd"]
    click.echo(_table(FLEETD_COLUMNS, fleetd, full, no_legend))
    if etcd:
        click.echo()
        click.echo(_table(ETCD_COLUMNS, etcd, full, no_legend))


COMMANDS = [list_servers]
